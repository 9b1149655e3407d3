//! Forwarding per SPEC §3: protocols, streaming, upgrades, header rules, pooling, balancing.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_tungstenite::tungstenite::Message;

const ONE_RULE: &str = "      - route:
          - destination: { service: svc, subset: stable }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_client_is_served_over_http1_upstream() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let gw = spawn_gateway(&two_subset_config(stable.addr, canary.addr, ONE_RULE)).await;
    let client = h2c_client();
    for _ in 0..3 {
        let a = get(&client, &gw.url("/h2?x=1"), &[("x-test", "yes")]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body, "stable\n");
        assert_eq!(a.headers["x-subset"], "stable");
    }
    let seen = stable.seen();
    assert_eq!(seen.len(), 3);
    let first = &seen[0];
    assert_eq!(first.version, http::Version::HTTP_11);
    assert_eq!(first.uri, "/h2?x=1");
    assert_eq!(
        first.headers["host"],
        gw.addr.to_string(),
        ":authority becomes Host"
    );
    assert_eq!(first.headers["x-test"], "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_passes_through() {
    let echo = spawn_ws_echo().await;
    let other = spawn_upstream("canary", Behavior::Name).await;
    let gw = spawn_gateway(&two_subset_config(echo, other.addr, ONE_RULE)).await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{}/chat", gw.addr), stream)
        .await
        .expect("the websocket handshake passes through the gateway");
    assert_eq!(resp.status(), 101);
    for text in ["hello", "through the gateway", ""] {
        ws.send(Message::text(text)).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back, Message::text(text));
    }
    let blob: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(blob));
    ws.close(None).await.unwrap();
}

fn checksum_of_pattern(len: u64) -> Checksum {
    let mut sum = Checksum::default();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut off = 0;
    while off < len {
        let n = (64 * 1024).min(len - off);
        buf.clear();
        buf.extend((off..off + n).map(pattern_byte));
        sum.update(&buf);
        off += n;
    }
    sum
}

