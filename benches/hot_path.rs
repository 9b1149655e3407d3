//! Micro benches of the per-request pieces that need no sockets: route matching over 1, 10 and
//! 100 routes with header rules, and the weighted pick.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::{rngs::SmallRng, SeedableRng};
use splitgate::split::{Split, Target};
use std::hint::black_box;

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

criterion_group!(benches, route_matching, weighted_pick);
criterion_main!(benches);
