//! Match conditions through the real gateway (SPEC §2): each kind of condition sends a matching
//! request to `canary` and a non-matching one on to the fallback rule (`stable`).
//!
//! The upstreams answer with their own name, so every assertion is on what a client sees.

mod common;

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};

/// A GET: path and query, headers, and the upstream expected to answer.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

/// A gateway in front of two named upstreams, and a keep-alive client for it.
struct Fixture {
    gw: TestGateway,
    client: Client<HttpConnector, Full<Bytes>>,
    stable: Upstream,
    canary: Upstream,
}

impl Fixture {
    /// Route `main` on `*`: rules as given (YAML indented under `http:`).
    async fn with_rules(rules: &str) -> Self {
        let stable = spawn_upstream("stable", Behavior::Name).await;
        let canary = spawn_upstream("canary", Behavior::Name).await;
        let gw = spawn_gateway(&two_subset_config(stable.addr, canary.addr, rules)).await;
        Fixture {
            gw,
            client: http1_client(),
            stable,
            canary,
        }
    }

    /// A rule `to-canary` with the given match blocks (each a YAML flow mapping), then a
    /// catch-all rule `fallback` to `stable`.
    async fn canary_when(blocks: &[&str]) -> Self {
        Self::with_rules(&canary_rule_then_fallback(blocks)).await
    }

    /// Sends a request and returns the name of the upstream that answered.
    async fn who(&self, method: Method, path_and_query: &str, headers: &[(&str, &str)]) -> String {
        let mut b = Request::builder()
            .method(method.clone())
            .uri(self.gw.url(path_and_query));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let a = send(&self.client, b.body(Full::default()).unwrap()).await;
        assert_eq!(
            a.status, 200,
            "{method} {path_and_query} {headers:?}: body {:?}",
            a.body
        );
        let name = a.body.trim_end_matches('\n').to_string();
        assert!(
            name == "stable" || name == "canary",
            "unexpected body {:?}",
            a.body
        );
        name
    }

    /// GET `path_and_query` with `headers`: which upstream answered.
    async fn get(&self, path_and_query: &str, headers: &[(&str, &str)]) -> String {
        self.who(Method::GET, path_and_query, headers).await
    }

