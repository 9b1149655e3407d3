//! `splitgate verify`: has every ready gateway pod applied a VirtualService's current
//! generation? Argo Rollouts' Istio `VerifyWeight` answers nothing, so this is what an Argo
//! Rollouts `job` metric or a Flagger pre-rollout webhook can run: exit 0 when every pod serves
//! it, 1 when one lags or rejected it, 2 when the answer cannot be known.

use super::watch::ISTIO_VERSION;
use crate::admin::client::AdminClient;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client};
use serde_json::Value;

/// What to verify, and where the gateway pods are.
#[derive(Debug, Clone)]
pub struct Verify {
    /// The VirtualService's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Label selector of the gateway pods (`app=splitgate`).
    pub gateway_selector: String,
    /// Their namespace.
    pub gateway_namespace: String,
    /// Their admin API port.
    pub admin_port: u16,
    /// The admin API token, if the gateways require one.
    pub token: Option<String>,
}

/// The verdict: one line per pod, and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `pod address: what it serves`.
    pub lines: Vec<String>,
    /// 0: all applied; 1: one lags or rejected it; 2: cannot tell.
    pub code: u8,
}

/// Asks the API server for the VirtualService's generation and every ready gateway pod for
/// what it serves.
pub async fn verify(client: Client, v: &Verify) -> Verdict {
    let cannot = |line: String| Verdict {
        lines: vec![line],
        code: 2,
    };
    let gvk = GroupVersionKind::gvk("networking.istio.io", ISTIO_VERSION, "VirtualService");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "virtualservices");
    let vss: Api<DynamicObject> = Api::namespaced_with(client.clone(), &v.namespace, &ar);
    let generation = match vss.get_opt(&v.name).await {
        Ok(Some(vs)) => vs.metadata.generation.unwrap_or(0),
        Ok(None) => {
            return cannot(format!(
                "VirtualService {}/{} does not exist",
                v.namespace, v.name
            ))
        }
        Err(e) => {
            return cannot(format!(
                "cannot read VirtualService {}/{}: {e}",
                v.namespace, v.name
            ))
        }
    };
    let pods: Api<Pod> = Api::namespaced(client, &v.gateway_namespace);
    let listed = pods
        .list(&ListParams::default().labels(&v.gateway_selector))
        .await;
    let pods = match listed {
        Ok(l) => l.items,
        Err(e) => return cannot(format!("cannot list the gateway pods: {e}")),
    };
    let ready: Vec<(String, String)> = pods
        .iter()
        .filter(|p| is_ready(p))
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            Some((p.metadata.name.clone().unwrap_or_default(), ip))
        })
        .collect();
    if ready.is_empty() {
        return cannot(format!(
            "no ready gateway pod matches {:?} in namespace {}",
            v.gateway_selector, v.gateway_namespace
        ));
    }
    let mut lines = Vec::new();
    let (mut behind, mut unknown) = (false, false);
    for (pod, ip) in ready {
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip
        };
        let admin = AdminClient::new(&format!("http://{host}:{}", v.admin_port), v.token.clone());
        let outcome = match admin.state().await {
            Ok(state) => judge(&state, &v.namespace, &v.name, generation),
            Err(e) => Err((2, format!("cannot ask: {e}"))),
        };
        let text = match outcome {
            Ok(t) => t,
            Err((1, t)) => {
                behind = true;
                t
            }
            Err((_, t)) => {
                unknown = true;
                t
            }
        };
        lines.push(format!("{pod} {host}: {text}"));
    }
    let code = if behind {
        1
    } else if unknown {
        2
    } else {
        0
    };
    Verdict { lines, code }
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What one gateway's `/v1/state` says of the VirtualService: `Ok` when it serves
/// `generation`, else the exit code and why.
pub fn judge(state: &Value, ns: &str, name: &str, generation: i64) -> Result<String, (u8, String)> {
    let Some(objects) = state["kubernetes"]["objects"].as_array() else {
        return Err((2, "not in Kubernetes mode".into()));
    };
    let Some(o) = objects
        .iter()
        .find(|o| o["kind"] == "VirtualService" && o["namespace"] == ns && o["name"] == name)
    else {
        return Err((1, format!("has not seen generation {generation} yet")));
    };
    let seen = o["generation"].as_i64().unwrap_or(0);
    let served = o["served_generation"].as_i64();
    match o["status"].as_str().unwrap_or("") {
        "applied" if served == Some(generation) => Ok(format!("applied generation {generation}")),
        "rejected" if seen == generation => Err((
            1,
            format!(
                "rejected generation {generation}: {}",
                o["message"].as_str().unwrap_or("")
            ),
        )),
        "ignored" if seen == generation => Err((
            1,
            format!(
                "ignores generation {generation}: {}",
                o["message"].as_str().unwrap_or("")
            ),
        )),
        _ => Err((
            1,
            match served {
                Some(s) => format!("serves generation {s}, not {generation}"),
                None => format!("has not seen generation {generation} yet"),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(o: Value) -> Value {
        json!({"kubernetes": {"objects": [o]}})
    }

    #[test]
    fn a_pod_serves_lags_or_rejected_the_generation() {
        let vs = |status: &str, generation: i64, served: Option<i64>| {
            state(
                json!({"kind": "VirtualService", "namespace": "shop", "name": "web",
                         "status": status, "generation": generation, "served_generation": served,
                         "message": "spec.http[0].route: the weights sum to 0"}),
            )
        };
        assert_eq!(
            judge(&vs("applied", 5, Some(5)), "shop", "web", 5),
            Ok("applied generation 5".into())
        );
        assert_eq!(
            judge(&vs("applied", 4, Some(4)), "shop", "web", 5),
            Err((1, "serves generation 4, not 5".into()))
        );
        assert_eq!(
            judge(&vs("rejected", 5, Some(4)), "shop", "web", 5),
            Err((
                1,
                "rejected generation 5: spec.http[0].route: the weights sum to 0".into()
            ))
        );
        assert_eq!(
            judge(&json!({}), "shop", "web", 5),
            Err((2, "not in Kubernetes mode".into()))
        );
        assert_eq!(
            judge(&state(json!({})), "shop", "web", 5),
            Err((1, "has not seen generation 5 yet".into()))
        );
    }
}
