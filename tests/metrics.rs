//! Metrics as a user sees them (SPEC §5 and `/v1/analysis` of §4): what a scrape of
//! `http://<metrics>/stats/prometheus` shows after known traffic, label by label and count by
//! count, across reporters, reloads and the gateway's own metrics, and what `/v1/analysis` says
//! about the same traffic.
//!
//! Requests are recorded when their response body ends (gateway-made errors at once), so every
//! response is read to its end before a scrape; no test sleeps to let metrics "settle".

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

type HttpClient = Client<HttpConnector, Full<Bytes>>;
/// A sample's labels, in order.
type Labels = Vec<(String, String)>;

/// Bound on any one exchange with the gateway, its admin API or its metrics endpoint.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for something that gives no signal (the file watcher, a closed connection).
const EVENTUALLY: Duration = Duration::from_secs(10);

/// The three Istio histograms.
const ISTIO_HISTOGRAMS: [&str; 3] = [
    "istio_request_duration_milliseconds",
    "istio_request_bytes",
    "istio_response_bytes",
];

/// Envoy's bucket boundaries, then `+Inf`.
const ENVOY_LE: [f64; 20] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
    60000.0,
    300000.0,
    600000.0,
    1800000.0,
    3600000.0,
    f64::INFINITY,
];

// ---------------------------------------------------------------------------------------------
// The text exposition: a small strict parser.
// ---------------------------------------------------------------------------------------------

/// One sample line: `name{k="v",...} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    /// Labels in the order they were written.
    labels: Labels,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The labels without `le` (histogram buckets), in order.
    fn labels_but_le(&self) -> Labels {
        self.labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect()
    }

    fn le(&self) -> f64 {
        let le = self
            .label("le")
            .unwrap_or_else(|| panic!("bucket without le: {self:?}"));
        parse_value(le).unwrap_or_else(|e| panic!("le {le:?}: {e}"))
    }

    fn matches(&self, filter: &[(&str, &str)]) -> bool {
        filter.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// A parsed scrape.
#[derive(Debug)]
struct Exposition {
    text: String,
    samples: Vec<Sample>,
    /// Family name → type, from `# TYPE` lines.
    types: BTreeMap<String, String>,
}

impl Exposition {
    fn named(&self, name: &str) -> impl Iterator<Item = &Sample> + '_ {
        let name = name.to_string();
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// Sum of the values of samples `name` whose labels include `filter`.
    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.named(name)
            .filter(|s| s.matches(filter))
            .map(|s| s.value)
            .sum()
    }

    /// The one sample `name` with exactly these labels (in this order).
    fn exact(&self, name: &str, labels: &[(String, String)]) -> Option<&Sample> {
        let mut found = self.named(name).filter(|s| s.labels == labels);
        let first = found.next();
        assert!(
            found.next().is_none(),
            "{name}{labels:?} appears twice in\n{}",
            self.text
        );
        first
    }

    /// Every sample of the Istio families.
    fn istio(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| s.name.starts_with("istio_"))
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
            && !s.is_empty() =>
        {
            s.parse::<f64>().map_err(|e| format!("{s:?}: {e}"))
        }
        _ => Err(format!("{s:?} is not a number")),
    }
}

/// Parses `name{k="v",...} value` (or `name value`). Label values may hold `\"`, `\\` and `\n`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value in {line:?}"))?;
    let name = &line[..name_end];
    if !is_name(name) {
        return Err(format!("bad metric name {name:?} in {line:?}"));
    }
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let mut consumed = None;
        if let Some((i, '}')) = chars.peek().copied() {
            chars.next();
            consumed = Some(i + 1);
        }
        while consumed.is_none() {
            // Label name up to `=`.
            let mut key = String::new();
            loop {
                match chars.next() {
                    Some((_, '=')) => break,
                    Some((_, c)) => key.push(c),
                    None => return Err(format!("unterminated label name in {line:?}")),
                }
            }
            if !is_name(&key) || key.contains(':') {
                return Err(format!("bad label name {key:?} in {line:?}"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} has no opening quote in {line:?}"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '"')) => value.push('"'),
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in {line:?}")),
                    },
                    Some((_, '\n')) => return Err(format!("raw newline in {line:?}")),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("unterminated label value in {line:?}")),
                }
            }
            if labels.iter().any(|(k, _)| *k == key) {
                return Err(format!("label {key} twice in {line:?}"));
            }
            labels.push((key, value));
            match chars.next() {
                Some((_, ',')) => {}
                Some((i, '}')) => consumed = Some(i + 1),
                other => {
                    return Err(format!(
                        "expected , or }} after a label, got {other:?} in {line:?}"
                    ))
                }
            }
        }
        rest = &after[consumed.unwrap_or_default()..];
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("no space before the value in {line:?}"))?;
    if value.contains(' ') {
        return Err(format!("more than a value after the labels in {line:?}"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value: parse_value(value)?,
    })
}

/// The suffixes a sample of a family of type `ty` may carry.
fn suffixes(ty: &str) -> &'static [&'static str] {
    match ty {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_count", "_sum", "_created"],
        _ => &[""],
    }
}

/// Parses a whole exposition: every line a `# HELP`/`# TYPE`/`# UNIT` comment or a sample of a
/// declared family, the types counter/gauge/histogram, and `# EOF` last.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .or_else(|| text.strip_suffix("# EOF"))
        .ok_or_else(|| "the exposition does not end with # EOF".to_string())?;
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in body.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (kind, family) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            match kind {
                "TYPE" => {
                    let ty = parts.next().unwrap_or("");
                    if !matches!(ty, "counter" | "gauge" | "histogram") {
                        return Err(format!("family {family} has type {ty:?}: {line:?}"));
                    }
                    if !is_name(family) || types.insert(family.into(), ty.into()).is_some() {
                        return Err(format!("bad or repeated TYPE line {line:?}"));
                    }
                }
                "HELP" | "UNIT" if is_name(family) => {}
                _ => return Err(format!("unexpected comment {line:?}")),
            }
            continue;
        }
        if line.trim().is_empty() {
            return Err("an empty line inside the exposition".into());
        }
        let sample = parse_sample(line)?;
        let declared = types.iter().any(|(family, ty)| {
            suffixes(ty)
                .iter()
                .any(|suffix| sample.name == format!("{family}{suffix}"))
        });
        if !declared {
            return Err(format!("sample of no declared family: {line:?}"));
        }
        samples.push(sample);
    }
    Ok(Exposition {
        text: text.to_string(),
        samples,
        types,
    })
}

