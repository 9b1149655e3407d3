//! `retry`: one endpoint of three answers 503 to 30% of its requests. The `stable` subset has
//! three endpoints of its own (the bench's stable upstream is not used): two that always answer
//! and one that answers 503 to 3 requests in 10. `max` runs on a fresh gateway with Istio's
//! default retries (2 more tries, on the next endpoints, on a 503), then on one with `retries:
//! { attempts: 0 }`. The goal with retries: below 0.1% non-2xx seen by clients.

use super::{
    max_loop, serve_upstream_at, upstream_body, Args, Gateway, Proto, Report, Row, Seen, Target,
    Tweaks, UpstreamAddrs,
};
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn run(args: &Args, upstreams: &UpstreamAddrs, report: &mut Report) -> Result<()> {
    let seen = Arc::new(Seen::default());
    let mut endpoints = Vec::new();
    for _ in 0..2 {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        endpoints.push(serve_upstream_at(
            l,
            "stable",
            args.body_size,
            seen.clone(),
        )?);
    }
    let failing = Arc::new(AtomicU64::new(0));
    endpoints.push(serve_flaky(args.body_size, failing.clone()).await?);

    for (name, retries) in [
        ("default retries", None),
        ("no retries", Some("{ attempts: 0 }".to_string())),
    ] {
        let tweaks = Tweaks {
            stable_endpoints: Some(endpoints.clone()),
            retries,
            ..Tweaks::default()
        };
        let gw = Gateway::start(args, upstreams, &tweaks).await?;
        let target = Target::gateway(gw.listen, Proto::H1);
        let failed_before = failing.load(Ordering::Relaxed);
        let label = format!("retry: {name}");
        let tally = max_loop(args, &label, &target).await?;
        let answered = tally.answered() + tally.errors();
        let share = 100.0 * tally.errors() as f64 / answered.max(1) as f64;
        let upstream_503 = failing.load(Ordering::Relaxed) - failed_before;
        let extra =
            json!({ "retries": name, "non_2xx_percent": share, "upstream_503s": upstream_503 });
        report.notes.push(format!(
            "retry, {name}: {} of {answered} requests failed ({share:.3}%; goal with retries \
             below 0.1%), while the flaky endpoint answered 503 {upstream_503} times",
            tally.errors()
        ));
        report.push(
            Row::from_tally("retry", name, &tally, args.duration, extra),
            &tally,
        );
        gw.note_log(report);
    }
    Ok(())
}

/// An upstream on a free loopback port that answers 503 to requests 1, 2 and 3 of every 10
/// (counting them in `failed`), and like the stable upstream to the others.
async fn serve_flaky(body_size: usize, failed: Arc<AtomicU64>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the flaky upstream")?;
    let addr = listener.local_addr()?;
    let body = upstream_body("stable", body_size);
    let count = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (body, count, failed) = (body.clone(), count.clone(), failed.clone());
            let service = hyper::service::service_fn(move |_req| {
                let n = count.fetch_add(1, Ordering::Relaxed);
                let resp = if n % 10 < 3 {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let mut r = Response::new(Full::new(Bytes::from_static(b"flaky\n")));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    r
                } else {
                    Response::new(Full::new(body.clone()))
                };
                async move { Ok::<_, Infallible>(resp) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
