//! Upstream TLS, upstream HTTP/2 (h2c and h2 over TLS) and gRPC metrics, as a user sees them:
//! the status, body, headers and trailers a client gets through the gateway, what the upstream
//! saw (SNI, ALPN, `:authority`, headers), what `splitgate validate` prints, and the
//! `istio_requests_total` lines on the metrics endpoint.
//!
//! The upstreams here are written for these tests: hyper servers speaking only HTTP/1.1 or only
//! HTTP/2 (so a gateway speaking the wrong protocol fails), in the clear or behind a rustls
//! acceptor that records each ClientHello's SNI and the negotiated ALPN. Every wait is bounded.

mod common;

use bytes::Bytes;
use common::certs::{Pair, TestCa};
use common::{
    dead_addr, get, http1_client, send, spawn_app, temp_dir, with_free_admin, Answer, TestApp,
    ISTIO_LABELS,
};
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// The service's `host`: the default SNI.
const SERVICE_HOST: &str = "echo.default.svc.cluster.local";
/// The `:authority` gRPC clients use towards the gateway.
const AUTHORITY: &str = "grpc.example.com";
/// Bound on any one exchange (a request, a handshake, a scrape, a `validate` run).
const TIMEOUT: Duration = Duration::from_secs(10);
/// What the gateway answers when no connection to the upstream could be made.
const UF_BODY: &str = "UF: could not connect to the upstream\n";

/// Awaits `fut`, failing the test after `TIMEOUT`.
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {TIMEOUT:?}"))
}

// ---------------------------------------------------------------------------------------------
// Certificates.
// ---------------------------------------------------------------------------------------------

/// A private CA whose certificate is written to `<dir>/ca.pem` (the gateway's `ca_file`).
struct Pki {
    ca: TestCa,
    dir: PathBuf,
    ca_file: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let ca = TestCa::new("splitgate test upstream CA");
        let dir = temp_dir("upstream-tls");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        Pki { ca, dir, ca_file }
    }

    /// A leaf for `names`, signed by this CA.
    fn leaf(&self, names: &[&str]) -> Pair {
        self.ca.leaf(names)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Test upstreams.
// ---------------------------------------------------------------------------------------------

/// What an upstream server speaks: only HTTP/1.1 or only HTTP/2.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    H1,
    H2,
}

/// One TLS handshake an upstream saw.
#[derive(Clone, Debug, Default)]
struct Handshake {
    /// SNI of the ClientHello (recorded even when the handshake then fails).
    hello_sni: Option<String>,
    /// Whether the handshake completed.
    completed: bool,
    /// `ServerConnection::server_name()` once completed.
    server_name: Option<String>,
    /// ALPN protocol agreed, once completed.
    alpn: Option<String>,
}

/// What an upstream saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

/// State shared by an upstream's connections.
#[derive(Default)]
struct Shared {
    connections: AtomicUsize,
    handshakes: Mutex<Vec<Handshake>>,
    requests: Mutex<Vec<Seen>>,
    /// Requests held by `x-wait-for: N`, released together once N have arrived.
    arrived: tokio::sync::watch::Sender<usize>,
}

/// A running test upstream.
struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Server {
    fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    fn handshakes(&self) -> Vec<Handshake> {
        self.shared.handshakes.lock().unwrap().clone()
    }

    fn requests(&self) -> Vec<Seen> {
        self.shared.requests.lock().unwrap().clone()
    }
}

type ReplyBody = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> ReplyBody {
    Full::new(b.into()).boxed()
}

/// The upstream's answer. A gRPC request (`content-type: application/grpc…`) is echoed: 200,
/// `content-type: application/grpc`, the request body, then trailers with the `grpc-status`
/// asked by `x-reply: trailers=N` (default 0). `x-reply: trailers-only=N` gets a
/// trailers-only answer: `grpc-status: N` in the headers and no body. Anything else gets
/// `200 upstream <path>`.
async fn reply(shared: &Shared, req: Request<Incoming>) -> Response<ReplyBody> {
    shared.requests.lock().unwrap().push(Seen {
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(want) = header("x-wait-for").and_then(|n| n.parse::<usize>().ok()) {
        shared.arrived.send_modify(|n| *n += 1);
        let mut rx = shared.arrived.subscribe();
        let _ = rx.wait_for(|n| *n >= want).await;
    }
    let grpc = header("content-type").is_some_and(|c| c.starts_with("application/grpc"));
    let ask = header("x-reply").unwrap_or_default();
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let builder = Response::builder().status(200);
    if !grpc {
        return builder
            .header(CONTENT_TYPE, "text/plain")
            .body(full(format!("upstream {path}")))
            .unwrap();
    }
    let builder = builder.header(CONTENT_TYPE, "application/grpc");
    match ask.split_once('=') {
        Some(("trailers-only", code)) => builder
            .header("grpc-status", code)
            .header("grpc-message", "trailers only")
            .body(Empty::new().boxed())
            .unwrap(),
        other => {
            let code = other.map_or("0", |(_, c)| c);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", code.parse().unwrap());
            trailers.insert("grpc-message", "echoed".parse().unwrap());
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(body)),
                Ok(Frame::trailers(trailers)),
            ];
            builder
                .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
                .unwrap()
        }
    }
}

