//! Encoding response fields without a dynamic table (see the module docs for why).

use super::integer;

/// `:status` — an indexed field for 200, 204, 206, 304, 400, 404, 500; otherwise a literal
/// without indexing with name index 8.
pub fn encode_status(code: u16, dst: &mut Vec<u8>) {
    let index = match code {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => {
            let mut digits = [0u8; 5];
            let mut start = digits.len();
            let mut rest = code;
            loop {
                start -= 1;
                digits[start] = b'0' + (rest % 10) as u8;
                rest /= 10;
                if rest == 0 {
                    break;
                }
            }
            // 0000 1000: literal without indexing, name index 8; then a plain string.
            dst.extend_from_slice(&[0x08, (digits.len() - start) as u8]);
            dst.extend_from_slice(&digits[start..]);
            return;
        }
    };
    dst.push(0x80 | index);
}

/// One field as a literal without indexing (never-indexed when `sensitive`): the name by its
/// static-table index when it is there, else as a literal; the value as a plain (not Huffman)
/// literal. `name` is lowercase already.
///
/// Plain values are a quarter or so longer than Huffman-coded ones, but cost only a copy, and
/// response headers are a small part of what the gateway writes.
pub fn encode_field(name: &[u8], value: &[u8], sensitive: bool, dst: &mut Vec<u8>) {
    // 0001xxxx never indexed, 0000xxxx without indexing; both with a 4-bit name index.
    let flags = if sensitive { 0x10 } else { 0x00 };
    dst.reserve(name.len() + value.len() + 12);
    match static_name_index(name) {
        Some(index) => integer::encode(dst, flags, 4, index),
        None => {
            dst.push(flags);
            encode_plain(name, dst);
        }
    }
    encode_plain(value, dst);
}

fn encode_plain(s: &[u8], dst: &mut Vec<u8>) {
    integer::encode(dst, 0x00, 7, s.len());
    dst.extend_from_slice(s);
}

/// The first static-table index with this name. A match on the length first, so a name is
/// compared with at most six others.
pub(super) fn static_name_index(name: &[u8]) -> Option<usize> {
    let index = match name.len() {
        3 => match name {
            b"age" => 21,
            b"via" => 60,
            _ => return None,
        },
        4 => match name {
            b"date" => 33,
            b"etag" => 34,
            b"from" => 37,
            b"host" => 38,
            b"link" => 45,
            b"vary" => 59,
            _ => return None,
        },
        5 => match name {
            b":path" => 4,
            b"allow" => 22,
            b"range" => 50,
            _ => return None,
        },
        6 => match name {
            b"accept" => 19,
            b"cookie" => 32,
            b"expect" => 35,
            b"server" => 54,
            _ => return None,
        },
        7 => match name {
            b":method" => 2,
            b":scheme" => 6,
            b":status" => 8,
            b"expires" => 36,
            b"referer" => 51,
            b"refresh" => 52,
            _ => return None,
        },
        8 => match name {
            b"if-match" => 39,
            b"if-range" => 42,
            b"location" => 46,
            _ => return None,
        },
        10 => match name {
            b":authority" => 1,
            b"set-cookie" => 55,
            b"user-agent" => 58,
            _ => return None,
        },
        11 => match name {
            b"retry-after" => 53,
            _ => return None,
        },
        12 => match name {
            b"content-type" => 31,
            b"max-forwards" => 47,
            _ => return None,
        },
        13 => match name {
            b"accept-ranges" => 18,
            b"authorization" => 23,
            b"cache-control" => 24,
            b"content-range" => 30,
            b"if-none-match" => 41,
            b"last-modified" => 44,
            _ => return None,
        },
        14 => match name {
            b"accept-charset" => 15,
            b"content-length" => 28,
            _ => return None,
        },
        15 => match name {
            b"accept-encoding" => 16,
            b"accept-language" => 17,
            _ => return None,
        },
        16 => match name {
            b"content-encoding" => 26,
            b"content-language" => 27,
            b"content-location" => 29,
            b"www-authenticate" => 61,
            _ => return None,
        },
        17 => match name {
            b"if-modified-since" => 40,
            b"transfer-encoding" => 57,
            _ => return None,
        },
        18 => match name {
            b"proxy-authenticate" => 48,
            _ => return None,
        },
        19 => match name {
            b"content-disposition" => 25,
            b"if-unmodified-since" => 43,
            b"proxy-authorization" => 49,
            _ => return None,
        },
        25 => match name {
            b"strict-transport-security" => 56,
            _ => return None,
        },
        27 => match name {
            b"access-control-allow-origin" => 20,
            _ => return None,
        },
        _ => return None,
    };
    Some(index)
}
