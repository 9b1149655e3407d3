//! Keeps the watched objects current and serves what they say.
//!
//! One kube-rs watcher per kind (and per namespace, when the config names some) lists, then
//! watches; it resumes a dropped watch, relists after `410 Gone`, and backs off while the API
//! server is away. Each watcher only turns objects into the few fields kept (`cluster`) and
//! sends them to one loop, which owns the `Cluster`. That loop takes every message that is
//! waiting, translates once, and hands the result to the control plane: a burst of endpoint
//! changes becomes one swap.

use super::cluster::{Cluster, Key, Object, PodInfo, ServiceInfo, SliceInfo};
use super::istio::{DestinationRuleSpec, VirtualServiceSpec};
use super::translate::{self, LastGood, Translation};
use crate::config::kubernetes::KubernetesSpec;
use crate::control::external::External;
use crate::control::Control;
use crate::metrics::hub::ObjectLabel;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch as signal};

/// The Istio API version watched. Argo Rollouts writes v1alpha3 by default and Flagger
/// v1beta1; the API server serves one object under every version its CRD lists, and every
/// Istio CRD (and ours) lists v1alpha3.
pub const ISTIO_VERSION: &str = "v1alpha3";

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

const KINDS: [Kind; 5] = [
    Kind::VirtualService,
    Kind::DestinationRule,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Pod,
];

/// One object as kept.
#[derive(Debug)]
enum Item {
    Vs(Object<VirtualServiceSpec>),
    Dr(Object<DestinationRuleSpec>),
    Svc(ServiceInfo),
    Slice(Option<SliceInfo>),
    Pod(PodInfo),
}

/// What a watcher tells the loop.
#[derive(Debug)]
enum Msg {
    /// A full list of `kind` in `scope` (all namespaces: `None`), replacing what was kept.
    Listed(Kind, Option<String>, Vec<(Key, Item)>),
    /// An object added or changed.
    Put(Kind, Key, Item),
    /// An object deleted.
    Gone(Kind, Key),
    /// The watch failed (it is retried).
    Failed(Kind, String),
}

/// Why the watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No usable kubeconfig or in-cluster account.
    #[error("kubernetes: cannot configure the API client: {0}")]
    Config(String),
}

/// Builds the API client: the config's kubeconfig, else the in-cluster ServiceAccount, else
/// `$KUBECONFIG` or `~/.kube/config`.
pub async fn client(spec: &KubernetesSpec) -> Result<Client, StartError> {
    let config = match &spec.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| StartError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| StartError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| StartError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| StartError::Config(e.to_string()))
}