async fn serve<IO>(proto: Proto, io: IO, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(reply(&shared, req).await) }
    });
    let io = TokioIo::new(io);
    let _ = match proto {
        Proto::H1 => {
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
        }
        Proto::H2 => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc)
                .await
        }
    };
}

/// A rustls server config serving `pair`, offering the ALPN of `proto`.
fn server_tls(pair: &Pair, proto: Proto) -> Arc<rustls::ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![match proto {
        Proto::H1 => b"http/1.1".to_vec(),
        Proto::H2 => b"h2".to_vec(),
    }];
    Arc::new(config)
}

/// Starts an upstream speaking `proto`, behind TLS with `cert` when given.
async fn spawn_server(proto: Proto, cert: Option<&Pair>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = Arc::new(Shared::default());
    let tls = cert.map(|c| server_tls(c, proto));
    let state = shared.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            state.connections.fetch_add(1, Ordering::SeqCst);
            let (state, tls) = (state.clone(), tls.clone());
            tokio::spawn(async move {
                let Some(config) = tls else {
                    return serve(proto, tcp, state).await;
                };
                let acceptor =
                    tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
                let Ok(start) = acceptor.await else { return };
                let index = {
                    let mut handshakes = state.handshakes.lock().unwrap();
                    handshakes.push(Handshake {
                        hello_sni: start.client_hello().server_name().map(str::to_owned),
                        ..Handshake::default()
                    });
                    handshakes.len() - 1
                };
                let Ok(stream) = start.into_stream(config).await else {
                    return;
                };
                {
                    let conn = stream.get_ref().1;
                    let h = &mut state.handshakes.lock().unwrap()[index];
                    h.completed = true;
                    h.server_name = conn.server_name().map(str::to_owned);
                    h.alpn = conn
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned());
                }
                serve(proto, stream, state).await
            });
        }
    });
    Server { addr, shared }
}

// ---------------------------------------------------------------------------------------------
// Gateway config.
// ---------------------------------------------------------------------------------------------

/// `policy.tls` of the service.
#[derive(Default)]
struct Tls<'a> {
    ca_file: Option<&'a Path>,
    sni: Option<&'a str>,
    insecure_skip_verify: bool,
}

/// `policy` of the service: `protocol` (left out when `None`) and `tls`.
#[derive(Default)]
struct Policy<'a> {
    protocol: Option<&'a str>,
    tls: Option<Tls<'a>>,
}

