//! Live changes under load (SPEC §2–§4): weight changes through the admin API and config file
//! rewrites (editor-style rename and Kubernetes ConfigMap `..data` swap) never fail or drop a
//! request, apply at once (API) or quickly (file), and in-flight requests finish on the snapshot
//! they started with.

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Bound on one proxied request in these tests (upstreams answer in at most 1.5 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Helpers: requests that report failures instead of panicking, the admin API, file rewrites.
// ---------------------------------------------------------------------------------------------

/// One GET, bounded in time: `(status, body)` or what went wrong (transport error or timeout).
async fn try_get(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, String), String> {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::default()).unwrap();
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e:?}"))?
            .to_bytes();
        Ok((parts.status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
}

/// One admin call with an optional JSON body: `(status, JSON answer)`.
async fn admin(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut b = Request::builder().method(method).uri(url);
    let body = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Full::new(Bytes::from(v.to_string()))
        }
        None => Full::default(),
    };
    let a = send(client, b.body(body).unwrap()).await;
    let v = if a.body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&a.body)
            .unwrap_or_else(|e| panic!("admin answer is not JSON ({e}): {}", a.body))
    };
    (a.status, v)
}

/// `PUT /v1/routes/main/weights` for rule `primary`; returns the new generation.
async fn set_weights(client: &HttpClient, app: &TestApp, weights: &[(&str, u32)]) -> u64 {
    let weights: BTreeMap<&str, u32> = weights.iter().copied().collect();
    let (status, v) = admin(
        client,
        Method::PUT,
        &app.admin_url("/v1/routes/main/weights"),
        Some(json!({ "rule": "primary", "weights": weights })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "PUT weights {weights:?}: {v}");
    v["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("no generation in {v}"))
}

async fn state(client: &HttpClient, app: &TestApp) -> Value {
    let (status, v) = admin(client, Method::GET, &app.admin_url("/v1/state"), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

fn reloads(state: &Value) -> (u64, u64) {
    (
        state["reloads"]["ok"].as_u64().unwrap(),
        state["reloads"]["error"].as_u64().unwrap(),
    )
}

fn generation(state: &Value) -> u64 {
    state["generation"].as_u64().unwrap()
}

/// The rule `name` of route `main` in a `/v1/state` answer.
fn rule<'a>(state: &'a Value, name: &str) -> &'a Value {
    state["routes"]["main"]["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("no rules in {state}"))
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no rule {name} in {state}"))
}

/// `{"stable": s, "canary": c}` as `/v1/state` shows weights.
fn weights_json(stable: u32, canary: u32) -> Value {
    json!({ "stable": stable, "canary": canary })
}

/// Polls `/v1/state` (bounded) until the watcher has tried `attempts` file reloads in all
/// (accepted + rejected); returns that state and how long it took from `since`.
async fn wait_reloads(
    client: &HttpClient,
    app: &TestApp,
    attempts: u64,
    since: Instant,
) -> (Value, Duration) {
    let deadline = since + Duration::from_secs(5);
    loop {
        let s = state(client, app).await;
        let (ok, error) = reloads(&s);
        if ok + error >= attempts {
            return (s, since.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "the file rewrite was not picked up within 5 s (want {attempts} reload attempts): {s}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Rewrites `path` like an editor: writes a temp file next to it, then renames it over `path`
/// (which replaces `path` even if it was a symlink).
fn write_by_rename(path: &Path, text: &str) {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let tmp = path.with_file_name(format!(".config.yaml.{n}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A directory laid out as the kubelet projects a ConfigMap:
/// `config.yaml -> ..data/config.yaml`, `..data -> ..2026_11_22_…N/`.
struct ConfigMapDir {
    dir: PathBuf,
    version: usize,
}

impl ConfigMapDir {
    fn new(dir: PathBuf, text: &str) -> Self {
        let mut d = ConfigMapDir { dir, version: 0 };
        d.project(text);
        d
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }

    /// A kubelet update: a new timestamped directory, `..data_tmp` pointing at it, renamed over
    /// `..data`; then the old directory goes. When an editor-style rename replaced the
    /// `config.yaml` symlink with a plain file, the link is put back (by rename, atomically).
    fn project(&mut self, text: &str) {
        self.version += 1;
        let v = self.version;
        let stamp = format!(
            "..2026_11_22_10_{:02}_{:02}.{:09}",
            v / 60,
            v % 60,
            100_000 + v
        );
        std::fs::create_dir(self.dir.join(&stamp)).unwrap();
        std::fs::write(self.dir.join(&stamp).join("config.yaml"), text).unwrap();
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        let is_link = std::fs::symlink_metadata(self.config_path())
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        if !is_link {
            let link_tmp = self.dir.join("config.yaml.link-tmp");
            std::os::unix::fs::symlink("..data/config.yaml", &link_tmp).unwrap();
            std::fs::rename(&link_tmp, self.config_path()).unwrap();
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

/// Median of some durations.
fn p50(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d[d.len() / 2]
}

// ---------------------------------------------------------------------------------------------
// Concurrent load: N client tasks, each with its own keep-alive connection, until told to stop.
// ---------------------------------------------------------------------------------------------

/// What a load run saw.
#[derive(Debug, Default)]
struct Tally {
    /// Answers 2xx, by body.
    bodies: HashMap<String, u64>,
    /// Answers with another status (count, first few).
    non_2xx: u64,
    non_2xx_samples: Vec<String>,
    /// Transport errors and timeouts (count, first few).
    failures: u64,
    failure_samples: Vec<String>,
    /// Requests sent with the `x-lane: b` header.
    lane_b: u64,
}

impl Tally {
    fn total(&self) -> u64 {
        self.bodies.values().sum::<u64>() + self.non_2xx + self.failures
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.bodies {
            *self.bodies.entry(k).or_insert(0) += v;
        }
        self.non_2xx += other.non_2xx;
        self.failures += other.failures;
        self.lane_b += other.lane_b;
        for s in other.non_2xx_samples {
            if self.non_2xx_samples.len() < 10 {
                self.non_2xx_samples.push(s);
            }
        }
        for s in other.failure_samples {
            if self.failure_samples.len() < 10 {
                self.failure_samples.push(s);
            }
        }
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    progress: Arc<Notify>,
    tasks: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// Starts `clients` tasks looping GETs on `url` until `stop` or `deadline`; every
    /// `lane_every`-th request of a task (if not 0) carries `x-lane: b`.
    fn start(url: String, clients: usize, lane_every: u64, deadline: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Notify::new());
        let hard_stop = Instant::now() + deadline;
        let tasks = (0..clients)
            .map(|_| {
                let (stop, served, progress, url) =
                    (stop.clone(), served.clone(), progress.clone(), url.clone());
                tokio::spawn(async move {
                    let client = http1_client();
                    let mut t = Tally::default();
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < hard_stop {
                        i += 1;
                        let lane_b = lane_every > 0 && i % lane_every == 0;
                        let headers: &[(&str, &str)] =
                            if lane_b { &[("x-lane", "b")] } else { &[] };
                        t.lane_b += u64::from(lane_b);
                        match try_get(&client, &url, headers).await {
                            Ok((status, body)) if status.is_success() => {
                                *t.bodies.entry(body).or_insert(0) += 1;
                            }
                            Ok((status, body)) => {
                                t.non_2xx += 1;
                                if t.non_2xx_samples.len() < 10 {
                                    t.non_2xx_samples.push(format!("{status} {body}"));
                                }
                            }
                            Err(e) => {
                                t.failures += 1;
                                if t.failure_samples.len() < 10 {
                                    t.failure_samples.push(e);
                                }
                            }
                        }
                        served.fetch_add(1, Ordering::SeqCst);
                        progress.notify_waiters();
                    }
                    t
                })
            })
            .collect();
        Load {
            stop,
            served,
            progress,
            tasks,
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// Waits (bounded by `limit`) until at least `n` requests have been answered in all.
    async fn wait_served(&self, n: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.progress.notified();
            if self.served() >= n || Instant::now() >= deadline {
                return;
            }
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Tally::default();
        for t in self.tasks {
            total.merge(t.await.unwrap());
        }
        total
    }
}

/// Asserts that a load run had no failure, no non-2xx answer, and only the expected bodies.
fn assert_clean(t: &Tally, allowed: &[&str]) {
    assert_eq!(
        t.failures,
        0,
        "{} of {} requests failed, e.g. {:?}",
        t.failures,
        t.total(),
        t.failure_samples
    );
    assert_eq!(
        t.non_2xx,
        0,
        "{} of {} answers were not 2xx, e.g. {:?}",
        t.non_2xx,
        t.total(),
        t.non_2xx_samples
    );
    for (body, n) in &t.bodies {
        assert!(
            allowed.contains(&body.as_str()),
            "{n} answers had body {body:?}; allowed: {allowed:?}"
        );
    }
}

/// Sends `n` GETs over `concurrency` keep-alive clients and counts 200 answers by body; panics on
/// anything else.
async fn tally(url: &str, n: usize, concurrency: usize) -> HashMap<String, usize> {
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let url = url.to_string();
            let share = n / concurrency + usize::from(i < n % concurrency);
            tokio::spawn(async move {
                let client = http1_client();
                let mut counts = HashMap::new();
                for _ in 0..share {
                    let (status, body) = try_get(&client, &url, &[]).await.unwrap();
                    assert_eq!(status, StatusCode::OK, "{body}");
                    *counts.entry(body).or_insert(0) += 1;
                }
                counts
            })
        })
        .collect();
    let mut total = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// 1. Zero failures while the API and the file change the config 220 times.
// ---------------------------------------------------------------------------------------------

/// One version of the churn test's config file.
#[derive(Debug, Clone, Copy)]
struct FileVersion {
    /// Canary's file weight in rule `primary` (stable gets the rest of 100).
    primary_canary: u32,
    /// Canary's weight in rule `lane-b` (requests with `x-lane: b`).
    lane_canary: u32,
    /// Timeout of both rules, in seconds.
    timeout_s: u32,
    /// Whether the file is broken (rule `lane-b` names a subset that does not exist).
    broken: bool,
}

fn churn_yaml(stable: SocketAddr, canary: SocketAddr, v: FileVersion) -> String {
    let lane_subset = if v.broken { "nonexistent" } else { "canary" };
    let rules = format!(
        "      - name: lane-b
        match:
          - headers: {{ x-lane: {{ exact: b }} }}
        route:
          - {{ destination: {{ service: svc, subset: stable }}, weight: {ls} }}
          - {{ destination: {{ service: svc, subset: {lane_subset} }}, weight: {lc} }}
        timeout: {t}s
      - name: primary
        route:
          - {{ destination: {{ service: svc, subset: stable }}, weight: {ps} }}
          - {{ destination: {{ service: svc, subset: canary }}, weight: {pc} }}
        timeout: {t}s
",
        ls = 100 - v.lane_canary,
        lc = v.lane_canary,
        ps = 100 - v.primary_canary,
        pc = v.primary_canary,
        t = v.timeout_s,
    );
    with_free_admin(&two_subset_config(stable, canary, &rules))
}

/// 200 API weight changes, one `DELETE …/overrides` and 20 file rewrites (10 editor-style
/// renames, 10 ConfigMap `..data` swaps, one of them invalid) while 16 keep-alive clients send
/// requests: not one request fails, every answer is `stable` or `canary`, every change is applied
/// exactly once, and the final split follows the last change.
///
/// Which change wins: API weights are an overlay on the file's, so while `primary` has API
/// weights, a file rewrite of `primary`'s weights changes nothing on the wire (it shows up as
/// `file_weights` in `/v1/state`); it does change rule `lane-b` (no API override) and the
/// timeouts. Once, `DELETE /v1/routes/main/overrides` hands `primary` back to the file before a
/// rewrite. The last change of all is the API's `stable=30 canary=70`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_failures_under_churn() {
    const API_CHANGES: u64 = 200;
    const REWRITES: u64 = 20;
    const BROKEN_REWRITE: u64 = 9;
    const CLEAR_BEFORE_REWRITE: u64 = 12;
    const FINAL: (u32, u32) = (30, 70);

    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let version = |i: u64, broken: bool| FileVersion {
        primary_canary: (10 + 7 * i as u32) % 91 + 5,
        lane_canary: 95 - 4 * i as u32,
        timeout_s: 10 + i as u32,
        broken,
    };
    let initial = FileVersion {
        primary_canary: 10,
        lane_canary: 50,
        timeout_s: 9,
        broken: false,
    };
    let dir = temp_dir("churn");
    let mut configmap =
        ConfigMapDir::new(dir.clone(), &churn_yaml(stable.addr, canary.addr, initial));
    let config_path = configmap.config_path();
    let app = start_app_at(dir, config_path.clone()).await;
    let admin_client = http1_client();
    let s0 = state(&admin_client, &app).await;
    let g0 = generation(&s0);
    assert_eq!(reloads(&s0), (0, 0), "{s0}");

    let load = Load::start(app.url("/"), 16, 4, Duration::from_secs(40));
    // Every configuration gets some traffic: a change waits until 32 more requests were answered.
    const PER_CHANGE: u64 = 200;
    let mut gen = g0;
    let mut api: Option<(u32, u32)>;
    let mut file = initial;
    let mut attempts = 0u64;
    let (mut rename_latency, mut configmap_latency) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for step in 0..API_CHANGES {
        let target = load.served() + PER_CHANGE;
        load.wait_served(target, Duration::from_secs(5)).await;
        let w = if step == API_CHANGES - 1 {
            FINAL
        } else {
            let c = (step * 7 % 101) as u32;
            (100 - c, c)
        };
        let g = set_weights(&admin_client, &app, &[("stable", w.0), ("canary", w.1)]).await;
        assert_eq!(
            g,
            gen + 1,
            "an API change moves the generation by exactly one"
        );
        gen = g;
        api = Some(w);

        if step % 10 != 4 {
            continue;
        }
        // A file rewrite: i = 0..19; styles C C I I C C I I … (C = ConfigMap swap, I = rename).
        let i = step / 10;
        if i == CLEAR_BEFORE_REWRITE {
            let (status, v) = admin(
                &admin_client,
                Method::DELETE,
                &app.admin_url("/v1/routes/main/overrides"),
                None,
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{v}");
            assert_eq!(v["generation"].as_u64(), Some(gen + 1), "{v}");
            gen += 1;
            api = None;
        }
        let broken = i == BROKEN_REWRITE;
        let next = version(i, broken);
        let text = churn_yaml(stable.addr, canary.addr, next);
        let by_configmap = i % 4 < 2;
        let t0 = Instant::now();
        if by_configmap {
            configmap.project(&text);
        } else {
            write_by_rename(&config_path, &text);
        }
        attempts += 1;
        let (s, took) = wait_reloads(&admin_client, &app, attempts, t0).await;
        let (ok, error) = reloads(&s);
        assert_eq!(ok + error, attempts, "one rewrite, one reload: {s}");
        if by_configmap {
            configmap_latency.push(took);
        } else {
            rename_latency.push(took);
        }
        let lane = rule(&s, "lane-b");
        let primary = rule(&s, "primary");
        if broken {
            assert_eq!(error, 1, "the broken file must be rejected: {s}");
            assert_eq!(s["last_reload"]["result"], "error", "{s}");
            let errors = s["last_reload"]["errors"].to_string();
            assert!(
                errors.contains("routes[0].http[0]") && errors.contains("nonexistent"),
                "the error names the field and the unknown subset: {errors}"
            );
            assert_eq!(generation(&s), gen, "a rejected file changes nothing: {s}");
            // The running config stays: lane-b keeps the last good file's weights.
            assert_eq!(
                lane["weights"],
                weights_json(100 - file.lane_canary, file.lane_canary),
                "{s}"
            );
        } else {
            assert_eq!(error, u64::from(i > BROKEN_REWRITE), "{s}");
            assert_eq!(s["last_reload"]["result"], "ok", "{s}");
            assert_eq!(
                generation(&s),
                gen + 1,
                "a reload moves the generation by one: {s}"
            );
            gen += 1;
            file = next;
            assert_eq!(
                lane["weights"],
                weights_json(100 - file.lane_canary, file.lane_canary),
                "the rewrite's lane-b weights are live: {s}"
            );
        }
        let file_primary = weights_json(100 - file.primary_canary, file.primary_canary);
        match api {
            // API weights win over the file's for the same rule; the file's are shown aside.
            Some((st, ca)) => {
                assert_eq!(primary["source"], "api", "{s}");
                assert_eq!(primary["weights"], weights_json(st, ca), "{s}");
                assert_eq!(primary["file_weights"], file_primary, "{s}");
            }
            None => {
                assert_eq!(primary["source"], "file", "{s}");
                assert_eq!(primary["weights"], file_primary, "{s}");
            }
        }
    }
    let churn_time = started.elapsed();
    // Some traffic on the final configuration too, then stop the load.
    let target = load.served() + 16 * PER_CHANGE;
    load.wait_served(target, Duration::from_secs(5)).await;
    let t = load.finish().await;
    eprintln!(
        "churn: {} requests ({} with x-lane: b) in {:?} across {} changes; failures {}, non-2xx {}, bodies {:?}",
        t.total(),
        t.lane_b,
        churn_time,
        gen - g0,
        t.failures,
        t.non_2xx,
        t.bodies
    );
    eprintln!(
        "churn: file rewrite -> reload applied: rename p50 {:?} max {:?}; configmap swap p50 {:?} max {:?}",
        p50(rename_latency.clone()),
        rename_latency.iter().max().unwrap(),
        p50(configmap_latency.clone()),
        configmap_latency.iter().max().unwrap(),
    );
    assert_clean(&t, &["stable\n", "canary\n"]);
    for (style, took) in [
        ("rename", &rename_latency),
        ("configmap", &configmap_latency),
    ] {
        let max = *took.iter().max().unwrap();
        assert!(
            max < Duration::from_secs(1),
            "a {style} rewrite took {max:?} to apply (the watcher missed it?): {took:?}"
        );
    }
    assert!(
        t.total() >= API_CHANGES * PER_CHANGE,
        "the load kept running through the churn: {} requests",
        t.total()
    );
    assert!(t.bodies.contains_key("stable\n") && t.bodies.contains_key("canary\n"));

    let s = state(&admin_client, &app).await;
    assert!(reloads(&s).1 >= 1, "{s}");
    assert_eq!(reloads(&s), (REWRITES - 1, 1), "{s}");
    assert!(generation(&s) >= g0 + 200, "{s}");
    assert_eq!(
        generation(&s),
        g0 + API_CHANGES + 1 + (REWRITES - 1),
        "every applied change counts once: {s}"
    );
    let primary = rule(&s, "primary");
    assert_eq!(primary["source"], "api", "{s}");
    assert_eq!(primary["weights"], weights_json(FINAL.0, FINAL.1), "{s}");

    // The final split follows the last change: stable=30 canary=70, within ±3 points.
    let n = 4000;
    let counts = tally(&app.url("/"), n, 16).await;
    assert_eq!(counts.values().sum::<usize>(), n);
    for (name, want) in [("stable\n", FINAL.0), ("canary\n", FINAL.1)] {
        let got = 100.0 * *counts.get(name).unwrap_or(&0) as f64 / n as f64;
        assert!(
            (got - f64::from(want)).abs() <= 3.0,
            "{} got {got:.2}%, want {want}% ± 3: {counts:?}",
            name.trim()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. In-flight requests finish on the snapshot they started with.
// ---------------------------------------------------------------------------------------------

fn alpha_beta_yaml(alpha: Option<SocketAddr>, beta: SocketAddr, alpha_weight: u32) -> String {
    match alpha {
        Some(alpha) => svc_config(
            &(subset("alpha", alpha) + &subset("beta", beta)),
            &format!(
                "      - name: primary
        route:
          - {{ destination: {{ service: svc, subset: alpha }}, weight: {alpha_weight} }}
          - {{ destination: {{ service: svc, subset: beta }}, weight: {bw} }}
",
                bw = 100 - alpha_weight
            ),
        ),
        None => svc_config(
            &subset("beta", beta),
            "      - name: primary
        route:
          - destination: { service: svc, subset: beta }
",
        ),
    }
}

/// Starts `n` GETs, each on its own connection, and waits (bounded) until `upstream` has
/// received them all: they are then in flight at that (slow) upstream.
async fn start_in_flight(
    app: &TestApp,
    upstream: &Upstream,
    n: usize,
) -> Vec<JoinHandle<(Result<(StatusCode, String), String>, Duration)>> {
    let before = upstream.count();
    let tasks = (0..n)
        .map(|_| {
            let url = app.url("/");
            tokio::spawn(async move {
                let t0 = Instant::now();
                let r = try_get(&http1_client(), &url, &[]).await;
                (r, t0.elapsed())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.count() < before + n {
        assert!(
            Instant::now() < deadline,
            "the requests did not reach {}",
            upstream.name
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tasks
}

/// Requests in flight at subset alpha (slow, 1.5 s) when the API moves all weight to beta
/// (slow, 200 ms) finish from alpha with 200; requests that start after the call go to beta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_request_keeps_its_snapshot() {
    const ALPHA_DELAY: Duration = Duration::from_millis(1500);
    let alpha = spawn_upstream("alpha", Behavior::Slow(ALPHA_DELAY)).await;
    let beta = spawn_upstream("beta", Behavior::Slow(Duration::from_millis(200))).await;
    let app = spawn_app(&alpha_beta_yaml(Some(alpha.addr), beta.addr, 100)).await;
    let admin_client = http1_client();

    let in_flight = start_in_flight(&app, &alpha, 4).await;
    set_weights(&admin_client, &app, &[("alpha", 0), ("beta", 100)]).await;
    assert!(
        in_flight.iter().all(|t| !t.is_finished()),
        "the alpha requests must still be in flight when the change is live"
    );
    // New requests, started after the call returned, go to beta while alpha's are still open.
    let fresh: Vec<_> = (0..4)
        .map(|_| {
            let url = app.url("/");
            tokio::spawn(async move { try_get(&http1_client(), &url, &[]).await })
        })
        .collect();
    for f in fresh {
        let (status, body) = f.await.unwrap().expect("a new request is answered");
        assert_eq!((status, body.as_str()), (StatusCode::OK, "beta\n"));
    }
    for t in in_flight {
        let (r, took) = t.await.unwrap();
        let (status, body) = r.expect("the in-flight request completes");
        assert_eq!((status, body.as_str()), (StatusCode::OK, "alpha\n"));
        assert!(
            took >= ALPHA_DELAY,
            "{took:?}: it was really served by the slow alpha"
        );
    }
    assert_eq!(
        alpha.count(),
        4,
        "nothing new went to alpha after the change"
    );
    assert_eq!(beta.count(), 4);
}

/// Even a file reload that removes the in-flight requests' subset altogether lets them finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_survives_its_subset_being_removed() {
    const ALPHA_DELAY: Duration = Duration::from_millis(1500);
    let alpha = spawn_upstream("alpha", Behavior::Slow(ALPHA_DELAY)).await;
    let beta = spawn_upstream("beta", Behavior::Name).await;
    let app = spawn_app(&alpha_beta_yaml(Some(alpha.addr), beta.addr, 100)).await;
    let admin_client = http1_client();

    let in_flight = start_in_flight(&app, &alpha, 4).await;
    let t0 = Instant::now();
    write_by_rename(
        &app.config_path,
        &with_free_admin(&alpha_beta_yaml(None, beta.addr, 0)),
    );
    let (s, _) = wait_reloads(&admin_client, &app, 1, t0).await;
    assert_eq!(reloads(&s), (1, 0), "{s}");
    assert!(
        in_flight.iter().all(|t| !t.is_finished()),
        "the alpha requests must still be in flight when the reload is live"
    );
    let (status, body) = try_get(&http1_client(), &app.url("/"), &[]).await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "beta\n"));
    for t in in_flight {
        let (r, _) = t.await.unwrap();
        let (status, body) = r.expect("the in-flight request completes");
        assert_eq!((status, body.as_str()), (StatusCode::OK, "alpha\n"));
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A kept-alive client connection routes each request by the config live when it arrives.
// ---------------------------------------------------------------------------------------------

type Conn = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn conn_get(conn: &mut Conn, authority: &str) -> (StatusCode, String) {
    conn.ready().await.expect("the connection is still open");
    let req = Request::get("/")
        .header("host", authority)
        .body(Full::default())
        .unwrap();
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, conn.send_request(req))
        .await
        .expect("answered in time")
        .expect("answered on the same connection");
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_connection_uses_new_config_next_request() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let rules = primary_rule;
    let app = spawn_app(&two_subset_config(stable.addr, canary.addr, &rules(100, 0))).await;
    let admin_client = http1_client();

    // One TCP connection, one HTTP/1.1 session on it, for every request below.
    let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut conn, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let driver = tokio::spawn(driver);
    let authority = app.addr.to_string();

    assert_eq!(
        conn_get(&mut conn, &authority).await,
        (StatusCode::OK, "stable\n".into())
    );
    set_weights(&admin_client, &app, &[("stable", 0), ("canary", 100)]).await;
    assert_eq!(
        conn_get(&mut conn, &authority).await,
        (StatusCode::OK, "canary\n".into())
    );
    set_weights(&admin_client, &app, &[("stable", 100), ("canary", 0)]).await;
    assert_eq!(
        conn_get(&mut conn, &authority).await,
        (StatusCode::OK, "stable\n".into())
    );

    // The same through the file: back to the file (stable=100), then a rewrite to canary=100.
    let (status, v) = admin(
        &admin_client,
        Method::DELETE,
        &app.admin_url("/v1/routes/main/overrides"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let t0 = Instant::now();
    write_by_rename(
        &app.config_path,
        &with_free_admin(&two_subset_config(stable.addr, canary.addr, &rules(0, 100))),
    );
    let (s, _) = wait_reloads(&admin_client, &app, 1, t0).await;
    assert_eq!(reloads(&s), (1, 0), "{s}");
    assert_eq!(
        conn_get(&mut conn, &authority).await,
        (StatusCode::OK, "canary\n".into())
    );

    assert!(
        !conn.is_closed() && !driver.is_finished(),
        "the connection stayed open"
    );
    assert_eq!((stable.count(), canary.count()), (2, 2));
}

// ---------------------------------------------------------------------------------------------
// 4. How fast changes apply: file rewrite → first request on the new weights; API call → the very
//    next request.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_change_applies_quickly() {
    const FLIPS: usize = 6;
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let yaml = |s: u32, c: u32| {
        with_free_admin(&two_subset_config(
            stable.addr,
            canary.addr,
            &primary_rule(s, c),
        ))
    };
    let app = spawn_app(&yaml(100, 0)).await;
    let client = http1_client();
    let admin_client = http1_client();
    let url = app.url("/");
    assert_eq!(try_get(&client, &url, &[]).await.unwrap().1, "stable\n");

    // File: rename a new version over the file, then poll with requests until one sees it.
    let mut file_latency = Vec::new();
    for flip in 0..FLIPS {
        let (want, weights) = if flip % 2 == 0 {
            ("canary\n", (0, 100))
        } else {
            ("stable\n", (100, 0))
        };
        let text = yaml(weights.0, weights.1);
        let t0 = Instant::now();
        write_by_rename(&app.config_path, &text);
        let mut polls = 0;
        let took = loop {
            polls += 1;
            let (status, body) = try_get(&client, &url, &[]).await.unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
            if body == want {
                break t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "flip {flip}: the rewrite was not applied within 5 s ({polls} requests)"
            );
        };
        file_latency.push(took);
    }
    let file_max = *file_latency.iter().max().unwrap();
    eprintln!(
        "file rename -> first request on the new weights: p50 {:?}, max {:?}, all {:?}",
        p50(file_latency.clone()),
        file_max,
        file_latency
    );
    assert!(
        file_max < Duration::from_secs(1),
        "a file change must apply within 1 s (target 100 ms): {file_latency:?}"
    );

    // API: the very first request after the call returns routes by the new weights.
    let mut api_latency = Vec::new();
    for flip in 0..20 {
        let (want, weights) = if flip % 2 == 0 {
            ("canary\n", [("stable", 0), ("canary", 100)])
        } else {
            ("stable\n", [("stable", 100), ("canary", 0)])
        };
        let t0 = Instant::now();
        set_weights(&admin_client, &app, &weights).await;
        let called = t0.elapsed();
        let (status, body) = try_get(&client, &url, &[]).await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, want),
            "flip {flip}: the first request after the API call must use the new weights"
        );
        api_latency.push(called);
    }
    eprintln!(
        "API PUT weights -> applied (call returned; next request already on it): p50 {:?}, max {:?}",
        p50(api_latency.clone()),
        api_latency.iter().max().unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Mirroring: copies go out in the background; the client never waits for or sees them.
// ---------------------------------------------------------------------------------------------

/// Sends `n` sequential GETs; asserts each is `200 stable`; returns each one's latency.
async fn sequential_stable(client: &HttpClient, url: &str, n: usize) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let (status, body) = try_get(client, url, &[])
            .await
            .expect("the gateway answers");
        lat.push(t0.elapsed());
        assert_eq!((status, body.as_str()), (StatusCode::OK, "stable\n"));
    }
    lat
}

/// Waits (bounded) until `upstream` has received at least `n` requests in all.
async fn wait_count(upstream: &Upstream, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.count() < n {
        assert!(
            Instant::now() < deadline,
            "{} received {} requests, want {n}",
            upstream.name,
            upstream.count()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `upstream`'s count has not moved for 300 ms (bounded by 5 s); returns it. Used
/// where the number of copies to expect is not known (sampled mirroring) or is zero.
async fn settled_count(upstream: &Upstream) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = upstream.count();
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(300) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = upstream.count();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_without_touching_the_client() {
    const SLOW: Duration = Duration::from_millis(500);
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Slow(SLOW)).await;
    let dead = dead_addr().await;
    let yaml = format!(
        "listeners:
  - name: http
    address: 127.0.0.1:0
services:
  svc:
    namespace: default
    host: svc.default.svc.cluster.local
    subsets:
      stable: {{ endpoints: [\"{s}\"] }}
      canary: {{ endpoints: [\"{c}\"] }}
      dead: {{ endpoints: [\"{dead}\"] }}
routes:
  - name: main
    hosts: [\"*\"]
    http:
      - name: primary
        route:
          - {{ destination: {{ service: svc, subset: stable }}, weight: 100 }}
          - {{ destination: {{ service: svc, subset: canary }}, weight: 0 }}
",
        s = stable.addr,
        c = canary.addr,
    );
    let app = spawn_app(&yaml).await;
    let client = http1_client();
    let admin_client = http1_client();
    let url = app.url("/");
    let mirror_url = app.admin_url("/v1/routes/main/mirror-routes/shadow");
    let put_mirror = |subset: &'static str, percentage: u32| {
        let (c, u) = (&admin_client, &mirror_url);
        async move {
            let (status, v) = admin(
                c,
                Method::PUT,
                u,
                Some(json!({ "subset": subset, "percentage": percentage })),
            )
            .await;
            assert_eq!(
                status,
                StatusCode::OK,
                "PUT mirror {subset} {percentage}%: {v}"
            );
        }
    };

    // Baseline without a mirror.
    let t0 = Instant::now();
    let baseline = sequential_stable(&client, &url, 20).await;
    let baseline_total = t0.elapsed();
    assert_eq!(canary.count(), 0);

    // 100% to the slow canary: the client does not wait for the copies.
    put_mirror("canary", 100).await;
    let t0 = Instant::now();
    let mirrored = sequential_stable(&client, &url, 20).await;
    let mirrored_total = t0.elapsed();
    eprintln!(
        "mirror: 20 sequential requests take {baseline_total:?} (p50 {:?}) without, {mirrored_total:?} (p50 {:?}) with a 100% mirror to a {SLOW:?} upstream",
        p50(baseline.clone()),
        p50(mirrored.clone())
    );
    assert!(
        mirrored_total < Duration::from_secs(3),
        "the client waited for the mirror: {mirrored_total:?}"
    );
    assert!(
        p50(mirrored) < SLOW / 2,
        "the client waited for the mirror (p50)"
    );
    wait_count(&canary, 20).await;
    assert_eq!(settled_count(&canary).await, 20, "one copy per request");
    for seen in canary.seen() {
        let host = seen.headers.get("host").unwrap().to_str().unwrap();
        assert!(host.ends_with("-shadow"), "copy Host {host:?}");
    }
    assert_eq!(stable.count(), 40, "the primary still gets every request");

    // 50%: about half of 400 requests are copied.
    put_mirror("canary", 50).await;
    let before = canary.count();
    let counts = tally(&url, 400, 8).await;
    assert_eq!(counts.get("stable\n"), Some(&400), "{counts:?}");
    let copies = settled_count(&canary).await - before;
    eprintln!("mirror: 50% copied {copies} of 400 requests");
    assert!(
        (140..=260).contains(&copies),
        "a 50% mirror copied {copies} of 400"
    );

    // A mirror to a dead endpoint never makes the client fail.
    put_mirror("dead", 100).await;
    let t0 = Instant::now();
    sequential_stable(&client, &url, 50).await;
    let counts = tally(&url, 200, 8).await;
    assert_eq!(counts.get("stable\n"), Some(&200), "{counts:?}");
    eprintln!(
        "mirror: 250 requests with a mirror to a dead endpoint took {:?}",
        t0.elapsed()
    );

    // Back to the canary (copies flow), then DELETE: no more copies.
    put_mirror("canary", 100).await;
    let before = settled_count(&canary).await;
    sequential_stable(&client, &url, 5).await;
    wait_count(&canary, before + 5).await;
    let (status, v) = admin(&admin_client, Method::DELETE, &mirror_url, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let before = settled_count(&canary).await;
    sequential_stable(&client, &url, 50).await;
    assert_eq!(
        settled_count(&canary).await,
        before,
        "copies after the mirror route was deleted"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. A config file that fails validation, written under load, is rejected; traffic is unchanged.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_under_load_is_rejected_and_traffic_unchanged() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let yaml = |s: u32, c: u32| {
        with_free_admin(&two_subset_config(
            stable.addr,
            canary.addr,
            &primary_rule(s, c),
        ))
    };
    let app = spawn_app(&yaml(100, 0)).await;
    let admin_client = http1_client();
    let g0 = generation(&state(&admin_client, &app).await);

    let load = Load::start(app.url("/"), 8, 0, Duration::from_secs(30));
    load.wait_served(200, Duration::from_secs(5)).await;

    // Weights summing to 0.
    let t0 = Instant::now();
    write_by_rename(&app.config_path, &yaml(0, 0));
    let (s, _) = wait_reloads(&admin_client, &app, 1, t0).await;
    assert_eq!(reloads(&s), (0, 1), "{s}");
    assert_eq!(s["last_reload"]["result"], "error", "{s}");
    let errors = s["last_reload"]["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| {
            let e = e.as_str().unwrap();
            e.starts_with("routes[0].http[0].route") && e.contains("sum to 0")
        }),
        "the error names the field: {errors:?}"
    );
    assert_eq!(generation(&s), g0, "{s}");
    assert_eq!(rule(&s, "primary")["weights"], weights_json(100, 0), "{s}");
    let target = load.served() + 300;
    load.wait_served(target, Duration::from_secs(5)).await;

    // Not YAML at all.
    let t0 = Instant::now();
    write_by_rename(&app.config_path, "routes: [ {\n  this is: not: yaml\n");
    let (s, _) = wait_reloads(&admin_client, &app, 2, t0).await;
    assert_eq!(reloads(&s), (0, 2), "{s}");
    assert_eq!(s["last_reload"]["result"], "error", "{s}");
    assert_eq!(generation(&s), g0, "{s}");
    let target = load.served() + 300;
    load.wait_served(target, Duration::from_secs(5)).await;

    let t = load.finish().await;
    eprintln!(
        "invalid file under load: {} requests, failures {}, non-2xx {}, bodies {:?}",
        t.total(),
        t.failures,
        t.non_2xx,
        t.bodies
    );
    assert_clean(&t, &["stable\n"]);
    assert!(t.total() >= 800, "{} requests", t.total());

    // A good file afterwards is applied.
    let t0 = Instant::now();
    write_by_rename(&app.config_path, &yaml(0, 100));
    let (s, _) = wait_reloads(&admin_client, &app, 3, t0).await;
    assert_eq!(reloads(&s), (1, 2), "{s}");
    assert_eq!(s["last_reload"]["result"], "ok", "{s}");
    assert_eq!(generation(&s), g0 + 1, "{s}");
    let (status, body) = try_get(&http1_client(), &app.url("/"), &[]).await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "canary\n"));
}

// ---------------------------------------------------------------------------------------------
// 7. A config file that is a symlink into another directory, edited there.
// ---------------------------------------------------------------------------------------------

/// `config.yaml` is a symlink to a file in another directory (as with stow, Nix, Ansible-managed
/// links, or an editor that follows symlinks), and the file behind it is rewritten there.
/// The watcher also watches the target's directory, so the change applies at once rather than
/// at the 2 s fallback poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_behind_a_symlink_into_another_directory_applies_quickly() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let yaml = |s: u32, c: u32| {
        with_free_admin(&two_subset_config(
            stable.addr,
            canary.addr,
            &primary_rule(s, c),
        ))
    };
    let dir = temp_dir("symlinked");
    let real_dir = dir.join("real");
    let link_dir = dir.join("etc");
    std::fs::create_dir_all(&real_dir).unwrap();
    std::fs::create_dir_all(&link_dir).unwrap();
    let real = real_dir.join("config.yaml");
    std::fs::write(&real, yaml(100, 0)).unwrap();
    let config_path = link_dir.join("config.yaml");
    std::os::unix::fs::symlink(&real, &config_path).unwrap();
    let app = start_app_at(dir, config_path).await;
    let admin_client = http1_client();

    // The watcher's fallback poll ticks once right when it starts, so a first edit could be seen
    // by that tick by chance; measure the second edit, made after the first one applied.
    let mut took = Duration::ZERO;
    for (n, (s, c)) in [(0, 100), (100, 0)].into_iter().enumerate() {
        let t0 = Instant::now();
        write_by_rename(&real, &yaml(s, c));
        let (state, t) = wait_reloads(&admin_client, &app, n as u64 + 1, t0).await;
        assert_eq!(reloads(&state), (n as u64 + 1, 0), "{state}");
        eprintln!("edit {n} behind a symlink into another directory -> reload applied: {t:?}");
        took = t;
    }
    assert!(
        took < Duration::from_secs(1),
        "the edit took {took:?} to apply: only the fallback poll saw it"
    );
}

/// The weight fast path: an API weight change on a route that also holds a regex rule rebuilds
/// only the weighted rule. What a client sees must be what full validation would give: the
/// new split served at once, the regex rule still matching, the weight series and the compile
/// time counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_changes_beside_a_regex_rule_serve_the_new_split_and_keep_the_regex() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let yaml = svc_config(
        &(subset("stable", stable.addr) + &subset("canary", canary.addr)),
        "      - name: by-path
        match: [{ uri: { regex: \"/r/[a-z]+\" } }]
        route: [{ destination: { service: svc, subset: canary } }]
      - name: primary
        route:
          - { destination: { service: svc, subset: stable }, weight: 100 }
          - { destination: { service: svc, subset: canary }, weight: 0 }
",
    );
    let app = spawn_app(&with_free_admin(&yaml)).await;
    let admin_client = http1_client();
    let weight_line = |subset: &str| {
        let text = app.app.control.runtime().load().hub.encode();
        let start = format!(
            "splitgate_route_weight{{route=\"main\",rule=\"primary\",service=\"svc\",subset=\"{subset}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(start.as_str()).map(str::to_string))
            .unwrap_or_else(|| panic!("no {start} in\n{text}"))
    };
    let g0 = app.app.control.generation();
    for (round, (s, c)) in [(0, 100), (100, 0), (25, 75)].into_iter().enumerate() {
        let g = set_weights(&admin_client, &app, &[("stable", s), ("canary", c)]).await;
        assert_eq!(g, g0 + 1 + round as u64);
        let got = tally(&app.url("/"), 200, 4).await;
        let to_canary = got.get("canary\n").copied().unwrap_or(0);
        match c {
            100 => assert_eq!(to_canary, 200, "{got:?}"),
            0 => assert_eq!(to_canary, 0, "{got:?}"),
            _ => assert!((110..=190).contains(&to_canary), "{got:?}"),
        }
        let by_regex = tally(&app.url("/r/abc"), 20, 2).await;
        assert_eq!(by_regex.get("canary\n"), Some(&20), "{by_regex:?}");
        assert_eq!(weight_line("canary"), c.to_string());
        assert_eq!(weight_line("stable"), s.to_string());
    }
    let text = app.app.control.runtime().load().hub.encode();
    assert!(
        text.lines()
            .any(|l| l == "splitgate_config_compile_seconds_count 3"),
        "{text}"
    );
}
