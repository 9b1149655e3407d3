//! CORS (`cors_policy` on a rule, Istio's `corsPolicy`) as a browser meets it: preflights the
//! gateway answers itself, actual requests whose answers carry the CORS headers, origins that
//! are not allowed, the metric line of a preflight, config errors, and the same policy from a
//! VirtualService.

mod common;

use common::fake_kube::FakeKube;
use common::kube::{generation_of, kube_config, service_with_subsets, wait_served};
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use std::net::SocketAddr;

/// The host the tests' requests name.
const HOST: &str = "app.example.com";

/// Exact, prefix and regex origins, and every other field.
const POLICY: &str = r#"{ allow_origins: [{exact: "https://a.example"}, {prefix: "https://pre."}, {regex: "https://[a-z]+\\.re\\.example"}], allow_methods: [GET, POST], allow_headers: [x-a, x-b], expose_headers: [x-e, x-f], max_age: 24h, allow_credentials: true }"#;

/// Service `svc` with subset `stable` at `upstream` and `down` without endpoints; on `*`,
/// rule `down` (paths under `/down`, to `down`) and rule `api` (the rest, to `stable`), both
/// with the CORS policy `cors`.
fn config(upstream: SocketAddr, cors: &str) -> String {
    svc_config(
        &format!(
            "{}      down: {{ endpoints: [] }}\n",
            subset("stable", upstream)
        ),
        &format!(
            "      - name: down
        match: [{{ uri: {{ prefix: /down }} }}]
        route: [{{ destination: {{ service: svc, subset: down }} }}]
        cors_policy: {cors}
      - name: api
        route: [{{ destination: {{ service: svc, subset: stable }} }}]
        cors_policy: {cors}
"
        ),
    )
}

/// Sends `method path` for [`HOST`] to the gateway at `base` with `headers`.
async fn request(base: &str, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("host", HOST);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&http1_client(), b.body(Full::default()).unwrap()).await
}

/// A browser's preflight for a POST with header `x-a` from `origin`.
async fn preflight(base: &str, origin: &str) -> Answer {
    request(
        base,
        Method::OPTIONS,
        "/items",
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-a"),
        ],
    )
    .await
}

