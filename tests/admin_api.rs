//! Admin API per SPEC §4, against the whole gateway running in this process: what a user sees of
//! each call (status, JSON `error`/`field`/`generation`, `/v1/state`) and the split the gateway
//! serves afterwards. An admin call that returns is the signal that its change is live.

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upper bound of every single wait in this file.
const WAIT: Duration = Duration::from_secs(10);

/// Route `main` has one weighted rule, `primary`, that the file sends all to stable.
const RULES: &str = "      - name: primary
        route:
          - { destination: { service: svc, subset: stable }, weight: 100 }
          - { destination: { service: svc, subset: canary }, weight: 0 }
";

/// The same rule with other file weights.
const RULES_60_40: &str = "      - name: primary
        route:
          - { destination: { service: svc, subset: stable }, weight: 60 }
          - { destination: { service: svc, subset: canary }, weight: 40 }
";

const TO_CANARY: &str = r#"{"weights": {"stable": 0, "canary": 100}}"#;
const HEADER_ROUTE: &str =
    r#"{"match": [{"header": "x-user", "exact": "beta"}], "subset": "canary"}"#;

/// Awaits `fut`, failing the test after `WAIT`.
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {WAIT:?}"))
}

/// One admin answer.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
    raw: String,
}

impl Reply {
    /// Asserts a `{"error": "...", "field": FIELD}` answer with `status`.
    fn expect_error(&self, status: u16, field: &str) -> &Self {
        assert_eq!(self.status, status, "answer: {}", self.raw);
        assert_eq!(self.json["field"], field, "answer: {}", self.raw);
        let error = self.json["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "no error text: {}", self.raw);
        self
    }

    /// Asserts a 200 `{"generation": N}` answer and returns N.
    fn generation(&self) -> u64 {
        assert_eq!(self.status, 200, "answer: {}", self.raw);
        self.json["generation"]
            .as_u64()
            .unwrap_or_else(|| panic!("no generation in {}", self.raw))
    }
}

/// Calls the admin API at `admin`. Every answer must be JSON.
async fn call(
    admin: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut b = Request::builder()
        .method(method.clone())
        .uri(format!("http://{admin}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
        .unwrap();
    let client = http1_client();
    let a = bounded(&format!("{method} {path}"), send(&client, req)).await;
    let json: Value = serde_json::from_str(&a.body).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: {} with a body that is not JSON ({e}): {:?}",
            a.status, a.body
        )
    });
    assert_eq!(
        a.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        "application/json",
        "{method} {path}"
    );
    Reply {
        status: a.status,
        headers: a.headers,
        json,
        raw: a.body,
    }
}

async fn put(admin: SocketAddr, path: &str, body: &str) -> Reply {
    call(admin, Method::PUT, path, Some(body), &[]).await
}

async fn delete(admin: SocketAddr, path: &str) -> Reply {
    call(admin, Method::DELETE, path, None, &[]).await
}

async fn reload(admin: SocketAddr) -> Reply {
    call(admin, Method::POST, "/v1/reload", None, &[]).await
}

/// `GET /v1/state`, which must answer 200.
async fn state(admin: SocketAddr) -> Value {
    let r = call(admin, Method::GET, "/v1/state", None, &[]).await;
    assert_eq!(r.status, 200, "GET /v1/state: {}", r.raw);
    r.json
}

/// The rule `name` of route `route` in a `/v1/state` answer.
fn rule<'a>(state: &'a Value, route: &str, name: &str) -> &'a Value {
    state["routes"][route]["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("route {route} has no rules in {state:#}"))
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("route {route} has no rule {name} in {state:#}"))
}

/// Sends `n` GETs through the gateway at `gw` with `headers`, one after the other on one
/// keep-alive connection, and counts the answers by upstream name.
async fn served(gw: SocketAddr, n: usize, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
    let client = http1_client();
    let url = format!("http://{gw}/");
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let a = bounded("a request through the gateway", get(&client, &url, headers)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        *counts.entry(a.body.trim().to_string()).or_insert(0) += 1;
    }
    counts
}

/// Asserts that all of `n` requests with `headers` are served by `upstream`.
async fn all_go_to(gw: SocketAddr, n: usize, headers: &[(&str, &str)], upstream: &str) {
    let counts = served(gw, n, headers).await;
    let want = BTreeMap::from([(upstream.to_string(), n)]);
    assert_eq!(counts, want, "with headers {headers:?}");
}

/// `{"a": 1, ...}` from pairs, to compare with weight maps in `/v1/state`.
fn weights(pairs: &[(&str, u64)]) -> Value {
    Value::Object(pairs.iter().map(|(k, v)| ((*k).into(), json!(v))).collect())
}