    /// Asserts where each `(path, headers)` GET lands.
    async fn expect(&self, cases: &[Case<'_>]) {
        for (path, headers, want) in cases {
            let got = self.get(path, headers).await;
            assert_eq!(
                &got, want,
                "GET {path} with {headers:?} should go to {want}, went to {got}"
            );
        }
    }
}

fn canary_rule_then_fallback(blocks: &[&str]) -> String {
    let mut rules = String::from("      - name: to-canary\n        match:\n");
    for b in blocks {
        rules.push_str(&format!("          - {b}\n"));
    }
    rules.push_str(
        "        route:
          - destination: { service: svc, subset: canary }
      - name: fallback
        route:
          - destination: { service: svc, subset: stable }
",
    );
    rules
}

const NONE: &[(&str, &str)] = &[];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_exact_matches_the_whole_path_only() {
    let f = Fixture::canary_when(&["{ uri: { exact: /reviews } }"]).await;
    f.expect(&[
        ("/reviews", NONE, "canary"),
        ("/reviews/1", NONE, "stable"),
        ("/review", NONE, "stable"),
        ("/Reviews", NONE, "stable"),
        ("/", NONE, "stable"),
    ])
    .await;
    assert!(f.canary.count() == 1 && f.stable.count() == 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_prefix() {
    let f = Fixture::canary_when(&["{ uri: { prefix: /api/v2 } }"]).await;
    f.expect(&[
        ("/api/v2", NONE, "canary"),
        ("/api/v2/users", NONE, "canary"),
        ("/api/v2x", NONE, "canary"),
        ("/api/v1/users", NONE, "stable"),
        ("/x/api/v2", NONE, "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_suffix() {
    let f = Fixture::canary_when(&["{ uri: { suffix: .json } }"]).await;
    f.expect(&[
        ("/data.json", NONE, "canary"),
        ("/a/b/c.json", NONE, "canary"),
        ("/data.json/x", NONE, "stable"),
        ("/data.jsonp", NONE, "stable"),
        ("/data.xml", NONE, "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_regex_is_anchored() {
    let f = Fixture::canary_when(&["{ uri: { regex: '/v[0-9]+/items' } }"]).await;
    f.expect(&[
        ("/v2/items", NONE, "canary"),
        ("/v10/items", NONE, "canary"),
        // Partial matches must not count: the pattern is anchored at both ends.
        ("/api/v2/items", NONE, "stable"),
        ("/v2/items/7", NONE, "stable"),
        ("/vx/items", NONE, "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_matching_ignores_the_query_string() {
    let f = Fixture::canary_when(&[
        "{ uri: { exact: /search } }",
        "{ uri: { suffix: .json } }",
        "{ uri: { regex: '/r/[a-z]+' } }",
    ])
    .await;
    f.expect(&[
        ("/search?q=1", NONE, "canary"),
        ("/search?q=/other", NONE, "canary"),
        ("/r/abc?page=2", NONE, "canary"),
        // The query is not part of the path, so it cannot make a match either.
        ("/data?format=x.json", NONE, "stable"),
        ("/other?u=/search", NONE, "stable"),
        ("/r/ABC?x=abc", NONE, "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_exact() {
    let f = Fixture::canary_when(&["{ method: { exact: POST } }"]).await;
    assert_eq!(f.who(Method::POST, "/orders", NONE).await, "canary");
    assert_eq!(f.who(Method::GET, "/orders", NONE).await, "stable");
    assert_eq!(f.who(Method::PUT, "/orders", NONE).await, "stable");
    assert_eq!(f.who(Method::DELETE, "/orders", NONE).await, "stable");
    // The method really reached the upstream as sent.
    assert_eq!(f.canary.seen()[0].method, Method::POST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_matches_the_host_header_as_sent() {
    let f = Fixture::canary_when(&[
        "{ authority: { exact: canary.example.com } }",
        "{ authority: { exact: 'ported.example.com:8080' } }",
    ])
    .await;
    f.expect(&[
        ("/", &[("host", "canary.example.com")], "canary"),
        ("/", &[("host", "ported.example.com:8080")], "canary"),
        ("/", &[("host", "stable.example.com")], "stable"),
        // As sent: a port is part of the value, and an exact match needs the same one.
        ("/", &[("host", "canary.example.com:8080")], "stable"),
        ("/", &[("host", "ported.example.com")], "stable"),
        ("/", &[("host", "ported.example.com:9090")], "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_exact() {
    // Header names in the config are case-insensitive.
    let f = Fixture::canary_when(&["{ headers: { X-Canary: { exact: always } } }"]).await;
    f.expect(&[
        ("/", &[("x-canary", "always")], "canary"),
        ("/", &[("X-CANARY", "always")], "canary"),
        ("/", &[("x-canary", "Always")], "stable"),
        ("/", &[("x-canary", "always-not")], "stable"),
        ("/", &[("x-other", "always")], "stable"),
        ("/", NONE, "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_prefix() {
    let f = Fixture::canary_when(&["{ headers: { x-version: { prefix: v2 } } }"]).await;
    f.expect(&[
        ("/", &[("x-version", "v2")], "canary"),
        ("/", &[("x-version", "v2.1.0")], "canary"),
        ("/", &[("x-version", "v1.9")], "stable"),
        ("/", &[("x-version", "xv2")], "stable"),
        ("/", NONE, "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_present() {
    let f = Fixture::canary_when(&["{ headers: { x-debug: { present: true } } }"]).await;
    f.expect(&[
        ("/", &[("x-debug", "1")], "canary"),
        ("/", &[("x-debug", "anything at all")], "canary"),
        ("/", &[("x-debug", "")], "canary"),
        ("/", &[("x-debugger", "1")], "stable"),
        ("/", NONE, "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_with_several_values_matches_if_any_value_does() {
    let f = Fixture::canary_when(&["{ headers: { x-group: { exact: beta } } }"]).await;
    f.expect(&[
        // Two header lines with the same name.
        ("/", &[("x-group", "alpha"), ("x-group", "beta")], "canary"),
        ("/", &[("x-group", "beta"), ("x-group", "alpha")], "canary"),
        ("/", &[("x-group", "alpha"), ("x-group", "gamma")], "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_headers() {
    let f = Fixture::canary_when(&["{ without_headers: { x-legacy: { exact: 'yes' } } }"]).await;
    f.expect(&[
        // Absent, or present with a value that does not match: the condition holds.
        ("/", NONE, "canary"),
        ("/", &[("x-legacy", "no")], "canary"),
        ("/", &[("x-legacy", "yes-ish")], "canary"),
        // It matches, so the rule does not.
        ("/", &[("x-legacy", "yes")], "stable"),
        ("/", &[("x-legacy", "no"), ("x-legacy", "yes")], "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_headers_present_means_absent() {
    let f = Fixture::canary_when(&["{ without_headers: { x-beta: { present: true } } }"]).await;
    f.expect(&[
        ("/", NONE, "canary"),
        ("/", &[("x-betamax", "1")], "canary"),
        ("/", &[("x-beta", "")], "stable"),
        ("/", &[("x-beta", "0")], "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_param_exact_with_percent_encoding() {
    let f = Fixture::canary_when(&["{ query_params: { user: { exact: jane doe } } }"]).await;
    f.expect(&[
        ("/p?user=jane%20doe", NONE, "canary"),
        ("/p?user=jane+doe", NONE, "canary"),
        ("/p?a=1&user=jane%20doe&b=2", NONE, "canary"),
        ("/p?user=%6Aane%20doe", NONE, "canary"),
        ("/p?user=jane", NONE, "stable"),
        ("/p?user=jane%20doe2", NONE, "stable"),
        ("/p?username=jane%20doe", NONE, "stable"),
        ("/p?xuser=jane%20doe", NONE, "stable"),
        ("/p", NONE, "stable"),
        // A header of that name is not a query parameter.
        ("/p", &[("user", "jane doe")], "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_param_regex() {
    let f = Fixture::canary_when(&["{ query_params: { id: { regex: '[0-9]{3}' } } }"]).await;
    f.expect(&[
        ("/p?id=123", NONE, "canary"),
        ("/p?x=y&id=999", NONE, "canary"),
        // Anchored: a partial match does not count.
        ("/p?id=1234", NONE, "stable"),
        ("/p?id=a123", NONE, "stable"),
        ("/p?id=12", NONE, "stable"),
        ("/p?identifier=123", NONE, "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_exact_among_several() {
    let f = Fixture::canary_when(&["{ cookies: { canary: { exact: 'yes' } } }"]).await;
    f.expect(&[
        (
            "/",
            &[("cookie", "session=abc; canary=yes; theme=dark")],
            "canary",
        ),
        ("/", &[("cookie", "canary=yes")], "canary"),
        (
            "/",
            &[("cookie", "session=abc; theme=dark; canary=yes")],
            "canary",
        ),
        (
            "/",
            &[("cookie", "session=abc; canary=no; theme=dark")],
            "stable",
        ),
        ("/", &[("cookie", "session=abc; notcanary=yes")], "stable"),
        ("/", &[("cookie", "session=canary=yes")], "stable"),
        ("/", &[("x-cookie", "canary=yes")], "stable"),
        ("/", NONE, "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_are_ored() {
    let f = Fixture::canary_when(&[
        "{ headers: { x-canary: { exact: '1' } } }",
        "{ uri: { prefix: /beta } }",
    ])
    .await;
    f.expect(&[
        ("/", &[("x-canary", "1")], "canary"),
        ("/beta/page", NONE, "canary"),
        ("/beta/page", &[("x-canary", "1")], "canary"),
        ("/", NONE, "stable"),
        ("/alpha", &[("x-canary", "0")], "stable"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_in_one_block_are_anded() {
    let f = Fixture::canary_when(&[
        "{ uri: { prefix: /beta }, headers: { x-canary: { exact: '1' } }, method: { exact: GET } }",
    ])
    .await;
    f.expect(&[
        ("/beta/page", &[("x-canary", "1")], "canary"),
        // Only some of the conditions hold: on to the next rule.
        ("/beta/page", NONE, "stable"),
        ("/", &[("x-canary", "1")], "stable"),
        ("/beta/page", &[("x-canary", "2")], "stable"),
    ])
    .await;
    assert_eq!(
        f.who(Method::POST, "/beta/page", &[("x-canary", "1")])
            .await,
        "stable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_matching_rule_wins() {
    // Both rules match /api/v1; the broader one is first, so it wins over the more specific one.
    let rules = |first: &str, second: &str| {
        format!(
            "      - name: broad
        match:
          - uri: {{ prefix: /api }}
        route:
          - destination: {{ service: svc, subset: {first} }}
      - name: narrow
        match:
          - uri: {{ exact: /api/v1 }}
        route:
          - destination: {{ service: svc, subset: {second} }}
      - name: fallback
        route:
          - destination: {{ service: svc, subset: stable }}
"
        )
    };
    let f = Fixture::with_rules(&rules("canary", "stable")).await;
    f.expect(&[
        ("/api/v1", NONE, "canary"),
        ("/api/v2", NONE, "canary"),
        ("/other", NONE, "stable"),
    ])
    .await;
    // Swap the destinations: the same request now follows the first rule to the other side.
    let f = Fixture::with_rules(&rules("stable", "canary")).await;
    f.expect(&[("/api/v1", NONE, "stable")]).await;
    assert_eq!(f.canary.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_without_match_takes_everything_and_hides_later_rules() {
    let rules = "      - name: all
        route:
          - destination: { service: svc, subset: stable }
      - name: never
        match:
          - headers: { x-canary: { present: true } }
        route:
          - destination: { service: svc, subset: canary }
";
    let f = Fixture::with_rules(rules).await;
    f.expect(&[("/", &[("x-canary", "1")], "stable"), ("/", NONE, "stable")])
        .await;
    assert_eq!(f.canary.count(), 0);
    assert_eq!(f.stable.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_routing_exact_then_wildcard_then_catch_all() {
    let exact = spawn_upstream("exact", Behavior::Name).await;
    let wild = spawn_upstream("wildcard", Behavior::Name).await;
    let any = spawn_upstream("catch-all", Behavior::Name).await;
    // The catch-all route comes first in the file: specificity, not order, picks the route.
    let yaml = fill(
        "listeners:
  - name: http
    address: 127.0.0.1:0
services:
  svc:
    namespace: default
    host: svc.default.svc.cluster.local
    subsets:
      exact: { endpoints: [\"{exact}\"] }
      wild: { endpoints: [\"{wild}\"] }
      any: { endpoints: [\"{any}\"] }
routes:
  - name: any
    hosts: [\"*\"]
    http:
      - route:
          - destination: { service: svc, subset: any }
  - name: wild
    hosts: [\"*.example.com\"]
    http:
      - route:
          - destination: { service: svc, subset: wild }
  - name: exact
    hosts: [\"a.example.com\"]
    http:
      - route:
          - destination: { service: svc, subset: exact }
",
        &[
            ("exact", exact.addr.to_string()),
            ("wild", wild.addr.to_string()),
            ("any", any.addr.to_string()),
        ],
    );
    let gw = spawn_gateway(&yaml).await;
    let client = http1_client();
    let cases = [
        ("a.example.com", "exact"),
        ("A.Example.COM", "exact"),
        ("a.example.com:8080", "exact"),
        ("A.EXAMPLE.COM:80", "exact"),
        ("b.example.com", "wildcard"),
        ("B.Example.Com:8443", "wildcard"),
        ("x.a.example.com", "wildcard"),
        ("example.com", "catch-all"),
        ("a.example.com.evil.test", "catch-all"),
        ("notexample.com", "catch-all"),
        ("other.test:8080", "catch-all"),
        ("127.0.0.1", "catch-all"),
    ];
    for (host, want) in cases {
        let a = get(&client, &gw.url("/"), &[("host", host)]).await;
        assert_eq!(a.status, 200, "Host {host}: {}", a.body);
        assert_eq!(a.body, format!("{want}\n"), "Host {host}");
    }
    // The upstream sees the Host header as the client sent it.
    assert_eq!(exact.seen()[1].headers["host"], "A.Example.COM");
}

/// One request over a fresh HTTP/2 prior-knowledge connection, with `:authority` set to
/// `authority` (no Host header); returns the status and body.
async fn h2_get(gw: &TestGateway, authority: &str, path: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{authority}{path}"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.expect("the gateway answers");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_h2c_the_authority_pseudo_header_picks_the_host_and_matches_authority() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let yaml = fill(
        "listeners:
  - name: http
    address: 127.0.0.1:0
services:
  svc:
    namespace: default
    host: svc.default.svc.cluster.local
    subsets:
      stable: { endpoints: [\"{stable}\"] }
      canary: { endpoints: [\"{canary}\"] }
routes:
  - name: shop
    hosts: [\"shop.example.com\"]
    http:
      - match:
          - authority: { exact: 'shop.example.com:8080' }
        route:
          - destination: { service: svc, subset: canary }
      - route:
          - destination: { service: svc, subset: stable }
",
        &[
            ("stable", stable.addr.to_string()),
            ("canary", canary.addr.to_string()),
        ],
    );
    let gw = spawn_gateway(&yaml).await;
    assert_eq!(
        h2_get(&gw, "shop.example.com:8080", "/").await,
        (200, "canary\n".into())
    );
    assert_eq!(
        h2_get(&gw, "Shop.Example.com", "/").await,
        (200, "stable\n".into())
    );
    let (status, body) = h2_get(&gw, "other.example.com", "/").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.starts_with("NR"), "{body:?}");
}
