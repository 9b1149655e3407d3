//! Hostile and careless clients at the edge: heads too large, clients that send nothing or
//! one byte at a time, idle connections, too many connections, HTTP/2 stream-reset floods,
//! upgrades a route does not allow, and more concurrent requests than an endpoint may have
//! connections. Each test checks what a user sees: the status, that the connection is closed
//! (and when), what reached the upstream, and the metric line.

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A one-subset config (`svc`/`stable` at `addr`) whose listener has `limits` (YAML flow map).
fn limited(addr: std::net::SocketAddr, limits: &str) -> String {
    svc_config(
        &subset("stable", addr),
        "      - route: [ { destination: { service: svc, subset: stable } } ]\n",
    )
    .replacen(
        "    address: 127.0.0.1:0\n",
        &format!("    address: 127.0.0.1:0\n    limits: {limits}\n"),
        1,
    )
}

/// Reads until the peer closes (or `within` passes: a failure); returns the bytes and when the
/// close came.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the gateway kept the connection open for {within:?}; read so far: {:?}",
        String::from_utf8_lossy(&out)
    );
    (out, start.elapsed())
}

/// The value of one sample line of the gateway's exposition.
fn metric(gw: &TestGateway, line_start: &str) -> Option<f64> {
    let text = gw.runtime.load().hub.encode();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn closed_metric(gw: &TestGateway, reason: &str) -> f64 {
    let line = format!("splitgate_downstream_connections_closed_total{{reason=\"{reason}\"}}");
    metric(gw, &line).unwrap_or_else(|| panic!("no line {line}"))
}

#[tokio::test]
async fn a_head_over_the_limit_gets_431_and_one_under_it_is_served() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let gw = spawn_gateway(&limited(up.addr, "{ max_request_headers_kb: 16 }")).await;
    let big = "a".repeat(20 * 1024);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!("GET / HTTP/1.1\r\nHost: x\r\nx-big: {big}\r\n\r\n");
    // The gateway may answer and close before it has read everything: a failed write is fine.
    let _ = s.write_all(head.as_bytes()).await;
    let (answer, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(up.count(), 0, "a refused head must not reach the upstream");

    let fits = "a".repeat(12 * 1024);
    let resp = get(&http1_client(), &gw.url("/"), &[("x-big", &fits)]).await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn the_default_head_limit_is_envoys_60_kib_and_100_fields() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let gw = spawn_gateway(&limited(up.addr, "{}")).await;
    for (head, want) in [
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
                "a".repeat(70 * 1024)
            ),
            "HTTP/1.1 431",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
                (0..100)
                    .map(|i| format!("x-h{i}: v\r\n"))
                    .collect::<String>()
            ),
            "HTTP/1.1 431",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
                // 90 and Host: under the limit, and under the test upstream's own 100 once
                // the gateway has added its x-forwarded-* and x-request-id.
                (0..90)
                    .map(|i| format!("x-h{i}: v\r\n"))
                    .collect::<String>()
            ),
            "HTTP/1.1 200",
        ),
    ] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let _ = s.write_all(head.as_bytes()).await;
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let got = String::from_utf8_lossy(&buf[..n]);
        assert!(got.starts_with(want), "want {want}, got {got}");
    }
    assert_eq!(
        up.count(),
        1,
        "only the head under the limits was forwarded"
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_first_byte_deadline() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let gw = spawn_gateway(&limited(up.addr, "{ first_byte_timeout: 300ms }")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let (bytes, after) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(bytes.is_empty());
    assert!(
        after >= Duration::from_millis(250),
        "closed after {after:?}"
    );
    assert_eq!(closed_metric(&gw, "first_byte_timeout"), 1.0);
}

#[tokio::test]
async fn an_http2_preface_sent_one_byte_at_a_time_is_closed_at_the_first_byte_deadline() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let gw = spawn_gateway(&limited(up.addr, "{ first_byte_timeout: 400ms }")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let start = Instant::now();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut sent = 0;
    // One byte every 50 ms: the whole preface would take 1.2 s.
    while sent < preface.len() {
        if s.write_all(&preface[sent..=sent]).await.is_err() {
            break;
        }
        sent += 1;
        let mut probe = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => panic!("the gateway answered a partial preface"),
            Err(_) => {}
        }
    }
    let after = start.elapsed();
    assert!(sent < preface.len(), "the whole preface went through");
    assert!(
        after < Duration::from_millis(1000),
        "closed after {after:?}"
    );
    assert_eq!(closed_metric(&gw, "first_byte_timeout"), 1.0);
}