/// Replaces the config file the way an editor or a ConfigMap update does (write, then rename), so
/// the file watcher never reads half a file.
fn rewrite(path: &Path, yaml: &str) {
    let tmp = path.with_extension("yaml.next");
    std::fs::write(&tmp, with_free_admin(yaml)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `/v1/state` (the file watcher gives no other signal) until `done` holds, bounded.
async fn state_until(admin: SocketAddr, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = state(admin).await;
        if done(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}; last state {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two upstreams answering "stable" and "canary", and the gateway on `RULES` (all to stable).
async fn two_subset_app(rules: &str) -> (TestApp, Upstream, Upstream) {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let app = spawn_app(&two_subset_config(stable.addr, canary.addr, rules)).await;
    (app, stable, canary)
}

/// Removes a directory when dropped, for tests that start and stop `App`s themselves.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the whole gateway from the config file at `path` (which `App::shutdown` can consume,
/// unlike `TestApp`); returns it and its first listener's address.
async fn start_app(path: &Path) -> (splitgate::app::App, SocketAddr) {
    let config = splitgate::config::load(path).unwrap_or_else(|e| panic!("{e}"));
    let app = splitgate::app::App::start(config, Some(path.to_path_buf()))
        .await
        .unwrap();
    let addr = app.gateway.local_addrs()[0].1;
    (app, addr)
}

// ---------------------------------------------------------------------------------------------
// 1. Weights

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_weights_is_live_when_it_returns_and_state_shows_it() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    assert_eq!(state(admin).await["generation"], g0);
    all_go_to(app.addr, 10, &[], "stable").await;

    let r = put(admin, "/v1/routes/main/weights", TO_CANARY).await;
    assert_eq!(r.json, json!({ "generation": g0 + 1 }), "{}", r.raw);
    assert_eq!(r.generation(), g0 + 1);
    // The very next request already uses the new weights.
    let first = bounded("first request", get(&http1_client(), &app.url("/"), &[])).await;
    assert_eq!(
        (first.status.as_u16(), first.body.as_str()),
        (200, "canary\n")
    );
    all_go_to(app.addr, 50, &[], "canary").await;

    let s = state(admin).await;
    assert_eq!(s["generation"], g0 + 1);
    let primary = rule(&s, "main", "primary");
    assert_eq!(primary["kind"], "weighted");
    assert_eq!(primary["source"], "api");
    assert_eq!(
        primary["weights"],
        weights(&[("stable", 0), ("canary", 100)])
    );
    assert_eq!(
        primary["file_weights"],
        weights(&[("stable", 100), ("canary", 0)])
    );
    assert_eq!(s["routes"]["main"]["header_routes"], json!([]));

    // Naming the rule works the same; a subset left out gets 0.
    let r = put(
        admin,
        "/v1/routes/main/weights",
        r#"{"rule": "primary", "weights": {"stable": 100}}"#,
    )
    .await;
    assert_eq!(r.generation(), g0 + 2);
    all_go_to(app.addr, 50, &[], "stable").await;
    let r = put(
        admin,
        "/v1/routes/main/weights",
        r#"{"rule": "primary", "weights": {"stable": 0, "canary": 100}}"#,
    )
    .await;
    assert_eq!(r.generation(), g0 + 3);
    all_go_to(app.addr, 50, &[], "canary").await;
    let s = state(admin).await;
    assert_eq!(s["generation"], g0 + 3);
    assert_eq!(rule(&s, "main", "primary")["source"], "api");
}

// ---------------------------------------------------------------------------------------------
// 2. Refused calls change nothing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_name_the_field_and_change_nothing() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    let weights_path = "/v1/routes/main/weights";
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        ("not JSON", weights_path, "canary=100", 400, "body"),
        ("empty body", weights_path, "", 400, "body"),
        (
            "unknown route",
            "/v1/routes/nosuch/weights",
            TO_CANARY,
            404,
            "route",
        ),
        (
            "unknown rule",
            weights_path,
            r#"{"rule": "nosuch", "weights": {"canary": 100}}"#,
            404,
            "rule",
        ),
        (
            "unknown subset",
            weights_path,
            r#"{"weights": {"stable": 50, "blue": 50}}"#,
            400,
            "weights.blue",
        ),
        (
            "unknown field",
            weights_path,
            r#"{"weights": {"stable": 0, "canary": 100}, "weight": 3}"#,
            400,
            "weight",
        ),
        (
            "weight above u32",
            weights_path,
            r#"{"weights": {"stable": 4294967296, "canary": 100}}"#,
            400,
            "weights.stable",
        ),
        (
            "weight as a string",
            weights_path,
            r#"{"weights": {"stable": "10", "canary": 100}}"#,
            400,
            "weights.stable",
        ),
        (
            "negative weight",
            weights_path,
            r#"{"weights": {"stable": -1, "canary": 100}}"#,
            400,
            "weights.stable",
        ),
        (
            "fractional weight",
            weights_path,
            r#"{"weights": {"stable": 0.5, "canary": 100}}"#,
            400,
            "weights.stable",
        ),
        (
            "all-zero weights",
            weights_path,
            r#"{"weights": {"stable": 0, "canary": 0}}"#,
            400,
            "weights",
        ),
        (
            "empty weights",
            weights_path,
            r#"{"weights": {}}"#,
            400,
            "weights",
        ),
        (
            "header route to an unknown subset",
            "/v1/routes/main/header-routes/h",
            r#"{"match": [{"header": "x-user", "exact": "beta"}], "subset": "blue"}"#,
            400,
            "subset",
        ),
        (
            "header route without conditions",
            "/v1/routes/main/header-routes/h",
            r#"{"match": [], "subset": "canary"}"#,
            400,
            "match",
        ),
        (
            "header route with an empty header name",
            "/v1/routes/main/header-routes/h",
            r#"{"match": [{"header": "", "exact": "beta"}], "subset": "canary"}"#,
            400,
            "match[0].header",
        ),
        (
            "header route on an unknown route",
            "/v1/routes/nosuch/header-routes/h",
            HEADER_ROUTE,
            404,
            "route",
        ),
    ];
    for (what, path, body, status, field) in cases {
        let r = put(admin, path, body).await;
        assert_eq!(r.status, *status, "{what}: {}", r.raw);
        assert_eq!(r.json["field"], *field, "{what}: {}", r.raw);
        assert!(
            r.json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: no error text: {}",
            r.raw
        );
        assert_eq!(
            state(admin).await["generation"],
            g0,
            "{what} changed the generation"
        );
    }

    // Wrong methods on known paths.
    for (method, path) in [
        (Method::GET, weights_path),
        (Method::POST, weights_path),
        (Method::DELETE, weights_path),
        (Method::POST, "/v1/state"),
        (Method::PUT, "/v1/state"),
        (Method::GET, "/v1/reload"),
        (Method::GET, "/v1/routes/main/overrides"),
        (Method::POST, "/v1/routes/main/header-routes/h"),
    ] {
        let r = call(admin, method.clone(), path, Some(TO_CANARY), &[]).await;
        r.expect_error(405, "method");
    }
    // Unknown paths.
    for path in [
        "/",
        "/v2/state",
        "/v1",
        "/v1/nosuch",
        "/v1/routes/main",
        "/v1/routes/main/weights/extra",
        "/v1/routes/main/nosuch",
    ] {
        let r = call(admin, Method::GET, path, None, &[]).await;
        r.expect_error(404, "path");
    }

    let s = state(admin).await;
    assert_eq!(s["generation"], g0);
    assert_eq!(rule(&s, "main", "primary")["source"], "file");
    assert_eq!(s["routes"]["main"]["header_routes"], json!([]));
    all_go_to(app.addr, 50, &[], "stable").await;
    all_go_to(app.addr, 5, &[("x-user", "beta")], "stable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_weighted_rules_need_a_rule_name() {
    let rules = "      - name: beta-users
        match:
          - headers: { x-user: { exact: beta } }
        route:
          - { destination: { service: svc, subset: stable }, weight: 100 }
          - { destination: { service: svc, subset: canary }, weight: 0 }
      - name: primary
        route:
          - { destination: { service: svc, subset: stable }, weight: 100 }
          - { destination: { service: svc, subset: canary }, weight: 0 }
";
    let (app, _stable, _canary) = two_subset_app(rules).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    put(admin, "/v1/routes/main/weights", TO_CANARY)
        .await
        .expect_error(400, "rule");
    assert_eq!(state(admin).await["generation"], g0);
    all_go_to(app.addr, 20, &[], "stable").await;

    let r = put(
        admin,
        "/v1/routes/main/weights",
        r#"{"rule": "beta-users", "weights": {"stable": 0, "canary": 100}}"#,
    )
    .await;
    assert_eq!(r.generation(), g0 + 1);
    all_go_to(app.addr, 20, &[("x-user", "beta")], "canary").await;
    all_go_to(app.addr, 20, &[], "stable").await;
    let s = state(admin).await;
    assert_eq!(rule(&s, "main", "beta-users")["source"], "api");
    assert_eq!(rule(&s, "main", "primary")["source"], "file");
}

// ---------------------------------------------------------------------------------------------
// 3. If-Match

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_guards_against_stale_generations() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    // The generations this test names in `If-Match`.
    let (first, second, third) = (g0.to_string(), (g0 + 1).to_string(), (g0 + 2).to_string());
    let stale = (g0 + 6).to_string();
    let quoted = format!("\"{second}\"");
    let path = "/v1/routes/main/weights";

    let r = call(
        admin,
        Method::PUT,
        path,
        Some(TO_CANARY),
        &[("if-match", first.as_str())],
    )
    .await;
    assert_eq!(r.generation(), g0 + 1);
    all_go_to(app.addr, 20, &[], "canary").await;

    // Stale: 409, the live generation in the answer, nothing changed.
    let back = r#"{"weights": {"stable": 100, "canary": 0}}"#;
    let r = call(
        admin,
        Method::PUT,
        path,
        Some(back),
        &[("if-match", first.as_str())],
    )
    .await;
    r.expect_error(409, "If-Match");
    assert_eq!(r.json["generation"], g0 + 1, "{}", r.raw);
    let r = call(
        admin,
        Method::POST,
        "/v1/reload",
        None,
        &[("if-match", first.as_str())],
    )
    .await;
    r.expect_error(409, "If-Match");
    assert_eq!(r.json["generation"], g0 + 1, "{}", r.raw);
    let r = call(
        admin,
        Method::DELETE,
        "/v1/routes/main/overrides",
        None,
        &[("if-match", stale.as_str())],
    )
    .await;
    r.expect_error(409, "If-Match");
    assert_eq!(r.json["generation"], g0 + 1, "{}", r.raw);

    // Garbage: 400.
    for garbage in ["abc", "-1", "1.0", ""] {
        let r = call(
            admin,
            Method::PUT,
            path,
            Some(back),
            &[("if-match", garbage)],
        )
        .await;
        r.expect_error(400, "If-Match");
    }
    let s = state(admin).await;
    assert_eq!(s["generation"], g0 + 1);
    assert_eq!(
        rule(&s, "main", "primary")["weights"],
        weights(&[("stable", 0), ("canary", 100)])
    );
    all_go_to(app.addr, 20, &[], "canary").await;

    // The live generation, quoted like an ETag, is accepted.
    let r = call(
        admin,
        Method::PUT,
        path,
        Some(back),
        &[("if-match", quoted.as_str())],
    )
    .await;
    assert_eq!(r.generation(), g0 + 2);
    all_go_to(app.addr, 20, &[], "stable").await;

    // Racing writers that all saw generation 3: exactly one wins, the others get 409.
    let racers: Vec<_> = (0..8u32)
        .map(|i| {
            let third = third.clone();
            tokio::spawn(async move {
                let body = format!(r#"{{"weights": {{"stable": {i}, "canary": 100}}}}"#);
                let r = call(
                    admin,
                    Method::PUT,
                    path,
                    Some(&body),
                    &[("if-match", third.as_str())],
                )
                .await;
                (r.status.as_u16(), r.json["generation"].as_u64())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in racers {
        answers.push(bounded("a racing PUT", t).await.unwrap());
    }
    answers.sort();
    let mut want = vec![(200, Some(g0 + 3))];
    want.extend(std::iter::repeat_n((409, Some(g0 + 3)), 7));
    assert_eq!(answers, want);
    assert_eq!(state(admin).await["generation"], g0 + 3);
}

// ---------------------------------------------------------------------------------------------
// 4. Bearer token

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_required_on_every_v1_call() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let dir = temp_dir("admin-token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-t0ken\n").unwrap();
    let yaml = format!(
        "{}\nadmin: {{ address: \"127.0.0.1:0\", token_file: \"{}\" }}\n",
        two_subset_config(stable.addr, canary.addr, RULES),
        token_file.display()
    );
    let app = spawn_app_in(dir, &yaml).await;
    let admin = app.app.admin_addr;
    let g0 = app.app.control.generation();
    let good = [("authorization", "Bearer s3cret-t0ken")];

    let calls: [(Method, &str, Option<&str>); 6] = [
        (Method::GET, "/v1/state", None),
        (Method::PUT, "/v1/routes/main/weights", Some(TO_CANARY)),
        (
            Method::PUT,
            "/v1/routes/main/header-routes/h",
            Some(HEADER_ROUTE),
        ),
        (Method::DELETE, "/v1/routes/main/overrides", None),
        (Method::POST, "/v1/reload", None),
        (Method::GET, "/v1/analysis?route=main&window=60s", None),
    ];
    let bad: [&[(&str, &str)]; 6] = [
        &[],
        &[("authorization", "Bearer wrong")],
        &[("authorization", "Bearer s3cret-t0ke")],
        &[("authorization", "Bearer s3cret-t0ken-and-more")],
        &[("authorization", "s3cret-t0ken")],
        &[("authorization", "Basic czNjcmV0LXQwa2Vu")],
    ];
    for (method, path, body) in &calls {
        for headers in bad {
            let r = call(admin, method.clone(), path, *body, headers).await;
            r.expect_error(401, "Authorization");
            assert_eq!(r.headers["www-authenticate"], "Bearer", "{method} {path}");
        }
    }

    // Nothing changed.
    let s = call(admin, Method::GET, "/v1/state", None, &good).await;
    assert_eq!(s.status, 200, "{}", s.raw);
    assert_eq!(s.json["generation"], g0, "{}", s.raw);
    assert_eq!(
        s.json["reloads"],
        json!({ "ok": 0, "error": 0 }),
        "{}",
        s.raw
    );
    assert_eq!(rule(&s.json, "main", "primary")["source"], "file");
    all_go_to(app.addr, 20, &[], "stable").await;

    // With the token.
    let r = call(
        admin,
        Method::PUT,
        "/v1/routes/main/weights",
        Some(TO_CANARY),
        &good,
    )
    .await;
    assert_eq!(r.generation(), g0 + 1);
    all_go_to(app.addr, 20, &[], "canary").await;
    let r = call(admin, Method::POST, "/v1/reload", None, &good).await;
    assert_eq!(r.generation(), g0 + 2);
    let r = call(
        admin,
        Method::DELETE,
        "/v1/routes/main/overrides",
        None,
        &good,
    )
    .await;
    assert_eq!(r.generation(), g0 + 3);
    all_go_to(app.addr, 20, &[], "stable").await;
}

/// The auth scheme is case-insensitive (RFC 9110 §11.1), and one or more spaces may follow it
/// (§11.4); the token itself is compared exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_matched_in_any_case() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let dir = temp_dir("admin-token-case");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-t0ken\n").unwrap();
    let yaml = format!(
        "{}\nadmin: {{ address: \"127.0.0.1:0\", token_file: \"{}\" }}\n",
        two_subset_config(stable.addr, canary.addr, RULES),
        token_file.display()
    );
    let app = spawn_app_in(dir, &yaml).await;
    let admin = app.app.admin_addr;
    for auth in [
        "BEARER s3cret-t0ken",
        "bearer s3cret-t0ken",
        "bEaReR s3cret-t0ken",
        "Bearer   s3cret-t0ken",
    ] {
        let r = call(
            admin,
            Method::GET,
            "/v1/state",
            None,
            &[("authorization", auth)],
        )
        .await;
        assert_eq!(r.status, 200, "{auth:?}: {}", r.raw);
    }
    for auth in [
        "BEARER S3CRET-T0KEN",
        "Bearers3cret-t0ken",
        "Bear s3cret-t0ken",
    ] {
        let r = call(
            admin,
            Method::GET,
            "/v1/state",
            None,
            &[("authorization", auth)],
        )
        .await;
        r.expect_error(401, "Authorization");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Header routes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_route_sends_matching_requests_to_its_subset_until_deleted() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    let path = "/v1/routes/main/header-routes/canary-hdr";

    let r = put(admin, path, HEADER_ROUTE).await;
    assert_eq!(r.generation(), g0 + 1);
    all_go_to(app.addr, 20, &[("x-user", "beta")], "canary").await;
    all_go_to(app.addr, 20, &[("x-user", "BETA")], "stable").await;
    all_go_to(app.addr, 20, &[("x-user", "alpha")], "stable").await;
    all_go_to(app.addr, 20, &[], "stable").await;

    let s = state(admin).await;
    assert_eq!(s["generation"], g0 + 1);
    let route = &s["routes"]["main"];
    let rules = route["rules"].as_array().unwrap();
    let names: Vec<&str> = rules.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["header-route/canary-hdr", "primary"], "{s:#}");
    assert_eq!(rules[0]["kind"], "header_route");
    assert_eq!(rules[0]["source"], "api");
    assert_eq!(rules[0]["weights"], weights(&[("canary", 100)]));
    assert_eq!(rules[1]["source"], "file");
    assert_eq!(
        route["header_routes"],
        json!([{
            "name": "canary-hdr",
            "match": [{ "header": "x-user", "exact": "beta" }],
            "subset": "canary",
        }])
    );

    // Replacing it keeps one header route.
    let r = put(
        admin,
        path,
        r#"{"match": [{"header": "X-User", "prefix": "gam"}], "subset": "canary"}"#,
    )
    .await;
    assert_eq!(r.generation(), g0 + 2);
    all_go_to(app.addr, 10, &[("x-user", "gamma")], "canary").await;
    all_go_to(app.addr, 10, &[("x-user", "beta")], "stable").await;
    let s = state(admin).await;
    assert_eq!(
        s["routes"]["main"]["header_routes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let r = delete(admin, path).await;
    assert_eq!(r.generation(), g0 + 3);
    all_go_to(app.addr, 20, &[("x-user", "gamma")], "stable").await;
    let s = state(admin).await;
    assert_eq!(s["routes"]["main"]["header_routes"], json!([]));
    let rules = s["routes"]["main"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{s:#}");
    assert_eq!(rules[0]["name"], "primary");

    // Deleting it again, or another unknown one: 404, nothing changes.
    delete(admin, path).await.expect_error(404, "name");
    delete(admin, "/v1/routes/main/header-routes/nosuch")
        .await
        .expect_error(404, "name");
    delete(admin, "/v1/routes/nosuch/header-routes/canary-hdr")
        .await
        .expect_error(404, "route");
    assert_eq!(state(admin).await["generation"], g0 + 3);
}

// ---------------------------------------------------------------------------------------------
// 6. Back to the file

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_overrides_returns_the_route_to_the_file() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    assert_eq!(
        put(admin, "/v1/routes/main/weights", TO_CANARY)
            .await
            .generation(),
        g0 + 1
    );
    let hdr = r#"{"match": [{"header": "x-user", "exact": "beta"}], "subset": "stable"}"#;
    assert_eq!(
        put(admin, "/v1/routes/main/header-routes/h", hdr)
            .await
            .generation(),
        g0 + 2
    );
    all_go_to(app.addr, 20, &[], "canary").await;
    all_go_to(app.addr, 20, &[("x-user", "beta")], "stable").await;

    let r = delete(admin, "/v1/routes/main/overrides").await;
    assert_eq!(r.generation(), g0 + 3);
    all_go_to(app.addr, 50, &[], "stable").await;
    let s = state(admin).await;
    assert_eq!(s["generation"], g0 + 3);
    let primary = rule(&s, "main", "primary");
    assert_eq!(primary["source"], "file");
    assert_eq!(
        primary["weights"],
        weights(&[("stable", 100), ("canary", 0)])
    );
    assert!(primary.get("file_weights").is_none(), "{s:#}");
    assert_eq!(s["routes"]["main"]["header_routes"], json!([]));
    assert_eq!(s["routes"]["main"]["rules"].as_array().unwrap().len(), 1);

    delete(admin, "/v1/routes/nosuch/overrides")
        .await
        .expect_error(404, "route");
    assert_eq!(state(admin).await["generation"], g0 + 3);
}

// ---------------------------------------------------------------------------------------------
// 7–9. Reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_weights_survive_a_reload_of_new_file_weights() {
    let (app, stable, canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    assert_eq!(
        put(admin, "/v1/routes/main/weights", TO_CANARY)
            .await
            .generation(),
        g0 + 1
    );

    rewrite(
        &app.config_path,
        &two_subset_config(stable.addr, canary.addr, RULES_60_40),
    );
    let r = reload(admin).await;
    assert!(r.generation() > 2, "{}", r.raw);
    all_go_to(app.addr, 50, &[], "canary").await;

    let s = state(admin).await;
    assert!(s["generation"].as_u64().unwrap() >= r.generation());
    let primary = rule(&s, "main", "primary");
    assert_eq!(primary["source"], "api");
    assert_eq!(
        primary["weights"],
        weights(&[("stable", 0), ("canary", 100)])
    );
    assert_eq!(
        primary["file_weights"],
        weights(&[("stable", 60), ("canary", 40)])
    );
    assert_eq!(s["last_reload"]["result"], "ok");
    assert_eq!(s["reloads"]["error"], 0);
    assert_eq!(s["dropped_overrides"], json!([]));

    // Back to the file: now 60/40.
    assert!(
        delete(admin, "/v1/routes/main/overrides")
            .await
            .generation()
            > r.generation()
    );
    let counts = served(app.addr, 200, &[]).await;
    assert!(
        counts.get("stable").is_some_and(|n| *n > 60)
            && counts.get("canary").is_some_and(|n| *n > 30),
        "200 requests at 60/40 went {counts:?}"
    );
}

/// A config whose service `svc` has only the `stable` subset.
fn stable_only_config(stable: SocketAddr) -> String {
    svc_config(
        &format!("      stable: {{ labels: {{ version: v1 }}, endpoints: [\"{stable}\"] }}\n"),
        "      - name: primary
        route:
          - { destination: { service: svc, subset: stable }, weight: 100 }
",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_drops_weights_of_a_removed_subset_and_says_so() {
    let (app, stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    assert_eq!(
        put(admin, "/v1/routes/main/weights", TO_CANARY)
            .await
            .generation(),
        g0 + 1
    );
    all_go_to(app.addr, 10, &[], "canary").await;

    // The file loses `canary`. The watcher reloads it; /v1/state says what was dropped and why.
    rewrite(&app.config_path, &stable_only_config(stable.addr));
    let s = state_until(admin, "the watcher reloads the file", |s| {
        s["reloads"]["ok"].as_u64() >= Some(1)
    })
    .await;
    let dropped = s["dropped_overrides"].as_array().unwrap();
    assert_eq!(dropped.len(), 1, "{s:#}");
    assert_eq!(dropped[0]["route"], "main");
    assert_eq!(
        dropped[0]["what"],
        json!({ "kind": "weights", "name": "primary" })
    );
    assert!(
        dropped[0]["reason"].as_str().unwrap().contains("canary"),
        "the reason names the subset: {s:#}"
    );
    let primary = rule(&s, "main", "primary");
    assert_eq!(primary["source"], "file");
    assert_eq!(primary["weights"], weights(&[("stable", 100)]));
    assert!(primary.get("file_weights").is_none(), "{s:#}");
    all_go_to(app.addr, 50, &[], "stable").await;

    // An explicit reload keeps it that way.
    let r = reload(admin).await;
    assert!(r.generation() > 2);
    all_go_to(app.addr, 50, &[], "stable").await;
    let s = state(admin).await;
    assert_eq!(rule(&s, "main", "primary")["source"], "file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_overrides_stay_visible_after_a_reload_via_the_api() {
    let (app, stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    assert_eq!(
        put(admin, "/v1/routes/main/weights", TO_CANARY)
            .await
            .generation(),
        g0 + 1
    );
    rewrite(&app.config_path, &stable_only_config(stable.addr));
    assert!(reload(admin).await.generation() > 2);
    // Whether the API or the watcher read the edit first, a later reload of the same file must
    // not erase the record of the drop.
    assert!(reload(admin).await.generation() > 3);
    let s = state(admin).await;
    all_go_to(app.addr, 10, &[], "stable").await;
    let dropped = s["dropped_overrides"].as_array().unwrap();
    assert_eq!(
        dropped.len(),
        1,
        "the canary weights were dropped by the edit, but /v1/state no longer says so: {s:#}"
    );
    assert_eq!(dropped[0]["route"], "main");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_file_is_refused_with_its_errors_and_changes_nothing() {
    let (app, stable, canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    assert_eq!(
        put(admin, "/v1/routes/main/weights", TO_CANARY)
            .await
            .generation(),
        g0 + 1
    );

    // Valid YAML, two validation errors.
    let broken = two_subset_config(
        stable.addr,
        canary.addr,
        "      - name: primary
        route:
          - { destination: { service: svc, subset: blue }, weight: 100 }
          - { destination: { service: svc, subset: canary }, weight: 0 }
        colour: red
",
    );
    rewrite(&app.config_path, &broken);
    let r = reload(admin).await;
    assert_eq!(r.status, 400, "{}", r.raw);
    let errors: Vec<&str> = r.json["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors list: {}", r.raw))
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(!errors.is_empty(), "{}", r.raw);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("colour") || e.contains("blue")),
        "the errors say what is wrong: {errors:?}"
    );
    assert!(
        r.json["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("routes")),
        "{}",
        r.raw
    );
    let s = state(admin).await;
    assert_eq!(s["generation"], g0 + 1, "{s:#}");
    assert_eq!(s["last_reload"]["result"], "error");
    assert!(
        !s["last_reload"]["errors"].as_array().unwrap().is_empty(),
        "{s:#}"
    );
    assert!(s["reloads"]["error"].as_u64() >= Some(1), "{s:#}");
    assert_eq!(s["reloads"]["ok"], 0);
    let primary = rule(&s, "main", "primary");
    assert_eq!(primary["source"], "api");
    assert_eq!(
        primary["weights"],
        weights(&[("stable", 0), ("canary", 100)])
    );
    assert_eq!(
        primary["file_weights"],
        weights(&[("stable", 100), ("canary", 0)])
    );
    all_go_to(app.addr, 50, &[], "canary").await;

    // Not even YAML.
    rewrite(&app.config_path, "listeners: [\n");
    let errors_before = state(admin).await["reloads"]["error"].as_u64().unwrap();
    let r = reload(admin).await;
    assert_eq!(r.status, 400, "{}", r.raw);
    assert!(
        !r.json["errors"].as_array().unwrap().is_empty(),
        "{}",
        r.raw
    );
    let s = state(admin).await;
    assert_eq!(s["generation"], g0 + 1);
    assert!(
        s["reloads"]["error"].as_u64().unwrap() > errors_before,
        "{s:#}"
    );
    all_go_to(app.addr, 20, &[], "canary").await;

    // Fixed: the reload is accepted and the API weights still apply.
    rewrite(
        &app.config_path,
        &two_subset_config(stable.addr, canary.addr, RULES_60_40),
    );
    assert!(reload(admin).await.generation() > 2);
    let s = state(admin).await;
    assert_eq!(s["last_reload"]["result"], "ok");
    assert!(s["reloads"]["ok"].as_u64() >= Some(1));
    all_go_to(app.addr, 20, &[], "canary").await;
}

// ---------------------------------------------------------------------------------------------
// 10. State file

/// Reads the state file, which must be valid JSON.
fn state_file(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {bytes:?}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_are_restored_from_the_state_file() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let dir = temp_dir("admin-state");
    let _cleanup = DirGuard(dir.clone());
    let state_path = dir.join("state.json");
    let config_path = dir.join("config.yaml");
    let yaml = format!(
        "{}\nadmin: {{ address: \"127.0.0.1:0\", state_file: \"{}\" }}\n",
        two_subset_config(stable.addr, canary.addr, RULES),
        state_path.display()
    );
    std::fs::write(&config_path, with_free_admin(&yaml)).unwrap();

    let (first, addr) = start_app(&config_path).await;
    let admin = first.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    assert!(!state_path.exists(), "nothing to persist yet");
    assert_eq!(
        put(admin, "/v1/routes/main/weights", TO_CANARY)
            .await
            .generation(),
        g0 + 1
    );
    let saved = state_file(&state_path);
    assert_eq!(
        saved["routes"]["main"]["weights"]["primary"],
        weights(&[("stable", 0), ("canary", 100)]),
        "{saved:#}"
    );
    let hdr = r#"{"match": [{"header": "x-user", "exact": "beta"}], "subset": "stable"}"#;
    assert_eq!(
        put(admin, "/v1/routes/main/header-routes/beta", hdr)
            .await
            .generation(),
        g0 + 2
    );
    let saved = state_file(&state_path);
    assert_eq!(
        saved["routes"]["main"]["header_routes"][0]["subset"], "stable",
        "{saved:#}"
    );
    assert_eq!(saved["routes"]["main"]["header_routes"][0]["name"], "beta");
    all_go_to(addr, 10, &[], "canary").await;
    all_go_to(addr, 10, &[("x-user", "beta")], "stable").await;
    bounded("shutdown", first.shutdown(Duration::from_millis(200))).await;

    // A new process from the same config: the overrides are back without any API call.
    let (second, addr) = start_app(&config_path).await;
    let admin = second.admin_addr;
    let g1 = state(admin).await["generation"].as_u64().unwrap();
    all_go_to(addr, 50, &[], "canary").await;
    all_go_to(addr, 20, &[("x-user", "beta")], "stable").await;
    let s = state(admin).await;
    assert!(g1 > g0 + 2, "a generation is not given out twice: {s:#}");
    assert_eq!(s["generation"], g1);
    assert_eq!(s["state_file_error"], Value::Null);
    let primary = rule(&s, "main", "primary");
    assert_eq!(primary["source"], "api");
    assert_eq!(
        primary["weights"],
        weights(&[("stable", 0), ("canary", 100)])
    );
    assert_eq!(rule(&s, "main", "header-route/beta")["source"], "api");
    assert_eq!(s["routes"]["main"]["header_routes"][0]["name"], "beta");

    // Clearing is persisted too.
    assert_eq!(
        delete(admin, "/v1/routes/main/overrides")
            .await
            .generation(),
        g1 + 1
    );
    let saved = state_file(&state_path);
    assert_eq!(
        saved["routes"].as_object().map(|m| m.len()).unwrap_or(0),
        0,
        "{saved:#}"
    );
    all_go_to(addr, 20, &[], "stable").await;
    bounded("shutdown", second.shutdown(Duration::from_millis(200))).await;
}

/// The state files set aside in `dir` (`state.json.rejected-*`).
fn rejected_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("state.json.rejected-"))
        })
        .collect();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_state_files_fall_back_to_the_file_and_say_so() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let dir = temp_dir("admin-state-bad");
    let _cleanup = DirGuard(dir.clone());
    let state_path = dir.join("state.json");
    let config_path = dir.join("config.yaml");
    let yaml = format!(
        "{}\nadmin: {{ address: \"127.0.0.1:0\", state_file: \"{}\" }}\n",
        two_subset_config(stable.addr, canary.addr, RULES),
        state_path.display()
    );
    std::fs::write(&config_path, with_free_admin(&yaml)).unwrap();

    // Not JSON: the gateway starts from the file and reports the problem.
    std::fs::write(&state_path, "{ half a file").unwrap();
    let (app, addr) = start_app(&config_path).await;
    let g0 = state(app.admin_addr).await["generation"].as_u64().unwrap();
    let s = state(app.admin_addr).await;
    assert!(
        s["state_file_error"]
            .as_str()
            .is_some_and(|e| e.contains("state.json")),
        "{s:#}"
    );
    assert_eq!(rule(&s, "main", "primary")["source"], "file");
    // What was there is kept beside it, not overwritten by the next change.
    let kept = rejected_files(&dir);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read_to_string(&kept[0]).unwrap(), "{ half a file");
    assert!(
        s["state_file_error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("kept as {}", kept[0].display()))),
        "{s:#}"
    );
    all_go_to(addr, 20, &[], "stable").await;
    // The next change writes a good file and clears the problem.
    assert_eq!(
        put(app.admin_addr, "/v1/routes/main/weights", TO_CANARY)
            .await
            .generation(),
        g0 + 1
    );
    assert_eq!(state(app.admin_addr).await["state_file_error"], Value::Null);
    let saved = state_file(&state_path);
    assert_eq!(saved["routes"]["main"]["weights"]["primary"]["canary"], 100);
    bounded("shutdown", app.shutdown(Duration::from_millis(200))).await;

    assert_eq!(rejected_files(&dir).len(), 1, "the kept file stays");
    // Saved overrides that name a subset the file no longer has: dropped at start, and said so.
    let weights_for = json!({ "routes": { "main": { "weights": {
        "primary": { "stable": 0, "blue": 100 }
    } } } });
    std::fs::write(&state_path, weights_for.to_string()).unwrap();
    let (app, addr) = start_app(&config_path).await;
    let s = state(app.admin_addr).await;
    let dropped = s["dropped_overrides"].as_array().unwrap();
    assert_eq!(dropped.len(), 1, "{s:#}");
    assert_eq!(dropped[0]["route"], "main");
    assert!(
        dropped[0]["reason"].as_str().unwrap().contains("blue"),
        "{s:#}"
    );
    assert_eq!(rule(&s, "main", "primary")["source"], "file");
    all_go_to(addr, 20, &[], "stable").await;
    bounded("shutdown", app.shutdown(Duration::from_millis(200))).await;
}

// ---------------------------------------------------------------------------------------------
// 11. Readiness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_503_while_draining_and_in_flight_requests_finish() {
    let slow = spawn_upstream("stable", Behavior::Slow(Duration::from_millis(800))).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let dir = temp_dir("admin-ready");
    let _cleanup = DirGuard(dir.clone());
    let config_path = dir.join("config.yaml");
    std::fs::write(
        &config_path,
        with_free_admin(&two_subset_config(slow.addr, canary.addr, RULES)),
    )
    .unwrap();
    let (app, addr) = start_app(&config_path).await;
    let ready_url = format!("http://{}/healthz/ready", app.readiness_addr);
    let probe = http1_client();
    let a = bounded("readiness", get(&probe, &ready_url, &[])).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "ready\n"));

    let in_flight = tokio::spawn(async move {
        let client = http1_client();
        get(&client, &format!("http://{addr}/slow"), &[]).await
    });
    // The upstream logs a request when it arrives: then the gateway is surely serving it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while slow.count() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shutdown = tokio::spawn(app.shutdown(Duration::from_secs(5)));

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = bounded("readiness", get(&probe, &ready_url, &[])).await;
        if a.status == 503 {
            assert_eq!(a.body, "draining\n");
            break;
        }
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "readiness must turn 503 before the in-flight request completes"
    );
    let a = bounded("the in-flight request", in_flight).await.unwrap();
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "stable\n"));
    bounded("shutdown", shutdown).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 12. `splitgate weights`

/// Runs the `splitgate` binary with `args` (off the async workers, so the in-process gateway keeps
/// serving); kills it if it takes longer than `WAIT`.
async fn cli(args: &[&str]) -> std::process::Output {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_splitgate"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the splitgate binary starts");
    let pid = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(WAIT, waiting).await {
        Ok(out) => out.unwrap().unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("splitgate {args:?} did not finish within {WAIT:?}");
        }
    }
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_cli_sets_and_shows_weights() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let base = format!("http://{}", app.app.admin_addr);
    let g0 = state(app.app.admin_addr).await["generation"]
        .as_u64()
        .unwrap();

    let out = cli(&[
        "weights",
        "set",
        "main",
        "stable=25",
        "canary=75",
        "--admin",
        &base,
    ])
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {stdout:?} stderr {stderr:?}"
    );
    assert_eq!(stdout.trim(), format!("generation {}", g0 + 1));
    let s = state(app.app.admin_addr).await;
    assert_eq!(s["generation"], g0 + 1);
    assert_eq!(
        rule(&s, "main", "primary")["weights"],
        weights(&[("stable", 25), ("canary", 75)])
    );
    let counts = served(app.addr, 200, &[]).await;
    assert!(
        counts.get("canary").is_some_and(|n| *n > 100)
            && counts.get("stable").is_some_and(|n| *n > 20),
        "200 requests at 25/75 went {counts:?}"
    );

    let out = cli(&["weights", "get", "main", "--admin", &base]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {stdout:?} stderr {stderr:?}"
    );
    assert!(
        stdout.contains(&format!("generation {}", g0 + 1)),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("primary"))
        .unwrap_or_else(|| panic!("no line for the rule: {stdout}"));
    assert!(line.contains("canary=75 stable=25"), "{line}");
    assert!(line.contains("api"), "{line}");
    assert!(line.contains("file: canary=0 stable=100"), "{line}");

    let out = cli(&[
        "weights",
        "set",
        "main",
        "--rule",
        "primary",
        "stable=100",
        "--admin",
        &base,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(text(&out).0.trim(), format!("generation {}", g0 + 2));
    all_go_to(app.addr, 20, &[], "stable").await;

    // Refused by the gateway: exit 1 with its error.
    let out = cli(&["weights", "set", "nosuch", "canary=5", "--admin", &base]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout {stdout:?} stderr {stderr:?}"
    );
    assert!(stderr.contains("unknown route \"nosuch\""), "{stderr}");
    assert!(stderr.contains("route"), "{stderr}");
    let out = cli(&["weights", "set", "main", "blue=5", "--admin", &base]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("weights.blue"), "{stderr}");
    let out = cli(&["weights", "get", "nosuch", "--admin", &base]).await;
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    assert_eq!(state(app.app.admin_addr).await["generation"], g0 + 2);

    // Nobody listening: exit 2.
    let closed = format!("http://{}", dead_addr().await);
    let out = cli(&["weights", "set", "main", "canary=5", "--admin", &closed]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot reach"), "{stderr}");
    let out = cli(&["weights", "get", "main", "--admin", &closed]).await;
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_cli_sends_the_token_file() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let dir = temp_dir("admin-cli-token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "cli-t0ken\n").unwrap();
    let yaml = format!(
        "{}\nadmin: {{ address: \"127.0.0.1:0\", token_file: \"{}\" }}\n",
        two_subset_config(stable.addr, canary.addr, RULES),
        token_file.display()
    );
    let app = spawn_app_in(dir, &yaml).await;
    let base = format!("http://{}", app.app.admin_addr);
    let g0 = app.app.control.generation();
    let token = token_file.to_str().unwrap();

    let out = cli(&["weights", "set", "main", "canary=100", "--admin", &base]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    let out = cli(&[
        "weights",
        "set",
        "main",
        "canary=100",
        "--admin",
        &base,
        "--token-file",
        token,
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert_eq!(text(&out).0.trim(), format!("generation {}", g0 + 1));
    all_go_to(app.addr, 20, &[], "canary").await;
}

// ---------------------------------------------------------------------------------------------
// Found while writing these tests (see the report): each names the input, what a user would
// expect, and is ignored until the gateway does it.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_garbage_after_the_json_body_is_refused() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    let r = put(
        admin,
        "/v1/routes/main/weights",
        r#"{"weights": {"stable": 0, "canary": 100}} {"weights": {"stable": 100}}"#,
    )
    .await;
    r.expect_error(400, "body");
    assert_eq!(state(admin).await["generation"], g0);
    all_go_to(app.addr, 20, &[], "stable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_fields_are_named() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    put(admin, "/v1/routes/main/weights", r#"{"rule": "primary"}"#)
        .await
        .expect_error(400, "weights");
    put(
        admin,
        "/v1/routes/main/header-routes/h",
        r#"{"match": [{"header": "x-user", "exact": "beta"}]}"#,
    )
    .await
    .expect_error(400, "subset");
    put(
        admin,
        "/v1/routes/main/header-routes/h",
        r#"{"subset": "canary"}"#,
    )
    .await
    .expect_error(400, "match");
    assert_eq!(state(admin).await["generation"], g0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_header_route_conditions_name_the_api_field() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    for body in [
        r#"{"match": [{"header": "x-user", "regex": "("}], "subset": "canary"}"#,
        r#"{"match": [{"header": "x-user"}], "subset": "canary"}"#,
        r#"{"match": [{"header": "x-user", "exact": "a", "prefix": "b"}], "subset": "canary"}"#,
        r#"{"match": [{"header": "bad header", "exact": "a"}], "subset": "canary"}"#,
    ] {
        let r = put(admin, "/v1/routes/main/header-routes/h", body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.raw);
        let field = r.json["field"].as_str().unwrap_or_default();
        assert!(
            field.starts_with("match[0]"),
            "{body}: the field should be where the API body is wrong: {}",
            r.raw
        );
        let error = r.json["error"].as_str().unwrap_or_default();
        assert!(
            !error.contains("config file"),
            "{body}: the config file is fine, the request is not: {}",
            r.raw
        );
    }
    assert_eq!(state(admin).await["generation"], g0);
}

/// An answer read off a raw connection.
struct RawReply {
    status: u16,
    /// Header fields, names lowercased.
    headers: Vec<(String, String)>,
    json: Value,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one whole answer (its body framed by `content-length`, and JSON) from `stream`.
async fn raw_reply(stream: &mut tokio::net::TcpStream) -> RawReply {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut fields);
        if let httparse::Status::Complete(head) = resp.parse(&got).expect("an HTTP answer") {
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
            if got.len() >= head + len {
                let json = serde_json::from_slice(&got[head..head + len]).expect("a JSON body");
                return RawReply {
                    status: resp.code.unwrap(),
                    headers,
                    json,
                };
            }
        }
        let mut buf = [0u8; 8192];
        let n = bounded("the answer", stream.read(&mut buf))
            .await
            .expect("the connection is not reset under the answer");
        assert!(
            n > 0,
            "closed before a whole answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// Asserts that the gateway closes `stream` cleanly (no reset), with nothing more to read.
async fn assert_closed_cleanly(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    bounded("the close", stream.read_to_end(&mut rest))
        .await
        .expect("closed, not reset");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

/// A body over the 64 KiB limit is 413 with the usual JSON error, whether its length is
/// declared or it comes chunked, and even when the client writes all of it before reading: the
/// gateway reads and drops the rest, so its close does not reset the connection under the
/// answer. Nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_64_kib_is_413_with_a_json_error() {
    use tokio::io::AsyncWriteExt;
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    let padded = format!(
        r#"{{"weights": {{"stable": 0, "canary": 100}}, "rule": "{}"}}"#,
        "x".repeat(100_000)
    );
    put(admin, "/v1/routes/main/weights", &padded)
        .await
        .expect_error(413, "body");

    let big = vec![b' '; 8 << 20];
    let declared = format!(
        "PUT /v1/routes/main/weights HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\r\n",
        big.len()
    );
    let chunked = "PUT /v1/routes/main/weights HTTP/1.1\r\nhost: a\r\n\
                   transfer-encoding: chunked\r\n\r\n";
    for (head, framed) in [
        (declared.as_str(), big.clone()),
        (
            chunked,
            [
                format!("{:x}\r\n", big.len()).as_bytes(),
                &big,
                b"\r\n0\r\n\r\n",
            ]
            .concat(),
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
        let request = [head.as_bytes(), &framed].concat();
        bounded("writing 8 MiB", stream.write_all(&request))
            .await
            .expect("the gateway reads the whole body");
        let reply = raw_reply(&mut stream).await;
        assert_eq!(reply.status, 413, "{head}: {}", reply.json);
        assert_eq!(reply.json["field"], "body", "{}", reply.json);
        let error = reply.json["error"].as_str().unwrap_or_default();
        assert!(error.contains("65536"), "{error}");
        assert_eq!(reply.header("connection"), Some("close"));
        assert_closed_cleanly(&mut stream).await;
    }
    // A client that waits for `100 Continue` is told 413 instead, and sends nothing.
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let waiting = format!(
        "PUT /v1/routes/main/weights HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\n\
         expect: 100-continue\r\n\r\n",
        big.len()
    );
    stream.write_all(waiting.as_bytes()).await.unwrap();
    let reply = raw_reply(&mut stream).await;
    assert_eq!(reply.status, 413, "{}", reply.json);
    // Closed at once: no wait for a body that was never asked for (dropping one waits up to 5 s).
    let mut rest = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest);
    let closed = tokio::time::timeout(Duration::from_secs(3), read).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    assert_eq!(state(admin).await["generation"], g0);
    all_go_to(app.addr, 20, &[], "stable").await;
}

/// Deeply nested JSON is refused as its first bytes arrive, not after the whole body: a client
/// that sends `[[[[…` slowly, or never finishes, gets its 400 at once, and other calls meanwhile
/// are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_400_at_once_and_blocks_nothing() {
    use tokio::io::AsyncWriteExt;
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g0 = state(admin).await["generation"].as_u64().unwrap();
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    // 60,000 bytes announced, within the limit; only the first 1,000 are ever sent.
    let head = "PUT /v1/routes/main/weights HTTP/1.1\r\nhost: a\r\ncontent-length: 60000\r\n\r\n";
    let first = [head.as_bytes(), &[b'['; 1000]].concat();
    stream.write_all(&first).await.unwrap();
    let meanwhile = tokio::spawn(async move { state(admin).await["generation"].clone() });
    let reply = raw_reply(&mut stream).await;
    assert_eq!(reply.status, 400, "{}", reply.json);
    assert_eq!(reply.json["field"], "body", "{}", reply.json);
    let error = reply.json["error"].as_str().unwrap_or_default();
    assert!(error.contains("nested deeper than"), "{error}");
    assert_eq!(reply.header("connection"), Some("close"));
    let generation = bounded("the call made meanwhile", meanwhile).await.unwrap();
    assert_eq!(generation, g0);
    // The whole body, sent at once, is refused the same way.
    let nested = "[".repeat(60_000);
    put(admin, "/v1/routes/main/weights", &nested)
        .await
        .expect_error(400, "body");
    assert_eq!(state(admin).await["generation"], g0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_not_allowed_lists_the_allowed_methods() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    for (method, path, allowed) in [
        (Method::GET, "/v1/routes/main/weights", "PUT"),
        (Method::POST, "/v1/state", "GET"),
        (Method::GET, "/v1/reload", "POST"),
        (Method::GET, "/v1/routes/main/overrides", "DELETE"),
    ] {
        let r = call(admin, method.clone(), path, None, &[]).await;
        r.expect_error(405, "method");
        let allow = r
            .headers
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{method} {path}: no Allow header"));
        assert!(allow.contains(allowed), "{method} {path}: Allow: {allow}");
    }
}

/// A file edit that `POST /v1/reload` already loaded is not loaded a second time by the watcher
/// (one edit, one reload, one generation). Nothing signals that nothing happens, so a second
/// edit that the watcher must load is the signal: once it is served, the generation must be
/// exactly one past the API's, with nothing in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_loaded_through_the_api_is_not_reloaded_again_by_the_watcher() {
    let (app, stable, canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    rewrite(&app.config_path, &stable_only_config(stable.addr));
    // Straight away, inside the watcher's debounce, so the API usually reads the edit first. (On
    // a loaded machine the watcher may read it first; the explicit POST then reloads again, as
    // asked. Either way, nothing may reload after the API has answered.)
    let generation = reload(admin).await.generation();
    let s = state(admin).await;
    assert_eq!(
        rule(&s, "main", "primary")["weights"],
        weights(&[("stable", 100)])
    );
    // The second edit, which only the watcher can load.
    rewrite(
        &app.config_path,
        &two_subset_config(stable.addr, canary.addr, RULES_60_40),
    );
    let s = state_until(admin, "the watcher loads the second edit", |s| {
        s["routes"]["main"]["rules"][0]["weights"] == weights(&[("stable", 60), ("canary", 40)])
    })
    .await;
    assert_eq!(
        s["generation"].as_u64(),
        Some(generation + 1),
        "the first edit was reloaded again after the API had loaded it: {s:#}"
    );
}

#[tokio::test]
async fn an_unnamed_rule_keeps_its_name_when_api_rules_go_in_front() {
    let unnamed = "      - route:
          - { destination: { service: svc, subset: stable }, weight: 100 }
          - { destination: { service: svc, subset: canary }, weight: 0 }
";
    let (app, _stable, _canary) = two_subset_app(unnamed).await;
    let admin = app.app.admin_addr;
    let r = put(admin, "/v1/routes/main/header-routes/beta", HEADER_ROUTE).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let s = state(admin).await;
    let names: Vec<&str> = s["routes"]["main"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names[1], "rule-0",
        "the file's rule is still rule-0: {names:?}"
    );
    assert_eq!(rule(&s, "main", "rule-0")["source"], "file");
    // Writes to it find it.
    let r = put(admin, "/v1/routes/main/weights?rule=rule-0", TO_CANARY).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    all_go_to(app.addr, 10, &[], "canary").await;
}

// ---------------------------------------------------------------------------------------------
// Issue 15: durability, generations, ETags, error bodies, match rules, analysis, restarts

/// A config whose `admin.state_file` is `state` (admin, readiness, metrics on free ports).
fn with_state_file(stable: SocketAddr, canary: SocketAddr, rules: &str, state: &Path) -> String {
    with_free_admin(&format!(
        "{}\nadmin: {{ address: \"127.0.0.1:0\", state_file: \"{}\" }}\n",
        two_subset_config(stable, canary, rules),
        state.display()
    ))
}

/// A change whose state file cannot be written is refused with a 5xx that says why, and nothing
/// changes: the split served and `/v1/state` are as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_persisted_fails_and_changes_nothing() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let dir = temp_dir("admin-persist-fail");
    let _cleanup = DirGuard(dir.clone());
    // A directory that does not exist: reading finds no file, writing cannot create one.
    let state_path = dir.join("missing").join("state.json");
    let config_path = dir.join("config.yaml");
    std::fs::write(
        &config_path,
        with_state_file(stable.addr, canary.addr, RULES, &state_path),
    )
    .unwrap();
    let (app, addr) = start_app(&config_path).await;
    let admin = app.admin_addr;
    let before = state(admin).await;
    for (path, body) in [
        ("/v1/routes/main/weights", TO_CANARY),
        ("/v1/routes/main/header-routes/beta", HEADER_ROUTE),
    ] {
        let r = put(admin, path, body).await;
        assert_eq!(r.status, 500, "{path}: {}", r.raw);
        assert_eq!(r.json["field"], "admin.state_file", "{}", r.raw);
        let error = r.json["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("state.json") && error.contains("nothing was changed"),
            "{error}"
        );
        let after = state(admin).await;
        assert_eq!(after["generation"], before["generation"], "{after:#}");
        assert_eq!(after["routes"], before["routes"], "{after:#}");
        all_go_to(addr, 20, &[], "stable").await;
        all_go_to(addr, 5, &[("x-user", "beta")], "stable").await;
    }
    bounded("shutdown", app.shutdown(Duration::from_millis(200))).await;
}

/// A generation is never seen twice, across restarts too: with a state file and without one,
/// a restarted gateway starts above every generation the last process gave out, so a
/// controller's stale `If-Match` cannot match a new, unrelated state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_do_not_repeat_across_restarts() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let dir = temp_dir("admin-generation");
    let _cleanup = DirGuard(dir.clone());
    let with_state = dir.join("with-state.yaml");
    std::fs::write(
        &with_state,
        with_state_file(stable.addr, canary.addr, RULES, &dir.join("state.json")),
    )
    .unwrap();
    let without_state = dir.join("without-state.yaml");
    std::fs::write(
        &without_state,
        with_free_admin(&two_subset_config(stable.addr, canary.addr, RULES)),
    )
    .unwrap();
    for config_path in [&with_state, &without_state] {
        let (first, _) = start_app(config_path).await;
        let mut last = state(first.admin_addr).await["generation"]
            .as_u64()
            .unwrap();
        for body in [TO_CANARY, r#"{"weights": {"stable": 50, "canary": 50}}"#] {
            let g = put(first.admin_addr, "/v1/routes/main/weights", body)
                .await
                .generation();
            assert_eq!(g, last + 1, "one change, one step");
            last = g;
        }
        bounded("shutdown", first.shutdown(Duration::from_millis(200))).await;
        let (second, _) = start_app(config_path).await;
        let admin = second.admin_addr;
        let start = state(admin).await["generation"].as_u64().unwrap();
        assert!(
            start > last,
            "{}: the restarted gateway is at {start}, the last one reached {last}",
            config_path.display()
        );
        // The last process's generation is stale for the new one.
        let r = call(
            admin,
            Method::PUT,
            "/v1/routes/main/weights",
            Some(TO_CANARY),
            &[("if-match", &last.to_string())],
        )
        .await;
        r.expect_error(409, "If-Match");
        bounded("shutdown", second.shutdown(Duration::from_millis(200))).await;
    }
}

/// `GET /v1/state` sends the generation as a quoted `ETag`; `If-Match` takes it quoted or bare,
/// and `*` (any current state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_sends_an_etag_and_if_match_takes_it_or_a_star() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let r = call(admin, Method::GET, "/v1/state", None, &[]).await;
    let g = r.json["generation"].as_u64().unwrap();
    let etag = r
        .headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no ETag: {:?}", r.headers))
        .to_string();
    assert_eq!(etag, format!("\"{g}\""));
    let put_if = |value: String| async move {
        call(
            admin,
            Method::PUT,
            "/v1/routes/main/weights",
            Some(TO_CANARY),
            &[("if-match", &value)],
        )
        .await
    };
    assert_eq!(put_if(etag.clone()).await.generation(), g + 1);
    assert_eq!(put_if((g + 1).to_string()).await.generation(), g + 2);
    assert_eq!(put_if("*".into()).await.generation(), g + 3);
    put_if(etag).await.expect_error(409, "If-Match");
    let r = call(admin, Method::GET, "/v1/state", None, &[]).await;
    assert_eq!(
        r.headers.get("etag").and_then(|v| v.to_str().ok()),
        Some(format!("\"{}\"", g + 3).as_str())
    );
    all_go_to(app.addr, 10, &[], "canary").await;
}

/// Malformed bodies get a message a person can act on, never `"field": "?"` or a Rust type name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_plain_errors() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g = state(admin).await["generation"].clone();
    let r = put(
        admin,
        "/v1/routes/main/weights",
        r#"{"weights": {"stable": 1"#,
    )
    .await;
    r.expect_error(400, "body");
    let error = r.json["error"].as_str().unwrap();
    assert!(error.contains("ends before"), "{error}");
    for body in ["[]", "[1, 2]", "42", "\"x\""] {
        let r = put(admin, "/v1/routes/main/weights", body).await;
        r.expect_error(400, "body");
        let error = r.json["error"].as_str().unwrap();
        assert!(error.contains("must be a JSON object"), "{body}: {error}");
        assert!(
            !error.contains("WeightsBody") && !error.contains("elements"),
            "{body}: {error}"
        );
    }
    let r = put(
        admin,
        "/v1/routes/main/header-routes/h",
        r#"{"match": [1], "subset": "canary"}"#,
    )
    .await;
    r.expect_error(400, "match[0]");
    let error = r.json["error"].as_str().unwrap();
    assert!(!error.contains("HeaderMatch"), "{error}");
    let r = put(admin, "/v1/routes/main/weights", "").await;
    r.expect_error(400, "body");
    assert!(
        r.json["error"].as_str().unwrap().contains("empty"),
        "{}",
        r.raw
    );
    assert_eq!(state(admin).await["generation"], g);
}

/// A body declared over 64 KiB is 413 on every call, before anything else about the call is
/// looked at (a malformed `If-Match`, a call that takes no body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_body_over_64_kib_is_413() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let g = state(admin).await["generation"].clone();
    let big = format!(
        r#"{{"weights": {{"stable": 0, "canary": 100}}{}}}"#,
        " ".repeat(70_000)
    );
    for (method, path, headers) in [
        (
            Method::PUT,
            "/v1/routes/main/weights",
            &[("if-match", "abc")][..],
        ),
        (Method::POST, "/v1/reload", &[][..]),
        (Method::DELETE, "/v1/routes/main/overrides", &[][..]),
        (Method::PUT, "/v1/routes/nope/weights", &[][..]),
    ] {
        let r = call(admin, method.clone(), path, Some(&big), headers).await;
        assert_eq!(r.status, 413, "{method} {path}: {}", r.raw);
        assert_eq!(r.json["field"], "body", "{}", r.raw);
    }
    assert_eq!(state(admin).await["generation"], g);
    all_go_to(app.addr, 10, &[], "stable").await;
}

/// A route name in the path is percent-decoded; an invalid encoding is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_names_in_the_path_are_percent_decoded() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let yaml = two_subset_config(stable.addr, canary.addr, RULES)
        .replace("- name: main", "- name: \"main route\"");
    let app = spawn_app(&yaml).await;
    let admin = app.app.admin_addr;
    let g = put(admin, "/v1/routes/main%20route/weights", TO_CANARY)
        .await
        .generation();
    all_go_to(app.addr, 10, &[], "canary").await;
    for bad in ["main%2", "main%zzroute", "main%FFroute"] {
        let r = put(admin, &format!("/v1/routes/{bad}/weights"), TO_CANARY).await;
        r.expect_error(400, "route");
        assert!(
            r.json["error"].as_str().unwrap().contains("percent"),
            "{}",
            r.raw
        );
    }
    let r = delete(admin, "/v1/routes/main%20route/header-routes/no%20such").await;
    r.expect_error(404, "name");
    assert!(
        r.json["error"].as_str().unwrap().contains("\"no such\""),
        "{}",
        r.raw
    );
    assert_eq!(state(admin).await["generation"], g);
}

/// `present: false` is refused with a pointer to what the header-route API takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn present_false_points_to_what_the_api_accepts() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let body = r#"{"match": [{"header": "x-user", "present": false}], "subset": "canary"}"#;
    let r = put(admin, "/v1/routes/main/header-routes/h", body).await;
    r.expect_error(400, "match[0].present");
    let error = r.json["error"].as_str().unwrap();
    assert!(!error.contains("without_headers"), "{error}");
    assert!(error.contains("exact, prefix, suffix, regex"), "{error}");
}

/// Weights on a rule with a match apply to that rule's own destinations (as in Istio) and
/// the match stays; calls without `rule` still address the route's weighted rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_on_a_match_rule_keep_its_match_and_rule_less_calls_work() {
    let rules = format!(
        "      - name: by-header
        match:
          - headers: {{ x-canary: {{ exact: always }} }}
        route:
          - destination: {{ service: svc, subset: canary }}
{}",
        primary_rule(100, 0)
    );
    let (app, _stable, _canary) = two_subset_app(&rules).await;
    let admin = app.app.admin_addr;
    let body = r#"{"rule": "by-header", "weights": {"stable": 100, "canary": 0}}"#;
    put(admin, "/v1/routes/main/weights", body)
        .await
        .generation();
    all_go_to(app.addr, 10, &[("x-canary", "always")], "stable").await;
    all_go_to(app.addr, 10, &[], "stable").await;
    let s = state(admin).await;
    let by_header = rule(&s, "main", "by-header");
    assert_eq!(
        by_header["match"][0]["headers"]["x-canary"]["exact"],
        "always"
    );
    assert_eq!(
        by_header["weights"],
        weights(&[("stable", 100), ("canary", 0)])
    );
    // Without `rule`: the weighted rule, `primary`, as before.
    for _ in 0..2 {
        put(admin, "/v1/routes/main/weights", TO_CANARY)
            .await
            .generation();
    }
    all_go_to(app.addr, 10, &[], "canary").await;
    all_go_to(app.addr, 10, &[("x-canary", "always")], "stable").await;
    let s = state(admin).await;
    assert_eq!(
        rule(&s, "main", "primary")["weights"],
        weights(&[("stable", 0), ("canary", 100)])
    );
    let mirror = r#"{"subset": "canary", "percentage": 10}"#;
    put(admin, "/v1/routes/main/mirror-routes/m", mirror)
        .await
        .generation();
    let r = call(admin, Method::GET, "/v1/routes/main/weights", None, &[]).await;
    assert_eq!(r.status, 405);
    let out = put(
        admin,
        "/v1/routes/main/weights",
        r#"{"weights": {"stable": 100}}"#,
    )
    .await;
    out.generation();
    all_go_to(app.addr, 10, &[], "stable").await;
}

