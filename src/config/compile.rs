//! Turns a validated config into a runtime snapshot.

use super::model::{RawRoute, RawRule};
use super::validate::{RouteSpec, ServiceSpec};
use super::Config;
use crate::metrics::analysis::Window;
use crate::metrics::hub::{DestinationInfo, MetricsHub, SubsetLabel, WeightLabel};
use crate::routing::Router;
use crate::runtime::{RouteWindows, Runtime, Service, Subset};
use crate::split::Target;
use crate::upstream::circuit::{Circuit, Events, Limits};
use crate::upstream::hash::{Algorithm, HashTable};
use crate::upstream::{Balancer, Endpoint, EndpointAddr, Hashing, PoolSettings};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What a runtime carries over into the next: live endpoints by address and pool settings
/// (with their pooled connections), subsets' circuits by service, subset and bounds (with
/// their counts of open connections), and consistent-hash tables by kind and endpoint list
/// (a Maglev table takes about a millisecond to fill).
#[derive(Default)]
struct Reusable {
    // `PoolSettings` holds a rustls config, which has interior mutability (its session
    // cache), but its `Hash` and `Eq` look only at what the settings were built from.
    #[allow(clippy::mutable_key_type)]
    endpoints: HashMap<(EndpointAddr, PoolSettings), Arc<Endpoint>>,
    circuits: HashMap<(Box<str>, Box<str>, Limits), Arc<Circuit>>,
    tables: HashMap<(Algorithm, Vec<EndpointAddr>), Arc<HashTable>>,
}

fn reusable<'a>(services: impl Iterator<Item = &'a Service>) -> Reusable {
    let mut out = Reusable::default();
    for s in services {
        for sub in &s.subsets {
            if let Some(h) = sub.balancer.hashing() {
                let addrs = sub.balancer.endpoints().iter().map(|e| e.addr().clone());
                out.tables
                    .insert((h.algorithm, addrs.collect()), h.table.clone());
            }
            let endpoints = sub.balancer.endpoints().iter().chain(sub.standby.iter());
            out.endpoints.extend(
                endpoints.map(|ep| ((ep.addr().clone(), ep.settings().clone()), ep.clone())),
            );
            let key = (s.name.clone(), sub.name.clone(), sub.circuit.limits);
            out.circuits.insert(key, sub.circuit.clone());
        }
    }
    out
}

/// Builds a runtime. From `previous` it carries over the endpoints whose address and pool
/// settings are unchanged (with their pooled connections) and the metrics hub, whose series and
/// analysis windows continue; those of subsets that are gone are removed.
pub fn compile(config: &Config, previous: Option<&Runtime>, generation: u64) -> Runtime {
    let reusable = reusable(
        previous
            .into_iter()
            .flat_map(|rt| rt.services.iter().map(|s| &**s)),
    );
    let hub = previous.map_or_else(|| MetricsHub::new(&config.raw.metrics), |p| p.hub.clone());
    hub.set_identity(&config.raw.metrics);
    hub.own
        .generation
        .set(i64::try_from(generation).unwrap_or(i64::MAX));

    let mut destinations = HashSet::new();
    let services = config
        .services
        .iter()
        .map(|s| Arc::new(service(s, &reusable, &hub, &mut destinations)))
        .collect::<Vec<_>>();

    let mut window_keys = HashSet::new();
    let windows = config
        .routes
        .iter()
        .map(|r| route_windows(config, r, &hub, &mut window_keys))
        .collect();
    hub.retain(&destinations, &window_keys);
    hub.retain_subsets(
        &config
            .services
            .iter()
            .flat_map(|s| {
                s.subsets.iter().map(|sub| SubsetLabel {
                    service: s.name.clone(),
                    subset: sub.name.clone(),
                })
            })
            .collect(),
    );
    route_weights(config, &hub);

    let router = Router::new(
        config
            .routes
            .iter()
            .map(|r| (r.route.clone(), r.hosts.clone()))
            .collect(),
    );
    Runtime {
        generation,
        router: Arc::new(router),
        services,
        windows: Arc::new(windows),
        hub,
        metrics_enabled: config.raw.metrics.enabled,
    }
}

