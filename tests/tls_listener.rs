//! TLS termination on a listener, against the whole gateway in this process (and the real binary
//! for `validate` / `run`): HTTP/1.1 and HTTP/2 chosen by ALPN, the certificate chosen by SNI,
//! certificate rotation under load (rename, and a Kubernetes Secret `..data` symlink swap), a
//! rejected rotation that keeps the old certificate, clients that do not speak TLS (and probes that
//! say nothing), a reload that changes the `tls` section, the command line's checks of
//! certificate files, and the `tls` section of `/v1/state`.
//!
//! Every test checks what a user sees: status, body, the certificate's serial, the HTTP version,
//! a metric line, a `/v1/state` field, an error text. Every wait is bounded.

mod common;

use bytes::Bytes;
use common::certs::{self, Pair, TestCa};
use common::*;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use serde_json::Value;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Bound on one handshake, request, admin call or command.
const STEP: Duration = Duration::from_secs(5);
/// How soon after a rotation new handshakes must see the new certificate.
const ROTATION_LIMIT: Duration = Duration::from_secs(1);
/// Bound on waiting for the gateway to notice a file change it must report.
const NOTICE: Duration = Duration::from_secs(3);

const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2"];

// ---------------------------------------------------------------------------------------------
// Helpers: bounded waits, the config, clients, the admin API and metrics.
// ---------------------------------------------------------------------------------------------

/// Awaits `fut`, failing the test after `STEP`.
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {STEP:?}"))
}

/// Polls `probe` every 10 ms until it returns `Some`, failing the test after `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A path as a YAML (JSON) string.
fn quoted(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).unwrap()
}

