//! Failures through the real gateway (SPEC §3): each one answers with Envoy's status and a body
//! that starts with Envoy's response flag, and the gateway keeps serving afterwards.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A config with service `svc`, the given subsets (name, endpoints) and routes (YAML under
/// `routes:`).
fn config(subsets: &[(&str, Vec<SocketAddr>)], routes: &str) -> String {
    let mut yaml = String::from(
        "listeners:
  - name: http
    address: 127.0.0.1:0
services:
  svc:
    namespace: default
    host: svc.default.svc.cluster.local
    subsets:
",
    );
    for (name, endpoints) in subsets {
        let list: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
        yaml.push_str(&format!(
            "      {name}: {{ endpoints: [{}] }}\n",
            list.join(", ")
        ));
    }
    yaml.push_str("routes:\n");
    yaml.push_str(routes);
    yaml
}

/// One route on `*`: requests with `x-case: <case>` go to subset `<case>` (with the timeout when
/// given); everything else goes to subset `good`.
fn by_case_routes(cases: &[(&str, Option<&str>)]) -> String {
    let mut routes = String::from("  - name: main\n    hosts: [\"*\"]\n    http:\n");
    for (case, timeout) in cases {
        routes.push_str(&format!(
            "      - name: {case}
        match:
          - headers: {{ x-case: {{ exact: {case} }} }}
        route:
          - destination: {{ service: svc, subset: {case} }}
"
        ));
        if let Some(t) = timeout {
            routes.push_str(&format!("        timeout: {t}\n"));
        }
    }
    routes.push_str(
        "      - name: good
        route:
          - destination: { service: svc, subset: good }
",
    );
    routes
}

/// Asserts a gateway-made error: its status, a body starting with `<flag>: ` and a sentence after.
fn assert_error(a: &Answer, status: u16, flag: &str) {
    assert_eq!(a.status, status, "body {:?}", a.body);
    let sentence = a
        .body
        .strip_prefix(&format!("{flag}: "))
        .unwrap_or_else(|| panic!("body {:?} should start with \"{flag}: \"", a.body));
    assert!(
        sentence.trim().len() > 10,
        "body {:?} should explain the failure",
        a.body
    );
    assert!(
        a.headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/plain")),
        "content-type {:?}",
        a.headers.get("content-type")
    );
}

/// Asserts a request answered by the upstream named `name`.
fn assert_served_by(a: &Answer, name: &str) {
    assert_eq!(a.status, 200, "body {:?}", a.body);
    assert_eq!(a.body, format!("{name}\n"));
}

