//! The `splitgate` command line, run as a real process: `validate`, usage errors, `run`, `demo`.
//!
//! Every test asserts what a user sees: the exit code, the printed text, the response body. Child
//! processes are killed by a guard even when a test fails, and every wait is bounded.
//!
//! Tests marked `#[ignore = "BUG: ..."]` document a problem found in the binary; they fail today
//! and should pass once it is fixed (`cargo test --test cli -- --ignored`).

mod common;

use common::{get, http1_client, spawn_upstream, Answer, Behavior};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_splitgate");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// How long a short-lived command (validate, a failing run) may take.
const QUICK: Duration = Duration::from_secs(20);
/// How long a server may take to start answering, or to exit after SIGTERM.
const START: Duration = Duration::from_secs(20);
const STOP: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Harness: temp dirs, child processes, free ports.
// ---------------------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("splitgate-cli-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the temp dir can be created");
        TempDir(dir)
    }

    /// Writes `text` to `name` in this dir and returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("the config file can be written");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `splitgate` command with a predictable environment (no inherited log filter).
fn splitgate<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .current_dir(MANIFEST_DIR)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Drains a pipe into a shared buffer on its own thread, so the child never blocks on a full pipe.
fn drain(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let handle = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, handle)
}

/// A running `splitgate` process; killed (and reaped) on drop, whatever happened in the test.
struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    what: String,
}

