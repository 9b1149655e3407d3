//! The upstream HTTP/1.1 codec (`upstream::h1`) on the wire: scripted raw-TCP upstreams write
//! exact response bytes and record exact request bytes, so each edge of the protocol is
//! exercised for real through the gateway.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Whole-test bound: a hang fails the test instead of blocking the run.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs a test body, failing it if it takes longer than [`LIMIT`].
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {LIMIT:?}"))
}

// ---------------------------------------------------------------------------------------------
// Scripted upstream
// ---------------------------------------------------------------------------------------------

/// What a scripted upstream received of one request, byte for byte.
#[derive(Debug, Clone, Default)]
struct RawRequest {
    /// Connection number, from 1, in accept order.
    conn: usize,
    /// Request number on that connection, from 1.
    seq: usize,
    method: String,
    target: String,
    /// Header fields as sent, names lowercased.
    headers: Vec<(String, String)>,
    /// The body bytes as they were on the wire (chunk framing included).
    raw_body: Vec<u8>,
    /// The body, decoded.
    body: Vec<u8>,
    /// Where it sits in the log.
    index: usize,
}

impl RawRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }
}

type Log = Arc<Mutex<Vec<RawRequest>>>;

/// A running scripted upstream.
struct Scripted {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    log: Log,
}

impl Scripted {
    /// TCP connections accepted so far.
    fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// Every request head read so far (with its body once read).
    fn requests(&self) -> Vec<RawRequest> {
        self.log.lock().unwrap().clone()
    }

    /// How many requests with this target arrived.
    fn count_target(&self, target: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.target == target)
            .count()
    }
}

/// One accepted connection, as a script drives it.
struct Peer {
    stream: TcpStream,
    buf: Vec<u8>,
    conn: usize,
    seq: usize,
    log: Log,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Peer {
    /// Reads more bytes into the buffer; false at EOF or on an error.
    async fn fill(&mut self) -> bool {
        self.buf.reserve(64 * 1024);
        matches!(self.stream.read_buf(&mut self.buf).await, Ok(n) if n > 0)
    }

    /// Reads a request head (up to CRLF CRLF) and logs it; `None` when the peer closed first.
    async fn read_head(&mut self) -> Option<RawRequest> {
        let end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head: Vec<u8> = self.buf.drain(..end + 4).collect();
        let text = String::from_utf8_lossy(&head[..end]).into_owned();
        let mut lines = text.split("\r\n");
        let mut line = lines.next().unwrap_or("").split(' ');
        let method = line.next().unwrap_or("").to_string();
        let target = line.next().unwrap_or("").to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        self.seq += 1;
        let mut log = self.log.lock().unwrap();
        let req = RawRequest {
            conn: self.conn,
            seq: self.seq,
            method,
            target,
            headers,
            index: log.len(),
            ..RawRequest::default()
        };
        log.push(req.clone());
        Some(req)
    }

    /// Reads a whole request: head, then the body by `content-length` or chunked framing.
    async fn read_request(&mut self) -> Option<RawRequest> {
        let mut req = self.read_head().await?;
        if req
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            let mut raw = Vec::new();
            req.body = self.read_chunked(&mut raw).await?;
            req.raw_body = raw;
        } else if let Some(len) = req.header("content-length") {
            let mut left: usize = len.parse().ok()?;
            while left > 0 {
                let piece = self.take(left).await?;
                left -= piece.len();
                req.body.extend_from_slice(&piece);
            }
            req.raw_body = req.body.clone();
        }
        self.log.lock().unwrap()[req.index] = req.clone();
        Some(req)
    }

    /// Up to `max` bytes, from the buffer or the next read; `None` at EOF.
    async fn take(&mut self, max: usize) -> Option<Vec<u8>> {
        if self.buf.is_empty() && !self.fill().await {
            return None;
        }
        let n = max.min(self.buf.len());
        Some(self.buf.drain(..n).collect())
    }

    /// A CRLF-terminated line without its CRLF; `None` at EOF or for a bare LF.
    async fn read_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(lf) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=lf).collect();
                return line.strip_suffix(b"\r\n").map(<[u8]>::to_vec);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// A chunk-size line's size (extensions ignored).
    fn chunk_size(line: &[u8]) -> Option<usize> {
        let text = std::str::from_utf8(line).ok()?;
        let digits = text.split(';').next()?.trim_end();
        usize::from_str_radix(digits, 16).ok()
    }

    /// Reads a chunked body to its end, keeping the wire bytes in `raw`.
    async fn read_chunked(&mut self, raw: &mut Vec<u8>) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            raw.extend_from_slice(&line);
            raw.extend_from_slice(b"\r\n");
            let size = Self::chunk_size(&line)?;
            if size == 0 {
                loop {
                    let trailer = self.read_line().await?;
                    raw.extend_from_slice(&trailer);
                    raw.extend_from_slice(b"\r\n");
                    if trailer.is_empty() {
                        return Some(body);
                    }
                }
            }
            let mut left = size;
            while left > 0 {
                let piece = self.take(left).await?;
                left -= piece.len();
                raw.extend_from_slice(&piece);
                body.extend_from_slice(&piece);
            }
            let end = self.read_line().await?;
            raw.extend_from_slice(&end);
            raw.extend_from_slice(b"\r\n");
            if !end.is_empty() {
                return None;
            }
        }
    }

    /// Writes all of `bytes`; false if the connection is gone.
    async fn write(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }
}

/// Starts an upstream on loopback that runs `script` on every accepted connection.
async fn spawn_script<F, Fut>(script: F) -> Scripted
where
    F: Fn(Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let log: Log = Arc::default();
    let (accepted, shared) = (conns.clone(), log.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = accepted.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(script(Peer {
                stream,
                buf: Vec::new(),
                conn,
                seq: 0,
                log: shared.clone(),
            }));
        }
    });
    Scripted { addr, conns, log }
}

/// What a responder does with a request it read.
enum Act {
    /// Writes these bytes and reads the next request.
    Reply(Vec<u8>),
    /// Writes these bytes and closes the connection.
    ReplyClose(Vec<u8>),
    /// Closes the connection without a word.
    Close,
}

