//! Sticky canaries through the real gateway: 10,000 clients through a ramp 0 → 10 → 25 → 50 →
//! 100 % and an abort back to 0. What a client sees: which upstream answered it at each step.
//! None may go from canary back to stable while the canary's weight rises, the share of
//! clients on canary follows the weight, and after the abort every client is on stable.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::stream::{self, StreamExt};
use http::Request;
use http_body_util::Full;
use std::net::SocketAddr;

/// Simulated clients.
const CLIENTS: usize = 10_000;
/// Requests in flight at once.
const PARALLEL: usize = 64;
/// Canary's weight at each step: a ramp, then an abort.
const RAMP: [u32; 6] = [0, 10, 25, 50, 100, 0];

/// Route `main` with one weighted rule `primary` at 100/0, sticky as `sticky` (YAML flow).
fn config(stable: SocketAddr, canary: SocketAddr, sticky: &str) -> String {
    two_subset_config(
        stable,
        canary,
        &format!(
            "      - name: primary
        sticky: {sticky}
        route:
          - {{ destination: {{ service: svc, subset: stable }}, weight: 100 }}
          - {{ destination: {{ service: svc, subset: canary }}, weight: 0 }}
"
        ),
    )
}

/// `PUT /v1/routes/main/weights` on the admin API at `admin`.
async fn set_canary(admin: SocketAddr, canary: u32) {
    let body = format!(
        r#"{{"rule": "primary", "weights": {{"stable": {}, "canary": {canary}}}}}"#,
        100 - canary
    );
    let req = Request::put(format!("http://{admin}/v1/routes/main/weights"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let a = send(&http1_client(), req).await;
    assert_eq!(a.status, 200, "setting canary to {canary}: {}", a.body);
}

/// Whether an answer came from canary (else it must be stable's).
fn is_canary(a: &Answer) -> bool {
    assert_eq!(a.status, 200, "{a:?}");
    match a.body.trim_end() {
        "canary" => true,
        "stable" => false,
        other => panic!("answered by neither subset: {other:?}"),
    }
}

/// Follows each client through the ramp: `ask(client, step)` answers whether that client's
/// request at that step reached canary. Checks that no client moves back to stable while the
/// weight rises, that the share on canary is the weight within 1 point, and that the abort
/// brings everyone back.
async fn ramp<A, F>(name: &str, admins: &[SocketAddr], ask: A)
where
    A: Fn(usize, usize) -> F,
    F: std::future::Future<Output = bool>,
{
    let mut on_canary = vec![false; CLIENTS];
    for (step, &weight) in RAMP.iter().enumerate() {
        for &admin in admins {
            set_canary(admin, weight).await;
        }
        let now: Vec<bool> = stream::iter(0..CLIENTS)
            .map(|c| ask(c, step))
            .buffered(PARALLEL)
            .collect()
            .await;
        let rising = step > 0 && weight >= RAMP[step - 1];
        if rising {
            let back = (0..CLIENTS).filter(|&c| on_canary[c] && !now[c]).count();
            assert_eq!(
                back, 0,
                "{name}: {back} clients went from canary back to stable at {weight}%"
            );
        }
        let share = 100.0 * now.iter().filter(|&&c| c).count() as f64 / CLIENTS as f64;
        assert!(
            (share - f64::from(weight)).abs() <= 1.0,
            "{name}: {share:.2}% of clients on canary at weight {weight}"
        );
        on_canary = now;
    }
    assert!(
        on_canary.iter().all(|&c| !c),
        "{name}: every client is back on stable after the abort"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_clients_never_flip_back_while_the_canary_ramps_up() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let app = spawn_app(&config(
        stable.addr,
        canary.addr,
        "{ cookie: sg-canary, ttl: 24h }",
    ))
    .await;
    let client = http1_client();
    let url = app.url("/");

    // Each client's first answer places it, and says where in a cookie that lasts 24 hours.
    let first: Vec<Answer> = stream::iter(0..CLIENTS)
        .map(|_| get(&client, &url, &[]))
        .buffered(PARALLEL)
        .collect()
        .await;
    let cookies: Vec<String> = first
        .iter()
        .map(|a| {
            assert!(!is_canary(a), "at 0% everyone is on stable");
            let set = a
                .headers
                .get("set-cookie")
                .unwrap_or_else(|| panic!("a new client gets its cookie: {a:?}"))
                .to_str()
                .unwrap();
            assert!(
                set.contains("; Max-Age=86400") && set.contains("; Path=/"),
                "{set}"
            );
            set.split(';').next().unwrap().to_string()
        })
        .collect();
    assert!(cookies.iter().all(|c| c.starts_with("sg-canary=")));

    let (client, url, cookies) = (&client, &url, &cookies);
    ramp("cookie", &[app.app.admin_addr], |c, _step| async move {
        let a = get(
            client,
            url,
            &[("cookie", &format!("theme=dark; {}", cookies[c]))],
        )
        .await;
        assert!(
            a.headers.get("set-cookie").is_none(),
            "a placed client is not placed again: {a:?}"
        );
        is_canary(&a)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_clients_get_the_same_subset_from_two_gateway_processes() {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let base = config(
        stable.addr,
        canary.addr,
        "{ hash_on: { header: x-user-id } }",
    )
    .replace("address: 127.0.0.1:0", "address: \"{listen}\"");
    let admins = [free_port(), free_port()].map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
    let gateways = [
        spawn_binary_gateway(&format!(
            "{base}\nadmin: {{ address: \"{}\" }}\n",
            admins[0]
        ))
        .await,
        spawn_binary_gateway(&format!(
            "{base}\nadmin: {{ address: \"{}\" }}\n",
            admins[1]
        ))
        .await,
    ];
    let client = http1_client();
    let urls = gateways.each_ref().map(|g| format!("http://{}/", g.addr));
    let ask = |gw: usize, c: usize| {
        let (client, url) = (&client, &urls[gw]);
        async move {
            let user = format!("user-{c}");
            let a = get(client, url, &[("x-user-id", &user)]).await;
            assert!(a.headers.get("set-cookie").is_none(), "{a:?}");
            is_canary(&a)
        }
    };
    // Each step, each client asks one of the two processes, in turn.
    ramp("hash_on", &admins, |c, step| ask((c + step) % 2, c)).await;

    // At 50%, both processes place every client alike.
    for &admin in &admins {
        set_canary(admin, 50).await;
    }
    let differ = stream::iter(0..CLIENTS)
        .map(|c| async move { ask(0, c).await != ask(1, c).await })
        .buffered(PARALLEL)
        .filter(|&d| async move { d })
        .count()
        .await;
    assert_eq!(differ, 0, "clients the two processes placed differently");
}

#[test]
fn a_bad_sticky_block_is_refused_with_its_path() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (sticky, path, fragment) in [
        (
            "{ ttl: 1h }",
            "routes[0].http[0].sticky",
            "exactly one of cookie",
        ),
        (
            "{ cookie: a, hash_on: { header: x } }",
            "routes[0].http[0].sticky",
            "exactly one of cookie",
        ),
        (
            "{ cookie: \"a b\" }",
            "routes[0].http[0].sticky.cookie",
            "not a valid cookie name",
        ),
        (
            "{ cookie: a, ttl: soon }",
            "routes[0].http[0].sticky.ttl",
            "",
        ),
        (
            "{ hash_on: { header: x, query: y } }",
            "routes[0].http[0].sticky.hash_on",
            "exactly one of header, cookie or query",
        ),
        (
            "{ hash_on: { header: x }, ttl: 1h }",
            "routes[0].http[0].sticky.ttl",
            "applies only to a cookie",
        ),
    ] {
        let text = config(addr, addr, sticky);
        let e = splitgate::config::from_str(&text, "t").expect_err(sticky);
        assert!(
            e.errors
                .iter()
                .any(|f| f.path == path && f.message.contains(fragment)),
            "{sticky}: want {path}: …{fragment}…, got {e}"
        );
    }
    // One destination: nothing to keep a client on.
    let text = svc_config(
        &subset("stable", addr),
        "      - sticky: { cookie: a }
        route:
          - destination: { service: svc, subset: stable }
",
    );
    let e = splitgate::config::from_str(&text, "t").unwrap_err();
    assert!(
        e.errors
            .iter()
            .any(|f| f.path == "routes[0].http[0].sticky" && f.message.contains("two or more")),
        "{e}"
    );
}

#[test]
fn the_gateways_sticky_virtual_services_are_checked_at_load() {
    let yaml = |entries: &str| {
        format!(
            "listeners: [{{name: http, address: \"127.0.0.1:0\"}}]
kubernetes:
  gateway: istio-system/splitgate
  sticky:
{entries}"
        )
    };
    let good = yaml("    shop/podinfo: { cookie: canary-pos, ttl: 12h }\n");
    let config = splitgate::config::from_str(&good, "t").unwrap_or_else(|e| panic!("{e}"));
    let spec = config.kubernetes.unwrap();
    assert_eq!(
        spec.sticky["shop/podinfo"].cookie.as_deref(),
        Some("canary-pos")
    );
    for (entries, fragment) in [
        (
            "    podinfo: { cookie: a }\n",
            "kubernetes.sticky[\"podinfo\"]: name a VirtualService as namespace/name",
        ),
        (
            "    shop/podinfo: { cookie: a, hash_on: { header: x } }\n",
            "kubernetes.sticky[\"shop/podinfo\"]: needs exactly one of cookie",
        ),
        (
            "    shop/podinfo: { cookie: a, ttl: soon }\n",
            "kubernetes.sticky[\"shop/podinfo\"].ttl",
        ),
    ] {
        let err = splitgate::config::from_str(&yaml(entries), "t")
            .expect_err(entries)
            .to_string();
        assert!(
            err.contains(fragment),
            "{entries}: wanted {fragment} in\n{err}"
        );
    }
}