/// A runtime like `previous`, with only the services at the indexes `changed` rebuilt from
/// `config`: the fast path for endpoint churn. Routes, windows and every other service are
/// shared with `previous`.
///
/// `config` must differ from the one `previous` was compiled from only in the endpoints,
/// labels and workloads of those services' subsets: the same services and subsets, in the same
/// order, so that every `Target` still points where it did.
pub fn recompile_services(
    config: &Config,
    previous: &Runtime,
    changed: &[usize],
    generation: u64,
) -> Runtime {
    let reusable = reusable(changed.iter().map(|&i| &*previous.services[i]));
    let hub = previous.hub.clone();
    hub.own
        .generation
        .set(i64::try_from(generation).unwrap_or(i64::MAX));
    let mut services = previous.services.clone();
    let mut before = HashSet::new();
    let mut after = HashSet::new();
    for &i in changed {
        let (old, spec) = (&previous.services[i], &config.services[i]);
        debug_assert_eq!(*old.name, *spec.name);
        debug_assert_eq!(old.subsets.len(), spec.subsets.len());
        before.extend(old.subsets.iter().map(|sub| DestinationInfo {
            service: old.service_name.to_string(),
            namespace: old.namespace.to_string(),
            host: old.host.to_string(),
            subset: sub.name.to_string(),
            workload: sub.workload.to_string(),
            labels: sub.labels.clone(),
        }));
        services[i] = Arc::new(service(spec, &reusable, &hub, &mut after));
    }
    // Series of a subset whose pod labels or workload changed start again under the new ones,
    // unless another service (another port of the same Kubernetes Service) still reports
    // under the old ones.
    let shared = |d: &DestinationInfo| {
        services.iter().enumerate().any(|(i, s)| {
            !changed.contains(&i) && *s.service_name == d.service && *s.namespace == d.namespace
        })
    };
    hub.forget(before.difference(&after).filter(|d| !shared(d)));
    Runtime {
        generation,
        router: previous.router.clone(),
        services,
        windows: previous.windows.clone(),
        hub,
        metrics_enabled: previous.metrics_enabled,
    }
}

/// One service's runtime: its endpoints and circuits reused from `reusable` where they can
/// be, its subsets' metrics from `hub` (whose identities are added to `destinations`).
fn service(
    s: &ServiceSpec,
    reusable: &Reusable,
    hub: &MetricsHub,
    destinations: &mut HashSet<DestinationInfo>,
) -> Service {
    let settings = PoolSettings {
        connect_timeout: s.connect_timeout,
        max_idle: s.max_idle,
        max_connections: s.max_connections,
        protocol: s.protocol,
        tls: s.tls.clone(),
        max_requests_per_connection: s.max_requests_per_connection,
        idle_timeout: s.idle_timeout,
    };
    let subsets = s
        .subsets
        .iter()
        .map(|sub| {
            let endpoint = |a: &EndpointAddr| {
                let key = (a.clone(), settings.clone());
                reusable
                    .endpoints
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| Endpoint::new(a.clone(), settings.clone()))
            };
            let endpoints: Vec<_> = sub.endpoints.iter().map(endpoint).collect();
            let standby = sub.standby.iter().map(endpoint).collect();
            let hashing = s.consistent_hash.as_ref().map(|policy| {
                let key = (policy.algorithm, sub.endpoints.clone());
                match reusable.tables.get(&key) {
                    Some(table) => Hashing {
                        key: policy.key.clone(),
                        algorithm: policy.algorithm,
                        table: table.clone(),
                    },
                    None => Hashing::build(policy, &endpoints),
                }
            });
            let info = DestinationInfo {
                service: s.service_name.clone(),
                namespace: s.namespace.clone(),
                host: s.host.clone(),
                subset: sub.name.clone(),
                workload: sub.workload.clone(),
                labels: sub.labels.clone(),
            };
            let metrics = hub.destination(&info);
            destinations.insert(info);
            let key = (s.name.as_str().into(), sub.name.as_str().into(), s.circuit);
            let circuit = reusable.circuits.get(&key).cloned().unwrap_or_else(|| {
                let label = hub.subset_series(&s.name, &sub.name);
                let own = &hub.own;
                let events = Events {
                    retries: own.retries.get_or_create_owned(&label),
                    retry_overflow: own.retry_overflow.get_or_create_owned(&label),
                    overflow: own.overflow.get_or_create_owned(&label),
                    ejections: own.ejections.get_or_create_owned(&label),
                };
                Circuit::new(s.circuit, events)
            });
            Subset {
                name: sub.name.as_str().into(),
                labels: sub.labels.clone(),
                workload: sub.workload.as_str().into(),
                balancer: Balancer::new(endpoints, s.load_balancer, hashing),
                standby,
                protocol: s.protocol,
                outlier: s.outlier,
                circuit,
                metrics,
            }
        })
        .collect();
    Service {
        name: s.name.as_str().into(),
        service_name: s.service_name.as_str().into(),
        namespace: s.namespace.as_str().into(),
        host: s.host.as_str().into(),
        subsets,
    }
}

