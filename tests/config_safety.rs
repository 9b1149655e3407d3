//! Hostile configs: an alias bomb, an oversized file, and files that are not regular files (a
//! FIFO, a directory, a device) named by the config or standing in for it.
//!
//! Each is refused with a clear error by `splitgate validate` (exit 1), by `splitgate run` at
//! start (exit 1), and by a hot reload of a running gateway (400, the running config stays and
//! keeps serving). The gateway runs as a real process under an address-space limit, and every
//! wait is bounded, so a regression fails these tests instead of hanging CI or filling memory.

mod common;

use bytes::Bytes;
use common::{certs, fill, free_port, get, http1_client, send, spawn_upstream, Behavior};
use http_body_util::Full;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_splitgate");

/// Address space a splitgate process may use (`ulimit -v`, KiB). A gateway needs far less; a
/// regression that expands the bomb or reads `/dev/zero` to its end dies on it instead.
const MEMORY_KIB: u64 = 4 << 20;
/// How long `validate` or a failing `run` may take: a hang on a FIFO fails here.
const QUICK: Duration = Duration::from_secs(20);

/// A `splitgate` process with its output in files; killed on drop.
struct Proc {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

/// How a process ended.
#[derive(Debug)]
struct Ended {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Proc {
    fn spawn(dir: &Path, args: &[&OsStr]) -> Proc {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (out, err) = (dir.join(format!("out-{n}")), dir.join(format!("err-{n}")));
        // `exec` keeps the pid, so the guard kills splitgate itself.
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -v {MEMORY_KIB} && exec \"$0\" \"$@\""))
            .arg(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("splitgate starts");
        Proc { child, out, err }
    }

    fn output(&self, code: Option<i32>) -> Ended {
        Ended {
            code,
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.err).unwrap_or_default(),
        }
    }