/// `/v1/analysis` counts whole seconds only, refuses windows it cannot honour, and gives
/// `null` rates without traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_counts_whole_seconds_and_refuses_windows_it_cannot_honour() {
    let (app, _stable, _canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let analysis = |window: &'static str| async move {
        call(
            admin,
            Method::GET,
            &format!("/v1/analysis?route=main&window={window}"),
            None,
            &[],
        )
        .await
    };
    for (window, words) in [
        ("1.5s", "whole number of seconds"),
        ("1500ms", "whole number of seconds"),
        ("601s", "600"),
        ("0s", "600"),
    ] {
        let r = analysis(window).await;
        r.expect_error(400, "window");
        let error = r.json["error"].as_str().unwrap();
        assert!(error.contains(words), "{window}: {error}");
    }
    let r = analysis("600s").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let canary = &r.json["subsets"]["canary"];
    assert_eq!(canary["status"], "no_traffic", "{}", r.raw);
    assert_eq!(canary["requests"], 0);
    assert_eq!(canary["rps"], Value::Null, "{}", r.raw);
    assert_eq!(canary["success_rate"], Value::Null);

    // Requests of the second still under way are not counted yet. (Bracketed by the clock: when
    // the requests and the question fall in one second, that second must not count.)
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let t0 = now();
    served(app.addr, 5, &[]).await;
    let r = analysis("1s").await;
    if now() == t0 {
        assert_eq!(r.json["subsets"]["stable"]["requests"], 0, "{}", r.raw);
    }
    // Once their second is over, they are.
    let deadline = tokio::time::Instant::now() + WAIT;
    let r = loop {
        let r = analysis("60s").await;
        if r.json["subsets"]["stable"]["requests"] == 5 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", r.raw);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stable = &r.json["subsets"]["stable"];
    assert_eq!(stable["rps"].as_f64(), Some(5.0 / 60.0), "{}", r.raw);
    assert_eq!(stable["status"], "ok");
}

