//! Malformed and hostile HTTP/1.1 from clients, on the wire (and CONNECT over h2c too). Each test writes exact bytes to the
//! listener and checks what the client gets (status, body, whether the connection closes) and,
//! above all, what reached the upstream: nothing, or requests framed one way only. A recording
//! upstream keeps every byte it receives, per connection.

mod common;

use common::*;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Whole-test bound: a hang fails the test instead of blocking the run.
const LIMIT: Duration = Duration::from_secs(60);
/// How long a read may wait for bytes the gateway owes (an answer, or the close).
const READ_WAIT: Duration = Duration::from_secs(10);

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {LIMIT:?}"))
}

// ---------------------------------------------------------------------------------------------
// What hostile clients send
// ---------------------------------------------------------------------------------------------

const BAD_REQUEST_LINE: &[u8] = b"GET/ HTTP/1.1\r\nHost: a\r\n\r\n";
const SPACE_BEFORE_COLON: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n";
const OBS_FOLD: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n";
const NUL_IN_VALUE: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n";
const TWO_CONTENT_LENGTHS: &[u8] =
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
const PLUS_CONTENT_LENGTH: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello";
const MINUS_CONTENT_LENGTH: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n";
const TE_GZIP: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc";
const TE_CHUNKED_GZIP: &[u8] =
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n";
const TE_GZIP_THEN_CHUNKED: &[u8] =
    b"POST /gzip HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
const TE_GZIP_LINE_THEN_CHUNKED_LINE: &[u8] = b"POST /gzip HTTP/1.1\r\nHost: a\r\n\
      Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
const CONNECT: &[u8] = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n";
/// CONNECT with what a client sends into the tunnel right behind it: an HTTP request.
const CONNECT_THEN_TUNNEL: &[u8] =
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nGET /tunnelled HTTP/1.1\r\nHost: a\r\n\r\n";
const TE_IN_HTTP10: &[u8] =
    b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
const CL_BESIDE_CHUNKED: &[u8] =
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
      0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
const BROKEN_CHUNK: &[u8] =
    b"POST /broken HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
/// A chunked body that stops in the middle of a chunk; the client then closes its side.
const CUT_CHUNKED: &[u8] =
    b"POST /cut HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel";
const NO_HOST: &[u8] = b"GET /nohost HTTP/1.1\r\n\r\n";
const TWO_HOSTS: &[u8] = b"GET /twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
const HOST_WITH_SPACE: &[u8] = b"GET /space HTTP/1.1\r\nHost: a b\r\n\r\n";
const HOST_WITH_USERINFO: &[u8] = b"GET /userinfo HTTP/1.1\r\nHost: user@a\r\n\r\n";
const TARGET_WITH_USERINFO: &[u8] = b"GET http://user:pw@a/userinfo HTTP/1.1\r\nHost: a\r\n\r\n";

/// A head with 200 fields (the listener allows 128).
fn too_many_fields() -> Vec<u8> {
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..200 {
        req.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req
}

/// A head with one 500,000-byte value.
fn huge_value() -> Vec<u8> {
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: ".to_vec();
    req.resize(req.len() + 500_000, b'a');
    req.extend_from_slice(b"\r\n\r\n");
    req
}

// ---------------------------------------------------------------------------------------------
// The recording upstream
// ---------------------------------------------------------------------------------------------

/// An upstream that keeps every byte each connection sent, and answers each complete request
/// `200` with the body `target=<request target>`; as real servers do, it answers an HTTP/1.1
/// request without Host `400` and closes (RFC 9112 §3.2).
struct Recorder {
    addr: SocketAddr,
    /// Bytes received, one entry per connection, in accept order (the index is the number).
    conns: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let log = conns.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let number = {
                    let mut all = log.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                tokio::spawn(record(stream, log.clone(), number));
            }
        });
        Recorder { addr, conns }
    }

    /// Everything each connection sent, in accept order.
    fn received(&self) -> Vec<Vec<u8>> {
        self.conns.lock().unwrap().clone()
    }

    /// Asserts that no connection was made to the upstream.
    fn assert_untouched(&self) {
        let conns = self.received();
        let text: Vec<_> = conns.iter().map(|c| String::from_utf8_lossy(c)).collect();
        assert!(conns.is_empty(), "the upstream was reached: {text:?}");
    }

    /// The requests received, parsed, in order over all connections; fails the test on any
    /// byte that is not part of a whole request.
    fn requests(&self) -> Vec<Recorded> {
        let mut out = Vec::new();
        for bytes in self.received() {
            let (requests, rest) = split_requests(&bytes);
            assert!(
                rest.is_empty(),
                "the upstream received bytes that are not a whole request: {:?}",
                String::from_utf8_lossy(rest)
            );
            out.extend(requests);
        }
        out
    }

    /// The targets of [`Self::requests`].
    fn targets(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.target).collect()
    }
}

