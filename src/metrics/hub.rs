//! The metrics registry and everything that outlives one runtime snapshot: per-destination
//! handles and analysis windows (kept across reloads, retired with their subset), and
//! splitgate's own metrics. Metric names live here and in `istio.rs`, nowhere else.

use super::analysis::Window;
use super::istio::{DestinationMetrics, IstioFamilies, IstioLabels, Sample};
use crate::config::model::RawMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Distinct hosts of unrouted requests that get their own series; the rest share `unknown`.
const MAX_NO_ROUTE_HOSTS: usize = 64;

/// `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok`, `error`, `sent`, `failed`, …
    pub result: &'static str,
}

/// `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

/// Labels of `splitgate_kubernetes_object_generation`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabel {
    /// `VirtualService` or `DestinationRule`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Labels of `splitgate_route_weight`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WeightLabel {
    /// Route.
    pub route: String,
    /// Rule.
    pub rule: String,
    /// Service key.
    pub service: String,
    /// Subset.
    pub subset: String,
}

/// Labels of a subset's own series (`splitgate_upstream_retries_total` and the like).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubsetLabel {
    /// Service key.
    pub service: String,
    /// Subset.
    pub subset: String,
}

/// `state` label of upstream connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `idle` or `active`.
    pub state: &'static str,
}

/// splitgate's own metrics.
#[derive(Debug, Clone)]
pub struct SelfMetrics {
    /// `splitgate_config_generation`.
    pub generation: Gauge,
    /// `splitgate_config_reloads_total{result}`.
    pub reloads: Family<ResultLabel, Counter>,
    /// `splitgate_downstream_connections_active`.
    pub active_connections: Gauge,
    /// `splitgate_upstream_connections{state}` (set at scrape time).
    pub upstream_connections: Family<StateLabel, Gauge>,
    /// `splitgate_mirror_requests_total{result}`.
    pub mirror_requests: Family<ResultLabel, Counter>,
    /// `splitgate_tls_certificate_reloads_total{result}`.
    pub cert_reloads: Family<ResultLabel, Counter>,
    /// `splitgate_tls_handshake_errors_total`.
    pub tls_handshake_errors: Counter,
    /// `splitgate_downstream_connections_closed_total{reason}`: closed by the gateway at a
    /// listener limit.
    pub downstream_closed: Family<ReasonLabel, Counter>,
    /// `splitgate_kubernetes_object_generation{kind,namespace,name}`: the generation served.
    pub object_generation: Family<ObjectLabel, Gauge>,
    /// `splitgate_kubernetes_last_event_timestamp_seconds`: Unix time of the last word from
    /// the API server.
    pub kubernetes_last_event: Gauge,
    /// `splitgate_route_weight{route,rule,service,subset}`: the weight served now, in percent
    /// of its rule.
    pub route_weight: Family<WeightLabel, Gauge>,
    /// `splitgate_downstream_connections_tarpitted_total`: connections read only after a
    /// wait, because their address broke a limit shortly before.
    pub tarpitted: Counter,
    /// `splitgate_upstream_retries_total{service,subset}`.
    pub retries: Family<SubsetLabel, Counter>,
    /// `splitgate_upstream_retry_overflow_total{service,subset}`: retries the budget refused.
    pub retry_overflow: Family<SubsetLabel, Counter>,
    /// `splitgate_upstream_overflow_total{service,subset}`: requests answered `UO`.
    pub overflow: Family<SubsetLabel, Counter>,
    /// `splitgate_outlier_ejections_total{service,subset}`.
    pub ejections: Family<SubsetLabel, Counter>,
    /// `splitgate_outlier_ejected_endpoints{service,subset}` (set at scrape time).
    pub ejected: Family<SubsetLabel, Gauge>,
    /// `splitgate_config_compile_seconds`: validating and compiling a new snapshot.
    pub compile_seconds: Histogram,
}

impl Default for SelfMetrics {
    fn default() -> Self {
        SelfMetrics {
            generation: Gauge::default(),
            reloads: Family::default(),
            active_connections: Gauge::default(),
            upstream_connections: Family::default(),
            mirror_requests: Family::default(),
            cert_reloads: Family::default(),
            tls_handshake_errors: Counter::default(),
            downstream_closed: Family::default(),
            object_generation: Family::default(),
            kubernetes_last_event: Gauge::default(),
            route_weight: Family::default(),
            tarpitted: Counter::default(),
            retries: Family::default(),
            retry_overflow: Family::default(),
            overflow: Family::default(),
            ejections: Family::default(),
            ejected: Family::default(),
            // 100 µs to 3.3 s.
            compile_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
        }
    }
}

