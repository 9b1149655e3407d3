//! Consistent hashing (`policy.consistent_hash`, Istio's `loadBalancer.consistentHash`) through
//! the real gateway: real upstreams that answer with their own name, real clients. A key keeps
//! its endpoint, keys spread over all of them, endpoint churn moves only the keys it must, and
//! an ejected or failing endpoint's keys go on to others and stick there.

mod common;

use bytes::Bytes;
use common::fake_kube::FakeKube;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Whole-test bound: a hang fails the test instead of blocking the run.
const LIMIT: Duration = Duration::from_secs(120);
/// Distinct keys each test sends.
const KEYS: usize = 500;
/// Times each key is sent.
const REPEATS: usize = 3;

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {LIMIT:?}"))
}

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// `n` upstreams named `a`, `b`, … that answer `200 <name>`.
async fn upstreams(n: usize) -> Vec<Upstream> {
    let mut out = Vec::new();
    for name in &NAMES[..n] {
        out.push(spawn_upstream(name, Behavior::Name).await);
    }
    out
}

/// Service `svc` whose one subset `pool` has the endpoints `addrs`, with `policy` (a YAML
/// flow mapping), and a route on `*` to it.
fn config(addrs: &[SocketAddr], policy: &str) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    svc_config(
        &format!("      pool: {{ endpoints: [{}] }}\n", list.join(", ")),
        "      - route:\n          - destination: { service: svc, subset: pool }\n",
    )
    .replace(
        "    host: svc.default.svc.cluster.local\n",
        &format!("    host: svc.default.svc.cluster.local\n    policy: {policy}\n"),
    )
}

/// The endpoint that answered (its name), after checking the answer is a 200.
fn answered_by(a: &Answer) -> String {
    assert_eq!(a.status, 200, "{}", a.body);
    a.body.trim_end().to_string()
}

/// Sends each key `REPEATS` times as `send` makes the request, and checks that each key was
/// always answered by the same endpoint; returns that endpoint per key.
async fn sticky_owners<F, Fut>(keys: &[String], send: F) -> BTreeMap<String, String>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Answer>,
{
    let mut owners = BTreeMap::new();
    for round in 0..REPEATS {
        for key in keys {
            let by = answered_by(&send(key.clone()).await);
            let first = owners.entry(key.clone()).or_insert_with(|| by.clone());
            assert_eq!(*first, by, "round {round}: key {key} moved");
        }
    }
    owners
}

/// How many keys each endpoint got.
fn shares(owners: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for by in owners.values() {
        *out.entry(by.clone()).or_default() += 1;
    }
    out
}

/// Every one of `names` got a plausible share of the keys: a third is 167 of 500, and the
/// ring's arcs and the sample each stray by a few percent.
fn assert_spread(owners: &BTreeMap<String, String>, names: &[&str]) {
    let got = shares(owners);
    let fair = owners.len() / names.len();
    for name in names {
        let n = got.get(*name).copied().unwrap_or(0);
        assert!(
            n > fair * 6 / 10 && n < fair * 14 / 10,
            "{name} has {n} of {} keys: {got:?}",
            owners.len()
        );
    }
}

/// 30 requests without a key to `url` go to each of three endpoints in turn, and get no
/// cookie.
async fn assert_round_robin(client: &Client<HttpConnector, Full<Bytes>>, url: &str) {
    let mut plain = BTreeMap::<String, usize>::new();
    for _ in 0..30 {
        let a = get(client, url, &[]).await;
        assert!(a.headers.get("set-cookie").is_none(), "{:?}", a.headers);
        *plain.entry(answered_by(&a)).or_default() += 1;
    }
    assert_eq!(plain.values().collect::<Vec<_>>(), [&10, &10, &10]);
}