/// One request as the upstream received it.
#[derive(Debug)]
struct Recorded {
    /// The minor version: 1 for HTTP/1.1.
    version: u8,
    method: String,
    target: String,
    /// The head exactly as received, request line included.
    head: Vec<u8>,
    /// Fields as sent, names lowercased.
    headers: Vec<(String, String)>,
    /// The body, chunk framing removed.
    body: Vec<u8>,
}

impl Recorded {
    /// Every value of the field `name` (lowercase).
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

async fn record(mut stream: TcpStream, log: Arc<Mutex<Vec<Vec<u8>>>>, number: usize) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        log.lock().unwrap()[number].extend_from_slice(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        while let Some((req, used)) = parse_request(&pending) {
            pending.drain(..used);
            if req.version == 1 && req.all("host").is_empty() {
                let refusal = "HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\
                    content-length: 22\r\n\r\nHTTP/1.1 requires Host";
                let _ = stream.write_all(refusal.as_bytes()).await;
                return;
            }
            let body = format!("target={}", req.target);
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// A whole request at the start of `bytes` and its length, framed by `content-length` or
/// chunked; `None` while incomplete. Panics on a head or chunk size that does not parse.
fn parse_request(bytes: &[u8]) -> Option<(Recorded, usize)> {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(bytes).expect("the upstream got a malformed head") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).into_owned();
            (h.name.to_ascii_lowercase(), value)
        })
        .collect();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let rest = &bytes[head_len..];
    let (body, used) = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(rest)?
    } else {
        let len: usize = find("content-length").map_or(0, |v| v.parse().unwrap());
        if rest.len() < len {
            return None;
        }
        (rest[..len].to_vec(), len)
    };
    let recorded = Recorded {
        version: req.version.unwrap(),
        method: req.method.unwrap().to_string(),
        target: req.path.unwrap().to_string(),
        head: bytes[..head_len].to_vec(),
        headers,
        body,
    };
    Some((recorded, head_len + used))
}

/// The whole requests at the start of `bytes`, and the bytes after them.
fn split_requests(mut bytes: &[u8]) -> (Vec<Recorded>, &[u8]) {
    let mut out = Vec::new();
    while let Some((req, used)) = parse_request(bytes) {
        out.push(req);
        bytes = &bytes[used..];
    }
    (out, bytes)
}

