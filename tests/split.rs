//! Split share through the real gateway: the observed share of each subset follows the weights.

mod common;

use common::*;
use std::collections::HashMap;

/// Sends `n` requests over `concurrency` keep-alive connections and counts answers by body.
async fn tally(gw: &TestGateway, n: usize, concurrency: usize) -> HashMap<String, usize> {
    let client = http1_client();
    let url = gw.url("/");
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            let share = n / concurrency + usize::from(i < n % concurrency);
            tokio::spawn(async move {
                let mut counts = HashMap::new();
                for _ in 0..share {
                    let a = get(&client, &url, &[]).await;
                    assert_eq!(a.status, 200, "{}", a.body);
                    *counts.entry(a.body.trim().to_string()).or_insert(0) += 1;
                }
                counts
            })
        })
        .collect();
    let mut total = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_insert(0) += v;
        }
    }
    assert_eq!(total.values().sum::<usize>(), n);
    total
}

fn share(counts: &HashMap<String, usize>, name: &str, n: usize) -> f64 {
    100.0 * *counts.get(name).unwrap_or(&0) as f64 / n as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ninety_ten_split_within_one_and_a_half_points() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let rules = "      - name: primary
        route:
          - { destination: { service: svc, subset: stable }, weight: 90 }
          - { destination: { service: svc, subset: canary }, weight: 10 }
";
    let gw = spawn_gateway(&two_subset_config(stable.addr, canary.addr, rules)).await;
    let counts = tally(&gw, 20_000, 16).await;
    let (s, c) = (
        share(&counts, "stable", 20_000),
        share(&counts, "canary", 20_000),
    );
    assert!((s - 90.0).abs() <= 1.5, "stable got {s:.2}%");
    assert!((c - 10.0).abs() <= 1.5, "canary got {c:.2}%");
    assert_eq!(stable.count() + canary.count(), 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_subsets_fifty_thirty_twenty_and_weight_zero_gets_nothing() {
    let a = spawn_upstream("alpha", Behavior::Name).await;
    let b = spawn_upstream("beta", Behavior::Name).await;
    let c = spawn_upstream("gamma", Behavior::Name).await;
    let z = spawn_upstream("zero", Behavior::Name).await;
    let yaml = fill(
        "listeners:
  - name: http
    address: 127.0.0.1:0
services:
  svc:
    namespace: default
    host: svc.default.svc.cluster.local
    subsets:
      a: { endpoints: [\"{a}\"] }
      b: { endpoints: [\"{b}\"] }
      c: { endpoints: [\"{c}\"] }
      z: { endpoints: [\"{z}\"] }
routes:
  - name: main
    hosts: [\"*\"]
    http:
      - route:
          - { destination: { service: svc, subset: a }, weight: 50 }
          - { destination: { service: svc, subset: z }, weight: 0 }
          - { destination: { service: svc, subset: b }, weight: 30 }
          - { destination: { service: svc, subset: c }, weight: 20 }
",
        &[
            ("a", a.addr.to_string()),
            ("b", b.addr.to_string()),
            ("c", c.addr.to_string()),
            ("z", z.addr.to_string()),
        ],
    );
    let gw = spawn_gateway(&yaml).await;
    let counts = tally(&gw, 20_000, 16).await;
    for (name, want) in [("alpha", 50.0), ("beta", 30.0), ("gamma", 20.0)] {
        let got = share(&counts, name, 20_000);
        assert!(
            (got - want).abs() <= 1.5,
            "{name} got {got:.2}%, want {want}%"
        );
    }
    assert_eq!(counts.get("zero"), None);
    assert_eq!(z.count(), 0, "a weight-0 subset must receive nothing");
}
