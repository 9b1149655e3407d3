//! Request heads: the request line and fields a client sends, parsed into the parts the router
//! sees, with the framing of the body that follows and what the connection does after it.
//!
//! The rules are RFC 9112's, applied as hyper's server applies them, so that a request is taken
//! or refused here exactly as it was before the gateway had its own server (the differential
//! test, `tests/differential_h1.rs`, holds the two side by side):
//! - a head that does not parse is `400`; one over the byte or field limit is `431`;
//! - `Transfer-Encoding` in HTTP/1.0 is `400`, and so is one whose last coding is not `chunked`;
//! - `Content-Length` is digits only (no sign, no list), and repeated it must agree;
//! - `Content-Length` beside `Transfer-Encoding` is dropped, the body read chunked, and the
//!   connection closed after the answer, so that no byte of it can become a request.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use std::mem::MaybeUninit;

/// Header slots kept on the stack; a listener that allows more fields parses into the heap.
const STACK_FIELDS: usize = 128;
/// Fields a forwarded request may gain in its header map on its way upstream when nothing but
/// the gateway reads it: `connection` and `upgrade` back on an upgrade, or a Host for HTTP/1.0.
/// The forwarding fields are written as text then; a map that gets them makes its own room
/// (`proxy::handler`). Kept small, a short request's map fits the allocator's per-thread cache.
const ADDED_FIELDS: usize = 2;
/// Longest request target (hyper's bound; `414` beyond).
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// What a listener lets one request head be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head, request line to blank line, in bytes.
    pub max_bytes: usize,
    /// Most header fields.
    pub max_fields: usize,
}

/// How the body after a head is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
}

/// A request head, parsed and checked.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and fields, as the router and the header rules see them.
    pub parts: http::request::Parts,
    /// The body's framing.
    pub body: BodyFraming,
    /// Whether the connection may carry another request after this one, as far as the client
    /// said (`Connection`, the version, and a framing that cannot be trusted).
    pub keep_alive: bool,
    /// `Expect: 100-continue` (HTTP/1.1): the client waits for `100 Continue` before its body.
    pub expect_continue: bool,
    /// `Upgrade` in HTTP/1.1: the connection may be handed over after a `101`.
    pub wants_upgrade: bool,
}

/// Why a head was refused; the status the client is answered with, and the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Over the byte or field limit: `431`.
    #[error("the request head is over the listener's limit")]
    TooLarge,
    /// A target longer than 65,534 bytes: `414`.
    #[error("the request target is too long")]
    TargetTooLong,
    /// Not a valid HTTP/1.x request head: `400`.
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
}

impl HeadError {
    /// The status of the answer.
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::TargetTooLong => StatusCode::URI_TOO_LONG,
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Parses the request head at the start of `buf`. `Ok(None)`: not all there yet (and still
/// under the limit). On success the head's bytes are taken off `buf`; field values and the
/// target share them rather than being copied.
pub fn parse(buf: &mut BytesMut, limits: &HeadLimits) -> Result<Option<RequestHead>, HeadError> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
    let mut heap;
    let fields = if limits.max_fields <= STACK_FIELDS {
        &mut stack[..limits.max_fields]
    } else {
        heap = Vec::with_capacity(limits.max_fields);
        heap.resize_with(limits.max_fields, MaybeUninit::uninit);
        &mut heap[..]
    };
    // The bytes are frozen for the parse, so that the target and the field values can share
    // them; a head that is not whole gets them back as they were, without a copy.
    let frozen = std::mem::take(buf).freeze();
    let mut req = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let parsed = config.parse_request_with_uninit_headers(&mut req, &frozen[..], fields);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= limits.max_bytes => len,
        other => {
            let refused = match other {
                Ok(httparse::Status::Complete(_)) => Err(HeadError::TooLarge),
                Ok(httparse::Status::Partial) if frozen.len() >= limits.max_bytes => {
                    Err(HeadError::TooLarge)
                }
                Ok(httparse::Status::Partial) => Ok(None),
                Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
                Err(httparse::Error::Version) => Err(HeadError::Malformed("bad version")),
                Err(httparse::Error::Token) if req.method.is_none() => {
                    Err(HeadError::Malformed("bad method"))
                }
                Err(httparse::Error::Token) => Err(HeadError::Malformed("bad request target")),
                Err(_) => Err(HeadError::Malformed("bad header field")),
            };
            *buf = frozen
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
            return refused;
        }
    };
    let target = req.path.expect("a complete head has a target");
    let method = req.method.expect("a complete head has a method");
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let head = if target.len() > MAX_TARGET {
        Err(HeadError::TargetTooLong)
    } else {
        match (
            Method::from_bytes(method.as_bytes()),
            Uri::from_maybe_shared(frozen.slice_ref(target.as_bytes())),
        ) {
            (Err(_), _) => Err(HeadError::Malformed("bad method")),
            (_, Err(_)) => Err(HeadError::Malformed("bad request target")),
            (Ok(method), Ok(uri)) => build(&frozen, req.headers, method, uri, version),
        }
    };
    // What follows the head (a body, a pipelined request) is read on from a buffer of its own.
    *buf = match frozen.get(len..) {
        Some(rest) if !rest.is_empty() => BytesMut::from(rest),
        _ => BytesMut::new(),
    };
    head
}