/// A chunked body (no trailers) at the start of `bytes`: its data and its length on the wire.
fn dechunk(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + find(&bytes[at..], b"\r\n")?;
        let size_text = std::str::from_utf8(&bytes[at..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("the upstream got a malformed chunk size");
        let data = line_end + 2;
        if bytes.len() < data + size + 2 {
            return None;
        }
        if size == 0 {
            return Some((body, data + 2));
        }
        body.extend_from_slice(&bytes[data..data + size]);
        at = data + size + 2;
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------------------------

/// A gateway whose route sends everything to `stable` (weights 100/0); both subsets are the
/// recording upstream.
async fn setup() -> (TestGateway, Recorder) {
    let upstream = Recorder::start().await;
    (spawn_gateway(&config(&upstream)).await, upstream)
}

fn config(upstream: &Recorder) -> String {
    two_subset_config(upstream.addr, upstream.addr, &primary_rule(100, 0))
}

/// One answer as the client read it.
#[derive(Debug)]
struct Reply {
    /// The status line.
    line: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A raw client connection with what it has read but not yet taken.
struct Client {
    stream: TcpStream,
    unread: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            unread: Vec::new(),
        }
    }

    /// Writes `bytes`. A gateway that refuses a request may stop reading it, so a failed write
    /// is the caller's to judge: what counts is the answer read afterwards.
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads more bytes; `false` when the gateway closed the connection (end of stream, or
    /// reset). Fails the test if the gateway neither sends nor closes within `READ_WAIT`.
    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        let read = tokio::time::timeout(READ_WAIT, self.stream.read(&mut buf))
            .await
            .expect("the gateway neither answered nor closed in time");
        match read {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.unread.extend_from_slice(&buf[..n]);
                true
            }
        }
    }

    /// The next answer (interim 1xx answers included), its body framed by `content-length`.
    async fn reply(&mut self) -> Reply {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(head_len) = resp.parse(&self.unread).unwrap() {
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .map_or(0, |(_, v)| v.parse().unwrap());
                if self.unread.len() >= head_len + len {
                    let line_end = find(&self.unread, b"\r\n").unwrap();
                    let reply = Reply {
                        line: String::from_utf8_lossy(&self.unread[..line_end]).into_owned(),
                        status: resp.code.unwrap(),
                        headers,
                        body: String::from_utf8_lossy(&self.unread[head_len..head_len + len])
                            .into_owned(),
                    };
                    self.unread.drain(..head_len + len);
                    return reply;
                }
            }
            assert!(
                self.fill().await,
                "the connection closed before a whole answer; got {:?}",
                String::from_utf8_lossy(&self.unread)
            );
        }
    }

    /// Asserts that the gateway closes the connection with nothing more to read.
    async fn assert_closed(&mut self) {
        while self.fill().await {}
        assert!(
            self.unread.is_empty(),
            "bytes after the answer: {:?}",
            String::from_utf8_lossy(&self.unread)
        );
    }
}

/// Sends `request` on a new connection and returns the first answer.
async fn one(addr: SocketAddr, request: &[u8]) -> (Reply, Client) {
    let mut client = Client::connect(addr).await;
    // Ignored: a refused request may be cut short (the 500 KB head); the answer decides.
    let _ = client.send(request).await;
    let reply = client.reply().await;
    (reply, client)
}

/// A valid GET for `/after` on a new connection gets its 200 from the upstream.
async fn assert_still_serving(gw: &TestGateway) {
    let (reply, _) = one(gw.addr, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "target=/after");
}

/// The listener refuses `request` with `status` and closes; the upstream gets not one
/// connection; the gateway goes on serving, through the same upstream, so that the route works
/// and "nothing reached it" means something.
async fn refused(request: &[u8], status: u16) {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, mut client) = one(gw.addr, request).await;
        assert_eq!(reply.status, status, "{reply:?}");
        client.assert_closed().await;
        upstream.assert_untouched();
        assert_still_serving(&gw).await;
        assert_eq!(upstream.targets(), ["/after"]);
    })
    .await
}

/// The `istio_requests_total` lines of the app's metrics endpoint.
async fn requests_total_lines(app: &TestApp) -> Vec<String> {
    let metrics = format!("http://{}/stats/prometheus", app.app.metrics_addr);
    let text = get(&http1_client(), &metrics, &[]).await.body;
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .map(str::to_string)
        .collect()
}

/// A `400 DPE` answer about the Host header.
fn assert_dpe_host(reply: &Reply) {
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(reply.body.starts_with("DPE:"), "{reply:?}");
    assert!(reply.body.contains("Host"), "{reply:?}");
}

// ---------------------------------------------------------------------------------------------
// Refused by the listener
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_request_line_is_400_and_reaches_nothing() {
    refused(BAD_REQUEST_LINE, 400).await;
}

#[tokio::test]
async fn space_before_the_colon_is_400_and_reaches_nothing() {
    refused(SPACE_BEFORE_COLON, 400).await;
}

#[tokio::test]
async fn obs_fold_is_400_and_reaches_nothing() {
    refused(OBS_FOLD, 400).await;
}

#[tokio::test]
async fn nul_in_a_header_value_is_400_and_reaches_nothing() {
    refused(NUL_IN_VALUE, 400).await;
}

#[tokio::test]
async fn too_many_header_fields_is_431_and_reaches_nothing() {
    refused(&too_many_fields(), 431).await;
}

#[tokio::test]
async fn a_500_kb_header_value_is_431_and_reaches_nothing() {
    refused(&huge_value(), 431).await;
}

#[tokio::test]
async fn disagreeing_content_lengths_are_400_and_reach_nothing() {
    refused(TWO_CONTENT_LENGTHS, 400).await;
}

