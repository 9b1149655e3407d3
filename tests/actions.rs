//! What a rule does besides choosing a destination, on the wire with real upstreams: `rewrite`
//! (what the upstream received), `redirect` and `direct_response` (what the client got, and
//! that no upstream was asked), `fault` (statuses, the `DI` / `FI` flags in Istio's metrics,
//! shares within a point over 10,000 requests, and a delay that holds up nobody else), and the
//! errors a bad block gets.

mod common;

use common::*;
use futures_util::stream::{self, StreamExt};
use std::time::{Duration, Instant};

/// The sum of `istio_requests_total` over the series whose labels include every `labels` pair.
fn requests(app: &TestGateway, labels: &[(&str, &str)]) -> u64 {
    let text = app.runtime.load().exposition();
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_changes_what_the_upstream_receives_and_nothing_else() {
    let up = spawn_upstream("up", Behavior::Name).await;
    let rules = "      - name: prefix
        match: [{ uri: { prefix: /api/ } }, { uri: { exact: /legacy } }]
        rewrite: { uri: /v2/, authority: internal.example:8080 }
        route: [{ destination: { service: svc, subset: up } }]
      - name: regex
        match: [{ uri: { prefix: /a/ } }]
        rewrite: { uri_regex_rewrite: { match: \"^/a/([^/]+)/([^/]+)\", rewrite: \"/b/\\\\2/\\\\1\" } }
        route: [{ destination: { service: svc, subset: up } }]
      - name: catch-all
        rewrite: { uri: /root/ }
        route: [{ destination: { service: svc, subset: up } }]
";
    let app = spawn_gateway(&svc_config(&subset("up", up.addr), rules)).await;
    let client = http1_client();
    let cases = [
        ("/api/users?id=7", "/v2/users?id=7", "internal.example:8080"),
        ("/legacy?x=1", "/v2/?x=1", "internal.example:8080"),
        ("/a/one/two/three", "/b/two/one/three", "shop.example"),
        ("/else", "/root/else", "shop.example"),
    ];
    for (asked, path, host) in cases {
        let a = get(&client, &app.url(asked), &[("host", "shop.example")]).await;
        assert_eq!(
            (a.status.as_u16(), a.body.as_str()),
            (200, "up\n"),
            "{asked}"
        );
        let seen = up.seen().pop().unwrap();
        assert_eq!(seen.uri, path, "path upstream for {asked}");
        assert_eq!(seen.headers["host"], host, "host upstream for {asked}");
        assert_eq!(seen.headers["x-forwarded-host"], "shop.example", "{asked}");
    }
    // Over HTTP/2 the :authority is rewritten the same way.
    let a = get(&h2c_client(), &app.url("/api/h2"), &[]).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "up\n"));
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.uri, "/v2/h2");
    assert_eq!(seen.headers["host"], "internal.example:8080");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_and_direct_response_answer_without_an_upstream() {
    let up = spawn_upstream("up", Behavior::Name).await;
    let rules = "      - name: moved
        match: [{ uri: { prefix: /old } }]
        redirect: { uri: /new, scheme: https, redirect_code: 308 }
      - name: elsewhere
        match: [{ uri: { prefix: /away } }]
        redirect: { authority: other.example, port: 8443 }
      - name: maintenance
        match: [{ uri: { prefix: /down } }]
        direct_response: { status: 503, body: \"back soon\\n\" }
        headers: { response: { set: { retry-after: \"120\" } } }
      - name: empty
        match: [{ uri: { exact: /ping } }]
        direct_response: { status: 204 }
      - name: rest
        route: [{ destination: { service: svc, subset: up } }]
";
    let app = spawn_gateway(&svc_config(&subset("up", up.addr), rules)).await;
    let client = http1_client();
    let host = [("host", "shop.example:8080")];

    let a = get(&client, &app.url("/old/page?q=1"), &host).await;
    assert_eq!(a.status, 308);
    assert_eq!(a.headers["location"], "https://shop.example/new?q=1");
    assert_eq!(a.body, "");

    let a = get(&client, &app.url("/away/x"), &host).await;
    assert_eq!(a.status, 301, "Istio's default code");
    assert_eq!(a.headers["location"], "http://other.example:8443/away/x");

    let a = get(&client, &app.url("/down"), &host).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (503, "back soon\n"));
    assert_eq!(a.headers["content-type"], "text/plain");
    assert_eq!(
        a.headers["retry-after"], "120",
        "the rule's response headers apply"
    );

    let a = get(&client, &app.url("/ping"), &host).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (204, ""));
    assert!(a.headers.get("content-type").is_none());

    assert_eq!(up.count(), 0, "no upstream was asked");
    let a = get(&client, &app.url("/other"), &host).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "up\n"));

    // Counted as answers the gateway made: destination unknown, under the host, no flag.
    for code in ["308", "301", "503", "204"] {
        let labels = [
            ("response_code", code),
            ("response_flags", "-"),
            ("destination_service", "shop.example"),
            ("destination_service_name", "unknown"),
        ];
        assert_eq!(requests(&app, &labels), 1, "code {code}");
    }
}

/// A rule `faulty` on `/` with `fault` (YAML flow), to `up`.
fn fault_config(up: &Upstream, fault: &str, extra_rules: &str) -> String {
    svc_config(
        &subset("up", up.addr),
        &format!(
            "{extra_rules}      - name: faulty
        fault: {fault}
        route: [{{ destination: {{ service: svc, subset: up }} }}]
"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_shares_are_within_a_point_over_10k_requests_and_flagged_di_fi() {
    let up = spawn_upstream("up", Behavior::Name).await;
    let fault = "{ delay: { fixed_delay: 1ms, percentage: 10 }, abort: { http_status: 503, percentage: 5 } }";
    let app = spawn_gateway(&fault_config(&up, fault, "")).await;
    let client = http1_client();
    let n = 10_000;
    let answers: Vec<(u16, String)> = stream::iter(0..n)
        .map(|_| async {
            let a = get(&client, &app.url("/"), &[]).await;
            (a.status.as_u16(), a.body)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let aborted = answers
        .iter()
        .filter(|(s, b)| *s == 503 && b == "fault filter abort")
        .count();
    let served = answers
        .iter()
        .filter(|(s, b)| *s == 200 && b == "up\n")
        .count();
    assert_eq!(
        aborted + served,
        n,
        "every answer is the upstream's or the fault's"
    );
    assert_eq!(
        up.count(),
        served,
        "an aborted request never reaches the upstream"
    );
    let pct = |k: u64| k as f64 * 100.0 / n as f64;
    assert!(
        (pct(aborted as u64) - 5.0).abs() <= 1.0,
        "aborted {:.2}%",
        pct(aborted as u64)
    );
    // The flags, as Istio's metrics carry them, against the subset that was picked.
    let (di, fi, both) = (
        requests(&app, &[("response_flags", "DI"), ("response_code", "200")]),
        requests(&app, &[("response_flags", "FI"), ("response_code", "503")]),
        requests(
            &app,
            &[("response_flags", "DI,FI"), ("response_code", "503")],
        ),
    );
    assert_eq!(fi + both, aborted as u64, "FI on every abort");
    assert!(
        (pct(di + both) - 10.0).abs() <= 1.0,
        "delayed {:.2}%",
        pct(di + both)
    );
    assert_eq!(
        requests(&app, &[("destination_service_name", "svc")]),
        n as u64,
        "every request is counted against the subset, none as unrouted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_holds_its_own_request_and_no_other() {
    let up = spawn_upstream("up", Behavior::Name).await;
    let fast = "      - name: fast
        match: [{ uri: { prefix: /fast } }]
        route: [{ destination: { service: svc, subset: up } }]
";
    let fault = "{ delay: { fixed_delay: 800ms, percentage: 100 } }";
    let app = spawn_gateway(&fault_config(&up, fault, fast)).await;
    let client = http1_client();
    let started = Instant::now();
    let slow_url = app.url("/slow");
    let slow_client = client.clone();
    let slow = tokio::spawn(async move {
        let a = get(&slow_client, &slow_url, &[]).await;
        (a.status.as_u16(), started.elapsed())
    });
    // While the delayed request waits, others on the same gateway (and thread) are served.
    for _ in 0..20 {
        let a = get(&client, &app.url("/fast"), &[]).await;
        assert_eq!(a.status, 200);
    }
    assert!(!slow.is_finished(), "the delayed request is still held");
    let fast_done = started.elapsed();
    assert!(
        up.seen().iter().all(|s| s.uri.path() == "/fast"),
        "not forwarded yet"
    );
    let (status, took) = slow.await.unwrap();
    assert_eq!(status, 200, "served after its delay");
    assert!(took >= Duration::from_millis(800), "held {took:?}");
    assert!(
        fast_done < took,
        "others finished first ({fast_done:?} vs {took:?})"
    );
    assert_eq!(
        requests(&app, &[("response_flags", "DI"), ("response_code", "200")]),
        1
    );
    assert_eq!(
        requests(&app, &[("response_flags", "-"), ("response_code", "200")]),
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_abort_is_an_http_200_carrying_the_grpc_status() {
    let up = spawn_upstream("up", Behavior::Name).await;
    let fault = "{ abort: { grpc_status: UNAVAILABLE, percentage: 100 } }";
    let app = spawn_gateway(&fault_config(&up, fault, "")).await;
    let req = http::Request::post(app.url("/pkg.Svc/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"\0\0\0\0\0",
        )))
        .unwrap();
    let a = send(&h2c_client(), req).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["grpc-status"], "14");
    assert_eq!(a.headers["grpc-message"], "fault filter abort");
    assert_eq!(a.headers["content-type"], "application/grpc");
    assert_eq!(up.count(), 0);
    let labels = [
        ("response_flags", "FI"),
        ("grpc_response_status", "14"),
        ("request_protocol", "grpc"),
        ("response_code", "200"),
    ];
    assert_eq!(requests(&app, &labels), 1);
}

#[test]
fn bad_blocks_are_refused_with_their_path_and_reason() {
    let cases = [
        (
            "redirect: { redirect_code: 200 }",
            "routes[0].http[0].redirect.redirect_code",
            "200 is not a redirect",
        ),
        (
            "redirect: { scheme: ftp }",
            "routes[0].http[0].redirect.scheme",
            "\"ftp\" is not http or https",
        ),
        (
            "redirect: { authority: \"a.example:80\" }",
            "routes[0].http[0].redirect.authority",
            "is not a host name",
        ),
        (
            "direct_response: { status: 42 }",
            "routes[0].http[0].direct_response.status",
            "42 is not a status from 200 to 599",
        ),
        (
            "direct_response: { status: 200 }\n        redirect: {}",
            "routes[0].http[0]",
            "redirect and direct_response are both set",
        ),
        (
            "direct_response: { status: 200 }\n        route: [{ destination: { service: svc, subset: up } }]",
            "routes[0].http[0].route",
            "not allowed with direct_response",
        ),
        (
            "rewrite: { uri: /a, uri_regex_rewrite: { match: x, rewrite: y } }\n        route: [{ destination: { service: svc, subset: up } }]",
            "routes[0].http[0].rewrite",
            "uri and uri_regex_rewrite are both set",
        ),
        (
            "rewrite: { uri_regex_rewrite: { match: \"(\", rewrite: y } }\n        route: [{ destination: { service: svc, subset: up } }]",
            "routes[0].http[0].rewrite.uri_regex_rewrite.match",
            "invalid regex",
        ),
        (
            "rewrite: {}\n        route: [{ destination: { service: svc, subset: up } }]",
            "routes[0].http[0].rewrite",
            "changes nothing",
        ),
        (
            "fault: { abort: { http_status: 503, percentage: 101 } }\n        route: [{ destination: { service: svc, subset: up } }]",
            "routes[0].http[0].fault.abort.percentage",
            "must be between 0 and 100, not 101",
        ),
        (
            "fault: { delay: { fixed_delay: soon, percentage: 1 } }\n        route: [{ destination: { service: svc, subset: up } }]",
            "routes[0].http[0].fault.delay.fixed_delay",
            "soon",
        ),
        (
            "fault: { abort: { http_status: 503 } }\n        route: [{ destination: { service: svc, subset: up } }]",
            "routes[0].http[0].fault.abort",
            "percentage",
        ),
        (
            "fault: { abort: { http_status: 503, grpc_status: UNAVAILABLE, percentage: 1 } }\n        route: [{ destination: { service: svc, subset: up } }]",
            "routes[0].http[0].fault.abort",
            "needs exactly one of http_status or grpc_status",
        ),
        (
            "fault: { abort: { grpc_status: SAD, percentage: 1 } }\n        route: [{ destination: { service: svc, subset: up } }]",
            "routes[0].http[0].fault.abort.grpc_status",
            "\"SAD\" is not a gRPC status",
        ),
        (
            "fault: {}\n        route: [{ destination: { service: svc, subset: up } }]",
            "routes[0].http[0].fault",
            "injects nothing",
        ),
    ];
    for (block, path, fragment) in cases {
        let yaml = svc_config(
            &subset("up", "127.0.0.1:1".parse().unwrap()),
            &format!("      - {block}\n"),
        );
        let err = splitgate::config::from_str(&yaml, "t")
            .expect_err(block)
            .to_string();
        assert!(
            err.contains(path) && err.contains(fragment),
            "{block}: wanted {path}: …{fragment}… in\n{err}"
        );
    }
}