/// An upstream that reads whole requests and acts on each as `answer` says.
async fn spawn_responder<F>(answer: F) -> Scripted
where
    F: Fn(&RawRequest) -> Act + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    spawn_script(move |mut peer| {
        let answer = answer.clone();
        async move {
            while let Some(req) = peer.read_request().await {
                match answer(&req) {
                    Act::Reply(bytes) => {
                        if !peer.write(&bytes).await {
                            return;
                        }
                    }
                    Act::ReplyClose(bytes) => {
                        peer.write(&bytes).await;
                        return;
                    }
                    Act::Close => return,
                }
            }
        }
    })
    .await
}

/// `200 OK` with a `content-length` body.
fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A gateway whose one route sends everything to `upstream`.
async fn gateway_to(upstream: SocketAddr) -> TestGateway {
    let rule = "      - route:
          - destination: { service: svc, subset: up }
";
    spawn_gateway(&svc_config(&subset("up", upstream), rule)).await
}

/// Asserts a gateway-made `503 UC` answer.
fn assert_uc(a: &Answer, case: &str) {
    assert_eq!(a.status, 503, "{case}: body {:?}", a.body);
    assert!(
        a.body.starts_with("UC:"),
        "{case}: body {:?} should start with \"UC:\"",
        a.body
    );
}

/// Strict chunked decoding: every size line, CRLF and the final empty line must be in place,
/// and nothing may follow.
fn decode_chunked(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let end = find(raw, b"\r\n").ok_or("no CRLF after a chunk size")?;
        let line = std::str::from_utf8(&raw[..end]).map_err(|e| e.to_string())?;
        let digits = line.split(';').next().unwrap_or("");
        let size = usize::from_str_radix(digits, 16).map_err(|e| format!("{line:?}: {e}"))?;
        raw = &raw[end + 2..];
        if size == 0 {
            loop {
                let end = find(raw, b"\r\n").ok_or("unterminated trailer section")?;
                let empty = end == 0;
                raw = &raw[end + 2..];
                if empty {
                    break;
                }
            }
            return match raw.is_empty() {
                true => Ok(out),
                false => Err(format!("{} bytes after the last chunk", raw.len())),
            };
        }
        if raw.len() < size + 2 {
            return Err(format!("chunk of {size} bytes cut short"));
        }
        out.extend_from_slice(&raw[..size]);
        if &raw[size..size + 2] != b"\r\n" {
            return Err("no CRLF after chunk data".into());
        }
        raw = &raw[size + 2..];
    }
}

/// Sends raw bytes to `addr` (a request asking `connection: close`) and reads to EOF.
async fn raw_roundtrip(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out
}

fn checksum(data: &[u8]) -> u64 {
    let mut sum = Checksum::default();
    sum.update(data);
    sum.0
}