#[tokio::test]
async fn a_slowloris_head_is_closed_at_the_request_headers_deadline_and_never_forwarded() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let gw = spawn_gateway(&limited(
        up.addr,
        "{ request_headers_timeout: 500ms, idle_timeout: 30s }",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let start = Instant::now();
    let mut closed = false;
    // A header byte every 100 ms, forever: progress, but never a whole head.
    for _ in 0..50 {
        if s.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => panic!("the gateway answered a partial head"),
            Err(_) => {}
        }
    }
    let after = start.elapsed();
    assert!(closed, "the slow head was never cut");
    assert!(
        after >= Duration::from_millis(400) && after < Duration::from_secs(2),
        "closed after {after:?}"
    );
    assert_eq!(up.count(), 0);
    assert_eq!(closed_metric(&gw, "request_headers_timeout"), 1.0);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_a_slow_answer_is_not() {
    let up = spawn_upstream("stable", Behavior::Slow(Duration::from_millis(900))).await;
    let gw = spawn_gateway(&limited(up.addr, "{ idle_timeout: 400ms }")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // The answer takes longer than the idle timeout: a request in progress is not idle.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then nothing: closed after the idle timeout.
    let start = Instant::now();
    let (rest, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
    let after = start.elapsed();
    assert!(
        rest.is_empty() || !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
        "unexpected bytes after the answer"
    );
    assert!(
        after >= Duration::from_millis(300) && after < Duration::from_secs(3),
        "closed after {after:?}"
    );
    assert_eq!(closed_metric(&gw, "idle_timeout"), 1.0);
}

#[tokio::test]
async fn at_the_connection_limit_new_clients_wait_and_open_ones_are_served() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let gw = spawn_gateway(&limited(up.addr, "{ max_connections: 2 }")).await;
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut a = TcpStream::connect(gw.addr).await.unwrap();
    let mut b = TcpStream::connect(gw.addr).await.unwrap();
    for s in [&mut a, &mut b] {
        s.write_all(request).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    // A third client's connection waits in the backlog: not accepted, so not answered.
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection was served over the limit"
    );
    // The open ones keep being served.
    a.write_all(request).await.unwrap();
    let n = a.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // One leaves: the waiting client is accepted and answered.
    drop(b);
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("the waiting client was never served")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn the_admin_port_caps_heads_too() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let app = spawn_app(&limited(up.addr, "{}")).await;
    let mut s = TcpStream::connect(app.app.admin_addr).await.unwrap();
    let head = format!(
        "GET /v1/state HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let _ = s.write_all(head.as_bytes()).await;
    let (answer, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"));
    // The admin API still answers.
    let resp = get(&http1_client(), &app.admin_url("/v1/state"), &[]).await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn a_silent_connection_to_the_metrics_port_is_closed() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let app = spawn_app(&limited(up.addr, "{}")).await;
    let mut s = TcpStream::connect(app.app.metrics_addr).await.unwrap();
    // The side ports have the listener's default first-byte deadline, 10 s.
    let (bytes, after) = read_to_close(&mut s, Duration::from_secs(15)).await;
    assert!(bytes.is_empty());
    assert!(after >= Duration::from_secs(9), "closed after {after:?}");
}

#[tokio::test]
async fn an_h2c_upgrade_is_served_as_plain_http1_and_never_tunnelled() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let gw = spawn_gateway(&limited(up.addr, "{}")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"GET /first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].headers.get("upgrade").is_none());
    assert!(seen[0].headers.get("http2-settings").is_none());
    // The connection still speaks HTTP/1.1 through the gateway: the next request is routed
    // (and forwarded with the gateway's headers), not piped.
    s.write_all(b"GET /second HTTP/1.1\r\nHost: internal-admin\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].uri.path(), "/second");
    assert!(seen[1].headers.get("x-forwarded-for").is_some());
}

#[tokio::test]
async fn an_upgrade_the_route_does_not_allow_gets_403() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let gw = spawn_gateway(&limited(up.addr, "{}")).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: tcp-tunnel\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("upgrade refused"), "{answer}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn a_route_may_allow_other_upgrades_by_name_but_never_h2c() {
    let yaml = limited("127.0.0.1:9".parse().unwrap(), "{}").replacen(
        "    hosts: [\"*\"]\n",
        "    hosts: [\"*\"]\n    upgrades: [websocket, h2c, \"a b\"]\n",
        1,
    );
    let err = splitgate::config::from_str(&yaml, "t")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("routes[0].upgrades[1]: h2c cannot be allowed"),
        "{err}"
    );
    assert!(
        err.contains("routes[0].upgrades[2]: \"a b\" is not a protocol name"),
        "{err}"
    );
}

#[tokio::test]
async fn limits_are_validated_with_their_paths() {
    let yaml = limited(
        "127.0.0.1:9".parse().unwrap(),
        "{ max_request_headers_kb: 4, idle_timeout: 0s, max_connections: 0, first_byte_timeout: soon, tarpit: 61s }",
    );
    let err = splitgate::config::from_str(&yaml, "t")
        .unwrap_err()
        .to_string();
    for want in [
        "listeners[0].limits.max_request_headers_kb: must be between 8 and 8192, got 4",
        "listeners[0].limits.idle_timeout: must be above 0",
        "listeners[0].limits.max_connections: must be above 0",
        "listeners[0].limits.first_byte_timeout: invalid duration",
        "listeners[0].limits.tarpit: must be at most 60s, got 61s",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

/// A config whose service `svc` has `policy` (YAML flow map) and one endpoint at `addr`.
fn with_policy(addr: std::net::SocketAddr, policy: &str) -> String {
    limited(addr, "{}").replacen(
        "    subsets:\n",
        &format!("    policy: {policy}\n    subsets:\n"),
        1,
    )
}

#[tokio::test]
async fn requests_over_the_endpoint_connection_cap_wait_for_a_pooled_connection() {
    let up = spawn_upstream("stable", Behavior::Slow(Duration::from_millis(200))).await;
    let gw = spawn_gateway(&with_policy(up.addr, "{ max_connections_per_endpoint: 2 }")).await;
    let client = h2c_client();
    let url = gw.url("/");
    // Twelve streams on one HTTP/2 connection: without a cap, twelve upstream connections.
    let answers = futures_util::future::join_all((0..12).map(|_| get(&client, &url, &[]))).await;
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert_eq!(up.count(), 12);
    assert!(
        up.connections() <= 2,
        "{} upstream connections for a cap of 2",
        up.connections()
    );
}

#[tokio::test]
async fn a_request_that_waits_past_the_connect_timeout_for_a_connection_gets_503_uo() {
    let up = spawn_upstream("stable", Behavior::Slow(Duration::from_millis(1500))).await;
    let gw = spawn_gateway(&with_policy(
        up.addr,
        "{ max_connections_per_endpoint: 1, connect_timeout: 200ms }",
    ))
    .await;
    let client = h2c_client();
    let url = gw.url("/");
    let (first, second) = tokio::join!(get(&client, &url, &[]), async {
        // Behind the first: once the upstream has it, it holds the one connection.
        while up.count() == 0 {
            tokio::task::yield_now().await;
        }
        get(&client, &url, &[]).await
    });
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 503);
    assert!(second.body.starts_with("UO: "), "{}", second.body);
    let text = gw.runtime.load().hub.encode();
    assert!(
        text.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("response_code=\"503\"")
            && l.contains("response_flags=\"UO\"")),
        "no 503 UO series"
    );
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn an_http2_client_that_resets_streams_too_fast_is_disconnected() {
    use http_body_util::Empty;
    let up = spawn_upstream("stable", Behavior::Slow(Duration::from_secs(5))).await;
    let gw = spawn_gateway(&limited(up.addr, "{ http2_max_resets_per_10s: 20 }")).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let mut sent = 0;
    for _ in 0..100 {
        if sender.ready().await.is_err() {
            break;
        }
        let req = http::Request::get(gw.url("/"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let answer = sender.send_request(req);
        // Dropped unanswered: the client resets the stream (RST_STREAM CANCEL).
        let _ = tokio::time::timeout(Duration::from_millis(20), answer).await;
        sent += 1;
    }
    assert!(sent <= 30, "the connection took {sent} reset streams");
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the gateway kept the connection open")
        .unwrap()
        .ok();
    assert_eq!(closed_metric(&gw, "http2_reset_flood"), 1.0);
    // Other clients are served.
    let (client, url) = (h2c_client(), gw.url("/"));
    let a = tokio::time::timeout(Duration::from_secs(10), get(&client, &url, &[]))
        .await
        .unwrap();
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn a_route_passes_exactly_the_upgrades_it_lists() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let yaml = limited(up.addr, "{}").replacen(
        "    hosts: [\"*\"]\n",
        "    hosts: [\"*\"]\n    upgrades: [Foo]\n",
        1,
    );
    let gw = spawn_gateway(&yaml).await;
    let ask = |protocol: &str| {
        format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: {protocol}\r\n\r\n")
    };
    // Listed (compared without case): forwarded with its Upgrade header.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(ask("foo").as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers.get("upgrade").unwrap(), "foo");
    // websocket is the default only when the route lists nothing.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(ask("websocket").as_bytes()).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 403"));
    assert_eq!(up.count(), 1);
}

/// A connection to `to` from the loopback address `source` (an address of its own, as a
/// client elsewhere would have).
async fn connect_from(source: [u8; 4], to: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    socket.connect(to).await.unwrap()
}

fn tarpitted(gw: &TestGateway) -> f64 {
    metric(gw, "splitgate_downstream_connections_tarpitted_total").expect("the tarpit counter")
}

#[tokio::test]
async fn an_address_that_keeps_sending_oversized_heads_is_read_late_and_others_are_not() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let gw = spawn_gateway(&limited(
        up.addr,
        "{ max_request_headers_kb: 8, tarpit: 300ms }",
    ))
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let offender = [127, 0, 0, 2];
    for i in 0..7 {
        let mut s = connect_from(offender, gw.addr).await;
        let _ = s.write_all(big.as_bytes()).await;
        let (answer, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "head {i}: {answer}");
    }
    // 10, 20, 40, 80, 160 ms, then the 300 ms cap: every connection after the first waited.
    assert_eq!(tarpitted(&gw), 6.0);

    // The offender's next request is served, not refused: after the longest wait.
    let started = Instant::now();
    let mut s = connect_from(offender, gw.addr).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(tarpitted(&gw), 7.0);

    // Another address is read at once.
    let mut s = connect_from([127, 0, 0, 3], gw.addr).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert_eq!(tarpitted(&gw), 7.0, "a clean address waits for nothing");
}

#[tokio::test]
async fn the_tarpit_can_be_turned_off() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let gw = spawn_gateway(&limited(
        up.addr,
        "{ max_request_headers_kb: 8, tarpit: 0s }",
    ))
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    for _ in 0..3 {
        let mut s = connect_from([127, 0, 0, 2], gw.addr).await;
        let _ = s.write_all(big.as_bytes()).await;
        read_to_close(&mut s, Duration::from_secs(5)).await;
    }
    assert_eq!(tarpitted(&gw), 0.0);
}

/// An HTTP/2 frame header and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn a_rapid_reset_flood_is_closed_counted_and_its_address_tarpitted() {
    let up = spawn_upstream("stable", Behavior::Name).await;
    let gw = spawn_gateway(&limited(up.addr, "{ tarpit: 50ms }")).await;
    let mut s = connect_from([127, 0, 0, 4], gw.addr).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    // GET http://x/ from HPACK's static table, then its reset (CANCEL), 100 times in one write.
    let block = [0x82, 0x86, 0x84, 0x41, 0x01, b'x'];
    for i in 0..100u32 {
        let id = 2 * i + 1;
        out.extend(h2_frame(0x1, 0x4 | 0x1, id, &block));
        out.extend(h2_frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    let _ = s.write_all(&out).await;
    let (answer, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
    // GOAWAY (type 7) carrying ENHANCE_YOUR_CALM (0xb) as its error code.
    let mut rest = &answer[..];
    let mut calm = false;
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let Some(payload) = rest.get(9..9 + len) else {
            break;
        };
        calm |= rest[3] == 0x7 && payload.get(4..8) == Some(&[0, 0, 0, 0xb][..]);
        rest = &rest[9 + len..];
    }
    assert!(calm, "no GOAWAY ENHANCE_YOUR_CALM in {answer:?}");
    assert_eq!(closed_metric(&gw, "http2_flood"), 1.0);
    // The flooder's next connection waits; it is still served.
    let mut s = connect_from([127, 0, 0, 4], gw.addr).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert_eq!(tarpitted(&gw), 1.0);
}
