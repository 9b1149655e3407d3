//! Istio's standard request metrics (SPEC §5): four families with the same 25 labels.
//!
//! Label values are built when a config is compiled, once per destination (service subset) and
//! reporter. Metric handles for the common response codes are resolved on first use into a fixed
//! slot array, so recording a request takes no lock on a map and allocates nothing. Rare
//! combinations (error flags, unusual codes) go through the family's map.

use super::buckets::EnvoyHistogram;
pub use super::buckets::ENVOY_BUCKETS;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The 25 labels of every `istio_*` series, in Istio's order.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(missing_docs)]
pub struct IstioLabels {
    pub reporter: &'static str,
    pub source_workload: Arc<str>,
    pub source_canonical_service: Arc<str>,
    pub source_canonical_revision: Arc<str>,
    pub source_workload_namespace: Arc<str>,
    pub source_principal: &'static str,
    pub source_app: Arc<str>,
    pub source_version: Arc<str>,
    pub source_cluster: Arc<str>,
    pub destination_workload: Arc<str>,
    pub destination_workload_namespace: Arc<str>,
    pub destination_principal: &'static str,
    pub destination_app: Arc<str>,
    pub destination_version: Arc<str>,
    pub destination_service: Arc<str>,
    pub destination_canonical_service: Arc<str>,
    pub destination_canonical_revision: Arc<str>,
    pub destination_service_name: Arc<str>,
    pub destination_service_namespace: Arc<str>,
    pub destination_cluster: Arc<str>,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// The four `istio_*` families.
#[derive(Debug, Clone)]
pub struct IstioFamilies {
    requests: Family<IstioLabels, Counter>,
    duration: Family<IstioLabels, EnvoyHistogram>,
    request_bytes: Family<IstioLabels, EnvoyHistogram>,
    response_bytes: Family<IstioLabels, EnvoyHistogram>,
}

impl IstioFamilies {
    /// Creates the families and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let hist = Family::default;
        let f = IstioFamilies {
            requests: Family::default(),
            duration: hist(),
            request_bytes: hist(),
            response_bytes: hist(),
        };
        registry.register(
            "istio_requests",
            "Requests, by source, destination and outcome",
            f.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Time from the request's arrival to its response's last byte, in milliseconds",
            f.duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request size: headers and body, in bytes",
            f.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response size: headers and body, in bytes",
            f.response_bytes.clone(),
        );
        f
    }

    fn handles(&self, labels: &IstioLabels) -> Handles {
        Handles {
            requests: self.requests.get_or_create_owned(labels),
            duration: self.duration.get_or_create_owned(labels),
            request_bytes: self.request_bytes.get_or_create_owned(labels),
            response_bytes: self.response_bytes.get_or_create_owned(labels),
        }
    }

    fn remove(&self, labels: &IstioLabels) {
        self.requests.remove(labels);
        self.duration.remove(labels);
        self.request_bytes.remove(labels);
        self.response_bytes.remove(labels);
    }
}

/// Handles of the four series of one label set.
#[derive(Debug, Clone)]
struct Handles {
    requests: Counter,
    duration: EnvoyHistogram,
    request_bytes: EnvoyHistogram,
    response_bytes: EnvoyHistogram,
}

impl Handles {
    fn record(&self, s: &Sample) {
        self.requests.inc();
        self.duration.observe(s.duration_ms);
        self.request_bytes.observe(s.request_bytes as f64);
        self.response_bytes.observe(s.response_bytes as f64);
    }
}

/// One finished request, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Status sent to the client (0 when none was sent).
    pub code: u16,
    /// `-` or Envoy response flags.
    pub flags: &'static str,
    /// `http` or `grpc`.
    pub protocol: &'static str,
    /// gRPC status code from the response's trailers (or headers); empty if none.
    pub grpc_status: &'static str,
    /// Arrival to last response byte.
    pub duration_ms: f64,
    /// Request headers and body.
    pub request_bytes: u64,
    /// Response headers and body.
    pub response_bytes: u64,
}

/// The gRPC status codes (0–16) as label values; anything else is left empty.
pub fn grpc_status_label(value: &[u8]) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    CODES
        .iter()
        .find(|c| c.as_bytes() == value)
        .copied()
        .unwrap_or("")
}

/// Response codes whose handles are cached in a slot (with flags `-` and protocol `http`).
const CACHED_CODES: [u16; 16] = [
    200, 201, 202, 204, 206, 301, 302, 304, 400, 401, 403, 404, 409, 429, 500, 503,
];

fn slot(code: u16) -> Option<usize> {
    CACHED_CODES.iter().position(|c| *c == code)
}

/// The metrics of one destination: its label values per reporter, and cached handles.
#[derive(Debug)]
pub struct DestinationMetrics {
    families: IstioFamilies,
    /// One base label set per reporter (code, flags and protocol are filled in per sample).
    bases: Vec<IstioLabels>,
    slots: [OnceLock<Vec<Handles>>; CACHED_CODES.len()],
    /// Every label set created, so the series can be removed with the destination.
    created: Mutex<Vec<IstioLabels>>,
    /// Set once the destination is gone: late samples must not bring its series back.
    retired: AtomicBool,
}

impl DestinationMetrics {
    /// Metrics for a destination whose label values (per reporter) are `bases`.
    pub fn new(families: IstioFamilies, bases: Vec<IstioLabels>) -> Self {
        DestinationMetrics {
            families,
            bases,
            slots: Default::default(),
            created: Mutex::new(Vec::new()),
            retired: AtomicBool::new(false),
        }
    }

    fn labels_for(&self, s: &Sample) -> Vec<IstioLabels> {
        self.bases
            .iter()
            .map(|b| IstioLabels {
                response_code: s.code,
                response_flags: s.flags,
                request_protocol: s.protocol,
                grpc_response_status: s.grpc_status,
                ..b.clone()
            })
            .collect()
    }

    fn create(&self, labels: &[IstioLabels]) -> Vec<Handles> {
        if let Ok(mut created) = self.created.lock() {
            for l in labels {
                if !created.contains(l) {
                    created.push(l.clone());
                }
            }
        }
        labels.iter().map(|l| self.families.handles(l)).collect()
    }

    /// Records one request under every reporter.
    pub fn record(&self, s: &Sample) {
        if self.retired.load(Ordering::Relaxed) {
            return;
        }
        let cached = (s.flags == "-" && s.protocol == "http")
            .then(|| slot(s.code))
            .flatten();
        match cached {
            Some(i) => {
                let handles = self.slots[i].get_or_init(|| self.create(&self.labels_for(s)));
                handles.iter().for_each(|h| h.record(s));
            }
            None => self
                .create(&self.labels_for(s))
                .iter()
                .for_each(|h| h.record(s)),
        }
    }

    /// Removes every series this destination created (its subset is gone).
    pub fn remove_series(&self) {
        self.retired.store(true, Ordering::Relaxed);
        if let Ok(created) = self.created.lock() {
            created.iter().for_each(|l| self.families.remove(l));
        }
    }
}
