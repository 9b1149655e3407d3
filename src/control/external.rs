//! Routes and services that come from outside the config file: the Kubernetes objects. The
//! control plane serves them beside the file's, refuses API changes to them, and holds
//! readiness until they are complete; it knows nothing else of where they come from.

use crate::config::model::{RawConfig, RawRoute, RawService, RawSubset};
use std::collections::BTreeMap;
use std::time::Instant;

/// One complete set of routes and services from outside the file.
#[derive(Debug, Clone, Default)]
pub struct External {
    /// Services by key.
    pub services: BTreeMap<String, RawService>,
    /// Routes, after the file's.
    pub routes: Vec<RawRoute>,
    /// The object behind each route, named in a refused API change
    /// (`VirtualService shop/web`).
    pub owners: BTreeMap<String, String>,
    /// Whether every source has been read in full once: readiness waits for it.
    pub synced: bool,
    /// When the source last said something (an event, or a list).
    pub last_event: Option<Instant>,
    /// Why the source is not current, if it is not (the API server is down, say).
    pub error: Option<String>,
    /// The objects, as `/v1/state` lists them under `kubernetes.objects`.
    pub objects: serde_json::Value,
}

/// New endpoints, with their pod labels and workload, for one subset of an outside service.
#[derive(Debug, Clone, PartialEq)]
pub struct SubsetUpdate {
    /// The service key.
    pub service: String,
    /// The subset.
    pub subset: String,
    /// What it is now.
    pub value: RawSubset,
}

/// A changed route from outside the file, with the object behind it as `/v1/state` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteUpdate {
    /// The route as it is now; its name and hosts are those it had.
    pub route: RawRoute,
    /// Its object's entry in [`External::objects`] (matched by kind, namespace and name).
    pub object: serde_json::Value,
}

/// The file's config with `external`'s services and routes added.
pub fn merged(file: &RawConfig, external: Option<&External>) -> RawConfig {
    let Some(ext) = external else {
        return file.clone();
    };
    let mut raw = file.clone();
    raw.services
        .extend(ext.services.iter().map(|(k, v)| (k.clone(), v.clone())));
    raw.routes.extend(ext.routes.iter().cloned());
    raw
}