/// A config whose first listener, `https`, terminates TLS with `pairs` (cert, key), with an
/// optional plain listener `http` next to it; every host goes to `upstream`.
fn tls_yaml(upstream: SocketAddr, pairs: &[(PathBuf, PathBuf)], plain: bool) -> String {
    let certificates = if pairs.is_empty() {
        " []\n".to_string()
    } else {
        pairs
            .iter()
            .map(|(c, k)| {
                format!(
                    "\n        - {{ cert_file: {}, key_file: {} }}",
                    quoted(c),
                    quoted(k)
                )
            })
            .collect::<String>()
            + "\n"
    };
    let plain = if plain {
        "  - name: http\n    address: 127.0.0.1:0\n"
    } else {
        ""
    };
    format!(
        "listeners:
  - name: https
    address: 127.0.0.1:0
    tls:
      certificates:{certificates}{plain}services:
  web:
    namespace: default
    host: web.default.svc.cluster.local
    subsets:
      stable: {{ labels: {{ version: v1 }}, endpoints: [\"{upstream}\"] }}
routes:
  - name: main
    hosts: [\"*\"]
    http:
      - route:
          - destination: {{ service: web, subset: stable }}
"
    )
}

/// A gateway with a TLS listener (`app.addr`) in front of one upstream named `web`.
struct Tls {
    app: TestApp,
    upstream: Upstream,
    /// The configured (cert, key) files, in config order.
    pairs: Vec<(PathBuf, PathBuf)>,
}

impl Tls {
    /// Writes each pair as `<dir>/certs/<stem>.crt|key` and starts the whole gateway on them.
    async fn start(tag: &str, pairs: &[(&str, &Pair)], plain: bool) -> Tls {
        let dir = temp_dir(tag);
        let certs_dir = dir.join("certs");
        std::fs::create_dir_all(&certs_dir).unwrap();
        let pairs: Vec<_> = pairs
            .iter()
            .map(|(stem, p)| certs::write_pair(&certs_dir, stem, p))
            .collect();
        Self::start_on(dir, pairs, plain).await
    }

    /// Starts the whole gateway in `dir` on certificate files that already exist.
    async fn start_on(dir: PathBuf, pairs: Vec<(PathBuf, PathBuf)>, plain: bool) -> Tls {
        let upstream = spawn_upstream("web", Behavior::Name).await;
        let app = spawn_app_in(dir, &tls_yaml(upstream.addr, &pairs, plain)).await;
        Tls {
            app,
            upstream,
            pairs,
        }
    }

    async fn state(&self) -> Value {
        let a = bounded(
            "GET /v1/state",
            get(&http1_client(), &self.app.admin_url("/v1/state"), &[]),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{e}: {}", a.body))
    }

    /// `/v1/state` `tls[0].certificates[i]`.
    async fn cert_state(&self, i: usize) -> Value {
        let s = self.state().await;
        assert_eq!(s["tls"][0]["listener"], "https", "{s}");
        s["tls"][0]["certificates"][i].clone()
    }

    /// The value of one series on the metrics endpoint (`None` when it is not exposed).
    async fn metric(&self, series: &str) -> Option<f64> {
        let url = format!("http://{}/metrics", self.app.app.metrics_addr);
        let a = bounded("GET /metrics", get(&http1_client(), &url, &[])).await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.body.lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
    }

    /// Waits (up to `NOTICE`) until `series` reads `want`.
    async fn wait_metric(&self, series: &str, want: f64) {
        let deadline = Instant::now() + NOTICE;
        loop {
            let now = self.metric(series).await;
            if now == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} should read {want} within {NOTICE:?}; it reads {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn reloads(result: &str) -> String {
    format!("splitgate_tls_certificate_reloads_total{{result=\"{result}\"}}")
}

const HANDSHAKE_ERRORS: &str = "splitgate_tls_handshake_errors_total";

/// A client that trusts `ca` and offers `alpn`, without session resumption: a resumed TLS 1.3
/// session presents no certificate, so every handshake here must be a full one to show which
/// certificate the gateway serves now.
fn ca_client(ca: &TestCa, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut c = (*certs::client_config(&[&ca.pem], alpn)).clone();
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// A client that trusts `ca` and speaks TLS 1.2 only, HTTP/1.1.
fn tls12_client(ca: &TestCa) -> Arc<ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// A client that accepts any certificate, offers HTTP/1.1 and never resumes.
fn any_cert_client() -> Arc<ClientConfig> {
    let provider = rustls::crypto::ring::default_provider();
    let verifier = Arc::new(splitgate::tls::client::AnyCertificate::new());
    let mut c = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.resumption = rustls::client::Resumption::disabled();
    Arc::new(c)
}

/// The serial of the certificate served to a handshake sending `sni` (an IP address sends no
/// SNI at all).
async fn served_serial(addr: SocketAddr, sni: &str) -> String {
    let stream = bounded(
        &format!("handshake for {sni}"),
        certs::tls_connect(addr, sni, any_cert_client()),
    )
    .await
    .unwrap_or_else(|e| panic!("handshake for {sni}: {e}"));
    certs::peer_serial(&stream)
}

/// One GET on a fresh TLS connection, bounded; panics on any failure.
async fn https_get(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
    path: &str,
) -> certs::HttpsAnswer {
    bounded(
        &format!("GET {path} for {sni}"),
        certs::https_get(addr, sni, config, path),
    )
    .await
    .unwrap_or_else(|e| panic!("GET {path} for {sni}: {e}"))
}

/// An open TLS connection on which requests are sent one after another (keep-alive).
struct Conn {
    sender: Sender,
    sni: String,
    serial: String,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    /// Handshakes and starts HTTP/2 when ALPN chose `h2`, else HTTP/1.1.
    async fn open(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>) -> Conn {
        let open = async {
            let stream = certs::tls_connect(addr, sni, config)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let serial = certs::peer_serial(&stream);
            let h2 = certs::negotiated_alpn(&stream).as_deref() == Some(b"h2");
            let io = TokioIo::new(stream);
            let sender = if h2 {
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Sender::H2(send)
            } else {
                let (send, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                Sender::H1(send)
            };
            Ok::<_, String>(Conn {
                sender,
                sni: sni.to_string(),
                serial,
            })
        };
        bounded(&format!("connection for {sni}"), open)
            .await
            .unwrap_or_else(|e| panic!("connection for {sni}: {e}"))
    }

    /// GET `path` on this connection: `(status, version, body)` or what went wrong.
    async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Version, String), String> {
        let mut b = match self.sender {
            Sender::H1(_) => Request::get(path).header("host", &self.sni),
            Sender::H2(_) => Request::get(format!("https://{}{path}", self.sni)),
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::default()).unwrap();
        let exchange = async {
            let resp = match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await.map_err(|e| format!("not ready: {e}"))?;
                    s.send_request(req).await
                }
                Sender::H2(s) => s.send_request(req).await,
            }
            .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| format!("body: {e}"))?;
            let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
            Ok((parts.status.as_u16(), parts.version, body))
        };
        tokio::time::timeout(STEP, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {STEP:?}")))
    }

    /// GET `path` on this connection, which must answer 200 from the upstream.
    async fn expect_ok(&mut self, path: &str) {
        let answer = self.get(path, &[]).await;
        assert!(
            matches!(&answer, Ok((200, _, body)) if body == "web\n"),
            "GET {path} on a kept-alive connection: {answer:?}"
        );
    }
}

/// The `x-forwarded-proto` values the upstream saw on the request for `path`.
fn forwarded_proto(upstream: &Upstream, path: &str) -> Vec<String> {
    let seen = upstream.seen();
    let s = seen
        .iter()
        .find(|s| s.uri.path() == path)
        .unwrap_or_else(|| panic!("the upstream never saw {path}"));
    s.headers
        .get_all("x-forwarded-proto")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Helpers: rotating files, and handshakes in a loop while they rotate.
// ---------------------------------------------------------------------------------------------

/// A hidden temp file next to `path`, where its new content is written before a rename.
fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `text` next to `path` and renames it over `path`.
fn write_by_rename(path: &Path, text: &str) {
    std::fs::write(temp_beside(path), text).unwrap();
    std::fs::rename(temp_beside(path), path).unwrap();
}

/// Replaces a pair's two files as a script would: both written to temp files first, then
/// renamed over the old ones one right after the other.
fn rotate_by_rename(cert: &Path, key: &Path, pair: &Pair) {
    std::fs::write(temp_beside(cert), &pair.cert_pem).unwrap();
    std::fs::write(temp_beside(key), &pair.key_pem).unwrap();
    std::fs::rename(temp_beside(cert), cert).unwrap();
    std::fs::rename(temp_beside(key), key).unwrap();
}

/// A directory laid out like a mounted Kubernetes Secret: `tls.crt -> ..data/tls.crt`,
/// `tls.key -> ..data/tls.key`, `..data -> ..2026_<n>`.
struct SecretDir {
    dir: PathBuf,
    generation: u32,
}

impl SecretDir {
    fn new(dir: PathBuf, pair: &Pair) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = SecretDir { dir, generation: 0 };
        s.write_generation(pair);
        std::os::unix::fs::symlink(s.generation_name(), s.dir.join("..data")).unwrap();
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), s.dir.join(f)).unwrap();
        }
        s
    }

    fn generation_name(&self) -> String {
        format!("..2026_{}", self.generation)
    }

    fn write_generation(&mut self, pair: &Pair) {
        self.generation += 1;
        let g = self.dir.join(self.generation_name());
        std::fs::create_dir(&g).unwrap();
        std::fs::write(g.join("tls.crt"), &pair.cert_pem).unwrap();
        std::fs::write(g.join("tls.key"), &pair.key_pem).unwrap();
    }

    /// What the kubelet does on a Secret update: a new generation directory, a temp symlink to
    /// it renamed over `..data` (atomic), then the old generation removed.
    fn rotate(&mut self, pair: &Pair) {
        let old = self.dir.join(self.generation_name());
        self.write_generation(pair);
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(self.generation_name(), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        std::fs::remove_dir_all(old).unwrap();
    }

    fn pair(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("tls.crt"), self.dir.join("tls.key"))
    }
}

/// One handshake + GET of the loop: when it started and ended, and the serial served or what
/// went wrong.
#[derive(Debug)]
struct Outcome {
    started: Instant,
    ended: Instant,
    result: Result<String, String>,
}

/// Tasks that each open a fresh TLS connection, GET through it and close it, in a loop, until
/// told to stop.
struct HandshakeLoop {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Vec<Outcome>>>,
}

impl HandshakeLoop {
    fn start(addr: SocketAddr, sni: &str, config: Arc<ClientConfig>, tasks: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..tasks)
            .map(|_| {
                let (stop, sni, config) = (stop.clone(), sni.to_string(), config.clone());
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let get = certs::https_get(addr, &sni, config.clone(), "/loop");
                        let result = match tokio::time::timeout(STEP, get).await {
                            Err(_) => Err(format!("no answer within {STEP:?}")),
                            Ok(Err(e)) => Err(e),
                            Ok(Ok(a)) if a.status == 200 && a.body == "web\n" => Ok(a.serial),
                            Ok(Ok(a)) => Err(format!("{} {:?}", a.status, a.body)),
                        };
                        outcomes.push(Outcome {
                            started,
                            ended: Instant::now(),
                            result,
                        });
                    }
                    outcomes
                })
            })
            .collect();
        HandshakeLoop { stop, tasks }
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(bounded("a handshake task to stop", t).await.unwrap());
        }
        all.sort_by_key(|o| o.started);
        all
    }
}