/// A streamed request body of these pieces, with no length known up front.
fn streamed(pieces: &[&'static str]) -> TestBody {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = pieces
        .iter()
        .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

// ---------------------------------------------------------------------------------------------
// 1. Chunked responses
// ---------------------------------------------------------------------------------------------

/// The chunked answer: chunk extensions, chunk sizes in both cases, and trailers.
const CHUNKED_ANSWER: &str =
    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-kind: chunked\r\n\r\n\
    5;x=y\r\nhello\r\n6\r\n world\r\n3 ; name=\"q\"\r\n!!!\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n\
    0\r\nx-trailer: v\r\ngrpc-status: 0\r\n\r\n";
const CHUNKED_BODY: &str = "hello world!!!abcdefghijklmnopqrstuvwxyz";

/// Writes `bytes` one byte per write (the socket has no Nagle delay): the gateway's reads end
/// wherever the writes happen to be, so each read may stop inside a size line, a CRLF, data or
/// a trailer. (Every split point is checked without sockets in `upstream::h1`'s unit tests.)
async fn write_byte_by_byte(peer: &mut Peer, bytes: &[u8]) -> bool {
    for b in bytes {
        if !peer.write(std::slice::from_ref(b)).await {
            return false;
        }
    }
    true
}

async fn spawn_chunked_upstream() -> Scripted {
    spawn_script(|mut peer| async move {
        while peer.read_request().await.is_some() {
            if !write_byte_by_byte(&mut peer, CHUNKED_ANSWER.as_bytes()).await {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_with_extensions_arrives_whole_over_http1() {
    bounded(async {
        let up = spawn_chunked_upstream().await;
        let gw = gateway_to(up.addr).await;
        let client = http1_client();
        for _ in 0..2 {
            let a = get(&client, &gw.url("/chunked"), &[]).await;
            assert_eq!(a.status, 200);
            assert_eq!(a.body, CHUNKED_BODY);
            assert_eq!(a.headers["x-kind"], "chunked");
        }
        assert_eq!(
            up.connections(),
            1,
            "a chunked answer read to its last chunk leaves the connection reusable"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_trailers_reach_an_h2c_client_as_http2_trailers() {
    bounded(async {
        let up = spawn_chunked_upstream().await;
        let gw = gateway_to(up.addr).await;
        let client = h2c_client();
        let resp = client
            .request(
                Request::get(gw.url("/trailers"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .expect("the gateway answers");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let collected = resp.into_body().collect().await.expect("the body arrives");
        let trailers = collected
            .trailers()
            .cloned()
            .expect("the upstream's chunked trailers arrive as HTTP/2 trailers");
        assert_eq!(trailers["x-trailer"], "v");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), CHUNKED_BODY.as_bytes());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Close-delimited responses
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_response_is_read_to_the_close_and_not_reused() {
    bounded(async {
        // 200 KiB of pattern bytes, in several writes, then the close ends the body.
        let body: Vec<u8> = (0..200 * 1024u64).map(pattern_byte).collect();
        let expected = (body.len(), checksum(&body));
        let up = spawn_script(move |mut peer| {
            let body = body.clone();
            async move {
                if peer.read_request().await.is_none() {
                    return;
                }
                peer.write(b"HTTP/1.1 200 OK\r\nx-framing: close\r\n\r\n")
                    .await;
                for piece in body.chunks(50 * 1024) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    peer.write(piece).await;
                }
            }
        })
        .await;
        let gw = gateway_to(up.addr).await;
        let client = http1_client();
        for round in 1..=2 {
            let resp = client
                .request(
                    Request::get(gw.url("/close"))
                        .body(Full::default())
                        .unwrap(),
                )
                .await
                .expect("the gateway answers");
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-framing"], "close");
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!((got.len(), checksum(&got)), expected, "round {round}");
            assert_eq!(
                up.connections(),
                round,
                "a close-delimited answer ends its connection"
            );
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. Interim responses
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_1xx_responses_are_skipped_before_the_final_answer() {
    bounded(async {
        let up = spawn_script(|mut peer| async move {
            while let Some(req) = peer.read_request().await {
                let pieces: &[&[u8]] = &[
                    b"HTTP/1.1 100 Continue\r\n\r\n",
                    b"HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-final: yes\r\n\r\nfinal",
                ];
                if req.target == "/together" {
                    peer.write(&pieces.concat()).await;
                } else {
                    write_byte_by_byte(&mut peer, &pieces.concat()).await;
                }
            }
        })
        .await;
        let gw = gateway_to(up.addr).await;
        let client = http1_client();
        for path in ["/together", "/apart", "/together"] {
            let a = get(&client, &gw.url(path), &[]).await;
            assert_eq!(a.status, 200, "{path}");
            assert_eq!(a.body, "final", "{path}");
            assert_eq!(a.headers["x-final"], "yes", "{path}");
            assert!(a.headers.get("link").is_none(), "{path}: {:?}", a.headers);
        }
        assert_eq!(
            up.connections(),
            1,
            "interim answers leave the connection reusable"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Malformed heads
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upstream_heads_are_502_upe_and_the_gateway_keeps_serving() {
    bounded(async {
        let big_field = "v".repeat(1000);
        let huge: String = (0..80)
            .map(|i| format!("x-big-{i}: {big_field}\r\n"))
            .collect();
        let large_ok: String = (0..60)
            .map(|i| format!("x-big-{i}: {big_field}\r\n"))
            .collect();
        let up = spawn_responder(move |req| match req.target.as_str() {
            "/not-http" => Act::Reply(b"HELLO THERE\r\n\r\n".to_vec()),
            "/conflict" => Act::Reply(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".to_vec(),
            ),
            "/huge" => Act::Reply(
                format!("HTTP/1.1 200 OK\r\n{huge}content-length: 2\r\n\r\nok").into_bytes(),
            ),
            "/folded" => Act::Reply(
                b"HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            ),
            // gzip bytes would reach the client unlabelled: only chunked is decoded.
            "/gzip-chunked" => Act::Reply(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                    .to_vec(),
            ),
            "/large-ok" => Act::Reply(
                format!("HTTP/1.1 200 OK\r\n{large_ok}content-length: 5\r\n\r\nlarge").into_bytes(),
            ),
            _ => Act::Reply(ok("good")),
        })
        .await;
        // The whole app, for its metrics endpoint.
        let rule = "      - route:\n          - destination: { service: svc, subset: up }\n";
        let gw = spawn_app(&svc_config(&subset("up", up.addr), rule)).await;
        let client = http1_client();
        let cases = [
            "/not-http",
            "/conflict",
            "/huge",
            "/folded",
            "/gzip-chunked",
        ];
        for case in cases {
            let a = get(&client, &gw.url(case), &[]).await;
            assert_upe(&a, case);
            assert_eq!(up.count_target(case), 1, "{case} is sent once");
            let a = get(&client, &gw.url("/good"), &[]).await;
            assert_eq!(
                (a.status.as_u16(), a.body.as_str()),
                (200, "good"),
                "after {case}"
            );
        }
        // Just under the 64 KiB limit still passes.
        let a = get(&client, &gw.url("/large-ok"), &[]).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "large"));
        assert_eq!(a.headers["x-big-59"], big_field.as_str());
        // Envoy's flag for an upstream that broke HTTP: UPE (not UC, a connection that broke).
        let metrics = gw.app.metrics_addr;
        let upe = ["response_code=\"502\"", "response_flags=\"UPE\""];
        assert_eq!(requests_total(metrics, &upe).await, cases.len() as f64);
        assert_eq!(
            requests_total(metrics, &["response_flags=\"UC\""]).await,
            0.0
        );
    })
    .await;
}

/// Asserts a gateway-made `502 UPE` answer: the upstream broke the protocol.
fn assert_upe(a: &Answer, case: &str) {
    assert_eq!(a.status, 502, "{case}: body {:?}", a.body);
    assert!(
        a.body.starts_with("UPE:"),
        "{case}: body {:?} should start with \"UPE:\"",
        a.body
    );
}

/// An upstream that acts on each request as `answer` says and reports the number of each
/// connection on `closed` once it is closed, by the gateway or by the upstream itself.
async fn spawn_reporting_upstream<F>(
    answer: F,
) -> (Scripted, tokio::sync::mpsc::UnboundedReceiver<usize>)
where
    F: Fn(&RawRequest) -> Act + Send + Sync + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let answer = Arc::new(answer);
    let up = spawn_script(move |mut peer| {
        let (answer, tx) = (answer.clone(), tx.clone());
        async move {
            while let Some(req) = peer.read_request().await {
                match answer(&req) {
                    Act::Reply(bytes) if peer.write(&bytes).await => {}
                    Act::ReplyClose(bytes) => {
                        peer.write(&bytes).await;
                        break;
                    }
                    _ => break,
                }
            }
            let conn = peer.conn;
            // Closed before it is reported.
            drop(peer);
            let _ = tx.send(conn);
        }
    })
    .await;
    (up, rx)
}

/// The number of the next connection the gateway closes, within 10 s.
async fn next_close(closed: &mut tokio::sync::mpsc::UnboundedReceiver<usize>, why: &str) -> usize {
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .unwrap_or_else(|_| panic!("{why}: no upstream connection closed within 10 s"))
        .expect("the upstream runs")
}

/// RFC 9112 §6.1: after an HTTP/1.0 answer framed chunked the connection is closed. The
/// answer itself is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_chunked_answer_is_served_and_its_connection_closed() {
    bounded(async {
        let (up, mut closed) = spawn_reporting_upstream(|req| {
            Act::Reply(match req.target.as_str() {
                "/old-chunked" => b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\
                    transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                    .to_vec(),
                _ => ok(&format!("conn{}", req.conn)),
            })
        })
        .await;
        let gw = gateway_to(up.addr).await;
        let client = http1_client();
        let a = get(&client, &gw.url("/old-chunked"), &[]).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "hello"));
        assert_eq!(
            next_close(&mut closed, "the HTTP/1.0 chunked answer's connection").await,
            1
        );
        let a = get(&client, &gw.url("/next"), &[]).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "conn2"));
        assert_eq!(up.requests().iter().filter(|r| r.conn == 1).count(), 1);
    })
    .await;
}

/// A `101 Switching Protocols` to a request that asked no upgrade is a protocol error: 502
/// `UPE` for HTTP/1.1 and HTTP/2 clients alike, and its connection is closed, never reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unasked_101_is_502_upe_and_its_connection_is_not_reused() {
    bounded(async {
        let (up, mut closed) = spawn_reporting_upstream(|req| {
            Act::Reply(match req.target.as_str() {
                "/switch" => b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
                    upgrade: websocket\r\n\r\n"
                    .to_vec(),
                _ => ok(&format!("conn{}", req.conn)),
            })
        })
        .await;
        let rule = "      - route:\n          - destination: { service: svc, subset: up }\n";
        let gw = spawn_app(&svc_config(&subset("up", up.addr), rule)).await;
        for (n, client) in [(1, http1_client()), (2, h2c_client())] {
            let a = get(&client, &gw.url("/switch"), &[]).await;
            assert_upe(&a, "an unasked 101");
            assert_eq!(next_close(&mut closed, "the 101's connection").await, n);
        }
        let a = get(&http1_client(), &gw.url("/after"), &[]).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "conn3"));
        for r in up.requests() {
            assert_eq!(
                r.seq, 1,
                "a connection that answered 101 carried another: {r:?}"
            );
        }
        let upe = ["response_code=\"502\"", "response_flags=\"UPE\""];
        assert_eq!(requests_total(gw.app.metrics_addr, &upe).await, 2.0);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Close in the middle of a body
// ---------------------------------------------------------------------------------------------

/// A body cut short by the upstream's close must reach the client as a failure: an HTTP/1.1
/// client sees its connection break (before or after the head), never a cleanly ended body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_mid_body_never_yields_a_clean_body() {
    bounded(async {
        let up = spawn_responder(|req| match req.target.as_str() {
            "/short" => {
                let mut bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec();
                bytes.extend_from_slice(&[b'x'; 10]);
                Act::ReplyClose(bytes)
            }
            // The same with chunked framing: the last chunk never comes.
            "/short-chunked" => Act::ReplyClose(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\nxxxxxxxxxx\r\n"
                    .to_vec(),
            ),
            _ => Act::Reply(ok("good")),
        })
        .await;
        // The whole app, for its metrics endpoint.
        let rule = "      - route:\n          - destination: { service: svc, subset: up }\n";
        let gw = spawn_app(&svc_config(&subset("up", up.addr), rule)).await;
        for path in ["/short", "/short-chunked", "/short"] {
            let client = http1_client();
            let req = Request::get(gw.url(path)).body(Full::default()).unwrap();
            let outcome = match client.request(req).await {
                Err(e) => Err(format!("request: {e}")),
                Ok(resp) => {
                    assert_eq!(resp.status(), 200, "{path}");
                    match resp.into_body().collect().await {
                        Ok(c) => Ok(c.to_bytes()),
                        Err(e) => Err(format!("body: {e}")),
                    }
                }
            };
            if let Ok(body) = outcome {
                panic!(
                    "{path}: the client got a cleanly ended {}-byte body; the cut went unnoticed",
                    body.len()
                );
            }
            let a = get(&http1_client(), &gw.url("/next"), &[]).await;
            assert_eq!(
                (a.status.as_u16(), a.body.as_str()),
                (200, "good"),
                "after {path}"
            );
        }
        assert_eq!(up.count_target("/next"), 3);
        // Each cut body is recorded as the upstream's failure (UC), not as a success.
        let metrics = gw.app.metrics_addr;
        let mut seen = 0.0;
        for _ in 0..100 {
            seen =
                requests_total(metrics, &["response_code=\"200\"", "response_flags=\"UC\""]).await;
            if seen >= 3.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(seen, 3.0, "istio_requests_total with response_flags=\"UC\"");
        let clean = requests_total(metrics, &["response_flags=\"-\""]).await;
        assert_eq!(clean, 3.0, "only the three /next requests went well");
    })
    .await;
}

/// The sum of `istio_requests_total` series whose labels contain every one of `labels`.
async fn requests_total(metrics: SocketAddr, labels: &[&str]) -> f64 {
    let url = format!("http://{metrics}/stats/prometheus");
    let a = get(&http1_client(), &url, &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// 6. Stale pooled connections
// ---------------------------------------------------------------------------------------------

/// Answers the first request of each connection (keep-alive, body `conn<N>`); on the second it
/// reads the request and closes without a word, as an upstream whose idle timeout raced it.
async fn spawn_one_shot_upstream() -> Scripted {
    spawn_responder(|req| match req.seq {
        1 => Act::Reply(ok(&format!("conn{}", req.conn))),
        _ => Act::Close,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_get_is_sent_once_more_on_a_new_connection() {
    bounded(async {
        let up = spawn_one_shot_upstream().await;
        let gw = gateway_to(up.addr).await;
        let shared = http1_client();
        for i in 0..6usize {
            // One client connection for some, a fresh one for others.
            let client = if i % 2 == 0 {
                shared.clone()
            } else {
                http1_client()
            };
            let a = get(&client, &gw.url(&format!("/get/{i}")), &[]).await;
            assert_eq!(a.status, 200, "GET {i}: {:?}", a.body);
            assert_eq!(a.body, format!("conn{}", i + 1), "GET {i}");
        }
        assert_eq!(up.connections(), 6);
        assert_eq!(up.count_target("/get/0"), 1);
        for i in 1..6 {
            let seen: Vec<(usize, usize)> = up
                .requests()
                .iter()
                .filter(|r| r.target == format!("/get/{i}"))
                .map(|r| (r.conn, r.seq))
                .collect();
            assert_eq!(
                seen,
                [(i, 2), (i + 1, 1)],
                "GET {i}: first on the stale connection, then once more on a new one"
            );
        }
    })
    .await;
}

/// An upstream that says it closes idle connections after 2 s (`keep-alive: timeout=2`): the
/// gateway closes its pooled connection before that, so that no request is ever sent as the
/// upstream closes; the next request goes on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_timeout_closes_the_pooled_connection_before_the_upstream_would() {
    bounded(async {
        let answered = Arc::new(Mutex::new(Vec::new()));
        let log = answered.clone();
        let (up, mut closed) = spawn_reporting_upstream(move |req| {
            log.lock().unwrap().push(std::time::Instant::now());
            let body = format!("conn{}", req.conn);
            Act::Reply(
                format!(
                    "HTTP/1.1 200 OK\r\nkeep-alive: timeout=2, max=100\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        })
        .await;
        let gw = gateway_to(up.addr).await;
        let client = http1_client();
        let a = get(&client, &gw.url("/first"), &[]).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "conn1"));
        assert_eq!(
            next_close(&mut closed, "the pooled connection (keep-alive: timeout=2)").await,
            1
        );
        let idle = answered.lock().unwrap()[0].elapsed();
        assert!(
            idle < Duration::from_secs(2),
            "closed {idle:?} after the answer: not before the upstream's own 2 s"
        );
        let a = get(&client, &gw.url("/second"), &[]).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "conn2"));
        assert_eq!(up.count_target("/second"), 1);
    })
    .await;
}

/// The upstream answers with `connection: keep-alive` and closes the connection right after
/// (its keep-alive ended), and the test waits for that close before each next request: that
/// request must not get `503 UC`. The gateway sees the closed connection and opens another;
/// had the close come as the request went out, an idempotent request without a body (or
/// with one held in memory) is sent once more on a new connection (see
/// `stale_pooled_connection_get_is_sent_once_more_on_a_new_connection`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_racing_the_upstreams_keep_alive_close_are_not_503() {
    bounded(async {
        let (up, mut closed) = spawn_reporting_upstream(|req| {
            let body = if req.method == "HEAD" {
                ""
            } else {
                &req.target
            };
            Act::ReplyClose(
                format!(
                    "HTTP/1.1 200 OK\r\nconnection: keep-alive\r\ncontent-length: {}\r\n\r\n{body}",
                    req.target.len(),
                )
                .into_bytes(),
            )
        })
        .await;
        let gw = gateway_to(up.addr).await;
        let client = http1_client();
        for (i, method) in ["GET", "GET", "PUT", "DELETE", "HEAD", "OPTIONS"]
            .iter()
            .enumerate()
        {
            let path = format!("/r{i}");
            let req = Request::builder()
                .method(*method)
                .uri(gw.url(&path))
                .body(Full::default())
                .unwrap();
            let a = send(&client, req).await;
            assert_eq!(a.status, 200, "{method} {path}: {:?}", a.body);
            if *method != "HEAD" {
                assert_eq!(a.body, path, "{method} {path}");
            }
            assert_eq!(
                up.count_target(&path),
                1,
                "{method} {path} reached the upstream once"
            );
            // The upstream's close of this request's connection, before the next request.
            next_close(&mut closed, "the upstream's close after answering").await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connection_post_is_not_sent_again() {
    bounded(async {
        let up = spawn_one_shot_upstream().await;
        let gw = gateway_to(up.addr).await;
        let client = http1_client();
        let a = get(&client, &gw.url("/warm"), &[]).await;
        assert_eq!(a.body, "conn1");
        let a = send(
            &client,
            Request::post(gw.url("/post"))
                .body(Full::new(Bytes::from_static(b"small body")))
                .unwrap(),
        )
        .await;
        assert_uc(&a, "POST on a stale connection");
        assert_eq!(up.count_target("/post"), 1, "a POST is never sent twice");
        assert_eq!(up.connections(), 1, "no second connection for the POST");
        let post = up
            .requests()
            .into_iter()
            .find(|r| r.target == "/post")
            .unwrap();
        assert_eq!(post.body, b"small body");

        // An idempotent PUT whose body was streamed from the client is not at hand any more.
        let a = get(&client, &gw.url("/warm-again"), &[]).await;
        assert_eq!(a.body, "conn2");
        let a = send(
            &client,
            Request::put(gw.url("/put"))
                .body(Full::new(Bytes::from_static(b"streamed")))
                .unwrap(),
        )
        .await;
        assert_uc(&a, "PUT with a body on a stale connection");
        assert_eq!(up.count_target("/put"), 1);
        assert_eq!(up.connections(), 2);

        // The gateway goes on serving, on a new connection.
        let a = get(&client, &gw.url("/after"), &[]).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "conn3"));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 7. An early answer during an upload
// ---------------------------------------------------------------------------------------------

/// Sends a request head, then streams `len` body bytes (chunked when `chunked`) while reading
/// the answer; returns what was read until the gateway closed, and how the upload ended.
async fn raw_upload(addr: SocketAddr, len: usize, chunked: bool) -> (Vec<u8>, String) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let framing = match chunked {
            true => "transfer-encoding: chunked".to_string(),
            false => format!("content-length: {len}"),
        };
        let head = format!("POST /upload HTTP/1.1\r\nhost: x\r\n{framing}\r\n\r\n");
        if let Err(e) = w.write_all(head.as_bytes()).await {
            return format!("head not sent: {e}");
        }
        let piece = vec![b'u'; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            let n = piece.len().min(len - sent);
            let mut out = Vec::with_capacity(n + 16);
            if chunked {
                out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            }
            out.extend_from_slice(&piece[..n]);
            if chunked {
                out.extend_from_slice(b"\r\n");
            }
            if let Err(e) = w.write_all(&out).await {
                return format!("stopped after {sent} bytes: {e}");
            }
            sent += n;
        }
        if chunked && w.write_all(b"0\r\n\r\n").await.is_err() {
            return format!("stopped after {sent} bytes");
        }
        format!("all {sent} bytes sent")
    });
    let mut answer = Vec::new();
    let _ = r.read_to_end(&mut answer).await;
    writer.abort();
    let upload = writer.await.unwrap_or_else(|_| "still sending".to_string());
    (answer, upload)
}

/// A raw client rather than hyper's: hyper's client may report its own failed body write (the
/// gateway stops reading the upload once the answer is out) before it reads the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_413_during_a_large_upload_reaches_the_client() {
    bounded(async {
        // Reads only the head, answers at once and closes.
        let up = spawn_script(|mut peer| async move {
            if peer.read_head().await.is_none() {
                return;
            }
            peer.write(
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\ntoo large",
            )
            .await;
        })
        .await;
        let gw = gateway_to(up.addr).await;
        for (round, chunked) in [(1, false), (2, true)] {
            let (answer, upload) = tokio::time::timeout(
                Duration::from_secs(10),
                raw_upload(gw.addr, 20 * 1024 * 1024, chunked),
            )
            .await
            .expect("the early answer arrives within 10s");
            let text = String::from_utf8_lossy(&answer);
            assert!(
                text.starts_with("HTTP/1.1 413"),
                "chunked={chunked}: got {text:?} (upload: {upload})"
            );
            assert!(text.ends_with("\r\n\r\ntoo large"), "{text:?}");
            assert_eq!(up.connections(), round);
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 8. Streaming echo
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_echo_of_an_8_mib_body_does_not_deadlock() {
    const LEN: u64 = 8 * 1024 * 1024;
    bounded(async {
        // Answers at once, then echoes every piece of the chunked request body as it reads it.
        let up = spawn_script(|mut peer| async move {
            let Some(req) = peer.read_head().await else {
                return;
            };
            if req.header("transfer-encoding") != Some("chunked") {
                peer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\n\r\nnot chunked")
                    .await;
                return;
            }
            if !peer
                .write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
            {
                return;
            }
            loop {
                let Some(line) = peer.read_line().await else {
                    return;
                };
                let Some(size) = Peer::chunk_size(&line) else {
                    return;
                };
                if size == 0 {
                    while peer.read_line().await.is_some_and(|l| !l.is_empty()) {}
                    peer.write(b"0\r\n\r\n").await;
                    return;
                }
                let mut left = size;
                while left > 0 {
                    let Some(piece) = peer.take(left).await else {
                        return;
                    };
                    left -= piece.len();
                    let mut out = format!("{:x}\r\n", piece.len()).into_bytes();
                    out.extend_from_slice(&piece);
                    out.extend_from_slice(b"\r\n");
                    if !peer.write(&out).await {
                        return;
                    }
                }
                if peer.read_line().await.is_none_or(|l| !l.is_empty()) {
                    return;
                }
            }
        })
        .await;
        let gw = gateway_to(up.addr).await;
        let client: Client<_, TestBody> = Client::builder(TokioExecutor::new()).build_http();
        let resp = client
            .request(
                Request::post(gw.url("/echo"))
                    .body(generated_body(LEN))
                    .unwrap(),
            )
            .await
            .expect("the gateway answers");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let (mut len, mut sum) = (0u64, Checksum::default());
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("the echo streams").into_data() {
                len += data.len() as u64;
                sum.update(&data);
            }
        }
        let mut expected = Checksum::default();
        let all: Vec<u8> = (0..LEN).map(pattern_byte).collect();
        expected.update(&all);
        assert_eq!(len, LEN);
        assert_eq!(sum.0, expected.0, "the echoed bytes differ");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 9. Bytes after a complete response
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_complete_response_are_never_read_as_the_next_answer() {
    bounded(async {
        let up = spawn_responder(|req| match (req.conn, req.seq) {
            (1, 1) => Act::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokGARBAGE".to_vec()),
            (1, _) => Act::Reply(ok("reused")),
            _ => Act::Reply(ok("fresh")),
        })
        .await;
        let gw = gateway_to(up.addr).await;
        let client = http1_client();
        let a = get(&client, &gw.url("/first"), &[]).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "ok"));
        let a = get(&client, &gw.url("/second"), &[]).await;
        assert_eq!(
            (a.status.as_u16(), a.body.as_str()),
            (200, "fresh"),
            "the second answer must come on a fresh connection"
        );
        assert_eq!(up.connections(), 2);
        assert_eq!(up.count_target("/second"), 1);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 10. HEAD
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answer_with_content_length_has_no_body_and_keeps_the_connection() {
    bounded(async {
        let up = spawn_responder(|req| match req.method.as_str() {
            "HEAD" => Act::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_vec()),
            _ => Act::Reply(ok("body")),
        })
        .await;
        let gw = gateway_to(up.addr).await;
        let client = http1_client();
        for _ in 0..2 {
            let a = send(
                &client,
                Request::head(gw.url("/h")).body(Full::default()).unwrap(),
            )
            .await;
            assert_eq!(a.status, 200);
            assert_eq!(a.headers["content-length"], "1000");
            assert_eq!(a.body, "");
            let a = get(&client, &gw.url("/g"), &[]).await;
            assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "body"));
        }
        // The raw bytes too: nothing follows the HEAD answer's head.
        let raw = raw_roundtrip(
            gw.addr,
            b"HEAD /raw HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
        assert!(
            text.ends_with("\r\n\r\n"),
            "bytes after a HEAD answer: {text:?}"
        );
        assert_eq!(
            up.connections(),
            1,
            "HEAD answers leave the connection reusable"
        );
        assert_eq!(up.requests().len(), 5);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 11. 204 and 304
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_204_and_304_pass_through_and_keep_the_connection() {
    bounded(async {
        let up = spawn_responder(|req| match req.target.as_str() {
            "/204" => Act::Reply(b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n".to_vec()),
            "/304" => Act::Reply(b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n".to_vec()),
            _ => Act::Reply(ok("after")),
        })
        .await;
        let gw = gateway_to(up.addr).await;
        let client = http1_client();
        for _ in 0..2 {
            let a = get(&client, &gw.url("/204"), &[]).await;
            assert_eq!((a.status.as_u16(), a.body.as_str()), (204, ""));
            assert_eq!(a.headers["x-a"], "1");
            let a = get(&client, &gw.url("/304"), &[("if-none-match", "\"v1\"")]).await;
            assert_eq!((a.status.as_u16(), a.body.as_str()), (304, ""));
            assert_eq!(a.headers["etag"], "\"v1\"");
            let a = get(&client, &gw.url("/after"), &[]).await;
            assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "after"));
        }
        assert_eq!(
            up.connections(),
            1,
            "204 and 304 leave the connection reusable"
        );
        assert_eq!(up.requests().len(), 6);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 12. Upgrade with early bytes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_101_with_bytes_in_the_same_write_reaches_the_client_in_order() {
    bounded(async {
        let up = spawn_script(|mut peer| async move {
            let Some(req) = peer.read_head().await else {
                return;
            };
            if req.header("upgrade") != Some("websocket") {
                peer.write(&ok("not an upgrade")).await;
                return;
            }
            let mut first = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n".to_vec();
            first.extend_from_slice(b"EARLY");
            if !peer.write(&first).await {
                return;
            }
            while let Some(bytes) = peer.take(64 * 1024).await {
                if !peer.write(&bytes).await {
                    return;
                }
            }
        })
        .await;
        let gw = gateway_to(up.addr).await;
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            b"GET /chat HTTP/1.1\r\nhost: ws.example\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        let head_end = loop {
            if let Some(end) = find(&got, b"\r\n\r\n") {
                if got.len() >= end + 4 + 5 {
                    break end + 4;
                }
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "stalled after {:?}: the 101 head and its early bytes should be here",
                        String::from_utf8_lossy(&got)
                    )
                })
                .unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head:?}");
        assert!(head.contains("upgrade: websocket"), "{head:?}");
        assert_eq!(
            &got[head_end..],
            b"EARLY",
            "the bytes sent right behind the 101 head come first, once"
        );
        for msg in [&b"ping"[..], b"second message"] {
            s.write_all(msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
                .await
                .expect("the echo comes back within 5s")
                .unwrap();
            assert_eq!(back, msg);
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 13. Request framing as the upstream sees it
// ---------------------------------------------------------------------------------------------

async fn spawn_recorder() -> Scripted {
    spawn_responder(|_| Act::Reply(ok("ok"))).await
}

/// The one request the recorder saw with this target.
fn seen(up: &Scripted, target: &str) -> RawRequest {
    let all: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.target == target)
        .collect();
    assert_eq!(all.len(), 1, "{target}: {all:?}");
    all.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_client_body_is_sent_upstream_correctly_chunked() {
    bounded(async {
        let up = spawn_recorder().await;
        let gw = gateway_to(up.addr).await;
        let raw = raw_roundtrip(
            gw.addr,
            b"POST /te HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
        assert!(text.ends_with("\r\n\r\nok"), "{text:?}");
        let req = seen(&up, "/te");
        assert_eq!(req.header("transfer-encoding"), Some("chunked"));
        assert_eq!(req.header_count("transfer-encoding"), 1);
        assert_eq!(req.header("content-length"), None);
        assert_eq!(decode_chunked(&req.raw_body).as_deref(), Ok(&b"hello world"[..]));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_body_without_length_is_sent_upstream_chunked() {
    bounded(async {
        let up = spawn_recorder().await;
        let gw = gateway_to(up.addr).await;
        let client: Client<_, TestBody> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let resp = client
            .request(
                Request::post(gw.url("/h2"))
                    .body(streamed(&["first ", "second ", "third"]))
                    .unwrap(),
            )
            .await
            .expect("the gateway answers");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        let req = seen(&up, "/h2");
        assert_eq!(req.header("transfer-encoding"), Some("chunked"), "{req:?}");
        assert_eq!(req.header("content-length"), None);
        assert_eq!(
            decode_chunked(&req.raw_body).as_deref(),
            Ok(&b"first second third"[..])
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_http1_post_is_sent_with_content_length_zero() {
    bounded(async {
        let up = spawn_recorder().await;
        let gw = gateway_to(up.addr).await;
        let raw = raw_roundtrip(
            gw.addr,
            b"POST /empty HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
        let req = seen(&up, "/empty");
        assert_eq!(req.header("content-length"), Some("0"), "{req:?}");
        assert_eq!(req.header_count("content-length"), 1);
        assert_eq!(req.header("transfer-encoding"), None);
        assert!(req.raw_body.is_empty());
        // A bodiless GET gets no framing fields at all.
        let raw = raw_roundtrip(
            gw.addr,
            b"GET /plain HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(raw.starts_with(b"HTTP/1.1 200"));
        let req = seen(&up, "/plain");
        assert_eq!(req.header("content-length"), None, "{req:?}");
        assert_eq!(req.header("transfer-encoding"), None, "{req:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_content_length_is_sent_upstream_without_transfer_encoding() {
    bounded(async {
        let up = spawn_recorder().await;
        let gw = gateway_to(up.addr).await;
        let body: Vec<u8> = (0..100_000u64).map(pattern_byte).collect();
        for (target, client) in [("/h1", http1_client()), ("/h2c", h2c_client())] {
            let a = send(
                &client,
                Request::put(gw.url(target))
                    .body(Full::new(Bytes::from(body.clone())))
                    .unwrap(),
            )
            .await;
            assert_eq!(
                (a.status.as_u16(), a.body.as_str()),
                (200, "ok"),
                "{target}"
            );
            let req = seen(&up, target);
            assert_eq!(req.header("content-length"), Some("100000"), "{target}");
            assert_eq!(req.header_count("content-length"), 1, "{target}");
            assert_eq!(req.header("transfer-encoding"), None, "{target}");
            assert_eq!(req.raw_body.len(), body.len(), "{target}");
            assert!(req.raw_body == body, "{target}: the body differs");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 14. Hop-by-hop response headers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_stay_with_the_upstream_connection() {
    bounded(async {
        let up = spawn_responder(|_| {
            Act::Reply(
                b"HTTP/1.1 200 OK\r\nconnection: keep-alive, x-private\r\nx-private: 1\r\nkeep-alive: timeout=5\r\nx-public: 2\r\ncontent-length: 2\r\n\r\nok"
                    .to_vec(),
            )
        })
        .await;
        let gw = gateway_to(up.addr).await;
        for client in [http1_client(), h2c_client()] {
            let a = get(&client, &gw.url("/"), &[]).await;
            assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "ok"));
            assert_eq!(a.headers["x-public"], "2");
            for gone in ["x-private", "keep-alive"] {
                assert!(a.headers.get(gone).is_none(), "{gone}: {:?}", a.headers);
            }
            if let Some(c) = a.headers.get("connection") {
                let c = c.to_str().unwrap().to_ascii_lowercase();
                assert!(!c.contains("x-private"), "connection: {c}");
            }
        }
        assert_eq!(up.connections(), 1, "connection: keep-alive is honoured");
    })
    .await;
}

/// An answer the gateway does not change goes to an HTTP/1.1 client as the upstream wrote it but
/// for the connection's own fields: the same fields in the upstream's order, names lowercased,
/// values without the spaces around them, and the connection kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_answer_keeps_its_fields_in_their_order() {
    bounded(async {
        let up = spawn_responder(|_| {
            Act::Reply(
                b"HTTP/1.1 200 OK\r\nServer: up\r\nSet-Cookie: a=1\r\nConnection: keep-alive\r\nX-Mid:  m \r\nset-cookie: b=2\r\nKeep-Alive: timeout=5\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok"
                    .to_vec(),
            )
        })
        .await;
        let gw = gateway_to(up.addr).await;
        let mut client = TcpStream::connect(gw.addr).await.unwrap();
        let want = "HTTP/1.1 200 OK\r\nserver: up\r\nset-cookie: a=1\r\nx-mid: m\r\n\
                    set-cookie: b=2\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\ncontent-length: 2\r\n\
                    \r\nok";
        for _ in 0..2 {
            client
                .write_all(b"GET / HTTP/1.1\r\nhost: shop\r\n\r\n")
                .await
                .unwrap();
            let mut got = vec![0; want.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(String::from_utf8_lossy(&got), want);
        }
        assert_eq!(up.connections(), 1, "the upstream connection is kept");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Beyond the list: transfer-encoding beside content-length
// ---------------------------------------------------------------------------------------------

/// Both framings on one answer is a request-smuggling shape: the chunked framing is read, the
/// client gets the decoded body without the stray content-length, and the connection is not
/// used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_beside_content_length_is_read_chunked_and_not_reused() {
    bounded(async {
        let up = spawn_responder(|req| match req.target.as_str() {
            "/both" => Act::Reply(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n7\r\nchunked\r\n0\r\n\r\n"
                    .to_vec(),
            ),
            _ => Act::Reply(ok(&format!("conn{}", req.conn))),
        })
        .await;
        let gw = gateway_to(up.addr).await;
        let client = http1_client();
        let a = get(&client, &gw.url("/both"), &[]).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "chunked"));
        assert_ne!(
            a.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        let a = get(&client, &gw.url("/next"), &[]).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "conn2"));
        assert_eq!(up.connections(), 2);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Requests their clients gave up on
// ---------------------------------------------------------------------------------------------

/// An upstream that holds `/hold-head` (no answer) and `/hold-body` (head and 1 KiB of a
/// `len`-byte body) until `go` is signalled, and answers anything else with `conn<N>`.
async fn spawn_holding_upstream(go: Arc<tokio::sync::Notify>, len: usize) -> Scripted {
    spawn_script(move |mut peer| {
        let go = go.clone();
        async move {
            while let Some(req) = peer.read_request().await {
                let sent = match req.target.as_str() {
                    "/hold-head" => {
                        go.notified().await;
                        peer.write(&ok("late")).await
                    }
                    "/hold-body" => {
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                        let mut first = head.into_bytes();
                        first.extend_from_slice(&[b'x'; 1024]);
                        peer.write(&first).await && {
                            go.notified().await;
                            peer.write(&vec![b'y'; len - 1024]).await
                        }
                    }
                    _ => peer.write(&ok(&format!("conn{}", req.conn))).await,
                };
                if !sent {
                    return;
                }
            }
        }
    })
    .await
}

/// A gateway (the whole app, for its metrics) to `upstream` with one connection allowed to
/// it, so that a request after an abandoned one must wait for that connection: it gets it
/// back when the abandoned exchange was finished, or a new one when that was given up.
async fn one_connection_app_to(upstream: SocketAddr) -> TestApp {
    let rule = "      - route:\n          - destination: { service: svc, subset: up }\n";
    let yaml = svc_config(&subset("up", upstream), rule).replace(
        "    host: svc.default.svc.cluster.local\n",
        "    host: svc.default.svc.cluster.local\n    policy: { max_connections_per_endpoint: 1, connect_timeout: 10s }\n",
    );
    spawn_app(&yaml).await
}

/// Sends `path` over HTTP/2 and gives up on it (RST_STREAM) once the gateway has it: before
/// the answer for `/hold-head`, after the answer's head for `/hold-body`. Returns when the
/// gateway has recorded the client's departure (`DC`).
async fn abandon_over_h2(app: &TestApp, up: &Scripted, path: &str) {
    let metrics = app.app.metrics_addr;
    let before = requests_total(metrics, &["response_flags=\"DC\""]).await;
    let arrived = up.count_target(path);
    let client = h2c_client();
    let req = Request::get(app.url(path)).body(Full::default()).unwrap();
    let task = tokio::spawn(async move {
        let resp = client.request(req).await.expect("a response head");
        // The head is here; dropping the response resets the stream mid-body.
        drop(resp);
        std::future::pending::<()>().await
    });
    while up.count_target(path) == arrived {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if path == "/hold-head" {
        task.abort();
    }
    while requests_total(metrics, &["response_flags=\"DC\""]).await <= before {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_exchange_is_finished_and_its_connection_used_again() {
    bounded(async {
        let go = Arc::new(tokio::sync::Notify::new());
        let up = spawn_holding_upstream(go.clone(), 8 * 1024).await;
        let app = one_connection_app_to(up.addr).await;
        for path in ["/hold-head", "/hold-body"] {
            abandon_over_h2(&app, &up, path).await;
            assert_eq!(up.count_target(path), 1, "{path} reached the upstream");
            go.notify_one();
            let a = get(&http1_client(), &app.url("/next"), &[]).await;
            assert_eq!(
                (a.status.as_u16(), a.body.as_str()),
                (200, "conn1"),
                "after {path}: the next request rides the same upstream connection"
            );
        }
        assert_eq!(up.connections(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_exchange_that_would_cost_too_much_closes_its_connection() {
    bounded(async {
        // A body far past what is read to keep a connection, then an upstream that never
        // answers (given up after a second).
        let go = Arc::new(tokio::sync::Notify::new());
        let up = spawn_holding_upstream(go.clone(), 1024 * 1024).await;
        let app = one_connection_app_to(up.addr).await;
        abandon_over_h2(&app, &up, "/hold-body").await;
        let a = get(&http1_client(), &app.url("/next"), &[]).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "conn2"));
        abandon_over_h2(&app, &up, "/hold-head").await;
        let started = std::time::Instant::now();
        let a = get(&http1_client(), &app.url("/next"), &[]).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "conn3"));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the silent upstream's connection was let go after about a second: {:?}",
            started.elapsed()
        );
    })
    .await;
}