impl SelfMetrics {
    /// The counter of client connections closed at a limit, for `reason`.
    pub fn closed_connections(&self, reason: &'static str) -> Counter {
        self.downstream_closed
            .get_or_create_owned(&ReasonLabel { reason })
    }
}

/// Label values that come from the `metrics` config section.
#[derive(Debug, Clone, PartialEq)]
struct Identity {
    reporters: Vec<&'static str>,
    cluster: Arc<str>,
    workload: Arc<str>,
    namespace: Arc<str>,
    app: Arc<str>,
    version: Arc<str>,
}

impl Identity {
    fn from_config(m: &RawMetrics) -> Self {
        let reporters = match m.reporter.as_str() {
            "destination" => vec!["destination"],
            "both" => vec!["source", "destination"],
            _ => vec!["source"],
        };
        Identity {
            reporters,
            cluster: m.cluster.as_str().into(),
            workload: m.workload.name.as_str().into(),
            namespace: m.workload.namespace.as_str().into(),
            app: m.workload.app.as_str().into(),
            version: m.workload.version.as_str().into(),
        }
    }
}

/// What the labels of one destination are made of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DestinationInfo {
    /// Service key.
    pub service: String,
    /// Service namespace.
    pub namespace: String,
    /// Service FQDN.
    pub host: String,
    /// Subset name.
    pub subset: String,
    /// Subset workload.
    pub workload: String,
    /// Subset labels.
    pub labels: BTreeMap<String, String>,
}

/// Metrics shared by every runtime snapshot.
#[derive(Debug)]
pub struct MetricsHub {
    registry: Registry,
    families: IstioFamilies,
    /// splitgate's own metrics.
    pub own: SelfMetrics,
    identity: Mutex<Identity>,
    destinations: Mutex<HashMap<DestinationInfo, Arc<DestinationMetrics>>>,
    windows: Mutex<HashMap<(String, String, String), Arc<Window>>>,
    no_route: Mutex<HashMap<String, Arc<DestinationMetrics>>>,
    /// The subsets with series of their own, so that those of subsets gone can be removed.
    subsets: Mutex<HashSet<SubsetLabel>>,
    /// Mirror copies started but not finished (for tests and shutdown).
    pub mirrors_in_flight: AtomicU64,
}