#[tokio::test]
async fn content_length_plus_5_is_400_and_reaches_nothing() {
    refused(PLUS_CONTENT_LENGTH, 400).await;
}

#[tokio::test]
async fn content_length_minus_1_is_400_and_reaches_nothing() {
    refused(MINUS_CONTENT_LENGTH, 400).await;
}

#[tokio::test]
async fn transfer_encoding_gzip_is_400_and_reaches_nothing() {
    refused(TE_GZIP, 400).await;
}

#[tokio::test]
async fn transfer_encoding_chunked_then_gzip_is_400_and_reaches_nothing() {
    refused(TE_CHUNKED_GZIP, 400).await;
}

#[tokio::test]
async fn transfer_encoding_in_http10_is_400_and_reaches_nothing() {
    refused(TE_IN_HTTP10, 400).await;
}

/// A transfer coding other than chunked (which the listener decodes) is refused as Envoy and
/// nginx refuse it: forwarded, its body would reach the upstream either still gzip-coded and
/// labelled as plain chunked, or with a coding many upstreams cannot undo. 501 (RFC 9112 §6.1),
/// with the flag of a downstream protocol error, and the connection closes, as its body is not
/// read.
#[tokio::test]
async fn a_transfer_coding_besides_chunked_is_501_dpe_and_reaches_nothing() {
    for request in [TE_GZIP_THEN_CHUNKED, TE_GZIP_LINE_THEN_CHUNKED_LINE] {
        refused_and_closed(
            request,
            501,
            "DPE: transfer codings other than chunked are not supported\n",
        )
        .await;
    }
}

/// Sends `request`, expects `status` and `body` with `connection: close`, the connection
/// closed, nothing upstream, and the gateway serving the next client.
async fn refused_and_closed(request: &'static [u8], status: u16, body: &str) {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, mut client) = one(gw.addr, request).await;
        assert_eq!(reply.status, status, "{reply:?}");
        assert_eq!(reply.body, body);
        assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
        client.assert_closed().await;
        upstream.assert_untouched();
        assert_still_serving(&gw).await;
        assert_eq!(upstream.targets(), ["/after"]);
    })
    .await
}

/// The gateway is not a forward proxy: CONNECT gets Envoy's answer when it is not configured for
/// CONNECT (403, no response flag), nothing reaches the upstream, and the connection closes, so
/// bytes sent into the hoped-for tunnel never become a request.
#[tokio::test]
async fn connect_is_403_closes_and_reaches_nothing() {
    for request in [CONNECT, CONNECT_THEN_TUNNEL] {
        refused_and_closed(
            request,
            403,
            "CONNECT is not served: this gateway is a reverse proxy, not a forward proxy\n",
        )
        .await;
    }
}

/// CONNECT over HTTP/2 (h2c) is refused the same way, and the connection serves on.
#[tokio::test]
async fn connect_over_h2c_is_403_and_reaches_nothing() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let client = h2c_client();
        let connect = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(gw.url("/"))
            .body(http_body_util::Full::default())
            .unwrap();
        let reply = send(&client, connect).await;
        assert_eq!(reply.status, 403, "{reply:?}");
        assert_eq!(
            reply.body,
            "CONNECT is not served: this gateway is a reverse proxy, not a forward proxy\n"
        );
        upstream.assert_untouched();
        let after = get(&client, &gw.url("/after"), &[]).await;
        assert_eq!(
            (after.status.as_u16(), after.body.as_str()),
            (200, "target=/after")
        );
        assert_eq!(upstream.targets(), ["/after"]);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Smuggling and framing
// ---------------------------------------------------------------------------------------------

/// Content-Length beside chunked: read chunked, forwarded with one framing only, and the
/// connection closed, so the bytes after the chunked body never become a request.
#[tokio::test]
async fn content_length_beside_chunked_cannot_smuggle_a_request() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, mut client) = one(gw.addr, CL_BESIDE_CHUNKED).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
        client.assert_closed().await;
        let requests = upstream.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        let post = &requests[0];
        assert_eq!((post.method.as_str(), post.target.as_str()), ("POST", "/"));
        assert_eq!(post.all("transfer-encoding"), ["chunked"], "{post:?}");
        assert!(post.all("content-length").is_empty(), "{post:?}");
        assert!(post.body.is_empty(), "{post:?}");
        let all = upstream.received().concat();
        assert_eq!(find(&all, b"/smuggled"), None);
    })
    .await
}

