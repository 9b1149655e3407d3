//! Keeps the watched objects current.
//!
//! One kube-rs watcher per kind (and per namespace, when the config names some) lists, then
//! watches; it resumes a dropped watch, relists after `410 Gone`, and backs off while the API
//! server is away. Each watcher only turns objects into the few fields kept (`cluster`) and
//! sends them to one loop, which owns the [`Applier`]. That loop takes every change that is
//! waiting, then applies once: a burst of endpoint changes becomes one swap.

use super::applier::{Applied, Applier, Change, Item, Kind, KINDS};
use super::cluster::{Key, Object, PodInfo, ServiceInfo, SliceInfo};
use crate::config::kubernetes::KubernetesSpec;
use crate::control::Control;
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch as signal};

/// The Istio API version watched. Argo Rollouts writes v1alpha3 by default and Flagger
/// v1beta1; the API server serves one object under every version its CRD lists, and every
/// Istio CRD (and ours) lists v1alpha3.
pub const ISTIO_VERSION: &str = "v1alpha3";

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
    let mut applier = Applier::new(spec, scopes.len());
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = stop.changed() => None,
        };
        let Some(first) = first else { break };
        applier.take(first);
        while let Ok(m) = rx.try_recv() {
            applier.take(m);
        }
        let started = Instant::now();
        match applier.apply(&control).await {
            Applied::Waiting => {}
            Applied::Endpoints(generation)
            | Applied::Routes(generation)
            | Applied::Full(Ok(generation)) => tracing::debug!(
                generation,
                took_us = started.elapsed().as_micros() as u64,
                "kubernetes objects applied"
            ),
            Applied::Full(Err(errors)) => {
                tracing::error!(%errors, "kubernetes objects not applied")
            }
        }
    }
    for t in tasks {
        t.abort();
    }
}

fn istio(kind: &str, plural: &str) -> ApiResource {
    let gvk = GroupVersionKind::gvk("networking.istio.io", ISTIO_VERSION, kind);
    ApiResource::from_gvk_with_plural(&gvk, plural)
}

/// Watches one kind in one scope for ever, sending what it sees to the loop.
async fn watch_kind(client: Client, kind: Kind, scope: Option<String>, tx: mpsc::Sender<Change>) {
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
    tx: mpsc::Sender<Change>,
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
    tx: mpsc::Sender<Change>,
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
                Change::Listed(kind, scope.clone(), listing.take().unwrap_or_default())
            }
            Ok(Event::Apply(o)) => match keep(&o) {
                Some(item) => Change::Put(kind, key(&o), Box::new(item)),
                None => continue,
            },
            Ok(Event::Delete(o)) => Change::Gone(kind, key(&o)),
            Err(e) => {
                // Logged once a minute at most: an API server that is down would otherwise
                // fill the log, and the backoff retries anyway.
                if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(kind = ?kind, error = %e, "kubernetes watch failed; retrying");
                    last_log = Some(Instant::now());
                }
                Change::Failed(kind, e.to_string())
            }
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}
