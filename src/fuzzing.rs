//! Entry points for the fuzz targets in `fuzz/` (see README, Testing). They reach the HTTP/1
//! parsers and header rules the library keeps private, exactly as the gateway calls them, and
//! check what must hold whatever the input. Not for any other use.

use crate::proxy::headers::{check_request, is_upgrade, prepare_request, ConnInfo};
use crate::upstream::h1::{self, Framing, ReqFraming, Step};
use bytes::BytesMut;
use http::request::Parts;
use http::{HeaderValue, Version};

/// Parses an HTTP/1.x request head (request line and fields) into the parts the router and the
/// header rules see, as the listener's HTTP/1 server hands them over; `None` when the bytes
/// hold no complete, valid head.
pub fn request_parts(bytes: &[u8]) -> Option<Parts> {
    let mut fields = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(_) = req.parse(bytes).ok()? else {
        return None;
    };
    let version = match req.version? {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut builder = http::Request::builder()
        .method(req.method?)
        .uri(req.path?)
        .version(version);
    for f in req.headers.iter() {
        builder = builder.header(f.name, f.value);
    }
    builder.body(()).ok().map(|r| r.into_parts().0)
}

/// A request head through the gateway's header rules (`check_request`, then `prepare_request`)
/// and into the head written upstream. Panics if that head does not parse back as one whole
/// HTTP/1.1 request with the same target: what the gateway writes must never be ambiguous.
pub fn request_head(bytes: &[u8]) {
    let Some(mut parts) = request_parts(bytes) else {
        return;
    };
    let _ = crate::routing::request_authority(&parts);
    if check_request(&mut parts).is_err() {
        return;
    }
    let conn = ConnInfo {
        client_ip: HeaderValue::from_static("192.0.2.1"),
        proto: HeaderValue::from_static("http"),
        stream_idle: None,
        local: None,
    };
    let upgrade = is_upgrade(&parts);
    prepare_request(&mut parts, &conn, upgrade);
    for framing in [ReqFraming::None, ReqFraming::Chunked, ReqFraming::Length(7)] {
        let mut out = Vec::new();
        h1::encode_head(&mut out, &parts, framing);
        let mut fields = [httparse::EMPTY_HEADER; 256];
        let mut back = httparse::Request::new(&mut fields);
        match back.parse(&out) {
            Ok(httparse::Status::Complete(n)) => {
                assert_eq!(n, out.len(), "the head written upstream ends early");
                let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                assert_eq!(back.path, Some(target), "the target changed on the way");
            }
            other => panic!(
                "the head written upstream does not parse: {other:?}\n{}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// An upstream's response bytes through the gateway's HTTP/1 client: the head (1xx skipped),
/// its framing and keep-alive decision, then the body as far as the bytes go. Chunked bodies
/// run through the same decoder the gateway streams with.
pub fn response(bytes: &[u8]) {
    for head_request in [false, true] {
        let mut buf = BytesMut::from(bytes);
        let Ok(Some((head, framing))) = h1::buffered_head(&mut buf, head_request) else {
            continue;
        };
        let _ = h1::keep_alive(&head);
        let Framing::Chunked(mut state) = framing else {
            continue;
        };
        // Each step consumes bytes or ends, so this ends with the input.
        while let Ok(Step::Next(Framing::Chunked(next), _)) = h1::chunk_step(&mut buf, state) {
            state = next;
        }
    }
}
