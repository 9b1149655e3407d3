//! A response head's fields as HTTP/1.1 text, so that an HTTP/1.1 upstream's answer can go to an
//! HTTP/1.1 client without a header map being built and dropped for it.

use bytes::Bytes;

/// The fields of a response head to pass on, written once as HTTP/1.1 lines (`name: value`
/// CRLF, names lowercased as a header map would have them), with what a server reads off them
/// to frame the body.
#[derive(Debug, Clone)]
pub struct Fields {
    text: Bytes,
    length: Option<u64>,
    dated: bool,
}

impl Fields {
    /// `text`: the lines, as described above. `length`: the `content-length` among them.
    /// `dated`: a `date` is among them.
    pub fn new(text: Bytes, length: Option<u64>, dated: bool) -> Self {
        Fields {
            text,
            length,
            dated,
        }
    }

    /// The lines, ready to write.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// The `content-length` among them.
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// Whether a `date` is among them.
    pub fn dated(&self) -> bool {
        self.dated
    }

    /// The fields, as (name, value): each line split at its first colon (names hold none).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.text.split(|&b| b == b'\n').filter_map(|line| {
            let line = line.strip_suffix(b"\r")?;
            let colon = line.iter().position(|&b| b == b':')?;
            Some((&line[..colon], line[colon + 1..].strip_prefix(b" ")?))
        })
    }
}

/// What a field means to the HTTP/1.1 code that reads heads, by its name in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `connection`.
    Connection,
    /// `keep-alive`.
    KeepAlive,
    /// `transfer-encoding`.
    TransferEncoding,
    /// `content-length`.
    ContentLength,
    /// `date`.
    Date,
    /// The other hop-by-hop fields: `proxy-connection`, `te`, `upgrade`, `proxy-authenticate`.
    OtherHop,
    /// Any other field.
    Other,
}

impl FieldKind {
    /// The kind of the field named `name`, in any case. `name` holds token characters only,
    /// as every parsed or mapped name does.
    pub fn of(name: &[u8]) -> FieldKind {
        match name.len() {
            2 if folded(name, b"te") => FieldKind::OtherHop,
            4 if folded(name, b"date") => FieldKind::Date,
            7 if folded(name, b"upgrade") => FieldKind::OtherHop,
            10 if folded(name, b"connection") => FieldKind::Connection,
            10 if folded(name, b"keep-alive") => FieldKind::KeepAlive,
            14 if folded(name, b"content-length") => FieldKind::ContentLength,
            16 if folded(name, b"proxy-connection") => FieldKind::OtherHop,
            17 if folded(name, b"transfer-encoding") => FieldKind::TransferEncoding,
            18 if folded(name, b"proxy-authenticate") => FieldKind::OtherHop,
            _ => FieldKind::Other,
        }
    }
}

/// Whether the token `name` is `lower` (lowercase letters and `-`) in any case: with bit 0x20
/// set, an uppercase letter is its lowercase one, and no token character is `-` (only CR is).
/// Without a branch per byte, as the kind of every field of every head is asked.
fn folded<const N: usize>(name: &[u8], lower: &[u8; N]) -> bool {
    let Ok(name) = <&[u8; N]>::try_from(name) else {
        return false;
    };
    let mut diff = 0;
    for (a, b) in name.iter().zip(lower) {
        diff |= (a | 0x20) ^ b;
    }
    diff == 0
}

/// A response body that may carry its head's fields as text from an upstream.
pub trait WithFields {
    /// The fields, when the body has them: its response's header map then holds only the
    /// fields added to them, written after them.
    fn fields(&self) -> Option<&Fields>;

    /// Lets go, where the body lies, of what it holds once its answer is out (an upstream
    /// connection, the request's place in a count): the HTTP/1.1 server calls it before the
    /// answer's last write, so that the client cannot see the end before it. The body reads as
    /// ended after it. Dropping it does the same, and is what the HTTP/2 server does (before
    /// the frame that ends the stream is written); in the HTTP/1.1 server, where the body lies
    /// inside the exchange, moving it out to drop would cost a copy.
    fn release(&mut self) {}
}

impl WithFields for http_body_util::Full<Bytes> {
    fn fields(&self) -> Option<&Fields> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_read_in_any_case() {
        let kinds = [
            (&b"Connection"[..], FieldKind::Connection),
            (b"KEEP-ALIVE", FieldKind::KeepAlive),
            (b"transfer-Encoding", FieldKind::TransferEncoding),
            (b"Content-Length", FieldKind::ContentLength),
            (b"date", FieldKind::Date),
            (b"TE", FieldKind::OtherHop),
            (b"Upgrade", FieldKind::OtherHop),
            (b"Proxy-Connection", FieldKind::OtherHop),
            (b"proxy-authenticate", FieldKind::OtherHop),
            (b"content-lengths", FieldKind::Other),
            (b"content_length", FieldKind::Other),
            (b"dates", FieldKind::Other),
            (b"tf", FieldKind::Other),
            (b"x-date", FieldKind::Other),
        ];
        for (name, kind) in kinds {
            assert_eq!(
                FieldKind::of(name),
                kind,
                "{}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn lines_read_back_as_fields() {
        let f = Fields::new(
            Bytes::from_static(b"content-type: text/plain\r\nx-a: b: c\r\nx-e: \r\n"),
            None,
            false,
        );
        let got: Vec<_> = f.iter().collect();
        let want: [(&[u8], &[u8]); 3] = [
            (b"content-type", b"text/plain"),
            (b"x-a", b"b: c"),
            (b"x-e", b""),
        ];
        assert_eq!(got, want);
    }
}