/// A reload that changes settings only a restart applies says which, and applies the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_names_the_settings_that_need_a_restart() {
    let (app, stable, canary) = two_subset_app(RULES).await;
    let admin = app.app.admin_addr;
    let r = reload(admin).await;
    r.generation();
    assert_eq!(r.json["restart_required"], json!([]), "{}", r.raw);
    let moved = format!(
        "{}\nmetrics: {{ address: \"127.0.0.1:{}\" }}\nreadiness: {{ address: \"127.0.0.1:{}\" }}\n",
        two_subset_config(stable.addr, canary.addr, RULES_60_40),
        free_port(),
        free_port()
    );
    rewrite(&app.config_path, &moved);
    let r = reload(admin).await;
    r.generation();
    assert_eq!(
        r.json["restart_required"],
        json!(["readiness.address", "metrics.address"]),
        "{}",
        r.raw
    );
    // The rest is applied; the metrics server stays where it was.
    let s = state(admin).await;
    assert_eq!(
        rule(&s, "main", "primary")["weights"],
        weights(&[("stable", 60), ("canary", 40)])
    );
    let metrics = http1_client();
    let a = get(
        &metrics,
        &format!("http://{}/metrics", app.app.metrics_addr),
        &[],
    )
    .await;
    assert_eq!(a.status, 200);
    // Still listed at the next reload: it is still not applied.
    let r = reload(admin).await;
    assert_eq!(
        r.json["restart_required"],
        json!(["readiness.address", "metrics.address"]),
        "{}",
        r.raw
    );
}