/// The parts and framing of a head whose `fields` lie in `head`.
fn build(
    head: &Bytes,
    fields: &[httparse::Header<'_>],
    method: Method,
    uri: Uri,
    version: Version,
) -> Result<Option<RequestHead>, HeadError> {
    let malformed = |why| Err(HeadError::Malformed(why));
    let http11 = version == Version::HTTP_11;
    // Room for the fields the proxy may add, so that adding them does not grow and rehash the
    // map: that cost 1.7k instructions per request (BENCHMARKS.md, issue 17).
    let mut headers = HeaderMap::with_capacity(fields.len() + ADDED_FIELDS);
    let mut body = BodyFraming::Empty;
    let mut keep_alive = http11;
    let mut said_close = false;
    let mut length: Option<u64> = None;
    let (mut has_length, mut has_te, mut te_chunked) = (false, false, false);
    let mut expect_continue = false;
    let mut wants_upgrade = false;
    for f in fields {
        let Ok(name) = HeaderName::from_bytes(f.name.as_bytes()) else {
            return malformed("bad header name");
        };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice_ref(f.value)) else {
            return malformed("bad header value");
        };
        match name {
            header::TRANSFER_ENCODING => {
                if !http11 {
                    return malformed("transfer-encoding in HTTP/1.0");
                }
                has_te = true;
                if length.take().is_some() {
                    headers.remove(header::CONTENT_LENGTH);
                }
                te_chunked = last_coding_is_chunked(value.as_bytes());
                if te_chunked {
                    body = BodyFraming::Chunked;
                }
            }
            header::CONTENT_LENGTH => {
                has_length = true;
                if has_te {
                    continue;
                }
                let Some(n) = digits(value.as_bytes()) else {
                    return malformed("bad content-length");
                };
                match length {
                    Some(before) if before != n => return malformed("content-lengths disagree"),
                    Some(_) => continue,
                    None => {
                        length = Some(n);
                        body = if n == 0 {
                            BodyFraming::Empty
                        } else {
                            BodyFraming::Length(n)
                        };
                    }
                }
            }
            header::CONNECTION => {
                if said_close || has_token(value.as_bytes(), b"close") {
                    said_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(value.as_bytes(), b"keep-alive");
                }
            }
            header::EXPECT => {
                expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
            }
            header::UPGRADE => wants_upgrade = http11,
            _ => {}
        }
        headers.append(name, value);
    }
    if has_te && !te_chunked {
        return malformed("transfer-encoding does not end with chunked");
    }
    if has_te && has_length {
        keep_alive = false;
    }
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        body,
        keep_alive,
        expect_continue: expect_continue && http11,
        wants_upgrade,
    }))
}

/// Whether the comma-separated list `value` holds `token`, in any case.
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether the last coding of a `Transfer-Encoding` value is `chunked`.
fn last_coding_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A `Content-Length` value: ASCII digits only, no sign, no list, no overflow.
pub(crate) fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 8 * 1024,
        max_fields: 16,
    };

    fn parsed(bytes: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        parse(&mut BytesMut::from(bytes), &LIMITS)
    }

    fn head(bytes: &[u8]) -> RequestHead {
        parsed(bytes).unwrap().unwrap()
    }

    #[test]
    fn a_head_is_taken_off_the_buffer_and_its_body_left() {
        let mut buf =
            BytesMut::from(&b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"[..]);
        let h = parse(&mut buf, &LIMITS).unwrap().unwrap();
        assert_eq!(&buf[..], b"abc");
        assert_eq!(h.parts.method, Method::POST);
        assert_eq!(h.parts.uri, "/a?b=1");
        assert_eq!(h.parts.headers["host"], "x");
        assert_eq!(h.body, BodyFraming::Length(3));
        assert!(h.keep_alive && !h.expect_continue);
    }

    #[test]
    fn partial_heads_wait_until_the_limit() {
        assert!(parsed(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let mut long = b"GET / HTTP/1.1\r\nX-A: ".to_vec();
        long.resize(LIMITS.max_bytes, b'a');
        assert_eq!(parsed(&long).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let chunked = head(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(chunked.body, BodyFraming::Chunked);
        let both =
            head(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(both.body, BodyFraming::Chunked);
        assert!(!both.keep_alive);
        assert!(both.parts.headers.get("content-length").is_none());
        let same = head(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(same.body, BodyFraming::Length(5));
        assert_eq!(
            same.parts.headers.get_all("content-length").iter().count(),
            1
        );
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(parsed(bad), Err(HeadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(!head(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(
            !head(b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n")
                .keep_alive
        );
        assert!(head(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").expect_continue);
        assert!(!head(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        assert!(head(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").wants_upgrade);
    }

    #[test]
    fn limits_and_grammar_give_their_status() {
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..17 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parsed(&many).unwrap_err().status(), 431);
        for bad in [
            &b"GET/ HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nX-A : b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: b\r\n c\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: b\x00c\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET /\r\n\r\n",
        ] {
            assert_eq!(
                parsed(bad).unwrap_err().status(),
                400,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Bare LF ends lines as CRLF does.
        let lf = head(b"GET /lf HTTP/1.1\nHost: a\n\n");
        assert_eq!(lf.parts.headers["host"], "a");
    }
}