/// The answer's `access-control-*` fields, by name, in order.
fn cors_headers(a: &Answer) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = a
        .headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("access-control-"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What the gateway answers a preflight from `origin` under [`POLICY`].
fn preflight_answer(origin: &str) -> Vec<(String, String)> {
    pairs(&[
        ("access-control-allow-credentials", "true"),
        ("access-control-allow-headers", "x-a,x-b"),
        ("access-control-allow-methods", "GET,POST"),
        ("access-control-allow-origin", origin),
        ("access-control-max-age", "86400"),
    ])
}

/// What an actual request's answer gets from `origin` under [`POLICY`].
fn actual_answer(origin: &str) -> Vec<(String, String)> {
    pairs(&[
        ("access-control-allow-credentials", "true"),
        ("access-control-allow-origin", origin),
        ("access-control-expose-headers", "x-e,x-f"),
    ])
}

/// The values of the `istio_requests_total` series that carry all of `labels`.
async fn requests_total(app: &TestApp, labels: &[(&str, &str)]) -> Vec<f64> {
    let url = format!("http://{}/stats/prometheus", app.app.metrics_addr);
    let a = get(&http1_client(), &url, &[]).await;
    assert_eq!(a.status, 200);
    a.body
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_from_an_allowed_origin_is_answered_by_the_gateway_and_counted() {
    let upstream = spawn_upstream("stable", Behavior::Name).await;
    let app = spawn_app(&config(upstream.addr, POLICY)).await;
    let base = app.url("");

    let a = preflight(&base, "https://a.example").await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(cors_headers(&a), preflight_answer("https://a.example"));
    assert_eq!(a.body, "");
    assert_eq!(a.headers["content-length"], "0");
    assert!(a.headers.get("x-subset").is_none(), "not the upstream's");
    assert_eq!(upstream.count(), 0, "the upstream received nothing");

    // Counted as an answer the gateway made itself: under the request's host, destination
    // unknown, code 200, no flag.
    let gateway_made = [
        ("destination_service", HOST),
        ("destination_service_name", "unknown"),
        ("destination_workload", "unknown"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    assert_eq!(requests_total(&app, &gateway_made).await, [1.0]);
    assert!(
        requests_total(&app, &[("destination_workload", "svc-stable")])
            .await
            .is_empty(),
        "nothing counted for the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_and_regex_origins_are_allowed_and_near_misses_are_not() {
    let upstream = spawn_upstream("stable", Behavior::Name).await;
    let app = spawn_app(&config(upstream.addr, POLICY)).await;
    let base = app.url("");
    for origin in ["https://pre.anything.example", "https://abc.re.example"] {
        let a = preflight(&base, origin).await;
        assert_eq!(a.status, 200, "{origin}: {a:?}");
        assert_eq!(cors_headers(&a), preflight_answer(origin), "{origin}");
        let a = request(&base, Method::GET, "/items", &[("origin", origin)]).await;
        assert_eq!(a.body, "stable\n");
        assert_eq!(cors_headers(&a), actual_answer(origin), "{origin}");
    }
    assert_eq!(upstream.count(), 2, "only the two actual requests");
    // The regex matches the whole origin, and origins are compared as sent (case and all).
    for origin in [
        "https://abc.re.example.evil",
        "https://ABC.re.example",
        "http://pre.anything.example",
        "https://a.example.evil",
    ] {
        let before = upstream.count();
        let a = preflight(&base, origin).await;
        assert_eq!(a.body, "stable\n", "{origin}: forwarded");
        assert_eq!(cors_headers(&a), [], "{origin}");
        assert_eq!(upstream.count(), before + 1, "{origin}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preflight_from_an_origin_not_allowed_reaches_the_upstream_unless_ignored() {
    let upstream = spawn_upstream("stable", Behavior::Name).await;
    let app = spawn_app(&config(upstream.addr, POLICY)).await;
    let a = preflight(&app.url(""), "https://evil.example").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "stable\n", "the upstream answered");
    assert_eq!(cors_headers(&a), []);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::OPTIONS);
    assert_eq!(seen[0].headers["origin"], "https://evil.example");
    assert_eq!(seen[0].headers["access-control-request-method"], "POST");

    // `unmatched_preflights: ignore`: the gateway answers, 200 without CORS headers, so the
    // browser refuses; the upstream never sees it.
    let ignore = POLICY.replace(" }", ", unmatched_preflights: ignore }");
    assert_ne!(ignore, POLICY);
    let upstream = spawn_upstream("stable", Behavior::Name).await;
    let app = spawn_app(&config(upstream.addr, &ignore)).await;
    let a = preflight(&app.url(""), "https://evil.example").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, "");
    assert_eq!(cors_headers(&a), []);
    assert_eq!(upstream.count(), 0);
    // Allowed origins are answered as before.
    let a = preflight(&app.url(""), "https://a.example").await;
    assert_eq!(cors_headers(&a), preflight_answer("https://a.example"));
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actual_request_gets_cors_headers_only_from_an_allowed_origin() {
    let upstream = spawn_upstream("stable", Behavior::Name).await;
    let app = spawn_app(&config(upstream.addr, POLICY)).await;
    let base = app.url("");
    let origin = "https://a.example";
    for method in [Method::GET, Method::POST] {
        let a = request(&base, method.clone(), "/items", &[("origin", origin)]).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "stable\n"));
        assert_eq!(cors_headers(&a), actual_answer(origin), "{method}");
    }
    // OPTIONS without Access-Control-Request-Method is not a preflight: it goes upstream.
    let a = request(&base, Method::OPTIONS, "/items", &[("origin", origin)]).await;
    assert_eq!(a.body, "stable\n");
    assert_eq!(cors_headers(&a), actual_answer(origin));
    assert_eq!(upstream.count(), 3);
    // The gateway's own error answer carries them too, as Envoy's local replies do.
    let a = request(&base, Method::GET, "/down", &[("origin", origin)]).await;
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(cors_headers(&a), actual_answer(origin));

    for headers in [
        &[("origin", "https://evil.example")][..],
        &[("origin", "null")],
        &[],
    ] {
        let a = request(&base, Method::GET, "/items", headers).await;
        assert_eq!(a.body, "stable\n");
        assert_eq!(cors_headers(&a), [], "{headers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_is_refused_with_each_field_and_why() {
    let upstream = spawn_upstream("stable", Behavior::Name).await;
    let bad = r#"{ allow_origins: [{regex: "(https"}, {present: true}, {exact: a, prefix: b}], allow_methods: [GET, FETCH], allow_headers: ["x a"], max_age: 1.5s, unmatched_preflights: drop }"#;
    let yaml = svc_config(
        &subset("stable", upstream.addr),
        &format!(
            "      - route: [{{ destination: {{ service: svc, subset: stable }} }}]
        cors_policy: {bad}
"
        ),
    );
    let err = splitgate::config::from_str(&yaml, "t").unwrap_err();
    let got: Vec<String> = err.errors.iter().map(|e| e.to_string()).collect();
    let at = "routes[0].http[0].cors_policy";
    let want = [
        format!("{at}.allow_origins[0].regex: invalid regex \"(https\": unclosed group"),
        format!("{at}.allow_origins[1].present: an origin is matched by exact, prefix, suffix or regex"),
        format!("{at}.allow_origins[2]: exactly one of exact, prefix, suffix, regex or present is required"),
        format!("{at}.allow_methods[1]: \"FETCH\" is not a method a policy can allow (one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH)"),
        format!("{at}.allow_headers[0]: \"x a\" is not a header name"),
        format!("{at}.max_age: must be whole seconds: browsers read it in seconds"),
        format!("{at}.unmatched_preflights: must be forward or ignore, not \"drop\""),
    ];
    assert_eq!(got, want);
    // Unknown fields stop parsing, with their path.
    let yaml = yaml.replace(bad, "{ allow_origin: [x] }");
    let err = splitgate::config::from_str(&yaml, "t").unwrap_err();
    assert_eq!(err.errors.len(), 1);
    assert_eq!(
        err.errors[0].path,
        "routes[0].http[0].cors_policy.allow_origin"
    );
    assert!(
        err.errors[0]
            .message
            .contains("unknown field `allow_origin`"),
        "{}",
        err.errors[0].message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_service_cors_policy_is_served_the_same() {
    tokio::time::timeout(std::time::Duration::from_secs(90), async {
        let upstream = spawn_upstream("stable", Behavior::Name).await;
        let kube = FakeKube::start().await;
        kube.apply_yaml(&service_with_subsets("app", &[("stable", upstream.addr)]));
        let g = generation_of(&kube.apply_yaml(&format!(
            "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: app, namespace: shop}}
spec:
  gateways: [istio-system/splitgate]
  hosts: [{HOST}]
  http:
    - name: api
      route: [{{destination: {{host: app, subset: stable}}}}]
      corsPolicy:
        allowOrigins: [{{exact: \"https://a.example\"}}, {{prefix: \"https://pre.\"}}, {{regex: \"https://[a-z]+\\\\.re\\\\.example\"}}]
        allowMethods: [GET, POST]
        allowHeaders: [x-a, x-b]
        exposeHeaders: [x-e, x-f]
        maxAge: 24h
        allowCredentials: true
"
        )));
        let dir = temp_dir("cors-kube");
        let app = spawn_app_in(dir.clone(), &kube_config(&kube, &dir)).await;
        let s = wait_served(&app, "app", g).await;
        let vs = common::kube::object(&s, "VirtualService", "shop", "app").unwrap();
        assert_eq!(vs["status"], "applied", "{vs}");
        assert_eq!(vs["unsupported"], serde_json::json!([]), "{vs}");
        let base = app.url("");

        for origin in ["https://a.example", "https://abc.re.example"] {
            let a = preflight(&base, origin).await;
            assert_eq!(a.status, 200);
            assert_eq!(cors_headers(&a), preflight_answer(origin), "{origin}");
        }
        assert_eq!(upstream.count(), 0, "preflights are answered by the gateway");
        let a = request(&base, Method::GET, "/items", &[("origin", "https://pre.x")]).await;
        assert_eq!(a.body, "stable\n");
        assert_eq!(cors_headers(&a), actual_answer("https://pre.x"));
        let a = preflight(&base, "https://evil.example").await;
        assert_eq!(a.body, "stable\n", "forwarded");
        assert_eq!(cors_headers(&a), []);
        assert_eq!(upstream.count(), 2);
    })
    .await
    .expect("the test finishes within 90 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_the_gateway_makes_for_a_rule_carry_the_headers_and_preflights_come_first() {
    let upstream = spawn_upstream("stable", Behavior::Name).await;
    let yaml = svc_config(
        &subset("stable", upstream.addr),
        &format!(
            "      - name: maintenance
        match: [{{ uri: {{ prefix: /maintenance }} }}]
        direct_response: {{ status: 503, body: \"maintenance\\n\" }}
        cors_policy: {POLICY}
      - name: faulty
        match: [{{ uri: {{ prefix: /faulty }} }}]
        route: [{{ destination: {{ service: svc, subset: stable }} }}]
        fault: {{ abort: {{ http_status: 500, percentage: 100 }} }}
        cors_policy: {POLICY}
"
        ),
    );
    let app = spawn_app(&yaml).await;
    let base = app.url("");
    let origin = "https://a.example";
    let a = request(&base, Method::GET, "/maintenance", &[("origin", origin)]).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (503, "maintenance\n"));
    assert_eq!(cors_headers(&a), actual_answer(origin));
    let a = request(&base, Method::GET, "/faulty", &[("origin", origin)]).await;
    assert_eq!(a.status, 500, "{a:?}");
    assert_eq!(cors_headers(&a), actual_answer(origin));
    let a = request(
        &base,
        Method::GET,
        "/faulty",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(a.status, 500);
    assert_eq!(cors_headers(&a), []);
    // A preflight is answered by the CORS policy before the rule's own answer or fault.
    for path in ["/maintenance", "/faulty"] {
        let a = request(
            &base,
            Method::OPTIONS,
            path,
            &[("origin", origin), ("access-control-request-method", "GET")],
        )
        .await;
        assert_eq!(a.status, 200, "{path}: {a:?}");
        assert_eq!(cors_headers(&a), preflight_answer(origin), "{path}");
    }
    assert_eq!(upstream.count(), 0);
}