#[test]
fn the_parser_reads_escapes_and_refuses_broken_lines() {
    let s = parse_sample(r#"m_total{a="x\"y",b="back\\slash",c="l\nm",d=""} 3"#).unwrap();
    assert_eq!(s.name, "m_total");
    assert_eq!(s.label("a"), Some("x\"y"));
    assert_eq!(s.label("b"), Some("back\\slash"));
    assert_eq!(s.label("c"), Some("l\nm"));
    assert_eq!(s.label("d"), Some(""));
    assert_eq!(s.value, 3.0);
    assert_eq!(parse_sample("g 1.5").unwrap().value, 1.5);
    assert_eq!(
        parse_sample(r#"h_bucket{le="+Inf"} 2"#).unwrap().le(),
        f64::INFINITY
    );
    for bad in [
        r#"m{a="x} 1"#,
        r#"m{a=x} 1"#,
        r#"m{a="x"} one"#,
        r#"m{a="x"}1"#,
        r#"m{a="x" 1"#,
        r#"m{a="x",a="y"} 1"#,
        r#"m{a="\q"} 1"#,
        "9m 1",
        "m",
    ] {
        assert!(parse_sample(bad).is_err(), "{bad:?} should not parse");
    }
    assert!(parse_exposition("# TYPE m counter\nm_total 1\n# EOF\n").is_ok());
    assert!(parse_exposition("# TYPE m counter\nm_total 1\n").is_err());
    assert!(parse_exposition("# TYPE m summary\nm 1\n# EOF\n").is_err());
    assert!(parse_exposition("# TYPE m counter\nother 1\n# EOF\n").is_err());
}

// ---------------------------------------------------------------------------------------------
// Talking to the gateway.
// ---------------------------------------------------------------------------------------------

/// Awaits `fut`, failing the test after `EXCHANGE_TIMEOUT`.
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(EXCHANGE_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {EXCHANGE_TIMEOUT:?}"))
}

/// Polls `check` every 20 ms until it holds; fails after `EVENTUALLY`. Only for what gives no
/// signal (the file watcher, a connection closing).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + EVENTUALLY;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {EVENTUALLY:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A GET through the gateway with extra headers, read to its end.
async fn call(client: &HttpClient, app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Answer {
    bounded(path, get(client, &app.url(path), headers)).await
}

/// GET on the metrics endpoint: status, content type, body.
async fn scrape_raw(addr: SocketAddr, path: &str) -> (StatusCode, String, String) {
    let client = http1_client();
    let a = bounded("scrape", get(&client, &format!("http://{addr}{path}"), &[])).await;
    let ct = a
        .headers
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    (a.status, ct, a.body)
}

/// Scrapes `/stats/prometheus` and parses it (failing the test on any malformed line).
async fn scrape(app: &TestApp) -> Exposition {
    let (status, _, body) = scrape_raw(app.app.metrics_addr, "/stats/prometheus").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n--- exposition ---\n{body}"))
}

/// One admin call with an optional JSON body: `(status, JSON answer)`.
async fn admin(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let client = http1_client();
    let mut b = Request::builder().method(method).uri(app.admin_url(path));
    let body = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Full::new(Bytes::from(v.to_string()))
        }
        None => Full::default(),
    };
    let a = bounded(path, send(&client, b.body(body).unwrap())).await;
    let v = if a.body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&a.body)
            .unwrap_or_else(|e| panic!("admin answer to {path} is not JSON ({e}): {}", a.body))
    };
    (a.status, v)
}