/// What a finished process left behind.
#[derive(Debug)]
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Proc {
    fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Self {
        let what = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = splitgate(args)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `splitgate {what}`: {e}"));
        let (stdout, h1) = drain(child.stdout.take().expect("stdout is piped"));
        let (stderr, h2) = drain(child.stderr.take().expect("stderr is piped"));
        Proc {
            child,
            stdout,
            stderr,
            readers: vec![h1, h2],
            what: format!("splitgate {what}"),
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Exit status if it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("the child can be polled")
    }

    /// Waits (blocking this thread) up to `limit` for the process to exit.
    fn wait_blocking(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (without blocking the runtime) up to `limit` for the process to exit.
    async fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// After exit: the exit code and everything printed (the pipes are read to their end).
    fn finish(mut self, status: ExitStatus) -> Finished {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Finished {
            code: status.code(),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    /// Sends a signal by name (`TERM`, `INT`) with the system's `kill`.
    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("`kill` runs")
            .success();
        assert!(ok, "kill -{name} {} failed", self.child.id());
    }

    /// Waits up to `limit` until stdout contains `needle`; panics if the process exits first.
    async fn wait_for_stdout(&mut self, needle: &str, limit: Duration) -> String {
        self.wait_for("stdout", limit, |p| {
            let out = p.stdout();
            out.contains(needle).then_some(out)
        })
        .await
    }

    /// Waits up to `limit` until `found` gives something (checked every 20 ms), naming `what`
    /// it waits for; panics if the process exits first or the time passes.
    async fn wait_for<T>(
        &mut self,
        what: &str,
        limit: Duration,
        found: impl Fn(&Self) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(t) = found(self) {
                return t;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "`{}` exited ({status}) before {what}\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "`{}` gave no {what} within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                self.what,
                self.stdout(),
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then the exit code within `STOP`.
    async fn terminate(mut self) -> Finished {
        self.signal("TERM");
        let Some(status) = self.wait(STOP).await else {
            panic!(
                "`{}` still runs {STOP:?} after SIGTERM\nstderr:\n{}",
                self.what,
                self.stderr()
            );
        };
        self.finish(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs `splitgate ARGS` to its end (bounded by `QUICK`).
fn run_to_end<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Finished {
    let mut p = Proc::spawn(args);
    let Some(status) = p.wait_blocking(QUICK) else {
        panic!("`{}` did not exit within {QUICK:?}", p.what);
    };
    p.finish(status)
}

/// Runs `splitgate validate -c FILE`.
fn validate(file: &Path) -> Finished {
    run_to_end(&["validate".as_ref(), "-c".as_ref(), file.as_os_str()])
}

/// A loopback address that was free a moment ago (bound to port 0, then released).
fn free_addr() -> SocketAddr {
    free_addrs::<1>()[0]
}

/// `N` distinct free loopback addresses: all bound at once, then released, so that no two are
/// the same port (one released and bound again would be).
fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a loopback port can be bound"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap())
}

/// Whether something accepts TCP connections on `addr`.
fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// A GET through the gateway, bounded in time.
async fn ask(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    url: &str,
    headers: &[(&str, &str)],
) -> Answer {
    tokio::time::timeout(Duration::from_secs(10), get(client, url, headers))
        .await
        .unwrap_or_else(|_| panic!("GET {url} got no answer within 10s"))
}

/// Polls until the gateway on `addr` answers an HTTP request (a child process gives no readiness
/// signal); fails if the process exits or `START` passes.
async fn wait_until_serving(p: &mut Proc, addr: SocketAddr) {
    let client = http1_client();
    let url = format!("http://{addr}/");
    let deadline = Instant::now() + START;
    loop {
        if let Some(status) = p.exited() {
            panic!(
                "`{}` exited ({status}) before serving\nstderr:\n{}",
                p.what,
                p.stderr()
            );
        }
        let req = http::Request::get(&url)
            .body(http_body_util::Full::default())
            .unwrap();
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(500), client.request(req)).await
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{}` did not answer on {addr} within {START:?}\nstderr:\n{}",
            p.what,
            p.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Configs.
// ---------------------------------------------------------------------------------------------

/// A small valid config. `routes[0].http[0]` is the `x-canary: always` header rule (one
/// destination, no weight), `routes[0].http[1]` the 90/10 split with a timeout.
fn config(listen: SocketAddr, stable: SocketAddr, canary: SocketAddr) -> String {
    // The admin, readiness and metrics addresses are set to free loopback ports too, so no test
    // depends on a fixed port being free.
    let [admin, readiness, metrics] = free_addrs();
    common::fill(
        r#"listeners:
  - name: http
    address: {listen}
admin:
  address: {admin}
readiness:
  address: {readiness}
metrics:
  address: {metrics}
  reporter: source
drain: { delay: 0s }
services:
  svc:
    namespace: default
    host: svc.default.svc.cluster.local
    subsets:
      stable: { labels: { version: v1 }, endpoints: ["{stable}"] }
      canary: { labels: { version: v2 }, endpoints: ["{canary}"] }
    policy:
      connect_timeout: 1s
      load_balancer: round_robin
routes:
  - name: main
    hosts: ["*"]
    http:
      - name: canary-by-header
        match:
          - headers: { x-canary: { exact: always } }
        route:
          - destination: { service: svc, subset: canary }
      - name: primary
        route:
          - { destination: { service: svc, subset: stable }, weight: 90 }
          - { destination: { service: svc, subset: canary }, weight: 10 }
        timeout: 15s
"#,
        &[
            ("listen", listen.to_string()),
            ("admin", admin.to_string()),
            ("readiness", readiness.to_string()),
            ("metrics", metrics.to_string()),
            ("stable", stable.to_string()),
            ("canary", canary.to_string()),
        ],
    )
}

/// The base config for `validate` (nothing is bound or connected to).
fn base() -> String {
    config(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:9001".parse().unwrap(),
        "127.0.0.1:9002".parse().unwrap(),
    )
}

/// Applies text edits to `text`; each `from` must occur exactly once, so a typo in a test cannot
/// silently leave the config valid.
fn edit(text: &str, edits: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (from, to) in edits {
        assert_eq!(
            out.matches(from).count(),
            1,
            "the edit target {from:?} must occur once in:\n{out}"
        );
        out = out.replacen(from, to, 1);
    }
    out
}

/// A second route appended to the base config.
fn with_route(text: &str, name: &str, hosts: &str) -> String {
    format!(
        "{text}  - name: {name}
    hosts: {hosts}
    http:
      - route:
          - destination: {{ service: svc, subset: stable }}
"
    )
}

/// The problems `validate` printed: `(path, message)` for each line after the
/// `<file>: N error(s)` header, checking that N matches the number of lines.
fn problems(f: &Finished) -> Vec<(String, String)> {
    let mut lines = f.stderr.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("validate printed nothing on stderr: {f:?}"));
    let count: usize = header
        .strip_suffix(" error(s)")
        .and_then(|h| h.rsplit_once(": "))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected header line {header:?} in:\n{}", f.stderr));
    let list: Vec<(String, String)> = lines
        .map(|l| match l.split_once(": ") {
            Some((p, m)) => (p.to_string(), m.to_string()),
            None => (String::new(), l.to_string()),
        })
        .collect();
    assert_eq!(
        list.len(),
        count,
        "the header announces {count} error(s) but {} line(s) follow:\n{}",
        list.len(),
        f.stderr
    );
    list
}

/// Asserts `validate` failed with exit 1, nothing on stdout, and a problem at `path` whose
/// message contains every fragment. Returns all problems.
#[track_caller]
fn assert_problem(f: &Finished, path: &str, fragments: &[&str]) -> Vec<(String, String)> {
    assert_eq!(f.code, Some(1), "validate should exit 1: {f:?}");
    assert!(
        f.stdout.trim().is_empty(),
        "nothing goes to stdout on failure: {f:?}"
    );
    let list = problems(f);
    let Some((_, message)) = list.iter().find(|(p, _)| p == path) else {
        panic!("no problem reported at `{path}`; stderr:\n{}", f.stderr);
    };
    for frag in fragments {
        assert!(
            message.contains(frag),
            "the message for `{path}` should contain {frag:?}: {message:?}"
        );
    }
    list
}

/// Validates the base config with `edits` applied and asserts exactly one problem, at `path`.
#[track_caller]
fn assert_single_problem(text: &str, path: &str, fragments: &[&str]) {
    let dir = TempDir::new();
    let f = validate(&dir.write("broken.yaml", text));
    let list = assert_problem(&f, path, fragments);
    assert_eq!(list.len(), 1, "exactly one problem expected:\n{}", f.stderr);
}

// ---------------------------------------------------------------------------------------------
// validate: valid configs.
// ---------------------------------------------------------------------------------------------

#[test]
fn validate_accepts_the_shipped_config() {
    let f = run_to_end(&["validate", "-c", "config/splitgate.yaml"]);
    assert_eq!(f.code, Some(0), "{f:?}");
    assert!(f.stdout.contains("ok"), "{f:?}");
    assert!(f.stdout.contains("config/splitgate.yaml"), "{f:?}");
}

#[test]
fn validate_accepts_the_shipped_config_by_absolute_path_and_by_default() {
    let abs = Path::new(MANIFEST_DIR).join("config/splitgate.yaml");
    let f = run_to_end(&["validate".as_ref(), "-c".as_ref(), abs.as_os_str()]);
    assert_eq!(f.code, Some(0), "{f:?}");
    assert!(f.stdout.contains("ok"), "{f:?}");

    // `-c` defaults to config/splitgate.yaml (the command runs in the crate dir).
    let f = run_to_end(&["validate"]);
    assert_eq!(f.code, Some(0), "{f:?}");
    assert!(f.stdout.contains("ok"), "{f:?}");
}

#[test]
fn validate_accepts_the_demo_config() {
    let f = run_to_end(&["validate", "-c", "config/demo.yaml"]);
    assert_eq!(f.code, Some(0), "{f:?}");
    assert!(f.stdout.contains("ok"), "{f:?}");
}

#[test]
fn validate_accepts_the_test_base_config_and_a_zero_weight() {
    let dir = TempDir::new();
    let f = validate(&dir.write("base.yaml", &base()));
    assert_eq!(f.code, Some(0), "{f:?}");
    assert!(f.stdout.contains("ok"), "{f:?}");

    // Weight 0 is allowed: that destination just gets nothing (only a sum of 0 is an error).
    let text = edit(
        &base(),
        &[
            ("weight: 10 }", "weight: 0 }"),
            ("weight: 90", "weight: 100"),
        ],
    );
    let f = validate(&dir.write("zero.yaml", &text));
    assert_eq!(f.code, Some(0), "{f:?}");
}

// ---------------------------------------------------------------------------------------------
// validate: one problem at a time, each at its exact path.
// ---------------------------------------------------------------------------------------------

#[test]
fn validate_reports_an_unknown_field_in_a_rule() {
    // serde names the unknown field's path; the message names the field (and the known ones).
    let text = edit(
        &base(),
        &[("timeout: 15s", "timeout: 15s\n        retry: 3")],
    );
    assert_single_problem(
        &text,
        "routes[0].http[1].retry",
        &["unknown field `retry`", "`retries`"],
    );
}

#[test]
fn validate_reports_an_unknown_field_in_a_destination() {
    let text = edit(
        &base(),
        &[(
            "{ service: svc, subset: stable }",
            "{ service: svc, subset: stable, port: 80 }",
        )],
    );
    assert_single_problem(
        &text,
        "routes[0].http[1].route[0].destination.port",
        &["unknown field `port`", "`service`", "`subset`"],
    );
}

#[test]
fn validate_reports_an_unknown_top_level_field() {
    let text = format!("{}tracing: {{}}\n", base());
    assert_single_problem(&text, "tracing", &["unknown field `tracing`"]);
}

#[test]
fn validate_reports_an_unknown_service_and_lists_the_known_ones() {
    let text = edit(
        &base(),
        &[(
            "- destination: { service: svc, subset: canary }",
            "- destination: { service: ratings, subset: canary }",
        )],
    );
    assert_single_problem(
        &text,
        "routes[0].http[0].route[0].destination.service",
        &["\"ratings\"", "known: svc"],
    );
}

#[test]
fn validate_reports_an_unknown_subset_and_lists_the_known_ones() {
    let text = edit(
        &base(),
        &[(
            "{ service: svc, subset: stable }, weight: 90",
            "{ service: svc, subset: beta }, weight: 90",
        )],
    );
    assert_single_problem(
        &text,
        "routes[0].http[1].route[0].destination.subset",
        &["\"beta\"", "canary", "stable"],
    );
}

#[test]
fn validate_reports_weights_summing_to_zero() {
    let text = edit(
        &base(),
        &[("weight: 90", "weight: 0"), ("weight: 10", "weight: 0")],
    );
    assert_single_problem(&text, "routes[0].http[1].route", &["sum to 0"]);
}

#[test]
fn validate_reports_a_missing_weight_among_two_destinations() {
    let text = edit(&base(), &[(", weight: 10 }", " }")]);
    assert_single_problem(&text, "routes[0].http[1].route[1].weight", &["required"]);
}

#[test]
fn validate_reports_a_negative_weight_at_the_weight_field() {
    let text = edit(&base(), &[("weight: 90", "weight: -5")]);
    assert_single_problem(&text, "routes[0].http[1].route[0].weight", &["-5"]);
}

#[test]
fn validate_reports_a_duplicate_route_name() {
    let text = with_route(&base(), "main", r#"["other.example.com"]"#);
    assert_single_problem(&text, "routes[1].name", &["duplicate", "\"main\""]);
}

#[test]
fn validate_reports_a_host_served_by_two_routes() {
    let text = with_route(&base(), "other", r#"["*"]"#);
    assert_single_problem(
        &text,
        "routes[1].hosts[0]",
        &["\"*\"", "already served by route \"main\""],
    );
}

#[test]
fn validate_reports_a_duplicate_listener_name() {
    let text = edit(
        &base(),
        &[(
            "    address: 127.0.0.1:0\n",
            "    address: 127.0.0.1:0\n  - name: http\n    address: 127.0.0.1:0\n",
        )],
    );
    assert_single_problem(&text, "listeners[1].name", &["duplicate", "\"http\""]);
}

#[test]
fn validate_reports_bad_listener_addresses() {
    for bad in ["nope", "127.0.0.1:99999", "localhost", "127.0.0.1"] {
        let text = edit(
            &base(),
            &[("address: 127.0.0.1:0", &format!("address: {bad}"))],
        );
        assert_single_problem(&text, "listeners[0].address", &[&format!("{bad:?}")]);
    }
}

#[test]
fn validate_reports_a_bad_endpoint() {
    for bad in ["127.0.0.1", "127.0.0.1:0", "bad host:80"] {
        let text = edit(&base(), &[("127.0.0.1:9001", bad)]);
        assert_single_problem(
            &text,
            "services.svc.subsets.stable.endpoints[0]",
            &[&format!("{bad:?}")],
        );
    }
}

#[test]
fn validate_reports_a_bad_uri_regex() {
    let text = edit(
        &base(),
        &[(
            "- headers: { x-canary: { exact: always } }",
            "- headers: { x-canary: { exact: always } }\n            uri: { regex: \"[\" }",
        )],
    );
    assert_single_problem(&text, "routes[0].http[0].match[0].uri.regex", &["regex"]);
}

#[test]
fn validate_reports_a_bad_header_regex() {
    let text = edit(&base(), &[("{ exact: always }", "{ regex: \"(\" }")]);
    assert_single_problem(
        &text,
        "routes[0].http[0].match[0].headers.x-canary.regex",
        &["regex", "unclosed group"],
    );
}

#[test]
fn validate_reports_a_bad_rule_timeout() {
    let text = edit(&base(), &[("timeout: 15s", "timeout: soon")]);
    assert_single_problem(&text, "routes[0].http[1].timeout", &["\"soon\"", "15s"]);
}

#[test]
fn validate_reports_a_bad_connect_timeout() {
    let text = edit(
        &base(),
        &[("connect_timeout: 1s", "connect_timeout: 5 parsecs")],
    );
    assert_single_problem(
        &text,
        "services.svc.policy.connect_timeout",
        &["\"5 parsecs\""],
    );
}

#[test]
fn validate_reports_a_bad_load_balancer() {
    let text = edit(
        &base(),
        &[("load_balancer: round_robin", "load_balancer: fastest")],
    );
    assert_single_problem(
        &text,
        "services.svc.policy.load_balancer",
        &["\"fastest\"", "round_robin", "least_request", "random"],
    );
}

#[test]
fn validate_reports_a_bad_metrics_reporter() {
    let text = edit(&base(), &[("reporter: source", "reporter: sideways")]);
    assert_single_problem(
        &text,
        "metrics.reporter",
        &["\"sideways\"", "source", "destination", "both"],
    );
}

#[test]
fn validate_reports_a_missing_required_field() {
    let text = edit(&base(), &[("    address: 127.0.0.1:0\n", "")]);
    assert_single_problem(&text, "listeners[0]", &["missing field `address`"]);
}

// ---------------------------------------------------------------------------------------------
// validate: every problem of one file at once; unreadable and malformed files.
// ---------------------------------------------------------------------------------------------

#[test]
fn validate_reports_every_problem_of_one_file() {
    let text = edit(
        &base(),
        &[
            ("address: 127.0.0.1:0", "address: nope"),
            ("reporter: source", "reporter: sideways"),
            ("127.0.0.1:9001", "127.0.0.1"),
            ("connect_timeout: 1s", "connect_timeout: forever"),
            ("load_balancer: round_robin", "load_balancer: fastest"),
            ("{ exact: always }", "{ regex: \"(\" }"),
            (
                "- destination: { service: svc, subset: canary }",
                "- destination: { service: ratings, subset: canary }",
            ),
            (
                "{ service: svc, subset: stable }, weight: 90",
                "{ service: svc, subset: beta }, weight: 90",
            ),
            (", weight: 10 }", " }"),
            ("timeout: 15s", "timeout: soon"),
        ],
    );
    let text = with_route(&text, "main", r#"["*"]"#);
    let dir = TempDir::new();
    let f = validate(&dir.write("many.yaml", &text));
    let expected = [
        "listeners[0].address",
        "metrics.reporter",
        "services.svc.policy.connect_timeout",
        "services.svc.policy.load_balancer",
        "services.svc.subsets.stable.endpoints[0]",
        "routes[0].http[0].match[0].headers.x-canary.regex",
        "routes[0].http[0].route[0].destination.service",
        "routes[0].http[1].route[0].destination.subset",
        "routes[0].http[1].route[1].weight",
        "routes[0].http[1].timeout",
        "routes[1].name",
        "routes[1].hosts[0]",
    ];
    for path in expected {
        assert_problem(&f, path, &[]);
    }
    let list = problems(&f);
    let paths: Vec<&str> = list.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths, expected,
        "every problem, once each, in document order:\n{}",
        f.stderr
    );
}

#[test]
fn validate_reports_a_yaml_syntax_error_with_its_line() {
    let dir = TempDir::new();
    // An unclosed flow sequence.
    let text = edit(&base(), &[(r#"hosts: ["*"]"#, r#"hosts: ["*""#)]);
    let f = validate(&dir.write("syntax.yaml", &text));
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(f.stdout.trim().is_empty(), "{f:?}");
    let list = problems(&f);
    assert_eq!(list.len(), 1, "{}", f.stderr);
    assert!(
        f.stderr.contains("syntax.yaml"),
        "names the file: {}",
        f.stderr
    );
    assert!(
        f.stderr.contains("did not find expected ',' or ']'"),
        "{}",
        f.stderr
    );
    assert!(f.stderr.contains(" line "), "gives a line: {}", f.stderr);

    // An unterminated quoted string, and a tab used for indentation.
    for text in [
        "listeners:\n  - name: \"http\n",
        "listeners:\n\t- name: http\n",
    ] {
        let f = validate(&dir.write("syntax2.yaml", text));
        assert_eq!(f.code, Some(1), "{f:?}");
        assert_eq!(problems(&f).len(), 1, "{}", f.stderr);
        assert!(f.stderr.contains(" line "), "gives a line: {}", f.stderr);
    }
}

#[test]
fn validate_reports_a_repeated_key_with_its_line_and_column() {
    // A bad merge: `svc` twice under `services:` (the second would silently replace the
    // first), and `stable` twice under its subsets.
    let text = edit(
        &base(),
        &[(
            "routes:\n",
            "  svc:\n    namespace: other\n    host: svc.other.svc.cluster.local\n    subsets:\n      \
             stable: { endpoints: [\"127.0.0.1:9003\"] }\n      stable: { endpoints: [\"127.0.0.1:9004\"] }\nroutes:\n",
        )],
    );
    let line_of = |needle: &str, nth: usize| {
        text.lines()
            .enumerate()
            .filter(|(_, l)| l.starts_with(needle))
            .nth(nth)
            .map(|(i, _)| i + 1)
            .unwrap()
    };
    let (first, again) = (line_of("  svc:", 0), line_of("  svc:", 1));
    let dir = TempDir::new();
    let f = validate(&dir.write("merged.yaml", &text));
    let list = assert_problem(
        &f,
        "services.svc",
        &[&format!(
            "appears again at line {again}, column 3 (first at line {first}, column 3)"
        )],
    );
    let stable = line_of("      stable:", 2);
    assert_problem(
        &f,
        "services.svc.subsets.stable",
        &[&format!("at line {stable}, column 7")],
    );
    assert_eq!(list.len(), 2, "{}", f.stderr);
}

#[test]
fn validate_and_run_refuse_sockets_that_share_an_address() {
    let dir = TempDir::new();
    let listen = free_addr();
    let up: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let text = config(listen, up, up);
    let admin = text
        .lines()
        .skip_while(|l| *l != "admin:")
        .nth(1)
        .unwrap()
        .to_string();
    // The admin API on the listener's address; readiness on the wildcard of metrics' port.
    let metrics_port = text
        .lines()
        .skip_while(|l| *l != "metrics:")
        .nth(1)
        .and_then(|l| l.rsplit(':').next())
        .unwrap()
        .to_string();
    let readiness = text
        .lines()
        .skip_while(|l| *l != "readiness:")
        .nth(1)
        .unwrap()
        .to_string();
    let text = edit(
        &text,
        &[
            (&format!("{admin}\n"), &format!("  address: {listen}\n")),
            (
                &format!("{readiness}\n"),
                &format!("  address: 0.0.0.0:{metrics_port}\n"),
            ),
        ],
    );
    let file = dir.write("shared.yaml", &text);
    let f = validate(&file);
    let list = assert_problem(
        &f,
        "admin.address",
        &[&format!(
            "would share its port with listeners[0].address ({listen})"
        )],
    );
    assert_problem(
        &f,
        "metrics.address",
        &["would share its port with readiness.address (0.0.0.0:"],
    );
    assert_eq!(list.len(), 2, "{}", f.stderr);
    // `run` refuses the same config before binding anything: a bad config exits 1.
    let f = run_to_end(&["run".as_ref(), "-c".as_ref(), file.as_os_str()]);
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(f.stderr.contains("admin.address: "), "{}", f.stderr);
    assert!(!accepts(listen), "nothing was bound");
}

#[test]
fn validate_and_run_refuse_a_state_file_in_a_missing_directory() {
    let dir = TempDir::new();
    let up: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let missing = dir.0.join("no-such-dir").join("state.json");
    let text = config(free_addr(), up, up).replacen(
        "admin:\n",
        &format!(
            "admin:\n  state_file: {:?}\n",
            missing.display().to_string()
        ),
        1,
    );
    let file = dir.write("state.yaml", &text);
    let f = validate(&file);
    let list = assert_problem(
        &f,
        "admin.state_file",
        &[&format!(
            "its directory {} does not exist",
            missing.parent().unwrap().display()
        )],
    );
    assert_eq!(list.len(), 1, "{}", f.stderr);
    let f = run_to_end(&["run".as_ref(), "-c".as_ref(), file.as_os_str()]);
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(f.stderr.contains("admin.state_file: "), "{}", f.stderr);
}

#[test]
fn validate_reports_every_missing_file_at_once() {
    let dir = TempDir::new();
    let up: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let gone = |name: &str| dir.0.join(name).display().to_string();
    let text = config(free_addr(), up, up)
        .replacen(
            "    address: 127.0.0.1:",
            &format!(
                "    tls: {{ certificates: [ {{ cert_file: {:?}, key_file: {:?} }} ] }}\n    address: 127.0.0.1:",
                gone("cert.pem"),
                gone("key.pem")
            ),
            1,
        )
        .replacen(
            "      load_balancer: round_robin\n",
            &format!(
                "      load_balancer: round_robin\n      tls: {{ ca_file: {:?} }}\n",
                gone("ca.pem")
            ),
            1,
        )
        .replacen(
            "admin:\n",
            &format!("admin:\n  token_file: {:?}\n", gone("token")),
            1,
        );
    let f = validate(&dir.write("files.yaml", &text));
    let list = problems(&f);
    let paths: Vec<&str> = list.iter().map(|(p, _)| p.as_str()).collect();
    for want in [
        "services.svc.policy.tls.ca_file",
        "admin.token_file",
        "listeners[0].tls.certificates[0].cert_file",
        "listeners[0].tls.certificates[0].key_file",
    ] {
        assert!(paths.contains(&want), "{want} missing from\n{}", f.stderr);
    }
    assert_eq!(list.len(), 4, "{}", f.stderr);
}

#[test]
fn validate_reports_an_empty_file() {
    let dir = TempDir::new();
    let f = validate(&dir.write("empty.yaml", ""));
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(f.stderr.contains("missing field `listeners`"), "{f:?}");
}

#[test]
fn validate_reports_a_missing_file_with_its_path() {
    let dir = TempDir::new();
    let missing = dir.0.join("no-such-config.yaml");
    let f = validate(&missing);
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(f.stdout.trim().is_empty(), "{f:?}");
    assert!(
        f.stderr.contains(&missing.display().to_string()),
        "the message names the path: {}",
        f.stderr
    );
    assert!(f.stderr.contains("cannot read"), "{}", f.stderr);

    // A directory is not a config file either.
    let f = validate(&dir.0);
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(
        f.stderr.contains(&dir.0.display().to_string()),
        "{}",
        f.stderr
    );
}

/// BUG (doubtful message): for errors found while parsing (unknown fields, wrong types), the
/// line repeats a path inside its message, e.g.
/// `routes[0].http[1].retries: routes[0].http[1]: unknown field `retries`, ...` and
/// `routes[0].http[1].route[0].weight: routes[0].http[1].route[0].weight: invalid type: ...`.
#[test]
fn validate_parse_errors_do_not_repeat_the_path() {
    for (edits, path) in [
        (
            ("timeout: 15s", "timeout: 15s\n        retries: 3"),
            "routes[0].http[1].retries",
        ),
        (
            ("weight: 90", "weight: -5"),
            "routes[0].http[1].route[0].weight",
        ),
    ] {
        let dir = TempDir::new();
        let f = validate(&dir.write("broken.yaml", &edit(&base(), &[edits])));
        let list = problems(&f);
        let (_, message) = list.iter().find(|(p, _)| p == path).expect("reported");
        assert!(
            !message.starts_with("routes["),
            "the message repeats a path: {path}: {message}"
        );
    }
}

/// BUG (doubtful message): a bad regex is reported with the gateway's internal anchoring
/// wrapper and a caret that no longer points anywhere: for `regex: "("` the message is
/// `invalid regex: regex parse error: ^(?:()$ ^ error: unclosed group`; the user wrote `(`.
#[test]
fn validate_regex_errors_show_the_pattern_as_written() {
    let text = edit(&base(), &[("{ exact: always }", "{ regex: \"(\" }")]);
    let dir = TempDir::new();
    let f = validate(&dir.write("regex.yaml", &text));
    let list = assert_problem(&f, "routes[0].http[0].match[0].headers.x-canary.regex", &[]);
    let message = &list[0].1;
    assert!(
        !message.contains("^(?:"),
        "internal wrapper shown: {message}"
    );
}

// ---------------------------------------------------------------------------------------------
// Usage.
// ---------------------------------------------------------------------------------------------

#[test]
fn usage_errors_exit_1_with_a_message() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage"),
        (&["bogus"], "bogus"),
        (&["validate", "--bogus"], "--bogus"),
        (&["validate", "-c"], "-c"),
        (&["run", "--concurrency", "many"], "many"),
        (&["demo", "--listen", "not-an-address"], "not-an-address"),
        (&["--log-format", "xml", "validate"], "xml"),
    ];
    for (args, fragment) in cases {
        let f = run_to_end(args);
        assert_eq!(f.code, Some(1), "splitgate {args:?}: {f:?}");
        assert!(
            f.stderr.contains(fragment),
            "splitgate {args:?} should mention {fragment:?} on stderr: {f:?}"
        );
    }
}

#[test]
fn help_and_version_exit_0() {
    let f = run_to_end(&["--help"]);
    assert_eq!(f.code, Some(0), "{f:?}");
    for sub in ["run", "validate", "demo"] {
        assert!(f.stdout.contains(sub), "--help lists `{sub}`: {}", f.stdout);
    }

    let f = run_to_end(&["validate", "--help"]);
    assert_eq!(f.code, Some(0), "{f:?}");
    assert!(f.stdout.contains("--config"), "{}", f.stdout);

    let f = run_to_end(&["--version"]);
    assert_eq!(f.code, Some(0), "{f:?}");
    assert!(f.stdout.contains(env!("CARGO_PKG_VERSION")), "{}", f.stdout);
}

// ---------------------------------------------------------------------------------------------
// run.
// ---------------------------------------------------------------------------------------------

/// Serves from a config file, routes by header and by weight, and exits 0 on SIGTERM.
async fn run_serves_and_stops(extra_args: &[&str]) {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let listen = free_addr();
    let dir = TempDir::new();
    let file = dir.write("run.yaml", &config(listen, stable.addr, canary.addr));

    let mut args = vec!["run".to_string(), "-c".into(), file.display().to_string()];
    args.extend(extra_args.iter().map(ToString::to_string));
    let mut gw = Proc::spawn(&args);
    wait_until_serving(&mut gw, listen).await;

    let client = http1_client();
    let url = format!("http://{listen}/");
    for _ in 0..5 {
        let a = ask(&client, &url, &[("x-canary", "always")]).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body, "canary\n", "x-canary: always goes to canary");
    }
    let mut seen_stable = 0;
    for _ in 0..20 {
        let a = ask(&client, &url, &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert!(
            a.body == "stable\n" || a.body == "canary\n",
            "a plain request reaches an upstream: {a:?}"
        );
        seen_stable += usize::from(a.body == "stable\n");
    }
    // 90% stable: at least one of 20 (failure chance 1e-20).
    assert!(seen_stable > 0, "plain requests reach stable");

    // The keep-alive client stays open: an idle connection must not hold up the shutdown.
    let f = gw.terminate().await;
    assert_eq!(f.code, Some(0), "exit code after SIGTERM: {f:?}");
    assert!(!accepts(listen), "the listener is closed after exit");
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_and_exits_0_on_sigterm() {
    run_serves_and_stops(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_one_worker_serves_and_exits_0_on_sigterm() {
    run_serves_and_stops(&["--concurrency", "1"]).await;
}

/// One HTTP/1.1 or h2c connection of our own to `addr`, so that a test sees what happens to
/// that very connection.
async fn connect(
    addr: SocketAddr,
    h2: bool,
) -> (
    Box<dyn FnMut(http::Request<http_body_util::Full<bytes::Bytes>>) -> ResponseFuture + Send>,
    tokio::task::JoinHandle<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        (Box::new(move |req| Box::pin(tx.send_request(req))), task)
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        (Box::new(move |req| Box::pin(tx.send_request(req))), task)
    }
}

type ResponseFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>
            + Send,
    >,
>;

/// A GET on a connection of our own: status, `Connection` header, body.
async fn get_on(
    send: &mut (dyn FnMut(http::Request<http_body_util::Full<bytes::Bytes>>) -> ResponseFuture
              + Send),
    url: &str,
) -> (u16, Option<String>, String) {
    use http_body_util::BodyExt;
    let req = http::Request::get(url)
        .body(http_body_util::Full::default())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send(req))
        .await
        .expect("an answer within 10 s")
        .expect("an answer, not a transport error");
    let status = resp.status().as_u16();
    let connection = resp
        .headers()
        .get(http::header::CONNECTION)
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        connection,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// The readiness address a [`config`] text names.
fn readiness_of(text: &str) -> SocketAddr {
    let at = text.find("readiness:\n  address: ").unwrap() + "readiness:\n  address: ".len();
    text[at..].lines().next().unwrap().trim().parse().unwrap()
}

/// A gateway serving [`config`] with the given `drain:` line, and what a drain test needs.
struct Draining {
    gw: Proc,
    listen: SocketAddr,
    /// The readiness URL.
    readiness: String,
    _parts: (common::Upstream, common::Upstream, TempDir),
}

/// Waits (up to `STOP`) until the readiness URL answers 503.
async fn until_not_ready(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    readiness: &str,
) {
    let deadline = Instant::now() + STOP;
    while ask(client, readiness, &[]).await.status != 503 {
        assert!(
            Instant::now() < deadline,
            "readiness still 200 after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Draining {
    async fn start(drain: &str) -> Draining {
        let stable = spawn_upstream("stable", Behavior::Name).await;
        let canary = spawn_upstream("canary", Behavior::Name).await;
        let listen = free_addr();
        let dir = TempDir::new();
        let text = edit(
            &config(listen, stable.addr, canary.addr),
            &[("drain: { delay: 0s }", drain)],
        );
        let readiness = format!("http://{}/healthz/ready", readiness_of(&text));
        let file = dir.write("run.yaml", &text);
        let mut gw = Proc::spawn(&["run".as_ref(), "-c".as_ref(), file.as_os_str()]);
        wait_until_serving(&mut gw, listen).await;
        Draining {
            gw,
            listen,
            readiness,
            _parts: (stable, canary, dir),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_keeps_accepting_for_the_delay_and_asks_clients_to_go() {
    let d = Draining::start("drain: { delay: 5s, timeout: 5s }").await;
    let (mut gw, listen, readiness) = (d.gw, d.listen, d.readiness);
    let url = format!("http://{listen}/");
    let client = http1_client();
    assert_eq!(ask(&client, &readiness, &[]).await.status, 200);

    // Keep-alive connections opened before the signal, HTTP/1.1 and HTTP/2.
    let (mut h1, h1_conn) = connect(listen, false).await;
    let (mut h2, h2_conn) = connect(listen, true).await;
    let (status, connection, _) = get_on(&mut *h1, &url).await;
    assert_eq!((status, connection), (200, None));
    assert_eq!(get_on(&mut *h2, &url).await.0, 200);

    gw.signal("TERM");
    let signalled = Instant::now();
    // Readiness turns 503 at once, so that the Service stops sending here.
    until_not_ready(&client, &readiness).await;
    drop(client);

    // The HTTP/2 client is told to go (GOAWAY): with nothing in flight, its connection ends
    // well before the delay is over.
    tokio::time::timeout(Duration::from_millis(1500), h2_conn)
        .await
        .expect("the HTTP/2 connection ends at once: GOAWAY")
        .unwrap();
    // The HTTP/1.1 one is served, and its answer closes it.
    let (status, connection, body) = get_on(&mut *h1, &url).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(connection.as_deref(), Some("close"));
    tokio::time::timeout(Duration::from_secs(1), h1_conn)
        .await
        .expect("the HTTP/1.1 connection closes after its answer")
        .unwrap();
    // A client that still comes during the delay is served, and told to go too.
    let (mut late, _) = connect(listen, false).await;
    let (status, connection, _) = get_on(&mut *late, &url).await;
    assert_eq!((status, connection.as_deref()), (200, Some("close")));
    // The delay is long enough that a loaded machine still runs the checks above inside it.
    assert!(
        signalled.elapsed() < Duration::from_millis(4500),
        "the checks above ran within the 5 s delay"
    );

    // After the delay the listeners close, and the process exits 0.
    let Some(status) = gw.wait(Duration::from_secs(5) + STOP).await else {
        panic!("still running after the delay and the timeout");
    };
    assert!(
        signalled.elapsed() >= Duration::from_secs(5),
        "exited {:?} after SIGTERM, before the 5 s delay",
        signalled.elapsed()
    );
    let f = gw.finish(status);
    assert_eq!(f.code, Some(0), "{f:?}");
    assert!(!accepts(listen), "the listener is closed after exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_drain_at_once() {
    let d = Draining::start("drain: { delay: 60s }").await;
    let (gw, listen, readiness) = (d.gw, d.listen, d.readiness);
    gw.signal("TERM");
    let client = http1_client();
    until_not_ready(&client, &readiness).await;
    // Draining for a minute: still serving.
    assert_eq!(
        ask(&client, &format!("http://{listen}/"), &[]).await.status,
        200
    );
    let f = gw.terminate().await;
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(f.stderr.contains("second signal"), "{}", f.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_0_on_sigint() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let listen = free_addr();
    let dir = TempDir::new();
    let file = dir.write("run.yaml", &config(listen, stable.addr, canary.addr));
    let mut gw = Proc::spawn(&["run".as_ref(), "-c".as_ref(), file.as_os_str()]);
    wait_until_serving(&mut gw, listen).await;
    gw.signal("INT");
    let status = gw.wait(STOP).await;
    let Some(status) = status else {
        panic!("still running {STOP:?} after SIGINT: {}", gw.stderr());
    };
    let f = gw.finish(status);
    assert_eq!(f.code, Some(0), "{f:?}");
}

#[test]
fn run_exits_2_when_the_port_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a loopback port can be bound");
    let addr = taken.local_addr().unwrap();
    let dir = TempDir::new();
    let file = dir.write(
        "taken.yaml",
        &config(
            addr,
            "127.0.0.1:9001".parse().unwrap(),
            "127.0.0.1:9002".parse().unwrap(),
        ),
    );
    let f = run_to_end(&["run".as_ref(), "-c".as_ref(), file.as_os_str()]);
    assert_eq!(f.code, Some(2), "a runtime failure exits 2: {f:?}");
    assert!(
        f.stderr.contains(&format!("cannot bind {addr}")),
        "says it cannot bind {addr}: {}",
        f.stderr
    );
    drop(taken);
}

/// BUG (doubtful message): the bind error names its cause twice:
/// `listener "http" cannot bind 127.0.0.1:N: Address already in use (os error 98): Address
/// already in use (os error 98)` (the cause is both in the error's text and its `source()`).
#[test]
fn run_bind_error_names_its_cause_once() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a loopback port can be bound");
    let addr = taken.local_addr().unwrap();
    let dir = TempDir::new();
    let up: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let file = dir.write("taken.yaml", &config(addr, up, up));
    let f = run_to_end(&["run".as_ref(), "-c".as_ref(), file.as_os_str()]);
    assert_eq!(f.code, Some(2), "{f:?}");
    assert_eq!(
        f.stderr.matches("Address already in use").count(),
        1,
        "{}",
        f.stderr
    );
    drop(taken);
}

/// BUG: a fatal runtime error is only written as a log record, so with logging turned off
/// (`--log-level off` or `RUST_LOG=off`) `run` exits 2 and prints nothing at all.
#[test]
fn run_prints_a_fatal_error_even_with_logging_off() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a loopback port can be bound");
    let addr = taken.local_addr().unwrap();
    let dir = TempDir::new();
    let up: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let file = dir.write("taken.yaml", &config(addr, up, up));
    let f = run_to_end(&[
        "--log-level".as_ref(),
        "off".as_ref(),
        "run".as_ref(),
        "-c".as_ref(),
        file.as_os_str(),
    ]);
    assert_eq!(f.code, Some(2), "{f:?}");
    assert!(f.stderr.contains("cannot bind"), "{f:?}");
    drop(taken);
}

#[test]
fn run_logs_json_when_asked() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a loopback port can be bound");
    let addr = taken.local_addr().unwrap();
    let dir = TempDir::new();
    let up: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let file = dir.write("taken.yaml", &config(addr, up, up));
    let f = run_to_end(&[
        "--log-format".as_ref(),
        "json".as_ref(),
        "run".as_ref(),
        "-c".as_ref(),
        file.as_os_str(),
    ]);
    assert_eq!(f.code, Some(2), "{f:?}");
    let line = f
        .stderr
        .lines()
        .find(|l| l.contains("cannot bind"))
        .unwrap_or_else(|| panic!("no bind error logged: {}", f.stderr));
    assert!(
        line.starts_with('{') && line.ends_with('}') && line.contains("\"level\":\"ERROR\""),
        "a JSON log record: {line}"
    );
    drop(taken);
}

#[test]
fn run_exits_1_on_a_broken_config_without_serving() {
    let listen = free_addr();
    let dir = TempDir::new();
    let up: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let text = edit(
        &config(listen, up, up),
        &[("load_balancer: round_robin", "load_balancer: fastest")],
    );
    let file = dir.write("broken.yaml", &text);
    let f = run_to_end(&["run".as_ref(), "-c".as_ref(), file.as_os_str()]);
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(
        f.stderr
            .contains("services.svc.policy.load_balancer: must be round_robin"),
        "the problem is printed as path: message: {}",
        f.stderr
    );
    assert!(!accepts(listen), "nothing listens on {listen}");

    let f = run_to_end(&[
        "run".as_ref(),
        "-c".as_ref(),
        dir.0.join("missing.yaml").as_os_str(),
    ]);
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(f.stderr.contains("missing.yaml"), "{}", f.stderr);
}

// ---------------------------------------------------------------------------------------------
// demo.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_a_90_10_split_and_a_header_route() {
    let listen = free_addr();
    let mut demo = Proc::spawn(&[
        "demo",
        "--listen",
        &listen.to_string(),
        "--admin",
        "127.0.0.1:0",
    ]);
    let out = demo.wait_for_stdout("Ctrl-C", START).await;
    assert!(
        out.contains(&format!("http://{listen}")),
        "prints the gateway URL: {out}"
    );
    assert!(out.contains("curl"), "prints curl commands: {out}");
    assert!(
        out.contains("x-canary: always"),
        "shows the header route: {out}"
    );
    wait_until_serving(&mut demo, listen).await;

    let client = http1_client();
    let url = format!("http://{listen}/");
    for _ in 0..5 {
        let a = ask(&client, &url, &[("x-canary", "always")]).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body.trim(), "canary");
    }
    let n = 200;
    let (mut stable, mut canary) = (0, 0);
    for _ in 0..n {
        let a = ask(&client, &url, &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
        match a.body.trim() {
            "stable" => stable += 1,
            "canary" => canary += 1,
            other => panic!("unexpected body {other:?}"),
        }
    }
    assert!(stable > 0 && canary > 0, "stable {stable}, canary {canary}");
    let share = 100.0 * canary as f64 / n as f64;
    assert!(
        (3.0..=20.0).contains(&share),
        "canary share {share}% (expected about 10%)"
    );

    let f = demo.terminate().await;
    assert_eq!(f.code, Some(0), "{f:?}");
}

#[test]
fn demo_exits_2_when_its_port_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a loopback port can be bound");
    let addr = taken.local_addr().unwrap();
    let f = run_to_end(&[
        "demo",
        "--listen",
        &addr.to_string(),
        "--admin",
        "127.0.0.1:0",
    ]);
    assert_eq!(f.code, Some(2), "{f:?}");
    assert!(f.stderr.contains("cannot bind"), "{}", f.stderr);
    drop(taken);
}

/// SPEC §1: `demo` "prints the curl commands, admin and metrics URLs". It prints no admin or
/// metrics URL (and the embedded demo config pins them to fixed ports 15000/15090).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_admin_and_metrics_urls() {
    let listen = free_addr();
    let mut demo = Proc::spawn(&[
        "demo",
        "--listen",
        &listen.to_string(),
        "--admin",
        "127.0.0.1:0",
    ]);
    let out = demo.wait_for_stdout("Ctrl-C", START).await.to_lowercase();
    assert!(out.contains("admin"), "{out}");
    assert!(
        out.contains("metrics") || out.contains("prometheus"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// weights: usage errors, `--concurrency`, JSON logs, SIGHUP (issue 15).
// ---------------------------------------------------------------------------------------------

#[test]
fn weights_set_refuses_a_subset_named_twice() {
    // Nothing listens there: a usage error must come before any attempt to reach it.
    let admin = format!("http://{}", free_addr());
    let f = run_to_end(&[
        "weights", "set", "main", "stable=1", "stable=2", "--admin", &admin,
    ]);
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(
        f.stderr.contains("stable") && f.stderr.contains("twice"),
        "{f:?}"
    );
    assert!(!f.stderr.contains("cannot reach"), "{f:?}");
}

#[test]
fn weights_refuses_an_admin_url_it_cannot_use_and_shows_the_form() {
    for bad in [
        "ftp://127.0.0.1:15000",
        "http://",
        "http://127.0.0.1:15000/v1/state",
    ] {
        let f = run_to_end(&["weights", "get", "main", "--admin", bad]);
        assert_eq!(f.code, Some(1), "{bad}: {f:?}");
        assert!(f.stderr.contains("http://HOST:PORT"), "{bad}: {f:?}");
        assert!(!f.stderr.contains("cannot reach"), "{bad}: {f:?}");
    }
}

/// `--admin HOST:PORT` without a scheme means `http://HOST:PORT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_takes_a_bare_admin_address() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let listen = free_addr();
    let admin = free_addr();
    let dir = TempDir::new();
    let text = config(listen, stable.addr, canary.addr);
    let text = replace_admin(&text, admin);
    let file = dir.write("run.yaml", &text);
    let mut gw = Proc::spawn(&["run".as_ref(), "-c".as_ref(), file.as_os_str()]);
    wait_until_serving(&mut gw, listen).await;
    let admin = admin.to_string();
    let f = run_to_end(&[
        "weights",
        "set",
        "main",
        "--rule",
        "primary",
        "stable=0",
        "canary=100",
        "--admin",
        &admin,
    ]);
    assert_eq!(f.code, Some(0), "{f:?}");
    assert!(f.stdout.starts_with("generation "), "{f:?}");
    let f = run_to_end(&["weights", "get", "main", "--admin", &admin]);
    assert_eq!(f.code, Some(0), "{f:?}");
    assert!(f.stdout.contains("canary=100"), "{f:?}");
}

/// `config()` with the admin API on `admin`.
fn replace_admin(text: &str, admin: SocketAddr) -> String {
    let start = text
        .find("admin:\n  address: ")
        .expect("the config sets admin.address");
    let line_end = text[start + 18..].find('\n').unwrap() + start + 18;
    format!(
        "{}admin:\n  address: {admin}{}",
        &text[..start],
        &text[line_end..]
    )
}

#[test]
fn run_refuses_zero_workers() {
    let listen = free_addr();
    let dir = TempDir::new();
    let up: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let file = dir.write("run.yaml", &config(listen, up, up));
    let f = run_to_end(&[
        "run".as_ref(),
        "-c".as_ref(),
        file.as_os_str(),
        "--concurrency".as_ref(),
        "0".as_ref(),
    ]);
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(f.stderr.contains("--concurrency"), "{f:?}");
    assert!(f.stderr.contains("at least 1"), "{f:?}");
    assert!(!accepts(listen), "nothing listens on {listen}");
}

/// Every stderr line, each of which must be a JSON object.
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{stderr}"))
        })
        .collect()
}

#[test]
fn run_prints_startup_errors_as_json_lines_when_asked() {
    let listen = free_addr();
    let dir = TempDir::new();
    let up: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let text = edit(
        &config(listen, up, up),
        &[("load_balancer: round_robin", "load_balancer: fastest")],
    );
    let file = dir.write("broken.yaml", &text);
    let missing = dir.0.join("missing.yaml");
    for path in [file.as_os_str(), missing.as_os_str()] {
        let f = run_to_end(&[
            "--log-format".as_ref(),
            "json".as_ref(),
            "run".as_ref(),
            "-c".as_ref(),
            path,
        ]);
        assert_ne!(f.code, Some(0), "{f:?}");
        let lines = json_lines(&f.stderr);
        let error = lines
            .iter()
            .find(|l| l["level"] == "ERROR")
            .unwrap_or_else(|| panic!("no error record: {}", f.stderr));
        let errors = error["fields"]["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("errors is a JSON array: {error}"));
        assert!(!errors.is_empty(), "{error}");
        let text = error.to_string();
        if path == file.as_os_str() {
            assert!(text.contains("services.svc.policy.load_balancer"), "{text}");
        } else {
            assert!(text.contains("missing.yaml"), "{text}");
        }
    }
}

/// `POST /v1/reload` on the gateway's admin API.
async fn post_reload(admin: SocketAddr) -> Answer {
    let req = http::Request::post(format!("http://{admin}/v1/reload"))
        .body(http_body_util::Full::default())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), common::send(&http1_client(), req))
        .await
        .expect("the admin API answers")
}

/// Waits until stderr has a line containing `needle`, and returns it; fails if the process
/// exits first or `START` passes.
async fn wait_for_log(p: &mut Proc, needle: &str) -> String {
    p.wait_for(&format!("log line {needle:?}"), START, |p| {
        p.stderr()
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_string)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_reload_errors_as_a_json_array() {
    let listen = free_addr();
    let admin = free_addr();
    let dir = TempDir::new();
    let up: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let good = replace_admin(&config(listen, up, up), admin);
    let file = dir.write("run.yaml", &good);
    let mut gw = Proc::spawn(&[
        "--log-format".as_ref(),
        "json".as_ref(),
        "run".as_ref(),
        "-c".as_ref(),
        file.as_os_str(),
    ]);
    wait_until_serving(&mut gw, listen).await;
    dir.write(
        "run.yaml",
        &edit(
            &good,
            &[("load_balancer: round_robin", "load_balancer: fastest")],
        ),
    );
    let a = post_reload(admin).await;
    assert_eq!(a.status, 400, "{a:?}");
    let line = wait_for_log(&mut gw, "config file rejected").await;
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    let errors = record["fields"]["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("errors is a JSON array: {line}"));
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("load_balancer"))),
        "{line}"
    );
}

/// SIGHUP re-reads the config file as `POST /v1/reload` does, logs what came of it, and the
/// gateway keeps serving either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file_and_keeps_running() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let listen = free_addr();
    let dir = TempDir::new();
    let good = config(listen, stable.addr, canary.addr);
    let file = dir.write("run.yaml", &good);
    let mut gw = Proc::spawn(&["run".as_ref(), "-c".as_ref(), file.as_os_str()]);
    wait_until_serving(&mut gw, listen).await;

    // All to canary, and a metrics address that only a restart can apply.
    let moved = edit(
        &good,
        &[
            ("weight: 90 }", "weight: 0 }"),
            ("weight: 10 }", "weight: 100 }"),
            (
                "metrics:\n  address: ",
                "metrics:\n  address: 127.0.0.1:1\n  # was: ",
            ),
        ],
    );
    dir.write("run.yaml", &moved);
    gw.signal("HUP");
    let line = wait_for_log(&mut gw, "reloaded on SIGHUP").await;
    assert!(line.contains("generation"), "{line}");
    let warning = wait_for_log(&mut gw, "metrics.address").await;
    assert!(warning.contains("restart"), "{warning}");
    let client = http1_client();
    let url = format!("http://{listen}/");
    for _ in 0..10 {
        assert_eq!(ask(&client, &url, &[]).await.body, "canary\n");
    }
    // A broken file: the errors are logged, and the gateway serves on as before.
    dir.write(
        "run.yaml",
        &edit(
            &moved,
            &[("load_balancer: round_robin", "load_balancer: fastest")],
        ),
    );
    gw.signal("HUP");
    let line = wait_for_log(&mut gw, "SIGHUP: the config file was rejected").await;
    assert!(line.contains("load_balancer"), "{line}");
    assert!(gw.exited().is_none(), "{}", gw.stderr());
    for _ in 0..10 {
        assert_eq!(ask(&client, &url, &[]).await.body, "canary\n");
    }
    let f = gw.terminate().await;
    assert_eq!(f.code, Some(0), "{f:?}");
}

/// The command `demo` prints to shift the split works as printed, from any directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_a_weights_command_that_works() {
    let listen = free_addr();
    let mut demo = Proc::spawn(&[
        "demo",
        "--listen",
        &listen.to_string(),
        "--admin",
        "127.0.0.1:0",
    ]);
    let out = demo.wait_for_stdout("Ctrl-C", START).await;
    let line = out
        .lines()
        .find(|l| l.contains("shift to 50/50"))
        .unwrap_or_else(|| panic!("no weights command: {out}"));
    let command = line.split_once(':').unwrap().1.trim();
    let dir = TempDir::new();
    let done = Command::new("sh")
        .args(["-c", command])
        .current_dir(&dir.0)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "`{command}`: {done:?}");
    assert!(stdout.starts_with("generation "), "{stdout}");
    let f = demo.terminate().await;
    assert_eq!(f.code, Some(0), "{f:?}");
}
