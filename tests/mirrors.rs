//! Several mirrors on a rule (`mirrors`, Istio's `HTTPMirrorPolicy` list): each copies its own
//! share of requests, with the body and a `-shadow` Host, while the client sees only the
//! primary; refused beside `mirror`; the same from a VirtualService.

mod common;

use bytes::Bytes;
use common::fake_kube::FakeKube;
use common::kube::{generation_of, kube_config, object, service_with_subsets, wait_served};
use common::*;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// The host the tests' requests name.
const HOST: &str = "app.example.com";
/// Whole-test bound: a hang fails the test instead of blocking the run.
const LIMIT: Duration = Duration::from_secs(120);

/// What a mirror's upstream keeps of a request: its Host, its `x-forwarded-for`, its body.
type Kept = (String, Option<String>, Bytes);

/// A mirror's upstream: keeps the Host, the `x-forwarded-for` and the body of every request,
/// answers 200.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Kept>>>,
}

impl Recorder {
    async fn spawn() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let host = req.headers()["host"].to_str().unwrap().to_string();
                            let forwarded_for = req
                                .headers()
                                .get("x-forwarded-for")
                                .map(|v| v.to_str().unwrap().to_string());
                            // A body cut short is kept as far as it came, for the test to see.
                            let body = req.into_body().collect().await;
                            let body = body.map(|b| b.to_bytes()).unwrap_or_default();
                            log.lock().unwrap().push((host, forwarded_for, body));
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("mirror\n"))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recorder { addr, seen }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn seen(&self) -> Vec<Kept> {
        self.seen.lock().unwrap().clone()
    }
}

/// `n` POSTs for [`HOST`] with bodies `payload-<i>`, 8 at a time; panics unless every answer
/// is the primary's.
async fn post_all(base: &str, n: usize) {
    let client = http1_client();
    let answers: Vec<Answer> = futures_util::stream::iter(0..n)
        .map(|i| {
            let req = Request::post(format!("{base}/items"))
                .header("host", HOST)
                .body(Full::new(Bytes::from(format!("payload-{i}"))))
                .unwrap();
            send(&client, req)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for a in answers {
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "stable\n"));
        assert_eq!(a.headers["x-subset"], "stable");
    }
}

