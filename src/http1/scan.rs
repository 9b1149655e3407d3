//! A quick reader for the response heads upstreams usually send: `HTTP/1.1` or `HTTP/1.0`, a
//! three-digit status, a reason of visible ASCII, fields of token names and visible-ASCII
//! values, every line ended by CRLF. It answers only for heads of that shape, which httparse
//! reads the same way (the `request_head` fuzz target and the tests here compare the two on
//! every input); anything else, a head cut short included, is left to httparse (`Unsure`),
//! which accepts or refuses it as before. Spans are 16-bit: a head is at most 64 KiB.
//!
//! The names it passes over are lowercased where they lie, whatever it answers, as every reader
//! of a response head lowercases them anyway: a lowercase name is a name of the same bytes to
//! httparse, so nothing it decides changes.

/// Where one field lies in the head: name start and end, value start and end (the value
/// without the blanks around it).
pub type Span = (u16, u16, u16, u16);

/// What [`response_head`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// A whole head of the usual shape.
    Complete {
        /// The head's length, its blank line included.
        len: usize,
        /// The HTTP/1 minor version.
        minor: u8,
        /// The status code, three digits.
        code: u16,
        /// How many fields the spans hold.
        count: usize,
    },
    /// Not the usual shape, or not all there: httparse decides.
    Unsure,
}

/// Each byte a field name may hold (RFC 9110's `tchar`) as it is in a lowercase name; 0 for
/// the others.
const NAME: [u8; 256] = {
    let mut t = [0; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let tchar = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-'
            )
            || matches!(c, b'.' | b'^' | b'_' | b'`' | b'|' | b'~');
        if tchar {
            t[b] = c.to_ascii_lowercase();
        }
        b += 1;
    }
    t
};

/// Bytes a field value or a reason holds here: tab, space and visible ASCII. (httparse also
/// takes bytes above 0x7f; those heads go to it.)
const TEXT: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b == 0x09 || (b >= 0x20 && b < 0x7f);
        b += 1;
    }
    t
};