/// One service `echo` (host `SERVICE_HOST`) with one subset `stable` on `endpoint`, and one route on
/// every host to it.
fn config(endpoint: SocketAddr, policy: &Policy) -> String {
    let mut p = String::from("      connect_timeout: 2s\n");
    if let Some(protocol) = policy.protocol {
        p += &format!("      protocol: {protocol}\n");
    }
    if let Some(tls) = &policy.tls {
        p += "      tls:\n";
        if let Some(ca) = tls.ca_file {
            p += &format!("        ca_file: {:?}\n", ca.display().to_string());
        }
        if let Some(sni) = tls.sni {
            p += &format!("        sni: {sni:?}\n");
        }
        p += &format!(
            "        insecure_skip_verify: {}\n",
            tls.insecure_skip_verify
        );
    }
    format!(
        "listeners:
  - name: http
    address: 127.0.0.1:0
services:
  echo:
    namespace: default
    host: {SERVICE_HOST}
    subsets:
      stable: {{ endpoints: [\"{endpoint}\"] }}
    policy:
{p}routes:
  - name: main
    hosts: [\"*\"]
    http:
      - route:
          - destination: {{ service: echo, subset: stable }}
"
    )
}

/// A gateway in front of `server` with `policy`.
async fn gateway(server: &Server, policy: &Policy<'_>) -> TestApp {
    spawn_app(&config(server.addr, policy)).await
}

/// A gateway speaking h2c to `server`.
async fn h2c_gateway(server: &Server) -> TestApp {
    let policy = Policy {
        protocol: Some("http2"),
        ..Policy::default()
    };
    gateway(server, &policy).await
}

/// Rewrites `app`'s config file for `server` with `policy` and reloads it through the admin API
/// (which answers once the new config is live).
async fn reload(app: &TestApp, server: &Server, policy: &Policy<'_>) {
    std::fs::write(
        &app.config_path,
        with_free_admin(&config(server.addr, policy)),
    )
    .unwrap();
    let req = Request::post(app.admin_url("/v1/reload"))
        .body(Full::default())
        .unwrap();
    let a = bounded("reload", send(&http1_client(), req)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
}

// ---------------------------------------------------------------------------------------------
// Clients.
// ---------------------------------------------------------------------------------------------

/// A GET over HTTP/1.1 through the gateway with extra headers, read to its end.
async fn http_get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Answer {
    bounded(path, get(&http1_client(), &app.url(path), headers)).await
}

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An HTTP/2 prior-knowledge (h2c) connection to the gateway.
async fn h2_to(app: &TestApp) -> H2 {
    let tcp = bounded("connect", TcpStream::connect(app.addr))
        .await
        .expect("the gateway accepts");
    let (send, conn) = bounded(
        "h2c handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)),
    )
    .await
    .expect("the gateway speaks h2c");
    tokio::spawn(conn);
    send
}

/// A gRPC message: uncompressed flag, big-endian length, payload.
fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut b = vec![0u8];
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.into()
}

/// A finished gRPC exchange.
#[derive(Debug)]
struct GrpcAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl GrpcAnswer {
    /// `grpc-status` from the trailers, or (trailers-only answers) the headers.
    fn grpc_status(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .unwrap_or(&self.headers)
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
    }
}

/// A unary gRPC call on `h2` with `:authority` `AUTHORITY`, asking the echo upstream for
/// `reply` (see [`reply`]), read to its trailers.
async fn grpc_call(h2: &H2, reply: &str, extra: &[(&str, &str)], payload: &[u8]) -> GrpcAnswer {
    let mut b = Request::post(format!("http://{AUTHORITY}/echo.Echo/Call"))
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .header("x-reply", reply);
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(grpc_frame(payload))).unwrap();
    let mut h2 = h2.clone();
    bounded("gRPC call", async move {
        h2.ready().await?;
        let (parts, body) = h2.send_request(req).await?.into_parts();
        let collected = body.collect().await?;
        Ok::<_, hyper::Error>(GrpcAnswer {
            status: parts.status,
            headers: parts.headers,
            trailers: collected.trailers().cloned(),
            body: collected.to_bytes(),
        })
    })
    .await
    .expect("the gRPC call completes")
}

// ---------------------------------------------------------------------------------------------
// Shared checks.
// ---------------------------------------------------------------------------------------------

/// A request the gateway could not connect for: 503 with the `UF` text, counted with flag
/// `UF`; the upstream served nothing.
async fn assert_connect_failure(app: &TestApp, server: &Server) {
    let a = http_get(app, "/hello", &[]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{a:?}");
    assert_eq!(a.body, UF_BODY);
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    let series = scrape(app).await;
    assert_eq!(
        count(
            &series,
            &[("response_code", "503"), ("response_flags", "UF")]
        ),
        1.0,
        "one 503 UF request in {series:?}"
    );
}

/// Three gRPC calls through the gateway: trailers `grpc-status: 0`, trailers
/// `grpc-status: 5`, and a trailers-only answer with `grpc-status: 12` in its headers.
async fn assert_grpc_echo(h2: &H2) {
    for (reply, code) in [("trailers=0", "0"), ("trailers=5", "5")] {
        let payload = format!("ping for {reply}");
        let a = grpc_call(h2, reply, &[], payload.as_bytes()).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert_eq!(a.headers["content-type"], "application/grpc", "{a:?}");
        assert_eq!(a.body, grpc_frame(payload.as_bytes()), "the echoed message");
        let trailers = a.trailers.as_ref().expect("trailers arrive");
        assert_eq!(trailers["grpc-status"], code, "{a:?}");
        assert_eq!(trailers["grpc-message"], "echoed", "{a:?}");
        assert!(a.headers.get("grpc-status").is_none(), "{a:?}");
    }
    let a = grpc_call(h2, "trailers-only=12", &[], b"ping").await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.headers["grpc-status"], "12", "{a:?}");
    assert_eq!(a.headers["grpc-message"], "trailers only", "{a:?}");
    assert!(a.body.is_empty(), "{a:?}");
    assert!(a.trailers.is_none(), "a trailers-only answer: {a:?}");
}

/// 20 calls in flight at once, which the upstream answers only once all 20 have arrived, go over
/// the gateway's one upstream connection.
async fn assert_multiplexed(h2: &H2, server: &Server) {
    let warm_up = grpc_call(h2, "trailers=0", &[], b"warm-up").await;
    assert_eq!(warm_up.grpc_status(), Some("0"), "{warm_up:?}");
    let before = server.connections();
    let calls = (0..20).map(|i| async move {
        let payload = format!("call {i}");
        let a = grpc_call(
            h2,
            "trailers=0",
            &[("x-wait-for", "20")],
            payload.as_bytes(),
        )
        .await;
        (payload, a)
    });
    for (payload, a) in futures_util::future::join_all(calls).await {
        assert_eq!(a.body, grpc_frame(payload.as_bytes()), "{a:?}");
        assert_eq!(a.grpc_status(), Some("0"), "{a:?}");
    }
    assert_eq!(
        server.connections(),
        before,
        "20 concurrent calls opened new upstream connections"
    );
    assert_eq!(before, 1, "the upstream accepted more than one connection");
}

/// Every request the upstream saw came over HTTP/2.
fn assert_all_h2(server: &Server) {
    let seen = server.requests();
    assert!(!seen.is_empty());
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_2, "{s:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics.
// ---------------------------------------------------------------------------------------------

/// One `istio_requests_total` sample: its labels, in order, and its value.
#[derive(Debug)]
struct Series {
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses `istio_requests_total{k="v",...} N`; `None` for other lines.
fn parse_series(line: &str) -> Option<Series> {
    let (labels, value) = line
        .strip_prefix("istio_requests_total{")?
        .rsplit_once("} ")?;
    let mut chars = labels.chars();
    let mut out = Vec::new();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "{line}");
        let mut v = String::new();
        loop {
            match chars
                .next()
                .unwrap_or_else(|| panic!("unterminated: {line}"))
            {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => v.push('\n'),
                    Some(c) => v.push(c),
                    None => panic!("bad escape: {line}"),
                },
                c => v.push(c),
            }
        }
        out.push((key, v));
        match chars.next() {
            Some(',') => {}
            None => break,
            Some(c) => panic!("{c:?} after a label value: {line}"),
        }
    }
    Some(Series {
        labels: out,
        value: value.parse().unwrap_or_else(|e| panic!("{e}: {line}")),
    })
}

/// The `istio_requests_total` samples of the gateway's metrics endpoint, each checked to carry
/// exactly Istio's 25 labels in order.
async fn scrape(app: &TestApp) -> Vec<Series> {
    let url = format!("http://{}/stats/prometheus", app.app.metrics_addr);
    let a = bounded("scrape", get(&http1_client(), &url, &[])).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let series: Vec<Series> = a.body.lines().filter_map(parse_series).collect();
    for s in &series {
        let names: Vec<&str> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ISTIO_LABELS, "{s:?}");
    }
    series
}

/// Sum of the samples whose labels include `filter`.
fn count(series: &[Series], filter: &[(&str, &str)]) -> f64 {
    series
        .iter()
        .filter(|s| {
            filter
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// 1–3. Upstream TLS over HTTP/1.1: trust, SNI, name verification.
// ---------------------------------------------------------------------------------------------

/// A TLS upstream whose certificate names `cert_name`, behind a gateway trusting the private CA
/// with `sni` configured (or not): two requests get 200 and the upstream's body over one pooled
/// TLS connection, whose SNI is `expected_sni` and ALPN `http/1.1`.
async fn assert_tls_upstream_serves(cert_name: &str, sni: Option<&str>, expected_sni: &str) {
    let pki = Pki::new();
    let server = spawn_server(Proto::H1, Some(&pki.leaf(&[cert_name]))).await;
    let tls = Tls {
        ca_file: Some(&pki.ca_file),
        sni,
        ..Tls::default()
    };
    let app = gateway(
        &server,
        &Policy {
            tls: Some(tls),
            ..Policy::default()
        },
    )
    .await;
    for path in ["/hello", "/again?x=1"] {
        let a = http_get(&app, path, &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert_eq!(
            a.body,
            format!("upstream {}", path.split('?').next().unwrap())
        );
    }
    let handshakes = server.handshakes();
    assert_eq!(
        handshakes.len(),
        1,
        "one pooled TLS connection: {handshakes:?}"
    );
    let h = &handshakes[0];
    assert!(h.completed, "{h:?}");
    assert_eq!(h.server_name.as_deref(), Some(expected_sni), "{h:?}");
    assert_eq!(h.alpn.as_deref(), Some("http/1.1"), "{h:?}");
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].uri, "/again?x=1");
    assert_eq!(seen[1].version, Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_with_a_private_ca_and_an_explicit_sni() {
    assert_tls_upstream_serves("echo.internal", Some("echo.internal"), "echo.internal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_upstream_sni_defaults_to_the_service_host() {
    assert_tls_upstream_serves(SERVICE_HOST, None, SERVICE_HOST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_fails_uf_unless_insecure_skip_verify() {
    let pki = Pki::new();
    let other = TestCa::new("some other CA");
    let server = spawn_server(Proto::H1, Some(&other.leaf(&["echo.internal"]))).await;

    let trusting_our_ca = Tls {
        ca_file: Some(&pki.ca_file),
        sni: Some("echo.internal"),
        ..Tls::default()
    };
    let app = gateway(
        &server,
        &Policy {
            tls: Some(trusting_our_ca),
            ..Policy::default()
        },
    )
    .await;
    assert_connect_failure(&app, &server).await;
    let h = server.handshakes();
    assert!(
        !h.is_empty() && h.iter().all(|h| !h.completed),
        "the gateway refused the handshake: {h:?}"
    );

    // No ca_file either: with insecure_skip_verify the CA bundle is not needed.
    let insecure = Tls {
        sni: Some("echo.internal"),
        insecure_skip_verify: true,
        ..Tls::default()
    };
    let app = gateway(
        &server,
        &Policy {
            tls: Some(insecure),
            ..Policy::default()
        },
    )
    .await;
    let a = http_get(&app, "/hello", &[]).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.body, "upstream /hello");
    assert!(server.handshakes().iter().any(|h| h.completed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_turns_verification_on_does_not_reuse_unverified_connections() {
    let pki = Pki::new();
    let other = TestCa::new("some other CA");
    let server = spawn_server(Proto::H1, Some(&other.leaf(&["echo.internal"]))).await;
    let insecure = Tls {
        sni: Some("echo.internal"),
        insecure_skip_verify: true,
        ..Tls::default()
    };
    let app = gateway(
        &server,
        &Policy {
            tls: Some(insecure),
            ..Policy::default()
        },
    )
    .await;
    assert_eq!(http_get(&app, "/warm", &[]).await.status, StatusCode::OK);
    assert_eq!(server.connections(), 1);

    // The pooled connection was made without verification: it must not serve the new config.
    let strict = Tls {
        ca_file: Some(&pki.ca_file),
        sni: Some("echo.internal"),
        ..Tls::default()
    };
    reload(
        &app,
        &server,
        &Policy {
            tls: Some(strict),
            ..Policy::default()
        },
    )
    .await;
    let a = http_get(&app, "/after", &[]).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{a:?}");
    assert_eq!(a.body, UF_BODY);
    assert_eq!(server.requests().len(), 1, "{:?}", server.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sni_that_the_certificate_does_not_name_fails_uf() {
    let pki = Pki::new();
    // Signed by the trusted CA, but for another name.
    let server = spawn_server(Proto::H1, Some(&pki.leaf(&["other.internal"]))).await;
    let tls = Tls {
        ca_file: Some(&pki.ca_file),
        sni: Some("echo.internal"),
        ..Tls::default()
    };
    let app = gateway(
        &server,
        &Policy {
            tls: Some(tls),
            ..Policy::default()
        },
    )
    .await;
    assert_connect_failure(&app, &server).await;
    let h = server.handshakes();
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0].hello_sni.as_deref(), Some("echo.internal"), "{h:?}");
    assert!(!h[0].completed, "the gateway refused the name: {h:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. validate.
// ---------------------------------------------------------------------------------------------

/// What `splitgate validate -c FILE` did.
#[derive(Debug)]
struct Validated {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Validated {
    /// The problem line at `path` (`path: message`), failing the test when there is none.
    fn problem(&self, path: &str) -> &str {
        assert_eq!(self.code, Some(1), "validate should fail: {self:?}");
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix(path)?.strip_prefix(": "))
            .unwrap_or_else(|| panic!("no problem at {path}: {self:?}"))
    }
}

/// Runs `splitgate validate` on `yaml` written to `dir`, bounded by `TIMEOUT`.
fn validate(dir: &Path, yaml: &str) -> Validated {
    let file = dir.join("config.yaml");
    std::fs::write(&file, yaml).unwrap();
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_splitgate"))
        .arg("validate")
        .arg("-c")
        .arg(&file)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("validate did not exit within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Validated {
        code: status.code(),
        stdout: std::fs::read_to_string(out).unwrap(),
        stderr: std::fs::read_to_string(err).unwrap(),
    }
}

#[test]
fn validate_checks_upstream_tls_and_protocol() {
    let pki = Pki::new();
    let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let with = |policy: &Policy| validate(&pki.dir, &config(endpoint, policy));
    fn tls_with_ca(ca: &Path) -> Policy<'_> {
        Policy {
            protocol: Some("http2"),
            tls: Some(Tls {
                ca_file: Some(ca),
                ..Tls::default()
            }),
        }
    }

    // A good one first, so the failures below are about what each changes.
    let ok = with(&tls_with_ca(&pki.ca_file));
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert!(ok.stdout.contains(": ok"), "{ok:?}");

    let missing = pki.dir.join("no-such-ca.pem");
    let v = with(&tls_with_ca(&missing));
    let message = v.problem("services.echo.policy.tls.ca_file");
    assert!(
        message.starts_with(&format!("cannot read {}", missing.display())),
        "{v:?}"
    );

    let v = with(&Policy {
        protocol: Some("http3"),
        ..Policy::default()
    });
    let message = v.problem("services.echo.policy.protocol");
    assert!(message.starts_with("must be http1 or http2"), "{v:?}");
    assert!(message.contains("http3"), "{v:?}");

    // Each message names the file at fault, then what is wrong with it.
    let key_only = pki.leaf(&["echo.internal"]).key_pem;
    for (name, text, expected) in [
        (
            "plain-text.pem",
            "this is not a certificate\n",
            "holds no CERTIFICATE block",
        ),
        // A private key given where the CA belongs.
        ("key.pem", key_only.as_str(), "holds no CERTIFICATE block"),
        (
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n",
            "is not valid PEM",
        ),
    ] {
        let bad = pki.dir.join(name);
        std::fs::write(&bad, text).unwrap();
        let v = with(&tls_with_ca(&bad));
        let message = v.problem("services.echo.policy.tls.ca_file");
        let want = format!("{} {expected}", bad.display());
        assert!(message.starts_with(&want), "{name}: want {want:?}: {v:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 5–6. Upstream HTTP/2: h2c and h2 over TLS, gRPC bodies and trailers, multiplexing.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_upstream_keeps_bodies_and_trailers_on_one_connection() {
    let server = spawn_server(Proto::H2, None).await;
    let app = h2c_gateway(&server).await;
    let h2 = h2_to(&app).await;
    assert_grpc_echo(&h2).await;
    assert_multiplexed(&h2, &server).await;
    assert_all_h2(&server);
    assert_eq!(server.requests()[0].uri.scheme_str(), Some("http"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2_tls_upstream_negotiates_h2_by_alpn() {
    let pki = Pki::new();
    let server = spawn_server(Proto::H2, Some(&pki.leaf(&[SERVICE_HOST]))).await;
    let tls = Tls {
        ca_file: Some(&pki.ca_file),
        ..Tls::default()
    };
    let policy = Policy {
        protocol: Some("http2"),
        tls: Some(tls),
    };
    let app = gateway(&server, &policy).await;
    let h2 = h2_to(&app).await;
    assert_grpc_echo(&h2).await;
    assert_multiplexed(&h2, &server).await;
    assert_all_h2(&server);
    assert_eq!(server.requests()[0].uri.scheme_str(), Some("https"));
    let handshakes = server.handshakes();
    assert_eq!(handshakes.len(), 1, "{handshakes:?}");
    assert!(handshakes[0].completed, "{handshakes:?}");
    assert_eq!(handshakes[0].alpn.as_deref(), Some("h2"), "{handshakes:?}");
    assert_eq!(handshakes[0].server_name.as_deref(), Some(SERVICE_HOST));
}

// ---------------------------------------------------------------------------------------------
// 7. gRPC in the Istio metrics.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_counted_with_protocol_grpc_and_their_grpc_status() {
    let server = spawn_server(Proto::H2, None).await;
    let app = h2c_gateway(&server).await;
    let h2 = h2_to(&app).await;
    for reply in [
        "trailers=0",
        "trailers=0",
        "trailers=0",
        "trailers=5",
        "trailers=5",
    ] {
        grpc_call(&h2, reply, &[], b"m").await;
    }
    grpc_call(&h2, "trailers-only=12", &[], b"m").await;
    for _ in 0..2 {
        assert_eq!(http_get(&app, "/plain", &[]).await.status, StatusCode::OK);
    }

    let series = scrape(&app).await;
    let ours = [
        ("reporter", "source"),
        ("destination_service", SERVICE_HOST),
        ("destination_service_name", "echo"),
        ("destination_workload", "echo-stable"),
        ("destination_version", "stable"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let filter: Vec<(&str, &str)> = ours.iter().chain(extra).copied().collect();
        count(&series, &filter)
    };
    let grpc = |status| {
        with(&[
            ("request_protocol", "grpc"),
            ("grpc_response_status", status),
        ])
    };
    assert_eq!(grpc("0"), 3.0, "{series:#?}");
    assert_eq!(grpc("5"), 2.0, "{series:#?}");
    assert_eq!(grpc("12"), 1.0, "trailers-only: {series:#?}");
    assert_eq!(
        with(&[("request_protocol", "http"), ("grpc_response_status", "")]),
        2.0,
        "{series:#?}"
    );
    assert_eq!(count(&series, &[]), 8.0, "no other requests: {series:#?}");
}

// ---------------------------------------------------------------------------------------------
// 8. The request head an HTTP/2 upstream gets.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_host_becomes_the_h2_authority_with_no_host_header() {
    let server = spawn_server(Proto::H2, None).await;
    let app = h2c_gateway(&server).await;

    // HTTP/1.1 client: its Host header.
    let host = "api.example.com:8443";
    let a = http_get(&app, "/v1/items?page=2", &[("host", host)]).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.body, "upstream /v1/items");
    // HTTP/2 client: its :authority.
    let a = grpc_call(&h2_to(&app).await, "trailers=0", &[], b"m").await;
    assert_eq!(a.grpc_status(), Some("0"), "{a:?}");

    let seen = server.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (s, authority, path) in [
        (&seen[0], host, "/v1/items?page=2"),
        (&seen[1], AUTHORITY, "/echo.Echo/Call"),
    ] {
        assert_eq!(s.version, Version::HTTP_2, "{s:?}");
        assert_eq!(
            s.uri.authority().map(|a| a.as_str()),
            Some(authority),
            "{s:?}"
        );
        assert_eq!(s.uri.path_and_query().unwrap().as_str(), path, "{s:?}");
        assert_eq!(s.headers.get_all(HOST).iter().count(), 0, "{s:?}");
        assert_eq!(s.headers["x-forwarded-for"], "127.0.0.1", "{s:?}");
        assert_eq!(s.headers["x-forwarded-proto"], "http", "{s:?}");
        assert_eq!(s.headers["x-forwarded-host"], authority, "{s:?}");
        assert!(s.headers.contains_key("x-request-id"), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_moved_on_from_a_dead_endpoint_keeps_the_client_host_as_authority() {
    let server = spawn_server(Proto::H2, None).await;
    let dead = dead_addr().await;
    let policy = Policy {
        protocol: Some("http2"),
        ..Policy::default()
    };
    // Round robin starts every other request at the dead endpoint; those move on to the live one.
    let yaml = config(server.addr, &policy).replace(
        &format!("[\"{}\"]", server.addr),
        &format!("[\"{dead}\", \"{}\"]", server.addr),
    );
    let app = spawn_app(&yaml).await;
    let host = "api.example.com";
    for _ in 0..4 {
        let a = http_get(&app, "/moved", &[("host", host)]).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
    }
    let seen = server.requests();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for s in &seen {
        assert_eq!(s.uri.authority().map(|a| a.as_str()), Some(host), "{s:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 9. The gateway's own answers to gRPC calls (as Envoy gives them), and upgrades to an HTTP/2
//    upstream.
// ---------------------------------------------------------------------------------------------

/// An answer the gateway made itself for a gRPC call: HTTP 200, `content-type:
/// application/grpc`, no body and no trailers (a trailers-only answer), and the failure in
/// `grpc-status` and `grpc-message` (the flag, then the sentence of the plain answer).
fn assert_grpc_failure(a: &GrpcAnswer, grpc_status: &str, message: &str) {
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.headers[CONTENT_TYPE], "application/grpc", "{a:?}");
    assert_eq!(a.headers["grpc-status"], grpc_status, "{a:?}");
    assert_eq!(a.headers["grpc-message"], message, "{a:?}");
    assert!(a.body.is_empty(), "{a:?}");
    assert!(a.trailers.is_none(), "a trailers-only answer: {a:?}");
}

/// The same, for a gRPC-typed request that came over HTTP/1.1.
fn assert_grpc_failure_h1(a: &Answer, grpc_status: &str, message: &str) {
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.headers[CONTENT_TYPE], "application/grpc", "{a:?}");
    assert_eq!(a.headers["grpc-status"], grpc_status, "{a:?}");
    assert_eq!(a.headers["grpc-message"], message, "{a:?}");
    assert_eq!(a.body, "", "{a:?}");
}

/// A plain answer made by the gateway: `status`, `text/plain`, `body`, no gRPC headers.
fn assert_plain_failure(a: &Answer, status: StatusCode, body: &str) {
    assert_eq!(a.status, status, "{a:?}");
    let content_type = a.headers[CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{a:?}");
    assert_eq!(a.body, body, "{a:?}");
    assert!(a.headers.get("grpc-status").is_none(), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_to_a_dead_upstream_get_unavailable_and_plain_http_still_gets_503() {
    let dead = dead_addr().await;
    let policy = Policy {
        protocol: Some("http2"),
        ..Policy::default()
    };
    let app = spawn_app(&config(dead, &policy)).await;
    let uf = UF_BODY.trim_end();

    let h2 = h2_to(&app).await;
    for _ in 0..2 {
        let a = grpc_call(&h2, "trailers=0", &[], b"ping").await;
        assert_grpc_failure(&a, "14", uf);
    }
    // Any `application/grpc…` content type, over HTTP/1.1 too.
    let a = http_get(
        &app,
        "/echo.Echo/Call",
        &[(CONTENT_TYPE.as_str(), "application/grpc+proto")],
    )
    .await;
    assert_grpc_failure_h1(&a, "14", uf);
    // A plain request to the same dead upstream.
    let a = http_get(&app, "/hello", &[]).await;
    assert_plain_failure(&a, StatusCode::SERVICE_UNAVAILABLE, UF_BODY);

    let series = scrape(&app).await;
    let ours = [
        ("destination_service_name", "echo"),
        ("destination_version", "stable"),
        ("response_flags", "UF"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let filter: Vec<(&str, &str)> = ours.iter().chain(extra).copied().collect();
        count(&series, &filter)
    };
    assert_eq!(
        with(&[
            ("request_protocol", "grpc"),
            ("response_code", "200"),
            ("grpc_response_status", "14"),
        ]),
        3.0,
        "{series:#?}"
    );
    assert_eq!(
        with(&[
            ("request_protocol", "http"),
            ("response_code", "503"),
            ("grpc_response_status", ""),
        ]),
        1.0,
        "{series:#?}"
    );
    assert_eq!(count(&series, &[]), 4.0, "no other requests: {series:#?}");

    // Canary analysis counts the gRPC failures as failures, although they came in an HTTP 200.
    // It counts whole seconds: the calls show once the second they fell in is over.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let v = loop {
        let analysis = get(
            &http1_client(),
            &app.admin_url("/v1/analysis?route=main&window=60s"),
            &[],
        )
        .await;
        let v: serde_json::Value = serde_json::from_str(&analysis.body).expect("analysis JSON");
        if v["subsets"]["stable"]["requests"] != 0 || std::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stable = &v["subsets"]["stable"];
    assert_eq!(stable["requests"], 4, "{v}");
    assert_eq!(stable["success_rate"], 0.0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_that_match_no_route_get_unimplemented() {
    let server = spawn_server(Proto::H2, None).await;
    let policy = Policy {
        protocol: Some("http2"),
        ..Policy::default()
    };
    let every_host = config(server.addr, &policy);
    let yaml = every_host.replace("hosts: [\"*\"]", "hosts: [\"other.example.com\"]");
    assert_ne!(yaml, every_host);
    let app = spawn_app(&yaml).await;
    let nr = "NR: no route matched this request";

    let a = grpc_call(&h2_to(&app).await, "trailers=0", &[], b"ping").await;
    assert_grpc_failure(&a, "12", nr);
    let a = http_get(&app, "/hello", &[]).await;
    assert_plain_failure(&a, StatusCode::NOT_FOUND, &format!("{nr}\n"));
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    let series = scrape(&app).await;
    let nr_with = |extra: &[(&'static str, &'static str)]| {
        let filter: Vec<(&str, &str)> = [("response_flags", "NR")]
            .iter()
            .chain(extra)
            .copied()
            .collect();
        count(&series, &filter)
    };
    assert_eq!(
        nr_with(&[
            ("request_protocol", "grpc"),
            ("response_code", "200"),
            ("grpc_response_status", "12"),
        ]),
        1.0,
        "{series:#?}"
    );
    assert_eq!(
        nr_with(&[
            ("request_protocol", "http"),
            ("response_code", "404"),
            ("grpc_response_status", ""),
        ]),
        1.0,
        "{series:#?}"
    );
    assert_eq!(count(&series, &[]), 2.0, "no other requests: {series:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_past_the_route_timeout_get_deadline_exceeded() {
    const ROUTE_TIMEOUT: Duration = Duration::from_millis(300);
    let server = spawn_server(Proto::H2, None).await;
    let policy = Policy {
        protocol: Some("http2"),
        ..Policy::default()
    };
    // The rule of the one route gets a timeout.
    let yaml = config(server.addr, &policy) + "        timeout: 300ms\n";
    let app = spawn_app(&yaml).await;
    let ut = "UT: the upstream did not answer in time";
    // The upstream holds each of these until 1000 have arrived: it never answers.
    let hold = [("x-wait-for", "1000")];

    let started = Instant::now();
    let a = grpc_call(&h2_to(&app).await, "trailers=0", &hold, b"ping").await;
    let took = started.elapsed();
    assert_grpc_failure(&a, "4", ut);
    assert!(took >= ROUTE_TIMEOUT, "answered after {took:?}");
    let a = http_get(&app, "/hello", &hold).await;
    assert_plain_failure(&a, StatusCode::GATEWAY_TIMEOUT, &format!("{ut}\n"));
    assert_eq!(server.requests().len(), 2, "both reached the upstream");

    let series = scrape(&app).await;
    let ut_with = |extra: &[(&'static str, &'static str)]| {
        let filter: Vec<(&str, &str)> = [
            ("destination_service_name", "echo"),
            ("response_flags", "UT"),
        ]
        .iter()
        .chain(extra)
        .copied()
        .collect();
        count(&series, &filter)
    };
    assert_eq!(
        ut_with(&[
            ("request_protocol", "grpc"),
            ("response_code", "200"),
            ("grpc_response_status", "4"),
        ]),
        1.0,
        "{series:#?}"
    );
    assert_eq!(
        ut_with(&[
            ("request_protocol", "http"),
            ("response_code", "504"),
            ("grpc_response_status", ""),
        ]),
        1.0,
        "{series:#?}"
    );
    assert_eq!(count(&series, &[]), 2.0, "no other requests: {series:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_to_an_http2_service_is_refused_with_502_upe() {
    let server = spawn_server(Proto::H2, None).await;
    let app = h2c_gateway(&server).await;
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];
    let a = http_get(&app, "/chat", &upgrade).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{a:?}");
    assert!(
        a.body
            .starts_with("UPE: protocol upgrades (websocket) need an HTTP/1.1 upstream"),
        "{a:?}"
    );
    let content_type = a.headers[CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{a:?}");
    assert!(a.headers.get("upgrade").is_none(), "{a:?}");
    assert_eq!(
        server.connections(),
        0,
        "the upstream was not even connected to"
    );
    assert!(server.requests().is_empty(), "{:?}", server.requests());

    // The same path without the upgrade goes through.
    let a = http_get(&app, "/chat", &[]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (StatusCode::OK, "upstream /chat")
    );
    assert_eq!(server.requests().len(), 1);

    let series = scrape(&app).await;
    assert_eq!(
        count(
            &series,
            &[
                ("destination_service_name", "echo"),
                ("response_code", "502"),
                ("response_flags", "UPE"),
                ("request_protocol", "http"),
            ]
        ),
        1.0,
        "{series:#?}"
    );
    assert_eq!(count(&series, &[]), 2.0, "no other requests: {series:#?}");
}
