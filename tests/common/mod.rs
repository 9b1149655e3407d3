//! Test harness: real upstream servers and the gateway on 127.0.0.1:0, and HTTP clients.
#![allow(dead_code)]

pub mod certs;
pub mod fake_kube;
pub mod kube;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use splitgate::runtime::SharedRuntime;
use splitgate::server::Gateway;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
}

/// How a test upstream answers.
#[derive(Clone)]
pub enum Behavior {
    /// `200 <name>\n` with `x-subset: <name>`.
    Name,
    /// Sleeps, then answers like `Name`.
    Slow(Duration),
    /// Answers with this status and `<name>\n`.
    Status(u16),
    /// Reads the whole request body as a stream and answers `<bytes> <checksum>`.
    CountBody,
    /// Streams `?bytes=N` deterministic bytes (see `pattern_byte`).
    Generate,
    /// Waits `delay`, then answers like `Status(status)` to every `k`-th request (counting
    /// from 1) and like `Name` to the others.
    FailEvery {
        k: usize,
        status: u16,
        delay: Duration,
    },
    /// Answers like `Status(503)` while the flag is set, like `Name` otherwise.
    FailWhile(Arc<std::sync::atomic::AtomicBool>),
}

/// A running test upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    /// Every request it received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests it received.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// How many TCP connections it accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Byte `i` of the generated stream.
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

/// Order-sensitive checksum (FNV-1a over 64 bits).
#[derive(Clone, Copy)]
pub struct Checksum(pub u64);

impl Default for Checksum {
    fn default() -> Self {
        Checksum(0xcbf29ce484222325)
    }
}

impl Checksum {
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

pub type TestBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A body of `len` pattern bytes, produced in 64 KiB chunks as it is read.
pub fn generated_body(len: u64) -> TestBody {
    const CHUNK: u64 = 64 * 1024;
    let stream = futures_util::stream::unfold(0u64, move |off| async move {
        if off >= len {
            return None;
        }
        let n = CHUNK.min(len - off);
        let chunk: Vec<u8> = (off..off + n).map(pattern_byte).collect();
        Some((
            Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk))),
            off + n,
        ))
    });
    StreamBody::new(stream).boxed()
}

/// The answer to request number `n` (from 1).
async fn answer(
    name: &'static str,
    behavior: Behavior,
    n: usize,
    req: Request<Incoming>,
) -> Response<TestBody> {
    let named = |status: u16| {
        Response::builder()
            .status(status)
            .header("x-subset", name)
            .body(full(format!("{name}\n")))
            .unwrap()
    };
    match behavior {
        Behavior::Name => named(200),
        Behavior::Status(s) => named(s),
        Behavior::Slow(d) => {
            tokio::time::sleep(d).await;
            named(200)
        }
        Behavior::FailWhile(failing) => {
            named(if failing.load(std::sync::atomic::Ordering::SeqCst) {
                503
            } else {
                200
            })
        }
        Behavior::FailEvery { k, status, delay } => {
            tokio::time::sleep(delay).await;
            named(if n % k == 0 { status } else { 200 })
        }
        Behavior::CountBody => {
            let mut body = req.into_body();
            let (mut len, mut sum) = (0u64, Checksum::default());
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.expect("request body streams").into_data() {
                    len += data.len() as u64;
                    sum.update(&data);
                }
            }
            Response::new(full(format!("{len} {:x}", sum.0)))
        }
        Behavior::Generate => {
            let len = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("bytes="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Response::builder()
                .header("content-length", len)
                .body(generated_body(len))
                .unwrap()
        }
    }
}