/// 256 MiB up and 256 MiB down through the real binary, byte-exact, while the gateway's peak
/// memory stays far below the body size (it streams; it does not buffer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_byte_exact_both_ways_with_flat_memory() {
    const LEN: u64 = 256 * 1024 * 1024;
    let counter = spawn_upstream("counter", Behavior::CountBody).await;
    let generator = spawn_upstream("generator", Behavior::Generate).await;
    let yaml = fill(
        "listeners:
  - name: http
    address: \"{listen}\"
admin: { address: \"127.0.0.1:0\" }
services:
  svc:
    namespace: default
    host: svc.default.svc.cluster.local
    subsets:
      up: { endpoints: [\"{up}\"] }
      down: { endpoints: [\"{down}\"] }
routes:
  - name: main
    hosts: [\"*\"]
    http:
      - match: [{ uri: { prefix: /upload } }]
        route: [{ destination: { service: svc, subset: up } }]
      - route: [{ destination: { service: svc, subset: down } }]
",
        &[
            ("up", counter.addr.to_string()),
            ("down", generator.addr.to_string()),
        ],
    );
    let gw = spawn_binary_gateway(&yaml).await;
    let expected = checksum_of_pattern(LEN).0;

    // Upload: a streamed body of unknown length (chunked), counted and checksummed by the upstream.
    let client: Client<_, TestBody> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{}/upload", gw.addr))
        .body(generated_body(LEN))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{LEN} {expected:x}")
    );

    // Download: streamed from the upstream, checksummed here frame by frame.
    let resp = client
        .request(
            Request::get(format!("http://{}/download?bytes={LEN}", gw.addr))
                .body(generated_body(0))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut len, mut sum) = (0u64, Checksum::default());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            len += data.len() as u64;
            sum.update(&data);
        }
    }
    assert_eq!(len, LEN);
    assert_eq!(sum.0, expected, "downloaded bytes differ");

    let peak_mib = gw.peak_rss_kib() / 1024;
    assert!(
        peak_mib < 64,
        "gateway peak RSS {peak_mib} MiB while streaming 2 x 256 MiB: it is buffering"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_follow_the_spec() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let gw = spawn_gateway(&two_subset_config(stable.addr, canary.addr, ONE_RULE)).await;
    let client = http1_client();
    let a = get(
        &client,
        &gw.url("/headers"),
        &[
            ("host", "shop.example.com"),
            ("connection", "x-drop-me"),
            ("x-drop-me", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-end-to-end", "kept"),
        ],
    )
    .await;
    assert_eq!(a.status, 200);
    let b = get(&client, &gw.url("/again"), &[("x-request-id", "req-123")]).await;
    assert_eq!(b.status, 200);

    let seen = stable.seen();
    let h = &seen[0].headers;
    assert_eq!(h["host"], "shop.example.com", "Host is kept");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h["x-forwarded-for"], "203.0.113.9, 127.0.0.1",
        "the client IP is appended"
    );
    assert_eq!(h["x-end-to-end"], "kept");
    for gone in ["x-drop-me", "keep-alive", "proxy-connection"] {
        assert!(
            h.get(gone).is_none(),
            "{gone} is hop-by-hop and must not reach the upstream"
        );
    }
    let id = h["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a generated x-request-id is a UUID: {id}");
    let h2 = &seen[1].headers;
    assert_eq!(
        h2["x-request-id"], "req-123",
        "a client's x-request-id is kept"
    );
    assert_eq!(h2["x-forwarded-for"], "127.0.0.1");
    assert_ne!(h2["host"], "", "Host is present");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled_and_reused() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let gw = spawn_gateway(&two_subset_config(stable.addr, canary.addr, ONE_RULE)).await;
    // Separate client connections, one at a time: the gateway still reuses its upstream connection.
    for _ in 0..50 {
        let a = get(&http1_client(), &gw.url("/"), &[]).await;
        assert_eq!(a.body, "stable\n");
    }
    assert_eq!(stable.count(), 50);
    assert_eq!(
        stable.connections(),
        1,
        "50 sequential requests should share one pooled upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_a_subsets_endpoints() {
    let a = spawn_upstream("a", Behavior::Name).await;
    let b = spawn_upstream("b", Behavior::Name).await;
    let c = spawn_upstream("c", Behavior::Name).await;
    let yaml = fill(
        "listeners:
  - name: http
    address: 127.0.0.1:0
services:
  svc:
    namespace: default
    host: svc.default.svc.cluster.local
    subsets:
      stable: { endpoints: [\"{a}\", \"{b}\", \"{c}\"] }
routes:
  - name: main
    hosts: [\"*\"]
    http:
      - route: [{ destination: { service: svc, subset: stable } }]
",
        &[
            ("a", a.addr.to_string()),
            ("b", b.addr.to_string()),
            ("c", c.addr.to_string()),
        ],
    );
    let gw = spawn_gateway(&yaml).await;
    let client = http1_client();
    let mut order = Vec::new();
    for _ in 0..9 {
        order.push(
            get(&client, &gw.url("/"), &[])
                .await
                .body
                .trim()
                .to_string(),
        );
    }
    assert_eq!(order[0..3], order[3..6]);
    assert_eq!(order[0..3], order[6..9]);
    let mut first: Vec<_> = order[0..3].to_vec();
    first.sort();
    assert_eq!(first, ["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_bodies_and_methods_are_forwarded() {
    let counter = spawn_upstream("counter", Behavior::CountBody).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let gw = spawn_gateway(&two_subset_config(counter.addr, canary.addr, ONE_RULE)).await;
    let client = http1_client();
    let body = Bytes::from_static(b"hello upstream");
    let mut sum = Checksum::default();
    sum.update(&body);
    let a = send(
        &client,
        Request::put(gw.url("/put")).body(Full::new(body)).unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, format!("14 {:x}", sum.0));
    let seen = counter.seen();
    assert_eq!(seen[0].method, http::Method::PUT);
    assert_eq!(seen[0].headers["content-length"], "14");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_and_destination_headers_change_requests_and_answers() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let rules = "      - name: primary
        headers:
          request: { set: { x-env: prod }, add: { x-trace: gw }, remove: [x-secret] }
          response: { set: { x-tier: rule }, add: { x-served-by: splitgate } }
        route:
          - destination: { service: svc, subset: stable }
            weight: 50
          - destination: { service: svc, subset: canary }
            weight: 50
            headers:
              request: { set: { x-env: canary-env, x-canary: \"1\" } }
              response: { set: { x-tier: canary, x-canary: \"yes\" } }
";
    let gw = spawn_gateway(&two_subset_config(stable.addr, canary.addr, rules)).await;
    let client = http1_client();
    let mut seen = (0, 0);
    for _ in 0..60 {
        let a = get(
            &client,
            &gw.url("/"),
            &[("x-secret", "s3cr3t"), ("x-trace", "client")],
        )
        .await;
        assert_eq!(a.headers["x-served-by"], "splitgate");
        // The rule's set is applied after the destination's, so it wins (Envoy's default).
        assert_eq!(a.headers["x-tier"], "rule");
        match a.body.as_str() {
            "canary\n" => {
                seen.1 += 1;
                assert_eq!(a.headers["x-canary"], "yes");
            }
            _ => {
                seen.0 += 1;
                assert!(a.headers.get("x-canary").is_none());
            }
        }
    }
    assert!(seen.0 > 0 && seen.1 > 0, "{seen:?}");
    for (up, canary) in [(&stable, false), (&canary, true)] {
        for s in up.seen() {
            assert!(s.headers.get("x-secret").is_none());
            assert_eq!(s.headers["x-env"], "prod", "the rule's set wins");
            let trace: Vec<_> = s.headers.get_all("x-trace").iter().collect();
            assert_eq!(trace, ["client", "gw"]);
            assert_eq!(s.headers.get("x-canary").is_some(), canary);
        }
    }
}

/// A request header rule sees the forwarding fields the gateway adds, as Envoy's do: it can
/// replace or remove them, and what it leaves reaches the upstream once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_act_on_the_forwarding_fields_the_gateway_adds() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let rules = "      - headers:
          request: { set: { x-forwarded-proto: https }, remove: [x-request-id, x-forwarded-host] }
        route:
          - destination: { service: svc, subset: stable }
";
    let gw = spawn_gateway(&two_subset_config(
        stable.addr,
        "127.0.0.1:1".parse().unwrap(),
        rules,
    ))
    .await;
    let a = get(
        &http1_client(),
        &gw.url("/"),
        &[("host", "shop.example.com")],
    )
    .await;
    assert_eq!(a.status, 200);
    let seen = stable.seen();
    let h = &seen[0].headers;
    let proto: Vec<_> = h.get_all("x-forwarded-proto").iter().collect();
    assert_eq!(proto, ["https"], "the rule's value, once");
    assert!(h.get("x-request-id").is_none(), "{h:?}");
    assert!(h.get("x-forwarded-host").is_none(), "{h:?}");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "what no rule touches is added"
    );
}

#[tokio::test]
async fn header_changes_to_framing_fields_are_refused_with_their_path() {
    let rules = "      - route:
          - destination: { service: svc, subset: stable }
            headers: { request: { set: { content-length: \"5\" } } }
";
    let yaml = two_subset_config(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        rules,
    );
    let err = splitgate::config::from_str(&yaml, "t")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("routes[0].http[0].route[0].headers.request.set: content-length describes the connection or the body's framing and cannot be changed"),
        "{err}"
    );
}
