//! Entry points for the fuzz targets in `fuzz/` (see README, Testing). They reach the HTTP/1
//! parsers and header rules the library keeps private, exactly as the gateway calls them, and
//! check what must hold whatever the input. Not for any other use.

use crate::http1::head::{self, BodyFraming, HeadLimits};
use crate::http1::scan::{self, Scan};
use crate::proxy::headers::{
    check_request, is_upgrade, prepare_request, prepare_request_kept, ConnInfo,
};
use crate::upstream::h1::{self, Added, Chunk, Framing, ReqFraming, Step};
use bytes::BytesMut;
use http::request::Parts;
use http::{HeaderValue, Version};

/// Parses an HTTP/1.x request head (request line and fields) into the parts the router and the
/// header rules see, as the listener's HTTP/1 server hands them over; `None` when the bytes
/// hold no complete, valid head.
pub fn request_parts(bytes: &[u8]) -> Option<Parts> {
    let limits = &HEAD_LIMITS[0];
    head::parse(&mut BytesMut::from(bytes), limits)
        .ok()
        .flatten()
        .map(|h| h.parts)
}

/// A request head through the gateway's header rules (`check_request`, then `prepare_request`)
/// and into the head written upstream. Panics if that head does not parse back as one whole
/// HTTP/1.1 request with the same target: what the gateway writes must never be ambiguous.
/// Also panics if the forwarding fields kept out of the map (`prepare_request_kept`, written
/// after it) give other bytes than those put into it: the two ways must not differ.
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
    let mut kept = parts.clone();
    prepare_request(&mut parts, &conn, upgrade);
    let forwarded = prepare_request_kept(&mut kept, &conn, upgrade);
    for framing in [ReqFraming::None, ReqFraming::Chunked, ReqFraming::Length(7)] {
        let mut out = Vec::new();
        h1::encode_head(&mut out, &parts, &Added::default(), framing);
        let mut text = Vec::new();
        h1::encode_head(&mut text, &kept, &forwarded.added(), framing);
        // The request id is random: each way drew its own.
        assert_eq!(
            without_request_id(&out),
            without_request_id(&text),
            "the forwarding fields kept as text differ from the map's"
        );
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

/// A written head with each `x-request-id` value replaced by `*`.
fn without_request_id(head: &[u8]) -> Vec<Vec<u8>> {
    head.split(|&b| b == b'\n')
        .map(|line| {
            if line.starts_with(b"x-request-id: ") {
                b"x-request-id: *".to_vec()
            } else {
                line.to_vec()
            }
        })
        .collect()
}

/// An upstream's response bytes through the gateway's HTTP/1 client: the head (1xx skipped),
/// its framing and keep-alive decision, then the body as far as the bytes go. Chunked bodies
/// run through the same decoder the gateway streams with.
pub fn response(bytes: &[u8]) {
    quick_read_agrees(bytes);
    for head_request in [false, true] {
        let mut buf = BytesMut::from(bytes);
        let mapped = h1::buffered_head(&mut buf, head_request, false);
        // Kept as text, the fields passed on are the header map's.
        let mut again = BytesMut::from(bytes);
        match (&mapped, h1::buffered_head(&mut again, head_request, true)) {
            (Ok(Some((m, mf))), Ok(Some((k, kf)))) => {
                assert_eq!(*mf, kf, "the framing differs");
                assert_eq!(buf.len(), again.len(), "the heads' lengths differ");
                if let Err(e) = h1::same_fields(m, &k) {
                    panic!("the fields kept differ from the header map's: {e}");
                }
            }
            (m, k) => assert_eq!(
                format!("{m:?}"),
                format!("{k:?}"),
                "one parse took the head"
            ),
        }
        let Ok(Some((head, framing))) = mapped else {
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

/// Panics unless a head the quick response reader takes is one httparse reads the same way:
/// same length, version, status and fields, at the same places; and unless the reader changed
/// nothing but the case of the names it passed over.
pub(crate) fn quick_read_agrees(bytes: &[u8]) {
    let mut spans = [(0, 0, 0, 0); 128];
    let mut lowered = bytes.to_vec();
    let scanned = scan::response_head(&mut lowered, &mut spans);
    assert!(
        lowered
            .iter()
            .zip(bytes)
            .all(|(l, b)| l == b || *l == b.to_ascii_lowercase()),
        "the quick reader changed more than case"
    );
    // Whatever the answer, a byte changed lies in a field's name: only token bytes before it
    // on its line, and not on the status line.
    for (i, (l, b)) in lowered.iter().zip(bytes).enumerate() {
        if l != b {
            let line = bytes[..i].iter().rposition(|&c| c == b'\n');
            let name = line.map_or(&[][..], |n| &bytes[n + 1..i]);
            assert!(
                line.is_some() && name.iter().all(|&c| is_token(c)),
                "the quick reader changed byte {i}, outside a name"
            );
        }
    }
    let Scan::Complete {
        len,
        minor,
        code,
        count,
    } = scanned
    else {
        return;
    };
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut read = httparse::Response::new(&mut fields);
    let Ok(httparse::Status::Complete(n)) = read.parse(bytes) else {
        panic!("httparse does not take a head the quick reader took");
    };
    assert_eq!(
        (n, read.version, read.code, read.headers.len()),
        (len, Some(minor), Some(code), count),
        "the quick reader read the head otherwise"
    );
    let base = bytes.as_ptr() as usize;
    let mut in_name = vec![false; len];
    for (h, &(ns, ne, vs, ve)) in read.headers.iter().zip(&spans) {
        let at = h.name.as_ptr() as usize - base;
        let value_at = h.value.as_ptr() as usize - base;
        let theirs = (at, at + h.name.len(), value_at, value_at + h.value.len());
        let ours = (ns.into(), ne.into(), vs.into(), ve.into());
        assert_eq!(theirs, ours, "a field was read at another place");
        in_name[at..at + h.name.len()].fill(true);
    }
    for (i, (l, b)) in lowered[..len].iter().zip(bytes).enumerate() {
        let want = if in_name[i] {
            b.to_ascii_lowercase()
        } else {
            *b
        };
        assert_eq!(*l, want, "byte {i} of a whole head was changed wrongly");
    }
}

/// RFC 9110's `tchar`.
fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Limits the fuzz targets parse heads under: the listener's defaults, and small ones that
/// inputs reach.
const HEAD_LIMITS: [HeadLimits; 2] = [
    HeadLimits {
        max_bytes: 60 * 1024,
        max_fields: 100,
    },
    HeadLimits {
        max_bytes: 64,
        max_fields: 3,
    },
];

/// The decision on a request head, to compare however its bytes arrived: refused (how), not
/// complete, or taken (with its length, framing, keep-alive and parts).
fn head_decision(buf: &mut BytesMut, limits: &HeadLimits) -> String {
    let before = buf.len();
    match head::parse(buf, limits) {
        Err(e) => format!("refused {e:?}"),
        Ok(None) => "partial".to_string(),
        Ok(Some(h)) => {
            let used = before - buf.len();
            assert!(
                used > 0 && used <= limits.max_bytes,
                "a head of {used} bytes taken"
            );
            assert!(h.parts.headers.len() <= limits.max_fields);
            if h.body == BodyFraming::Chunked {
                assert!(
                    !h.parts.headers.contains_key(http::header::CONTENT_LENGTH),
                    "content-length kept beside chunked"
                );
            }
            if h.parts.version == Version::HTTP_10 {
                assert!(
                    !h.parts
                        .headers
                        .contains_key(http::header::TRANSFER_ENCODING),
                    "transfer-encoding taken in HTTP/1.0"
                );
            }
            format!(
                "head {used} {:?} {} {} {} {:?}",
                h.body, h.keep_alive, h.expect_continue, h.wants_upgrade, h.parts
            )
        }
    }
}

/// A client's bytes through the listener's request head parser, whole and in two pieces (the
/// split point from the first byte), under each of [`HEAD_LIMITS`]. Panics if the parser
/// panics, takes more than a head, or decides differently for the pieces. A parse that waits
/// (`partial`) on the first piece is given the rest, as the listener does.
pub fn server_head(bytes: &[u8]) {
    for limits in &HEAD_LIMITS {
        let whole = head_decision(&mut BytesMut::from(bytes), limits);
        let at = bytes
            .first()
            .map_or(0, |&b| usize::from(b))
            .min(bytes.len());
        let mut buf = BytesMut::from(&bytes[..at]);
        let first = head_decision(&mut buf, limits);
        if first != "partial" {
            // Decided on less: the rest cannot change it. The one exception: a prefix refused
            // for its size, whose whole is refused too, for a bad byte the prefix had not
            // reached (431 or 400; the connection closes either way, as with hyper).
            let size_then_refused = first == "refused TooLarge" && whole.starts_with("refused");
            if !size_then_refused {
                assert_eq!(first, whole, "a decision on the first piece differs");
            }
            continue;
        }
        buf.extend_from_slice(&bytes[at..]);
        let second = head_decision(&mut buf, limits);
        assert_eq!(second, whole, "pieces decide differently");
    }
}

/// What the chunked decoder makes of `pieces`, fed one after another as a connection reads
/// them: the data, the trailers' count, and how it ended.
fn dechunk(pieces: &[&[u8]]) -> (Vec<u8>, usize, String) {
    let mut buf = BytesMut::new();
    let mut state = Chunk::Size;
    let mut data = Vec::new();
    let mut trailers = 0;
    let mut fed = 0;
    loop {
        match h1::chunk_step(&mut buf, state) {
            Ok(Step::Next(Framing::Chunked(next), frame)) => {
                state = next;
                if let Some(d) = frame.and_then(|f| f.into_data().ok()) {
                    data.extend_from_slice(&d);
                }
            }
            Ok(Step::Next(end, frame)) => {
                if let Some(t) = frame.and_then(|f| f.into_trailers().ok()) {
                    trailers = t.len();
                }
                let unfed: usize = pieces[fed..].iter().map(|p| p.len()).sum();
                let left = buf.len() + unfed;
                return (data, trailers, format!("ended {end:?}, {left} left"));
            }
            Ok(Step::NeedMore) => match pieces.get(fed) {
                Some(p) => {
                    buf.extend_from_slice(p);
                    fed += 1;
                }
                None => return (data, trailers, "needs more".to_string()),
            },
            Err(e) => return (data, trailers, format!("refused: {e}")),
        }
    }
}

/// Bytes as a chunked request body, through the decoder the listener reads bodies with: whole,
/// and in pieces (cut where the input's bytes say). Panics if it panics, yields more data than
/// it was given, or decodes the pieces otherwise than the whole.
pub fn chunked_body(bytes: &[u8]) {
    let whole = dechunk(&[bytes]);
    assert!(whole.0.len() <= bytes.len(), "more data out than in");
    let mut pieces = Vec::new();
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let len = (usize::from(bytes[i % bytes.len()]) % 7 + 1).min(rest.len());
        let (piece, after) = rest.split_at(len);
        pieces.push(piece);
        rest = after;
        i += 1;
    }
    let split = dechunk(&pieces);
    // The whole was fed at once, so data a refusal cut short may differ in how much came
    // before it; the outcome and, when it ends well, everything else must agree.
    assert_eq!(whole.2, split.2, "pieces end otherwise than the whole");
    if !whole.2.starts_with("refused") {
        assert_eq!(whole.0, split.0, "pieces decode other data");
        assert_eq!(whole.1, split.1, "pieces decode other trailers");
    }
}

/// Bytes from an HTTP/2 client, after its preface, through the gateway's own HTTP/2 server
/// (`server::h2`), with a handler that reads each request's body and answers with its length.
/// The client closes its side after the bytes and reads all that comes back. Panics if the
/// server panics, or does not end once the client has closed (every wait of the server is for
/// the client, and no clock is needed to end).
pub fn h2_connection(bytes: &[u8]) {
    use crate::http1::RequestBody;
    use crate::proxy::body::ProxyBody;
    use crate::server::limits::Limits;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
    }
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let (client, server) = tokio::io::duplex(1 << 16);
            let (_tx, mut stop) = tokio::sync::watch::channel(false);
            let handler = |req: http::Request<RequestBody>| async move {
                let len = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes().len(),
                    Err(_) => 0,
                };
                http::Response::new(ProxyBody::fixed(len.to_string()))
            };
            let prefix = BytesMut::from(crate::server::h2::PREFACE);
            let served = crate::server::h2::serve(
                server,
                prefix,
                Limits::listener(16),
                None,
                &mut stop,
                None,
                handler,
            );
            let (mut rd, mut wr) = tokio::io::split(client);
            let write = async move {
                let _ = wr.write_all(bytes).await;
                let _ = wr.shutdown().await;
            };
            let read = async move {
                let mut sink = Vec::new();
                let _ = rd.read_to_end(&mut sink).await;
            };
            let all = async { tokio::join!(served, write, read) };
            tokio::time::timeout(std::time::Duration::from_secs(5), all)
                .await
                .expect("the server ends once its client has closed");
        })
    });
}