/// Reads the response head at the start of `buf` into `spans`, if it has the usual shape, and
/// lowercases the names it passes over.
pub fn response_head(buf: &mut [u8], spans: &mut [Span]) -> Scan {
    // Every offset fits a span.
    let end = buf.len().min(usize::from(u16::MAX));
    let buf = &mut buf[..end];
    let minor = match buf.get(..9) {
        Some(b"HTTP/1.1 ") => 1,
        Some(b"HTTP/1.0 ") => 0,
        _ => return Scan::Unsure,
    };
    let code = match buf.get(9..13) {
        Some(&[a, b, c, b' '])
            if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() =>
        {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Scan::Unsure,
    };
    let i = text_end(buf, 13);
    let Some(mut i) = line_end(buf, i) else {
        return Scan::Unsure;
    };
    let mut count = 0;
    loop {
        match buf.get(i..i + 2) {
            Some(b"\r\n") => {
                return Scan::Complete {
                    len: i + 2,
                    minor,
                    code,
                    count,
                }
            }
            Some(_) => {}
            None => return Scan::Unsure,
        }
        let name_start = i;
        i = lower_word_name(buf, i);
        while i < end {
            let lower = NAME[usize::from(buf[i])];
            if lower == 0 {
                break;
            }
            buf[i] = lower;
            i += 1;
        }
        if i == name_start || buf.get(i) != Some(&b':') {
            return Scan::Unsure;
        }
        let name_end = i;
        i += 1;
        while i < end && matches!(buf[i], b' ' | b'\t') {
            i += 1;
        }
        let value_start = i;
        i = text_end(buf, i);
        let mut value_end = i;
        while value_end > value_start && matches!(buf[value_end - 1], b' ' | b'\t') {
            value_end -= 1;
        }
        let Some(next) = line_end(buf, i) else {
            return Scan::Unsure;
        };
        let Some(span) = spans.get_mut(count) else {
            return Scan::Unsure;
        };
        // Below 64 KiB: `end` is.
        *span = (
            name_start as u16,
            name_end as u16,
            value_start as u16,
            value_end as u16,
        );
        count += 1;
        i = next;
    }
}

const ONES: u64 = u64::from_le_bytes([0x01; 8]);
const HIGH: u64 = u64::from_le_bytes([0x80; 8]);

/// The high bit of each byte of `w` that lies in `lo..=hi` (`hi` below 0x80). Exact for each
/// byte with no byte at or above 0x80 before it, as such a byte may carry into the next one; it
/// is never in the range itself, and the callers use only the answer up to the first byte out
/// of range.
const fn within(w: u64, lo: u8, hi: u8) -> u64 {
    let from_lo = w.wrapping_add((0x80 - lo as u64) * ONES);
    let past_hi = w.wrapping_add((0x7f - hi as u64) * ONES);
    from_lo & !past_hi & !w & HIGH
}

/// Lowercases the run of letters, digits and `-` from `i`, eight bytes at a time, and returns
/// where it ends: the usual name is all of those. The byte loop after it takes the rest of a
/// name of other token bytes, and a name too near the end of `buf` for a whole word.
fn lower_word_name(buf: &mut [u8], mut i: usize) -> usize {
    while let Some(word) = buf.get_mut(i..i + 8) {
        let w = u64::from_le_bytes((&*word).try_into().expect("eight bytes"));
        // Letters of either case fold onto a..z; digits and `-` have the 0x20 bit already.
        let folded = w | (0x20 * ONES);
        let name = within(folded, b'a', b'z') | within(w, b'0', b'9') | within(w, b'-', b'-');
        if name == HIGH {
            word.copy_from_slice(&folded.to_le_bytes());
            i += 8;
            continue;
        }
        // Bytes before the first that is not one of those; fewer than eight.
        let run = (!name & HIGH).trailing_zeros() / 8;
        let mask = (1u64 << (8 * run)) - 1;
        word.copy_from_slice(&((folded & mask) | (w & !mask)).to_le_bytes());
        return i + run as usize;
    }
    i
}

/// Where the run of [`TEXT`] bytes from `i` ends. Eight bytes at a time while all eight are
/// visible ASCII or space; the first word with another byte puts `i` on that byte, and a tab
/// (the one other [`TEXT`] byte) or the last few bytes go to the byte loop.
fn text_end(buf: &[u8], mut i: usize) -> usize {
    while let Some(word) = buf.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        // A byte below 0x20, a 0x7f (zero after the xor) or one above. For each test the
        // lowest byte it flags is the first such byte (Anderson's bit twiddling hacks: a
        // borrow only runs upward from a byte that is one).
        let below = w.wrapping_sub(0x20 * ONES) & !w;
        let del = w ^ (0x7f * ONES);
        let del = del.wrapping_sub(ONES) & !del;
        let other = (below | del | w) & HIGH;
        if other != 0 {
            i += (other.trailing_zeros() / 8) as usize;
            break;
        }
        i += 8;
    }
    while i < buf.len() && TEXT[usize::from(buf[i])] {
        i += 1;
    }
    i
}