    /// Waits up to `limit` for the exit; panics with what it printed if it is still running.
    fn wait(mut self, limit: Duration) -> Ended {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return self.output(status.code());
            }
            if Instant::now() > deadline {
                let e = self.output(None);
                panic!("splitgate did not exit within {limit:?}: {e:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn validate(dir: &Path, config: &Path) -> Ended {
    Proc::spawn(
        dir,
        &["validate".as_ref(), "-c".as_ref(), config.as_os_str()],
    )
    .wait(QUICK)
}

fn run(dir: &Path, config: &Path) -> Proc {
    Proc::spawn(dir, &["run".as_ref(), "-c".as_ref(), config.as_os_str()])
}

/// Asserts exit 1 with `want` printed, and nothing on stdout.
fn refused(e: &Ended, want: &str) {
    assert_eq!(e.code, Some(1), "{e:?}");
    assert!(e.stderr.contains(want), "wanted {want:?} in:\n{}", e.stderr);
    assert!(e.stdout.trim().is_empty(), "{e:?}");
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

/// A fresh directory.
fn temp_dir(tag: &str) -> PathBuf {
    common::temp_dir(&format!("safety-{tag}"))
}

/// A valid gateway config: service `reviews` (subset `v1` at `upstream`) on every host, with
/// `policy` (YAML lines under the service) and `extra` (top-level YAML after the routes).
fn config(
    listen: SocketAddr,
    admin: u16,
    upstream: SocketAddr,
    policy: &str,
    extra: &str,
) -> String {
    fill(
        r#"listeners:
  - name: http
    address: {listen}
admin: { address: "127.0.0.1:{admin}" }
readiness: { address: "127.0.0.1:0" }
metrics: { address: "127.0.0.1:0" }
services:
  reviews:
    namespace: default
    host: reviews.default.svc.cluster.local
    subsets:
      v1: { endpoints: ["{upstream}"] }
{policy}routes:
  - name: reviews
    hosts: ["*"]
    http:
      - route:
          - destination: { service: reviews, subset: v1 }
{extra}"#,
        &[
            ("listen", listen.to_string()),
            ("admin", admin.to_string()),
            ("upstream", upstream.to_string()),
            ("policy", policy.to_string()),
            ("extra", extra.to_string()),
        ],
    )
}

fn simple(policy: &str, extra: &str) -> String {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    config(addr, free_port(), addr, policy, extra)
}

fn ca_policy(ca: &Path) -> String {
    format!(
        "    policy: {{ tls: {{ ca_file: {:?} }} }}\n",
        ca.display().to_string()
    )
}

/// Routes whose hosts all alias one 1,000-host list, 1,000 times: a million nodes from ~40 KB.
fn alias_bomb() -> String {
    let hosts: Vec<String> = (0..1000).map(|i| format!("h{i}")).collect();
    let mut s = format!(
        "  - {{ name: r0, hosts: &h [{}], http: &r [{{ route: [{{ destination: {{ service: reviews, subset: v1 }} }}] }}] }}\n",
        hosts.join(", ")
    );
    for i in 1..=1000 {
        s.push_str(&format!("  - {{ name: r{i}, hosts: *h, http: *r }}\n"));
    }
    s
}

/// A config whose routes end with the bomb (the extra routes continue the `routes:` list).
fn bomb_config(listen: SocketAddr, admin: u16, upstream: SocketAddr) -> String {
    config(listen, admin, upstream, "", &alias_bomb())
}

/// Checks the alias error and that the line it names holds that alias.
fn names_the_crossing_alias(stderr: &str, text: &str) {
    let head = "YAML aliases would expand the document past 100000 nodes (at line ";
    let at = stderr
        .find(head)
        .unwrap_or_else(|| panic!("no alias error in:\n{stderr}"));
    let rest = &stderr[at + head.len()..];
    let (line, tail) = rest.split_once(", alias ").expect("the alias is named");
    assert!(tail.starts_with("*h)"), "{stderr}");
    let line: usize = line.parse().expect("a line number");
    let text_line = text.lines().nth(line - 1).expect("the line exists");
    assert!(text_line.contains("*h"), "line {line} is {text_line:?}");
}

#[test]
fn validate_refuses_an_alias_bomb_before_expanding_it() {
    let dir = temp_dir("bomb");
    let text = simple("", &alias_bomb());
    assert!(
        text.len() < 64 << 10,
        "the bomb stays small: {}",
        text.len()
    );
    let path = dir.join("bomb.yaml");
    std::fs::write(&path, &text).unwrap();
    let started = Instant::now();
    let e = validate(&dir, &path);
    refused(&e, "bomb.yaml: 1 error(s)");
    names_the_crossing_alias(&e.stderr, &text);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_policy_block_shared_by_50_services_still_works() {
    let dir = temp_dir("shared");
    let mut services = String::new();
    for i in 0..50 {
        let policy = if i == 0 {
            "&policy { connect_timeout: 3s, load_balancer: random, max_idle_per_endpoint: 8 }"
        } else {
            "*policy"
        };
        services.push_str(&format!(
            "  svc{i}:\n    namespace: default\n    host: svc{i}.default.svc.cluster.local\n    subsets:\n      v1: {{ endpoints: [\"127.0.0.1:{}\"] }}\n    policy: {policy}\n",
            9000 + i
        ));
    }
    let text = simple("", "").replace("services:\n", &format!("services:\n{services}"));
    let path = dir.join("shared.yaml");
    std::fs::write(&path, &text).unwrap();
    let e = validate(&dir, &path);
    assert_eq!(e.code, Some(0), "{e:?}");
    assert!(e.stdout.contains("51 service(s)"), "{e:?}");
    // The alias really carried the block to every service.
    let loaded = splitgate::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..50 {
        let p = &loaded.raw.services[&format!("svc{i}")].policy;
        assert_eq!(p.connect_timeout.as_deref(), Some("3s"), "svc{i}");
        assert_eq!(p.max_idle_per_endpoint, Some(8), "svc{i}");
    }
}

#[test]
fn validate_refuses_a_config_file_that_is_too_large_or_not_a_file() {
    let dir = temp_dir("configfile");
    // Sparse: 17 MiB that take no disk and no time to write.
    let big = dir.join("big.yaml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(17 << 20)
        .unwrap();
    refused(&validate(&dir, &big), "the file is larger than 16 MiB");

    let fifo = dir.join("fifo.yaml");
    mkfifo(&fifo);
    refused(
        &validate(&dir, &fifo),
        "the file is not a regular file (a FIFO)",
    );
    refused(
        &validate(&dir, Path::new("/dev/zero")),
        "the file is not a regular file (a character device)",
    );
    refused(
        &validate(&dir, &dir),
        "the file is not a regular file (a directory)",
    );
}

#[test]
fn validate_refuses_named_files_that_are_not_regular_files() {
    let dir = temp_dir("named");
    let fifo = dir.join("ca.pipe");
    mkfifo(&fifo);
    let path = dir.join("ca.yaml");
    std::fs::write(&path, simple(&ca_policy(&fifo), "")).unwrap();
    let want = format!(
        "services.reviews.policy.tls.ca_file: {:?} is not a regular file (a FIFO)",
        fifo.display().to_string()
    );
    refused(&validate(&dir, &path), &want);

    // The files only starting reads: listener certificates and the admin token.
    let token = dir.join("token.pipe");
    mkfifo(&token);
    let (cert, _) = certs::write_pair(&dir, "gw", &certs::self_signed(&["localhost"]));
    let quoted = |p: &Path| format!("{:?}", p.display().to_string());
    let pairs = format!(
        "    tls:\n      certificates:\n        - {{ cert_file: {}, key_file: {} }}\n        - {{ cert_file: {}, key_file: /dev/zero }}\n",
        quoted(&dir),
        quoted(&dir),
        quoted(&cert)
    );
    let text = simple("", "")
        .replace("  - name: http\n", &format!("  - name: http\n{pairs}"))
        .replace(
            "admin: { address:",
            &format!("admin: {{ token_file: {}, address:", quoted(&token)),
        );
    let path = dir.join("start.yaml");
    std::fs::write(&path, &text).unwrap();
    let e = validate(&dir, &path);
    for want in [
        format!("admin.token_file: {} is not a regular file (a FIFO)", quoted(&token)),
        format!(
            "listeners[0].tls.certificates[0].cert_file: {}: is not a regular file (a directory)",
            dir.display()
        ),
        "listeners[0].tls.certificates[1].key_file: /dev/zero: is not a regular file (a character device)".to_string(),
    ] {
        refused(&e, &want);
    }
}

#[test]
fn configmap_style_symlinks_to_regular_files_still_work() {
    // The kubelet's layout: config.yaml -> ..data/config.yaml, ..data -> ..2026_01_01.
    let dir = temp_dir("configmap");
    let generation = dir.join("..2026_01_01");
    std::fs::create_dir(&generation).unwrap();
    std::fs::write(generation.join("ca.pem"), certs::TestCa::new("ca").pem).unwrap();
    std::os::unix::fs::symlink("..2026_01_01", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/ca.pem", dir.join("ca.pem")).unwrap();
    let text = simple(&ca_policy(&dir.join("ca.pem")), "");
    std::fs::write(generation.join("config.yaml"), text).unwrap();
    std::os::unix::fs::symlink("..data/config.yaml", dir.join("config.yaml")).unwrap();
    let e = validate(&dir, &dir.join("config.yaml"));
    assert_eq!(e.code, Some(0), "{e:?}");
}

#[test]
fn run_refuses_the_same_files_at_start() {
    let dir = temp_dir("run");
    let fifo = dir.join("ca.pipe");
    mkfifo(&fifo);
    let ca = dir.join("ca.yaml");
    std::fs::write(&ca, simple(&ca_policy(&fifo), "")).unwrap();
    let e = run(&dir, &ca).wait(QUICK);
    refused(&e, "services.reviews.policy.tls.ca_file:");
    assert!(e.stderr.contains("is not a regular file (a FIFO)"), "{e:?}");

    let bomb = dir.join("bomb.yaml");
    let text = simple("", &alias_bomb());
    std::fs::write(&bomb, &text).unwrap();
    let e = run(&dir, &bomb).wait(QUICK);
    assert_eq!(e.code, Some(1), "{e:?}");
    names_the_crossing_alias(&e.stderr, &text);
}

/// Puts a hostile file at the config's path.
type Put<'a> = dyn Fn(&Path) + 'a;

/// `POST /v1/reload`, bounded: (status, body).
async fn reload(admin: u16) -> (u16, String) {
    let req = http::Request::post(format!("http://127.0.0.1:{admin}/v1/reload"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let a = tokio::time::timeout(Duration::from_secs(10), send(&http1_client(), req))
        .await
        .expect("the reload is answered within 10s");
    (a.status.as_u16(), a.body)
}

/// A GET through the gateway, bounded; the upstream answers `v1`.
async fn serves(listen: SocketAddr) {
    let a = tokio::time::timeout(
        Duration::from_secs(10),
        get(&http1_client(), &format!("http://{listen}/"), &[]),
    )
    .await
    .expect("the gateway answers within 10s");
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "v1\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_gateway_refuses_each_hostile_reload_and_keeps_serving() {
    let dir = temp_dir("reload");
    let upstream = spawn_upstream("v1", Behavior::Name).await;
    let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin = free_port();
    let good = config(listen, admin, upstream.addr, "", "");
    let path = dir.join("config.yaml");
    std::fs::write(&path, &good).unwrap();
    let mut gateway = run(&dir, &path);
    let deadline = Instant::now() + QUICK;
    while tokio::net::TcpStream::connect(listen).await.is_err() {
        assert!(
            gateway.child.try_wait().unwrap().is_none(),
            "{:?}",
            gateway.output(None)
        );
        assert!(Instant::now() < deadline, "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    serves(listen).await;

    let fifo = dir.join("ca.pipe");
    mkfifo(&fifo);
    let bomb = bomb_config(listen, admin, upstream.addr);
    let cases: [(&str, Box<Put>, String); 4] = [
        (
            "alias bomb",
            Box::new(|p| std::fs::write(p, &bomb).unwrap()),
            "YAML aliases would expand the document past 100000 nodes".into(),
        ),
        (
            "FIFO ca_file",
            Box::new(|p| {
                std::fs::write(
                    p,
                    config(listen, admin, upstream.addr, &ca_policy(&fifo), ""),
                )
                .unwrap()
            }),
            format!(
                "services.reviews.policy.tls.ca_file: {:?} is not a regular file (a FIFO)",
                fifo.display().to_string()
            ),
        ),
        (
            "17 MiB config",
            Box::new(|p| std::fs::File::create(p).unwrap().set_len(17 << 20).unwrap()),
            "the file is larger than 16 MiB".into(),
        ),
        (
            "config replaced by a FIFO",
            Box::new(|p| {
                std::fs::remove_file(p).unwrap();
                mkfifo(p);
            }),
            "the file is not a regular file (a FIFO)".into(),
        ),
    ];
    for (what, write, want) in &cases {
        write(&path);
        let (status, body) = reload(admin).await;
        assert_eq!(status, 400, "{what}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON answer");
        assert_eq!(
            v["error"], "the config file was rejected; the running config stays",
            "{what}: {body}"
        );
        let errors = v["errors"].as_array().expect("the errors are listed");
        assert!(
            errors
                .iter()
                .any(|e| e.as_str().is_some_and(|e| e.contains(want.as_str()))),
            "{what}: wanted {want:?} in {body}"
        );
        assert!(
            gateway.child.try_wait().unwrap().is_none(),
            "{what}: the gateway exited"
        );
        serves(listen).await;
        // Back to a regular file for the next case.
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, &good).unwrap();
    }
    // The reload path is not wedged: a good file still loads.
    let (status, body) = reload(admin).await;
    assert_eq!(status, 200, "{body}");
    serves(listen).await;
}
