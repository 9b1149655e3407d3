//! The JSON view behind `GET /v1/state`: what is live, and where each part came from.

use super::overlay::{self, Dropped, HeaderRoute, MirrorRoute};
use super::{Control, ControlState};
use crate::config::model::{RawMatchBlock, RawRule};
use crate::tls::server::ListenerTlsView;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

/// The whole state.
#[derive(Debug, Serialize)]
pub struct StateView {
    /// Generation now live.
    pub generation: u64,
    /// The config file, if the gateway was started from one.
    pub config_file: Option<String>,
    /// File reloads so far.
    pub reloads: ReloadCounts,
    /// The last file reload.
    pub last_reload: Option<LastReload>,
    /// Problem with the state file, if any.
    pub state_file_error: Option<String>,
    /// Routes by name.
    pub routes: BTreeMap<String, RouteView>,
    /// API overrides that the last reload (or restore) could not keep.
    pub dropped_overrides: Vec<Dropped>,
    /// TLS listeners: the certificate each pair serves, and the last rejected rotation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<ListenerTlsView>,
    /// Kubernetes mode: whether the objects were read in full, how long since the API server
    /// last said anything, and every watched Istio object with what became of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesView>,
}

/// `kubernetes` in `/v1/state`.
#[derive(Debug, Serialize)]
pub struct KubernetesView {
    /// Every watched kind has been listed once.
    pub synced: bool,
    /// Seconds since the last event or list; grows while the API server is unreachable.
    pub last_event_age_s: Option<f64>,
    /// Why the watch is not current, if it is not.
    pub error: Option<String>,
    /// The objects.
    pub objects: serde_json::Value,
}

/// Reload counters.
#[derive(Debug, Serialize)]
pub struct ReloadCounts {
    /// Accepted.
    pub ok: u64,
    /// Rejected.
    pub error: u64,
}

/// The last reload.
#[derive(Debug, Serialize)]
pub struct LastReload {
    /// `ok` or `error`.
    pub result: &'static str,
    /// Unix time in milliseconds.
    pub at_unix_ms: u128,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One route as served.
#[derive(Debug, Serialize)]
pub struct RouteView {
    /// The object it is served from, outside the file (`VirtualService shop/web`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Hosts.
    pub hosts: Vec<String>,
    /// Rules in match order, API rules first.
    pub rules: Vec<RuleView>,
    /// Header routes set through the API.
    pub header_routes: Vec<HeaderRoute>,
    /// Mirror routes set through the API.
    pub mirror_routes: Vec<MirrorRoute>,
}

/// One rule as served.
#[derive(Debug, Serialize)]
pub struct RuleView {
    /// Rule name.
    pub name: String,
    /// `weighted` (from the file), `header_route` or `mirror_route`.
    pub kind: &'static str,
    /// `file` or `api`: where the weights come from.
    pub source: &'static str,
    /// Match blocks.
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RawMatchBlock>,
    /// Effective weight by subset (`service/subset` when the rule spans services).
    pub weights: BTreeMap<String, u32>,
    /// The file's weights, when the API overrides them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_weights: Option<BTreeMap<String, u32>>,
    /// Mirror target and share.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorView>,
    /// The rule's `mirrors`, each with its share.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorView>,
}

/// A rule's mirror.
#[derive(Debug, Serialize)]
pub struct MirrorView {
    /// Service.
    pub service: String,
    /// Subset.
    pub subset: String,
    /// Share copied, 0–100.
    pub percentage: f64,
}

fn weights(rule: &RawRule) -> BTreeMap<String, u32> {
    let one_service = rule
        .route
        .windows(2)
        .all(|w| w[0].destination.service == w[1].destination.service);
    rule.route
        .iter()
        .map(|d| {
            let key = if one_service {
                d.destination.subset.clone()
            } else {
                format!("{}/{}", d.destination.service, d.destination.subset)
            };
            (key, d.weight.unwrap_or(100))
        })
        .collect()
}

pub(super) fn view(control: &Control, st: &ControlState) -> StateView {
    let (ok, error) = control.reload_counts();
    let routes = st
        .effective
        .raw
        .routes
        .iter()
        .map(|route| {
            let ro = st.overlay.routes.get(&route.name);
            let file_route = st.file.routes.iter().find(|r| r.name == route.name);
            let owner = st
                .external
                .as_ref()
                .and_then(|e| e.owners.get(&route.name))
                .cloned();
            let rules = route
                .http
                .iter()
                .enumerate()
                .map(|(i, rule)| {
                    let name = rule.name.clone().unwrap_or_else(|| format!("rule-{i}"));
                    let kind = if name.starts_with(overlay::HEADER_RULE_PREFIX) {
                        "header_route"
                    } else if name.starts_with(overlay::MIRROR_RULE_PREFIX) {
                        "mirror_route"
                    } else {
                        "weighted"
                    };
                    let overridden = ro.is_some_and(|ro| ro.weights.contains_key(&name));
                    let file_weights = overridden
                        .then(|| {
                            file_route.and_then(|fr| overlay::weighted_rule(fr, Some(&name)).ok())
                        })
                        .flatten()
                        .map(|(_, r)| weights(r));
                    RuleView {
                        source: if kind != "weighted" || overridden {
                            "api"
                        } else if owner.is_some() {
                            "kubernetes"
                        } else {
                            "file"
                        },
                        kind,
                        matches: rule.matches.clone(),
                        weights: weights(rule),
                        file_weights,
                        mirror: rule.mirror.as_ref().map(|m| MirrorView {
                            service: m.service.clone(),
                            subset: m.subset.clone(),
                            percentage: rule.mirror_percentage.unwrap_or(100.0),
                        }),
                        mirrors: rule
                            .mirrors
                            .iter()
                            .map(|m| MirrorView {
                                service: m.destination.service.clone(),
                                subset: m.destination.subset.clone(),
                                percentage: m.percentage.unwrap_or(100.0),
                            })
                            .collect(),
                        name,
                    }
                })
                .collect();
            let view = RouteView {
                owner,
                hosts: route.hosts.clone(),
                rules,
                header_routes: ro.map(|r| r.header_routes.clone()).unwrap_or_default(),
                mirror_routes: ro.map(|r| r.mirror_routes.clone()).unwrap_or_default(),
            };
            (route.name.clone(), view)
        })
        .collect();
    StateView {
        generation: control.generation(),
        config_file: control.config_path().map(|p| p.display().to_string()),
        reloads: ReloadCounts { ok, error },
        last_reload: st.last_reload.as_ref().map(|r| LastReload {
            result: if r.errors.is_empty() { "ok" } else { "error" },
            at_unix_ms: r
                .at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            errors: r.errors.clone(),
        }),
        state_file_error: st.state_file_error.clone(),
        routes,
        dropped_overrides: st.dropped.clone(),
        tls: control.cert_stores().iter().map(|s| s.view()).collect(),
        kubernetes: st.external.as_ref().map(|e| KubernetesView {
            synced: e.synced,
            last_event_age_s: e.last_event.map(|t| t.elapsed().as_secs_f64()),
            error: e.error.clone(),
            objects: e.objects.clone(),
        }),
    }
}
