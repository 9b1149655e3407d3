//! Owns the watched objects and serves what they say, doing no more work per change than
//! the change needs.
//!
//! The watchers send [`Change`]s; the applier keeps them in its [`Cluster`] and notes what they
//! touch. [`Applier::apply`] then takes one of two paths:
//! - a change to a VirtualService, DestinationRule or Service, a relist, or the first apply:
//!   everything is translated again and the control plane swaps in a whole new snapshot;
//! - EndpointSlice and Pod changes alone (pod churn, by far the most frequent): only the
//!   subsets that draw on the slices or pods changed are recomputed, and only their services
//!   are rebuilt; routes, windows and every other service are shared with the snapshot before.
//!
//! Both paths give what a full translation of the same objects gives.

use super::cluster::{Cluster, Key, Object, PodInfo, ServiceInfo, SliceInfo};
use super::istio::{DestinationRuleSpec, VirtualServiceSpec};
use super::translate::{self, LastGood, ObjectStatus, Recipe, Served, Translation};
use crate::config::kubernetes::KubernetesSpec;
use crate::control::external::{External, RouteUpdate, SubsetUpdate};
use crate::control::Control;
use crate::metrics::hub::ObjectLabel;
use std::collections::{BTreeMap, HashSet};
use std::time::{Instant, SystemTime};

/// A watched kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `networking.istio.io` DestinationRule.
    DestinationRule,
    /// Core Service.
    Service,
    /// `discovery.k8s.io` EndpointSlice.
    EndpointSlice,
    /// Core Pod.
    Pod,
}

/// Every watched kind.
pub const KINDS: [Kind; 5] = [
    Kind::VirtualService,
    Kind::DestinationRule,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Pod,
];

/// One object as kept.
#[derive(Debug)]
pub enum Item {
    /// A VirtualService.
    Vs(Object<VirtualServiceSpec>),
    /// A DestinationRule.
    Dr(Object<DestinationRuleSpec>),
    /// A Service.
    Svc(ServiceInfo),
    /// An EndpointSlice (`None`: one that belongs to no Service).
    Slice(Option<SliceInfo>),
    /// A Pod.
    Pod(PodInfo),
}

/// What a watcher tells the applier.
#[derive(Debug)]
pub enum Change {
    /// A full list of `kind` in a scope (all namespaces: `None`), replacing what was kept.
    Listed(Kind, Option<String>, Vec<(Key, Item)>),
    /// An object added or changed (boxed: an object is far larger than the other changes).
    Put(Kind, Key, Box<Item>),
    /// An object deleted.
    Gone(Kind, Key),
    /// The watch failed (it is retried).
    Failed(Kind, String),
}

/// What one [`Applier::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Not every kind has been listed yet: nothing is served from the objects.
    Waiting,
    /// Only the subsets whose endpoints or pods changed were recomputed; the generation live.
    Endpoints(u64),
    /// Only the VirtualServices that changed were translated, their routes alone replaced
    /// (and any subsets touched recomputed); the generation live.
    Routes(u64),
    /// Everything was translated again; the generation live, or why it was not applied.
    Full(Result<u64, String>),
}

/// What the changes taken since the last apply touched.
#[derive(Debug, Default)]
struct Touched {
    /// A change that only a full translation serves.
    all: bool,
    /// VirtualServices added or changed.
    virtual_services: HashSet<Key>,
    /// Services `(namespace, name)` whose EndpointSlices changed.
    services: HashSet<Key>,
    /// Namespaces where a pod changed.
    pod_namespaces: HashSet<String>,
}

/// The watched objects and what is served from them.
#[derive(Debug)]
pub struct Applier {
    spec: KubernetesSpec,
    cluster: Cluster,
    /// Lists needed before anything is served: one per kind and scope.
    needed: usize,
    listed: HashSet<(Kind, Option<String>)>,
    last_good: LastGood,
    /// The last error of each kind whose watch is failing.
    failures: BTreeMap<Kind, String>,
    last_event: Option<Instant>,
    /// How the subsets served now were chosen; `None` until the first full translation.
    recipes: Option<BTreeMap<(String, String), Recipe>>,
    /// What each VirtualService served at its current generation draws on.
    served: BTreeMap<Key, Served>,
    touched: Touched,
}

impl Applier {
    /// An applier for the gateway `spec`, serving once each kind has been listed in each of
    /// `scopes` scopes.
    pub fn new(spec: KubernetesSpec, scopes: usize) -> Self {
        Applier {
            spec,
            cluster: Cluster::default(),
            needed: KINDS.len() * scopes,
            listed: HashSet::new(),
            last_good: LastGood::new(),
            failures: BTreeMap::new(),
            last_event: None,
            recipes: None,
            served: BTreeMap::new(),
            touched: Touched::default(),
        }
    }

