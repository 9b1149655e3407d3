//! Turns a validated config into a runtime snapshot.

use super::Config;
use crate::routing::Router;
use crate::runtime::{Runtime, Service, Subset};
use crate::upstream::{Balancer, Endpoint, EndpointAddr, PoolSettings};
use std::collections::HashMap;
use std::sync::Arc;

/// Builds a runtime. Endpoints whose address and pool settings are unchanged from `previous`
/// are carried over with their pooled connections.
pub fn compile(config: &Config, previous: Option<&Runtime>, generation: u64) -> Runtime {
    let mut reusable: HashMap<(EndpointAddr, PoolSettings), Arc<Endpoint>> = HashMap::new();
    for ep in previous
        .into_iter()
        .flat_map(|rt| &rt.services)
        .flat_map(|s| &s.subsets)
        .flat_map(|s| s.balancer.endpoints())
    {
        reusable.insert((ep.addr().clone(), ep.settings()), ep.clone());
    }
    let services = config
        .services
        .iter()
        .map(|s| {
            let settings = PoolSettings {
                connect_timeout: s.connect_timeout,
                max_idle: s.max_idle,
            };
            let subsets = s
                .subsets
                .iter()
                .map(|sub| {
                    let endpoints = sub
                        .endpoints
                        .iter()
                        .map(|a| {
                            let key = (a.clone(), settings);
                            reusable
                                .get(&key)
                                .cloned()
                                .unwrap_or_else(|| Endpoint::new(a.clone(), settings))
                        })
                        .collect();
                    Subset {
                        name: sub.name.as_str().into(),
                        labels: sub.labels.clone(),
                        workload: sub.workload.as_str().into(),
                        balancer: Balancer::new(endpoints, s.load_balancer),
                    }
                })
                .collect();
            Service {
                name: s.name.as_str().into(),
                namespace: s.namespace.as_str().into(),
                host: s.host.as_str().into(),
                subsets,
            }
        })
        .collect();
    let router = Router::new(
        config
            .routes
            .iter()
            .map(|r| (r.route.clone(), r.hosts.clone()))
            .collect(),
    );
    Runtime {
        generation,
        router,
        services,
    }
}
