//! Micro benches of the per-request pieces that need no sockets: route matching over 1, 10 and
//! 100 routes with header rules, the weighted pick, recording a request in the Istio metrics,
//! the whole request path through the handler's steps (route, pick, header rewrite, metrics)
//! without the I/O, and an endpoint's pick with and without consistent hashing (and what
//! building its table costs).

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

/// A runtime whose one subset has `n` endpoints and the given service `policy` (YAML).
fn runtime_with_policy(n: usize, policy: &str) -> splitgate::runtime::Runtime {
    let endpoints: Vec<String> = (0..n)
        .map(|i| format!("\"10.0.{}.{}:8080\"", i / 250, 1 + i % 250))
        .collect();
    let yaml = format!(
        "listeners: [{{ name: http, address: \"127.0.0.1:0\" }}]
services:
  svc:
    namespace: default
    host: svc.default.svc.cluster.local
    subsets: {{ pool: {{ endpoints: [{}] }} }}
    policy: {policy}
routes: [{{ name: r, hosts: [\"*\"], http: [{{ route: [{{ destination: {{ service: svc, subset: pool }} }}] }}] }}]
",
        endpoints.join(", ")
    );
    let config = splitgate::config::from_str(&yaml, "bench").expect("the bench config is valid");
    splitgate::config::compile(&config, None, 1)
}

/// An endpoint's pick as the handler makes it: read the key (if the service hashes), place the
/// request, take the first endpoint. `before` is the pick as it was before consistent hashing
/// (the policy's pick alone), to show what a service without it pays now.
fn endpoint_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("endpoint_pick");
    let (parts, _) = http::Request::get("/api/items?page=2&user=user-4711")
        .header("host", "shop.example.com")
        .header("user-agent", "bench")
        .header("x-user", "user-4711")
        .header("cookie", "theme=dark; session=user-4711")
        .body(())
        .unwrap()
        .into_parts();
    let mut rng = SmallRng::seed_from_u64(1);
    let plain = runtime_with_policy(3, "{}");
    let balancer = &plain.services[0].subsets[0].balancer;
    group.bench_function("before/round_robin_3", |b| {
        b.iter(|| black_box(balancer.pick_index(&mut rng)))
    });
    for (name, n, policy) in [
        ("round_robin", 3, "{}"),
        (
            "ring_header",
            3,
            "{ consistent_hash: { http_header_name: x-user } }",
        ),
        (
            "ring_cookie",
            3,
            "{ consistent_hash: { http_cookie: { name: session } } }",
        ),
        (
            "ring_query",
            3,
            "{ consistent_hash: { http_query_parameter_name: user } }",
        ),
        (
            "ring_source_ip",
            3,
            "{ consistent_hash: { use_source_ip: true } }",
        ),
        (
            "maglev_header",
            3,
            "{ consistent_hash: { http_header_name: x-user, maglev: {} } }",
        ),
        (
            "ring_header",
            100,
            "{ consistent_hash: { http_header_name: x-user } }",
        ),
        (
            "maglev_header",
            100,
            "{ consistent_hash: { http_header_name: x-user, maglev: {} } }",
        ),
    ] {
        let rt = runtime_with_policy(n, policy);
        let balancer = &rt.services[0].subsets[0].balancer;
        group.bench_function(BenchmarkId::new(name, n), |b| {
            b.iter(|| {
                let affinity = balancer.affinity(black_box(&parts), b"10.0.0.1");
                let mut order = balancer.order(affinity.hash, &mut rng).expect("endpoints");
                black_box(balancer.next(&mut order, |_| true))
            })
        });
    }
    group.finish();
}

/// Building a subset's table, as a config or endpoint change does.
fn hash_table_build(c: &mut Criterion) {
    use splitgate::upstream::hash::{Algorithm, HashTable};
    let mut group = c.benchmark_group("hash_table_build");
    group.sample_size(20);
    for n in [3usize, 100] {
        let names: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:8080")).collect();
        for (name, algorithm) in [
            ("ring_1024", Algorithm::RingHash { points: 1024 }),
            ("maglev_65537", Algorithm::Maglev { table_size: 65_537 }),
        ] {
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| black_box(HashTable::build(algorithm, &names)))
            });
        }
    }
    group.finish();
}

criterion_group!(
    benches,
    route_matching,
    weighted_pick,
    metric_recording,
    request_path,
    endpoint_pick,
    hash_table_build
);
criterion_main!(benches);