    /// The objects kept.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Keeps a change, to be served at the next [`apply`](Self::apply).
    pub fn take(&mut self, change: Change) {
        let c = &mut self.cluster;
        let t = &mut self.touched;
        match change {
            Change::Failed(kind, e) => {
                self.failures.insert(kind, e);
                return;
            }
            Change::Listed(kind, scope, items) => {
                self.failures.remove(&kind);
                let keep = |k: &Key| scope.as_ref().is_some_and(|ns| &k.0 != ns);
                match kind {
                    Kind::VirtualService => c.virtual_services.retain(|k, _| keep(k)),
                    Kind::DestinationRule => c.destination_rules.retain(|k, _| keep(k)),
                    Kind::Service => c.services.retain(|k, _| keep(k)),
                    Kind::EndpointSlice => c.slices.retain(|k, _| keep(k)),
                    Kind::Pod => c.pods.retain(|k, _| keep(k)),
                }
                for (key, item) in items {
                    put(c, key, item);
                }
                self.listed.insert((kind, scope));
                t.all = true;
            }
            Change::Put(kind, key, item) => {
                let item = *item;
                self.failures.remove(&kind);
                match &item {
                    Item::Vs(_) => {
                        t.virtual_services.insert(key.clone());
                    }
                    Item::Dr(_) | Item::Svc(_) => t.all = true,
                    Item::Slice(new) => {
                        let old = c.slices.get(&key);
                        if old != new.as_ref() {
                            for s in old.into_iter().chain(new) {
                                t.services.insert((key.0.clone(), s.service.clone()));
                            }
                        }
                    }
                    Item::Pod(new) => {
                        if c.pods.get(&key) != Some(new) {
                            t.pod_namespaces.insert(key.0.clone());
                        }
                    }
                }
                put(c, key, item);
            }
            Change::Gone(kind, key) => {
                self.failures.remove(&kind);
                match kind {
                    Kind::VirtualService => {
                        t.all |= c.virtual_services.remove(&key).is_some();
                    }
                    Kind::DestinationRule => {
                        t.all |= c.destination_rules.remove(&key).is_some();
                    }
                    Kind::Service => {
                        t.all |= c.services.remove(&key).is_some();
                    }
                    Kind::EndpointSlice => {
                        if let Some(s) = c.slices.remove(&key) {
                            t.services.insert((key.0, s.service));
                        }
                    }
                    Kind::Pod => {
                        if c.pods.remove(&key).is_some() {
                            t.pod_namespaces.insert(key.0);
                        }
                    }
                }
            }
        }
        self.last_event = Some(Instant::now());
    }

