//! SPEC §5 end to end: a real Prometheus scrapes the gateway's `/stats/prometheus`, and the PromQL
//! that Istio users (Kiali, Flagger, Argo Rollouts analysis templates) run gives the expected
//! numbers for both `reporter="source"` and `reporter="destination"`.
//!
//! Needs the `prometheus` binary (Debian's package; `tests/run.sh` installs it).

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Latency the canary adds to every answer.
const CANARY_DELAY: Duration = Duration::from_millis(30);
/// Requests sent to each subset.
const PER_SUBSET: usize = 400;
/// Client tasks per subset.
const WORKERS: usize = 4;
/// One request per worker per period: 100 requests per worker take about 4 s.
const PACE: Duration = Duration::from_millis(40);
/// The service's host, i.e. `destination_service`.
const HOST: &str = "svc.default.svc.cluster.local";

// Prometheus drops labels whose value is empty, so of `ISTIO_LABELS` (tests/common),
// `grpc_response_status` (`""` for plain HTTP) is not expected in what it stores.

// ---------------------------------------------------------------------------------------------
// The canary upstream: a fixed delay, and 500 for exactly every 4th request.

// ---------------------------------------------------------------------------------------------
// Prometheus as a child process.

/// A running Prometheus; killed (and its directory removed) on drop, even when the test fails.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    base: String,
}

impl Prometheus {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- prometheus log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn prometheus_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("prometheus"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the `prometheus` binary is not on PATH: this test scrapes the gateway with a real \
             Prometheus. Run tests/run.sh (it installs it) or `sudo apt-get install prometheus`."
        )
    })
}