/// A malformed chunk is `400 DPE`; the upstream connection it was going to is not used again, so
/// the next request reaches the upstream whole, with nothing before it.
#[tokio::test]
async fn a_malformed_chunk_size_is_400_dpe_and_poisons_nothing() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, mut client) = one(gw.addr, BROKEN_CHUNK).await;
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_eq!(
            reply.body,
            "DPE: the request body's chunked framing is malformed\n"
        );
        client.assert_closed().await;
        assert_still_serving(&gw).await;
        let conns = upstream.received();
        let text: Vec<_> = conns.iter().map(|c| String::from_utf8_lossy(c)).collect();
        let with_get: Vec<&Vec<u8>> = conns
            .iter()
            .filter(|c| find(c, b"/after").is_some())
            .collect();
        assert_eq!(with_get.len(), 1, "{text:?}");
        let bytes = with_get[0];
        assert!(bytes.starts_with(b"GET /after HTTP/1.1\r\n"), "{text:?}");
        let (get, used) = parse_request(bytes).expect("a whole request");
        assert_eq!(
            (get.method.as_str(), get.target.as_str()),
            ("GET", "/after")
        );
        assert_eq!(used, bytes.len(), "{text:?}");
    })
    .await
}

/// Envoy's flags tell a client that broke the protocol from one that went away: a malformed
/// chunk is counted `400 DPE`, a body the client stops sending by closing its side stays `DC`.
#[tokio::test]
async fn a_malformed_chunk_is_counted_dpe_and_a_body_the_client_cut_dc() {
    bounded(async {
        let upstream = Recorder::start().await;
        let app = spawn_app(&config(&upstream)).await;
        let (reply, _client) = one(app.addr, BROKEN_CHUNK).await;
        assert_eq!(reply.status, 400, "{reply:?}");
        let mut client = Client::connect(app.addr).await;
        client.send(CUT_CHUNKED).await.unwrap();
        client.stream.shutdown().await.unwrap();
        let reply = client.reply().await;
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_eq!(reply.body, "DC: the request body broke off\n");
        let lines = requests_total_lines(&app).await;
        let counted = |code: &str, flags: &str| {
            lines
                .iter()
                .filter(|l| {
                    l.contains(&format!("response_code=\"{code}\""))
                        && l.contains(&format!("response_flags=\"{flags}\""))
                })
                .map(|l| l.rsplit_once(' ').map_or("", |(_, v)| v))
                .collect::<Vec<_>>()
        };
        assert_eq!(counted("400", "DPE"), ["1"], "{lines:#?}");
        assert_eq!(counted("400", "DC"), ["1"], "{lines:#?}");
        assert_eq!(lines.len(), 2, "{lines:#?}");
    })
    .await
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let mut client = Client::connect(gw.addr).await;
        client
            .send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let (first, second) = (client.reply().await, client.reply().await);
        assert_eq!((first.status, first.body.as_str()), (200, "target=/1"));
        assert_eq!((second.status, second.body.as_str()), (200, "target=/2"));
        assert_eq!(upstream.targets(), ["/1", "/2"]);
    })
    .await
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_the_gateway_and_not_forwarded() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (interim, mut client) = one(
            gw.addr,
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
        )
        .await;
        assert_eq!(interim.line, "HTTP/1.1 100 Continue", "{interim:?}");
        let reply = client.reply().await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "target=/up"));
        let requests = upstream.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert!(requests[0].all("expect").is_empty(), "{:?}", requests[0]);
        assert_eq!(requests[0].body, b"hello");
    })
    .await
}

#[tokio::test]
async fn http10_is_answered_in_http10_and_closed() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, mut client) = one(gw.addr, b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n").await;
        assert!(reply.line.starts_with("HTTP/1.0 200"), "{reply:?}");
        assert_eq!(reply.body, "target=/old");
        client.assert_closed().await;
        assert_eq!(upstream.targets(), ["/old"]);
    })
    .await
}

/// HTTP/1.0 may leave Host out. The upstream hears HTTP/1.1, which needs one (the recording
/// upstream refuses it without, as real servers do): it gets the authority the client reached,
/// the listener's address, by which the request was routed.
#[tokio::test]
async fn http10_without_host_is_served() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, mut client) = one(gw.addr, b"GET /no-host HTTP/1.0\r\n\r\n").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body, "target=/no-host");
        client.assert_closed().await;
        let requests = upstream.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].target, "/no-host");
        assert_eq!(requests[0].all("host"), [gw.addr.to_string()]);
    })
    .await
}

