//! `churn`: Kubernetes mode under full load while the endpoints churn.
//!
//! A fresh gateway runs in Kubernetes mode against the fake API server of `tests/common` (the
//! real list/watch protocol over loopback HTTP). Its objects are what a cluster has for one
//! canary: a Service `bench`, a DestinationRule with subsets `stable` (`version: v1`) and
//! `canary` (`version: v2`), one Pod per endpoint carrying those labels, one EndpointSlice with
//! every endpoint, and a VirtualService with the same two rules as the bench's file config
//! (`x-canary: always` to canary, then 90/10). Each endpoint is an upstream of its own on an
//! address of its own: `--churn-endpoints` stable ones on 127.0.1.x and as many canary ones on
//! 127.0.2.x, all on one port as a Service's pods are.
//!
//! Then `max` runs through that gateway `2 × --churn-rounds + 1` times (5 by default), without
//! churn and with churn in turn, starting and ending without. While churning, the EndpointSlice is rewritten `--churn-rate` times a second
//! (100 by default), as the EndpointSlice controller does when pods fail and pass their
//! readiness probes: each change takes the next endpoint out (not ready) or puts the one that
//! is out back (ready), so one endpoint at a time is out and both subsets always have one
//! ready. The goal
//! is zero failed requests, and a mean throughput with churn within 5% of the mean without.
//! Run it with `--gateway-quota 50 --pin-gateway 0 --pin-client 1` so that the gateway, not
//! the load generator, is what limits throughput, and its own cost of the churn shows.
//!
//! The API server runs on a thread of its own. The report gives the changes written, the
//! snapshots the gateway applied for them (it may take several events in one), the upstream
//! connections each run opened (an endpoint that comes back starts with no pooled connection),
//! and the gateway's RSS.

use super::fake_kube::FakeKube;
use super::probe::cpu_time;
use super::{
    get_request, max_loop, serve_upstream_at, Args, Gateway, Proto, Report, Row, Seen, Target,
    Tweaks, UpstreamAddrs,
};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The namespace of every object.
const NAMESPACE: &str = "shop";
/// How long the gateway gets to apply the last change after a run.
const SETTLE: Duration = Duration::from_secs(10);

/// One endpoint: its address, subset and pod name.
#[derive(Clone)]
struct Endpoint {
    ip: Ipv4Addr,
    subset: &'static str,
    pod: String,
}