/// Starts Prometheus scraping `target` every second, on a free loopback port.
fn start_prometheus(target: SocketAddr) -> Prometheus {
    let bin = prometheus_binary();
    let dir = temp_dir("prometheus");
    let config = format!(
        "global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: splitgate
    metrics_path: /stats/prometheus
    static_configs:
      - targets: [\"{target}\"]
"
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let child = Command::new(&bin)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    Prometheus {
        child,
        dir,
        base: format!("http://{listen}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Talking to Prometheus's HTTP API.

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// GET `url`: status and body, or why not (bounded by a timeout).
async fn fetch(client: &Client, url: &str) -> Result<(u16, String), String> {
    let req = Request::get(url).body(Full::default()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| format!("GET {url}: timed out"))?
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .map_err(|_| format!("GET {url}: body timed out"))?
        .map_err(|e| format!("GET {url}: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One element of an instant vector: its labels and value.
#[derive(Debug, Clone)]
struct Element {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Runs an instant query (at `time`, Unix seconds, or now) and returns its vector.
async fn query(
    client: &Client,
    prom: &Prometheus,
    promql: &str,
    time: Option<f64>,
) -> Vec<Element> {
    let mut url = format!("{}/api/v1/query?query={}", prom.base, encode(promql));
    if let Some(t) = time {
        url.push_str(&format!("&time={t:.3}"));
    }
    let (status, body) = fetch(client, &url).await.unwrap_or_else(|e| panic!("{e}"));
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("query {promql}: not JSON ({e}): {body}"));
    assert!(
        status == 200 && v["status"] == "success",
        "query {promql}: {status} {body}"
    );
    assert_eq!(v["data"]["resultType"], "vector", "query {promql}: {body}");
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Element {
            labels: e["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            value: e["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN),
        })
        .collect()
}

/// A query aggregated `by (destination_version)`, as version → value.
async fn by_version(client: &Client, prom: &Prometheus, promql: &str) -> BTreeMap<String, f64> {
    query(client, prom, promql, None)
        .await
        .into_iter()
        .map(|e| {
            let v = e.labels.get("destination_version").cloned();
            (v.unwrap_or_else(|| "<none>".into()), e.value)
        })
        .collect()
}

/// The scrape target as Prometheus sees it: `(health, lastError)`.
async fn target_state(client: &Client, prom: &Prometheus) -> Option<(String, String)> {
    let (status, body) = fetch(client, &format!("{}/api/v1/targets", prom.base))
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    let t = v["data"]["activeTargets"].as_array()?.first()?.clone();
    Some((
        t["health"].as_str()?.to_string(),
        t["lastError"].as_str().unwrap_or_default().to_string(),
    ))
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Traffic.

/// Sends `PER_SUBSET` requests to one subset over `WORKERS` paced keep-alive connections;
/// returns how many answers had each status.
async fn drive(
    url: String,
    headers: &'static [(&'static str, &'static str)],
) -> BTreeMap<u16, usize> {
    let client = http1_client();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(PACE);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut statuses = BTreeMap::new();
                for _ in 0..PER_SUBSET / WORKERS {
                    tick.tick().await;
                    let a = get(&client, &url, headers).await;
                    *statuses.entry(a.status.as_u16()).or_insert(0) += 1;
                }
                statuses
            })
        })
        .collect();
    let mut total = BTreeMap::new();
    for t in tasks {
        for (code, n) in t.await.unwrap() {
            *total.entry(code).or_insert(0) += n;
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// What the PromQL of one reporter gives.
#[derive(Debug, Default)]
struct Measured {
    totals: BTreeMap<String, f64>,
    success: BTreeMap<String, f64>,
    p95: BTreeMap<String, f64>,
    duration_counts: BTreeMap<String, f64>,
}

async fn measure(client: &Client, prom: &Prometheus, reporter: &str) -> Measured {
    let sel = format!("reporter=\"{reporter}\"");
    Measured {
        totals: by_version(
            client,
            prom,
            &format!("sum by (destination_version) (istio_requests_total{{{sel}}})"),
        )
        .await,
        success: by_version(
            client,
            prom,
            &format!(
                "sum by (destination_version) (istio_requests_total{{{sel},response_code!~\"5.*\"}}) \
                 / sum by (destination_version) (istio_requests_total{{{sel}}})"
            ),
        )
        .await,
        p95: by_version(
            client,
            prom,
            &format!(
                "histogram_quantile(0.95, sum by (le, destination_version) \
                 (istio_request_duration_milliseconds_bucket{{{sel}}}))"
            ),
        )
        .await,
        duration_counts: by_version(
            client,
            prom,
            &format!(
                "sum by (destination_version) (istio_request_duration_milliseconds_count{{{sel}}})"
            ),
        )
        .await,
    }
}

fn get_v(m: &BTreeMap<String, f64>, version: &str) -> f64 {
    m.get(version).copied().unwrap_or(f64::NAN)
}

/// Whether the measurements are the expected ones (all traffic scraped).
fn complete(m: &Measured) -> bool {
    let n = PER_SUBSET as f64;
    get_v(&m.totals, "v1") == n
        && get_v(&m.totals, "v2") == n
        && get_v(&m.duration_counts, "v1") == n
        && get_v(&m.duration_counts, "v2") == n
}

fn check(reporter: &str, m: &Measured) {
    let n = PER_SUBSET as f64;
    assert_eq!(
        m.totals.len(),
        2,
        "{reporter}: exactly two destination versions expected: {m:?}"
    );
    assert_eq!(get_v(&m.totals, "v1"), n, "{reporter}: v1 total: {m:?}");
    assert_eq!(get_v(&m.totals, "v2"), n, "{reporter}: v2 total: {m:?}");
    let (s1, s2) = (get_v(&m.success, "v1"), get_v(&m.success, "v2"));
    assert!(
        (s1 - 1.0).abs() < 0.001,
        "{reporter}: v1 success rate {s1}: {m:?}"
    );
    assert!(
        (s2 - 0.75).abs() < 0.001,
        "{reporter}: v2 success rate {s2}: {m:?}"
    );
    let (p1, p2) = (get_v(&m.p95, "v1"), get_v(&m.p95, "v2"));
    assert!(p1 < 5.0, "{reporter}: v1 p95 {p1} ms, expected < 5: {m:?}");
    assert!(
        p2 > 25.0 && p2 <= 50.0,
        "{reporter}: v2 p95 {p2} ms, expected in the (25, 50] bucket: {m:?}"
    );
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_istio_metrics_that_istio_promql_understands() {
    let started = Instant::now();
    let stable = spawn_upstream("stable", Behavior::Name).await;
    // Each answer waits `CANARY_DELAY`; every 4th request gets 500.
    let canary = spawn_upstream(
        "canary",
        Behavior::FailEvery {
            k: 4,
            status: 500,
            delay: CANARY_DELAY,
        },
    )
    .await;
    let canary_addr = canary.addr;
    let rules = "      - name: canary-by-header
        match:
          - headers: { x-canary: { exact: always } }
        route:
          - destination: { service: svc, subset: canary }
      - name: primary
        route:
          - destination: { service: svc, subset: stable }
";
    let yaml = format!(
        "{}\nmetrics: {{ address: \"127.0.0.1:0\", reporter: both }}\n",
        two_subset_config(stable.addr, canary_addr, rules)
    );
    let app = spawn_app(&yaml).await;
    let metrics_addr = app.app.metrics_addr;

    let prom = start_prometheus(metrics_addr);
    let client: Client = http1_client();

    // Ready, bounded.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = fetch(&client, &format!("{}/-/ready", prom.base)).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus not ready after 20 s; log:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "prometheus ready at {} after {:?}",
        prom.base,
        started.elapsed()
    );

    // The target is scraped and healthy before any traffic.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match target_state(&client, &prom).await {
            Some((h, _)) if h == "up" => break,
            state => assert!(
                Instant::now() < deadline,
                "the gateway's metrics target is not up after 15 s: {state:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Traffic: 400 to stable, 400 to canary (every 4th of which gets 500), over about 4 s.
    let traffic_start = now_unix();
    let (to_stable, to_canary) = tokio::join!(
        drive(app.url("/"), &[]),
        drive(app.url("/"), &[("x-canary", "always")]),
    );
    let traffic_end = now_unix();
    eprintln!(
        "traffic: {:.1} s; stable answers {to_stable:?}, canary answers {to_canary:?}",
        traffic_end - traffic_start
    );
    assert_eq!(to_stable, BTreeMap::from([(200, PER_SUBSET)]));
    assert_eq!(
        to_canary,
        BTreeMap::from([(200, PER_SUBSET * 3 / 4), (500, PER_SUBSET / 4)])
    );
    assert_eq!(stable.count(), PER_SUBSET);
    assert_eq!(canary.count(), PER_SUBSET);

    // Poll until every request is in Prometheus, for both reporters (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (source, destination) = loop {
        let s = measure(&client, &prom, "source").await;
        let d = measure(&client, &prom, "destination").await;
        if complete(&s) && complete(&d) {
            break (s, d);
        }
        if Instant::now() > deadline {
            let targets = target_state(&client, &prom).await;
            panic!(
                "Prometheus did not see all {PER_SUBSET}+{PER_SUBSET} requests within 30 s;\n\
                 source: {s:?}\ndestination: {d:?}\ntarget: {targets:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (reporter, m) in [("source", &source), ("destination", &destination)] {
        eprintln!(
            "reporter={reporter}: totals {:?}, success rate {:?}, p95 ms {:?}",
            m.totals, m.success, m.p95
        );
    }

    // The exposition parsed cleanly all along.
    let (health, last_error) = target_state(&client, &prom)
        .await
        .expect("Prometheus lists the target");
    eprintln!("target: health {health}, lastError {last_error:?}");
    assert_eq!(health, "up");
    assert_eq!(last_error, "", "Prometheus failed to scrape the gateway");

    check("source", &source);
    check("destination", &destination);

    // Every series carries the Istio labels (Prometheus drops empty-valued ones, so
    // `grpc_response_status=""` is absent), and `connection_security_policy` depends on the
    // reporter.
    let series = query(&client, &prom, "istio_requests_total", None).await;
    assert!(!series.is_empty());
    for s in &series {
        for label in ISTIO_LABELS {
            let value = s.labels.get(label).map(String::as_str);
            match label {
                "grpc_response_status" => assert_eq!(value, None, "{s:?}"),
                _ => assert!(
                    value.is_some_and(|v| !v.is_empty()),
                    "{label} missing: {s:?}"
                ),
            }
        }
        let policy = match s.labels["reporter"].as_str() {
            "source" => "unknown",
            "destination" => "none",
            other => panic!("unexpected reporter {other}: {s:?}"),
        };
        assert_eq!(s.labels["connection_security_policy"], policy, "{s:?}");
        assert_eq!(s.labels["destination_service"], HOST, "{s:?}");
        assert_eq!(s.labels["destination_service_name"], "svc", "{s:?}");
        assert_eq!(
            s.labels["destination_service_namespace"], "default",
            "{s:?}"
        );
    }
    let mut kinds: Vec<String> = series
        .iter()
        .map(|s| {
            format!(
                "{}/{}/{}",
                s.labels["reporter"], s.labels["destination_version"], s.labels["response_code"]
            )
        })
        .collect();
    kinds.sort();
    eprintln!("series: {kinds:?}");
    assert_eq!(
        kinds,
        [
            "destination/v1/200",
            "destination/v2/200",
            "destination/v2/500",
            "source/v1/200",
            "source/v2/200",
            "source/v2/500",
        ]
    );

    // Argo Rollouts / Flagger style rate queries over the service host.
    for reporter in ["source", "destination"] {
        let svc = format!("reporter=\"{reporter}\",destination_service=~\"{HOST}\"");
        // `rate` over a 1m window now: all of the traffic is in it.
        let rate_q = format!(
            "sum(rate(istio_requests_total{{{svc},response_code!~\"5.*\"}}[1m])) \
             / sum(rate(istio_requests_total{{{svc}}}[1m]))"
        );
        let rate = query(&client, &prom, &rate_q, None).await;
        assert_eq!(rate.len(), 1, "{rate_q}: {rate:?}");
        let r = rate[0].value;
        eprintln!("reporter={reporter}: rate[1m] success ratio now = {r}");
        assert!((0.0..=1.0).contains(&r), "{rate_q} = {r}");
        // `irate` looks at the last two samples only: evaluate it at the end of the traffic (as
        // an analysis run would, while the canary takes traffic), not after it, when the
        // counters stand still and the ratio is 0/0.
        let irate_q = format!(
            "sum(irate(istio_requests_total{{{svc},response_code!~\"5.*\"}}[1m])) \
             / sum(irate(istio_requests_total{{{svc}}}[1m]))"
        );
        let irate = query(&client, &prom, &irate_q, Some(traffic_end)).await;
        assert_eq!(irate.len(), 1, "{irate_q} at end of traffic: {irate:?}");
        let i = irate[0].value;
        eprintln!("reporter={reporter}: irate[1m] success ratio at end of traffic = {i}");
        assert!((0.0..=1.0).contains(&i), "{irate_q} = {i}");
    }

    eprintln!("done in {:?}", started.elapsed());
    drop(prom);
    drop(app);
}