/// Watches until `stop` turns true, serving every change through `control`.
pub async fn run(
    client: Client,
    spec: KubernetesSpec,
    control: Arc<Control>,
    mut stop: signal::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel(1024);
    let scopes: Vec<Option<String>> = if spec.namespaces.is_empty() {
        vec![None]
    } else {
        spec.namespaces.iter().cloned().map(Some).collect()
    };
    let mut tasks = Vec::new();
    for kind in KINDS {
        for scope in &scopes {
            tasks.push(tokio::spawn(watch_kind(
                client.clone(),
                kind,
                scope.clone(),
                tx.clone(),
            )));
        }
    }
    drop(tx);
    let needed = KINDS.len() * scopes.len();
    let mut state = Loop {
        cluster: Cluster::default(),
        listed: HashSet::new(),
        last_good: LastGood::new(),
        failures: BTreeMap::new(),
        last_event: None,
    };
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = stop.changed() => None,
        };
        let Some(first) = first else { break };
        state.take(first);
        while let Ok(m) = rx.try_recv() {
            state.take(m);
        }
        let error = (!state.failures.is_empty()).then(|| {
            state
                .failures
                .iter()
                .map(|(k, e)| format!("{k:?}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        });
        if state.listed.len() < needed {
            control.set_external_error(error).await;
            continue;
        }
        let started = Instant::now();
        let translation = translate::translate(
            &state.cluster,
            &spec,
            &control.file_config().await,
            &state.last_good,
        );
        state.last_good = translation.last_good.clone();
        publish_generations(&control, &translation);
        let external = external(translation, state.last_event, error);
        match control.set_external(external).await {
            Ok(generation) => tracing::debug!(
                generation,
                took_us = started.elapsed().as_micros() as u64,
                "kubernetes objects applied"
            ),
            Err(errors) => tracing::error!(?errors, "kubernetes objects not applied"),
        }
    }
    for t in tasks {
        t.abort();
    }
}

/// The loop's state.
struct Loop {
    cluster: Cluster,
    listed: HashSet<(Kind, Option<String>)>,
    last_good: LastGood,
    /// The last error of each kind whose watch is failing.
    failures: BTreeMap<Kind, String>,
    last_event: Option<Instant>,
}

impl Loop {
    fn take(&mut self, m: Msg) {
        let c = &mut self.cluster;
        match m {
            Msg::Failed(kind, e) => {
                self.failures.insert(kind, e);
                return;
            }
            Msg::Listed(kind, scope, items) => {
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
            }
            Msg::Put(kind, key, item) => {
                self.failures.remove(&kind);
                put(c, key, item);
            }
            Msg::Gone(kind, key) => {
                self.failures.remove(&kind);
                match kind {
                    Kind::VirtualService => {
                        c.virtual_services.remove(&key);
                    }
                    Kind::DestinationRule => {
                        c.destination_rules.remove(&key);
                    }
                    Kind::Service => {
                        c.services.remove(&key);
                    }
                    Kind::EndpointSlice => {
                        c.slices.remove(&key);
                    }
                    Kind::Pod => {
                        c.pods.remove(&key);
                    }
                }
            }
        }
        self.last_event = Some(Instant::now());
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
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    own.kubernetes_last_event
        .set(i64::try_from(now).unwrap_or(i64::MAX));
}

fn istio(kind: &str, plural: &str) -> ApiResource {
    let gvk = GroupVersionKind::gvk("networking.istio.io", ISTIO_VERSION, kind);
    ApiResource::from_gvk_with_plural(&gvk, plural)
}

/// Watches one kind in one scope for ever, sending what it sees to the loop.
async fn watch_kind(client: Client, kind: Kind, scope: Option<String>, tx: mpsc::Sender<Msg>) {
    match kind {
        Kind::VirtualService => {
            let ar = istio("VirtualService", "virtualservices");
            let api = dynamic_api(client, &ar, scope.as_deref());
            forward(api, kind, scope, tx, |o: &DynamicObject| {
                Some(Item::Vs(Object::from_parts(
                    &o.metadata,
                    o.data.get("spec"),
                )))
            })
            .await
        }
        Kind::DestinationRule => {
            let ar = istio("DestinationRule", "destinationrules");
            let api = dynamic_api(client, &ar, scope.as_deref());
            forward(api, kind, scope, tx, |o: &DynamicObject| {
                Some(Item::Dr(Object::from_parts(
                    &o.metadata,
                    o.data.get("spec"),
                )))
            })
            .await
        }
        Kind::Service => {
            let api = typed_api::<Service>(client, scope.as_deref());
            forward(api, kind, scope, tx, |s| {
                Some(Item::Svc(ServiceInfo::from_k8s(s)))
            })
            .await
        }
        Kind::EndpointSlice => {
            let api = typed_api::<EndpointSlice>(client, scope.as_deref());
            forward(api, kind, scope, tx, |s| {
                Some(Item::Slice(SliceInfo::from_k8s(s)))
            })
            .await
        }
        Kind::Pod => {
            let api = typed_api::<Pod>(client, scope.as_deref());
            forward(api, kind, scope, tx, |p| {
                Some(Item::Pod(PodInfo::from_k8s(p)))
            })
            .await
        }
    }
}

fn dynamic_api(client: Client, ar: &ApiResource, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) => Api::namespaced_with(client, ns, ar),
        None => Api::all_with(client, ar),
    }
}

fn typed_api<K>(client: Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// Runs a watcher over `api`, keeping each object as `keep` makes it, and sends lists and
/// changes to the loop until the loop is gone.
async fn forward<K, F>(
    api: Api<K>,
    kind: Kind,
    scope: Option<String>,
    tx: mpsc::Sender<Msg>,
    keep: F,
) where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash,
    F: Fn(&K) -> Option<Item>,
{
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    forward_events(stream, kind, scope, tx, keep).await;
}

async fn forward_events<K, F, S>(
    stream: S,
    kind: Kind,
    scope: Option<String>,
    tx: mpsc::Sender<Msg>,
    keep: F,
) where
    K: Resource,
    F: Fn(&K) -> Option<Item>,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let key = |o: &K| {
        let m = o.meta();
        (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    };
    let mut listing: Option<Vec<(Key, Item)>> = None;
    let mut last_log: Option<Instant> = None;
    futures_util::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let msg = match event {
            Ok(Event::Init) => {
                listing = Some(Vec::new());
                continue;
            }
            Ok(Event::InitApply(o)) => {
                if let (Some(list), Some(item)) = (listing.as_mut(), keep(&o)) {
                    list.push((key(&o), item));
                }
                continue;
            }
            Ok(Event::InitDone) => {
                Msg::Listed(kind, scope.clone(), listing.take().unwrap_or_default())
            }
            Ok(Event::Apply(o)) => match keep(&o) {
                Some(item) => Msg::Put(kind, key(&o), item),
                None => continue,
            },
            Ok(Event::Delete(o)) => Msg::Gone(kind, key(&o)),
            Err(e) => {
                // Logged once a minute at most: an API server that is down would otherwise
                // fill the log, and the backoff retries anyway.
                if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(kind = ?kind, error = %e, "kubernetes watch failed; retrying");
                    last_log = Some(Instant::now());
                }
                Msg::Failed(kind, e.to_string())
            }
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}
