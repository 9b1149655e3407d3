//! Kubernetes mode end to end: the real gateway, watching a fake API server that speaks the
//! real list/watch protocol (`common::fake_kube`, checked against kubectl), routing to real
//! upstreams on loopback as the objects say. Argo Rollouts' and Flagger's objects are applied as
//! those controllers write them.

mod common;

use common::fake_kube::FakeKube;
use common::kube::*;
use common::*;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// Whole-test bound: a hang fails the test instead of blocking the run.
const LIMIT: Duration = Duration::from_secs(90);

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {LIMIT:?}"))
}

/// The Services, EndpointSlices and Pods of an Argo Rollouts canary with host-level splitting:
/// `rollouts-demo-stable` at `stable`, `rollouts-demo-canary` at `canary`.
fn argo_workloads(stable: SocketAddr, canary: SocketAddr) -> String {
    let mut out = String::new();
    for (role, addr, hash) in [
        ("stable", stable, "7bf84f9696"),
        ("canary", canary, "5d4c7b9b4c"),
    ] {
        out.push_str(&format!(
            "apiVersion: v1
kind: Service
metadata: {{name: rollouts-demo-{role}, namespace: shop}}
spec:
  selector: {{app: rollouts-demo, rollouts-pod-template-hash: {hash}}}
  ports: [{{name: http, port: 80, targetPort: http, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: rollouts-demo-{role}-abcde
  namespace: shop
  labels: {{kubernetes.io/service-name: rollouts-demo-{role}}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
  - addresses: [\"{ip}\"]
    conditions: {{ready: true}}
    targetRef: {{kind: Pod, name: rollouts-demo-{hash}-{role}, namespace: shop}}
---
apiVersion: v1
kind: Pod
metadata:
  name: rollouts-demo-{hash}-{role}
  namespace: shop
  labels: {{app: rollouts-demo, version: {role}, rollouts-pod-template-hash: {hash}}}
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: rollouts-demo-{hash}, uid: u-{role}, controller: true}}]
---
",
            ip = addr.ip(),
            port = addr.port(),
        ));
    }
    out
}

/// The VirtualService as Argo Rollouts leaves it at `setWeight: canary`.
fn argo_vs(canary: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: rollouts-demo-vsvc, namespace: shop}}
spec:
  gateways: [istio-system/splitgate]
  hosts: [rollouts-demo.example.com]
  http:
    - name: primary
      route:
        - destination: {{host: rollouts-demo-stable, port: {{number: 80}}}}
          weight: {stable}
        - destination: {{host: rollouts-demo-canary, port: {{number: 80}}}}
          weight: {canary}
",
        stable = 100 - canary
    )
}

/// The stable and canary upstreams, and a fake API server holding Argo Rollouts' host-level
/// objects for them at `setWeight: canary`, with the VirtualService's generation.
async fn argo_cluster(canary_weight: u32) -> (Upstream, Upstream, FakeKube, i64) {
    let stable = spawn_upstream("stable", Behavior::Name).await;
    let canary = spawn_upstream("canary", Behavior::Name).await;
    let kube = FakeKube::start().await;
    kube.apply_yaml(&argo_workloads(stable.addr, canary.addr));
    let g = generation_of(&kube.apply_yaml(&argo_vs(canary_weight)));
    (stable, canary, kube, g)
}