pub async fn run(args: &Args, report: &mut Report) -> Result<()> {
    let (endpoints, port, seen, _upstreams) = start_endpoints(args).await?;
    // The API server on a runtime and thread of its own.
    let api = Background::new("load-fake-kube", 1)?;
    let kube = Arc::new(api.spawn(FakeKube::start()).await?);
    for object in objects(&endpoints, port, None) {
        kube.apply(object);
    }
    let dir = std::env::temp_dir().join(format!("splitgate-load-kube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tweaks = Tweaks {
        kubeconfig: Some(kube.write_kubeconfig(&dir)),
        ..Tweaks::default()
    };
    // The gateway's upstreams come from the objects; these only fill the file config's slot.
    let unused = UpstreamAddrs {
        stable: SocketAddr::from((endpoints[0].ip, port)),
        canary: SocketAddr::from((endpoints[endpoints.len() - 1].ip, port)),
    };
    let gw = Gateway::start(args, &unused, &tweaks).await?;
    let rss_before = gw.rss_kib()?;
    let target = Target::gateway(gw.listen, Proto::H1);

    // First the churn alone, without requests: what each change costs the gateway in CPU.
    let alone = {
        let pid = gw.pid.to_string();
        let (generation_before, cpu_before) = (generation(&gw).await?, cpu_time(&pid)?);
        let stop = Arc::new(AtomicBool::new(false));
        let churner = api.spawn(churn(
            kube.clone(),
            endpoints.clone(),
            port,
            args.churn_rate,
            stop.clone(),
        ));
        tokio::time::sleep(args.duration).await;
        stop.store(true, Ordering::Relaxed);
        let changes = churner.await.context("the churner panicked")??;
        kube.apply(slice(&endpoints, port, None));
        let applied = settle(&gw, generation_before, true).await?;
        let cpu = cpu_time(&pid)?.saturating_sub(cpu_before);
        let per_change = cpu.as_secs_f64() * 1e6 / changes.written.max(1) as f64;
        report.notes.push(format!(
            "churn alone (no requests): {} changes in {:.1} s, {applied} snapshots; the gateway \
             used {:.0} ms of CPU, {per_change:.0} µs per change ({:.1}% of a CPU at {}/s)",
            changes.written,
            changes.elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e3,
            per_change * args.churn_rate / 1e4,
            args.churn_rate
        ));
        json!({ "changes": changes.written, "snapshots": applied, "gateway_cpu_s": cpu.as_secs_f64(),
                "gateway_cpu_us_per_change": per_change })
    };

    let mut steady = Vec::new();
    let mut churned = Vec::new();
    let rounds = args.churn_rounds.max(1);
    for (i, churning) in (0..2 * rounds + 1).map(|i| (i, i % 2 == 1)) {
        let run = if churning { "churn" } else { "no churn" };
        let label = format!("churn {}/{}: {run}", i + 1, 2 * rounds + 1);
        let generation_before = generation(&gw).await?;
        let opened_before = seen.opened_total();
        let stop = Arc::new(AtomicBool::new(false));
        let churner = churning.then(|| {
            let (kube, stop) = (kube.clone(), stop.clone());
            api.spawn(churn(kube, endpoints.clone(), port, args.churn_rate, stop))
        });
        // The gateway's CPU time over the measured part of the run (after the warm-up).
        let pid = gw.pid.to_string();
        let warmup = args.warmup;
        let cpu_from = tokio::spawn({
            let pid = pid.clone();
            async move {
                tokio::time::sleep(warmup).await;
                cpu_time(&pid)
            }
        });
        let tally = max_loop(args, &label, &target).await;
        stop.store(true, Ordering::Relaxed);
        let changes = match churner {
            Some(c) => Some(c.await.context("the churner panicked")??),
            None => None,
        };
        let tally = tally?;
        let cpu = cpu_time(&pid)?.saturating_sub(cpu_from.await??);
        let cpu_us = cpu.as_secs_f64() * 1e6 / tally.answered().max(1) as f64;
        if changes.is_some() {
            // Put every endpoint back and wait for the gateway to serve that.
            kube.apply(slice(&endpoints, port, None));
        }
        let applied = settle(&gw, generation_before, changes.is_some()).await?;
        let opened = seen.opened_total() - opened_before;
        let name = if changes.is_some() {
            format!("gateway, {}/s", args.churn_rate)
        } else {
            "gateway, no churn".to_string()
        };
        let extra = json!({
            "run": run,
            "churn_rate": if changes.is_some() { args.churn_rate } else { 0.0 },
            "changes_written": changes.as_ref().map_or(0, |c| c.written),
            "churn_seconds": changes.as_ref().map_or(0.0, |c| c.elapsed.as_secs_f64()),
            "snapshots_applied": applied,
            "upstream_connections_opened": opened,
            "gateway_cpu_s": cpu.as_secs_f64(),
            "gateway_cpu_us_per_request": cpu_us,
            "endpoints": endpoints.len(),
        });
        let row = Row::from_tally("churn", &name, &tally, args.duration, extra);
        let rps = row.rps.unwrap_or(0.0);
        match &changes {
            Some(c) => {
                let seconds = c.elapsed.as_secs_f64().max(1e-9);
                report.notes.push(format!(
                    "churn run {}: {} EndpointSlice changes written ({:.1}/s over {:.1} s); the \
                     gateway applied {applied} snapshots for them and opened {opened} upstream \
                     connections",
                    i + 1,
                    c.written,
                    c.written as f64 / seconds,
                    seconds
                ));
                churned.push((rps, tally.errors(), cpu_us));
            }
            None => {
                report.notes.push(format!(
                    "churn run {}: no churn; the gateway opened {opened} upstream connections",
                    i + 1
                ));
                steady.push((rps, cpu_us));
            }
        }
        report.push(row, &tally);
        gw.check_alive()?;
    }
    let rss_after = gw.rss_kib()?;
    {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let baseline = mean(&steady.iter().map(|(r, _)| *r).collect::<Vec<_>>());
        let rps = mean(&churned.iter().map(|(r, _, _)| *r).collect::<Vec<_>>());
        let errors: u64 = churned.iter().map(|(_, e, _)| e).sum();
        let ratio = if baseline > 0.0 { rps / baseline } else { 0.0 };
        let cpu_steady = mean(&steady.iter().map(|(_, c)| *c).collect::<Vec<_>>());
        let cpu_churn = mean(&churned.iter().map(|(_, _, c)| *c).collect::<Vec<_>>());
        report.notes.push(format!(
            "churn: throughput with churn is {:.1}% of the mean without ({rps:.0} against \
             {baseline:.0} rps; goal ≥ 95%), {errors} failed requests (goal 0); the gateway's \
             CPU per request {cpu_churn:.1} µs with churn, {cpu_steady:.1} µs without; its RSS \
             {rss_before} KiB before the runs, {rss_after} KiB after",
            100.0 * ratio
        ));
        report.rows.push(Row {
            scenario: "churn",
            target: "ratio".into(),
            rps: None,
            latency: None,
            errors: Some(errors),
            answered: None,
            split: format!("{:.3} churn/no churn", ratio),
            json: json!({
                "scenario": "churn",
                "target": "ratio",
                "throughput_ratio": ratio,
                "churn_alone": alone,
                "gateway_cpu_us_per_request": { "churn": cpu_churn, "no_churn": cpu_steady },
                "churn_errors": errors,
                "rss_kib_before": rss_before,
                "rss_kib_after": rss_after,
            }),
        });
    }
    gw.note_log(report);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What the churner did.
struct Churned {
    written: u64,
    elapsed: Duration,
}

/// Rewrites the EndpointSlice `rate` times a second until `stop`: change 2k takes endpoint
/// k mod n out, change 2k + 1 puts it back.
async fn churn(
    kube: Arc<FakeKube>,
    endpoints: Vec<Endpoint>,
    port: u16,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> Result<Churned> {
    let started = Instant::now();
    let mut written = 0u64;
    if rate > 0.0 {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let out = (written % 2 == 0).then_some((written / 2) as usize % endpoints.len());
            kube.apply(slice(&endpoints, port, out));
            written += 1;
        }
    }
    Ok(Churned {
        written,
        elapsed: started.elapsed(),
    })
}

/// The gateway's config generation (`/v1/state`).
async fn generation(gw: &Gateway) -> Result<u64> {
    let req = get_request(gw.admin, "/v1/state", &[])?;
    let (status, body) = super::call(&mut None, gw.admin, req).await?;
    if !status.is_success() {
        bail!("GET /v1/state answered {status}");
    }
    let state: Value = serde_json::from_slice(&body)?;
    state["generation"]
        .as_u64()
        .ok_or_else(|| anyhow!("/v1/state has no generation"))
}

/// Snapshots the gateway applied since `before`; after churn, first waits until its
/// generation has not moved for 200 ms (40 times the event → live p99 of `kube_apply`), so
/// that the next run starts with every endpoint back.
async fn settle(gw: &Gateway, before: u64, churned: bool) -> Result<u64> {
    let deadline = Instant::now() + SETTLE;
    let mut last = generation(gw).await?;
    if churned {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = generation(gw).await?;
            if now == last {
                break;
            }
            if Instant::now() > deadline {
                bail!("the gateway was still applying changes {SETTLE:?} after the churn");
            }
            last = now;
        }
    }
    Ok(last - before)
}

/// A runtime of its own for parts that must not share the load generator's threads; shut
/// down in the background on drop (it is dropped from within the client's runtime).
struct Background(Option<tokio::runtime::Runtime>);

impl Background {
    fn new(name: &str, threads: usize) -> Result<Background> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
            .with_context(|| format!("starting the {name} runtime"))?;
        Ok(Background(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("shut down only on drop").handle()
    }

    fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle().spawn(future)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Starts one upstream per endpoint (on a runtime of their own), all on one port; returns the
/// endpoints, the port, what they saw together, and the runtime that keeps them up.
async fn start_endpoints(args: &Args) -> Result<(Vec<Endpoint>, u16, Arc<Seen>, Background)> {
    let n = args.churn_endpoints;
    if !(1..=250).contains(&n) {
        bail!("--churn-endpoints must be from 1 to 250");
    }
    let runtime = Background::new("load-upstream", args.upstream_threads)?;
    let mut endpoints = Vec::new();
    for (subset, third) in [("stable", 1u8), ("canary", 2u8)] {
        for k in 0..n {
            endpoints.push(Endpoint {
                ip: Ipv4Addr::new(127, 0, third, k as u8 + 1),
                subset,
                pod: format!("bench-{subset}-{k}"),
            });
        }
    }
    let seen = Arc::new(Seen::default());
    let (list, counted, body_size) = (endpoints.clone(), seen.clone(), args.body_size);
    let bound = runtime.spawn(async move {
        let (endpoints, seen) = (list, counted);
        // The first endpoint picks a free port; the others take it on their addresses. Another
        // process may hold it on one of them: then pick again.
        let mut last_error = None;
        for _ in 0..10 {
            let first = SocketAddr::from((endpoints[0].ip, 0));
            let listener = tokio::net::TcpListener::bind(first).await?;
            let port = listener.local_addr()?.port();
            let mut listeners = vec![listener];
            for e in &endpoints[1..] {
                match tokio::net::TcpListener::bind(SocketAddr::from((e.ip, port))).await {
                    Ok(l) => listeners.push(l),
                    Err(err) => {
                        last_error = Some(err);
                        break;
                    }
                }
            }
            if listeners.len() == endpoints.len() {
                for (l, e) in listeners.into_iter().zip(&endpoints) {
                    serve_upstream_at(l, e.subset, body_size, seen.clone())?;
                }
                return Ok(port);
            }
        }
        Err(anyhow!(
            "no port free on all {} endpoint addresses: {last_error:?}",
            endpoints.len()
        ))
    });
    let port = bound.await??;
    Ok((endpoints, port, seen, runtime))
}

/// Every object the gateway reads, with endpoint `out` (an index) not ready.
fn objects(endpoints: &[Endpoint], port: u16, out: Option<usize>) -> Vec<Value> {
    let mut list = vec![
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "bench", "namespace": NAMESPACE},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]},
        }),
        json!({
            "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": {"name": "bench", "namespace": NAMESPACE},
            "spec": {"host": "bench", "subsets": [
                {"name": "stable", "labels": {"version": "v1"}},
                {"name": "canary", "labels": {"version": "v2"}},
            ]},
        }),
        json!({
            "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
            "metadata": {"name": "bench", "namespace": NAMESPACE},
            "spec": {
                "gateways": ["istio-system/splitgate"],
                "hosts": [super::HOST_NAME],
                "http": [
                    {"name": "canary-by-header",
                     "match": [{"headers": {"x-canary": {"exact": "always"}}}],
                     "route": [{"destination": {"host": "bench", "subset": "canary"}}]},
                    {"name": "primary", "route": [
                        {"destination": {"host": "bench", "subset": "stable"}, "weight": 90},
                        {"destination": {"host": "bench", "subset": "canary"}, "weight": 10},
                    ]},
                ],
            },
        }),
    ];
    for e in endpoints {
        let version = if e.subset == "stable" { "v1" } else { "v2" };
        list.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": e.pod, "namespace": NAMESPACE,
                "labels": {"app": "bench", "version": version},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": format!("bench-{}-5d8f9c7b6d", e.subset), "uid": "x", "controller": true}],
            },
            "status": {"phase": "Running", "podIP": e.ip.to_string()},
        }));
    }
    list.push(slice(endpoints, port, out));
    list
}

/// The Service's one EndpointSlice, endpoint `out` (an index) not ready: its pod failed a
/// readiness probe, and is not terminating.
fn slice(endpoints: &[Endpoint], port: u16, out: Option<usize>) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .enumerate()
        .map(|(k, e)| {
            let gone = out == Some(k);
            json!({
                "addresses": [IpAddr::V4(e.ip).to_string()],
                "conditions": {"ready": !gone, "serving": !gone, "terminating": false},
                "targetRef": {"kind": "Pod", "name": e.pod, "namespace": NAMESPACE},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": "bench-abcde", "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": "bench"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}
