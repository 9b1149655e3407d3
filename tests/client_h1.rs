//! Malformed and hostile HTTP/1.1 from clients, on the wire. Each test writes exact bytes to the
//! listener and checks what the client gets (status, body, whether the connection closes) and,
//! above all, what reached the upstream: nothing, or requests framed one way only. A recording
//! upstream keeps every byte it receives.

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
// The recording upstream
// ---------------------------------------------------------------------------------------------

/// An upstream that keeps every byte each connection sent, and answers each complete request
/// `200` with the body `target=<request target>`.
struct Recorder {
    addr: SocketAddr,
    /// Bytes received, one entry per connection, in accept order.
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
                let index = {
                    let mut all = log.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                tokio::spawn(record(stream, log.clone(), index));
            }
        });
        Recorder { addr, conns }
    }

    /// Everything every connection sent, in accept order.
    fn received(&self) -> Vec<Vec<u8>> {
        self.conns.lock().unwrap().clone()
    }

    /// All bytes received, joined.
    fn all_bytes(&self) -> Vec<u8> {
        self.received().concat()
    }

    /// The requests received, parsed, in order over all connections.
    fn requests(&self) -> Vec<Recorded> {
        let mut out = Vec::new();
        for bytes in self.received() {
            let mut rest = &bytes[..];
            while let Some((req, used)) = parse_request(rest) {
                out.push(req);
                rest = &rest[used..];
            }
            assert!(
                rest.is_empty(),
                "the upstream received bytes that are not a whole request: {:?}",
                String::from_utf8_lossy(rest)
            );
        }
        out
    }
}

/// One request as the upstream received it.
#[derive(Debug)]
struct Recorded {
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
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

async fn record(mut stream: TcpStream, log: Arc<Mutex<Vec<Vec<u8>>>>, index: usize) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        log.lock().unwrap()[index].extend_from_slice(&buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        while let Some((req, used)) = parse_request(&pending) {
            pending.drain(..used);
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
/// chunked; `None` while incomplete.
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
        method: req.method.unwrap().to_string(),
        target: req.path.unwrap().to_string(),
        head: bytes[..head_len].to_vec(),
        headers,
        body,
    };
    Some((recorded, head_len + used))
}

/// A chunked body (no trailers) at the start of `bytes`: its data and its length on the wire.
fn dechunk(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
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

// ---------------------------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------------------------

/// A gateway whose only route sends everything to one recording upstream.
async fn setup() -> (TestGateway, Recorder) {
    let upstream = Recorder::start().await;
    let yaml = svc_config(&subset("stable", upstream.addr), &primary_only());
    (spawn_gateway(&yaml).await, upstream)
}

fn primary_only() -> String {
    "      - name: primary
        route:
          - { destination: { service: svc, subset: stable }, weight: 100 }
"
    .to_string()
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
    async fn connect(gw: &TestGateway) -> Client {
        Client {
            stream: TcpStream::connect(gw.addr).await.unwrap(),
            unread: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more bytes; `false` at the end of the stream.
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
                    let line_end = self.unread.windows(2).position(|w| w == b"\r\n").unwrap();
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

/// Sends `request` on a new connection and returns the answer.
async fn one(gw: &TestGateway, request: &[u8]) -> (Reply, Client) {
    let mut client = Client::connect(gw).await;
    client.send(request).await;
    let reply = client.reply().await;
    (reply, client)
}

/// A valid GET still gets its 200 from the upstream.
async fn assert_still_serving(gw: &TestGateway) {
    let (reply, _) = one(gw, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "target=/after");
}

/// The listener refuses `request` with `status` and closes; the upstream gets not one byte;
/// the gateway goes on serving.
async fn refused(request: &[u8], status: u16) {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, mut client) = one(&gw, request).await;
        assert_eq!(reply.status, status, "{reply:?}");
        client.assert_closed().await;
        assert_still_serving(&gw).await;
        let requests = upstream.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert_eq!(requests[0].target, "/after");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Refused by the listener
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_request_line_is_400() {
    refused(b"GET/ HTTP/1.1\r\nHost: a\r\n\r\n", 400).await;
}

#[tokio::test]
async fn space_before_the_colon_is_400() {
    refused(b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400).await;
}

#[tokio::test]
async fn obs_fold_is_400() {
    refused(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400).await;
}

#[tokio::test]
async fn nul_in_a_header_value_is_400() {
    refused(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400).await;
}

#[tokio::test]
async fn too_many_header_fields_is_431() {
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..200 {
        req.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    refused(&req, 431).await;
}

#[tokio::test]
async fn a_huge_header_is_431() {
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: ".to_vec();
    req.resize(req.len() + 500_000, b'a');
    req.extend_from_slice(b"\r\n\r\n");
    refused(&req, 431).await;
}

#[tokio::test]
async fn disagreeing_content_lengths_are_400() {
    refused(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    )
    .await;
}

#[tokio::test]
async fn signed_content_lengths_are_400() {
    refused(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
        400,
    )
    .await;
    refused(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn transfer_encoding_not_ending_in_chunked_is_400() {
    refused(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        400,
    )
    .await;
    refused(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn transfer_encoding_in_http10_is_400() {
    refused(
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    )
    .await;
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
        let (reply, mut client) = one(
            &gw,
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
              0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("connection"), Some("close"));
        client.assert_closed().await;
        let requests = upstream.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        let post = &requests[0];
        assert_eq!((post.method.as_str(), post.target.as_str()), ("POST", "/"));
        assert_eq!(post.all("transfer-encoding"), ["chunked"]);
        assert!(post.all("content-length").is_empty(), "{post:?}");
        assert!(post.body.is_empty());
        let all = upstream.all_bytes();
        assert!(!all.windows(9).any(|w| w == b"/smuggled"));
    })
    .await
}

/// A chunked body that breaks off is `400 DC`; the upstream connection it was going to is not
/// used again, so the next request reaches the upstream whole.
#[tokio::test]
async fn a_malformed_chunk_is_400_dc_and_poisons_nothing() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, mut client) = one(
            &gw,
            b"POST /broken HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_eq!(reply.body, "DC: the request body broke off\n");
        client.assert_closed().await;
        assert_still_serving(&gw).await;
        // The broken request's connection holds a head and no whole body; the GET came on
        // another connection and parses whole.
        let conns = upstream.received();
        let last = conns.last().unwrap();
        let (get, used) = parse_request(last).expect("a whole request");
        assert_eq!((get.method.as_str(), get.target.as_str()), ("GET", "/after"));
        assert_eq!(used, last.len());
        assert!(
            conns[..conns.len() - 1]
                .iter()
                .all(|c| !c.windows(6).any(|w| w == b"/after")),
            "the GET went down the broken request's connection"
        );
    })
    .await
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let mut client = Client::connect(&gw).await;
        client
            .send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await;
        let (first, second) = (client.reply().await, client.reply().await);
        assert_eq!((first.status, first.body.as_str()), (200, "target=/1"));
        assert_eq!((second.status, second.body.as_str()), (200, "target=/2"));
        let targets: Vec<String> = upstream.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(targets, ["/1", "/2"]);
    })
    .await
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_the_gateway() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (interim, mut client) = one(
            &gw,
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
        )
        .await;
        assert_eq!(interim.status, 100, "{interim:?}");
        let reply = client.reply().await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "target=/up"));
        let requests = upstream.requests();
        assert_eq!(requests.len(), 1);
        assert!(requests[0].all("expect").is_empty(), "{:?}", requests[0]);
        assert_eq!(requests[0].body, b"hello");
    })
    .await
}