#[tokio::test]
async fn connection_close_from_the_client_closes_after_the_answer() {
    bounded(async {
        let (gw, _upstream) = setup().await;
        let (reply, mut client) = one(
            gw.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
        client.assert_closed().await;
    })
    .await
}

/// Bare LF line ends are read, and the upstream gets CRLF only.
#[tokio::test]
async fn bare_lf_heads_reach_the_upstream_as_crlf() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, _client) = one(gw.addr, b"GET /lf HTTP/1.1\nHost: a\nX-A: b\n\n").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "target=/lf"));
        let requests = upstream.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        let head = &requests[0].head;
        let bare = head
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'));
        assert!(!bare, "{:?}", String::from_utf8_lossy(head));
        assert_eq!(requests[0].all("x-a"), ["b"]);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Host
// ---------------------------------------------------------------------------------------------

/// RFC 9112 §3.2.2: the absolute-form target's authority replaces Host, for routing and for the
/// upstream alike.
#[tokio::test]
async fn an_absolute_form_target_replaces_host() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, _client) = one(
            gw.addr,
            b"GET http://other.example:8081/p?q=1 HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "target=/p?q=1"));
        let requests = upstream.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        let req = &requests[0];
        assert!(req.head.starts_with(b"GET /p?q=1 HTTP/1.1\r\n"), "{req:?}");
        assert_eq!(req.all("host"), ["other.example:8081"], "{req:?}");
        assert_eq!(
            req.all("x-forwarded-host"),
            ["other.example:8081"],
            "{req:?}"
        );
    })
    .await
}

/// `Connection` may name only hop-by-hop fields: a client naming Host, the framing fields or TE
/// there cannot strip them from what the upstream gets. Custom fields it names still go.
#[tokio::test]
async fn connection_naming_host_or_framing_fields_strips_none_of_them() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, _client) = one(
            gw.addr,
            b"POST /named HTTP/1.1\r\nHost: a\r\n\
              Connection: host, content-length, transfer-encoding, te, x-drop\r\n\
              X-Drop: 1\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "target=/named"));
        let requests = upstream.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        let req = &requests[0];
        assert_eq!(req.all("host"), ["a"], "{req:?}");
        assert_eq!(req.all("x-forwarded-host"), ["a"], "{req:?}");
        assert_eq!(req.all("content-length"), ["5"], "{req:?}");
        assert_eq!(req.body, b"hello");
        assert!(req.all("x-drop").is_empty(), "{req:?}");
        assert!(req.all("connection").is_empty(), "{req:?}");
    })
    .await
}

#[tokio::test]
async fn http11_without_host_is_400_dpe_and_the_connection_goes_on() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, mut client) = one(gw.addr, NO_HOST).await;
        assert_dpe_host(&reply);
        upstream.assert_untouched();
        client
            .send(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("the connection is still open");
        let next = client.reply().await;
        assert_eq!((next.status, next.body.as_str()), (200, "target=/next"));
        assert_eq!(upstream.targets(), ["/next"]);
    })
    .await
}

#[tokio::test]
async fn two_host_headers_are_400_dpe_and_reach_nothing() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, _client) = one(gw.addr, TWO_HOSTS).await;
        assert_dpe_host(&reply);
        upstream.assert_untouched();
        assert_still_serving(&gw).await;
        assert_eq!(upstream.targets(), ["/after"]);
    })
    .await
}

/// A Host that is not `host[:port]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a space, or userinfo, which
/// RFC 9110 §4.2.4 says to treat as an error, in the Host header or in an absolute-form target.
#[tokio::test]
async fn an_invalid_host_is_400_dpe_and_reaches_nothing() {
    bounded(async {
        let (gw, upstream) = setup().await;
        for request in [HOST_WITH_SPACE, HOST_WITH_USERINFO, TARGET_WITH_USERINFO] {
            let (reply, _client) = one(gw.addr, request).await;
            assert_dpe_host(&reply);
            assert_eq!(
                reply.body,
                "DPE: the Host is not a valid host[:port]\n",
                "{:?}",
                String::from_utf8_lossy(request)
            );
        }
        upstream.assert_untouched();
        assert_still_serving(&gw).await;
        assert_eq!(upstream.targets(), ["/after"]);
    })
    .await
}