fn keys(prefix: &str) -> Vec<String> {
    (0..KEYS).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_always_reaches_the_same_endpoint_and_keys_spread_over_all() {
    bounded(async {
        let ups = upstreams(3).await;
        let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
        for table in [
            "",
            ", maglev: {}",
            ", ring_hash: { minimum_ring_size: 4096 }",
        ] {
            let gw = spawn_gateway(&config(
                &addrs,
                &format!("{{ consistent_hash: {{ http_header_name: x-user{table} }} }}"),
            ))
            .await;
            let client = http1_client();
            let owners = sticky_owners(&keys("user"), |key| {
                let (client, url) = (&client, gw.url("/"));
                async move { get(client, &url, &[("x-user", &key)]).await }
            })
            .await;
            assert_spread(&owners, &["a", "b", "c"]);
            // Requests without the key are balanced as usual: round robin.
            assert_round_robin(&client, &gw.url("/")).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_parameter_key_sticks_and_spreads() {
    bounded(async {
        let ups = upstreams(3).await;
        let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
        let gw = spawn_gateway(&config(
            &addrs,
            "{ consistent_hash: { http_query_parameter_name: user, maglev: { table_size: 65537 } } }",
        ))
        .await;
        let client = http1_client();
        let owners = sticky_owners(&keys("q"), |key| {
            let (client, url) = (&client, gw.url(&format!("/items?page=2&user={key}")));
            async move { get(client, &url, &[]).await }
        })
        .await;
        assert_spread(&owners, &["a", "b", "c"]);
        // The key is the parameter's value, wherever it stands in the query.
        for key in ["q-1", "q-2", "q-3"] {
            let moved = get(&client, &gw.url(&format!("/other?user={key}&x=1")), &[]).await;
            assert_eq!(answered_by(&moved), owners[key]);
        }
    })
    .await;
}

/// A client whose connections leave from `ip`.
fn client_from(ip: IpAddr) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(ip));
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Under `policy`, each of `n` loopback clients (an address of its own) sending `headers`
/// keeps its endpoint, and the clients spread over all three. `n` is not a multiple of three:
/// clients hashed on nothing would then move under round robin, which this must tell apart.
async fn each_client_sticks(policy: &str, n: usize, headers: &[(&str, &str)]) {
    assert_ne!(n % 3, 0);
    let ups = upstreams(3).await;
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let gw = spawn_gateway(&config(&addrs, policy)).await;
    // Loopback answers on all of 127/8: each address is a client of its own.
    let ips: Vec<String> = (0..n)
        .map(|i| format!("127.0.{}.{}", 1 + i / 200, 1 + i % 200))
        .collect();
    let clients: HashMap<String, _> = ips
        .iter()
        .map(|ip| (ip.clone(), client_from(ip.parse().unwrap())))
        .collect();
    let owners = sticky_owners(&ips, |ip| {
        let (client, url) = (&clients[&ip], gw.url("/"));
        async move { get(client, &url, headers).await }
    })
    .await;
    assert_spread(&owners, &["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_ip_is_a_key() {
    // A header that would be a key under another policy changes nothing.
    bounded(each_client_sticks(
        "{ consistent_hash: { use_source_ip: true } }",
        301,
        &[("x-user", "same-for-all")],
    ))
    .await;
}

/// A header key is read as the upstream gets the request, as Envoy hashes it: the
/// `x-forwarded-for` the gateway adds is there to hash on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_field_the_gateway_adds_is_a_header_key() {
    bounded(each_client_sticks(
        "{ consistent_hash: { http_header_name: x-forwarded-for } }",
        151,
        &[],
    ))
    .await;
}

/// `u=<16 hex digits>` and the attributes that follow, from a `Set-Cookie` value.
fn cookie_value<'a>(set_cookie: &'a str, attributes: &str) -> &'a str {
    let value = set_cookie
        .strip_prefix("u=")
        .and_then(|rest| rest.strip_suffix(attributes))
        .unwrap_or_else(|| panic!("unexpected Set-Cookie {set_cookie:?}"));
    assert!(
        value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit()),
        "{set_cookie}"
    );
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_with_a_ttl_is_given_to_new_clients_and_brings_them_back() {
    bounded(async {
        let ups = upstreams(3).await;
        let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
        let gw = spawn_gateway(&config(
            &addrs,
            "{ consistent_hash: { http_cookie: { name: u, ttl: 1h, path: /shop } } }",
        ))
        .await;
        let client = http1_client();
        let mut owners = BTreeMap::new();
        for i in 0..300 {
            // A new client: no cookie. The gateway makes one up and picks by it.
            let first = get(&client, &gw.url(&format!("/shop/item/{i}")), &[]).await;
            let set: Vec<_> = first.headers.get_all("set-cookie").iter().collect();
            assert_eq!(set.len(), 1, "{:?}", first.headers);
            let set = set[0].to_str().unwrap();
            let value = cookie_value(set, "; Path=/shop; Max-Age=3600; HttpOnly");
            let by = answered_by(&first);
            // The client sends it back (as a browser would, maybe quoted): same endpoint, and
            // no new cookie.
            for sent in [format!("u={value}"), format!("other=1; u=\"{value}\"")] {
                let again = get(&client, &gw.url("/shop/cart"), &[("cookie", &sent)]).await;
                assert_eq!(answered_by(&again), by, "{sent}");
                assert!(
                    again.headers.get("set-cookie").is_none(),
                    "{:?}",
                    again.headers
                );
            }
            owners.insert(value.to_string(), by);
        }
        // New clients land everywhere.
        assert_spread(&owners, &["a", "b", "c"]);

        // ttl 0s: a session cookie (no Max-Age); no path: no Path attribute, as in Envoy.
        let gw = spawn_gateway(&config(
            &addrs,
            "{ consistent_hash: { http_cookie: { name: u, ttl: 0s } } }",
        ))
        .await;
        let first = get(&client, &gw.url("/"), &[]).await;
        let set = first.headers["set-cookie"].to_str().unwrap();
        cookie_value(set, "; HttpOnly");
        // Without a ttl the gateway gives out no cookie, and requests without one are balanced
        // as usual.
        let gw = spawn_gateway(&config(
            &addrs,
            "{ consistent_hash: { http_cookie: { name: u } } }",
        ))
        .await;
        assert_round_robin(&client, &gw.url("/")).await;
        let owners = sticky_owners(&keys("c")[..100], |key| {
            let (client, url) = (&client, gw.url("/"));
            async move { get(client, &url, &[("cookie", &format!("u={key}"))]).await }
        })
        .await;
        assert_eq!(shares(&owners).len(), 3, "{:?}", shares(&owners));
    })
    .await;
}

/// Where each key goes now, through the app's gateway.
async fn owners_now(app: &TestApp, keys: &[String]) -> BTreeMap<String, String> {
    let client = http1_client();
    sticky_owners(keys, |key| {
        let (client, url) = (&client, app.url("/"));
        async move { get(client, &url, &[("x-user", &key)]).await }
    })
    .await
}

/// Rewrites the app's config file and reloads it through the admin API.
async fn reload_with(app: &TestApp, yaml: &str) {
    std::fs::write(&app.config_path, with_free_admin(yaml)).unwrap();
    let req = Request::builder()
        .method(Method::POST)
        .uri(app.admin_url("/v1/reload"))
        .body(Full::default())
        .unwrap();
    let a = send(&http1_client(), req).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

/// Keys whose endpoint differs between `before` and `after`, by where they went.
fn moved(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<(String, String, String)> {
    before
        .iter()
        .filter(|(k, by)| after[*k] != **by)
        .map(|(k, by)| (k.clone(), by.clone(), after[k].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_moves_only_the_keys_it_must() {
    bounded(async {
        let ups = upstreams(5).await;
        let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
        let keys = keys("churn");
        for table in ["", ", maglev: {}"] {
            let policy = format!("{{ consistent_hash: {{ http_header_name: x-user{table} }} }}");
            let app = spawn_app(&config(&addrs[..4], &policy)).await;
            let four = owners_now(&app, &keys).await;
            assert_spread(&four, &["a", "b", "c", "d"]);

            // b goes (one from the middle of the list): its keys move, and (on a ring) no
            // other key does.
            let without_b = [addrs[0], addrs[2], addrs[3]];
            reload_with(&app, &config(&without_b, &policy)).await;
            let three = owners_now(&app, &keys).await;
            let gone = moved(&four, &three);
            let on_b = four.values().filter(|by| *by == "b").count();
            let strays: Vec<_> = gone.iter().filter(|(_, from, _)| from != "b").collect();
            assert_eq!(gone.len() - strays.len(), on_b, "every key of b moved");
            // Maglev's refill shifts a few slots between the others: over 3,000 random sets of
            // addresses, 0.35 of 500 keys on average, 19 at worst (23 when one comes). A ring
            // never does.
            let allowed = if table.is_empty() { 0 } else { KEYS / 10 };
            assert!(strays.len() <= allowed, "{table}: {strays:?}");
            assert_spread(&three, &["a", "c", "d"]);

            // b is back and e joins: from the four, about a fifth of the keys move, to e.
            reload_with(&app, &config(&addrs, &policy)).await;
            let five = owners_now(&app, &keys).await;
            let gone = moved(&four, &five);
            let to_e = gone.iter().filter(|(_, _, to)| to == "e").count();
            assert!(gone.len() - to_e <= allowed, "{table}: {gone:?}");
            assert!(
                (KEYS / 10..KEYS * 3 / 10).contains(&to_e),
                "{table}: {to_e} of {KEYS} keys moved to e"
            );
            println!(
                "{}: removing b moved {} keys ({on_b} were on b); adding e moved {} ({to_e} to e)",
                if table.is_empty() {
                    "ring_hash"
                } else {
                    "maglev"
                },
                moved(&four, &three).len(),
                gone.len()
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoints_keys_are_retried_on_others_and_stick_there_once_it_is_ejected() {
    bounded(async {
        let failing = Arc::new(AtomicBool::new(false));
        let mut ups = upstreams(2).await;
        ups.push(spawn_upstream("c", Behavior::FailWhile(failing.clone())).await);
        let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
        let keys = keys("eject");
        for (outlier, table) in [
            ("", ""),
            (
                ", outlier_detection: { consecutive_5xx_errors: 1, base_ejection_time: 1h }",
                "",
            ),
            (
                ", outlier_detection: { consecutive_5xx_errors: 1, base_ejection_time: 1h }",
                ", maglev: {}",
            ),
        ] {
            failing.store(false, Ordering::SeqCst);
            let gw = spawn_gateway(&config(
                &addrs,
                &format!("{{ consistent_hash: {{ http_header_name: x-user{table} }}{outlier} }}"),
            ))
            .await;
            let client = http1_client();
            let send = |key: String| {
                let (client, url) = (&client, gw.url("/"));
                async move { get(client, &url, &[("x-user", &key)]).await }
            };
            let healthy = sticky_owners(&keys, send).await;
            let on_c = healthy.values().filter(|by| *by == "c").count();

            failing.store(true, Ordering::SeqCst);
            let c_before = ups[2].count();
            // Every request is answered 200: a key of c is retried on another endpoint (Istio's
            // default retries 503), always the same one, so it sticks there.
            let failing = sticky_owners(&keys, send).await;
            let gone = moved(&healthy, &failing);
            assert!(
                gone.iter().all(|(_, from, _)| from == "c"),
                "{outlier}{table}: {gone:?}"
            );
            assert_eq!(gone.len(), on_c);
            let mut stand_ins = BTreeMap::<&str, usize>::new();
            for (_, _, to) in &gone {
                *stand_ins.entry(to.as_str()).or_default() += 1;
            }
            // c's keys spread over a and b rather than all landing on c's neighbour in the list.
            assert!(
                stand_ins.len() == 2 && stand_ins.values().all(|&n| n >= on_c / 5),
                "{outlier}{table}: {stand_ins:?}"
            );
            let c_tries = ups[2].count() - c_before;
            if outlier.is_empty() {
                // Each of c's keys tries c first, every time.
                assert_eq!(c_tries, on_c * REPEATS);
            } else {
                // c is out after its first 503: the keys go straight to their stand-ins.
                assert_eq!(c_tries, 1, "{table}");
            }
        }
    })
    .await;
}

#[test]
fn each_bad_consistent_hash_is_refused_with_its_path_and_a_clear_message() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let p = "services.svc.policy";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "{ consistent_hash: {} }",
            format!("{p}.consistent_hash"),
            "names no key to hash: set one of http_header_name, http_cookie, use_source_ip: true or http_query_parameter_name",
        ),
        (
            "{ consistent_hash: { use_source_ip: false } }",
            format!("{p}.consistent_hash"),
            "names no key to hash: set one of http_header_name, http_cookie, use_source_ip: true or http_query_parameter_name",
        ),
        (
            "{ consistent_hash: { http_header_name: x-user, http_query_parameter_name: user } }",
            format!("{p}.consistent_hash"),
            "names 2 keys (http_header_name, http_query_parameter_name): set only one",
        ),
        (
            "{ load_balancer: random, consistent_hash: { use_source_ip: true } }",
            format!("{p}.consistent_hash"),
            "cannot be combined with load_balancer: a key picks the endpoint, and requests without one are balanced round robin",
        ),
        (
            "{ consistent_hash: { use_source_ip: true, ring_hash: {}, maglev: {} } }",
            format!("{p}.consistent_hash"),
            "sets both ring_hash and maglev: choose one",
        ),
        (
            "{ consistent_hash: { use_source_ip: true, maglev: { table_size: 65536 } } }",
            format!("{p}.consistent_hash.maglev.table_size"),
            "65536 is not a prime number: a Maglev table needs a prime size, like 65537 (the default)",
        ),
        (
            "{ consistent_hash: { use_source_ip: true, maglev: { table_size: 5000077 } } }",
            format!("{p}.consistent_hash.maglev.table_size"),
            "must be at most 5000011, got 5000077",
        ),
        (
            "{ consistent_hash: { use_source_ip: true, ring_hash: { minimum_ring_size: 0 } } }",
            format!("{p}.consistent_hash.ring_hash.minimum_ring_size"),
            "must be between 1 and 1048576, got 0",
        ),
        (
            "{ consistent_hash: { use_source_ip: true, ring_hash: { minimum_ring_size: 2000000 } } }",
            format!("{p}.consistent_hash.ring_hash.minimum_ring_size"),
            "must be between 1 and 1048576, got 2000000",
        ),
        (
            "{ consistent_hash: { http_header_name: \"x user\" } }",
            format!("{p}.consistent_hash.http_header_name"),
            "\"x user\" is not a valid header name",
        ),
        (
            "{ consistent_hash: { http_query_parameter_name: \"a=b\" } }",
            format!("{p}.consistent_hash.http_query_parameter_name"),
            "\"a=b\" is not a valid query parameter name",
        ),
        (
            "{ consistent_hash: { http_cookie: { name: \"a;b\" } } }",
            format!("{p}.consistent_hash.http_cookie.name"),
            "\"a;b\" is not a valid cookie name: use letters, digits and ! # $ % & ' * + - . ^ _ ` | ~",
        ),
        (
            "{ consistent_hash: { http_cookie: { name: u, path: shop } } }",
            format!("{p}.consistent_hash.http_cookie.path"),
            "\"shop\" is not a cookie path: it starts with / and holds no ; or control character",
        ),
        (
            "{ consistent_hash: { http_cookie: { name: u, ttl: 1.5s } } }",
            format!("{p}.consistent_hash.http_cookie.ttl"),
            "\"1.5s\" is not a whole number of seconds, which Max-Age counts",
        ),
    ];
    for (policy, path, message) in &cases {
        let err = splitgate::config::from_str(&config(&[addr], policy), "test").expect_err(policy);
        let found: Vec<String> = err.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(found, [format!("{path}: {message}")], "{policy}");
    }
    // A ttl that is no duration at all gets the duration parser's own words.
    let err = splitgate::config::from_str(
        &config(
            &[addr],
            "{ consistent_hash: { http_cookie: { name: u, ttl: soon } } }",
        ),
        "test",
    )
    .unwrap_err();
    assert_eq!(err.errors.len(), 1);
    assert!(
        err.errors[0]
            .to_string()
            .starts_with(&format!("{p}.consistent_hash.http_cookie.ttl: ")),
        "{}",
        err.errors[0]
    );
    // Problems are collected with the config's others, not one at a time.
    let two = config(
        &[addr],
        "{ connect_timeout: never, consistent_hash: { http_cookie: { name: u, path: x, ttl: 1.5s } } }",
    );
    let err = splitgate::config::from_str(&two, "test").unwrap_err();
    let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            format!("{p}.connect_timeout"),
            format!("{p}.consistent_hash.http_cookie.path"),
            format!("{p}.consistent_hash.http_cookie.ttl"),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes: a DestinationRule's consistentHash, through a fake API server.
// ---------------------------------------------------------------------------------------------

/// Service `web` whose endpoints are `addrs` (each in a slice of its own, with its own port),
/// a VirtualService sending `web.example.com` to it, and a DestinationRule hashing on
/// `x-user` with `table` (YAML flow entries after the key, may be empty).
fn web_objects(addrs: &[SocketAddr], table: &str) -> String {
    let mut out = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  ports: [{{name: http, port: 80, protocol: TCP}}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: web, namespace: shop}}
spec:
  gateways: [istio-system/splitgate]
  hosts: [web.example.com]
  http: [{{route: [{{destination: {{host: web}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: shop}}
spec:
  host: web
  trafficPolicy:
    loadBalancer:
      consistentHash: {{httpHeaderName: x-user{table}}}
---
"
    );
    for (k, a) in addrs.iter().enumerate() {
        out.push_str(&common::kube::endpoint_slice("web", k, *a, "{ready: true}"));
    }
    out
}

async fn kube_state(app: &TestApp) -> Value {
    let a = get(&http1_client(), &app.admin_url("/v1/state"), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    serde_json::from_str(&a.body).unwrap()
}

fn kube_object<'a>(state: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    state["kubernetes"]["objects"]
        .as_array()?
        .iter()
        .find(|o| o["kind"] == kind && o["namespace"] == "shop" && o["name"] == name)
}

/// Polls `/v1/state` until `check` holds (bounded): the watch has no other signal to wait on.
async fn wait_state(app: &TestApp, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = kube_state(app).await;
        if check(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not reached: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where each key goes now, as `web.example.com`.
async fn web_owners(app: &TestApp, keys: &[String]) -> BTreeMap<String, String> {
    let client = http1_client();
    sticky_owners(keys, |key| {
        let (client, url) = (&client, app.url("/"));
        async move {
            get(
                client,
                &url,
                &[("host", "web.example.com"), ("x-user", &key)],
            )
            .await
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_rules_consistent_hash_keeps_keys_on_their_pod_as_pods_come_and_go() {
    bounded(async {
        let ups = upstreams(3).await;
        let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
        let kube = FakeKube::start().await;
        kube.apply_yaml(&web_objects(&addrs, ", ringHash: {minimumRingSize: 2048}"));
        let dir = temp_dir("kube-hash");
        let kubeconfig = kube.write_kubeconfig(&dir);
        let yaml = format!(
            "listeners: [{{name: http, address: \"127.0.0.1:0\"}}]
kubernetes:
  gateway: istio-system/splitgate
  kubeconfig: {}
",
            kubeconfig.display()
        );
        let app = spawn_app_in(dir.clone(), &yaml).await;
        let s = wait_state(&app, "web served", |s| {
            kube_object(s, "VirtualService", "web").is_some_and(|o| o["status"] == "applied")
        })
        .await;
        let dr = kube_object(&s, "DestinationRule", "web").unwrap();
        assert_eq!(dr["status"], "applied", "{dr}");
        assert_eq!(dr["unsupported"], serde_json::json!([]), "{dr}");

        let keys = keys("pod");
        let three = web_owners(&app, &keys).await;
        assert_spread(&three, &["a", "b", "c"]);

        // Pod b goes (its slice is deleted): only its keys move, through the endpoint-only
        // rebuild.
        let before = app.app.control.generation();
        kube.delete("discovery.k8s.io/v1", "EndpointSlice", "shop", "web-1");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while app.app.control.generation() == before {
            assert!(tokio::time::Instant::now() < deadline, "the slice's deletion was not served");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let two = web_owners(&app, &keys).await;
        let gone = moved(&three, &two);
        assert!(gone.iter().all(|(_, from, _)| from == "b"), "{gone:?}");
        assert_eq!(gone.len(), three.values().filter(|by| *by == "b").count());

        // An invalid consistentHash: the rule is rejected, naming the field, and its last good
        // generation keeps serving the VirtualService as before.
        kube.apply_yaml(&web_objects(&addrs, ", maglev: {tableSize: 1000}"));
        let s = wait_state(&app, "rule rejected", |s| {
            kube_object(s, "DestinationRule", "web").is_some_and(|o| o["status"] == "rejected")
        })
        .await;
        let dr = kube_object(&s, "DestinationRule", "web").unwrap();
        assert_eq!(
            dr["message"],
            "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: 1000 is not a prime number: a Maglev table needs a prime size, like 65537 (the default); generation 1 is still served",
            "{dr}"
        );
        assert_eq!(dr["served_generation"], 1, "{dr}");
        let vs = kube_object(&s, "VirtualService", "web").unwrap();
        assert_eq!(vs["status"], "applied", "{vs}");
        // (Applying the objects again brought pod b's slice back: all three serve, keyed as
        // at first.)
        let held = web_owners(&app, &keys).await;
        assert!(held == three, "still served by the last good rule, keys where they were");
    })
    .await;
}
