//! Kubernetes mode at scale: how long one watch event takes to become what the next request
//! is served from, with `--virtual-services` VirtualServices (default 1,000) over two Services
//! each, `--endpoints` endpoints in all (default 10,000, each a Pod), and what that object set
//! costs in memory: RSS, and the heap bytes live (counted by a wrapper around the system
//! allocator) that each kind adds as kept and that serving them adds.
//!
//! Two kinds of event are timed, each `--rounds` times: an EndpointSlice change (a pod of one
//! canary turns ready or not ready: the endpoint path) and a VirtualService weight change (one
//! `setWeight` step: the route path). The time is the watch loop's own work for the event,
//! from the change reaching the [`Applier`] to the new snapshot being live
//! (`Applier::take` and `Applier::apply`). The API server's delivery is left out: it is the
//! same for any gateway.
//!
//! `cargo bench --bench kube_apply` (a release build); `-- --virtual-services N --endpoints M`
//! to scale. Without `--bench` (as `cargo test` runs benches) it does one tiny pass.

use splitgate::control::Control;
use splitgate::kubernetes::applier::{Applied, Applier, Change, Item, Kind, KINDS};
use splitgate::kubernetes::cluster::{
    Meta, Object, PodInfo, ServiceInfo, SliceEndpoint, SliceInfo,
};
use splitgate::kubernetes::istio::VirtualServiceSpec;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The system allocator, counting the bytes live: what each stage keeps, to the byte, where RSS
/// moves in pages and keeps what was freed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A VirtualService splitting `app{i}.example.com` between its stable and canary Services,
/// `canary` percent to the canary, at `generation`.
fn virtual_service(i: usize, canary: u32, generation: i64) -> Item {
    let spec: VirtualServiceSpec = serde_json::from_value(serde_json::json!({
        "gateways": ["istio-system/splitgate"],
        "hosts": [format!("app{i}.example.com")],
        "http": [
            {"name": "canary-header", "match": [{"headers": {"x-canary": {"exact": "yes"}}}],
             "route": [{"destination": {"host": format!("app{i}-canary")}}]},
            {"name": "primary", "route": [
                {"destination": {"host": format!("app{i}-stable")}, "weight": 100 - canary},
                {"destination": {"host": format!("app{i}-canary")}, "weight": canary}]}
        ]
    }))
    .unwrap();
    let meta = Meta {
        namespace: namespace(i),
        name: format!("app{i}"),
        generation,
        resource_version: generation.to_string(),
        created: format!("2026-01-01T00:00:{:02}Z", i % 60),
        annotations: Default::default(),
    };
    Item::Vs(Object {
        meta,
        spec: Ok(spec),
    })
}

fn namespace(i: usize) -> String {
    format!("team-{}", i % 50)
}

/// The EndpointSlice of `app{i}-{role}`, `per_service` endpoints, the first ready or not.
fn slice(i: usize, role: &str, per_service: usize, first_ready: bool) -> Item {
    let endpoints = (0..per_service)
        .map(|k| SliceEndpoint {
            ip: std::net::IpAddr::from([
                10,
                (i / 200) as u8,
                (i % 200) as u8,
                k as u8 + if role == "canary" { 128 } else { 0 },
            ]),
            ready: k > 0 || first_ready,
            terminating: false,
            pod: Some(pod_name(i, role, k)),
        })
        .collect();
    Item::Slice(Some(SliceInfo {
        service: format!("app{i}-{role}"),
        ports: vec![("http".into(), 8080)],
        endpoints,
    }))
}

fn pod_name(i: usize, role: &str, k: usize) -> String {
    format!("app{i}-{role}-{}-{k:05}", hash(role))
}

fn hash(role: &str) -> &'static str {
    if role == "canary" {
        "5d4c7b9b4c"
    } else {
        "7bf84f9696"
    }
}

/// A pod of `app{i}`'s `role` ReplicaSet, as [`PodInfo::from_k8s`] keeps it: the labels a
/// Deployment's pods have, and the workload its owner names.
fn pod(i: usize, role: &str) -> Item {
    let labels = [
        ("app", format!("app{i}")),
        ("version", role.to_string()),
        ("pod-template-hash", hash(role).to_string()),
        ("app.kubernetes.io/name", format!("app{i}")),
        ("app.kubernetes.io/part-of", "shop".to_string()),
    ];
    Item::Pod(PodInfo {
        labels: labels
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        workload: format!("app{i}-{role}"),
    })
}

