//! Micro benches of the per-request pieces that need no sockets: route matching over 1, 10 and
//! 100 routes with header rules, the weighted pick, recording a request in the Istio metrics,
//! and the whole request path through the handler's steps (route, pick, header rewrite,
//! metrics) without the I/O.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use rand::{rngs::SmallRng, SeedableRng};
use splitgate::metrics::istio::Sample;
use splitgate::proxy::body::Recorder;
use splitgate::proxy::{headers, ConnInfo, Flags};
use splitgate::split::{Split, Target};
use std::hint::black_box;
use std::time::Instant;

/// A config with `n` routes on distinct hosts, each with a header rule and a 90/10 split.
fn config_with_routes(n: usize) -> splitgate::config::Config {
    let mut yaml = String::from(
        "listeners: [{ name: http, address: \"127.0.0.1:0\" }]
services:
  svc:
    namespace: default
    host: svc.default.svc.cluster.local
    subsets:
      stable: { endpoints: [\"127.0.0.1:9001\"] }
      canary: { endpoints: [\"127.0.0.1:9002\"] }
routes:
",
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "  - name: r{i}
    hosts: [\"host{i}.example.com\"]
    http:
      - match: [{{ headers: {{ x-canary: {{ exact: always }} }} }}, {{ cookies: {{ canary: {{ exact: \"yes\" }} }} }}]
        route: [{{ destination: {{ service: svc, subset: canary }} }}]
      - route:
          - {{ destination: {{ service: svc, subset: stable }}, weight: 90 }}
          - {{ destination: {{ service: svc, subset: canary }}, weight: 10 }}
"
        ));
    }
    splitgate::config::from_str(&yaml, "bench").expect("the bench config is valid")
}

fn route_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    for n in [1usize, 10, 100] {
        let rt = splitgate::config::compile(&config_with_routes(n), None, 1);
        let host = format!("host{}.example.com", n - 1);
        let (plain, _) = http::Request::get("/api/items?page=2")
            .header("host", &host)
            .header("user-agent", "bench")
            .header("accept", "*/*")
            .body(())
            .unwrap()
            .into_parts();
        let (header, _) = http::Request::get("/")
            .header("host", &host)
            .header("x-canary", "always")
            .body(())
            .unwrap()
            .into_parts();
        group.bench_with_input(BenchmarkId::new("weighted_rule", n), &plain, |b, req| {
            b.iter(|| black_box(rt.router.find(black_box(req)).map(|m| m.rule.split.total())))
        });
        group.bench_with_input(BenchmarkId::new("header_rule", n), &header, |b, req| {
            b.iter(|| black_box(rt.router.find(black_box(req)).map(|m| m.rule.split.total())))
        });
    }
    group.finish();
}

fn weighted_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("weighted_pick");
    for n in [2usize, 3, 16] {
        let split = Split::new(
            (0..n)
                .map(|i| {
                    (
                        Target {
                            service: 0,
                            subset: i,
                        },
                        10 + i as u32,
                    )
                })
                .collect(),
        );
        let mut rng = SmallRng::seed_from_u64(1);
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| black_box(split.pick(&mut rng)))
        });
    }
    group.finish();
}

fn sample(code: u16) -> Sample {
    Sample {
        code,
        flags: "-",
        protocol: "http",
        grpc_status: "",
        duration_ms: 0.8,
        request_bytes: 120,
        response_bytes: 240,
    }
}

fn metric_recording(c: &mut Criterion) {
    let mut group = c.benchmark_group("metric_record");
    let rt = splitgate::config::compile(&config_with_routes(1), None, 1);
    let metrics = &rt.services[0].subsets[0].metrics;
    // A cached code (a slot resolved once) and one that goes through the family's map.
    for code in [200u16, 418] {
        group.bench_function(BenchmarkId::from_parameter(code), |b| {
            b.iter(|| metrics.record(black_box(&sample(code))))
        });
    }
    group.finish();
}

/// The handler's per-request work without sockets: find the route, pick the subset, rewrite
/// the head for the upstream, and record the answer in the metrics and the analysis window.
fn request_path(c: &mut Criterion) {
    let rt = splitgate::config::compile(&config_with_routes(10), None, 1);
    let conn = ConnInfo {
        client_ip: http::HeaderValue::from_static("10.0.0.1"),
        proto: http::HeaderValue::from_static("http"),
        stream_idle: None,
        local: None,
    };
    let request = || {
        http::Request::get("/api/items?page=2")
            .header("host", "host9.example.com")
            .header("user-agent", "bench")
            .header("accept", "*/*")
            .body(())
            .unwrap()
            .into_parts()
            .0
    };
    let mut rng = SmallRng::seed_from_u64(1);
    c.bench_function("request_path", |b| {
        b.iter_batched(
            request,
            |mut parts| {
                let hit = rt.router.find(&parts).expect("routed");
                let target = hit.rule.split.pick(&mut rng);
                let subset = rt.subset(target);
                let recorder = Recorder {
                    metrics: subset.metrics.clone(),
                    window: rt.window(hit.route.index, target).cloned(),
                    start: Instant::now(),
                    code: 200,
                    request_bytes: 120,
                    response_bytes: 240,
                    protocol: "http",
                    grpc_status: "",
                    done_flags: Flags::NONE,
                };
                headers::prepare_request(&mut parts, &conn, false);
                recorder.finish(Flags::NONE);
                parts
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(
    benches,
    route_matching,
    weighted_pick,
    metric_recording,
    request_path
);
criterion_main!(benches);