/// Sends `n` requests for `host`; how many each subset answered.
async fn shares(app: &TestApp, host: &str, n: usize) -> (usize, usize) {
    let client = http1_client();
    let (mut stable, mut canary) = (0, 0);
    for _ in 0..n {
        let a = get(&client, &app.url("/"), &[("host", host)]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        match a.body.as_str() {
            "stable\n" => stable += 1,
            "canary\n" => canary += 1,
            other => panic!("answered by {other:?}"),
        }
    }
    (stable, canary)
}

/// One metric line's value from the metrics port.
async fn metric(app: &TestApp, line_start: &str) -> Option<f64> {
    let url = format!("http://{}/stats/prometheus", app.app.metrics_addr);
    let a = get(&http1_client(), &url, &[]).await;
    a.body
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_host_level_canary_steps_through_its_weights_and_aborts() {
    bounded(async {
        let (_stable, _canary, kube, g) = argo_cluster(0).await;
        let dir = temp_dir("kube-argo");
        let app = spawn_app_in(dir.clone(), &kube_config(&kube, &dir)).await;
        wait_served(&app, "rollouts-demo-vsvc", g).await;
        let ready = get(
            &http1_client(),
            &format!("http://{}/healthz/ready", app.app.readiness_addr),
            &[],
        )
        .await;
        assert_eq!(ready.status, 200, "ready once the objects are served");

        for (step, want) in [(0u32, 0.0), (10, 0.10), (50, 0.50), (100, 1.0), (0, 0.0)] {
            let g = generation_of(&kube.apply_yaml(&argo_vs(step)));
            wait_served(&app, "rollouts-demo-vsvc", g).await;
            let (s, c) = shares(&app, "rollouts-demo.example.com", 400).await;
            let share = c as f64 / (s + c) as f64;
            assert!(
                (share - want).abs() <= 0.07,
                "setWeight {step}: canary got {c} of {}",
                s + c
            );
            let line = "splitgate_route_weight{route=\"rollouts-demo-vsvc.shop\",rule=\"primary\",service=\"rollouts-demo-canary.shop\",subset=\"*\"}";
            assert_eq!(metric(&app, line).await, Some(f64::from(step)), "{line}");
            let line = "splitgate_kubernetes_object_generation{kind=\"VirtualService\",namespace=\"shop\",name=\"rollouts-demo-vsvc\"}";
            assert_eq!(metric(&app, line).await, Some(g as f64), "{line}");
        }
        // The route belongs to the VirtualService: the admin API refuses to change it.
        let put = http::Request::put(app.admin_url("/v1/routes/rollouts-demo-vsvc.shop/weights"))
            .body(http_body_util::Full::from(
                r#"{"weights": {"rollouts-demo-canary.shop/*": 100}}"#,
            ))
            .unwrap();
        let a = send(&http1_client(), put).await;
        assert_eq!(a.status, 409, "{}", a.body);
        assert!(
            a.body.contains("VirtualService shop/rollouts-demo-vsvc"),
            "{}",
            a.body
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_virtual_service_is_rejected_and_its_last_good_version_serves() {
    bounded(async {
        let (_stable, _canary, kube, good) = argo_cluster(100).await;
        let dir = temp_dir("kube-reject");
        let app = spawn_app_in(dir.clone(), &kube_config(&kube, &dir)).await;
        wait_served(&app, "rollouts-demo-vsvc", good).await;

        let broken = argo_vs(0).replace("weight: 100", "weight: 0");
        let bad = generation_of(&kube.apply_yaml(&broken));
        let s = wait_state(&app, "the broken generation rejected", |s| {
            object(s, "VirtualService", "shop", "rollouts-demo-vsvc")
                .is_some_and(|o| o["generation"] == bad && o["status"] == "rejected")
        })
        .await;
        let o = object(&s, "VirtualService", "shop", "rollouts-demo-vsvc").unwrap();
        assert_eq!(o["served_generation"], good);
        assert_eq!(
            o["message"],
            format!("spec.http[0].route: the weights sum to 0; generation {good} is still served")
        );
        let (s, c) = shares(&app, "rollouts-demo.example.com", 50).await;
        assert_eq!(
            (s, c),
            (0, 50),
            "the last good split, all canary, still serves"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_first_list_and_a_410_relist_catches_up() {
    bounded(async {
        let (_stable, _canary, kube, _g) = argo_cluster(0).await;
        kube.set_down(true);
        let dir = temp_dir("kube-relist");
        let app = spawn_app_in(dir.clone(), &kube_config(&kube, &dir)).await;
        let ready_url = format!("http://{}/healthz/ready", app.app.readiness_addr);
        let ready = get(&http1_client(), &ready_url, &[]).await;
        assert_eq!(
            ready.status, 503,
            "not ready before the first list: {}",
            ready.body
        );
        assert_eq!(state(&app).await["kubernetes"]["synced"], false);

        kube.set_down(false);
        let deadline = tokio::time::Instant::now() + CONVERGE;
        while get(&http1_client(), &ready_url, &[]).await.status != 200 {
            assert!(tokio::time::Instant::now() < deadline, "never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(shares(&app, "rollouts-demo.example.com", 20).await, (20, 0));

        // The API server goes away (its watches drop), the weight moves and history is
        // compacted meanwhile: resuming gets 410 Gone, and the relist brings the change. While
        // it is down no watch can resume before the compaction (with the watches only dropped,
        // one sometimes did, got the change as an event, and no relist was needed).
        kube.set_down(true);
        let g = generation_of(&kube.apply_yaml(&argo_vs(100)));
        kube.compact();
        kube.clear_requests();
        kube.set_down(false);
        wait_served(&app, "rollouts-demo-vsvc", g).await;
        assert_eq!(shares(&app, "rollouts-demo.example.com", 20).await, (0, 20));
        let relists = kube
            .requests()
            .iter()
            .filter(|r| r.contains("virtualservices") && !r.contains("watch="))
            .count();
        assert!(
            relists >= 1,
            "listed again after the 410: {:?}",
            kube.requests()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_api_server_converge() {
    bounded(async {
        let (_stable, _canary, kube, _g) = argo_cluster(0).await;
        let (d1, d2) = (temp_dir("kube-two-a"), temp_dir("kube-two-b"));
        let a = spawn_app_in(d1.clone(), &kube_config(&kube, &d1)).await;
        let b = spawn_app_in(d2.clone(), &kube_config(&kube, &d2)).await;
        let g = generation_of(&kube.apply_yaml(&argo_vs(100)));
        for app in [&a, &b] {
            wait_served(app, "rollouts-demo-vsvc", g).await;
            assert_eq!(shares(app, "rollouts-demo.example.com", 20).await, (0, 20));
        }
    })
    .await;
}

/// Flagger's objects for deployment `podinfo` in namespace `test`: its -primary and -canary
/// Services at `primary` and `canary`, and the VirtualService Flagger writes mid-analysis with
/// session affinity (`analysis.sessionAffinity`): the canary destination sets a cookie, and a
/// rule ahead of the weighted one keeps its holders on the canary.
fn flagger_objects(primary: SocketAddr, canary: SocketAddr, canary_weight: u32) -> String {
    let mut out = String::new();
    for (role, addr) in [("primary", primary), ("canary", canary)] {
        out.push_str(&format!(
            "apiVersion: v1
kind: Service
metadata: {{name: podinfo-{role}, namespace: test}}
spec:
  selector: {{app: podinfo-{role}}}
  ports: [{{name: http, port: 9898, targetPort: http, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: podinfo-{role}-xyz
  namespace: test
  labels: {{kubernetes.io/service-name: podinfo-{role}}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
  - addresses: [\"{ip}\"]
    conditions: {{ready: true}}
---
",
            ip = addr.ip(),
            port = addr.port()
        ));
    }
    out.push_str(&format!(
        "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: podinfo, namespace: test}}
spec:
  gateways: [splitgate.istio-system.svc.cluster.local]
  hosts: [app.example.com]
  http:
    - match:
        - headers:
            x-canary: {{exact: insider}}
        - headers:
            cookie: {{regex: \".*flagger-cookie=LmXkPqRt.*\"}}
      route:
        - destination: {{host: podinfo-primary, port: {{number: 9898}}}}
          weight: 0
        - destination: {{host: podinfo-canary, port: {{number: 9898}}}}
          weight: 100
    - route:
        - destination: {{host: podinfo-primary, port: {{number: 9898}}}}
          weight: {primary_weight}
        - destination: {{host: podinfo-canary, port: {{number: 9898}}}}
          weight: {canary_weight}
          headers:
            response:
              add:
                Set-Cookie: \"flagger-cookie=LmXkPqRt; Max-Age=21600\"
",
        primary_weight = 100 - canary_weight
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagger_session_affinity_sets_its_cookie_and_keeps_holders_on_the_canary() {
    bounded(async {
        // Named as the shares helper expects: "stable" is Flagger's primary.
        let primary = spawn_upstream("stable", Behavior::Name).await;
        let canary = spawn_upstream("canary", Behavior::Name).await;
        let kube = FakeKube::start().await;
        let applied = kube.apply_yaml(&flagger_objects(primary.addr, canary.addr, 20));
        let g = generation_of(&applied);
        let dir = temp_dir("kube-flagger");
        let app = spawn_app_in(dir.clone(), &kube_config(&kube, &dir)).await;
        wait_state(&app, "podinfo served", |s| {
            object(s, "VirtualService", "test", "podinfo")
                .is_some_and(|o| o["served_generation"] == g)
        })
        .await;
        let client = http1_client();
        let (mut to_canary, mut cookies_on_primary) = (0, 0);
        for _ in 0..200 {
            let a = get(&client, &app.url("/"), &[("host", "app.example.com")]).await;
            let cookie = a
                .headers
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().to_string());
            match a.body.as_str() {
                "canary\n" => {
                    to_canary += 1;
                    assert_eq!(
                        cookie.as_deref(),
                        Some("flagger-cookie=LmXkPqRt; Max-Age=21600"),
                        "the canary's answers carry the affinity cookie"
                    );
                }
                _ => cookies_on_primary += usize::from(cookie.is_some()),
            }
        }
        assert!((20..=70).contains(&to_canary), "{to_canary} of 200 at 20%");
        assert_eq!(cookies_on_primary, 0, "the primary's answers set no cookie");
        // Holding the cookie (among others), every request goes to the canary.
        for _ in 0..30 {
            let a = get(
                &client,
                &app.url("/"),
                &[
                    ("host", "app.example.com"),
                    ("cookie", "a=1; flagger-cookie=LmXkPqRt"),
                ],
            )
            .await;
            assert_eq!(a.body, "canary\n");
        }
        // The A/B header too.
        let a = get(
            &client,
            &app.url("/"),
            &[("host", "app.example.com"), ("x-canary", "insider")],
        )
        .await;
        assert_eq!(a.body, "canary\n");
    })
    .await;
}

/// Service `web` in `shop` whose endpoints are `addrs`, each in a slice of its own (its own
/// port), ready or terminating as `terminating` says; and a VirtualService sending all of
/// `web.example.com` to it.
fn churn_objects(addrs: &[SocketAddr], terminating: Option<usize>) -> String {
    out_objects(addrs, terminating.map(|k| (k, Out::Terminating)))
}

/// How an endpoint is out.
#[derive(Clone, Copy, PartialEq)]
enum Out {
    /// Its pod is being deleted.
    Terminating,
    /// Its pod fails its readiness probe.
    NotReady,
}

/// [`churn_objects`] with endpoint `down.0` out as `down.1` says.
fn out_objects(addrs: &[SocketAddr], down: Option<(usize, Out)>) -> String {
    let mut out = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec:
  gateways: [istio-system/splitgate]
  hosts: [web.example.com]
  http: [{route: [{destination: {host: web}}]}]
---
"
    .to_string();
    for (k, a) in addrs.iter().enumerate() {
        let how = down.filter(|(i, _)| *i == k).map(|(_, how)| how);
        let gone = how.is_some();
        let terminating = how == Some(Out::Terminating);
        let conditions = format!(
            "{{ready: {}, serving: {}, terminating: {terminating}}}",
            !gone,
            how != Some(Out::NotReady)
        );
        out.push_str(&endpoint_slice("web", k, *a, &conditions));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_churning_under_load_fail_no_request() {
    bounded(async {
        let mut ups = Vec::new();
        for _ in 0..3 {
            ups.push(spawn_upstream("web", Behavior::Name).await);
        }
        let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
        let kube = FakeKube::start().await;
        let g = generation_of(&kube.apply_yaml(&churn_objects(&addrs, None)));
        let dir = temp_dir("kube-churn");
        let app = spawn_app_in(dir.clone(), &kube_config(&kube, &dir)).await;
        wait_state(&app, "web served", |s| {
            object(s, "VirtualService", "shop", "web").is_some_and(|o| o["served_generation"] == g)
        })
        .await;

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut load = Vec::new();
        for _ in 0..2 {
            let (stop, url) = (stop.clone(), app.url("/"));
            load.push(tokio::spawn(async move {
                let client = http1_client();
                let (mut ok, mut failed) = (0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let req = http::Request::get(&url)
                        .header("host", "web.example.com")
                        .body(http_body_util::Full::default())
                        .unwrap();
                    match client.request(req).await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => failed.push(r.status().to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            }));
        }
        // Each endpoint in turn goes terminating (a pod scaled away), then comes back.
        for round in 0..12 {
            let k = round % addrs.len();
            let before = app.app.control.generation();
            kube.apply_yaml(&churn_objects(&addrs, Some(k)));
            wait_generation_above(&app, before).await;
            // Requests already on their way may still land; after those, none.
            let settled = ups[k].count();
            let others_before: usize = ups.iter().map(|u| u.count()).sum::<usize>() - settled;
            wait_until(|| {
                ups.iter().map(|u| u.count()).sum::<usize>() - ups[k].count() >= others_before + 50
            })
            .await;
            assert!(
                ups[k].count() <= settled + 2,
                "round {round}: the terminating endpoint got {} new requests",
                ups[k].count() - settled
            );
            let before = app.app.control.generation();
            kube.apply_yaml(&churn_objects(&addrs, None));
            wait_generation_above(&app, before).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut failed) = (0, Vec::new());
        for l in load {
            let (o, f) = l.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        assert!(
            failed.is_empty(),
            "{} of {} failed: {:?}",
            failed.len(),
            ok as usize + failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(ok > 600, "only {ok} requests ran");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_failing_its_readiness_probe_gets_no_request_and_keeps_its_connection() {
    bounded(async {
        let (a, b) = (
            spawn_upstream("a", Behavior::Name).await,
            spawn_upstream("b", Behavior::Name).await,
        );
        let addrs = [a.addr, b.addr];
        let kube = FakeKube::start().await;
        let g = generation_of(&kube.apply_yaml(&out_objects(&addrs, None)));
        let dir = temp_dir("kube-standby");
        let app = spawn_app_in(dir.clone(), &kube_config(&kube, &dir)).await;
        wait_state(&app, "web served", |s| {
            object(s, "VirtualService", "shop", "web").is_some_and(|o| o["served_generation"] == g)
        })
        .await;
        let client = http1_client();
        let send = |n: usize| {
            let (client, url) = (client.clone(), app.url("/"));
            async move {
                let mut bodies = Vec::new();
                for _ in 0..n {
                    let r = get(&client, &url, &[("host", "web.example.com")]).await;
                    assert_eq!(r.status, 200, "{}", r.body);
                    bodies.push(r.body);
                }
                bodies
            }
        };
        send(10).await;
        assert!(a.count() > 0 && b.count() > 0, "round robin over both");
        let (a_requests, a_connections) = (a.count(), a.connections());

        // a fails its readiness probe: no request reaches it.
        let before = app.app.control.generation();
        kube.apply_yaml(&out_objects(&addrs, Some((0, Out::NotReady))));
        wait_generation_above(&app, before).await;
        let bodies = send(20).await;
        assert!(bodies.iter().all(|b| b == "b\n"), "{bodies:?}");
        assert_eq!(a.count(), a_requests, "a got requests while not ready");

        // It passes again: it serves on the connection the gateway kept for it.
        let before = app.app.control.generation();
        kube.apply_yaml(&out_objects(&addrs, None));
        wait_generation_above(&app, before).await;
        send(20).await;
        assert!(a.count() > a_requests, "a serves again");
        assert_eq!(
            a.connections(),
            a_connections,
            "the gateway opened a new connection to a pod that was only not ready"
        );

        // A terminating pod's connections go with it: when an endpoint at that address is
        // back, it starts afresh.
        let before = app.app.control.generation();
        kube.apply_yaml(&out_objects(&addrs, Some((0, Out::Terminating))));
        wait_generation_above(&app, before).await;
        let before = app.app.control.generation();
        kube.apply_yaml(&out_objects(&addrs, None));
        wait_generation_above(&app, before).await;
        send(20).await;
        assert!(
            a.connections() > a_connections,
            "a terminating endpoint's connection was kept"
        );
    })
    .await;
}

async fn wait_generation_above(app: &TestApp, before: u64) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while app.app.control.generation() <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new generation after {before}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn wait_until(check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A gateway pod as the API server lists it: ready, at `ip`.
fn gateway_pod(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: istio-system
  labels: {{app: splitgate}}
status:
  podIP: \"{ip}\"
  conditions: [{{type: Ready, status: \"True\"}}]
---
"
    )
}

fn run_verify(kubeconfig: &std::path::Path, vs: &str, port: u16) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_splitgate"))
        .args([
            "verify",
            "--virtual-service",
            vs,
            "--admin-port",
            &port.to_string(),
        ])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_says_whether_every_ready_gateway_serves_the_current_generation() {
    bounded(async {
        let (_stable, _canary, kube, g) = argo_cluster(10).await;
        // Two gateways whose admin APIs share a port on two pod addresses.
        let port = std::net::TcpListener::bind("127.0.0.2:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut apps = Vec::new();
        for (i, ip) in ["127.0.0.2", "127.0.0.3"].into_iter().enumerate() {
            let dir = temp_dir(&format!("kube-verify-{i}"));
            let yaml = kube_config(&kube, &dir) + &format!("admin: {{address: \"{ip}:{port}\"}}\n");
            apps.push(spawn_app_in(dir, &yaml).await);
            kube.apply_yaml(&gateway_pod(&format!("splitgate-{i}"), ip));
        }
        for app in &apps {
            wait_served(app, "rollouts-demo-vsvc", g).await;
        }
        let kubeconfig = kube.write_kubeconfig(&temp_dir("kube-verify-cli"));
        let verify = |vs: &'static str| {
            let kubeconfig = kubeconfig.clone();
            tokio::task::spawn_blocking(move || run_verify(&kubeconfig, vs, port))
        };
        let (code, out) = verify("shop/rollouts-demo-vsvc").await.unwrap();
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            out.matches(&format!("applied generation {g}")).count(),
            2,
            "{out}"
        );

        let bad = generation_of(&kube.apply_yaml(&argo_vs(0).replace("weight: 100", "weight: 0")));
        for app in &apps {
            wait_state(app, "the bad generation rejected", |s| {
                object(s, "VirtualService", "shop", "rollouts-demo-vsvc")
                    .is_some_and(|o| o["generation"] == bad && o["status"] == "rejected")
            })
            .await;
        }
        let (code, out) = verify("shop/rollouts-demo-vsvc").await.unwrap();
        assert_eq!(code, 1, "{out}");
        assert_eq!(
            out.matches(&format!("rejected generation {bad}")).count(),
            2,
            "{out}"
        );

        let (code, out) = verify("shop/nothing").await.unwrap();
        assert_eq!(code, 2, "{out}");
        assert!(
            out.contains("VirtualService shop/nothing does not exist"),
            "{out}"
        );
    })
    .await;
}

/// Argo Rollouts' subset-level objects: one Service `rollouts-demo` over both pods, a
/// DestinationRule whose subsets select the ReplicaSets' hashes (`stable_hash` for stable), and
/// a VirtualService with a header route and a mirror route ahead of the weighted route.
fn argo_subset_objects(stable: SocketAddr, canary: SocketAddr, stable_hash: &str) -> String {
    let mut out = "apiVersion: v1
kind: Service
metadata: {name: rollouts-demo, namespace: shop}
spec:
  ports: [{name: http, port: 80, protocol: TCP}]
---
"
    .to_string();
    for (role, addr, hash) in [("stable", stable, "aaa111"), ("canary", canary, "bbb222")] {
        out.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: rollouts-demo-{role}
  namespace: shop
  labels: {{kubernetes.io/service-name: rollouts-demo}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
  - addresses: [\"{ip}\"]
    conditions: {{ready: true}}
    targetRef: {{kind: Pod, name: rollouts-demo-{hash}-x, namespace: shop}}
---
apiVersion: v1
kind: Pod
metadata:
  name: rollouts-demo-{hash}-x
  namespace: shop
  labels: {{app: rollouts-demo, rollouts-pod-template-hash: {hash}}}
---
",
            ip = addr.ip(),
            port = addr.port()
        ));
    }
    let canary_hash = if stable_hash == "aaa111" {
        "bbb222"
    } else {
        "aaa111"
    };
    out.push_str(&format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: rollouts-demo, namespace: shop}}
spec:
  host: rollouts-demo
  subsets:
    - {{name: stable, labels: {{rollouts-pod-template-hash: {stable_hash}}}}}
    - {{name: canary, labels: {{rollouts-pod-template-hash: {canary_hash}}}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: rollouts-demo-vsvc, namespace: shop}}
spec:
  gateways: [istio-system/splitgate]
  hosts: [rollouts-demo.example.com]
  http:
    - name: canary-header
      match: [{{headers: {{x-canary: {{exact: \"yes\"}}}}}}]
      route: [{{destination: {{host: rollouts-demo, subset: canary}}, weight: 100}}]
    - name: mirror
      match: [{{uri: {{prefix: /mirror}}}}]
      route: [{{destination: {{host: rollouts-demo, subset: stable}}, weight: 100}}]
      mirror: {{host: rollouts-demo, subset: canary}}
      mirrorPercentage: {{value: 100}}
    - name: primary
      route:
        - {{destination: {{host: rollouts-demo, subset: stable}}, weight: 100}}
        - {{destination: {{host: rollouts-demo, subset: canary}}, weight: 0}}
"
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_subset_level_header_and_mirror_routes_and_promotion_by_destination_rule() {
    bounded(async {
        let stable = spawn_upstream("stable", Behavior::Name).await;
        let canary = spawn_upstream("canary", Behavior::Name).await;
        let kube = FakeKube::start().await;
        let g = generation_of(&kube.apply_yaml(&argo_subset_objects(
            stable.addr,
            canary.addr,
            "aaa111",
        )));
        let dir = temp_dir("kube-subset");
        let app = spawn_app_in(dir.clone(), &kube_config(&kube, &dir)).await;
        wait_served(&app, "rollouts-demo-vsvc", g).await;
        let host = "rollouts-demo.example.com";
        assert_eq!(shares(&app, host, 20).await, (20, 0));
        // The header route.
        let client = http1_client();
        let a = get(
            &client,
            &app.url("/"),
            &[("host", host), ("x-canary", "yes")],
        )
        .await;
        assert_eq!(a.body, "canary\n");
        // The mirror route: answered by stable, copied to canary.
        let before = canary.count();
        let a = get(&client, &app.url("/mirror/x"), &[("host", host)]).await;
        assert_eq!(a.body, "stable\n");
        wait_until(|| canary.count() > before).await;
        assert!(canary.seen().iter().any(|s| s.uri.path() == "/mirror/x"));
        // Promotion: the DestinationRule's stable subset now selects the other ReplicaSet.
        let s = state(&app).await;
        let dr_before =
            object(&s, "DestinationRule", "shop", "rollouts-demo").unwrap()["generation"].clone();
        kube.apply_yaml(&argo_subset_objects(stable.addr, canary.addr, "bbb222"));
        wait_state(&app, "the promoted DestinationRule applied", |s| {
            object(s, "DestinationRule", "shop", "rollouts-demo")
                .is_some_and(|o| o["generation"] != dr_before && o["status"] == "applied")
        })
        .await;
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            if shares(&app, host, 20).await == (0, 20) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never promoted");
        }
    })
    .await;
}

/// A VirtualService whose rules redirect, answer directly, rewrite and inject a fault, as an
/// Istio user writes them: each is served as written, and what is not served is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtual_services_redirect_direct_response_rewrite_and_fault_are_served() {
    bounded(async {
        let (stable, _canary, kube, _) = argo_cluster(0).await;
        let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: rollouts-demo-vsvc, namespace: shop}
spec:
  gateways: [istio-system/splitgate]
  hosts: [rollouts-demo.example.com]
  http:
    - name: moved
      match: [{uri: {prefix: /old}}]
      redirect: {uri: /new, scheme: https}
    - name: down
      match: [{uri: {exact: /down}}]
      directResponse: {status: 503, body: {string: \"maintenance\\n\"}}
    - name: teapot
      match: [{uri: {prefix: /teapot}}]
      fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
      route: [{destination: {host: rollouts-demo-stable}}]
    - name: api
      rewrite: {uri: /v2/, authority: internal.example}
      fault: {delay: {fixedDelay: 1ms, percentage: {value: 100}}, abort: {http2Error: CANCEL, httpStatus: 500, percentage: {value: 0}}}
      route: [{destination: {host: rollouts-demo-stable}}]
";
        let g = generation_of(&kube.apply_yaml(vs));
        let dir = temp_dir("kube-actions");
        let app = spawn_app_in(dir.clone(), &kube_config(&kube, &dir)).await;
        let s = wait_served(&app, "rollouts-demo-vsvc", g).await;
        let o = object(&s, "VirtualService", "shop", "rollouts-demo-vsvc").unwrap();
        assert_eq!(o["unsupported"], serde_json::json!(["spec.http[3].fault.abort.http2Error"]));
        let client = http1_client();
        let host = [("host", "rollouts-demo.example.com")];

        let a = get(&client, &app.url("/old/x?y=1"), &host).await;
        assert_eq!(a.status, 301);
        assert_eq!(a.headers["location"], "https://rollouts-demo.example.com/new?y=1");
        let a = get(&client, &app.url("/down"), &host).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (503, "maintenance\n"));
        let a = get(&client, &app.url("/teapot"), &host).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (418, "fault filter abort"));
        assert_eq!(stable.count(), 0, "none of these reached an upstream");

        let a = get(&client, &app.url("/users?id=1"), &host).await;
        assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "stable\n"));
        let seen = stable.seen().pop().unwrap();
        assert_eq!(seen.uri, "/v2/users?id=1");
        assert_eq!(seen.headers["host"], "internal.example");
        let line = "istio_requests_total{";
        let flagged = get(&client, &format!("http://{}/stats/prometheus", app.app.metrics_addr), &[]).await;
        let fi = flagged.body.lines().any(|l| {
            l.starts_with(line) && l.contains("response_code=\"418\"") && l.contains("response_flags=\"FI\"")
        });
        let di = flagged.body.lines().any(|l| {
            l.starts_with(line) && l.contains("response_code=\"200\"") && l.contains("response_flags=\"DI\"")
        });
        assert!(fi && di, "FI and DI series:\n{}", flagged.body);
    })
    .await;
}

/// Argo Rollouts' VirtualService at `setWeight: canary`, made sticky by its annotation.
fn sticky_argo_vs(canary: u32) -> String {
    argo_vs(canary).replace(
        "metadata: {name: rollouts-demo-vsvc, namespace: shop}",
        "metadata:\n  name: rollouts-demo-vsvc\n  namespace: shop\n  annotations: {splitgate.io/sticky: '{cookie: canary-pos, ttl: 1h}'}",
    )
}

/// With `splitgate.io/sticky` on the VirtualService, each client keeps its subset while the
/// controller moves the weights, and clients only ever move from stable to canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_annotation_keeps_clients_on_their_subset_while_the_weights_move() {
    bounded(async {
        let (_stable, _canary, kube, _) = argo_cluster(0).await;
        let g = generation_of(&kube.apply_yaml(&sticky_argo_vs(30)));
        let dir = temp_dir("kube-sticky");
        let app = spawn_app_in(dir.clone(), &kube_config(&kube, &dir)).await;
        wait_served(&app, "rollouts-demo-vsvc", g).await;
        let client = http1_client();
        let host = ("host", "rollouts-demo.example.com");
        // 300 clients, each placed by its first answer's cookie.
        let mut clients = Vec::new();
        for _ in 0..300 {
            let a = get(&client, &app.url("/"), &[host]).await;
            let cookie = a.headers["set-cookie"].to_str().unwrap().to_string();
            assert!(
                cookie.starts_with("canary-pos=") && cookie.contains("Max-Age=3600"),
                "{cookie}"
            );
            let pair = cookie.split(';').next().unwrap().to_string();
            clients.push((pair, a.body == "canary\n"));
        }
        let on_canary = clients.iter().filter(|c| c.1).count();
        assert!(
            (60..=120).contains(&on_canary),
            "{on_canary} of 300 on canary at 30%"
        );
        for step in [30u32, 60, 90] {
            let g = generation_of(&kube.apply_yaml(&sticky_argo_vs(step)));
            wait_served(&app, "rollouts-demo-vsvc", g).await;
            for (pair, was_canary) in &mut clients {
                let a = get(&client, &app.url("/"), &[host, ("cookie", pair.as_str())]).await;
                assert!(
                    a.headers.get("set-cookie").is_none(),
                    "a placed client is not placed again"
                );
                let now = a.body == "canary\n";
                assert!(
                    now || !*was_canary,
                    "a client went back from canary at {step}%"
                );
                *was_canary = now;
            }
        }
        let on_canary = clients.iter().filter(|c| c.1).count();
        assert!(on_canary >= 250, "{on_canary} of 300 on canary at 90%");
    })
    .await;
}
