//! Kubernetes mode at scale: how long one watch event takes to become what the next request
//! is served from, with `--virtual-services` VirtualServices (default 1,000) over two Services
//! each, `--endpoints` endpoints in all (default 10,000), and what that object set costs in
//! memory.
//!
//! The time measured is the watch loop's own work for one event: translate every object,
//! validate the result, compile the runtime and swap it in (`Control::set_external`). The API
//! server's delivery is left out: it is the same for any gateway.
//!
//! `cargo bench --bench kube_apply` (a release build); `-- --virtual-services N --endpoints M`
//! to scale. Without `--bench` (as `cargo test` runs benches) it does one tiny pass.

use splitgate::config::kubernetes::KubernetesSpec;
use splitgate::control::external::External;
use splitgate::control::Control;
use splitgate::kubernetes::cluster::{
    Cluster, Meta, Object, ServiceInfo, SliceEndpoint, SliceInfo,
};
use splitgate::kubernetes::istio::VirtualServiceSpec;
use splitgate::kubernetes::translate::{self, LastGood};
use std::time::{Duration, Instant};

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

/// `n` VirtualServices, each splitting its own host between its own stable and canary
/// Service, with `per_service` ready endpoints behind each Service.
fn cluster(n: usize, per_service: usize) -> Cluster {
    let mut c = Cluster::default();
    for i in 0..n {
        let ns = format!("team-{}", i % 50);
        for role in ["stable", "canary"] {
            let svc = format!("app{i}-{role}");
            c.services.insert(
                (ns.clone(), svc.clone()),
                ServiceInfo {
                    ports: vec![("http".into(), 80)],
                },
            );
            let endpoints = (0..per_service)
                .map(|k| SliceEndpoint {
                    ip: std::net::IpAddr::from([
                        10,
                        (i / 200) as u8,
                        (i % 200) as u8,
                        k as u8 + if role == "canary" { 128 } else { 0 },
                    ]),
                    ready: true,
                    terminating: false,
                    pod: None,
                })
                .collect();
            c.slices.insert(
                (ns.clone(), format!("{svc}-abcde")),
                SliceInfo {
                    service: svc,
                    ports: vec![("http".into(), 8080)],
                    endpoints,
                },
            );
        }
        let spec: VirtualServiceSpec = serde_json::from_value(serde_json::json!({
            "gateways": ["istio-system/splitgate"],
            "hosts": [format!("app{i}.example.com")],
            "http": [
                {"name": "canary-header", "match": [{"headers": {"x-canary": {"exact": "yes"}}}],
                 "route": [{"destination": {"host": format!("app{i}-canary")}}]},
                {"name": "primary", "route": [
                    {"destination": {"host": format!("app{i}-stable")}, "weight": 90},
                    {"destination": {"host": format!("app{i}-canary")}, "weight": 10}]}
            ]
        }))
        .unwrap();
        let meta = Meta {
            namespace: ns.clone(),
            name: format!("app{i}"),
            generation: 1,
            resource_version: "1".into(),
            created: format!("2026-01-01T00:00:{:02}Z", i % 60),
        };
        c.virtual_services.insert(
            meta.key(),
            Object {
                meta,
                spec: Ok(spec),
            },
        );
    }
    c
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
        let spec: KubernetesSpec = config.kubernetes.clone().unwrap();
        let file = config.raw.clone();
        let rss_before = rss_kib();
        let control = Control::new(config, None);
        let mut c = cluster(n, per_service);
        let mut last_good = LastGood::new();
        let mut translate_times = Vec::new();
        let mut apply_times = Vec::new();
        for round in 0..=rounds {
            // One endpoint change: a pod of one canary becomes not ready.
            let key = (format!("team-{}", round % 50), format!("app{}-canary-abcde", round % n));
            if let Some(s) = c.slices.get_mut(&key) {
                s.endpoints[0].ready = !s.endpoints[0].ready;
            }
            let started = Instant::now();
            let t = translate::translate(&c, &spec, &file, &last_good);
            let translated = started.elapsed();
            last_good = t.last_good.clone();
            let external = External {
                services: t.services,
                routes: t.routes,
                synced: true,
                ..External::default()
            };
            control.set_external(external).await.expect("the objects apply");
            let applied = started.elapsed();
            if round > 0 {
                translate_times.push(translated);
                apply_times.push(applied);
            }
        }
        translate_times.sort();
        apply_times.sort();
        let rss_after = rss_kib();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "kube_apply: {n} VirtualServices, {} endpoints ({per_service} per Service), {rounds} endpoint events",
            n * 2 * per_service
        );
        println!(
            "  event → live: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (translate alone: p50 {:.2} ms, p99 {:.2} ms)",
            ms(percentile(&apply_times, 0.5)),
            ms(percentile(&apply_times, 0.99)),
            ms(*apply_times.last().unwrap()),
            ms(percentile(&translate_times, 0.5)),
            ms(percentile(&translate_times, 0.99)),
        );
        println!(
            "  RSS: {} KiB before, {} KiB with the objects served: {:.1} KiB per VirtualService with its two Services",
            rss_before,
            rss_after,
            (rss_after.saturating_sub(rss_before)) as f64 / n as f64
        );
        println!("  generation now {}", control.generation());
    });
}