/// Starts an upstream named `name` that behaves as told.
pub async fn spawn_upstream(name: &'static str, behavior: Behavior) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (log, behavior) = (log.clone(), behavior.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let n = {
                        let mut log = log.lock().unwrap();
                        log.push(Seen {
                            method: req.method().clone(),
                            uri: req.uri().clone(),
                            version: req.version(),
                            headers: req.headers().clone(),
                        });
                        log.len()
                    };
                    let behavior = behavior.clone();
                    async move { Ok::<_, Infallible>(answer(name, behavior, n, req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        name,
        seen,
        connections,
    }
}

/// Starts a websocket echo server (raw TCP + tungstenite handshake).
pub async fn spawn_ws_echo() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An address on which nothing listens, and nothing will while the tests run.
pub async fn dead_addr() -> SocketAddr {
    // Bound but never listening, and kept so until the process ends: a connection is refused,
    // and a test running alongside cannot bind a server to the port (a listener bound and
    // dropped here let that happen, and that test's server then got this one's requests).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

/// Replaces `{key}` placeholders in a config template.
pub fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// A gateway running in this process.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    pub runtime: SharedRuntime,
}

impl TestGateway {
    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// Starts a gateway from YAML whose first listener should be `127.0.0.1:0`.
pub async fn spawn_gateway(yaml: &str) -> TestGateway {
    let config = splitgate::config::from_str(yaml, "test config").unwrap_or_else(|e| panic!("{e}"));
    let (gateway, runtime) = splitgate::start(&config).await.unwrap();
    let addr = gateway.local_addrs()[0].1;
    TestGateway {
        addr,
        gateway,
        runtime,
    }
}

/// A config with one service `svc` whose subsets are the YAML lines `subsets` (see
/// [`subset`]), and one route `main` on `*` whose rules are given as YAML (indented under
/// `http:`).
pub fn svc_config(subsets: &str, rules: &str) -> String {
    format!(
        "listeners:
  - name: http
    address: 127.0.0.1:0
services:
  svc:
    namespace: default
    host: svc.default.svc.cluster.local
    subsets:
{subsets}routes:
  - name: main
    hosts: [\"*\"]
    http:
{rules}"
    )
}

/// One line under `subsets:`: `name` at `addr`, with no labels.
pub fn subset(name: &str, addr: SocketAddr) -> String {
    format!("      {name}: {{ endpoints: [\"{addr}\"] }}\n")
}

/// A two-subset config: service `svc` with subsets `stable` (version v1) and `canary` (v2), one
/// route `main` on `*` whose rules are given as YAML (indented under `http:`).
pub fn two_subset_config(stable: SocketAddr, canary: SocketAddr, rules: &str) -> String {
    svc_config(
        &format!(
            "      stable: {{ labels: {{ version: v1 }}, endpoints: [\"{stable}\"] }}
      canary: {{ labels: {{ version: v2 }}, endpoints: [\"{canary}\"] }}
"
        ),
        rules,
    )
}

/// Rule `primary`: `stable` and `canary` of `svc` at the given weights.
pub fn primary_rule(stable: u32, canary: u32) -> String {
    format!(
        "      - name: primary
        route:
          - {{ destination: {{ service: svc, subset: stable }}, weight: {stable} }}
          - {{ destination: {{ service: svc, subset: canary }}, weight: {canary} }}
"
    )
}

/// HTTP/1.1 keep-alive client.
pub fn http1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// HTTP/2 prior-knowledge (h2c) client.
pub fn h2c_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A finished response: status, headers, body text.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Sends a GET with extra headers and collects the answer.
pub async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(client, b.body(Full::default()).unwrap()).await
}

/// Sends a request and collects the answer.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Answer {
    let resp = client.request(req).await.expect("the gateway answers");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("the body arrives").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A free loopback port (bound then released; another process could take it, which is rare).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `splitgate` binary running as a child process; killed on drop.
pub struct ChildGateway {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub dir: std::path::PathBuf,
}

impl ChildGateway {
    /// Peak resident memory of the gateway process so far, in KiB (Linux `VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}

impl Drop for ChildGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `splitgate run` on `yaml` (admin, readiness and metrics on free ports unless set), in
/// which `{listen}` is replaced by a free loopback address,
/// and waits until the port accepts connections.
pub async fn spawn_binary_gateway(yaml: &str) -> ChildGateway {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("splitgate-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let path = dir.join("config.yaml");
    let yaml = with_free_admin(&fill(yaml, &[("listen", addr.to_string())]));
    std::fs::write(&path, yaml).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_splitgate"))
        .args(["run", "-c"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let gw = ChildGateway { child, addr, dir };
    // A child process gives no readiness signal: poll its port, bounded.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return gw;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the gateway did not start listening on {addr}");
}

/// A whole gateway (control plane, admin API, readiness, watcher) running in this process from a
/// config file in its own temp directory. Admin and readiness get free ports unless the YAML sets
/// them.
pub struct TestApp {
    pub app: splitgate::app::App,
    pub addr: SocketAddr,
    pub dir: std::path::PathBuf,
    pub config_path: std::path::PathBuf,
}

impl TestApp {
    /// `http://<gateway><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `http://<admin><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.app.admin_addr, path)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh temp directory for one test.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("splitgate-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Adds free-port admin, readiness and metrics sections when the YAML has none.
pub fn with_free_admin(yaml: &str) -> String {
    let mut y = yaml.to_string();
    if !y.contains("\nadmin:") && !y.starts_with("admin:") {
        y.push_str("\nadmin: { address: \"127.0.0.1:0\" }\n");
    }
    if !y.contains("\nreadiness:") && !y.starts_with("readiness:") {
        y.push_str("\nreadiness: { address: \"127.0.0.1:0\" }\n");
    }
    if !y.contains("\nmetrics:") && !y.starts_with("metrics:") {
        y.push_str("\nmetrics: { address: \"127.0.0.1:0\" }\n");
    }
    y
}

/// Writes `yaml` (admin/readiness on free ports unless set) to `<dir>/config.yaml` and starts
/// the whole gateway from that file, watched for changes.
pub async fn spawn_app_in(dir: std::path::PathBuf, yaml: &str) -> TestApp {
    let config_path = dir.join("config.yaml");
    let yaml = with_free_admin(yaml);
    std::fs::write(&config_path, &yaml).unwrap();
    start_app_at(dir, config_path).await
}

/// Starts the whole gateway from an existing config file (the layout is the caller's), watched
/// for changes.
pub async fn start_app_at(dir: std::path::PathBuf, config_path: std::path::PathBuf) -> TestApp {
    let config = splitgate::config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
    let app = splitgate::app::App::start(config, Some(config_path.clone()))
        .await
        .unwrap();
    let addr = app.gateway.local_addrs()[0].1;
    TestApp {
        app,
        addr,
        dir,
        config_path,
    }
}

/// `spawn_app_in` with a fresh temp directory.
pub async fn spawn_app(yaml: &str) -> TestApp {
    spawn_app_in(temp_dir("app"), yaml).await
}

/// The 25 labels of every `istio_*` series, in SPEC §5's order. Written out here rather than
/// taken from the crate, so the tests check the code against the contract.
pub const ISTIO_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];
