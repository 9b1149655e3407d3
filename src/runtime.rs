//! The one immutable snapshot a request is served from, and the single swap that replaces it.

use crate::metrics::analysis::Window;
use crate::metrics::hub::{MetricsHub, StateLabel, SubsetLabel};
use crate::metrics::istio::DestinationMetrics;
use crate::routing::Router;
use crate::split::Target;
use crate::upstream::{Balancer, Endpoint, UpstreamProtocol};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Everything needed to serve a request, built once per config change.
#[derive(Debug)]
pub struct Runtime {
    /// Grows by one with every applied change.
    pub generation: u64,
    /// Host → route → rule. Shared with the next snapshot when only endpoints change.
    pub router: Arc<Router>,
    /// Services in name order, indexed by `Target::service`. Each is shared with the next
    /// snapshot unless it changes.
    pub services: Vec<Arc<Service>>,
    /// Analysis windows per route (by `Route::index`), one per destination of the route.
    pub windows: Arc<Vec<RouteWindows>>,
    /// Metrics shared by every snapshot.
    pub hub: Arc<MetricsHub>,
    /// Whether requests are recorded in metrics (`metrics.enabled`).
    pub metrics_enabled: bool,
}

/// A route's analysis windows, one per destination.
pub type RouteWindows = Vec<(Target, Arc<Window>)>;

/// A service and its subsets.
#[derive(Debug)]
pub struct Service {
    /// Key in the config.
    pub name: Box<str>,
    /// The Kubernetes Service name (`destination_service_name`).
    pub service_name: Box<str>,
    /// Namespace.
    pub namespace: Box<str>,
    /// FQDN.
    pub host: Box<str>,
    /// Subsets in name order, indexed by `Target::subset`.
    pub subsets: Vec<Subset>,
}

/// A subset: identity and endpoints.
#[derive(Debug)]
pub struct Subset {
    /// Name.
    pub name: Box<str>,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Workload name.
    pub workload: Box<str>,
    /// Its endpoints and how one is picked.
    pub balancer: Balancer,
    /// Endpoints that get no request but keep their pooled connections for when they are
    /// picked again (not ready in Kubernetes, not terminating).
    pub standby: Box<[Arc<Endpoint>]>,
    /// What its endpoints are spoken to in (its service's `policy.protocol`).
    pub protocol: UpstreamProtocol,
    /// Its service's outlier detection, if any.
    pub outlier: Option<crate::upstream::outlier::OutlierPolicy>,
    /// Its bounds (`connection_pool`), retry budget and event counters.
    pub circuit: Arc<crate::upstream::circuit::Circuit>,
    /// Its Istio series.
    pub metrics: Arc<DestinationMetrics>,
}

impl Runtime {
    /// The metrics exposition, with the gauges that are read at scrape time brought up to date.
    pub fn exposition(&self) -> String {
        let (mut idle, mut active) = (0i64, 0i64);
        for ep in self
            .services
            .iter()
            .flat_map(|s| &s.subsets)
            .flat_map(|s| s.balancer.endpoints())
        {
            idle += i64::try_from(ep.idle_count()).unwrap_or(0);
            active += i64::try_from(ep.in_flight()).unwrap_or(0);
        }
        let own = &self.hub.own;
        for service in self.services.iter() {
            for subset in service.subsets.iter().filter(|s| s.outlier.is_some()) {
                let out = subset
                    .balancer
                    .endpoints()
                    .iter()
                    .filter(|e| e.outlier().is_ejected())
                    .count();
                let label = SubsetLabel {
                    service: service.name.to_string(),
                    subset: subset.name.to_string(),
                };
                own.ejected
                    .get_or_create(&label)
                    .set(i64::try_from(out).unwrap_or(0));
            }
        }
        own.upstream_connections
            .get_or_create(&StateLabel { state: "idle" })
            .set(idle);
        own.upstream_connections
            .get_or_create(&StateLabel { state: "active" })
            .set(active);
        self.hub.encode()
    }

    /// The subset a split target points at.
    pub fn subset(&self, t: Target) -> &Subset {
        &self.services[t.service].subsets[t.subset]
    }

    /// The analysis window of a destination within a route.
    pub fn window(&self, route_index: usize, t: Target) -> Option<&Arc<Window>> {
        self.windows
            .get(route_index)?
            .iter()
            .find(|(w, _)| *w == t)
            .map(|(_, w)| w)
    }
}

/// The live runtime: loaded once per request, replaced whole by `store`.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;