/// The refused request is counted as Envoy counts a downstream protocol error.
#[tokio::test]
async fn a_request_without_host_is_counted_as_400_dpe() {
    bounded(async {
        let upstream = Recorder::start().await;
        let app = spawn_app(&config(&upstream)).await;
        let (reply, _client) = one(app.addr, NO_HOST).await;
        assert_dpe_host(&reply);
        let metrics = format!("http://{}/stats/prometheus", app.app.metrics_addr);
        let text = get(&http1_client(), &metrics, &[]).await.body;
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains("response_code=\"400\"")
                    && l.contains("response_flags=\"DPE\"")
            })
            .collect();
        assert_eq!(lines.len(), 1, "one 400 DPE series expected:\n{text}");
        let value = lines[0].rsplit_once(' ').map(|(_, v)| v);
        assert_eq!(value, Some("1"), "{}", lines[0]);
        upstream.assert_untouched();
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// All at once
// ---------------------------------------------------------------------------------------------

/// Every hostile input above, each on its own connection and all at once; the gateway answers
/// each as it does alone, forwards none of the refused ones, and goes on serving.
#[tokio::test]
async fn the_gateway_keeps_serving_after_a_burst_of_hostile_requests() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (many, huge) = (too_many_fields(), huge_value());
        let cases: [(&str, &[u8], u16); 23] = [
            ("bad request line", BAD_REQUEST_LINE, 400),
            ("space before colon", SPACE_BEFORE_COLON, 400),
            ("obs-fold", OBS_FOLD, 400),
            ("NUL in value", NUL_IN_VALUE, 400),
            ("200 fields", &many, 431),
            ("500 KB value", &huge, 431),
            ("two content-lengths", TWO_CONTENT_LENGTHS, 400),
            ("content-length +5", PLUS_CONTENT_LENGTH, 400),
            ("content-length -1", MINUS_CONTENT_LENGTH, 400),
            ("TE gzip", TE_GZIP, 400),
            ("TE chunked, gzip", TE_CHUNKED_GZIP, 400),
            ("TE in HTTP/1.0", TE_IN_HTTP10, 400),
            ("CL beside chunked", CL_BESIDE_CHUNKED, 200),
            ("broken chunk", BROKEN_CHUNK, 400),
            ("no Host", NO_HOST, 400),
            ("two Hosts", TWO_HOSTS, 400),
            ("Host with a space", HOST_WITH_SPACE, 400),
            ("Host with userinfo", HOST_WITH_USERINFO, 400),
            ("target with userinfo", TARGET_WITH_USERINFO, 400),
            ("TE gzip, chunked", TE_GZIP_THEN_CHUNKED, 501),
            ("TE on two lines", TE_GZIP_LINE_THEN_CHUNKED_LINE, 501),
            ("CONNECT", CONNECT, 403),
            ("CONNECT and tunnel bytes", CONNECT_THEN_TUNNEL, 403),
        ];
        let replies =
            futures_util::future::join_all(cases.iter().map(|(_, req, _)| one(gw.addr, req))).await;
        for ((name, _, status), (reply, _)) in cases.iter().zip(&replies) {
            assert_eq!(reply.status, *status, "{name}: {reply:?}");
        }
        drop(replies);
        assert_still_serving(&gw).await;
        // What may reach the upstream: the CL-beside-chunked POST (re-framed), the GET after
        // the burst, and, unfinished at the end of its connection, the broken chunked POST.
        let conns = upstream.received();
        let text: Vec<_> = conns.iter().map(|c| String::from_utf8_lossy(c)).collect();
        let mut targets = Vec::new();
        for c in &conns {
            let (requests, rest) = split_requests(c);
            targets.extend(requests.into_iter().map(|r| r.target));
            assert!(
                rest.is_empty() || rest.starts_with(b"POST /broken HTTP/1.1\r\n"),
                "{text:?}"
            );
        }
        targets.sort();
        assert_eq!(targets, ["/", "/after"], "{text:?}");
        assert_eq!(find(&conns.concat(), b"/smuggled"), None, "{text:?}");
        assert_eq!(find(&conns.concat(), b"/tunnelled"), None, "{text:?}");
    })
    .await
}
