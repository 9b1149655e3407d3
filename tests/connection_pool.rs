//! A subset's `connection_pool` through the real gateway, as Istio's `connectionPool` bounds an
//! Envoy cluster: past a bound a request is answered 503 `UO` at once; connections close after
//! so many requests or so long idle; retries stay within the budget. What a client sees: the
//! statuses and bodies answered, the upstream's request and connection counts, and metric lines.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;

/// Service `svc` with one subset `pool` of `endpoints`, `policy` (YAML flow), and one rule
/// with `retries` sending everything there.
fn pool_config(endpoints: &[SocketAddr], policy: &str, retries: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    let subsets = format!(
        "      pool: {{ endpoints: [{}] }}\n    policy: {policy}\n",
        list.join(", ")
    );
    svc_config(
        &subsets,
        &format!(
            "      - name: all
        route:
          - destination: {{ service: svc, subset: pool }}
        retries: {retries}
"
        ),
    )
}

/// The value of one sample line of the gateway's exposition.
fn metric(gw: &TestGateway, line_start: &str) -> f64 {
    let text = gw.runtime.load().hub.encode();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no line {line_start} in\n{text}"))
}

fn subset_series(name: &str) -> String {
    format!("{name}{{service=\"svc\",subset=\"pool\"}}")
}