/// Sets `splitgate_route_weight` to what `config` serves: each destination's share of its
/// rule, in percent. Series of rules that are gone go with them.
fn route_weights(config: &Config, hub: &MetricsHub) {
    let family = &hub.own.route_weight;
    family.clear();
    for route in &config.raw.routes {
        for (labels, percent) in weight_series(route) {
            family.get_or_create(&labels).set(percent);
        }
    }
}

/// The `splitgate_route_weight` series of one route.
fn weight_series(route: &RawRoute) -> Vec<(WeightLabel, i64)> {
    (0..route.http.len())
        .flat_map(|i| rule_weight_series(&route.name, i, &route.http[i]))
        .collect()
}

/// The `splitgate_route_weight` series of `rule`, the `i`th of route `route`.
fn rule_weight_series(route: &str, i: usize, rule: &RawRule) -> Vec<(WeightLabel, i64)> {
    let sole = rule.route.len() == 1;
    let weight = |d: &crate::config::model::RawDestinationWeight| {
        u64::from(d.weight.unwrap_or(if sole { 100 } else { 0 }))
    };
    let total: u64 = rule.route.iter().map(weight).sum();
    rule.route
        .iter()
        .map(|d| {
            let labels = WeightLabel {
                route: route.to_string(),
                rule: rule.name.clone().unwrap_or_else(|| format!("rule-{i}")),
                service: d.destination.service.clone(),
                subset: d.destination.subset.clone(),
            };
            let percent = (weight(d) * 100).checked_div(total).unwrap_or(0);
            (labels, i64::try_from(percent).unwrap_or(0))
        })
        .collect()
}