    /// Serves what the changes taken since the last call say, through `control`.
    pub async fn apply(&mut self, control: &Control) -> Applied {
        let error = (!self.failures.is_empty()).then(|| {
            self.failures
                .iter()
                .map(|(k, e)| format!("{k:?}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        });
        if self.listed.len() < self.needed {
            control.set_external_error(error).await;
            return Applied::Waiting;
        }
        stamp_last_event(control);
        let touched = std::mem::take(&mut self.touched);
        if !touched.all && self.recipes.is_some() {
            if let Some(applied) = self.incrementally(&touched, control, &error).await {
                return applied;
            }
        }
        let translation = translate::translate(
            &self.cluster,
            &self.spec,
            &control.file_config().await,
            &self.last_good,
        );
        self.last_good = translation.last_good.clone();
        // While a DestinationRule is held at an earlier version, the current objects cannot
        // be read piecemeal (a subset's labels would come from the rule as it is now): every
        // event translates in full until it is mended.
        self.recipes = translation
            .held
            .is_empty()
            .then(|| translation.recipes.clone());
        self.served = translation.served.clone();
        publish_generations(control, &translation);
        let external = external(translation, self.last_event, error);
        Applied::Full(control.set_external(external).await.map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        }))
    }

    /// Serves `touched` without a full translation, if it can be: changed VirtualServices
    /// that draw on what they drew on before (same hosts, same subsets) replace their routes
    /// alone, and changed slices and pods recompute the subsets that use them. `None` when a
    /// full translation is needed (nothing has changed then, unless routes were replaced,
    /// which the full translation includes).
    async fn incrementally(
        &mut self,
        touched: &Touched,
        control: &Control,
        error: &Option<String>,
    ) -> Option<Applied> {
        let mut routes = Vec::new();
        let mut served_now = Vec::new();
        if !touched.virtual_services.is_empty() {
            let file = control.file_config().await;
            for key in &touched.virtual_services {
                let vs = self.cluster.virtual_services.get(key)?;
                let before = self.served.get(key)?;
                let (route, status, served) =
                    translate::translate_one(&self.cluster, &self.spec, &file, vs)?;
                if served != *before {
                    return None;
                }
                routes.push(RouteUpdate {
                    route,
                    object: object_json(&status),
                });
                served_now.push((key.clone(), status, vs.spec.clone().ok()?));
            }
        }
        let mut applied = None;
        if !routes.is_empty() {
            let generation = control
                .update_external_routes(&routes, self.last_event, error.clone())
                .await?;
            let own = &control.runtime().load().hub.own;
            for (key, status, spec) in served_now {
                let labels = ObjectLabel {
                    kind: status.kind.to_string(),
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                };
                own.object_generation
                    .get_or_create(&labels)
                    .set(status.meta.generation);
                self.last_good
                    .virtual_services
                    .insert(key, (status.meta.generation, spec));
            }
            applied = Some(Applied::Routes(generation));
        }
        let subsets_touched = !touched.services.is_empty() || !touched.pod_namespaces.is_empty();
        if subsets_touched || applied.is_none() {
            let recipes = self.recipes.as_ref()?;
            let updates: Vec<SubsetUpdate> = recipes
                .iter()
                .filter(|(_, r)| {
                    touched.pod_namespaces.contains(&r.namespace)
                        || touched
                            .services
                            .contains(&(r.namespace.clone(), r.service.clone()))
                })
                .map(|((service, subset), r)| SubsetUpdate {
                    service: service.clone(),
                    subset: subset.clone(),
                    value: r.subset(&self.cluster),
                })
                .collect();
            let generation = control
                .update_external_subsets(&updates, self.last_event, error.clone())
                .await?;
            applied = Some(match applied {
                Some(Applied::Routes(_)) => Applied::Routes(generation),
                _ => Applied::Endpoints(generation),
            });
        }
        applied
    }
}

fn put(c: &mut Cluster, key: Key, item: Item) {
    match item {
        Item::Vs(o) => {
            c.virtual_services.insert(key, o);
        }
        Item::Dr(o) => {
            c.destination_rules.insert(key, o);
        }
        Item::Svc(s) => {
            c.services.insert(key, s);
        }
        Item::Slice(Some(s)) => {
            c.slices.insert(key, s);
        }
        Item::Slice(None) => {
            c.slices.remove(&key);
        }
        Item::Pod(p) => {
            c.pods.insert(key, p);
        }
    }
}

/// The control plane's view of a translation.
fn external(t: Translation, last_event: Option<Instant>, error: Option<String>) -> External {
    let owners = t
        .objects
        .iter()
        .filter(|o| o.kind == "VirtualService" && o.served_generation.is_some())
        .map(|o| {
            (
                translate::route_name(&o.meta.namespace, &o.meta.name),
                format!("VirtualService {}/{}", o.meta.namespace, o.meta.name),
            )
        })
        .collect();
    let objects = t.objects.iter().map(object_json).collect();
    External {
        services: t.services,
        routes: t.routes,
        owners,
        synced: true,
        last_event,
        error,
        objects: serde_json::Value::Array(objects),
    }
}

/// An object's entry in `/v1/state`.
fn object_json(o: &ObjectStatus) -> serde_json::Value {
    serde_json::json!({
        "kind": o.kind,
        "namespace": o.meta.namespace,
        "name": o.meta.name,
        "generation": o.meta.generation,
        "resource_version": o.meta.resource_version,
        "status": o.status.as_str(),
        "served_generation": o.served_generation,
        "message": o.message,
        "unsupported": o.unsupported,
    })
}

/// Sets `splitgate_kubernetes_object_generation` to the generations served now.
fn publish_generations(control: &Control, t: &Translation) {
    let runtime = control.runtime().load();
    let own = &runtime.hub.own;
    own.object_generation.clear();
    for o in &t.objects {
        if let Some(g) = o.served_generation {
            let labels = ObjectLabel {
                kind: o.kind.to_string(),
                namespace: o.meta.namespace.clone(),
                name: o.meta.name.clone(),
            };
            own.object_generation.get_or_create(&labels).set(g);
        }
    }
}

/// Sets `splitgate_kubernetes_last_event_timestamp_seconds` to now.
fn stamp_last_event(control: &Control) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    control
        .runtime()
        .load()
        .hub
        .own
        .kubernetes_last_event
        .set(i64::try_from(now).unwrap_or(i64::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;
    use std::collections::BTreeSet;

    const ARGO_SUBSET: &str =
        include_str!("../../tests/fixtures/kubernetes/argo-subset-level.yaml");

    fn config() -> Config {
        crate::config::from_str(
            "listeners: [{name: http, address: \"127.0.0.1:0\"}]\n\
             kubernetes: {gateway: istio-system/splitgate}\n",
            "test",
        )
        .unwrap()
    }

    /// The object `v` as a watcher would send it.
    fn put(v: serde_json::Value) -> Change {
        let mut c = Cluster::default();
        assert!(c.insert_value(&v), "{v}");
        let key = (
            v["metadata"]["namespace"].as_str().unwrap().to_string(),
            v["metadata"]["name"].as_str().unwrap().to_string(),
        );
        let (kind, item) = match v["kind"].as_str().unwrap() {
            "VirtualService" => (
                Kind::VirtualService,
                Item::Vs(c.virtual_services.remove(&key).unwrap()),
            ),
            "EndpointSlice" => (Kind::EndpointSlice, Item::Slice(c.slices.remove(&key))),
            "Pod" => (Kind::Pod, Item::Pod(c.pods.remove(&key).unwrap())),
            other => panic!("{other}"),
        };
        Change::Put(kind, key, Box::new(item))
    }

    /// Every kind listed from the fixture.
    fn lists(c: &Cluster) -> Vec<Change> {
        let keyed = |m: Vec<(Key, Item)>| m;
        vec![
            Change::Listed(
                Kind::VirtualService,
                None,
                keyed(
                    c.virtual_services
                        .iter()
                        .map(|(k, o)| (k.clone(), Item::Vs(o.clone())))
                        .collect(),
                ),
            ),
            Change::Listed(
                Kind::DestinationRule,
                None,
                c.destination_rules
                    .iter()
                    .map(|(k, o)| (k.clone(), Item::Dr(o.clone())))
                    .collect(),
            ),
            Change::Listed(
                Kind::Service,
                None,
                c.services
                    .iter()
                    .map(|(k, o)| (k.clone(), Item::Svc(o.clone())))
                    .collect(),
            ),
            Change::Listed(
                Kind::EndpointSlice,
                None,
                c.slices
                    .iter()
                    .map(|(k, o)| (k.clone(), Item::Slice(Some(o.clone()))))
                    .collect(),
            ),
            Change::Listed(
                Kind::Pod,
                None,
                c.pods
                    .iter()
                    .map(|(k, o)| (k.clone(), Item::Pod(o.clone())))
                    .collect(),
            ),
        ]
    }

    /// What a control plane serves, as a user sees it: `/v1/state`'s routes and objects, the
    /// served weights, and each subset's endpoints, labels and workload.
    async fn served(control: &Control) -> serde_json::Value {
        let state = serde_json::to_value(control.state().await).unwrap();
        let runtime = control.runtime().load();
        // Series in any order, as Prometheus reads them.
        let weights: BTreeSet<String> = runtime
            .hub
            .encode()
            .lines()
            .filter(|l| l.starts_with("splitgate_route_weight{"))
            .map(str::to_string)
            .collect();
        let subsets: Vec<String> = runtime
            .services
            .iter()
            .flat_map(|s| {
                s.subsets.iter().map(move |sub| {
                    let addrs = |list: &[std::sync::Arc<crate::upstream::Endpoint>]| {
                        list.iter()
                            .map(|e| format!("{:?}", e.addr()))
                            .collect::<Vec<_>>()
                    };
                    let endpoints = addrs(sub.balancer.endpoints());
                    let standby = addrs(&sub.standby);
                    format!(
                        "{}/{} {:?} {} {endpoints:?} standby {standby:?}",
                        s.name, sub.name, sub.labels, sub.workload
                    )
                })
            })
            .collect();
        let routes: Vec<String> = runtime
            .router
            .routes()
            .iter()
            .map(|r| format!("{r:?}"))
            .collect();
        json!({
            "routes": state["routes"],
            "objects": state["kubernetes"]["objects"],
            "weights": weights,
            "subsets": subsets,
            "compiled": routes,
        })
    }

    /// What a gateway started now, translating `cluster` whole, would serve.
    async fn from_scratch(cluster: &Cluster) -> serde_json::Value {
        let config = config();
        let spec = config.kubernetes.clone().unwrap();
        let file = config.raw.clone();
        let control = Control::new(config, None);
        let t = translate::translate(cluster, &spec, &file, &LastGood::new());
        control.set_external(external(t, None, None)).await.unwrap();
        served(&control).await
    }

    fn vs(primary: [u32; 2], hosts: &[&str]) -> serde_json::Value {
        json!({
            "apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
            "metadata": {"name": "rollouts-demo-vsvc", "namespace": "shop",
                         "generation": 10 + primary[1], "resourceVersion": format!("3{}", primary[1])},
            "spec": {
                "gateways": ["splitgate.istio-system.svc.cluster.local"],
                "hosts": hosts,
                "http": [
                    {"name": "canary-header", "match": [{"headers": {"x-canary": {"exact": "yes"}}}],
                     "route": [{"destination": {"host": "rollouts-demo", "subset": "canary", "port": {"number": 80}}, "weight": 100}]},
                    {"name": "primary", "route": [
                        {"destination": {"host": "rollouts-demo", "subset": "stable"}, "weight": primary[0]},
                        {"destination": {"host": "rollouts-demo", "subset": "canary"}, "weight": primary[1]}]}
                ]
            }
        })
    }

    fn slice(ready: [bool; 3]) -> serde_json::Value {
        let endpoint = |ip: &str, pod: &str, ready: bool| {
            json!({"addresses": [ip], "conditions": {"ready": ready},
                   "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop"}})
        };
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "rollouts-demo-abcde", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "rollouts-demo"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                endpoint("10.1.0.11", "rollouts-demo-7bf84f9696-aaaaa", ready[0]),
                endpoint("10.1.0.21", "rollouts-demo-5d4c7b9b4c-ddddd", ready[1]),
                endpoint("10.1.0.12", "rollouts-demo-7bf84f9696-bbbbb", ready[2]),
            ]
        })
    }

    fn pod(name: &str, hash: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop",
                         "labels": {"app": "rollouts-demo", "rollouts-pod-template-hash": hash},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                             "name": format!("rollouts-demo-{hash}"), "uid": "u", "controller": true}]}
        })
    }

    #[tokio::test]
    async fn every_change_serves_what_a_full_translation_of_the_same_objects_serves() {
        let config = config();
        let spec = config.kubernetes.clone().unwrap();
        let control = Control::new(config, None);
        let mut applier = Applier::new(spec, 1);
        for change in lists(&Cluster::from_yaml(ARGO_SUBSET).unwrap()) {
            applier.take(change);
        }
        assert!(matches!(
            applier.apply(&control).await,
            Applied::Full(Ok(_))
        ));
        let host = ["rollouts-demo.example.com"];
        // (what changes, which path serves it)
        let steps: Vec<(Vec<Change>, &str)> = vec![
            // Argo's setWeight steps: the route alone.
            (vec![put(vs([90, 10], &host))], "routes"),
            (vec![put(vs([50, 50], &host))], "routes"),
            // A third pod of the stable ReplicaSet, not ready yet (on standby), then ready.
            (
                vec![
                    put(pod("rollouts-demo-7bf84f9696-bbbbb", "7bf84f9696")),
                    put(slice([true, true, false])),
                ],
                "endpoints",
            ),
            (vec![put(slice([true, true, true]))], "endpoints"),
            // A pod relabelled into the canary subset: its endpoint moves across subsets.
            (
                vec![put(pod("rollouts-demo-7bf84f9696-bbbbb", "5d4c7b9b4c"))],
                "endpoints",
            ),
            // A weight step and a pod going away in one batch.
            (
                vec![put(vs([20, 80], &host)), put(slice([true, true, false]))],
                "routes",
            ),
            // A new host: only a full translation says who serves it.
            (
                vec![put(vs(
                    [20, 80],
                    &["rollouts-demo.example.com", "demo.example.com"],
                ))],
                "full",
            ),
            // The same object again, as a relist or a resync sends it: nothing changes.
            (
                vec![put(vs(
                    [20, 80],
                    &["rollouts-demo.example.com", "demo.example.com"],
                ))],
                "routes",
            ),
        ];
        for (i, (changes, path)) in steps.into_iter().enumerate() {
            let before = control.generation();
            for c in changes {
                applier.take(c);
            }
            let applied = applier.apply(&control).await;
            let took = match applied {
                Applied::Routes(_) => "routes",
                Applied::Endpoints(_) => "endpoints",
                Applied::Full(Ok(_)) => "full",
                other => panic!("step {i}: {other:?}"),
            };
            assert_eq!(took, path, "step {i}");
            assert_eq!(
                served(&control).await,
                from_scratch(applier.cluster()).await,
                "step {i}: the {path} path serves what a full translation serves"
            );
            let moved = control.generation() > before;
            // Step 7 (the same object again) changes nothing served. (Step 2's endpoint that
            // is not ready gets no request, but goes on standby.)
            assert_eq!(
                moved,
                i != 7,
                "step {i}: a new snapshot only when something served changed"
            );
        }
    }
}