/// Checks the handshakes made while the certificate went from `initial` through each of
/// `swaps` (when the files were replaced, and the new serial): none failed; each served the
/// certificate of the latest swap older than `ROTATION_LIMIT`, or a newer one; once one
/// handshake has seen a swap's certificate, every handshake started after it sees it too; and
/// each swap was followed by handshakes that had to see it.
fn check_rotation(outcomes: &[Outcome], initial: &str, swaps: &[(Instant, String)]) {
    let failed: Vec<_> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} handshakes failed during rotation, first: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    let serials: Vec<&str> = std::iter::once(initial)
        .chain(swaps.iter().map(|(_, s)| s.as_str()))
        .collect();
    let generation = |serial: &str| {
        serials
            .iter()
            .position(|s| *s == serial)
            .unwrap_or_else(|| panic!("serial {serial} is none of {serials:?}"))
    };
    let mut settled_count = vec![0usize; serials.len()];
    // The newest generation some handshake had completed with, and when.
    let mut seen: Vec<(Instant, usize)> = Vec::new();
    for o in outcomes {
        let g = generation(o.result.as_ref().unwrap());
        let settled = swaps
            .iter()
            .rposition(|(at, _)| *at + ROTATION_LIMIT <= o.started)
            .map_or(0, |i| i + 1);
        assert!(
            g >= settled,
            "a handshake started {:?} after swap {settled} was served generation {g} ({})",
            o.started - swaps[settled - 1].0,
            serials[g]
        );
        if g == settled {
            settled_count[settled] += 1;
        }
        seen.push((o.ended, g));
    }
    for o in outcomes {
        let g = generation(o.result.as_ref().unwrap());
        let newest_before = seen
            .iter()
            .filter(|(ended, _)| *ended < o.started)
            .map(|(_, g)| *g)
            .max()
            .unwrap_or(0);
        assert!(
            g >= newest_before,
            "a handshake was served generation {g} after another had already seen generation \
             {newest_before}: the swap went back"
        );
    }
    for (i, n) in settled_count.iter().enumerate().skip(1) {
        assert!(
            *n > 0,
            "no handshake ran more than {ROTATION_LIMIT:?} after swap {i}: the test proves nothing"
        );
    }
}

