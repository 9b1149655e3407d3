//! The stream idle timeout (`listeners[].stream_idle_timeout`, Envoy's `stream_idle_timeout`):
//! an upstream that stalls mid-answer and a client that stalls mid-upload are cut off and
//! counted with the flag `SI`; a body that keeps moving, however slowly, is not.

mod common;

use common::*;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Whole-test bound: a hang fails the test instead of blocking the run.
const LIMIT: Duration = Duration::from_secs(60);
/// The idle limit the tests configure.
const IDLE: &str = "300ms";

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {LIMIT:?}"))
}

/// One step of a scripted upstream's answer.
#[derive(Clone, Copy)]
enum Step {
    Send(&'static [u8]),
    Wait(Duration),
}

/// An upstream that reads each request's head and then plays `script`, over and over.
async fn scripted_upstream(script: &'static [Step]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    head.clear();
                    for step in script {
                        match *step {
                            Step::Send(bytes) => {
                                if stream.write_all(bytes).await.is_err() {
                                    return;
                                }
                            }
                            Step::Wait(d) => tokio::time::sleep(d).await,
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A whole gateway (with its metrics endpoint) whose only route goes to `upstream`.
async fn gateway(upstream: SocketAddr, idle: &str) -> TestApp {
    let rules = "      - name: primary
        route:
          - { destination: { service: svc, subset: stable }, weight: 100 }
";
    let yaml = svc_config(&subset("stable", upstream), rules).replace(
        "    address: 127.0.0.1:0\n",
        &format!("    address: 127.0.0.1:0\n    stream_idle_timeout: {idle}\n"),
    );
    assert!(yaml.contains("stream_idle_timeout"), "{yaml}");
    spawn_app(&yaml).await
}

/// Sends `request` and reads until the gateway closes the connection.
async fn read_to_close(app: &TestApp, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The `istio_requests_total` line of the metrics endpoint; there must be exactly one.
async fn requests_total_line(app: &TestApp) -> String {
    let url = format!("http://{}/stats/prometheus", app.app.metrics_addr);
    let text = get(&http1_client(), &url, &[]).await.body;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    lines[0].to_string()
}

fn assert_counted(line: &str, code: u16, flags: &str) {
    assert!(
        line.contains(&format!("response_code=\"{code}\""))
            && line.contains(&format!("response_flags=\"{flags}\""))
            && line.ends_with(" 1"),
        "expected one request counted as {code} {flags}: {line}"
    );
}

const HEAD_100: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
const TEN: &[u8] = b"0123456789";

/// Head and 10 of 100 bytes, then a 5 s silence, then the rest.
static STALLS: [Step; 4] = [
    Step::Send(HEAD_100),
    Step::Send(TEN),
    Step::Wait(Duration::from_secs(5)),
    Step::Send(&[b'x'; 90]),
];

/// 100 bytes, 10 every 100 ms.
static TRICKLES: [Step; 21] = {
    let mut steps = [Step::Wait(Duration::from_millis(100)); 21];
    steps[0] = Step::Send(HEAD_100);
    let mut i = 2;
    while i < steps.len() {
        steps[i] = Step::Send(TEN);
        i += 2;
    }
    steps
};

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

#[tokio::test]
async fn an_upstream_stalling_mid_answer_is_cut_off_as_si() {
    bounded(async {
        let app = gateway(scripted_upstream(&STALLS).await, IDLE).await;
        let started = std::time::Instant::now();
        let got = read_to_close(&app, GET).await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got:?}");
        assert!(
            got.ends_with("\r\n\r\n0123456789"),
            "the answer is cut after 10 bytes: {got:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "cut off before the upstream's 5 s silence ended"
        );
        assert_counted(&requests_total_line(&app).await, 200, "SI");
    })
    .await
}

#[tokio::test]
async fn a_slow_but_steady_answer_is_not_cut_off() {
    bounded(async {
        let app = gateway(scripted_upstream(&TRICKLES).await, IDLE).await;
        let got = read_to_close(
            &app,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        let body = got.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert_eq!(body, "0123456789".repeat(10), "{got:?}");
        assert_counted(&requests_total_line(&app).await, 200, "-");
    })
    .await
}

#[tokio::test]
async fn zero_turns_the_limit_off() {
    bounded(async {
        static SHORT_STALL: [Step; 4] = [
            Step::Send(HEAD_100),
            Step::Send(TEN),
            Step::Wait(Duration::from_millis(900)),
            Step::Send(&[b'x'; 90]),
        ];
        let app = gateway(scripted_upstream(&SHORT_STALL).await, "0s").await;
        let got = read_to_close(
            &app,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        let body = got.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert_eq!(body.len(), 100, "{got:?}");
        assert_counted(&requests_total_line(&app).await, 200, "-");
    })
    .await
}

#[tokio::test]
async fn a_client_stalling_mid_upload_gets_408_si() {
    bounded(async {
        // The upstream waits for the whole body before it answers, which never comes.
        static SILENT: [Step; 1] = [Step::Wait(Duration::from_secs(30))];
        let app = gateway(scripted_upstream(&SILENT).await, IDLE).await;
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        let got = String::from_utf8_lossy(&out);
        assert!(got.starts_with("HTTP/1.1 408 "), "{got:?}");
        assert!(
            got.ends_with("\r\n\r\nSI: the request body stalled past the stream idle timeout\n"),
            "{got:?}"
        );
        assert_counted(&requests_total_line(&app).await, 408, "SI");
    })
    .await
}

#[test]
fn a_bad_limit_is_a_config_error() {
    let yaml = svc_config(&subset("stable", "127.0.0.1:9".parse().unwrap()), "").replace(
        "    address: 127.0.0.1:0\n",
        "    address: 127.0.0.1:0\n    stream_idle_timeout: soon\n",
    );
    let e = splitgate::config::from_str(&yaml, "test config")
        .expect_err("`soon` is not a duration")
        .to_string();
    assert!(
        e.contains("listeners[0].stream_idle_timeout") && e.contains("soon"),
        "{e}"
    );
}