/// An upstream that accepts, reads the request head, and closes without answering.
/// Returns its address and how many connections it took.
async fn spawn_hang_up() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                drop(stream);
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404_nr() {
    let up = spawn_upstream("good", Behavior::Name).await;
    let routes = "  - name: only
    hosts: [\"only.example.com\"]
    http:
      - route:
          - destination: { service: svc, subset: good }
";
    let gw = spawn_gateway(&config(&[("good", vec![up.addr])], routes)).await;
    let client = http1_client();
    for host in ["other.example.com", "example.com", "x.only.example.com"] {
        let a = get(&client, &gw.url("/"), &[("host", host)]).await;
        assert_error(&a, 404, "NR");
    }
    assert_eq!(
        up.count(),
        0,
        "a request without a route must not be forwarded"
    );
    // The route's own host still works, on the same client, with a port and in any case.
    let a = get(&client, &gw.url("/"), &[("host", "Only.Example.com:8080")]).await;
    assert_served_by(&a, "good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rule_matching_is_404_nr() {
    let up = spawn_upstream("good", Behavior::Name).await;
    let routes = "  - name: main
    hosts: [\"*\"]
    http:
      - name: by-header
        match:
          - headers: { x-canary: { exact: '1' } }
        route:
          - destination: { service: svc, subset: good }
      - name: by-path
        match:
          - uri: { prefix: /api }
        route:
          - destination: { service: svc, subset: good }
";
    let gw = spawn_gateway(&config(&[("good", vec![up.addr])], routes)).await;
    let client = http1_client();
    assert_error(&get(&client, &gw.url("/"), &[]).await, 404, "NR");
    assert_error(
        &get(&client, &gw.url("/web"), &[("x-canary", "2")]).await,
        404,
        "NR",
    );
    assert_eq!(up.count(), 0);
    // Either rule matching routes the request.
    assert_served_by(&get(&client, &gw.url("/api/x"), &[]).await, "good");
    assert_served_by(
        &get(&client, &gw.url("/"), &[("x-canary", "1")]).await,
        "good",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_is_503_uf() {
    let good = spawn_upstream("good", Behavior::Name).await;
    let dead = dead_addr().await;
    let yaml = config(
        &[("good", vec![good.addr]), ("dead", vec![dead])],
        &by_case_routes(&[("dead", None)]),
    );
    let gw = spawn_gateway(&yaml).await;
    let client = http1_client();
    for _ in 0..3 {
        let a = get(&client, &gw.url("/"), &[("x-case", "dead")]).await;
        assert_error(&a, 503, "UF");
        // Nothing about the endpoint leaks into the answer.
        assert!(!a.body.contains(&dead.port().to_string()), "{:?}", a.body);
        assert_served_by(&get(&client, &gw.url("/"), &[]).await, "good");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_without_endpoints_is_503_uh() {
    let good = spawn_upstream("good", Behavior::Name).await;
    let yaml = config(
        &[("good", vec![good.addr]), ("empty", vec![])],
        &by_case_routes(&[("empty", None)]),
    );
    assert!(yaml.contains("empty: { endpoints: [] }"), "{yaml}");
    let gw = spawn_gateway(&yaml).await;
    let client = http1_client();
    for _ in 0..3 {
        let a = get(&client, &gw.url("/"), &[("x-case", "empty")]).await;
        assert_error(&a, 503, "UH");
        assert_served_by(&get(&client, &gw.url("/"), &[]).await, "good");
    }
    assert_eq!(good.count(), 3);
}

/// A subset of one dead and one live endpoint under `policy`: every request must succeed, since
/// a connect failure moves on to the next endpoint.
async fn dead_and_live_endpoint_all_succeed(policy: &str) {
    let live = spawn_upstream("live", Behavior::Name).await;
    let dead = dead_addr().await;
    let mut yaml = config(
        &[("mixed", vec![dead, live.addr])],
        "  - name: main
    hosts: [\"*\"]
    http:
      - route:
          - destination: { service: svc, subset: mixed }
",
    );
    yaml = yaml.replace(
        "    subsets:\n",
        &format!("    policy: {{ load_balancer: {policy} }}\n    subsets:\n"),
    );
    let gw = spawn_gateway(&yaml).await;
    let client = http1_client();
    let mut failures = Vec::new();
    for i in 0..60 {
        // A fresh client now and then, so new upstream connections are needed too.
        let a = if i % 2 == 0 {
            get(&client, &gw.url("/"), &[]).await
        } else {
            get(&http1_client(), &gw.url("/"), &[]).await
        };
        if a.status != 200 || a.body != "live\n" {
            failures.push(format!("request {i}: {} {:?}", a.status, a.body));
        }
    }
    assert!(
        failures.is_empty(),
        "{policy}: {} of 60 requests failed: {failures:?}",
        failures.len()
    );
    assert_eq!(live.count(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_live_endpoint_round_robin_every_request_succeeds() {
    dead_and_live_endpoint_all_succeed("round_robin").await;
}

/// A connect failure moves on to an endpoint not tried yet, whatever the balancer picked, so a
/// live endpoint beside a dead one serves every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_live_endpoint_concurrent_requests_all_succeed() {
    let live = spawn_upstream("live", Behavior::Name).await;
    let dead = dead_addr().await;
    let yaml = config(
        &[("mixed", vec![dead, live.addr])],
        "  - name: main
    hosts: [\"*\"]
    http:
      - route:
          - destination: { service: svc, subset: mixed }
",
    );
    let gw = spawn_gateway(&yaml).await;
    let client = http1_client();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, url) = (client.clone(), gw.url("/"));
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for _ in 0..25 {
                    let a = get(&client, &url, &[]).await;
                    if a.status != 200 || a.body != "live\n" {
                        failures.push(format!("{} {:?}", a.status, a.body));
                    }
                }
                failures
            })
        })
        .collect();
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of 400 concurrent requests failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
}

/// A connect failure moves on to an endpoint not tried yet, whatever the balancer picked, so a
/// live endpoint beside a dead one serves every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_live_endpoint_random_every_request_succeeds() {
    dead_and_live_endpoint_all_succeed("random").await;
}

/// A connect failure moves on to an endpoint not tried yet, whatever the balancer picked, so a
/// live endpoint beside a dead one serves every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_live_endpoint_least_request_every_request_succeeds() {
    dead_and_live_endpoint_all_succeed("least_request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_past_the_rule_timeout_is_504_ut() {
    let good = spawn_upstream("good", Behavior::Name).await;
    let slow = spawn_upstream("slow", Behavior::Slow(Duration::from_secs(2))).await;
    let yaml = config(
        &[("good", vec![good.addr]), ("slow", vec![slow.addr])],
        &by_case_routes(&[("slow", Some("200ms"))]),
    );
    let gw = spawn_gateway(&yaml).await;
    let client = http1_client();
    for round in 1..=2 {
        let started = Instant::now();
        let a = get(&client, &gw.url("/"), &[("x-case", "slow")]).await;
        let took = started.elapsed();
        assert_error(&a, 504, "UT");
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(1),
            "the 200ms timeout answered after {took:?}"
        );
        // The upstream did get the request: this is a timeout, not a connect failure.
        assert_eq!(slow.count(), round);
        assert_served_by(&get(&client, &gw.url("/"), &[]).await, "good");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_without_timeout_waits_for_a_slow_upstream() {
    let good = spawn_upstream("good", Behavior::Name).await;
    let slow = spawn_upstream("slow", Behavior::Slow(Duration::from_millis(300))).await;
    let yaml = config(
        &[("good", vec![good.addr]), ("slow", vec![slow.addr])],
        &by_case_routes(&[("slow", None)]),
    );
    let gw = spawn_gateway(&yaml).await;
    let client = http1_client();
    let started = Instant::now();
    let a = get(&client, &gw.url("/"), &[("x-case", "slow")]).await;
    assert_served_by(&a, "slow");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_served_by(&get(&client, &gw.url("/"), &[]).await, "good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_timeout_longer_than_the_upstream_delay_is_not_hit() {
    let good = spawn_upstream("good", Behavior::Name).await;
    let slow = spawn_upstream("slow", Behavior::Slow(Duration::from_millis(300))).await;
    let yaml = config(
        &[("good", vec![good.addr]), ("slow", vec![slow.addr])],
        &by_case_routes(&[("slow", Some("5s"))]),
    );
    let gw = spawn_gateway(&yaml).await;
    let client = http1_client();
    assert_served_by(
        &get(&client, &gw.url("/"), &[("x-case", "slow")]).await,
        "slow",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_without_answer_is_503_uc() {
    let good = spawn_upstream("good", Behavior::Name).await;
    let (hang_up, accepted) = spawn_hang_up().await;
    let yaml = config(
        &[("good", vec![good.addr]), ("hangup", vec![hang_up])],
        &by_case_routes(&[("hangup", None)]),
    );
    let gw = spawn_gateway(&yaml).await;
    let client = http1_client();
    for round in 1..=3 {
        let a = get(&client, &gw.url("/"), &[("x-case", "hangup")]).await;
        assert_error(&a, 503, "UC");
        // The upstream was reached (so not UF), once per request.
        assert_eq!(accepted.load(Ordering::SeqCst), round);
        assert_served_by(&get(&client, &gw.url("/"), &[]).await, "good");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_keeps_serving_after_a_mix_of_errors() {
    let good = spawn_upstream("good", Behavior::Name).await;
    let slow = spawn_upstream("slow", Behavior::Slow(Duration::from_secs(2))).await;
    let (hang_up, _) = spawn_hang_up().await;
    let dead = dead_addr().await;
    let yaml = config(
        &[
            ("good", vec![good.addr]),
            ("slow", vec![slow.addr]),
            ("hangup", vec![hang_up]),
            ("dead", vec![dead]),
            ("empty", vec![]),
        ],
        &by_case_routes(&[
            ("slow", Some("100ms")),
            ("hangup", None),
            ("dead", None),
            ("empty", None),
        ]),
    );
    let gw = spawn_gateway(&yaml).await;
    let client = http1_client();
    for _ in 0..2 {
        for (case, status, flag) in [
            ("slow", 504, "UT"),
            ("hangup", 503, "UC"),
            ("dead", 503, "UF"),
            ("empty", 503, "UH"),
            ("nothing", 0, ""),
        ] {
            let a = get(&client, &gw.url("/"), &[("x-case", case)]).await;
            if status == 0 {
                assert_served_by(&a, "good");
            } else {
                assert_error(&a, status, flag);
            }
        }
    }
    // Twenty good requests in a row, on the same client, all served.
    for _ in 0..20 {
        assert_served_by(&get(&client, &gw.url("/"), &[]).await, "good");
    }
    assert_eq!(good.count(), 22);
}