/// Runs handshakes in a loop against a gateway whose first pair serves `initial` for
/// `a.example.com`, calls `rotate` with each of `next` in turn (it replaces that pair's files),
/// and checks that no handshake or request failed, that new handshakes see each new
/// certificate within `ROTATION_LIMIT`, that connections opened before the first swap keep
/// working, and that `/v1/state` ends clean. Returns the reload counters (ok, error).
async fn rotate_under_load(
    gw: &Tls,
    ca: &TestCa,
    initial: &Pair,
    next: &[Pair],
    mut rotate: impl FnMut(&Pair),
) -> (f64, f64) {
    let addr = gw.app.addr;
    let load = HandshakeLoop::start(addr, "a.example.com", ca_client(ca, H1), 4);
    let mut kept = vec![
        Conn::open(addr, "a.example.com", ca_client(ca, H1)).await,
        Conn::open(addr, "a.example.com", ca_client(ca, H2)).await,
    ];
    for c in &mut kept {
        assert_eq!(c.serial, initial.serial);
        c.expect_ok("/before").await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut swaps = Vec::new();
    for pair in next {
        let at = Instant::now();
        rotate(pair);
        swaps.push((at, pair.serial.clone()));
        let took = wait_for(
            "new handshakes to see the new certificate",
            ROTATION_LIMIT,
            || {
                let config = ca_client(ca, H1);
                async move {
                    let a = https_get(addr, "a.example.com", config, "/probe").await;
                    assert_eq!(a.status, 200, "{a:?}");
                    (a.serial == pair.serial).then(|| at.elapsed())
                }
            },
        )
        .await;
        eprintln!("serial {} served {took:?} after the swap", pair.serial);
        // Let the load run past the limit, so that late handshakes are checked too.
        let past_limit = at + ROTATION_LIMIT + Duration::from_millis(300);
        tokio::time::sleep_until(past_limit.into()).await;
        for c in &mut kept {
            c.expect_ok("/after").await;
        }
    }
    let outcomes = load.finish().await;
    eprintln!("{} handshakes during the rotation", outcomes.len());
    check_rotation(&outcomes, &initial.serial, &swaps);
    let last = next.last().unwrap();
    let state = gw.cert_state(0).await;
    assert_eq!(state["serving"]["serial"], last.serial.as_str(), "{state}");
    assert!(state.get("last_error").is_none(), "{state}");
    (
        gw.metric(&reloads("ok")).await.unwrap(),
        gw.metric(&reloads("error")).await.unwrap(),
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP over TLS
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2_by_alpn_reach_the_upstream_as_https() {
    let ca = TestCa::new("test ca");
    let cert = ca.leaf(&["a.example.com"]);
    let gw = Tls::start("tls-alpn", &[("a", &cert)], true).await;
    let addr = gw.app.addr;

    for (path, alpn, version) in [
        ("/h1", H1, Version::HTTP_11),
        ("/h2", H2, Version::HTTP_2),
        // What browsers offer: the gateway prefers h2.
        (
            "/both",
            &[b"h2".as_slice(), b"http/1.1"][..],
            Version::HTTP_2,
        ),
        // No ALPN at all (curl --no-alpn): HTTP/1.1.
        ("/none", &[][..], Version::HTTP_11),
    ] {
        let a = https_get(addr, "a.example.com", ca_client(&ca, alpn), path).await;
        assert_eq!((a.status, a.body.as_str()), (200, "web\n"), "{path}: {a:?}");
        assert_eq!(a.version, version, "{path}");
        assert_eq!(a.serial, cert.serial, "{path}");
        assert_eq!(forwarded_proto(&gw.upstream, path), ["https"], "{path}");
    }

    // A client that speaks only TLS 1.2 is served too.
    let a = https_get(addr, "a.example.com", tls12_client(&ca), "/tls12").await;
    assert_eq!((a.status, a.version), (200, Version::HTTP_11), "{a:?}");
    assert_eq!(forwarded_proto(&gw.upstream, "/tls12"), ["https"]);

    // A client cannot pass itself off as plain HTTP on the TLS listener, over either protocol.
    for (path, alpn) in [("/spoof-h1", H1), ("/spoof-h2", H2)] {
        let mut conn = Conn::open(addr, "a.example.com", ca_client(&ca, alpn)).await;
        let a = conn.get(path, &[("x-forwarded-proto", "http")]).await;
        assert!(matches!(a, Ok((200, _, _))), "{path}: {a:?}");
        assert_eq!(forwarded_proto(&gw.upstream, path), ["https"], "{path}");
    }

    // The plain listener of the same config still says http.
    let plain = gw.app.app.gateway.local_addr("http").unwrap();
    let a = bounded(
        "GET on the plain listener",
        get(&http1_client(), &format!("http://{plain}/plain"), &[]),
    )
    .await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "web\n"));
    assert_eq!(forwarded_proto(&gw.upstream, "/plain"), ["http"]);
}

// ---------------------------------------------------------------------------------------------
// Certificate choice by SNI, and /v1/state
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_each_hosts_certificate_and_the_first_is_the_default() {
    let ca = TestCa::new("test ca");
    let a = ca.leaf(&["a.example.com"]);
    let b = ca.leaf(&["b.example.com"]);
    let wild = ca.leaf(&["*.b.example.com"]);
    // Listed after the wildcard that also covers it.
    let exact = ca.leaf(&["exact.b.example.com"]);
    let pairs = [("a", &a), ("b", &b), ("wild", &wild), ("exact", &exact)];
    let gw = Tls::start("tls-sni", &pairs, false).await;
    let addr = gw.app.addr;

    for (sni, want, why) in [
        ("a.example.com", &a, "its own name"),
        ("b.example.com", &b, "its own name, on the same port"),
        ("B.Example.COM", &b, "names are case-insensitive"),
        ("x.b.example.com", &wild, "the wildcard"),
        (
            "exact.b.example.com",
            &exact,
            "an exact name wins over a wildcard listed before it",
        ),
        (
            "y.x.b.example.com",
            &a,
            "a wildcard covers one label only: the default",
        ),
        ("c.example.com", &a, "an unknown name: the default"),
        ("127.0.0.1", &a, "no SNI: the default"),
    ] {
        assert_eq!(served_serial(addr, sni).await, want.serial, "{sni}: {why}");
    }

    // A client that checks the certificate is served one valid for the name it asked, and gets
    // through to the upstream.
    for sni in [
        "a.example.com",
        "b.example.com",
        "x.b.example.com",
        "exact.b.example.com",
    ] {
        let r = https_get(addr, sni, ca_client(&ca, H2), "/").await;
        assert_eq!((r.status, r.version), (200, Version::HTTP_2), "{sni}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_shows_each_certificate_serving() {
    let ca = TestCa::new("test ca");
    let a = ca.leaf(&["a.example.com", "alt.example.com"]);
    let wild = ca.leaf(&["*.b.example.com"]);
    let old = certs::expired(&["old.example.com"]);
    let gw = Tls::start(
        "tls-state",
        &[("a", &a), ("wild", &wild), ("old", &old)],
        false,
    )
    .await;

    let state = gw.state().await;
    let tls = state["tls"].as_array().unwrap_or_else(|| panic!("{state}"));
    assert_eq!(tls.len(), 1, "{state}");
    assert_eq!(tls[0]["listener"], "https");
    let certificates = tls[0]["certificates"].as_array().unwrap();
    assert_eq!(certificates.len(), 3, "{state}");
    let want: [(&Pair, &[&str], bool); 3] = [
        (&a, &["a.example.com", "alt.example.com"], false),
        (&wild, &["*.b.example.com"], false),
        (&old, &["old.example.com"], true),
    ];
    for (i, (c, (pair, names, expired))) in certificates.iter().zip(want).enumerate() {
        assert_eq!(c["serving"]["serial"], pair.serial.as_str(), "[{i}] {c}");
        assert_eq!(c["serving"]["names"], serde_json::json!(names), "[{i}] {c}");
        assert_eq!(c["expired"], expired, "[{i}] {c}");
        assert_eq!(
            c["cert_file"],
            gw.pairs[i].0.display().to_string(),
            "[{i}] {c}"
        );
        assert_eq!(
            c["key_file"],
            gw.pairs[i].1.display().to_string(),
            "[{i}] {c}"
        );
        assert!(c.get("last_error").is_none(), "[{i}] {c}");
    }
    // The expired certificate still serves its name (validate warns about it, see below).
    assert_eq!(
        served_serial(gw.app.addr, "old.example.com").await,
        old.serial
    );
}

// ---------------------------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_by_rename_under_load_fails_nothing() {
    let ca = TestCa::new("test ca");
    let v1 = ca.leaf(&["a.example.com"]);
    let next = [ca.leaf(&["a.example.com"]), ca.leaf(&["a.example.com"])];
    let gw = Tls::start("tls-rename", &[("a", &v1)], false).await;
    let (cert, key) = gw.pairs[0].clone();

    let (ok, error) =
        rotate_under_load(&gw, &ca, &v1, &next, |p| rotate_by_rename(&cert, &key, p)).await;
    // Between the two renames the files hold a mismatched pair for a moment; if the gateway
    // happens to read them then, it rejects that (counted as an error) and loads the pair at
    // the next event. Either way each rotation ends in exactly one accepted reload.
    eprintln!("reloads: ok {ok}, error {error}");
    assert_eq!(ok, 2.0, "{}", reloads("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_by_secret_symlink_swap_under_load_fails_nothing() {
    let ca = TestCa::new("test ca");
    let v1 = ca.leaf(&["a.example.com"]);
    let next = [ca.leaf(&["a.example.com"]), ca.leaf(&["a.example.com"])];
    let dir = temp_dir("tls-secret");
    let mut secret = SecretDir::new(dir.join("secret"), &v1);
    let gw = Tls::start_on(dir, vec![secret.pair()], false).await;

    let (ok, error) = rotate_under_load(&gw, &ca, &v1, &next, |p| secret.rotate(p)).await;
    // The swap is atomic: the gateway never sees a half-rotated pair.
    assert_eq!((ok, error), (2.0, 0.0), "reloads ok / error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_does_not_match_keeps_the_old_certificate() {
    let ca = TestCa::new("test ca");
    let a = ca.leaf(&["a.example.com"]);
    let b = ca.leaf(&["b.example.com"]);
    let stranger = ca.leaf(&["b.example.com"]);
    let b2 = ca.leaf(&["b.example.com"]);
    let gw = Tls::start("tls-broken", &[("a", &a), ("b", &b)], false).await;
    let addr = gw.app.addr;
    let (b_cert, b_key) = gw.pairs[1].clone();
    assert_eq!(gw.metric(&reloads("error")).await, Some(0.0));
    assert_eq!(gw.metric(&reloads("ok")).await, Some(0.0));

    // Another pair's key lands next to b's certificate.
    write_by_rename(&b_key, &stranger.key_pem);
    let state = wait_for("the bad key to show in /v1/state", NOTICE, || {
        let gw = &gw;
        async move {
            let c = gw.cert_state(1).await;
            c.get("last_error").is_some().then_some(c)
        }
    })
    .await;
    let error = state["last_error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("key_file {}: ", b_key.display()))
            && error.contains(&format!(
                "does not belong to the certificate in {}",
                b_cert.display()
            )),
        "last_error: {error}"
    );
    assert!(state["last_error_unix_ms"].as_u64().is_some(), "{state}");
    assert_eq!(state["serving"]["serial"], b.serial.as_str(), "{state}");
    assert!(gw.cert_state(0).await.get("last_error").is_none());
    gw.wait_metric(&reloads("error"), 1.0).await;

    // The old certificate keeps serving, to clients that check it too.
    for sni in ["b.example.com", "a.example.com"] {
        let want = if sni == "a.example.com" { &a } else { &b };
        let r = https_get(addr, sni, ca_client(&ca, H1), "/").await;
        assert_eq!(
            (r.status, r.serial.as_str()),
            (200, want.serial.as_str()),
            "{sni}"
        );
    }
    // Reported once, not at every re-read of the same files (the poll runs every second).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(gw.metric(&reloads("error")).await, Some(1.0));
    assert_eq!(gw.metric(&reloads("ok")).await, Some(0.0));

    // A good pair then serves, and clears the error.
    rotate_by_rename(&b_cert, &b_key, &b2);
    wait_for("the good pair to serve", NOTICE, || async {
        (served_serial(addr, "b.example.com").await == b2.serial).then_some(())
    })
    .await;
    gw.wait_metric(&reloads("ok"), 1.0).await;
    assert_eq!(gw.metric(&reloads("error")).await, Some(1.0));
    let state = gw.cert_state(1).await;
    assert_eq!(state["serving"]["serial"], b2.serial.as_str(), "{state}");
    assert!(state.get("last_error").is_none(), "{state}");
    let r = https_get(addr, "b.example.com", ca_client(&ca, H1), "/").await;
    assert_eq!((r.status, r.serial), (200, b2.serial));
}

// ---------------------------------------------------------------------------------------------
// Clients that do not speak TLS
// ---------------------------------------------------------------------------------------------

/// Connects, sends `bytes`, and reads until the gateway closes the connection (bounded);
/// returns what it sent back.
async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let read_to_close = async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(3), read_to_close).await;
    assert!(
        closed.is_ok(),
        "the connection was still open after 3 s; it sent {:?}",
        String::from_utf8_lossy(&got)
    );
    got
}

/// Connects, sends `bytes`, half-closes (the gateway reads the end of the stream, as when the
/// client closes), and reads until the gateway closes its side too (bounded): the gateway is
/// then done with the connection. Returns what it sent back.
async fn sent_and_left(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut got)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "the gateway did not close the connection within 3 s ({closed:?}); it sent {} bytes",
        got.len()
    );
    got
}

/// What a health check or a port probe does: connect, and leave without sending a byte.
async fn probe(addr: SocketAddr) {
    let answer = sent_and_left(addr, b"").await;
    assert!(answer.is_empty(), "a silent probe got {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_garbage_are_closed_and_counted() {
    let ca = TestCa::new("test ca");
    let a = ca.leaf(&["a.example.com"]);
    let gw = Tls::start("tls-garbage", &[("a", &a)], false).await;
    let addr = gw.app.addr;
    let mut established = Conn::open(addr, "a.example.com", ca_client(&ca, H1)).await;
    established.expect_ok("/first").await;
    assert_eq!(gw.metric(HANDSHAKE_ERRORS).await, Some(0.0));

    // Probes that connect and leave without a word have not failed a handshake.
    for _ in 0..3 {
        probe(addr).await;
    }
    assert_eq!(gw.metric(HANDSHAKE_ERRORS).await, Some(0.0));

    let plain = closed_after(addr, b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n").await;
    // At most a TLS alert record (content type 21) before the close, never an HTTP answer.
    assert!(
        plain.is_empty() || plain[0] == 21,
        "a plain request got {:?}",
        String::from_utf8_lossy(&plain)
    );
    // A handshake record whose message is garbage.
    let mut garbage = vec![0x16, 0x03, 0x01, 0x00, 0x20];
    garbage.extend([0xff; 0x20]);
    closed_after(addr, &garbage).await;

    // Exactly the two failures: the probes before them were not counted late.
    gw.wait_metric(HANDSHAKE_ERRORS, 2.0).await;
    for _ in 0..3 {
        probe(addr).await;
    }
    established.expect_ok("/second").await;
    let r = https_get(addr, "a.example.com", ca_client(&ca, H2), "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(gw.metric(HANDSHAKE_ERRORS).await, Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_the_client_abandons_midway_is_counted() {
    let ca = TestCa::new("test ca");
    let a = ca.leaf(&["a.example.com"]);
    let gw = Tls::start("tls-abandoned", &[("a", &a)], false).await;
    let addr = gw.app.addr;
    probe(addr).await;
    assert_eq!(gw.metric(HANDSHAKE_ERRORS).await, Some(0.0));

    // The start of a ClientHello record (it announces 0x20 bytes), then the client leaves.
    let answer = sent_and_left(addr, &[0x16, 0x03, 0x01, 0x00, 0x20, 0x01, 0x00]).await;
    assert!(answer.is_empty(), "{answer:?}");
    // A whole ClientHello; the gateway answers it, and the client leaves without a reply.
    let name = ServerName::try_from("a.example.com").unwrap();
    let mut client = rustls::ClientConnection::new(ca_client(&ca, H1), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let answer = sent_and_left(addr, &hello).await;
    assert_eq!(
        answer.first(),
        Some(&0x16),
        "a ServerHello record: {answer:?}"
    );

    gw.wait_metric(HANDSHAKE_ERRORS, 2.0).await;
    let r = https_get(addr, "a.example.com", ca_client(&ca, H1), "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(gw.metric(HANDSHAKE_ERRORS).await, Some(2.0));
}

// ---------------------------------------------------------------------------------------------
// Config reloads
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_tls_section_keeps_the_running_certificates() {
    let ca = TestCa::new("test ca");
    let a = ca.leaf(&["a.example.com"]);
    let b = ca.leaf(&["b.example.com"]);
    let gw = Tls::start("tls-reload", &[("a", &a)], false).await;
    let addr = gw.app.addr;
    let b_pair = certs::write_pair(&gw.app.dir.join("certs"), "b", &b);
    let before = gw.state().await;
    assert_eq!(before["reloads"]["ok"], 0, "{before}");

    // The file gains a second pair for b.example.com.
    let pairs = [gw.pairs[0].clone(), b_pair];
    let yaml = with_free_admin(&tls_yaml(gw.upstream.addr, &pairs, false));
    write_by_rename(&gw.app.config_path, &yaml);
    let after = wait_for("the config file reload", NOTICE, || async {
        let s = gw.state().await;
        (s["reloads"]["ok"] != 0 || s["reloads"]["error"] != 0).then_some(s)
    })
    .await;
    assert_eq!(after["reloads"]["ok"], 1, "the reload is accepted: {after}");
    assert_eq!(after["reloads"]["error"], 0, "{after}");
    assert_eq!(after["last_reload"]["result"], "ok", "{after}");

    // The listener keeps the certificates it started with, until the next restart.
    let certificates = after["tls"][0]["certificates"]
        .as_array()
        .unwrap_or_else(|| panic!("{after}"));
    assert_eq!(certificates.len(), 1, "{after}");
    assert_eq!(certificates[0]["serving"]["serial"], a.serial.as_str());
    assert_eq!(served_serial(addr, "b.example.com").await, a.serial);
    let r = https_get(addr, "a.example.com", ca_client(&ca, H1), "/").await;
    assert_eq!((r.status, r.serial.as_str()), (200, a.serial.as_str()));
    assert_eq!(gw.metric(&reloads("ok")).await, Some(0.0));
    assert_eq!(gw.metric(&reloads("error")).await, Some(0.0));
}

// ---------------------------------------------------------------------------------------------
// The command line: validate and run
// ---------------------------------------------------------------------------------------------

/// Runs the binary (bounded, killed on timeout): exit code, stdout, stderr.
fn splitgate(args: &[&str], config: &Path) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_splitgate"))
        .args(args)
        .arg("-c")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "splitgate {args:?} did not exit within 20 s; stderr: {}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code().unwrap_or(-1),
        out.join().unwrap(),
        err.join().unwrap(),
    )
}

/// Writes a config on `pairs` (listeners and admin on free ports) and runs `splitgate <args>`.
fn run_on(dir: &Path, args: &[&str], pairs: &[(PathBuf, PathBuf)]) -> (i32, String, String) {
    let config = dir.join(format!("{}.yaml", args[0]));
    let yaml = with_free_admin(&tls_yaml("127.0.0.1:9".parse().unwrap(), pairs, false));
    std::fs::write(&config, yaml).unwrap();
    splitgate(args, &config)
}

#[test]
fn validate_names_the_file_at_fault_and_warns_on_expiry() {
    let dir = temp_dir("tls-validate");
    let ca = TestCa::new("test ca");
    let good = certs::write_pair(&dir, "good", &ca.leaf(&["a.example.com"]));
    let other = certs::write_pair(&dir, "other", &ca.leaf(&["a.example.com"]));
    let old = certs::write_pair(&dir, "old", &certs::expired(&["old.example.com"]));
    let missing = (dir.join("missing.crt"), good.1.clone());
    let mismatched = (good.0.clone(), other.1.clone());
    let p0 = "listeners[0].tls.certificates[0]";

    let (code, _, err) = run_on(&dir, &["validate"], std::slice::from_ref(&missing));
    assert_eq!(code, 1, "{err}");
    let want = format!("{p0}.cert_file: {}: cannot be read", missing.0.display());
    assert!(err.contains(&want), "want {want:?} in: {err}");

    let (code, _, err) = run_on(&dir, &["validate"], std::slice::from_ref(&mismatched));
    assert_eq!(code, 1, "{err}");
    let want = format!(
        "{p0}.key_file: {}: does not belong to the certificate in {}",
        other.1.display(),
        good.0.display()
    );
    assert!(err.contains(&want), "want {want:?} in: {err}");

    // Every bad pair is reported, each at its own index.
    let (code, _, err) = run_on(&dir, &["validate"], &[good.clone(), missing, mismatched]);
    assert_eq!(code, 1, "{err}");
    for want in [
        "listeners[0].tls.certificates[1].cert_file: ",
        "listeners[0].tls.certificates[2].key_file: ",
    ] {
        assert!(err.contains(want), "want {want:?} in: {err}");
    }
    assert!(!err.contains("certificates[0]"), "{err}");

    let (code, out, err) = run_on(&dir, &["validate"], &[good, old.clone()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok"), "{out}");
    let want = format!(
        "warning: listeners[0].tls.certificates[1].cert_file: the certificate in {} expired on ",
        old.0.display()
    );
    assert!(err.contains(&want), "want {want:?} in: {err}");

    let (code, out, err) = run_on(&dir, &["validate"], &[]);
    assert_eq!(code, 1, "{out}{err}");
    let want = "listeners[0].tls.certificates: at least one certificate is required";
    assert!(err.contains(want), "want {want:?} in: {err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn run_refuses_a_key_that_does_not_match() {
    let dir = temp_dir("tls-run");
    let ca = TestCa::new("test ca");
    let good = certs::write_pair(&dir, "good", &ca.leaf(&["a.example.com"]));
    let other = certs::write_pair(&dir, "other", &ca.leaf(&["a.example.com"]));
    let (code, _, err) = run_on(&dir, &["run"], &[(good.0.clone(), other.1.clone())]);
    assert_eq!(code, 1, "{err}");
    let want = format!(
        "listeners[0].tls.certificates[0].key_file: {}: does not belong to the certificate in {}",
        other.1.display(),
        good.0.display()
    );
    assert!(err.contains(&want), "want {want:?} in: {err}");
    let _ = std::fs::remove_dir_all(dir);
}