/// Replaces the config file like an editor does (temp file, then rename), so the watcher never
/// reads a half-written file.
fn write_by_rename(path: &Path, yaml: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, with_free_admin(yaml)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A `metrics:` section on a free port with extra settings (YAML lines indented by two).
fn metrics_section(extra: &str) -> String {
    format!("metrics:\n  address: \"127.0.0.1:0\"\n{extra}")
}

// ---------------------------------------------------------------------------------------------
// Expected label sets.
// ---------------------------------------------------------------------------------------------

/// The gateway's identity (`metrics.workload`, `metrics.cluster`).
struct Source {
    workload: &'static str,
    namespace: &'static str,
    app: &'static str,
    version: &'static str,
    cluster: &'static str,
}

/// SPEC's defaults.
const DEFAULT_SOURCE: Source = Source {
    workload: "splitgate",
    namespace: "istio-system",
    app: "splitgate",
    version: "v1",
    cluster: "Kubernetes",
};

/// The destination labels of one series.
#[derive(Clone)]
struct Dest {
    workload: String,
    namespace: String,
    app: String,
    version: String,
    service: String,
    canonical_service: String,
    canonical_revision: String,
    service_name: String,
    service_namespace: String,
    cluster: String,
}

impl Dest {
    /// A subset of a service whose labels give `app` and `version` and no canonical labels.
    fn subset(
        service_name: &str,
        namespace: &str,
        host: &str,
        workload: &str,
        app: &str,
        version: &str,
        cluster: &str,
    ) -> Self {
        Dest {
            workload: workload.into(),
            namespace: namespace.into(),
            app: app.into(),
            version: version.into(),
            service: host.into(),
            canonical_service: app.into(),
            canonical_revision: version.into(),
            service_name: service_name.into(),
            service_namespace: namespace.into(),
            cluster: cluster.into(),
        }
    }

    /// A request that matched no route, for `host`: everything else `unknown`.
    fn no_route(host: &str) -> Self {
        let u = || "unknown".to_string();
        Dest {
            workload: u(),
            namespace: u(),
            app: u(),
            version: u(),
            service: host.into(),
            canonical_service: u(),
            canonical_revision: u(),
            service_name: u(),
            service_namespace: u(),
            cluster: u(),
        }
    }
}

/// The 25 labels, in SPEC order, with the values SPEC §5 gives.
fn expected_labels(reporter: &str, src: &Source, d: &Dest, code: u16, flags: &str) -> Labels {
    let code = code.to_string();
    let csp = if reporter == "source" {
        "unknown"
    } else {
        "none"
    };
    let values: [&str; 25] = [
        reporter,
        src.workload,
        src.app,
        src.version,
        src.namespace,
        "unknown",
        src.app,
        src.version,
        src.cluster,
        &d.workload,
        &d.namespace,
        "unknown",
        &d.app,
        &d.version,
        &d.service,
        &d.canonical_service,
        &d.canonical_revision,
        &d.service_name,
        &d.service_namespace,
        &d.cluster,
        "http",
        &code,
        "",
        flags,
        csp,
    ];
    ISTIO_LABELS
        .iter()
        .zip(values)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Asserts that the Istio series of `exp` are exactly `expected` (label set → request count):
/// each label set has its counter and its three histograms (`_count`, `_sum` and 20 buckets)
/// with that count, and no other label set appears in any Istio family.
fn assert_istio_series(exp: &Exposition, expected: &[(Labels, f64)]) {
    let want: BTreeSet<&Labels> = expected.iter().map(|(l, _)| l).collect();
    for s in exp.istio() {
        assert_eq!(
            s.label("le").is_some(),
            s.name.ends_with("_bucket"),
            "le belongs on buckets only: {s:?}"
        );
        let names: Vec<&str> = s
            .labels
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| *k != "le")
            .collect();
        assert_eq!(
            names, ISTIO_LABELS,
            "labels of {} (in order, le aside): {:?}",
            s.name, s.labels
        );
        let got = s.labels_but_le();
        if !want.contains(&got) {
            // Name the labels that differ from the nearest expected set.
            let diff = |w: &Labels| -> Vec<String> {
                got.iter()
                    .zip(w.iter())
                    .filter(|(g, w)| g != w)
                    .map(|(g, w)| format!("{}: got {:?}, want {:?}", g.0, g.1, w.1))
                    .collect()
            };
            let nearest = want.iter().map(|w| diff(w)).min_by_key(Vec::len);
            panic!(
                "unexpected series {}{:?}\nnearest expected set differs in: {nearest:?}",
                s.name, s.labels
            );
        }
    }
    for (labels, count) in expected {
        let total = exp
            .exact("istio_requests_total", labels)
            .unwrap_or_else(|| panic!("no istio_requests_total{labels:?} in\n{}", exp.text));
        assert_eq!(total.value, *count, "istio_requests_total{labels:?}");
        for h in ISTIO_HISTOGRAMS {
            let n = exp
                .exact(&format!("{h}_count"), labels)
                .unwrap_or_else(|| panic!("no {h}_count{labels:?}"));
            assert_eq!(n.value, *count, "{h}_count{labels:?}");
            assert!(
                exp.exact(&format!("{h}_sum"), labels).is_some(),
                "no {h}_sum{labels:?}"
            );
            let buckets = exp
                .named(&format!("{h}_bucket"))
                .filter(|s| s.labels_but_le() == *labels)
                .count();
            assert_eq!(buckets, ENVOY_LE.len(), "{h}_bucket{labels:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The exposition.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposition_is_valid_openmetrics_on_both_paths() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Status(503)).await;
    let app = spawn_app(&two_subset_config(
        up.addr,
        canary.addr,
        "      - name: primary
        match: [ { headers: { x-canary: { exact: always } } } ]
        route: [ { destination: { service: svc, subset: canary } } ]
      - name: rest
        route: [ { destination: { service: svc, subset: stable } } ]
",
    ))
    .await;
    let client = http1_client();
    assert_eq!(call(&client, &app, "/a", &[]).await.status, 200);
    assert_eq!(
        call(&client, &app, "/b", &[("x-canary", "always")])
            .await
            .status,
        503
    );

    let (status, ct, body) = scrape_raw(app.app.metrics_addr, "/stats/prometheus").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        ct.starts_with("application/openmetrics-text"),
        "content-type {ct:?}"
    );
    assert!(
        body.ends_with("# EOF\n"),
        "ends with {:?}",
        &body[body.len().saturating_sub(40)..]
    );
    let exp = parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));

    let expected_types = [
        ("istio_requests", "counter"),
        ("istio_request_duration_milliseconds", "histogram"),
        ("istio_request_bytes", "histogram"),
        ("istio_response_bytes", "histogram"),
        ("splitgate_config_generation", "gauge"),
        ("splitgate_downstream_connections_active", "gauge"),
        ("splitgate_upstream_connections", "gauge"),
    ];
    for (family, ty) in expected_types {
        assert_eq!(
            exp.types.get(family).map(String::as_str),
            Some(ty),
            "# TYPE of {family}"
        );
    }
    // Families with no sample yet (no reload, no mirror) may be left out; when shown, typed right.
    for (family, ty) in [
        ("splitgate_config_reloads", "counter"),
        ("splitgate_mirror_requests", "counter"),
    ] {
        if let Some(t) = exp.types.get(family) {
            assert_eq!(t, ty, "# TYPE of {family}");
        }
    }
    // Nothing but the Istio families and splitgate's own.
    for family in exp.types.keys() {
        assert!(
            family.starts_with("istio_") || family.starts_with("splitgate_"),
            "unexpected family {family}"
        );
    }
    assert_eq!(exp.sum("istio_requests_total", &[]), 2.0, "{body}");
    for h in ISTIO_HISTOGRAMS {
        assert_eq!(exp.sum(&format!("{h}_count"), &[]), 2.0, "{h}_count");
    }

    let (status, ct2, body2) = scrape_raw(app.app.metrics_addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct2, ct, "content-type of /metrics");
    let exp2 = parse_exposition(&body2).unwrap_or_else(|e| panic!("{e}\n{body2}"));
    assert_eq!(exp2.types, exp.types, "families of /metrics");
    let series = |e: &Exposition| -> BTreeSet<(String, Labels)> {
        e.samples
            .iter()
            .map(|s| (s.name.clone(), s.labels.clone()))
            .collect()
    };
    assert_eq!(series(&exp2), series(&exp), "series of /metrics");
    let requests = |e: &Exposition| e.sum("istio_requests_total", &[]);
    assert_eq!(requests(&exp2), requests(&exp));

    let (status, _, _) = scrape_raw(app.app.metrics_addr, "/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------------
// 2. Labels.
// ---------------------------------------------------------------------------------------------

const REVIEWS_HOST: &str = "reviews.bookinfo.svc.cluster.local";

/// The custom identity of `labels_config`; the version holds a quote and a backslash, which the
/// exposition must escape.
const CUSTOM_SOURCE: Source = Source {
    workload: "edge-gw",
    namespace: "edge-ns",
    app: "edge-app",
    version: r#"v9 "q" \ x"#,
    cluster: "test-cluster-7",
};

/// Service `reviews` with five subsets reached by `x-case: <subset>` on host only.example.com
/// (stable by default), a custom `metrics.workload` and `metrics.cluster`.
fn labels_config(
    stable: SocketAddr,
    canary: SocketAddr,
    failing: SocketAddr,
    dead: SocketAddr,
    slow: SocketAddr,
) -> String {
    let mut rules = String::new();
    for case in ["canary", "failing", "dead", "slow"] {
        rules.push_str(&format!(
            "      - name: {case}
        match: [ {{ headers: {{ x-case: {{ exact: {case} }} }} }} ]
        route: [ {{ destination: {{ service: reviews, subset: {case} }} }} ]
"
        ));
        if case == "slow" {
            rules.push_str("        timeout: 100ms\n");
        }
    }
    format!(
        r#"listeners:
  - name: http
    address: 127.0.0.1:0
{metrics}services:
  reviews:
    namespace: bookinfo
    host: {REVIEWS_HOST}
    subsets:
      stable: {{ labels: {{ app: reviews-app, version: v1 }}, workload: reviews-v1-wl, endpoints: ["{stable}"] }}
      canary:
        labels:
          app: reviews-app
          version: v2
          "service.istio.io/canonical-name": reviews-canonical
          "service.istio.io/canonical-revision": rev-2
        endpoints: ["{canary}"]
      failing: {{ endpoints: ["{failing}"] }}
      dead: {{ labels: {{ version: v-dead }}, endpoints: ["{dead}"] }}
      slow: {{ labels: {{ app: slow-app }}, endpoints: ["{slow}"] }}
routes:
  - name: reviews
    hosts: ["only.example.com"]
    http:
{rules}      - name: primary
        route: [ {{ destination: {{ service: reviews, subset: stable }} }} ]
"#,
        metrics = metrics_section(&format!(
            "  reporter: source
  cluster: {cluster}
  workload:
    name: {name}
    namespace: {ns}
    app: {app}
    version: '{version}'
",
            cluster = CUSTOM_SOURCE.cluster,
            name = CUSTOM_SOURCE.workload,
            ns = CUSTOM_SOURCE.namespace,
            app = CUSTOM_SOURCE.app,
            version = CUSTOM_SOURCE.version,
        )),
    )
}

/// The five destinations of `labels_config`, with the code and flags their request gets.
fn labels_cases() -> Vec<(&'static str, Dest, u16, &'static str)> {
    let c = CUSTOM_SOURCE.cluster;
    let d = |workload: &str, app: &str, version: &str| {
        Dest::subset(
            "reviews",
            "bookinfo",
            REVIEWS_HOST,
            workload,
            app,
            version,
            c,
        )
    };
    let mut canary = d("reviews-canary", "reviews-app", "v2");
    canary.canonical_service = "reviews-canonical".into();
    canary.canonical_revision = "rev-2".into();
    vec![
        // Explicit workload, app and version labels.
        ("stable", d("reviews-v1-wl", "reviews-app", "v1"), 200, "-"),
        // Default workload; canonical labels.
        ("canary", canary, 200, "-"),
        // No labels at all: app = service key, version = subset name.
        // A 503 of the upstream's own, tried three times (Istio's default retries): URX.
        (
            "failing",
            d("reviews-failing", "reviews", "failing"),
            503,
            "URX",
        ),
        // Only a version label.
        ("dead", d("reviews-dead", "reviews", "v-dead"), 503, "UF"),
        // Only an app label.
        ("slow", d("reviews-slow", "slow-app", "slow"), 504, "UT"),
    ]
}

/// Starts the upstreams and the gateway of `labels_config`.
async fn labels_app() -> (TestApp, Vec<Upstream>) {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let failing = spawn_upstream("failing", Behavior::Status(503)).await;
    let slow = spawn_upstream("slow", Behavior::Slow(Duration::from_secs(2))).await;
    let dead = dead_addr().await;
    let yaml = labels_config(stable.addr, canary.addr, failing.addr, dead, slow.addr);
    let app = spawn_app(&yaml).await;
    (app, vec![stable, canary, failing, slow])
}

/// Sends one request per case of `labels_cases` and checks each answer.
async fn send_label_cases(app: &TestApp) {
    let client = http1_client();
    for (case, _, code, flags) in labels_cases() {
        let a = call(
            &client,
            app,
            "/labels",
            &[("host", "only.example.com"), ("x-case", case)],
        )
        .await;
        assert_eq!(a.status, code, "case {case}: body {:?}", a.body);
        // `URX` flags the upstream's own answer, once retries ran out on it.
        if flags == "-" || flags == "URX" {
            assert_eq!(a.body, format!("{case}\n"), "case {case}");
        } else {
            assert!(a.body.starts_with(flags), "case {case}: body {:?}", a.body);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_has_the_25_labels_with_spec_values() {
    let (app, _upstreams) = labels_app().await;
    send_label_cases(&app).await;

    let exp = scrape(&app).await;
    // The escaped version must come back as written in the config.
    assert!(
        exp.text.contains(r#"source_version="v9 \"q\" \\ x""#),
        "source_version is not escaped as OpenMetrics wants:\n{}",
        exp.text
    );
    let expected: Vec<_> = labels_cases()
        .iter()
        .map(|(_, d, code, flags)| {
            (
                expected_labels("source", &CUSTOM_SOURCE, d, *code, flags),
                1.0,
            )
        })
        .collect();
    assert_istio_series(&exp, &expected);

    // A second round counts on the same series.
    send_label_cases(&app).await;
    let exp = scrape(&app).await;
    let twice: Vec<_> = expected.into_iter().map(|(l, _)| (l, 2.0)).collect();
    assert_istio_series(&exp, &twice);
}

/// The no-route case, every label but `destination_cluster` (see the next test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_matching_no_route_is_counted_under_its_host() {
    let (app, upstreams) = labels_app().await;
    let client = http1_client();
    let a = call(&client, &app, "/nowhere", &[("host", "other.example.com")]).await;
    assert_eq!(a.status, 404, "{:?}", a.body);
    assert!(a.body.starts_with("NR"), "{:?}", a.body);
    // With a port in the Host header, the port is not part of destination_service.
    let a = call(
        &client,
        &app,
        "/nowhere",
        &[("host", "other.example.com:8080")],
    )
    .await;
    assert_eq!(a.status, 404, "{:?}", a.body);
    assert!(upstreams.iter().all(|u| u.count() == 0));

    let exp = scrape(&app).await;
    let series: Vec<&Sample> = exp.named("istio_requests_total").collect();
    assert_eq!(
        series.len(),
        1,
        "one series for both requests:\n{}",
        exp.text
    );
    let mut want = expected_labels(
        "source",
        &CUSTOM_SOURCE,
        &Dest::no_route("other.example.com"),
        404,
        "NR",
    );
    // destination_cluster is checked on its own, in the next test.
    let cluster_at = ISTIO_LABELS
        .iter()
        .position(|l| *l == "destination_cluster")
        .unwrap();
    want[cluster_at].1 = series[0].labels[cluster_at].1.clone();
    assert_istio_series(&exp, &[(want, 2.0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_matching_no_route_has_destination_cluster_unknown() {
    let (app, _upstreams) = labels_app().await;
    let client = http1_client();
    let a = call(&client, &app, "/nowhere", &[("host", "other.example.com")]).await;
    assert_eq!(a.status, 404, "{:?}", a.body);
    let exp = scrape(&app).await;
    let want = expected_labels(
        "source",
        &CUSTOM_SOURCE,
        &Dest::no_route("other.example.com"),
        404,
        "NR",
    );
    assert_istio_series(&exp, &[(want, 1.0)]);
}

// ---------------------------------------------------------------------------------------------
// 3. reporter: both.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reporter_both_counts_every_request_under_source_and_destination() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Status(503)).await;
    let dead = dead_addr().await;
    let yaml = format!(
        "listeners:
  - name: http
    address: 127.0.0.1:0
{}services:
  svc:
    namespace: default
    host: svc.default.svc.cluster.local
    subsets:
      stable: {{ labels: {{ version: v1 }}, endpoints: [\"{}\"] }}
      canary: {{ labels: {{ version: v2 }}, endpoints: [\"{}\"] }}
      dead: {{ endpoints: [\"{dead}\"] }}
routes:
  - name: main
    hosts: [\"svc.example.com\"]
    http:
      - name: canary
        match: [ {{ headers: {{ x-to: {{ exact: canary }} }} }} ]
        route: [ {{ destination: {{ service: svc, subset: canary }} }} ]
      - name: dead
        match: [ {{ headers: {{ x-to: {{ exact: dead }} }} }} ]
        route: [ {{ destination: {{ service: svc, subset: dead }} }} ]
      - name: primary
        route: [ {{ destination: {{ service: svc, subset: stable }} }} ]
",
        metrics_section("  reporter: both\n"),
        stable.addr,
        canary.addr,
    );
    let app = spawn_app(&yaml).await;
    let client = http1_client();
    let host = ("host", "svc.example.com");
    for _ in 0..5 {
        assert_eq!(call(&client, &app, "/", &[host]).await.status, 200);
    }
    for _ in 0..3 {
        let a = call(&client, &app, "/", &[host, ("x-to", "canary")]).await;
        assert_eq!(a.status, 503);
    }
    for _ in 0..2 {
        let a = call(&client, &app, "/", &[host, ("x-to", "dead")]).await;
        assert_eq!(a.status, 503);
        assert!(a.body.starts_with("UF"), "{:?}", a.body);
    }
    let a = call(&client, &app, "/", &[("host", "elsewhere.example.com")]).await;
    assert_eq!(a.status, 404);
    // Each 503 was tried three times (Istio's default retries) and is flagged URX.
    assert_eq!((stable.count(), canary.count()), (5, 9));

    let exp = scrape(&app).await;
    let d = |workload: &str, app: &str, version: &str| {
        Dest::subset(
            "svc",
            "default",
            "svc.default.svc.cluster.local",
            workload,
            app,
            version,
            "Kubernetes",
        )
    };
    let mut no_route = Dest::no_route("elsewhere.example.com");
    // Whatever the gateway puts in destination_cluster here is checked elsewhere.
    no_route.cluster = exp
        .named("istio_requests_total")
        .find(|s| s.label("response_flags") == Some("NR"))
        .and_then(|s| s.label("destination_cluster"))
        .unwrap_or("missing")
        .to_string();
    let cases = [
        (d("svc-stable", "svc", "v1"), 200, "-", 5.0),
        (d("svc-canary", "svc", "v2"), 503, "URX", 3.0),
        (d("svc-dead", "svc", "dead"), 503, "UF", 2.0),
        (no_route, 404, "NR", 1.0),
    ];
    let mut expected = Vec::new();
    for reporter in ["source", "destination"] {
        for (dest, code, flags, n) in &cases {
            expected.push((
                expected_labels(reporter, &DEFAULT_SOURCE, dest, *code, flags),
                *n,
            ));
        }
    }
    assert_istio_series(&exp, &expected);
    for reporter in ["source", "destination"] {
        let f = [("reporter", reporter)];
        assert_eq!(exp.sum("istio_requests_total", &f), 11.0, "{reporter}");
        for h in ISTIO_HISTOGRAMS {
            assert_eq!(exp.sum(&format!("{h}_count"), &f), 11.0, "{h} {reporter}");
        }
    }
    // The twin series saw the very same requests: equal byte sums too.
    for s in exp.named("istio_request_bytes_sum") {
        if s.label("reporter") != Some("source") {
            continue;
        }
        let twin: Labels = s
            .labels
            .iter()
            .map(|(k, v)| match k.as_str() {
                "reporter" => (k.clone(), "destination".to_string()),
                "connection_security_policy" => (k.clone(), "none".to_string()),
                _ => (k.clone(), v.clone()),
            })
            .collect();
        let other = exp
            .exact("istio_request_bytes_sum", &twin)
            .unwrap_or_else(|| panic!("no destination twin of {:?}", s.labels));
        assert_eq!(other.value, s.value, "request bytes of {:?}", s.labels);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Exact counts.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_per_subset_match_what_each_upstream_received() {
    const N: usize = 240;
    const WORKERS: usize = 6;
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let app = spawn_app(&two_subset_config(
        stable.addr,
        canary.addr,
        "      - name: primary
        route:
          - { destination: { service: svc, subset: stable }, weight: 70 }
          - { destination: { service: svc, subset: canary }, weight: 30 }
",
    ))
    .await;
    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let client = http1_client();
            let mut served = BTreeMap::<String, usize>::new();
            for _ in 0..N / WORKERS {
                let a = call(&client, &app, "/count", &[]).await;
                assert_eq!(a.status, 200, "{:?}", a.body);
                *served.entry(a.body).or_default() += 1;
            }
            served
        }));
    }
    let mut served = BTreeMap::<String, usize>::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *served.entry(k).or_default() += v;
        }
    }
    let (s, c) = (stable.count(), canary.count());
    assert_eq!(s + c, N);
    assert!(s > 0 && c > 0, "a 70/30 split of {N} sent {s}/{c}");
    assert_eq!(served.get("stable\n").copied().unwrap_or(0), s);

    let exp = scrape(&app).await;
    let by_version = |v: &str| exp.sum("istio_requests_total", &[("destination_version", v)]);
    assert_eq!(by_version("v1"), s as f64, "stable");
    assert_eq!(by_version("v2"), c as f64, "canary");
    assert_eq!(exp.sum("istio_requests_total", &[]), N as f64);
    for h in ISTIO_HISTOGRAMS {
        let count = |v: &str| exp.sum(&format!("{h}_count"), &[("destination_version", v)]);
        assert_eq!(
            (count("v1"), count("v2")),
            (s as f64, c as f64),
            "{h}_count"
        );
    }
}

/// `grpc_response_status` is `""` for a request that is not gRPC, whatever its answer carries:
/// a `grpc-status` a response rule sets on an upstream's answer, or the gateway's own gRPC-form
/// fault abort. As SPEC §metrics and Istio have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_request_has_no_grpc_status_whatever_its_answer_carries() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let app = spawn_app(&two_subset_config(
        stable.addr,
        canary.addr,
        "      - name: aborted
        match: [ { uri: { prefix: /fault } } ]
        fault: { abort: { grpc_status: UNAVAILABLE, percentage: 100 } }
        route: [ { destination: { service: svc, subset: stable } } ]
      - name: primary
        headers:
          response: { set: { grpc-status: \"14\" } }
        route:
          - destination: { service: svc, subset: stable }
",
    ))
    .await;
    let client = http1_client();
    for path in ["/", "/fault"] {
        let a = call(&client, &app, path, &[]).await;
        assert_eq!(a.status, 200, "{path}: {:?}", a.body);
        assert_eq!(a.headers["grpc-status"], "14", "{path}");
    }
    let exp = scrape(&app).await;
    let with = |status: &str| {
        exp.sum(
            "istio_requests_total",
            &[
                ("request_protocol", "http"),
                ("grpc_response_status", status),
            ],
        )
    };
    assert_eq!((with(""), with("14")), (2.0, 0.0));
}

// ---------------------------------------------------------------------------------------------
// 5. Buckets.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histograms_use_envoy_buckets_and_a_300ms_answer_lands_at_500() {
    let fast = spawn_upstream("stable", Behavior::Name).await;
    let slow = spawn_upstream("canary", Behavior::Slow(Duration::from_millis(300))).await;
    let app = spawn_app(&two_subset_config(
        fast.addr,
        slow.addr,
        "      - name: slow
        match: [ { headers: { x-slow: { present: true } } } ]
        route: [ { destination: { service: svc, subset: canary } } ]
      - name: fast
        route: [ { destination: { service: svc, subset: stable } } ]
",
    ))
    .await;
    let app = Arc::new(app);
    let client = http1_client();
    for _ in 0..10 {
        assert_eq!(call(&client, &app, "/fast", &[]).await.status, 200);
    }
    let slow_calls: Vec<_> = (0..3)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let client = http1_client();
                call(&client, &app, "/slow", &[("x-slow", "1")])
                    .await
                    .status
            })
        })
        .collect();
    for t in slow_calls {
        assert_eq!(t.await.unwrap(), 200);
    }

    let exp = scrape(&app).await;
    let mut histograms = 0;
    for h in ISTIO_HISTOGRAMS {
        let mut by_series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in exp.named(&format!("{h}_bucket")) {
            by_series
                .entry(s.labels_but_le())
                .or_default()
                .push((s.le(), s.value));
        }
        assert_eq!(by_series.len(), 2, "{h}: one series per subset");
        for (labels, mut buckets) in by_series {
            histograms += 1;
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let les: Vec<f64> = buckets.iter().map(|b| b.0).collect();
            assert_eq!(les, ENVOY_LE, "{h} buckets of {labels:?}");
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{h} buckets are not cumulative: {buckets:?}"
            );
            let count = exp.exact(&format!("{h}_count"), &labels).unwrap().value;
            assert_eq!(
                buckets.last().unwrap().1,
                count,
                "{h}: +Inf bucket vs _count"
            );
            let want = if labels.contains(&("destination_version".into(), "v2".into())) {
                3.0
            } else {
                10.0
            };
            assert_eq!(count, want, "{h}_count of {labels:?}");
        }
    }
    assert_eq!(histograms, 6);

    let bucket = |version: &str, le: f64| {
        exp.named("istio_request_duration_milliseconds_bucket")
            .find(|s| s.matches(&[("destination_version", version)]) && s.le() == le)
            .unwrap_or_else(|| panic!("no bucket le={le} for {version}"))
            .value
    };
    assert_eq!(bucket("v2", 250.0), 0.0, "300 ms answers are above 250 ms");
    assert_eq!(
        bucket("v2", 500.0),
        3.0,
        "300 ms answers are at most 500 ms"
    );
    assert_eq!(bucket("v1", 250.0), 10.0, "fast answers are under 250 ms");
    let slow_sum = exp.sum(
        "istio_request_duration_milliseconds_sum",
        &[("destination_version", "v2")],
    );
    assert!(
        (900.0..1500.0).contains(&slow_sum),
        "3 × 300 ms summed to {slow_sum}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Bytes.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_histograms_count_headers_and_body() {
    let generate = spawn_upstream("stable", Behavior::Generate).await;
    let count = spawn_upstream("canary", Behavior::CountBody).await;
    let app = spawn_app(&two_subset_config(
        generate.addr,
        count.addr,
        "      - name: upload
        match: [ { method: { exact: POST } } ]
        route: [ { destination: { service: svc, subset: canary } } ]
      - name: download
        route: [ { destination: { service: svc, subset: stable } } ]
",
    ))
    .await;
    let client = http1_client();
    let download = async {
        let resp = client
            .request(
                Request::get(app.url("/gen?bytes=100000"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .expect("the gateway answers");
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    };
    let (status, body) = bounded("download", download).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 100_000, "the download's body");

    let upload = Request::post(app.url("/upload"))
        .body(Full::new(Bytes::from(vec![b'x'; 50_000])))
        .unwrap();
    let a = bounded("upload", send(&client, upload)).await;
    assert_eq!(a.status, 200);
    assert!(
        a.body.starts_with("50000 "),
        "the upstream read {:?}",
        a.body
    );

    let exp = scrape(&app).await;
    let sum = |family: &str, version: &str| {
        let f = [("destination_version", version)];
        assert_eq!(
            exp.sum(&format!("{family}_count"), &f),
            1.0,
            "{family} {version}"
        );
        exp.sum(&format!("{family}_sum"), &f)
    };
    let down = sum("istio_response_bytes", "v1");
    assert!(
        down > 100_000.0 && down < 102_000.0,
        "a 100000-byte body and its head: istio_response_bytes_sum = {down}"
    );
    let up = sum("istio_request_bytes", "v2");
    assert!(
        up > 50_000.0 && up < 52_000.0,
        "a 50000-byte body and its head: istio_request_bytes_sum = {up}"
    );
    // The other directions carry a head and a short body only.
    let small_request = sum("istio_request_bytes", "v1");
    assert!(
        small_request > 20.0 && small_request < 2_000.0,
        "a GET's request bytes: {small_request}"
    );
    let small_response = sum("istio_response_bytes", "v2");
    assert!(
        small_response > 20.0 && small_response < 2_000.0,
        "a short answer's response bytes: {small_response}"
    );
}

// ---------------------------------------------------------------------------------------------
// Answers without a body, and clients that leave.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_without_a_body_are_complete_not_dc() {
    let generate = spawn_upstream("stable", Behavior::Generate).await;
    let no_content = spawn_upstream("canary", Behavior::Status(204)).await;
    let app = spawn_app(&two_subset_config(
        generate.addr,
        no_content.addr,
        "      - name: no-content
        match: [ { headers: { x-204: { present: true } } } ]
        route: [ { destination: { service: svc, subset: canary } } ]
      - name: rest
        route: [ { destination: { service: svc, subset: stable } } ]
",
    ))
    .await;
    let client = http1_client();
    // 200 with `content-length: 0`.
    let a = call(&client, &app, "/gen?bytes=0", &[]).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, ""));
    // 204 No Content.
    let a = call(&client, &app, "/", &[("x-204", "1")]).await;
    assert_eq!(a.status, 204);
    // HEAD: the head of a 10-byte answer, no body.
    let head = Request::head(app.url("/gen?bytes=10"))
        .body(Full::default())
        .unwrap();
    let a = bounded("HEAD", send(&client, head)).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, ""));

    let exp = scrape(&app).await;
    let flags: Vec<(String, String, f64)> = exp
        .named("istio_requests_total")
        .map(|s| {
            (
                s.label("response_code").unwrap_or("").to_string(),
                s.label("response_flags").unwrap_or("").to_string(),
                s.value,
            )
        })
        .collect();
    assert_eq!(
        exp.sum(
            "istio_requests_total",
            &[("response_code", "200"), ("response_flags", "-")]
        ),
        2.0,
        "the empty 200 and the HEAD were answered in full: {flags:?}"
    );
    assert_eq!(
        exp.sum(
            "istio_requests_total",
            &[("response_code", "204"), ("response_flags", "-")]
        ),
        1.0,
        "the 204 was answered in full: {flags:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_answer_is_counted_as_dc_with_code_0() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let slow = spawn_upstream("canary", Behavior::Slow(Duration::from_millis(300))).await;
    let app = spawn_app(&two_subset_config(
        stable.addr,
        slow.addr,
        "      - name: slow
        match: [ { headers: { x-slow: { present: true } } } ]
        route: [ { destination: { service: svc, subset: canary } } ]
      - name: rest
        route: [ { destination: { service: svc, subset: stable } } ]
",
    ))
    .await;
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut conn,
        b"GET /leave HTTP/1.1\r\nhost: svc\r\nx-slow: 1\r\n\r\n",
    )
    .await
    .unwrap();
    eventually("the slow upstream gets the request", || async {
        slow.count() == 1
    })
    .await;
    drop(conn);
    // Nothing signals the end of an abandoned request: poll the exposition, bounded.
    let mut last = String::new();
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let exp = scrape(&app).await;
            if exp.sum("istio_requests_total", &[("destination_version", "v2")]) > 0.0 {
                return exp;
            }
            last = exp.text;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let exp = found.unwrap_or_else(|_| {
        panic!("the abandoned request was never counted (slow upstream answers in 300 ms):\n{last}")
    });
    let s: Vec<&Sample> = exp
        .named("istio_requests_total")
        .filter(|s| s.matches(&[("destination_version", "v2")]))
        .collect();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].value, 1.0);
    assert_eq!(s[0].label("response_flags"), Some("DC"), "{s:?}");
    assert_eq!(s[0].label("response_code"), Some("0"), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_body_is_counted_as_dc_with_the_code_sent() {
    let generate = spawn_upstream("stable", Behavior::Generate).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let app = spawn_app(&two_subset_config(
        generate.addr,
        canary.addr,
        "      - name: primary
        route: [ { destination: { service: svc, subset: stable } } ]
",
    ))
    .await;
    // 64 MiB: far more than the socket buffers hold, so the gateway is still sending when the
    // client goes.
    let client = http1_client();
    let resp = bounded(
        "download head",
        client.request(
            Request::get(app.url("/gen?bytes=67108864"))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = bounded("first bytes", body.frame()).await;
    assert!(first.is_some_and(|f| f.is_ok()), "some body arrives");
    drop(body);
    drop(client);
    eventually("the cut download is counted", || async {
        scrape(&app).await.sum("istio_requests_total", &[]) > 0.0
    })
    .await;
    let exp = scrape(&app).await;
    let s: Vec<&Sample> = exp.named("istio_requests_total").collect();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].label("response_code"), Some("200"), "{s:?}");
    assert_eq!(s[0].label("response_flags"), Some("DC"), "{s:?}");
    let sent = exp.sum("istio_response_bytes_sum", &[]);
    assert!(
        sent > 0.0 && sent < 67_108_864.0,
        "response bytes count what was sent before the client left: {sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_hosts_beyond_64_share_one_unknown_series() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let app = spawn_app(
        &two_subset_config(
            stable.addr,
            canary.addr,
            "      - name: primary
        route: [ { destination: { service: svc, subset: stable } } ]
",
        )
        .replace("hosts: [\"*\"]", "hosts: [\"svc.example.com\"]"),
    )
    .await;
    let client = http1_client();
    for i in 0..70 {
        let host = format!("h{i}.example.com");
        let a = call(&client, &app, "/", &[("host", &host)]).await;
        assert_eq!(a.status, 404, "{host}");
    }
    // A host seen before the cap keeps its own series.
    let a = call(&client, &app, "/", &[("host", "h0.example.com")]).await;
    assert_eq!(a.status, 404);
    let exp = scrape(&app).await;
    let series: Vec<&Sample> = exp.named("istio_requests_total").collect();
    assert_eq!(series.len(), 65, "64 hosts and one overflow series");
    let of = |host: &str| exp.sum("istio_requests_total", &[("destination_service", host)]);
    assert_eq!(of("h0.example.com"), 2.0);
    assert_eq!(of("unknown"), 6.0);
    assert_eq!(
        exp.sum("istio_requests_total", &[("response_flags", "NR")]),
        71.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_new_identity_relabels_the_series() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let base = two_subset_config(
        stable.addr,
        canary.addr,
        "      - name: primary
        route: [ { destination: { service: svc, subset: stable } } ]
",
    );
    let with_identity = |name: &str| {
        format!(
            "{}{base}",
            metrics_section(&format!(
                "  cluster: c-{name}\n  workload: {{ name: {name} }}\n"
            ))
        )
    };
    let app = spawn_app(&with_identity("gw-one")).await;
    let client = http1_client();
    assert_eq!(call(&client, &app, "/", &[]).await.status, 200);
    let exp = scrape(&app).await;
    assert_eq!(
        exp.sum(
            "istio_requests_total",
            &[
                ("source_workload", "gw-one"),
                ("source_cluster", "c-gw-one")
            ]
        ),
        1.0
    );

    write_by_rename(&app.config_path, &with_identity("gw-two"));
    let (status, v) = admin(&app, Method::POST, "/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(call(&client, &app, "/", &[]).await.status, 200);
    let exp = scrape(&app).await;
    let old: Vec<&Sample> = exp
        .istio()
        .filter(|s| s.label("source_workload") == Some("gw-one"))
        .collect();
    assert!(
        old.is_empty(),
        "series under the old identity remain: {old:?}"
    );
    let new = [
        ("source_workload", "gw-two"),
        ("source_cluster", "c-gw-two"),
        ("destination_cluster", "c-gw-two"),
    ];
    assert_eq!(exp.sum("istio_requests_total", &new), 1.0, "{}", exp.text);
}

// ---------------------------------------------------------------------------------------------
// 7. Reload removes a subset's series.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_subset_removes_its_series() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let rules = "      - name: to-canary
        match: [ { headers: { x-canary: { exact: always } } } ]
        route: [ { destination: { service: svc, subset: canary } } ]
      - name: to-canary-b
        match: [ { headers: { x-canary: { exact: b } } } ]
        route: [ { destination: { service: svc, subset: canary-b } } ]
      - name: primary
        route: [ { destination: { service: svc, subset: stable } } ]
";
    // Two canary subsets: `canary` (answers 200) and `canary-b` (nothing listens: 503 UF).
    let base = two_subset_config(stable.addr, canary.addr, rules).replace(
        "routes:",
        &format!(
            "      canary-b: {{ labels: {{ version: v3 }}, endpoints: [\"{}\"] }}\nroutes:",
            dead_addr().await
        ),
    );
    let app = spawn_app(&base).await;
    let client = http1_client();
    for _ in 0..3 {
        assert_eq!(call(&client, &app, "/", &[]).await.status, 200);
        assert_eq!(
            call(&client, &app, "/", &[("x-canary", "always")])
                .await
                .status,
            200
        );
        let b = call(&client, &app, "/", &[("x-canary", "b")]).await;
        assert_eq!(b.status, 503, "canary-b answered {b:?}");
        assert!(b.body.starts_with("UF"), "canary-b answered {b:?}");
    }
    let exp = scrape(&app).await;
    for v in ["v1", "v2", "v3"] {
        assert_eq!(
            exp.sum("istio_requests_total", &[("destination_version", v)]),
            3.0,
            "{v} before the reload"
        );
    }
    // The analysis counts whole seconds: the requests show once their second is over.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, a) = admin(&app, Method::GET, "/v1/analysis?route=main", None).await;
        assert_eq!(status, StatusCode::OK, "{a}");
        if a["subsets"]["canary"]["requests"] == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{a}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The file without the canary subsets (and the rules that used them).
    let without = two_subset_config(
        stable.addr,
        canary.addr,
        "      - name: primary
        route: [ { destination: { service: svc, subset: stable } } ]
",
    )
    .replace(
        &format!(
            "      canary: {{ labels: {{ version: v2 }}, endpoints: [\"{}\"] }}\n",
            canary.addr
        ),
        "",
    );
    assert!(!without.contains("canary"), "{without}");
    write_by_rename(&app.config_path, &without);
    let (status, v) = admin(&app, Method::POST, "/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    let exp = scrape(&app).await;
    let gone: Vec<&Sample> = exp
        .istio()
        .filter(|s| {
            matches!(s.label("destination_version"), Some("v2" | "v3"))
                || matches!(
                    s.label("destination_workload"),
                    Some("svc-canary" | "svc-canary-b")
                )
        })
        .collect();
    assert!(
        gone.is_empty(),
        "series of removed subsets remain: {gone:#?}"
    );
    let stable_filter = [("destination_version", "v1")];
    assert_eq!(exp.sum("istio_requests_total", &stable_filter), 3.0);
    for h in ISTIO_HISTOGRAMS {
        assert_eq!(exp.sum(&format!("{h}_count"), &stable_filter), 3.0, "{h}");
    }
    let (_, a) = admin(&app, Method::GET, "/v1/analysis?route=main", None).await;
    assert!(a["subsets"].get("canary").is_none(), "{a}");

    // Stable keeps counting on its series; requests for the canary now go to stable too.
    assert_eq!(call(&client, &app, "/", &[]).await.body, "stable\n");
    assert_eq!(
        call(&client, &app, "/", &[("x-canary", "always")])
            .await
            .body,
        "stable\n"
    );
    let exp = scrape(&app).await;
    assert_eq!(exp.sum("istio_requests_total", &stable_filter), 5.0);
    assert_eq!(exp.sum("istio_requests_total", &[]), 5.0, "{}", exp.text);
    assert_eq!(canary.count(), 3);
}

// ---------------------------------------------------------------------------------------------
// 8. splitgate's own metrics.
// ---------------------------------------------------------------------------------------------

fn gauge(exp: &Exposition, name: &str, filter: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = exp.named(name).filter(|s| s.matches(filter)).collect();
    assert_eq!(found.len(), 1, "{name}{filter:?} in\n{}", exp.text);
    found[0].value
}

async fn state_generation(app: &TestApp) -> u64 {
    let (status, v) = admin(app, Method::GET, "/v1/state", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["generation"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

fn split_rules() -> &'static str {
    "      - name: primary
        route:
          - { destination: { service: svc, subset: stable }, weight: 90 }
          - { destination: { service: svc, subset: canary }, weight: 10 }
"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_generation_follows_state_and_api_changes() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let app = spawn_app(&two_subset_config(stable.addr, canary.addr, split_rules())).await;

    let g1 = state_generation(&app).await;
    assert_eq!(
        gauge(&scrape(&app).await, "splitgate_config_generation", &[]),
        g1 as f64
    );

    let (status, v) = admin(
        &app,
        Method::PUT,
        "/v1/routes/main/weights",
        Some(json!({ "weights": { "stable": 50, "canary": 50 } })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let g2 = v["generation"].as_u64().unwrap();
    assert_eq!(g2, g1 + 1);
    assert_eq!(state_generation(&app).await, g2);
    assert_eq!(
        gauge(&scrape(&app).await, "splitgate_config_generation", &[]),
        g2 as f64
    );

    // A file reload is a change too.
    let (status, v) = admin(&app, Method::POST, "/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let g3 = v["generation"].as_u64().unwrap();
    assert!(g3 > g2);
    assert_eq!(state_generation(&app).await, g3);
    assert_eq!(
        gauge(&scrape(&app).await, "splitgate_config_generation", &[]),
        g3 as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reloads_are_counted_by_result() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let app = spawn_app(&two_subset_config(stable.addr, canary.addr, split_rules())).await;
    let reloads = |exp: &Exposition, result: &str| {
        exp.sum("splitgate_config_reloads_total", &[("result", result)])
    };
    let exp = scrape(&app).await;
    assert_eq!((reloads(&exp, "ok"), reloads(&exp, "error")), (0.0, 0.0));

    // A good reload through the API (the file is unchanged, so the watcher stays quiet).
    let (status, v) = admin(&app, Method::POST, "/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let exp = scrape(&app).await;
    assert_eq!((reloads(&exp, "ok"), reloads(&exp, "error")), (1.0, 0.0));

    // A broken file: the watcher rejects it once (no other signal: poll, bounded).
    write_by_rename(&app.config_path, "listeners: [ this is not a config");
    eventually("the watcher rejects the broken file", || async {
        reloads(&scrape(&app).await, "error") >= 1.0
    })
    .await;
    let exp = scrape(&app).await;
    assert_eq!((reloads(&exp, "ok"), reloads(&exp, "error")), (1.0, 1.0));

    // The same broken file through the API: rejected and counted again.
    let (status, v) = admin(&app, Method::POST, "/v1/reload", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let exp = scrape(&app).await;
    assert_eq!((reloads(&exp, "ok"), reloads(&exp, "error")), (1.0, 2.0));
    // /v1/state tells the same story.
    let (_, state) = admin(&app, Method::GET, "/v1/state", None).await;
    if let Some(r) = state.get("reloads") {
        assert_eq!(
            (r["ok"].as_u64(), r["error"].as_u64()),
            (Some(1), Some(2)),
            "{state}"
        );
    }
    // The rejected file changed nothing.
    let client = http1_client();
    assert_eq!(call(&client, &app, "/", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_counters_are_exposed_at_zero_before_any_reload() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let app = spawn_app(&two_subset_config(stable.addr, canary.addr, split_rules())).await;
    let exp = scrape(&app).await;
    for result in ["ok", "error"] {
        assert_eq!(
            gauge(
                &exp,
                "splitgate_config_reloads_total",
                &[("result", result)]
            ),
            0.0,
            "result={result}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_gauges_follow_clients_and_pools() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let app = spawn_app(&two_subset_config(stable.addr, canary.addr, split_rules())).await;
    let active = |exp: &Exposition| gauge(exp, "splitgate_downstream_connections_active", &[]);
    let upstream = |exp: &Exposition, state: &str| {
        gauge(exp, "splitgate_upstream_connections", &[("state", state)])
    };

    let exp = scrape(&app).await;
    assert_eq!(active(&exp), 0.0, "no client yet");
    assert_eq!(upstream(&exp, "idle"), 0.0, "no traffic yet");

    // A keep-alive client: its connection stays open between requests.
    let client = http1_client();
    for _ in 0..4 {
        assert_eq!(call(&client, &app, "/", &[]).await.status, 200);
    }
    let exp = scrape(&app).await;
    assert!(
        active(&exp) >= 1.0,
        "a client holds a connection: {}",
        active(&exp)
    );
    assert!(
        upstream(&exp, "idle") >= 1.0,
        "idle upstream connections after traffic"
    );
    assert_eq!(upstream(&exp, "active"), 0.0, "nothing in flight");
    assert!(
        stable.connections() + canary.connections() <= 2,
        "4 sequential requests reuse pooled connections"
    );

    // The client goes away: the gateway notices the closed connection.
    drop(client);
    eventually(
        "the closed client connection is no longer active",
        || async { active(&scrape(&app).await) == 0.0 },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 9. /v1/analysis.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_agrees_with_the_traffic_sent() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Status(503)).await;
    let slow = spawn_upstream("slow", Behavior::Slow(Duration::from_millis(50))).await;
    let mixed = spawn_upstream(
        "mixed",
        Behavior::FailEvery {
            k: 4,
            status: 503,
            delay: Duration::ZERO,
        },
    )
    .await;
    let idle = spawn_upstream("idle", Behavior::Name).await;
    let spare = spawn_upstream("spare", Behavior::Name).await;
    let dead = dead_addr().await;
    let subsets: String = [
        ("stable", stable.addr),
        ("canary", canary.addr),
        ("slow", slow.addr),
        ("mixed", mixed.addr),
        ("idle", idle.addr),
        ("spare", spare.addr),
        ("dead", dead),
    ]
    .iter()
    .map(|(name, addr)| subset(name, *addr))
    .collect();
    let mut rules = String::new();
    // No retries: the analysis must see each upstream answer once.
    for to in ["canary", "slow", "mixed", "spare", "dead"] {
        rules.push_str(&format!(
            "      - name: {to}
        match: [ {{ headers: {{ x-to: {{ exact: {to} }} }} }} ]
        route: [ {{ destination: {{ service: svc, subset: {to} }} }} ]
        retries: {{ attempts: 0 }}
"
        ));
    }
    // `idle` has weight 0: part of the route, never picked.
    rules.push_str(
        "      - name: primary
        route:
          - { destination: { service: svc, subset: stable }, weight: 100 }
          - { destination: { service: svc, subset: idle }, weight: 0 }
",
    );
    let yaml = svc_config(&subsets, &rules);
    let app = spawn_app(&yaml).await;
    let client = http1_client();
    let sent = [
        ("stable", 12),
        ("canary", 8),
        ("slow", 10),
        ("mixed", 20),
        ("dead", 3),
    ];
    for (to, n) in sent {
        for _ in 0..n {
            let headers: &[(&str, &str)] = if to == "stable" { &[] } else { &[("x-to", to)] };
            let a = call(&client, &app, "/a", headers).await;
            assert!(a.status == 200 || a.status == 503, "{to}: {}", a.status);
        }
    }
    assert_eq!(mixed.count(), 20);
    assert_eq!((idle.count(), spare.count()), (0, 0));

    // The analysis counts whole seconds: the requests show once the second they fell in is over.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let a = loop {
        let (status, a) = admin(
            &app,
            Method::GET,
            "/v1/analysis?route=main&window=60s",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{a}");
        let total: u64 = a["subsets"]
            .as_object()
            .map(|m| m.values().filter_map(|s| s["requests"].as_u64()).sum())
            .unwrap_or(0);
        if total == sent.iter().map(|(_, n)| *n as u64).sum::<u64>() {
            break a;
        }
        assert!(tokio::time::Instant::now() < deadline, "{a}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(a["route"], "main", "{a}");
    assert_eq!(a["window_seconds"], 60, "{a}");
    let subsets = a["subsets"].as_object().unwrap_or_else(|| panic!("{a}"));
    let names: BTreeSet<&str> = subsets.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["stable", "canary", "slow", "mixed", "idle", "spare", "dead"]),
        "{a}"
    );
    let check = |name: &str, requests: u64, success: f64| {
        let s = &a["subsets"][name];
        assert_eq!(s["status"], "ok", "{name}: {s}");
        assert_eq!(s["requests"].as_u64(), Some(requests), "{name}: {s}");
        assert_eq!(s["success_rate"].as_f64(), Some(success), "{name}: {s}");
        let rps = s["rps"].as_f64().unwrap();
        assert!(
            (rps - requests as f64 / 60.0).abs() < 1e-9,
            "{name}: rps {rps}"
        );
        let q = |p: &str| {
            s["latency_ms"][p]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: {s}"))
        };
        assert!(
            q("p50") <= q("p90") && q("p90") <= q("p95") && q("p95") <= q("p99"),
            "{name}: quantiles out of order: {s}"
        );
        q("p50")
    };
    let stable_p50 = check("stable", 12, 1.0);
    check("canary", 8, 0.0);
    check("mixed", 20, 0.75);
    check("dead", 3, 0.0);
    let slow_p50 = check("slow", 10, 1.0);
    assert!(
        (45.0..=80.0).contains(&slow_p50),
        "50 ms answers: p50 {slow_p50}"
    );
    assert!(stable_p50 < 45.0, "instant answers: p50 {stable_p50}");
    for name in ["idle", "spare"] {
        let s = &a["subsets"][name];
        assert_eq!(s["status"], "no_traffic", "{name}: {s}");
        assert_eq!(s["requests"], 0, "{name}: {s}");
        assert_eq!(s["rps"], Value::Null, "{name}: {s}");
    }

    // Without `window`, the window is 60 s.
    let (status, d) = admin(&app, Method::GET, "/v1/analysis?route=main", None).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["window_seconds"], 60, "{d}");
    assert_eq!(d["subsets"]["mixed"]["requests"], 20, "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_refuses_bad_calls() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let app = spawn_app(&two_subset_config(stable.addr, canary.addr, split_rules())).await;
    let cases: [(&str, StatusCode, &str); 7] = [
        ("/v1/analysis", StatusCode::BAD_REQUEST, "route"),
        ("/v1/analysis?window=60s", StatusCode::BAD_REQUEST, "route"),
        (
            "/v1/analysis?route=nope&window=60s",
            StatusCode::NOT_FOUND,
            "route",
        ),
        (
            "/v1/analysis?route=main&window=0s",
            StatusCode::BAD_REQUEST,
            "window",
        ),
        (
            "/v1/analysis?route=main&window=9999s",
            StatusCode::BAD_REQUEST,
            "window",
        ),
        (
            "/v1/analysis?route=main&window=garbage",
            StatusCode::BAD_REQUEST,
            "window",
        ),
        (
            "/v1/analysis?route=main&window=",
            StatusCode::BAD_REQUEST,
            "window",
        ),
    ];
    for (path, status, field) in cases {
        let (got, v) = admin(&app, Method::GET, path, None).await;
        assert_eq!(got, status, "{path}: {v}");
        assert_eq!(v["field"], field, "{path}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {v}"
        );
    }
    // The bounds themselves are accepted.
    for window in ["1s", "600s", "10m"] {
        let path = format!("/v1/analysis?route=main&window={window}");
        let (got, v) = admin(&app, Method::GET, &path, None).await;
        assert_eq!(got, StatusCode::OK, "{path}: {v}");
        assert_eq!(v["subsets"]["stable"]["status"], "no_traffic", "{v}");
        assert_eq!(v["subsets"]["canary"]["requests"], 0, "{v}");
    }
}