#[tokio::test]
async fn http10_is_answered_in_http10_and_closed() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, mut client) = one(&gw, b"GET /old HTTP/1.0\r\nHost: a\r\n\r\n").await;
        assert!(reply.line.starts_with("HTTP/1.0 200"), "{reply:?}");
        client.assert_closed().await;
        // HTTP/1.0 may leave Host out.
        let (reply, mut client) = one(&gw, b"GET /no-host HTTP/1.0\r\n\r\n").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body, "target=/no-host");
        client.assert_closed().await;
        assert_eq!(upstream.requests().len(), 2);
    })
    .await
}

#[tokio::test]
async fn connection_close_from_the_client_closes_after_the_answer() {
    bounded(async {
        let (gw, _upstream) = setup().await;
        let (reply, mut client) = one(
            &gw,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("connection"), Some("close"));
        client.assert_closed().await;
    })
    .await
}

/// Bare LF line ends are read, and the upstream gets CRLF only.
#[tokio::test]
async fn bare_lf_heads_reach_the_upstream_as_crlf() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, _client) = one(&gw, b"GET /lf HTTP/1.1\nHost: a\nX-A: b\n\n").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "target=/lf"));
        let requests = upstream.requests();
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
            &gw,
            b"GET http://other.example:8081/p?q=1 HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "target=/p?q=1"));
        let requests = upstream.requests();
        let req = &requests[0];
        assert!(req.head.starts_with(b"GET /p?q=1 HTTP/1.1\r\n"), "{req:?}");
        assert_eq!(req.all("host"), ["other.example:8081"]);
        assert_eq!(req.all("x-forwarded-host"), ["other.example:8081"]);
    })
    .await
}

#[tokio::test]
async fn http11_without_host_is_400_dpe_and_the_connection_goes_on() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, mut client) = one(&gw, b"GET /nohost HTTP/1.1\r\n\r\n").await;
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_eq!(reply.body, "DPE: an HTTP/1.1 request needs a Host header\n");
        client.send(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n").await;
        let next = client.reply().await;
        assert_eq!((next.status, next.body.as_str()), (200, "target=/next"));
        let targets: Vec<String> = upstream.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(targets, ["/next"]);
    })
    .await
}

#[tokio::test]
async fn two_host_headers_are_400_dpe() {
    bounded(async {
        let (gw, upstream) = setup().await;
        let (reply, _client) = one(&gw, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await;
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_eq!(
            reply.body,
            "DPE: the request has more than one Host header\n"
        );
        assert!(upstream.all_bytes().is_empty());
    })
    .await
}

/// The refused request is counted as Envoy counts a downstream protocol error.
#[tokio::test]
async fn a_request_without_host_is_counted_as_400_dpe() {
    bounded(async {
        let upstream = Recorder::start().await;
        let yaml = svc_config(&subset("stable", upstream.addr), &primary_only());
        let app = spawn_app(&yaml).await;
        let mut client = Client {
            stream: TcpStream::connect(app.addr).await.unwrap(),
            unread: Vec::new(),
        };
        client.send(b"GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(client.reply().await.status, 400);
        let metrics = format!("http://{}/stats/prometheus", app.app.metrics_addr);
        let text = get(&http1_client(), &metrics, &[]).await.body;
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap_or_else(|| panic!("no istio_requests_total line:\n{text}"));
        assert!(
            line.contains("response_code=\"400\"") && line.contains("response_flags=\"DPE\""),
            "{line}"
        );
        assert!(line.ends_with(" 1"), "{line}");
    })
    .await
}