/// Past the CRLF at `i`, if there is one.
#[inline(always)]
fn line_end(buf: &[u8], i: usize) -> Option<usize> {
    (buf.get(i..i + 2) == Some(b"\r\n")).then_some(i + 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(buf: &[u8]) -> Option<(usize, u8, u16, Vec<Span>)> {
        let mut spans = [(0, 0, 0, 0); 16];
        match response_head(&mut buf.to_vec(), &mut spans) {
            Scan::Complete {
                len,
                minor,
                code,
                count,
            } => Some((len, minor, code, spans[..count].to_vec())),
            Scan::Unsure => None,
        }
    }

    #[test]
    fn usual_heads_are_read_as_httparse_reads_them() {
        let heads: [&[u8]; 6] = [
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 10\r\n\r\nbody",
            b"HTTP/1.0 404 Not Found\r\n\r\n",
            b"HTTP/1.1 204 \r\nx-a:b\r\nx-b:  \t two words \t \r\nx-c:\r\n\r\n",
            b"HTTP/1.1 599 any\treason !~\r\nset-cookie: a=b; Path=/\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA!#$%&'*+-.^_`|~9: v\r\n\r\n",
            b"HTTP/1.1 000 zero\r\n\r\n",
        ];
        for head in heads {
            assert!(scanned(head).is_some(), "{}", String::from_utf8_lossy(head));
            // Panics unless httparse reads it the same way.
            crate::fuzzing::quick_read_agrees(head);
        }
        let (len, _, code, spans) = scanned(heads[2]).unwrap();
        assert_eq!((len, code), (heads[2].len(), 204));
        let value = |(_, _, vs, ve): Span| &heads[2][usize::from(vs)..usize::from(ve)];
        assert_eq!(
            spans.iter().map(|&s| value(s)).collect::<Vec<_>>(),
            [&b"b"[..], b"two words", b""]
        );
    }

    /// The word steps: names of every length from 1 to 20, upper and lower case, with a token
    /// byte other than a letter, digit or `-` at each place; values of every length (holding a
    /// tab), and a byte above 0x7f at each place of each; so that word boundaries fall
    /// everywhere. Only the names' letters are lowercased (checked against httparse).
    #[test]
    fn names_and_values_are_read_in_words_at_every_length_and_place() {
        let letters = b"Content-Type-X9z_Abcdefghij";
        for len in 1..=20 {
            for odd in 0..=len {
                let mut name = letters[..len].to_vec();
                if odd < len {
                    name[odd] = b"_.!~"[odd % 4];
                }
                let value = b"Mixed Case\tValue/1.2 (GMT) ~!";
                for vlen in 0..=value.len() {
                    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
                    head.extend_from_slice(&name);
                    head.extend_from_slice(b": ");
                    head.extend_from_slice(&value[..vlen]);
                    head.extend_from_slice(b"\r\nServer: X\r\n\r\n");
                    let (_, _, _, spans) = scanned(&head).expect("a head of the usual shape");
                    let (_, ne, vs, ve) = spans[0];
                    assert_eq!(usize::from(ne) - 17, name.len());
                    assert_eq!(&head[vs.into()..ve.into()], value[..vlen].trim_ascii_end());
                    crate::fuzzing::quick_read_agrees(&head);
                    // A byte above 0x7f anywhere in the value: httparse's to judge, and the
                    // value left as it was.
                    for at in 0..vlen {
                        let mut high = head.clone();
                        high[19 + len + at] = 0xc3;
                        assert_eq!(scanned(&high), None);
                        crate::fuzzing::quick_read_agrees(&high);
                    }
                }
            }
        }
    }

    /// Heads of another shape, cut short or too many fields are httparse's to judge.
    #[test]
    fn other_heads_are_left_to_httparse() {
        let heads: [&[u8]; 16] = [
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\n",
            b"HTTP/1.1 200 OK\r\nServer: nginx\r",
            b"HTTP/1.1 200",
            b"",
            b"HTTP/1.1 200 OK\nServer: nginx\n\n",
            b"HTTP/1.1 200 OK\r\nServer : nginx\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nServer: ng\x00inx\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nServer: ng\rinx\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nServer: caf\xc3\xa9\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nServer: a\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nSer\x7fver: a\r\n\r\n",
            b"HTTP/1.1 200\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"\r\nHTTP/1.1 200 OK\r\n\r\n",
        ];
        for head in heads {
            assert_eq!(scanned(head), None, "{}", String::from_utf8_lossy(head));
        }
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a: b\r\n".repeat(17));
        assert_eq!(scanned(many.as_bytes()), None);
        let sixteen = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a: b\r\n".repeat(16));
        assert_eq!(scanned(sixteen.as_bytes()).map(|s| s.3.len()), Some(16));
    }
}
