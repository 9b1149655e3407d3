//! What splitgate keeps of the watched objects: the Istio specs whole, and of Services,
//! EndpointSlices and Pods only the few fields routing and metrics need, so that ten thousand
//! pods cost kilobytes, not the megabytes their full objects would.

use super::istio::{DestinationRuleSpec, VirtualServiceSpec};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// `(namespace, name)`.
pub type Key = (String, String);

/// The metadata kept of an Istio object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.generation`: rises with every change of `spec`.
    pub generation: i64,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
    /// `metadata.creationTimestamp` as RFC 3339 (sorts as text); the older object wins a host.
    pub created: String,
    /// Its annotations under `splitgate.io/` (no others are kept).
    pub annotations: BTreeMap<String, String>,
}

impl Meta {
    /// From an object's metadata.
    pub fn from_k8s(m: &ObjectMeta) -> Self {
        Meta {
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            generation: m.generation.unwrap_or(0),
            resource_version: m.resource_version.clone().unwrap_or_default(),
            created: m
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            annotations: m
                .annotations
                .iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("splitgate.io/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Its key.
    pub fn key(&self) -> Key {
        (self.namespace.clone(), self.name.clone())
    }
}

/// An Istio object: its metadata and its spec, or why the spec could not be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<S> {
    /// Metadata.
    pub meta: Meta,
    /// The spec, or the reason it does not parse.
    pub spec: Result<S, String>,
}

impl<S: serde::de::DeserializeOwned> Object<S> {
    /// From a dynamic object's metadata and its `spec` value.
    pub fn from_parts(meta: &ObjectMeta, spec: Option<&serde_json::Value>) -> Self {
        let spec = match spec {
            None => Err("the object has no spec".to_string()),
            Some(v) => S::deserialize(v).map_err(|e| format!("spec does not parse: {e}")),
        };
        Object {
            meta: Meta::from_k8s(meta),
            spec,
        }
    }
}

/// A Service's ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// `(name, port)`; the name is empty when the Service has one unnamed port.
    pub ports: Vec<(String, u16)>,
}

impl ServiceInfo {
    /// From a Service.
    pub fn from_k8s(s: &Service) -> Self {
        let ports = s
            .spec
            .iter()
            .flat_map(|spec| spec.ports.iter().flatten())
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    u16::try_from(p.port).ok()?,
                ))
            })
            .collect();
        ServiceInfo { ports }
    }
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Its address.
    pub ip: IpAddr,
    /// Ready (nil counts as ready, as the API says).
    pub ready: bool,
    /// Terminating (nil counts as not).
    pub terminating: bool,
    /// The pod behind it, when the slice names one.
    pub pod: Option<String>,
}

/// An EndpointSlice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceInfo {
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: String,
    /// `(name, port)` as the slice lists them.
    pub ports: Vec<(String, u16)>,
    /// Its endpoints.
    pub endpoints: Vec<SliceEndpoint>,
}

impl SliceInfo {
    /// From an EndpointSlice; `None` for one that belongs to no Service.
    pub fn from_k8s(s: &EndpointSlice) -> Option<Self> {
        let service = s
            .metadata
            .labels
            .as_ref()?
            .get("kubernetes.io/service-name")?
            .clone();
        let ports = s
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok()?;
                Some((p.name.clone().unwrap_or_default(), port))
            })
            .collect();
        let endpoints = s
            .endpoints
            .iter()
            .filter_map(|e| {
                let ip = e.addresses.first()?.parse().ok()?;
                let c = e.conditions.as_ref();
                Some(SliceEndpoint {
                    ip,
                    ready: c.and_then(|c| c.ready).unwrap_or(true),
                    terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                    pod: e
                        .target_ref
                        .as_ref()
                        .filter(|r| r.kind.as_deref() == Some("Pod"))
                        .and_then(|r| r.name.clone()),
                })
            })
            .collect();
        Some(SliceInfo {
            service,
            ports,
            endpoints,
        })
    }
}

/// A pod's labels and the workload that owns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The owning workload as Istio names it: a ReplicaSet's Deployment or Rollout (the
    /// ReplicaSet name less its pod-template hash), a StatefulSet, DaemonSet or Job, else the
    /// pod itself.
    pub workload: String,
}

