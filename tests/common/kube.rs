//! Kubernetes mode in a test: a gateway config against the fake API server, objects for a
//! Service whose pods are loopback upstreams, and bounded waits on `/v1/state`.

use super::fake_kube::FakeKube;
use super::{get, http1_client, TestApp};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// How long a change may take to be served before a wait fails.
pub const CONVERGE: Duration = Duration::from_secs(20);

/// A gateway config in Kubernetes mode against `kube`, bound to `istio-system/splitgate`.
pub fn kube_config(kube: &FakeKube, dir: &std::path::Path) -> String {
    let kubeconfig = kube.write_kubeconfig(dir);
    format!(
        "listeners: [{{name: http, address: \"127.0.0.1:0\"}}]
kubernetes:
  gateway: istio-system/splitgate
  kubeconfig: {}
",
        kubeconfig.display()
    )
}

/// Service `name` in namespace `shop` (port 80) over one pod per `(version, addr)`, and a
/// DestinationRule for it with one subset per version, selecting that version's pod.
pub fn service_with_subsets(name: &str, pods: &[(&str, SocketAddr)]) -> String {
    let mut out = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  ports: [{{name: http, port: 80, protocol: TCP}}]
---
"
    );
    let mut subsets = String::new();
    for (version, addr) in pods {
        out.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-{version}
  namespace: shop
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
  - addresses: [\"{ip}\"]
    conditions: {{ready: true}}
    targetRef: {{kind: Pod, name: {name}-{version}, namespace: shop}}
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}-{version}
  namespace: shop
  labels: {{app: {name}, version: {version}}}
---
",
            ip = addr.ip(),
            port = addr.port()
        ));
        subsets.push_str(&format!(
            "    - {{name: {version}, labels: {{version: {version}}}}}\n"
        ));
    }
    out.push_str(&format!(
        "apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: {name}, namespace: shop}}
spec:
  host: {name}
  subsets:
{subsets}---
"
    ));
    out
}

/// `GET /v1/state` of `app`.
pub async fn state(app: &TestApp) -> Value {
    let a = get(&http1_client(), &app.admin_url("/v1/state"), &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    serde_json::from_str(&a.body).unwrap()
}

/// The `/v1/state` entry of one object.
pub fn object<'a>(state: &'a Value, kind: &str, ns: &str, name: &str) -> Option<&'a Value> {
    state["kubernetes"]["objects"]
        .as_array()?
        .iter()
        .find(|o| o["kind"] == kind && o["namespace"] == ns && o["name"] == name)
}

/// Waits until `check` holds of `/v1/state`; the last state otherwise, in the panic.
pub async fn wait_state(app: &TestApp, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let s = state(app).await;
        if check(&s) {
            return s;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{what}: not within {CONVERGE:?}; state: {:#}",
                s["kubernetes"]
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until generation `g` of VirtualService `shop/name` is served.
pub async fn wait_served(app: &TestApp, name: &str, g: i64) -> Value {
    wait_state(app, &format!("generation {g} of {name} served"), |s| {
        object(s, "VirtualService", "shop", name)
            .is_some_and(|o| o["served_generation"] == g && o["generation"] == g)
    })
    .await
}

/// The generation of the last object `FakeKube::apply_yaml` applied.
pub fn generation_of(applied: &[Value]) -> i64 {
    applied.last().unwrap()["metadata"]["generation"]
        .as_i64()
        .unwrap()
}

/// EndpointSlice `{service}-{k}` of Service `service` in `shop`: one endpoint at `addr` (its
/// port the slice's), with `conditions` (YAML flow, like `{ready: true}`).
pub fn endpoint_slice(service: &str, k: usize, addr: SocketAddr, conditions: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {service}-{k}
  namespace: shop
  labels: {{kubernetes.io/service-name: {service}}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
  - addresses: [\"{ip}\"]
    conditions: {conditions}
---
",
        ip = addr.ip(),
        port = addr.port(),
    )
}