impl MetricsHub {
    /// A hub with the families registered and label values from `metrics`.
    pub fn new(metrics: &RawMetrics) -> Arc<Self> {
        let mut registry = Registry::default();
        let families = IstioFamilies::register(&mut registry);
        let own = SelfMetrics::default();
        registry.register(
            "splitgate_config_generation",
            "Generation of the config now live",
            own.generation.clone(),
        );
        registry.register(
            "splitgate_config_reloads",
            "Config file reloads, by result",
            own.reloads.clone(),
        );
        registry.register(
            "splitgate_downstream_connections_active",
            "Client connections open now",
            own.active_connections.clone(),
        );
        registry.register(
            "splitgate_upstream_connections",
            "Upstream connections, idle in the pools or carrying a request",
            own.upstream_connections.clone(),
        );
        registry.register(
            "splitgate_mirror_requests",
            "Mirrored request copies, by result",
            own.mirror_requests.clone(),
        );
        registry.register(
            "splitgate_tls_certificate_reloads",
            "Listener certificate files re-read after a change, by result",
            own.cert_reloads.clone(),
        );
        registry.register(
            "splitgate_tls_handshake_errors",
            "Client connections to a TLS listener whose handshake failed or timed out",
            own.tls_handshake_errors.clone(),
        );
        registry.register(
            "splitgate_kubernetes_object_generation",
            "The metadata.generation served of each watched Istio object (absent: none served)",
            own.object_generation.clone(),
        );
        registry.register(
            "splitgate_kubernetes_last_event_timestamp_seconds",
            "Unix time of the last event or list from the Kubernetes API server",
            own.kubernetes_last_event.clone(),
        );
        registry.register(
            "splitgate_route_weight",
            "The weight served now for each destination of each rule, in percent of the rule",
            own.route_weight.clone(),
        );
        registry.register(
            "splitgate_downstream_connections_tarpitted",
            "Client connections read only after a wait, their address having broken a limit shortly before",
            own.tarpitted.clone(),
        );
        registry.register(
            "splitgate_config_compile_seconds",
            "Time to validate and compile a new snapshot (API change, file reload, Kubernetes set), off the serving threads",
            own.compile_seconds.clone(),
        );
        registry.register(
            "splitgate_upstream_retries",
            "Retries sent to each subset",
            own.retries.clone(),
        );
        registry.register(
            "splitgate_upstream_retry_overflow",
            "Retries not sent because the subset's retry budget or max_retries was spent",
            own.retry_overflow.clone(),
        );
        registry.register(
            "splitgate_upstream_overflow",
            "Requests answered 503 UO at a bound of the subset's connection_pool",
            own.overflow.clone(),
        );
        registry.register(
            "splitgate_outlier_ejections",
            "Endpoints ejected by outlier detection",
            own.ejections.clone(),
        );
        registry.register(
            "splitgate_outlier_ejected_endpoints",
            "Endpoints out of their subset by outlier detection now",
            own.ejected.clone(),
        );
        registry.register(
            "splitgate_downstream_connections_closed",
            "Client connections the gateway closed at a listener limit, by reason",
            own.downstream_closed.clone(),
        );
        for reason in [
            "first_byte_timeout",
            "request_headers_timeout",
            "idle_timeout",
            "http2_reset_flood",
            "http2_flood",
        ] {
            own.downstream_closed
                .get_or_create_owned(&ReasonLabel { reason });
        }
        // Every result is exposed from the start, so `increase()` sees the first one.
        for result in ["ok", "error"] {
            own.reloads.get_or_create_owned(&ResultLabel { result });
            own.cert_reloads
                .get_or_create_owned(&ResultLabel { result });
        }
        for result in ["ok", "failed", "timeout"] {
            own.mirror_requests
                .get_or_create_owned(&ResultLabel { result });
        }
        Arc::new(MetricsHub {
            registry,
            families,
            own,
            identity: Mutex::new(Identity::from_config(metrics)),
            destinations: Mutex::new(HashMap::new()),
            windows: Mutex::new(HashMap::new()),
            no_route: Mutex::new(HashMap::new()),
            subsets: Mutex::new(HashSet::new()),
            mirrors_in_flight: AtomicU64::new(0),
        })
    }

    /// Takes the label values of a new config's `metrics` section. Destinations built from
    /// then on use them; existing series are rebuilt at the next `destination` call.
    pub fn set_identity(&self, metrics: &RawMetrics) {
        let next = Identity::from_config(metrics);
        if let Ok(mut id) = self.identity.lock() {
            if *id != next {
                *id = next;
                // Label values changed: old series are stale.
                if let Ok(mut d) = self.destinations.lock() {
                    d.drain().for_each(|(_, m)| m.remove_series());
                }
                if let Ok(mut n) = self.no_route.lock() {
                    n.drain().for_each(|(_, m)| m.remove_series());
                }
            }
        }
    }

