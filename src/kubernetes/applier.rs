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
use super::translate::{self, LastGood, Recipe, Translation};
use crate::config::kubernetes::KubernetesSpec;
use crate::control::external::{External, SubsetUpdate};
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
    /// An object added or changed.
    Put(Kind, Key, Item),
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
    /// Everything was translated again; the generation live, or why it was not applied.
    Full(Result<u64, String>),
}

/// What the changes taken since the last apply touched.
#[derive(Debug, Default)]
struct Touched {
    /// A change that only a full translation serves.
    all: bool,
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
                self.failures.remove(&kind);
                match &item {
                    Item::Vs(_) | Item::Dr(_) | Item::Svc(_) => t.all = true,
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
        if let (false, Some(recipes)) = (touched.all, &self.recipes) {
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
            if let Some(generation) = control
                .update_external_subsets(&updates, self.last_event, error.clone())
                .await
            {
                return Applied::Endpoints(generation);
            }
        }
        let translation = translate::translate(
            &self.cluster,
            &self.spec,
            &control.file_config().await,
            &self.last_good,
        );
        self.last_good = translation.last_good.clone();
        self.recipes = Some(translation.recipes.clone());
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
    let objects = t
        .objects
        .iter()
        .map(|o| {
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
        })
        .collect();
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
