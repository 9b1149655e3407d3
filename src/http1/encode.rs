//! Response heads and body framing written to an HTTP/1.x client.
//!
//! The framing is the server's to choose (RFC 9112 §6): a `Content-Length` the answer carries,
//! else the body's known length, else chunked (HTTP/1.1) or the connection's close (HTTP/1.0).
//! `Transfer-Encoding` from the answer is never passed on; `Connection` is, and `close` is added
//! when the connection will not carry another request.

use super::fields::{FieldKind as Kind, Fields};
use http::header::{self, HeaderMap};
use http::{StatusCode, Version};
use std::cell::RefCell;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// How the body after a written head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body may follow (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the connection closes (HTTP/1.0 with a body of unknown length).
    Close,
}

/// What the request being answered says about its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    /// The request's version: HTTP/1.0 is answered in HTTP/1.0.
    pub version: Version,
    /// A HEAD request: the answer's head only.
    pub head: bool,
    /// A CONNECT request: a 2xx answer is a head alone, and the connection then closes (the
    /// server makes no tunnel; RFC 9110 §9.3.6 has no length in such an answer).
    pub connect: bool,
    /// Whether the connection may go on after this answer, as far as the request goes.
    pub keep_alive: bool,
}

/// Writes the status line and fields of an answer to `dst`, with the body's length when
/// `known` (from the body itself). `raw`: an upstream's fields as text, written before
/// `headers`. Returns the body's framing and whether the connection may carry another
/// request after it.
pub fn head(
    dst: &mut Vec<u8>,
    asked: Asked,
    status: StatusCode,
    headers: &HeaderMap,
    raw: Option<&Fields>,
    known: Option<u64>,
) -> (Framing, bool) {
    let http10 = asked.version == Version::HTTP_10;
    if status == StatusCode::OK && !http10 {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        let reason = status.canonical_reason().unwrap_or("<none>");
        dst.extend_from_slice(reason.as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The switch's own fields (Connection, Upgrade) go as they are; no body follows.
        if let Some(raw) = raw {
            dst.extend_from_slice(raw.text());
        }
        fields(dst, headers, |_| true);
        dst.extend_from_slice(b"\r\n");
        return (Framing::None, false);
    }
    if asked.connect && status.is_success() {
        let framing =
            |n: &[u8]| matches!(Kind::of(n), Kind::ContentLength | Kind::TransferEncoding);
        for (name, value) in raw.into_iter().flat_map(Fields::iter) {
            if !framing(name) {
                field(dst, name, value);
            }
        }
        fields(dst, headers, |n| !framing(n.as_str().as_bytes()));
        dst.extend_from_slice(b"\r\n");
        return (Framing::None, false);
    }
    let bodyless = asked.head
        || status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let mut keep_alive = asked.keep_alive;
    let mut declared: Option<u64> = None;
    let mut said_close = false;
    let mut dated = false;
    if let Some(raw) = raw {
        // Written as they are: what framing needs was read off them as they were made.
        dst.extend_from_slice(raw.text());
        declared = raw.length();
        dated = raw.dated();
    }
    for (name, value) in headers {
        match Kind::of(name.as_str().as_bytes()) {
            Kind::TransferEncoding => continue,
            Kind::ContentLength => {
                let Some(n) = super::head::digits(value.as_bytes()) else {
                    continue;
                };
                if declared.is_some() || status == StatusCode::NO_CONTENT {
                    continue;
                }
                declared = Some(n);
            }
            Kind::Connection if super::head::has_token(value.as_bytes(), b"close") => {
                said_close = true;
                keep_alive = false;
            }
            Kind::Date => dated = true,
            _ => {}
        }
        field(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    let framing = if bodyless {
        Framing::None
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else if let Some(n) = known {
        dst.extend_from_slice(b"content-length: ");
        decimal(dst, n);
        dst.extend_from_slice(b"\r\n");
        Framing::Length(n)
    } else if http10 {
        keep_alive = false;
        Framing::Close
    } else {
        dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if http10 {
        if keep_alive {
            dst.extend_from_slice(b"connection: keep-alive\r\n");
        }
    } else if !keep_alive && !said_close {
        dst.extend_from_slice(b"connection: close\r\n");
    }
    if !dated {
        dst.extend_from_slice(b"date: ");
        date(dst);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// The answer to a head refused before any handler saw it: the status, no body, and the
/// connection closes.
pub fn refusal(dst: &mut Vec<u8>, status: StatusCode) {
    let asked = Asked {
        version: Version::HTTP_11,
        head: false,
        connect: false,
        keep_alive: false,
    };
    head(dst, asked, status, &HeaderMap::new(), None, Some(0));
}

/// `100 Continue`, sent when the handler first reads a body the client holds back for it.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The framing before a chunk of `len` bytes.
pub fn chunk_start(dst: &mut Vec<u8>, len: usize) {
    write!(dst, "{len:x}\r\n").expect("writing to a Vec");
}

/// The end of a chunked body, with `trailers` when the client accepts them.
pub fn chunked_end(dst: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    dst.extend_from_slice(b"0\r\n");
    if let Some(t) = trailers {
        fields(dst, t, |n| {
            !matches!(
                *n,
                header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::HOST
            )
        });
    }
    dst.extend_from_slice(b"\r\n");
}

fn fields(dst: &mut Vec<u8>, headers: &HeaderMap, keep: impl Fn(&header::HeaderName) -> bool) {
    for (name, value) in headers {
        if keep(name) {
            field(dst, name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

fn field(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.extend_from_slice(name);
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal.
fn decimal(dst: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[at..]);
}

thread_local! {
    /// The `Date` of the current second, formatted once a second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Appends the current time as an IMF-fixdate (`Tue, 01 Dec 2026 16:29:20 GMT`).
pub fn date(dst: &mut Vec<u8>) {
    dst.extend_from_slice(&now_date());
}

/// The current time as an IMF-fixdate, formatted at most once a second per thread.
pub fn now_date() -> [u8; 29] {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, imf_fixdate(secs));
        }
        cached.1
    })
}

/// `secs` since the epoch as an IMF-fixdate (RFC 9110 §5.6.7).
fn imf_fixdate(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let mut out = [0u8; 29];
    let _ = write!(
        &mut out[..],
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        std::str::from_utf8(DAYS[(days % 7) as usize]).unwrap_or("Thu"),
        day,
        std::str::from_utf8(MONTHS[(month - 1) as usize]).unwrap_or("Jan"),
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    out
}

/// Year, month (1–12) and day (1–31) of a day count since 1970-01-01 (the proleptic
/// Gregorian calendar, by the era method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn asked(version: Version, keep_alive: bool) -> Asked {
        Asked {
            version,
            head: false,
            connect: false,
            keep_alive,
        }
    }

    fn text(dst: &[u8]) -> String {
        String::from_utf8_lossy(dst).into_owned()
    }

    #[test]
    fn dates_are_imf_fixdates() {
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &imf_fixdate(1_796_142_560),
            b"Tue, 01 Dec 2026 16:29:20 GMT"
        );
        assert_eq!(&imf_fixdate(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn framing_is_chosen_by_length_then_version() {
        let mut h = HeaderMap::new();
        h.insert("date", HeaderValue::from_static("x"));
        // The head written for an OK answer to a request of `version`, and what it decided.
        let ok = |version, keep_alive, known| {
            let mut dst = Vec::new();
            let got = head(
                &mut dst,
                asked(version, keep_alive),
                StatusCode::OK,
                &h,
                None,
                known,
            );
            (text(&dst), got)
        };
        let (t, got) = ok(Version::HTTP_11, true, Some(5));
        assert_eq!(got, (Framing::Length(5), true));
        assert_eq!(t, "HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 5\r\n\r\n");
        let (t, got) = ok(Version::HTTP_11, false, None);
        assert_eq!(got, (Framing::Chunked, false));
        assert!(
            t.contains("transfer-encoding: chunked\r\nconnection: close\r\n"),
            "{t}"
        );
        let (t, got) = ok(Version::HTTP_10, true, None);
        assert_eq!(got, (Framing::Close, false));
        assert!(t.starts_with("HTTP/1.0 200 OK\r\n"), "{t}");
        let (t, got) = ok(Version::HTTP_10, true, Some(0));
        assert_eq!(got, (Framing::Length(0), true));
        assert!(t.contains("connection: keep-alive\r\n"), "{t}");
    }

    #[test]
    fn a_2xx_to_connect_is_a_head_alone_and_closes() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("3"));
        h.insert("x-a", HeaderValue::from_static("1"));
        let connect = Asked {
            connect: true,
            ..asked(Version::HTTP_11, true)
        };
        let mut dst = Vec::new();
        assert_eq!(
            head(&mut dst, connect, StatusCode::OK, &h, None, Some(3)),
            (Framing::None, false)
        );
        assert_eq!(text(&dst), "HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\n");
        let mut dst = Vec::new();
        let refused = head(&mut dst, connect, StatusCode::FORBIDDEN, &h, None, Some(3));
        assert_eq!(refused, (Framing::Length(3), true));
    }

    #[test]
    fn a_declared_length_wins_and_transfer_encoding_never_passes() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("3"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let mut dst = Vec::new();
        let got = head(
            &mut dst,
            asked(Version::HTTP_11, true),
            StatusCode::NOT_FOUND,
            &h,
            None,
            None,
        );
        assert_eq!(got, (Framing::Length(3), true));
        let t = text(&dst);
        assert!(
            t.starts_with("HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n"),
            "{t}"
        );
        assert!(!t.contains("transfer-encoding"), "{t}");
        assert!(t.contains("\r\ndate: "), "{t}");
        let mut dst = Vec::new();
        let head_req = Asked {
            head: true,
            ..asked(Version::HTTP_11, true)
        };
        assert_eq!(
            head(&mut dst, head_req, StatusCode::OK, &h, None, None).0,
            Framing::None
        );
    }

    #[test]
    fn fields_as_text_go_first_and_frame_the_body() {
        let raw = Fields::new(
            bytes::Bytes::from_static(
                b"content-type: text/plain\r\ncontent-length: 3\r\ndate: x\r\n",
            ),
            Some(3),
            true,
        );
        let mut added = HeaderMap::new();
        added.insert("set-cookie", HeaderValue::from_static("a=1"));
        let mut dst = Vec::new();
        let got = head(
            &mut dst,
            asked(Version::HTTP_11, true),
            StatusCode::OK,
            &added,
            Some(&raw),
            None,
        );
        assert_eq!(got, (Framing::Length(3), true));
        assert_eq!(
            text(&dst),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\ndate: x\r\n\
             set-cookie: a=1\r\n\r\n"
        );
        let connect = Asked {
            connect: true,
            ..asked(Version::HTTP_11, true)
        };
        let mut dst = Vec::new();
        head(&mut dst, connect, StatusCode::OK, &added, Some(&raw), None);
        assert_eq!(
            text(&dst),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: x\r\nset-cookie: a=1\r\n\r\n"
        );
    }
}