    fn labels(&self, d: &DestinationInfo) -> Vec<IstioLabels> {
        let id = self
            .identity
            .lock()
            .map(|i| i.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let app: Arc<str> = d
            .labels
            .get("app")
            .map_or(d.service.as_str(), String::as_str)
            .into();
        let version: Arc<str> = d
            .labels
            .get("version")
            .map_or(d.subset.as_str(), String::as_str)
            .into();
        let canonical_service = d
            .labels
            .get("service.istio.io/canonical-name")
            .map_or(app.clone(), |s| s.as_str().into());
        let canonical_revision = d
            .labels
            .get("service.istio.io/canonical-revision")
            .map_or(version.clone(), |s| s.as_str().into());
        let namespace: Arc<str> = d.namespace.as_str().into();
        id.reporters
            .iter()
            .map(|&reporter| IstioLabels {
                reporter,
                source_workload: id.workload.clone(),
                source_canonical_service: id.app.clone(),
                source_canonical_revision: id.version.clone(),
                source_workload_namespace: id.namespace.clone(),
                source_principal: "unknown",
                source_app: id.app.clone(),
                source_version: id.version.clone(),
                source_cluster: id.cluster.clone(),
                destination_workload: d.workload.as_str().into(),
                destination_workload_namespace: namespace.clone(),
                destination_principal: "unknown",
                destination_app: app.clone(),
                destination_version: version.clone(),
                destination_service: d.host.as_str().into(),
                destination_canonical_service: canonical_service.clone(),
                destination_canonical_revision: canonical_revision.clone(),
                destination_service_name: d.service.as_str().into(),
                destination_service_namespace: namespace.clone(),
                destination_cluster: id.cluster.clone(),
                request_protocol: "http",
                response_code: 0,
                grpc_response_status: "",
                response_flags: "-",
                connection_security_policy: if reporter == "source" {
                    "unknown"
                } else {
                    "none"
                },
            })
            .collect()
    }

    /// The metrics of a destination, reused across reloads while its labels stay the same.
    pub fn destination(&self, d: &DestinationInfo) -> Arc<DestinationMetrics> {
        let mut map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.get(d) {
            return m.clone();
        }
        let m = Arc::new(DestinationMetrics::new(
            self.families.clone(),
            self.labels(d),
        ));
        map.insert(d.clone(), m.clone());
        m
    }

    /// The analysis window of a subset within a route, reused across reloads.
    pub fn window(&self, route: &str, service: &str, subset: &str) -> Arc<Window> {
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((route.to_string(), service.to_string(), subset.to_string()))
            .or_default()
            .clone()
    }

    /// The label of a subset's own series, noted so that they are removed with it (see
    /// [`Self::retain_subsets`]); the caller creates the counters it keeps.
    pub fn subset_series(&self, service: &str, subset: &str) -> SubsetLabel {
        let label = SubsetLabel {
            service: service.to_string(),
            subset: subset.to_string(),
        };
        self.own.ejected.get_or_create(&label).set(0);
        let mut subsets = self.subsets.lock().unwrap_or_else(|p| p.into_inner());
        subsets.insert(label.clone());
        label
    }

    /// Removes the series of subsets not in `keep`.
    pub fn retain_subsets(&self, keep: &HashSet<SubsetLabel>) {
        let mut subsets = self.subsets.lock().unwrap_or_else(|p| p.into_inner());
        let own = &self.own;
        subsets.retain(|l| {
            let kept = keep.contains(l);
            if !kept {
                own.retries.remove(l);
                own.retry_overflow.remove(l);
                own.overflow.remove(l);
                own.ejections.remove(l);
                own.ejected.remove(l);
            }
            kept
        });
    }

    /// Drops the destinations and windows a new runtime no longer uses; their series disappear.
    pub fn retain(
        &self,
        destinations: &HashSet<DestinationInfo>,
        windows: &HashSet<(String, String, String)>,
    ) {
        if let Ok(mut map) = self.destinations.lock() {
            map.retain(|k, m| {
                let keep = destinations.contains(k);
                if !keep {
                    m.remove_series();
                }
                keep
            });
        }
        if let Ok(mut map) = self.windows.lock() {
            map.retain(|k, _| windows.contains(k));
        }
    }

    /// Drops the analysis windows of `route` whose keys are not in `keep`.
    pub fn retain_route_windows(&self, route: &str, keep: &HashSet<(String, String, String)>) {
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, _| k.0 != route || keep.contains(k));
    }

    /// Drops the series of `gone` destinations (a subset whose pod labels or workload changed).
    pub fn forget<'a>(&self, gone: impl Iterator<Item = &'a DestinationInfo>) {
        let mut map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        for d in gone {
            if let Some(m) = map.remove(d) {
                m.remove_series();
            }
        }
    }

    /// Records a request that matched no route, under `destination_service` = its host.
    pub fn record_no_route(&self, host: Option<&str>, sample: &Sample) {
        let host = host.unwrap_or("unknown");
        let metrics = {
            let mut map = self.no_route.lock().unwrap_or_else(|p| p.into_inner());
            let key = if map.len() < MAX_NO_ROUTE_HOSTS || map.contains_key(host) {
                host
            } else {
                "unknown"
            };
            match map.get(key) {
                Some(m) => m.clone(),
                None => {
                    let mut labels = self.labels(&DestinationInfo {
                        service: "unknown".into(),
                        namespace: "unknown".into(),
                        host: key.into(),
                        subset: "unknown".into(),
                        workload: "unknown".into(),
                        labels: BTreeMap::new(),
                    });
                    for l in &mut labels {
                        l.destination_app = "unknown".into();
                        l.destination_version = "unknown".into();
                        l.destination_canonical_service = "unknown".into();
                        l.destination_canonical_revision = "unknown".into();
                        l.destination_cluster = "unknown".into();
                    }
                    let m = Arc::new(DestinationMetrics::new(self.families.clone(), labels));
                    map.insert(key.to_string(), m.clone());
                    m
                }
            }
        };
        metrics.record(sample);
    }

    /// The exposition, in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