/// The full list of `kind` the watchers would send at start: `n` VirtualServices, each
/// splitting its own host between its own stable and canary Service, with `per_service` ready
/// endpoints behind each Service, each a Pod.
fn list(kind: Kind, n: usize, per_service: usize) -> Change {
    let (mut vs, mut svc, mut slices, mut pods) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let ns = namespace(i);
        for role in ["stable", "canary"] {
            let name = format!("app{i}-{role}");
            svc.push((
                (ns.clone(), name.clone()),
                Item::Svc(ServiceInfo {
                    ports: vec![("http".into(), 80)],
                }),
            ));
            slices.push((
                (ns.clone(), format!("{name}-abcde")),
                slice(i, role, per_service, true),
            ));
            for k in 0..per_service {
                pods.push(((ns.clone(), pod_name(i, role, k)), pod(i, role)));
            }
        }
        vs.push(((ns, format!("app{i}")), virtual_service(i, 10, 1)));
    }
    let items = match kind {
        Kind::VirtualService => vs,
        Kind::DestinationRule => Vec::new(),
        Kind::Service => svc,
        Kind::EndpointSlice => slices,
        Kind::Pod => pods,
    };
    Change::Listed(kind, None, items)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let n = if smoke {
        10
    } else {
        arg("--virtual-services", 1000)
    };
    let endpoints = if smoke {
        100
    } else {
        arg("--endpoints", 10_000)
    };
    let rounds = if smoke { 3 } else { arg("--rounds", 50) };
    let per_service = (endpoints / (2 * n)).max(1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = splitgate::config::from_str(
            "listeners: [{name: http, address: \"127.0.0.1:0\"}]\nkubernetes: {gateway: istio-system/splitgate}\n",
            "bench",
        )
        .unwrap();
        let spec = config.kubernetes.clone().unwrap();
        let rss_before = rss_kib();
        let control = Control::new(config, None);
        let mut applier = Applier::new(spec, 1);
        // What each kind costs as kept (the RSS it adds when taken), then what serving all
        // of it adds (the translation and the compiled runtime).
        let mut kept = Vec::new();
        let mut last = live();
        let mut initial = Duration::ZERO;
        for kind in KINDS {
            // The list is built outside the clock, as the watcher's decoding is.
            let change = list(kind, n, per_service);
            let count = match &change {
                Change::Listed(_, _, items) => items.len(),
                _ => unreachable!("lists only"),
            };
            let started = Instant::now();
            applier.take(change);
            initial += started.elapsed();
            let now = live();
            kept.push((kind, count, now.saturating_sub(last)));
            last = now;
        }
        let started = Instant::now();
        let first = applier.apply(&control).await;
        assert!(matches!(first, Applied::Full(Ok(_))), "{first:?}");
        initial += started.elapsed();
        let rss_loaded = rss_kib();
        let served_bytes = live().saturating_sub(last);
        let mut first_ready = vec![true; n];
        let mut endpoint_times = Vec::new();
        let mut weight_times = Vec::new();
        for round in 0..=rounds {
            // One endpoint change: a pod of one canary turns not ready, or ready again.
            let i = (round * 7) % n;
            first_ready[i] = !first_ready[i];
            let key = (namespace(i), format!("app{i}-canary-abcde"));
            let change = Change::Put(
                Kind::EndpointSlice,
                key,
                Box::new(slice(i, "canary", per_service, first_ready[i])),
            );
            let started = Instant::now();
            applier.take(change);
            let applied = applier.apply(&control).await;
            let took = started.elapsed();
            assert!(matches!(applied, Applied::Endpoints(_)), "{applied:?}");
            // One setWeight step of one VirtualService.
            let key = (namespace(i), format!("app{i}"));
            let generation = 2 + round as i64;
            let change = Change::Put(
                Kind::VirtualService,
                key,
                Box::new(virtual_service(i, 11 + (round % 80) as u32, generation)),
            );
            let started = Instant::now();
            applier.take(change);
            let applied = applier.apply(&control).await;
            let weight_took = started.elapsed();
            assert!(matches!(applied, Applied::Routes(_)), "{applied:?}");
            if round > 0 {
                endpoint_times.push(took);
                weight_times.push(weight_took);
            }
        }
        endpoint_times.sort();
        weight_times.sort();
        let rss_after = rss_kib();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let line = |what: &str, t: &[Duration]| {
            println!(
                "  {what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                ms(percentile(t, 0.5)),
                ms(percentile(t, 0.99)),
                ms(*t.last().unwrap()),
            )
        };
        println!(
            "kube_apply: {n} VirtualServices, {} endpoints ({per_service} per Service), {rounds} events of each kind",
            n * 2 * per_service
        );
        println!("  first full list → live: {:.1} ms", ms(initial));
        line("endpoint event → live", &endpoint_times);
        line("weight event → live", &weight_times);
        println!(
            "  RSS: {rss_before} KiB before, {rss_loaded} KiB with the objects served ({:.1} KiB per VirtualService with its two Services), {rss_after} KiB after the events",
            (rss_loaded.saturating_sub(rss_before)) as f64 / n as f64
        );
        let kib = |b: usize| b as f64 / 1024.0;
        println!("  heap live (counted at each allocation):");
        for (kind, count, bytes) in kept {
            if count > 0 {
                println!(
                    "    {count} {kind:?}s as kept: {:.0} KiB ({:.0} bytes each)",
                    kib(bytes),
                    bytes as f64 / count as f64
                );
            }
        }
        println!(
            "    served from them (translation, /v1/state entries, compiled runtime, metric series): {:.0} KiB ({:.1} KiB per VirtualService with its two Services)",
            kib(served_bytes),
            kib(served_bytes) / n as f64
        );
        println!("    all: {:.0} KiB", kib(live()));
        println!("  generation now {}", control.generation());
    });
}