/// `splitgate_mirror_requests_total{result="ok"}`: copies whose answer came back.
async fn copies_done(app: &TestApp) -> f64 {
    let url = format!("http://{}/stats/prometheus", app.app.metrics_addr);
    let a = get(&http1_client(), &url, &[]).await;
    a.body
        .lines()
        .find(|l| l.starts_with("splitgate_mirror_requests_total{result=\"ok\"}"))
        .map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

/// Waits until every copy of `n` requests to the 100% mirror `all` has been answered, and
/// every copy the other mirror received too (the gateway spawns a request's copies before it
/// answers it, and counts each copy when its answer is read).
async fn wait_copies(app: &TestApp, n: usize, all: &Recorder, other: &Recorder) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = copies_done(app).await;
        if all.count() == n && done == (all.count() + other.count()) as f64 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "copies: {done} answered, {} and {} received",
            all.count(),
            other.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks that each copy carries a distinct one of the `n` requests' bodies, the shadow Host
/// and the forwarding fields the gateway adds (as the primary gets them); returns the bodies.
fn check_copies(mirror: &Recorder, n: usize) -> BTreeSet<Bytes> {
    let sent: BTreeSet<Bytes> = (0..n)
        .map(|i| Bytes::from(format!("payload-{i}")))
        .collect();
    let seen = mirror.seen();
    let bodies: BTreeSet<Bytes> = seen.iter().map(|(_, _, b)| b.clone()).collect();
    assert_eq!(bodies.len(), seen.len(), "one copy per request at most");
    assert!(bodies.is_subset(&sent), "copies carry the requests' bodies");
    for (host, forwarded_for, _) in &seen {
        assert_eq!(host, &format!("{HOST}-shadow"));
        assert_eq!(forwarded_for.as_deref(), Some("127.0.0.1"));
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mirrors_each_copy_their_share_and_the_client_sees_only_the_primary() {
    tokio::time::timeout(LIMIT, async {
        const N: usize = 2000;
        let stable = spawn_upstream("stable", Behavior::Name).await;
        let (m1, m2) = (Recorder::spawn().await, Recorder::spawn().await);
        let yaml = svc_config(
            &format!(
                "{}{}{}",
                subset("stable", stable.addr),
                subset("m1", m1.addr),
                subset("m2", m2.addr)
            ),
            "      - name: primary
        route: [{ destination: { service: svc, subset: stable } }]
        mirrors:
          - { destination: { service: svc, subset: m1 } }
          - { destination: { service: svc, subset: m2 }, percentage: 30 }
",
        );
        let app = spawn_app(&yaml).await;
        post_all(&app.url(""), N).await;
        wait_copies(&app, N, &m1, &m2).await;

        assert_eq!(stable.count(), N, "the primary gets every request");
        // No percentage: every request, each with its own body.
        assert_eq!(check_copies(&m1, N).len(), N);
        // 30% of 2,000 is 600, with a standard deviation of 20.5: 500 to 700 is ±4.9 of it.
        let share = check_copies(&m2, N).len();
        eprintln!("mirrors: a 30% mirror copied {share} of {N}");
        assert!(
            (500..=700).contains(&share),
            "a 30% mirror copied {share} of {N}"
        );
    })
    .await
    .expect("the test finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_and_mirrors_together_are_refused_and_each_mirror_is_checked() {
    let rules = "      - route: [{ destination: { service: svc, subset: stable } }]
        mirror: { service: svc, subset: m1 }
        mirrors: [{ destination: { service: svc, subset: m1 } }]
      - route: [{ destination: { service: svc, subset: stable } }]
        mirrors:
          - { destination: { service: svc, subset: m1 }, percentage: 101 }
          - { destination: { service: svc, subset: nope } }
          - { destination: { service: svc, subset: m1 }, percentage: 0.5 }
        mirror_percentage: 5
";
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let yaml = svc_config(
        &format!("{}{}", subset("stable", addr), subset("m1", addr)),
        rules,
    );
    let err = splitgate::config::from_str(&yaml, "t").unwrap_err();
    let got: Vec<String> = err.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        [
            "routes[0].http[0].mirrors: cannot be set beside mirror (as in Istio): list every mirror under mirrors",
            "routes[0].http[1].mirror_percentage: set without a mirror",
            "routes[0].http[1].mirrors[0].percentage: must be between 0 and 100, not 101",
            "routes[0].http[1].mirrors[1].destination.subset: unknown subset \"nope\" of service \"svc\" (known: m1, stable)",
        ]
    );
    // A rule that answers itself sends nothing upstream, copies included.
    let answering = svc_config(
        &subset("stable", addr),
        "      - direct_response: { status: 200 }
        mirrors: [{ destination: { service: svc, subset: stable } }]
",
    );
    let err = splitgate::config::from_str(&answering, "t").unwrap_err();
    assert_eq!(err.errors.len(), 1, "{err}");
    assert_eq!(err.errors[0].path, "routes[0].http[0].mirrors");
    // The single mirror still works as before.
    let yaml = yaml.replace(
        "        mirrors: [{ destination: { service: svc, subset: m1 } }]\n",
        "        mirror_percentage: 50\n",
    );
    let yaml = yaml.replace("        mirror_percentage: 5\n", "");
    let yaml = yaml.replace("percentage: 101", "percentage: 100");
    let yaml = yaml.replace("subset: nope", "subset: stable");
    splitgate::config::from_str(&yaml, "t").unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_service_mirrors_are_served_and_mirror_beside_them_is_rejected() {
    tokio::time::timeout(LIMIT, async {
        const N: usize = 400;
        let stable = spawn_upstream("stable", Behavior::Name).await;
        let (m1, m2) = (Recorder::spawn().await, Recorder::spawn().await);
        let kube = FakeKube::start().await;
        kube.apply_yaml(&service_with_subsets(
            "app",
            &[("stable", stable.addr), ("m1", m1.addr), ("m2", m2.addr)],
        ));
        let vs = |mirrors: &str| {
            format!(
                "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: app, namespace: shop}}
spec:
  gateways: [istio-system/splitgate]
  hosts: [{HOST}]
  http:
    - name: primary
      route: [{{destination: {{host: app, subset: stable}}}}]
{mirrors}"
            )
        };
        let g = generation_of(&kube.apply_yaml(&vs("      mirrors:
        - destination: {host: app.shop.svc.cluster.local, subset: m1, port: {number: 80}}
        - {destination: {host: app, subset: m2}, percentage: {value: 50}}
")));
        let dir = temp_dir("mirrors-kube");
        let app = spawn_app_in(dir.clone(), &kube_config(&kube, &dir)).await;
        let s = wait_served(&app, "app", g).await;
        let o = object(&s, "VirtualService", "shop", "app").unwrap();
        assert_eq!(o["unsupported"], serde_json::json!([]), "{o}");

        post_all(&app.url(""), N).await;
        wait_copies(&app, N, &m1, &m2).await;
        assert_eq!(check_copies(&m1, N).len(), N);
        // 50% of 400 is 200, with a standard deviation of 10.
        let share = check_copies(&m2, N).len();
        assert!(
            (140..=260).contains(&share),
            "a 50% mirror copied {share} of {N}"
        );
        assert_eq!(stable.count(), N);

        // `mirror` beside `mirrors`: rejected, naming the field; the last good version serves.
        let bad = generation_of(&kube.apply_yaml(&vs("      mirror: {host: app, subset: m2}
      mirrors: [{destination: {host: app, subset: m1}}]
")));
        let s = common::kube::wait_state(&app, "the object with both rejected", |s| {
            object(s, "VirtualService", "shop", "app").is_some_and(|o| o["generation"] == bad)
        })
        .await;
        let o = object(&s, "VirtualService", "shop", "app").unwrap();
        assert_eq!(o["status"], "rejected", "{o}");
        assert_eq!(o["served_generation"], g, "{o}");
        let message = o["message"].as_str().unwrap();
        assert!(
            message.starts_with("spec.http[0].mirrors: cannot be set beside mirror"),
            "{message}"
        );
        let before = m1.count();
        post_all(&app.url(""), 10).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while m1.count() < before + 10 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the old mirrors still copy"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the test finishes in time");
}
