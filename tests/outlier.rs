//! Outlier detection through the real gateway, as Istio's `outlierDetection`: an endpoint that
//! fails so many times in a row gets no request until its ejection is over, then serves again.
//! What a client sees: each upstream's request count and the statuses answered.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Service `svc` with one subset `pool` of `endpoints` and `policy` (YAML flow), and one rule
/// sending everything there without retries, so that every try shows.
fn pool_config(endpoints: &[SocketAddr], policy: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    let subsets = format!(
        "      pool: {{ endpoints: [{}] }}\n    policy: {policy}\n",
        list.join(", ")
    );
    svc_config(
        &subsets,
        "      - name: all
        route:
          - destination: { service: svc, subset: pool }
        retries: { attempts: 0 }
",
    )
}

async fn statuses(app: &TestGateway, n: usize) -> Vec<u16> {
    let client = http1_client();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(&client, &app.url("/"), &[]).await.status.as_u16());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_in_a_row_is_ejected_then_returns() {
    let bad = spawn_upstream("bad", Behavior::Status(500)).await;
    let good = spawn_upstream("good", Behavior::Name).await;
    let policy = "{ outlier_detection: { consecutive_5xx_errors: 3, base_ejection_time: 1s, max_ejection_percent: 50 } }";
    let app = spawn_gateway(&pool_config(&[bad.addr, good.addr], policy)).await;

    let first = statuses(&app, 30).await;
    // Round robin: bad's third 500 ejects it; every request after that goes to good.
    assert_eq!(bad.count(), 3, "{first:?}");
    assert_eq!(first.iter().filter(|&&s| s == 500).count(), 3);
    assert!(
        first[first.len() - 20..].iter().all(|&s| s == 200),
        "{first:?}"
    );
    let ejections = "splitgate_outlier_ejections_total{service=\"svc\",subset=\"pool\"} 1";
    let text = app.runtime.load().hub.encode();
    assert!(text.lines().any(|l| l == ejections), "{text}");
    assert_eq!(ejected_now(&app), 1);

    // After its ejection, it is picked again, fails 3 more times and goes out for twice as long.
    let ejected_at = Instant::now();
    while bad.count() == 3 {
        assert!(
            ejected_at.elapsed() < Duration::from_secs(5),
            "bad never came back"
        );
        statuses(&app, 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ejected_now(&app), 0, "back in after one try");
    statuses(&app, 20).await;
    assert_eq!(bad.count(), 6, "back, and out again after 3 more failures");
    assert_eq!(ejected_now(&app), 1);
}

/// `splitgate_outlier_ejected_endpoints` of subset `pool`, as the metrics endpoint serves it.
fn ejected_now(app: &TestGateway) -> u32 {
    let text = app.runtime.load().exposition();
    let series = "splitgate_outlier_ejected_endpoints{service=\"svc\",subset=\"pool\"} ";
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series}in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_is_out_they_all_serve_and_the_share_caps_ejections() {
    let a = spawn_upstream("a", Behavior::Status(503)).await;
    let b = spawn_upstream("b", Behavior::Status(503)).await;
    // 10%: the first ejection is made, the second is not (half the subset would be out).
    let policy = "{ outlier_detection: { consecutive_5xx_errors: 2 } }";
    let app = spawn_gateway(&pool_config(&[a.addr, b.addr], policy)).await;
    let got = statuses(&app, 20).await;
    assert!(got.iter().all(|&s| s == 503), "{got:?}");
    // One of the two was ejected after 2 failures; the other took everything after that.
    let (na, nb) = (a.count(), b.count());
    assert_eq!(na + nb, 20);
    assert!(na.min(nb) == 2, "a {na}, b {nb}");
    drop(app);

    // With no cap both go out after 2 failures each; then both serve again (panic), since a
    // subset with no endpoint left would fail every request.
    let policy = "{ outlier_detection: { consecutive_5xx_errors: 2, max_ejection_percent: 100 } }";
    let app = spawn_gateway(&pool_config(&[a.addr, b.addr], policy)).await;
    let got = statuses(&app, 20).await;
    assert!(
        got.iter().all(|&s| s == 503),
        "answered by the upstreams: {got:?}"
    );
    assert_eq!(
        a.count() + b.count(),
        40,
        "every request reached an endpoint"
    );
    assert!(
        a.count() > na + 2 && b.count() > nb + 2,
        "both served while out"
    );
}

#[test]
fn a_bad_outlier_policy_is_refused_with_its_path() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (policy, path) in [
        (
            "{ outlier_detection: { base_ejection_time: never } }",
            "services.svc.policy.outlier_detection.base_ejection_time",
        ),
        (
            "{ outlier_detection: { max_ejection_percent: 150 } }",
            "services.svc.policy.outlier_detection.max_ejection_percent",
        ),
        (
            "{ outlier_detection: { consecutive_errors: 5 } }",
            "services.svc.policy.outlier_detection.consecutive_errors",
        ),
    ] {
        let e = splitgate::config::from_str(&pool_config(&[addr], policy), "t").expect_err(policy);
        assert!(e.errors.iter().any(|f| f.path == path), "{policy}: {e}");
    }
}