/// `n` requests at once; their statuses and bodies.
async fn concurrently(gw: &TestGateway, n: usize) -> Vec<(u16, String)> {
    let client = http1_client();
    let all = (0..n).map(|_| {
        let (client, url) = (client.clone(), gw.url("/"));
        async move {
            let r = get(&client, &url, &[]).await;
            (r.status.as_u16(), r.body)
        }
    });
    futures_util::future::join_all(all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_http2_max_requests_in_flight_a_request_is_answered_503_uo_at_once() {
    let slow = spawn_upstream("slow", Behavior::Slow(Duration::from_millis(600))).await;
    let policy = "{ connection_pool: { http2_max_requests: 2 } }";
    let gw = spawn_gateway(&pool_config(&[slow.addr], policy, "{ attempts: 0 }")).await;
    let started = std::time::Instant::now();
    let got = concurrently(&gw, 5).await;
    let ok = got.iter().filter(|(s, _)| *s == 200).count();
    let uo: Vec<_> = got.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!((ok, uo.len()), (2, 3), "{got:?}");
    assert!(uo[0].1.starts_with("UO: "), "{:?}", uo[0].1);
    assert_eq!(slow.count(), 2, "the overflow never reached the upstream");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        metric(&gw, &subset_series("splitgate_upstream_overflow_total")),
        3.0
    );

    // The places come back with the answers' ends.
    let again = concurrently(&gw, 2).await;
    assert!(again.iter().all(|(s, _)| *s == 200), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_requests_wait_for_one_and_past_the_pending_bound_get_uo() {
    let slow = spawn_upstream("slow", Behavior::Slow(Duration::from_millis(400))).await;
    let policy = "{ connection_pool: { max_connections: 1, http1_max_pending_requests: 1 } }";
    let gw = spawn_gateway(&pool_config(&[slow.addr], policy, "{ attempts: 0 }")).await;
    let got = concurrently(&gw, 3).await;
    let ok = got.iter().filter(|(s, _)| *s == 200).count();
    let uo = got
        .iter()
        .filter(|(s, b)| *s == 503 && b.starts_with("UO: "))
        .count();
    // One on the connection, one waiting for it, one over the pending bound.
    assert_eq!((ok, uo), (2, 1), "{got:?}");
    assert_eq!(slow.count(), 2);
    assert_eq!(
        slow.connections(),
        1,
        "the one waiting reused the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closes_after_max_requests_per_connection() {
    let up = spawn_upstream("up", Behavior::Name).await;
    let policy = "{ connection_pool: { max_requests_per_connection: 2 } }";
    let gw = spawn_gateway(&pool_config(&[up.addr], policy, "{ attempts: 0 }")).await;
    let client = http1_client();
    for _ in 0..6 {
        assert_eq!(get(&client, &gw.url("/"), &[]).await.status, 200);
    }
    assert_eq!(up.count(), 6);
    assert_eq!(up.connections(), 3, "two requests a connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_past_idle_timeout_is_not_used_again() {
    let up = spawn_upstream("up", Behavior::Name).await;
    let policy = "{ connection_pool: { idle_timeout: 300ms } }";
    let gw = spawn_gateway(&pool_config(&[up.addr], policy, "{ attempts: 0 }")).await;
    let client = http1_client();
    for _ in 0..2 {
        assert_eq!(get(&client, &gw.url("/"), &[]).await.status, 200);
    }
    assert_eq!(up.connections(), 1, "kept alive within the timeout");
    // The time itself is what is tested.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(get(&client, &gw.url("/"), &[]).await.status, 200);
    assert_eq!(up.connections(), 2, "the idle one was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_max_retries_when_a_whole_subset_fails() {
    let failing = Behavior::FailEvery {
        k: 1,
        status: 503,
        delay: Duration::from_millis(300),
    };
    let a = spawn_upstream("a", failing).await;
    let b = spawn_upstream(
        "b",
        Behavior::FailEvery {
            k: 1,
            status: 503,
            delay: Duration::from_millis(300),
        },
    )
    .await;
    let policy = "{ connection_pool: { max_retries: 2 } }";
    let gw = spawn_gateway(&pool_config(&[a.addr, b.addr], policy, "{ attempts: 2 }")).await;
    let got = concurrently(&gw, 10).await;
    assert!(got.iter().all(|(s, _)| *s == 503), "{got:?}");
    let sent = a.count() + b.count();
    let retries = metric(&gw, &subset_series("splitgate_upstream_retries_total"));
    let refused = metric(
        &gw,
        &subset_series("splitgate_upstream_retry_overflow_total"),
    );
    // Without a bound, 10 requests with 2 retries each would send 30.
    assert_eq!(sent, 10 + retries as usize);
    assert!((2.0..=4.0).contains(&retries), "{retries} retries");
    assert!(refused >= 8.0, "{refused} refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_counted_for_its_subset() {
    let bad = spawn_upstream("bad", Behavior::Status(503)).await;
    let good = spawn_upstream("good", Behavior::Name).await;
    let gw = spawn_gateway(&pool_config(
        &[bad.addr, good.addr],
        "{}",
        "{ attempts: 2 }",
    ))
    .await;
    let client = http1_client();
    for _ in 0..4 {
        assert_eq!(get(&client, &gw.url("/"), &[]).await.status, 200);
    }
    assert_eq!(
        metric(&gw, &subset_series("splitgate_upstream_retries_total")),
        bad.count() as f64
    );
    assert!(bad.count() >= 1);
    assert_eq!(
        metric(
            &gw,
            &subset_series("splitgate_upstream_retry_overflow_total")
        ),
        0.0
    );
}

#[test]
fn a_bad_connection_pool_is_refused_with_its_path() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (policy, path) in [
        (
            "{ connection_pool: { max_connections: 0 } }",
            "services.svc.policy.connection_pool.max_connections",
        ),
        (
            "{ connection_pool: { http1_max_pending_requests: 0 } }",
            "services.svc.policy.connection_pool.http1_max_pending_requests",
        ),
        (
            "{ connection_pool: { idle_timeout: soon } }",
            "services.svc.policy.connection_pool.idle_timeout",
        ),
        (
            "{ connection_pool: { max_pending: 5 } }",
            "services.svc.policy.connection_pool.max_pending",
        ),
    ] {
        let yaml = pool_config(&[addr], policy, "{ attempts: 0 }");
        let e = splitgate::config::from_str(&yaml, "t").expect_err(policy);
        assert!(e.errors.iter().any(|f| f.path == path), "{policy}: {e}");
    }
}