impl PodInfo {
    /// From a Pod.
    pub fn from_k8s(p: &Pod) -> Self {
        let labels: BTreeMap<String, String> = p.metadata.labels.clone().unwrap_or_default();
        let owner = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .or_else(|| p.metadata.owner_references.iter().flatten().next());
        let workload = match owner {
            Some(o) if o.kind == "ReplicaSet" => {
                let hash = labels
                    .get("rollouts-pod-template-hash")
                    .or_else(|| labels.get("pod-template-hash"));
                match hash.and_then(|h| o.name.strip_suffix(&format!("-{h}"))) {
                    Some(parent) => parent.to_string(),
                    None => o.name.clone(),
                }
            }
            Some(o) if o.kind == "Job" => o.name.clone(),
            Some(o) => o.name.clone(),
            None => p.metadata.name.clone().unwrap_or_default(),
        };
        PodInfo { labels, workload }
    }
}

/// Everything watched, as kept.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// VirtualServices.
    pub virtual_services: BTreeMap<Key, Object<VirtualServiceSpec>>,
    /// DestinationRules.
    pub destination_rules: BTreeMap<Key, Object<DestinationRuleSpec>>,
    /// Services.
    pub services: BTreeMap<Key, ServiceInfo>,
    /// EndpointSlices, by their own name.
    pub slices: BTreeMap<Key, SliceInfo>,
    /// Pods.
    pub pods: BTreeMap<Key, PodInfo>,
}

impl Cluster {
    /// Adds or replaces an object given as JSON (any of the watched kinds, by its `kind`);
    /// false for another kind or one that does not parse.
    pub fn insert_value(&mut self, v: &serde_json::Value) -> bool {
        let Ok(meta) = ObjectMeta::deserialize(&v["metadata"]) else {
            return false;
        };
        let key = (
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        match v["kind"].as_str() {
            Some("VirtualService") => {
                let o = Object::from_parts(&meta, v.get("spec"));
                self.virtual_services.insert(key, o);
            }
            Some("DestinationRule") => {
                let o = Object::from_parts(&meta, v.get("spec"));
                self.destination_rules.insert(key, o);
            }
            Some("Service") => match Service::deserialize(v) {
                Ok(s) => {
                    self.services.insert(key, ServiceInfo::from_k8s(&s));
                }
                Err(_) => return false,
            },
            Some("EndpointSlice") => match EndpointSlice::deserialize(v)
                .ok()
                .as_ref()
                .and_then(SliceInfo::from_k8s)
            {
                Some(s) => {
                    self.slices.insert(key, s);
                }
                None => return false,
            },
            Some("Pod") => match Pod::deserialize(v) {
                Ok(p) => {
                    self.pods.insert(key, PodInfo::from_k8s(&p));
                }
                Err(_) => return false,
            },
            _ => return false,
        }
        true
    }

    /// Every object of a multi-document YAML text, as [`Cluster::insert_value`] takes them.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let mut c = Cluster::default();
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let v = serde_json::Value::deserialize(doc).map_err(|e| e.to_string())?;
            if v.is_null() {
                continue;
            }
            if !c.insert_value(&v) {
                return Err(format!("cannot take {}", v["kind"]));
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pods_workload_is_named_as_istio_names_it() {
        let pod = |owner: serde_json::Value, labels: serde_json::Value| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "web-7d9f8c-x2x2", "namespace": "shop",
                             "labels": labels, "ownerReferences": owner}
            }))
            .unwrap()
        };
        let rs = |name: &str| {
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name,
                    "uid": "1", "controller": true}])
        };
        let deployment = pod(rs("web-7d9f8c"), json!({"pod-template-hash": "7d9f8c"}));
        assert_eq!(PodInfo::from_k8s(&deployment).workload, "web");
        let rollout = pod(
            rs("web-6b5d4c"),
            json!({"rollouts-pod-template-hash": "6b5d4c"}),
        );
        assert_eq!(PodInfo::from_k8s(&rollout).workload, "web");
        let sts = pod(
            json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "1"}]),
            json!({}),
        );
        assert_eq!(PodInfo::from_k8s(&sts).workload, "db");
        let bare = pod(json!([]), json!({}));
        assert_eq!(PodInfo::from_k8s(&bare).workload, "web-7d9f8c-x2x2");
    }

    #[test]
    fn slices_keep_addresses_conditions_and_pods() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abcde", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "terminating": true}},
                {"addresses": ["10.0.0.3"]}
            ]
        }))
        .unwrap();
        let s = SliceInfo::from_k8s(&slice).unwrap();
        assert_eq!(s.service, "web");
        assert_eq!(s.ports, [("http".to_string(), 8080)]);
        let flags: Vec<(bool, bool, Option<&str>)> = s
            .endpoints
            .iter()
            .map(|e| (e.ready, e.terminating, e.pod.as_deref()))
            .collect();
        assert_eq!(
            flags,
            [
                (true, false, Some("web-1")),
                (false, true, None),
                (true, false, None)
            ]
        );
    }
}
