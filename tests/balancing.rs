//! Load balancing within a subset, through the real gateway: which endpoint answered.

mod common;

use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Whole-test bound: a hang fails the test instead of blocking the run.
const LIMIT: Duration = Duration::from_secs(60);

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {LIMIT:?}"))
}

/// An upstream that holds every request it gets until released, and says how many it holds.
struct Holding {
    addr: SocketAddr,
    held: watch::Receiver<usize>,
    release: watch::Sender<bool>,
}

async fn spawn_holding() -> Holding {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (count, held) = watch::channel(0usize);
    let (release, released) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (count, released) = (count.clone(), released.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let (count, mut released) = (count.clone(), released.clone());
                    async move {
                        count.send_modify(|n| *n += 1);
                        let _ = released.wait_for(|go| *go).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("held\n"))))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Holding {
        addr,
        held,
        release,
    }
}

impl Holding {
    fn held(&self) -> usize {
        *self.held.borrow()
    }
}

/// Service `svc` whose subset `pool` is `busy` then `free`, balanced by `policy`.
fn config(policy: &str, busy: SocketAddr, free: SocketAddr) -> String {
    svc_config(
        &format!("      pool: {{ endpoints: [\"{busy}\", \"{free}\"] }}\n"),
        "      - route:\n          - destination: { service: svc, subset: pool }\n",
    )
    .replace(
        "    host: svc.default.svc.cluster.local\n",
        &format!(
            "    host: svc.default.svc.cluster.local\n    policy: {{ load_balancer: {policy} }}\n"
        ),
    )
}

/// Sends requests one at a time until `busy` holds one of them; the others were answered by
/// `free`. Returns the held request's task.
async fn hold_one(gw: &TestGateway, busy: &mut Holding) -> tokio::task::JoinHandle<Answer> {
    loop {
        let before = busy.held();
        let url = gw.url("/warm");
        let mut task = tokio::spawn(async move { get(&http1_client(), &url, &[]).await });
        tokio::select! {
            a = &mut task => {
                let a = a.unwrap();
                assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "free\n"));
            }
            _ = busy.held.wait_for(|n| *n > before) => return task,
        }
    }
}

/// With one endpoint busy (it holds a request), `least_request` sends every new request to the
/// other one; `round_robin` keeps sending half of them to the busy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_prefers_the_endpoint_with_fewer_requests_in_flight() {
    bounded(async {
        let mut busy = spawn_holding().await;
        let free = spawn_upstream("free", Behavior::Name).await;
        let gw = spawn_gateway(&config("least_request", busy.addr, free.addr)).await;
        let held = hold_one(&gw, &mut busy).await;
        let served_before = free.count();
        let client = http1_client();
        for i in 0..20 {
            let a = get(&client, &gw.url(&format!("/new/{i}")), &[]).await;
            assert_eq!(
                (a.status.as_u16(), a.body.as_str()),
                (200, "free\n"),
                "request {i}"
            );
        }
        assert_eq!(free.count() - served_before, 20);
        assert_eq!(
            busy.held(),
            1,
            "the busy endpoint got none of the new requests"
        );
        busy.release.send(true).unwrap();
        assert_eq!(held.await.unwrap().body, "held\n");
    })
    .await;
}

/// The same scene under `round_robin`: the busy endpoint keeps its turn, so new requests go to
/// it too (they wait there) — what `least_request` avoids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_keeps_sending_to_the_busy_endpoint() {
    bounded(async {
        let mut busy = spawn_holding().await;
        let free = spawn_upstream("free", Behavior::Name).await;
        let gw = spawn_gateway(&config("round_robin", busy.addr, free.addr)).await;
        let first = hold_one(&gw, &mut busy).await;
        let served_before = free.count();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let url = gw.url(&format!("/new/{i}"));
                tokio::spawn(async move { get(&http1_client(), &url, &[]).await })
            })
            .collect();
        // Every new request is either held by the busy endpoint or answered by the free one.
        let mut held = busy.held.clone();
        loop {
            let sent_to_busy = *held.borrow_and_update() - 1;
            let served = free.count() - served_before;
            assert!(sent_to_busy + served <= 20);
            if sent_to_busy + served == 20 {
                assert_eq!(sent_to_busy, 10, "round robin alternates between the two");
                break;
            }
            // Woken by the busy endpoint's count; the free one's answers are polled for.
            let _ = tokio::time::timeout(Duration::from_millis(20), held.changed()).await;
        }
        busy.release.send(true).unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap().status, 200);
        }
        first.await.unwrap();
    })
    .await;
}