/// The analysis windows of route `r`, one per destination (mirrors included), whose keys
/// are added to `keys`.
fn route_windows(
    config: &Config,
    r: &RouteSpec,
    hub: &MetricsHub,
    keys: &mut HashSet<(String, String, String)>,
) -> Vec<(Target, Arc<Window>)> {
    let mut targets: Vec<Target> = Vec::new();
    for rule in &r.route.rules {
        let mirrored = rule.mirrors.iter().map(|m| m.target);
        for t in rule.split.entries().map(|(t, _)| t).chain(mirrored) {
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
    }
    targets
        .into_iter()
        .map(|t| {
            let (svc, sub) = (
                &config.services[t.service],
                &config.services[t.service].subsets[t.subset],
            );
            keys.insert((r.route.name.to_string(), svc.name.clone(), sub.name.clone()));
            (t, hub.window(&r.route.name, &svc.name, &sub.name))
        })
        .collect()
}

/// A runtime like `previous` with route `i` rebuilt from `config` after a change of weights
/// only: `old_rules` are the rules it had before at the indexes that changed. Analysis windows,
/// services and every other route are shared; only the changed rules' weight series are set.
pub fn reweigh_route(
    config: &Config,
    previous: &Runtime,
    i: usize,
    old_rules: &[(usize, RawRule)],
    generation: u64,
) -> Runtime {
    let router = previous
        .router
        .with_routes([config.routes[i].route.clone()]);
    let route = &config.raw.routes[i];
    let old: Vec<_> = old_rules.iter().map(|(k, r)| (*k, r)).collect();
    let new: Vec<_> = old_rules
        .iter()
        .map(|(k, _)| (*k, &route.http[*k]))
        .collect();
    replace_weight_series(&previous.hub, &route.name, &old, &new);
    routes_changed(previous, router, previous.windows.clone(), generation)
}

/// A runtime like `previous`, with only the routes at the given indexes rebuilt from
/// `config` (each given with the raw route it replaces): the fast path for one
/// VirtualService's weight step. The host index, every other route and every service are
/// shared with `previous`. With `same_destinations` (only weights changed), the routes'
/// analysis windows are kept as they are.
///
/// `config` must differ from the one `previous` was compiled from only in those routes, each
/// keeping its name and hosts.
pub fn recompile_routes(
    config: &Config,
    previous: &Runtime,
    changed: &[(usize, &RawRoute)],
    same_destinations: bool,
    generation: u64,
) -> Runtime {
    let hub = &previous.hub;
    let router = previous
        .router
        .with_routes(changed.iter().map(|(i, _)| config.routes[*i].route.clone()));
    let windows = if same_destinations {
        previous.windows.clone()
    } else {
        let mut windows = Vec::clone(&previous.windows);
        for &(i, _) in changed {
            let r = &config.routes[i];
            let mut keys = HashSet::new();
            windows[i] = route_windows(config, r, hub, &mut keys);
            hub.retain_route_windows(&r.route.name, &keys);
        }
        Arc::new(windows)
    };
    for &(i, old) in changed {
        let new = &config.raw.routes[i];
        debug_assert_eq!(new.name, old.name);
        // Only the series of rules that changed, when the rules line up.
        let (old, new): (Vec<_>, Vec<_>) = if old.http.len() == new.http.len() {
            old.http
                .iter()
                .zip(&new.http)
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .map(|(k, (a, b))| ((k, a), (k, b)))
                .unzip()
        } else {
            (
                old.http.iter().enumerate().collect(),
                new.http.iter().enumerate().collect(),
            )
        };
        replace_weight_series(hub, &config.raw.routes[i].name, &old, &new);
    }
    routes_changed(previous, router, windows, generation)
}

/// Removes the `splitgate_route_weight` series of the `old` rules of route `route` (each with
/// its index), then sets those of the `new` ones.
fn replace_weight_series(
    hub: &MetricsHub,
    route: &str,
    old: &[(usize, &RawRule)],
    new: &[(usize, &RawRule)],
) {
    let family = &hub.own.route_weight;
    for &(k, rule) in old {
        for (labels, _) in rule_weight_series(route, k, rule) {
            family.remove(&labels);
        }
    }
    for &(k, rule) in new {
        for (labels, percent) in rule_weight_series(route, k, rule) {
            family.get_or_create(&labels).set(percent);
        }
    }
}

/// The next runtime after `previous` with routes changed (`router`, `windows`) and its
/// services shared, at `generation`.
fn routes_changed(
    previous: &Runtime,
    router: Router,
    windows: Arc<Vec<RouteWindows>>,
    generation: u64,
) -> Runtime {
    let hub = previous.hub.clone();
    hub.own
        .generation
        .set(i64::try_from(generation).unwrap_or(i64::MAX));
    Runtime {
        generation,
        router: Arc::new(router),
        services: previous.services.clone(),
        windows,
        hub,
        metrics_enabled: previous.metrics_enabled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoints: &[&str], policy: &str) -> Config {
        let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let yaml = format!(
            "listeners: [{{ name: http, address: \"127.0.0.1:0\" }}]
services:
  svc:
    namespace: d
    host: svc.d
    subsets: {{ pool: {{ endpoints: [{}] }} }}
    policy: {policy}
routes: [{{ name: r, hosts: [\"*\"], http: [{{ route: [{{ destination: {{ service: svc, subset: pool }} }}] }}] }}]
",
            list.join(", ")
        );
        crate::config::from_str(&yaml, "test").unwrap()
    }

    fn table(rt: &Runtime) -> Arc<HashTable> {
        let hashing = rt.services[0].subsets[0].balancer.hashing();
        hashing.expect("a hashing subset").table.clone()
    }

    #[test]
    fn a_hash_table_is_kept_while_its_endpoints_and_kind_are() {
        let two = ["127.0.0.1:1", "127.0.0.1:2"];
        let maglev = "{ consistent_hash: { use_source_ip: true, maglev: {} } }";
        let first = compile(&config(&two, maglev), None, 1);
        // Another key and another pool setting: the same table.
        let other =
            "{ connect_timeout: 2s, consistent_hash: { http_header_name: x-user, maglev: {} } }";
        let second = compile(&config(&two, other), Some(&first), 2);
        assert!(Arc::ptr_eq(&table(&first), &table(&second)));
        let key = &second.services[0].subsets[0]
            .balancer
            .hashing()
            .unwrap()
            .key;
        assert_eq!(
            *key,
            crate::upstream::hash::HashKey::Header(http::HeaderName::from_static("x-user"))
        );
        // Other endpoints, or another kind of table: built anew.
        let one = compile(&config(&two[..1], maglev), Some(&first), 3);
        assert!(!Arc::ptr_eq(&table(&first), &table(&one)));
        let ring = "{ consistent_hash: { use_source_ip: true } }";
        let ring = compile(&config(&two, ring), Some(&first), 4);
        assert!(!Arc::ptr_eq(&table(&first), &table(&ring)));
        assert!(
            compile(&config(&two, "{}"), Some(&first), 5).services[0].subsets[0]
                .balancer
                .hashing()
                .is_none()
        );
    }
}
