//! Retries through the real gateway, as Istio sets them: by default 2 more tries, each on the
//! next endpoint, on a 503 (and a connect failure); `retries` on a rule tunes them. What a
//! client sees: the status and body it gets, and how many requests each upstream received.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;

/// Service `svc` with one subset `pool` of `endpoints`, and one rule sending everything there,
/// with `retries` (YAML, indented under the rule) when given.
fn pool_config(endpoints: &[SocketAddr], retries: Option<&str>) -> String {
    let list: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    let subsets = format!("      pool: {{ endpoints: [{}] }}\n", list.join(", "));
    let mut rule = "      - name: all
        route:
          - destination: { service: svc, subset: pool }
"
    .to_string();
    if let Some(r) = retries {
        rule.push_str(&format!("        retries: {r}\n"));
    }
    svc_config(&subsets, &rule)
}

async fn gets(app: &TestGateway, n: usize) -> Vec<Answer> {
    let client = http1_client();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(&client, &app.url("/"), &[]).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_503_is_retried_on_the_next_endpoint_and_the_client_never_sees_it() {
    let bad = spawn_upstream("bad", Behavior::Status(503)).await;
    let good = spawn_upstream("good", Behavior::Name).await;
    let app = spawn_gateway(&pool_config(&[bad.addr, good.addr], None)).await;
    let answers = gets(&app, 40).await;
    for a in &answers {
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "good\n"));
    }
    // Round robin sent about half of them to the bad endpoint first; each went on to good.
    assert!(bad.count() >= 10, "bad saw {} requests", bad.count());
    assert_eq!(good.count(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_out_after_two_more_tries_and_the_503_reaches_the_client() {
    let bad = spawn_upstream("bad", Behavior::Status(503)).await;
    let app = spawn_gateway(&pool_config(&[bad.addr], None)).await;
    let answers = gets(&app, 5).await;
    for a in &answers {
        assert_eq!((a.status.as_u16(), a.body.as_str()), (503, "bad\n"));
    }
    assert_eq!(
        bad.count(),
        15,
        "1 try and 2 retries for each of 5 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_and_codes_are_tuned_and_attempts_0_turns_retries_off() {
    let bad = spawn_upstream("bad", Behavior::Status(502)).await;
    // 502 is not retried by default.
    let app = spawn_gateway(&pool_config(&[bad.addr], None)).await;
    assert_eq!(gets(&app, 2).await[1].status, 502);
    assert_eq!(bad.count(), 2);
    drop(app);
    // gateway-error covers it; 4 more tries.
    let app = spawn_gateway(&pool_config(
        &[bad.addr],
        Some("{ attempts: 4, retry_on: gateway-error }"),
    ))
    .await;
    assert_eq!(gets(&app, 1).await[0].status, 502);
    assert_eq!(bad.count(), 2 + 5);
    drop(app);
    // retriable_status_codes names it.
    let app = spawn_gateway(&pool_config(
        &[bad.addr],
        Some("{ attempts: 1, retriable_status_codes: [502] }"),
    ))
    .await;
    gets(&app, 1).await;
    assert_eq!(bad.count(), 7 + 2);
    drop(app);
    // attempts: 0 is no retry at all.
    let bad503 = spawn_upstream("bad", Behavior::Status(503)).await;
    let app = spawn_gateway(&pool_config(&[bad503.addr], Some("{ attempts: 0 }"))).await;
    assert_eq!(gets(&app, 3).await[2].status, 503);
    assert_eq!(bad503.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_body_cannot_be_sent_again_is_not_retried() {
    let bad = spawn_upstream("bad", Behavior::Status(503)).await;
    let good = spawn_upstream("good", Behavior::Name).await;
    let app = spawn_gateway(&pool_config(&[bad.addr, good.addr], None)).await;
    let client = http1_client();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let req = http::Request::post(app.url("/"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"an order, placed once",
            )))
            .unwrap();
        statuses.push(send(&client, req).await.status.as_u16());
    }
    // The body streamed to the first endpoint is gone: its 503 is the answer.
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    assert_eq!(bad.count() + good.count(), 10, "each request sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_that_times_out_is_retried_when_the_policy_says_so() {
    let slow = spawn_upstream("slow", Behavior::Slow(Duration::from_secs(5))).await;
    let good = spawn_upstream("good", Behavior::Name).await;
    let app = spawn_gateway(&pool_config(
        &[slow.addr, good.addr],
        Some("{ attempts: 1, per_try_timeout: 200ms, retry_on: 5xx }"),
    ))
    .await;
    let started = std::time::Instant::now();
    let answers = gets(&app, 6).await;
    for a in &answers {
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "good\n"));
    }
    assert!(
        slow.count() >= 2,
        "round robin tried slow first some of the time"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no request waited for the slow endpoint: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_bad_retry_policy_is_refused_with_its_path() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (retries, path, fragment) in [
        (
            "{ retry_on: \"5xx,sometimes\" }",
            "routes[0].http[0].retries.retry_on",
            "\"sometimes\"",
        ),
        (
            "{ attempts: 50 }",
            "routes[0].http[0].retries.attempts",
            "more than 10",
        ),
        (
            "{ retriable_status_codes: [700] }",
            "routes[0].http[0].retries.retriable_status_codes[0]",
            "700",
        ),
        (
            "{ per_try_timeout: soon }",
            "routes[0].http[0].retries.per_try_timeout",
            "",
        ),
    ] {
        let e = splitgate::config::from_str(&pool_config(&[addr], Some(retries)), "t")
            .expect_err(retries);
        assert!(
            e.errors
                .iter()
                .any(|f| f.path == path && f.message.contains(fragment)),
            "{retries}: {e}"
        );
    }
}

/// `istio_requests_total`'s `response_flags` values of the gateway's series, with their counts.
async fn flags_counted(app: &TestApp) -> Vec<(String, f64)> {
    let url = format!("http://{}/stats/prometheus", app.app.metrics_addr);
    let text = get(&http1_client(), &url, &[]).await.body;
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter_map(|l| {
            let flags = l.split("response_flags=\"").nth(1)?.split('"').next()?;
            Some((flags.to_string(), l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// Envoy renders several flags as a comma-separated list: a request whose tries all failed to
/// connect, with retries allowed, ran out of them: `UF,URX`. Without retries it is `UF` alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_that_use_up_the_retries_are_flagged_uf_urx() {
    let dead = [dead_addr().await, dead_addr().await];
    let app = spawn_app(&pool_config(&dead, None)).await;
    for _ in 0..3 {
        let a = get(&http1_client(), &app.url("/"), &[]).await;
        assert_eq!(a.status, 503, "{}", a.body);
        assert!(a.body.starts_with("UF:"), "{:?}", a.body);
    }
    assert_eq!(flags_counted(&app).await, [("UF,URX".to_string(), 3.0)]);

    let app = spawn_app(&pool_config(&dead, Some("{ attempts: 0 }"))).await;
    let a = get(&http1_client(), &app.url("/"), &[]).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(flags_counted(&app).await, [("UF".to_string(), 1.0)]);
}
