//! An in-process fake Kubernetes API server for tests.
//!
//! It speaks the real list/watch protocol over plain HTTP/1.1 so that unmodified clients
//! (kube-rs watchers, `kubectl`) can be pointed at it: discovery (plain and aggregated), list
//! with label and field selectors, get, watch with history replay, bookmarks and `410 Expired`,
//! and the write verbs with server-side resourceVersion, uid and generation bookkeeping.
//!
//! Deliberate simplifications, each chosen because clients cope with them:
//! - `limit`/`continue` are ignored: every list is one page, which the protocol allows.
//! - A list answers the current state whatever `resourceVersion` it asks for.
//! - Namespaces need not exist before objects are created in them.
//! - There is no admission, defaulting, schema validation, status subresource, finalizers or
//!   graceful deletion: a DELETE removes the object at once.
//! - Strategic merge patch is an approximation: lists merge by a key chosen by field name (see
//!   [`merge_key`]) rather than by the Go type's struct tags.
//! - Server-side apply (`application/apply-patch+yaml`) and protobuf or CBOR request bodies
//!   answer 415. kubectl sends protobuf only from its typed generators (`kubectl create
//!   namespace`, ...); `apply`, `create -f`, `replace`, `patch`, `label` and `delete` send JSON.
//! - Lists are always JSON lists, never the `Table` kubectl asks for when printing: it falls
//!   back to its own NAME/AGE columns.
//! - OpenAPI v3 documents carry paths and operations but no schemas, and there is no OpenAPI
//!   v2 (404), which kubectl tolerates once v3 says the server validates fields itself.
//! - The watch history is never trimmed; [`FakeKube::compact`] only moves the point before
//!   which new watches are refused, so open watches keep every event they are owed.
#![allow(dead_code)]

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Resource catalogue
// ---------------------------------------------------------------------------------------------

/// One API resource the fake serves.
#[derive(Debug)]
pub struct Resource {
    /// `""` for the core group.
    pub group: &'static str,
    /// Most preferred first: discovery lists them in this order.
    pub versions: &'static [&'static str],
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
}

impl Resource {
    fn group_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The name the real server uses in messages: `pods`, `virtualservices.networking.istio.io`.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// Istio serves its networking CRDs under all three versions with one storage version, so
/// clients written against any of them see the same objects.
const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const ISTIO_CATEGORIES: &[&str] = &["istio-io", "networking-istio-io"];

pub static RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        versions: &["v1"],
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: &[],
    },
    Resource {
        group: "",
        versions: &["v1"],
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
    },
    Resource {
        group: "",
        versions: &["v1"],
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
    },
    Resource {
        group: "discovery.k8s.io",
        versions: &["v1"],
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        short_names: &[],
        categories: &[],
    },
    Resource {
        group: "networking.istio.io",
        versions: ISTIO_VERSIONS,
        plural: "destinationrules",
        singular: "destinationrule",
        kind: "DestinationRule",
        namespaced: true,
        short_names: &["dr"],
        categories: ISTIO_CATEGORIES,
    },
    Resource {
        group: "networking.istio.io",
        versions: ISTIO_VERSIONS,
        plural: "gateways",
        singular: "gateway",
        kind: "Gateway",
        namespaced: true,
        short_names: &["gw"],
        categories: ISTIO_CATEGORIES,
    },
    Resource {
        group: "networking.istio.io",
        versions: ISTIO_VERSIONS,
        plural: "virtualservices",
        singular: "virtualservice",
        kind: "VirtualService",
        namespaced: true,
        short_names: &["vs"],
        categories: ISTIO_CATEGORIES,
    },
];

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn resource_by_path(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.plural == plural && r.versions.contains(&version))
}

fn resource_by_kind(api_version: &str, kind: &str) -> Option<(usize, String)> {
    let (group, version) = split_api_version(api_version);
    let i = RESOURCES
        .iter()
        .position(|r| r.group == group && r.kind == kind && r.versions.contains(&version))?;
    Some((i, version.to_string()))
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

/// Non-core groups in catalogue order, each with its versions in preference order.
fn groups() -> Vec<(&'static str, &'static [&'static str])> {
    let mut out: Vec<(&'static str, &'static [&'static str])> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.iter().any(|(g, _)| *g == r.group) {
            out.push((r.group, r.versions));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Errors as the API server reports them
// ---------------------------------------------------------------------------------------------

/// A failure answered as a `Status` object, which is what clients parse for the reason.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, r: &Resource, name: &str) -> Self {
        let mut d = Map::new();
        d.insert("name".into(), json!(name));
        if !r.group.is_empty() {
            d.insert("group".into(), json!(r.group));
        }
        d.insert("kind".into(), json!(r.plural));
        self.details = Some(Value::Object(d));
        self
    }

    fn not_found(r: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", r.qualified()),
        )
        .with_details(r, name)
    }

    fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    fn already_exists(r: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", r.qualified()),
        )
        .with_details(r, name)
    }

    fn conflict(r: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                r.qualified()
            ),
        )
        .with_details(r, name)
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }

    fn response(&self) -> Response<Body> {
        json_response(
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &self.status(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Store: objects, one resourceVersion counter, and the event history watches replay
// ---------------------------------------------------------------------------------------------

/// `(resource index, namespace or "" when cluster-scoped, name)`; ordered like the real
/// server's etcd keys, so lists come out sorted by namespace then name.
type Key = (usize, String, String);

/// One committed write. `old == None` is a create and `new == None` a delete: a watcher with a
/// selector needs both sides to tell whether the object entered or left its view.
struct Event {
    rv: u64,
    key: Key,
    old: Option<Value>,
    new: Option<Value>,
}

struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Event>,
    /// Watches that start from before this resourceVersion get `410 Expired`.
    compacted: u64,
    seq: u64,
    salt: u64,
    /// Carries the current resourceVersion to open watches; sent under the store lock so that
    /// a watch subscribing under the same lock cannot miss a write.
    rv_tx: watch::Sender<u64>,
}

impl Store {
    fn meta(obj: &Value) -> &Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        obj.get("metadata")
            .and_then(Value::as_object)
            .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
    }

    fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
        Self::meta(obj)
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
        let o = obj
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("the body is not a JSON object"))?;
        let m = o.entry("metadata").or_insert_with(|| json!({}));
        if !m.is_object() {
            *m = json!({});
        }
        Ok(m.as_object_mut().expect("metadata is an object"))
    }

    fn next_uid(&mut self) -> String {
        self.seq += 1;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (self.salt >> 32) as u32,
            (self.salt >> 16) as u16,
            (self.salt & 0xfff) as u16,
            (self.seq >> 48) & 0xfff,
            self.seq & 0xffff_ffff_ffff
        )
    }

    /// Records one write: bumps the global counter, stamps it on the object, logs the event.
    fn commit(&mut self, key: Key, new: Option<Value>) -> (u64, Option<Value>) {
        self.rv += 1;
        let rv = self.rv;
        let new = new.map(|mut o| {
            if let Ok(m) = Self::meta_mut(&mut o) {
                m.insert("resourceVersion".into(), json!(rv.to_string()));
            }
            o
        });
        let old = match &new {
            Some(o) => self.objects.insert(key.clone(), o.clone()),
            None => self.objects.remove(&key),
        };
        self.log.push(Event {
            rv,
            key,
            old: old.clone(),
            new: new.clone(),
        });
        self.rv_tx.send_replace(rv);
        (rv, old)
    }

    /// Fills in what the server owns on create and stores the object.
    fn create(&mut self, r: usize, ns: &str, mut obj: Value, dry: bool) -> Result<Value, ApiError> {
        let res = &RESOURCES[r];
        check_kind(res, &obj)?;
        let seq = self.seq;
        let uid = self.next_uid();
        let m = Self::meta_mut(&mut obj)?;
        let mut name = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            let prefix = m.get("generateName").and_then(Value::as_str).unwrap_or("");
            if prefix.is_empty() {
                return Err(ApiError::invalid(format!(
                    "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    res.kind
                )));
            }
            name = format!("{prefix}{}", name_suffix(seq ^ self.salt));
            m.insert("name".into(), json!(name));
        }
        if res.namespaced {
            let body_ns = m.get("namespace").and_then(Value::as_str).unwrap_or("");
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
        m.insert("uid".into(), json!(uid));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        m.insert("generation".into(), json!(1));
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
        let key = (r, ns_of(res, ns), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(res, &name));
        }
        strip_type(&mut obj);
        if dry {
            return Ok(obj);
        }
        self.commit(key.clone(), Some(obj));
        Ok(self.objects[&key].clone())
    }

    /// Replaces an object. A resourceVersion in the body is a precondition, as on the real
    /// server; without one the update is unconditional.
    fn update(
        &mut self,
        r: usize,
        ns: &str,
        name: &str,
        mut obj: Value,
        dry: bool,
    ) -> Result<Value, ApiError> {
        let res = &RESOURCES[r];
        check_kind(res, &obj)?;
        let key = (r, ns_of(res, ns), name.to_string());
        let old = self
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(res, name))?;
        let m = Self::meta_mut(&mut obj)?;
        let body_name = m.get("name").and_then(Value::as_str).unwrap_or("");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        if res.namespaced {
            let body_ns = m.get("namespace").and_then(Value::as_str).unwrap_or("");
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
        let want_rv = m
            .get("resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !want_rv.is_empty() && want_rv != Self::meta_str(old, "resourceVersion") {
            return Err(ApiError::conflict(res, name));
        }
        m.insert("name".into(), json!(name));
        let old_meta = Self::meta(old);
        for owned in ["uid", "creationTimestamp"] {
            match old_meta.get(owned) {
                Some(v) => m.insert(owned.into(), v.clone()),
                None => m.remove(owned),
            };
        }
        let generation = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        // Like a CRD with a status subresource: only a spec change is a new generation.
        let spec_changed = old.get("spec") != obj.get("spec");
        let m = Self::meta_mut(&mut obj)?;
        m.insert(
            "generation".into(),
            json!(generation + i64::from(spec_changed)),
        );
        m.insert(
            "resourceVersion".into(),
            json!(Self::meta_str(old, "resourceVersion")),
        );
        strip_type(&mut obj);
        // The real server skips writes that change nothing: no new resourceVersion, no event.
        if dry || &obj == old {
            return Ok(obj);
        }
        self.commit(key.clone(), Some(obj));
        Ok(self.objects[&key].clone())
    }

    fn remove(
        &mut self,
        r: usize,
        ns: &str,
        name: &str,
        preconditions: &Value,
        dry: bool,
    ) -> Result<Value, ApiError> {
        let res = &RESOURCES[r];
        let key = (r, ns_of(res, ns), name.to_string());
        let old = self
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(res, name))?;
        for (field, label) in [("resourceVersion", "ResourceVersion"), ("uid", "UID")] {
            if let Some(want) = preconditions.get(field).and_then(Value::as_str) {
                let have = Self::meta_str(old, field);
                if want != have {
                    return Err(ApiError::new(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: \
                             {label} in precondition: {want}, {label} in object meta: {have}",
                            res.qualified()
                        ),
                    )
                    .with_details(res, name));
                }
            }
        }
        if dry {
            return Ok(old.clone());
        }
        let (rv, old) = self.commit(key, None);
        let mut old = old.expect("the object existed");
        // What the real server hands back (and watchers see): the last state at the delete's
        // resourceVersion.
        if let Ok(m) = Self::meta_mut(&mut old) {
            m.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        Ok(old)
    }

    fn list(&self, r: usize, ns: Option<&str>, sel: &Selectors) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((kr, kns, _), obj)| {
                *kr == r && ns.is_none_or(|n| n == kns) && sel.matches(obj)
            })
            .map(|(_, o)| o.clone())
            .collect()
    }
}

fn ns_of(res: &Resource, ns: &str) -> String {
    if res.namespaced {
        ns.to_string()
    } else {
        String::new()
    }
}

/// Objects are stored once for every version, so the type fields are written on the way out.
fn strip_type(obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        o.remove("kind");
        o.remove("apiVersion");
    }
}

fn check_kind(res: &Resource, obj: &Value) -> Result<(), ApiError> {
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != res.kind => Err(ApiError::bad_request(format!(
            "the kind of the object ({k}) does not match the resource ({})",
            res.kind
        ))),
        _ => Ok(()),
    }
}

fn render(obj: &Value, r: usize, version: &str) -> Value {
    let res = &RESOURCES[r];
    let mut out = Map::new();
    out.insert("kind".into(), json!(res.kind));
    out.insert("apiVersion".into(), json!(res.group_version(version)));
    if let Some(o) = obj.as_object() {
        for (k, v) in o {
            if k != "kind" && k != "apiVersion" {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(out)
}

fn name_suffix(mut n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    n = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..5)
        .map(|i| ALPHABET[((n >> (i * 8)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed `labelSelector` plus `fieldSelector`; all requirements must hold.
#[derive(Debug, Clone, Default)]
struct Selectors {
    labels: Vec<LabelReq>,
    /// `(dotted path, equal?, value)`.
    fields: Vec<(String, bool, String)>,
}

impl Selectors {
    fn parse(label: &str, field: &str) -> Result<Self, ApiError> {
        let mut s = Selectors::default();
        for term in split_top_level(label) {
            s.labels.push(parse_label_term(term).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unable to parse requirement: found '{term}', expected: valid label selector"
                ))
            })?);
        }
        for term in split_top_level(field) {
            let (path, eq, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{field}'; can't understand '{term}'"
                )));
            };
            s.fields
                .push((path.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(s)
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = Store::meta(obj).get("labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::Ne(k, v) => label(k) != Some(v.as_str()),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
            LabelReq::Gt(k, n) => label(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            LabelReq::Lt(k, n) => label(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        });
        labels_ok
            && self
                .fields
                .iter()
                .all(|(path, eq, value)| (field_value(obj, path) == *value) == *eq)
    }
}

/// Splits on commas outside parentheses, dropping empty terms.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.retain(|t| !t.is_empty());
    out
}

fn parse_label_term(term: &str) -> Option<LabelReq> {
    let valid = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    let key = |k: &str| valid(k.trim()).then(|| k.trim().to_string());
    if let Some(open) = term.find('(') {
        let close = term.rfind(')')?;
        let mut head = term[..open].split_whitespace();
        let (k, op) = (head.next()?, head.next()?);
        if head.next().is_some() {
            return None;
        }
        let values: Vec<String> = term[open + 1..close]
            .split(',')
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect();
        return match op {
            "in" => Some(LabelReq::In(key(k)?, values)),
            "notin" => Some(LabelReq::NotIn(key(k)?, values)),
            _ => None,
        };
    }
    if let Some(k) = term.strip_prefix('!') {
        return Some(LabelReq::NotExists(key(k)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Some(LabelReq::Ne(key(k)?, v.trim().to_string()));
    }
    if let Some((k, v)) = term.split_once("==") {
        return Some(LabelReq::Eq(key(k)?, v.trim().to_string()));
    }
    if let Some((k, v)) = term.split_once('=') {
        return Some(LabelReq::Eq(key(k)?, v.trim().to_string()));
    }
    if let Some((k, v)) = term.split_once('>') {
        return Some(LabelReq::Gt(key(k)?, v.trim().parse().ok()?));
    }
    if let Some((k, v)) = term.split_once('<') {
        return Some(LabelReq::Lt(key(k)?, v.trim().parse().ok()?));
    }
    Some(LabelReq::Exists(key(term)?))
}

/// A field selector compares strings; a missing field reads as empty, which is also how a
/// cluster-scoped object's `metadata.namespace` reads.
fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Patches
// ---------------------------------------------------------------------------------------------

/// RFC 7386 JSON merge patch: objects merge, `null` deletes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("just made an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The key strategic merge uses to pair list elements. The real server reads it from struct
/// tags; the field name decides it for the types this fake serves.
fn merge_key(field: &str, sample: &Value) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => Some("name"),
        "ports" if sample.get("containerPort").is_some() => Some("containerPort"),
        "ports" if sample.get("port").is_some() => Some("port"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        _ => None,
    }
}

/// Lists of scalars that strategic merge treats as sets rather than replacing.
fn is_primitive_set(field: &str) -> bool {
    field == "finalizers"
}

/// Strategic merge patch, enough for `kubectl apply` on core types: maps merge, `null`
/// deletes, keyed lists merge element-wise, and the `$patch`, `$retainKeys`,
/// `$deleteFromPrimitiveList/` and `$setElementOrder/` directives are honoured or dropped.
fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("just made an object");
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(gone)) =
                (t.get_mut(field).and_then(Value::as_array_mut), v.as_array())
            {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() || v.get("$patch").and_then(Value::as_str) == Some("delete") {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(Value::Array(cur)), Value::Array(items)) => merge_list(k, cur, items),
            (Some(cur @ Value::Object(_)), Value::Object(_)) => strategic_merge(cur, v),
            _ => {
                t.insert(k.clone(), strip_directives(v));
            }
        }
    }
    for (k, order) in p {
        if let (Some(field), Some(order)) = (k.strip_prefix("$setElementOrder/"), order.as_array())
        {
            if let Some(Value::Array(list)) = t.get_mut(field) {
                apply_element_order(field, list, order);
            }
        }
    }
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        t.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
}

fn merge_list(field: &str, cur: &mut Vec<Value>, items: &[Value]) {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *cur = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(strip_directives)
            .collect();
        return;
    }
    if is_primitive_set(field) {
        for i in items {
            if !cur.contains(i) {
                cur.push(i.clone());
            }
        }
        return;
    }
    let Some(key) = items.first().and_then(|s| merge_key(field, s)) else {
        *cur = items.iter().map(strip_directives).collect();
        return;
    };
    for item in items {
        let id = item.get(key);
        let pos = cur.iter().position(|c| c.get(key) == id);
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                cur.remove(i);
            }
            (Some(i), false) => strategic_merge(&mut cur[i], item),
            (None, false) => cur.push(strip_directives(item)),
            (None, true) => {}
        }
    }
}

/// `$setElementOrder/<field>` lists the patched list's intended order (by merge key, or by
/// value for scalars). Elements it does not name keep their relative order after those it does.
fn apply_element_order(field: &str, list: &mut [Value], order: &[Value]) {
    let key = order.first().and_then(|s| merge_key(field, s));
    let id = |v: &Value| match key {
        Some(k) => v.get(k).cloned(),
        None => Some(v.clone()),
    };
    let wanted: Vec<Option<Value>> = order.iter().map(id).collect();
    // A stable sort, so unnamed elements keep their relative order.
    list.sort_by_key(|v| {
        let i = id(v);
        wanted
            .iter()
            .position(|w| i.is_some() && *w == i)
            .unwrap_or(wanted.len())
    });
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// RFC 6902 JSON patch.
fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch must be an array")?;
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).ok_or("op missing")?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("path missing")?;
        let from = op.get("from").and_then(Value::as_str);
        let value = || op.get("value").cloned().ok_or("value missing");
        match name {
            "add" => pointer_add(doc, path, value()?)?,
            "remove" => {
                pointer_remove(doc, path)?;
            }
            "replace" => {
                let slot = doc
                    .pointer_mut(path)
                    .ok_or_else(|| format!("replace: {path} does not exist"))?;
                *slot = value()?;
            }
            "move" => {
                let v = pointer_remove(doc, from.ok_or("from missing")?)?;
                pointer_add(doc, path, v)?;
            }
            "copy" => {
                let from = from.ok_or("from missing")?;
                let v = doc
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| format!("copy: {from} does not exist"))?;
                pointer_add(doc, path, v)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(format!("test failed at {path}"));
                }
            }
            other => return Err(format!("unknown op {other}")),
        }
    }
    Ok(())
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("bad pointer {path}"))?;
    Ok((
        parent.to_string(),
        last.replace("~1", "/").replace("~0", "~"),
    ))
}

fn pointer_add(doc: &mut Value, path: &str, v: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(&parent) {
        Some(Value::Object(o)) => {
            o.insert(last, v);
        }
        Some(Value::Array(a)) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("bad index {last}"))?
            };
            if i > a.len() {
                return Err(format!("index {i} out of range"));
            }
            a.insert(i, v);
        }
        _ => return Err(format!("add: parent of {path} does not exist")),
    }
    Ok(())
}

fn pointer_remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let gone = match doc.pointer_mut(&parent) {
        Some(Value::Object(o)) => o.remove(&last),
        Some(Value::Array(a)) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Some(a.remove(i)),
            _ => None,
        },
        _ => None,
    };
    gone.ok_or_else(|| format!("remove: {path} does not exist"))
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing
// ---------------------------------------------------------------------------------------------

type Body = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    json_response_as(code, v, "application/json")
}

fn json_response_as(code: StatusCode, v: &Value, content_type: &str) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(full(serde_json::to_vec(v).expect("JSON values serialise")))
        .expect("static response parts are valid")
}

/// A response body fed line by line from a watch task; it ends when the task drops its sender.
struct LineBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for LineBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// Query parameters, percent-decoded; later duplicates are ignored like Go's `Get`.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(
            self.get(k),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = match (b[i], b.get(i + 1), b.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match (escaped, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, c) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

struct Inner {
    addr: SocketAddr,
    store: Mutex<Store>,
    requests: Mutex<Vec<String>>,
    down: AtomicBool,
    aggregated_discovery: AtomicBool,
    bookmark_interval: Mutex<Duration>,
    watches: AtomicUsize,
    /// Bumped to end every open watch (drop_watches, outages).
    epoch: watch::Sender<u64>,
    /// Never sent to: its sender lives in [`FakeKube`], and its closing stops every task.
    shutdown: watch::Receiver<()>,
}

/// The fake API server. Dropping it stops the listener, every connection and every watch.
pub struct FakeKube {
    inner: Arc<Inner>,
    _shutdown: watch::Sender<()>,
}

impl FakeKube {
    /// Binds 127.0.0.1:0 and serves on the current tokio runtime.
    pub async fn start() -> FakeKube {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        let salt = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(addr.port());
        let inner = Arc::new(Inner {
            addr,
            store: Mutex::new(Store {
                rv: 0,
                objects: BTreeMap::new(),
                log: Vec::new(),
                compacted: 0,
                seq: 0,
                salt,
                rv_tx: watch::channel(0).0,
            }),
            requests: Mutex::new(Vec::new()),
            down: AtomicBool::new(false),
            aggregated_discovery: AtomicBool::new(true),
            bookmark_interval: Mutex::new(Duration::from_secs(1)),
            watches: AtomicUsize::new(0),
            epoch: watch::channel(0).0,
            shutdown: shutdown_rx,
        });
        let accept_inner = inner.clone();
        tokio::spawn(async move {
            let mut stop = accept_inner.shutdown.clone();
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                    _ = stop.changed() => return,
                };
                let inner = accept_inner.clone();
                tokio::spawn(async move {
                    let mut stop = inner.shutdown.clone();
                    let svc_inner = inner.clone();
                    let svc = service_fn(move |req| handle(svc_inner.clone(), req));
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        FakeKube {
            inner,
            _shutdown: shutdown_tx,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// Writes `dir/kubeconfig`: one cluster at [`Self::url`], no credentials, namespace `default`.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("create kubeconfig dir");
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
  - name: fake
    cluster:
      server: {url}
users:
  - name: fake
    user: {{}}
contexts:
  - name: fake
    context:
      cluster: fake
      user: fake
      namespace: default
current-context: fake
preferences: {{}}
",
            url = self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Creates the object, or replaces the one with the same apiVersion/kind/namespace/name
    /// unconditionally. A namespaced object without a namespace goes to `default`. Returns the
    /// stored object as the server would serve it. Panics on an unknown kind: it is a test bug.
    pub fn apply(&self, obj: Value) -> Value {
        let api_version = obj["apiVersion"].as_str().unwrap_or("").to_string();
        let kind = obj["kind"].as_str().unwrap_or("").to_string();
        let (r, version) = resource_by_kind(&api_version, &kind)
            .unwrap_or_else(|| panic!("fake kube serves no {kind} in {api_version}"));
        let res = &RESOURCES[r];
        let ns = match Store::meta_str(&obj, "namespace") {
            "" if res.namespaced => "default".to_string(),
            ns => ns.to_string(),
        };
        let name = Store::meta_str(&obj, "name").to_string();
        assert!(!name.is_empty(), "apply needs metadata.name: {obj}");
        let mut obj = obj;
        if let Ok(m) = Store::meta_mut(&mut obj) {
            m.remove("resourceVersion");
        }
        let mut store = self.inner.store.lock().unwrap();
        let exists = store
            .objects
            .contains_key(&(r, ns_of(res, &ns), name.clone()));
        let stored = if exists {
            store.update(r, &ns, &name, obj, false)
        } else {
            store.create(r, &ns, obj, false)
        };
        render(
            &stored.unwrap_or_else(|e| panic!("apply {kind} {ns}/{name}: {}", e.message)),
            r,
            &version,
        )
    }

    /// [`Self::apply`] for each document of a multi-document YAML string.
    pub fn apply_yaml(&self, yaml: &str) -> Vec<Value> {
        use serde::Deserialize;
        serde_yaml_ng::Deserializer::from_str(yaml)
            .map(|doc| Value::deserialize(doc).expect("valid YAML"))
            .filter(|v| !v.is_null())
            .map(|v| self.apply(v))
            .collect()
    }

    /// The stored object; `ns` is ignored for cluster-scoped kinds.
    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let (r, version) = resource_by_kind(api_version, kind)?;
        let key = (r, ns_of(&RESOURCES[r], ns), name.to_string());
        let store = self.inner.store.lock().unwrap();
        store.objects.get(&key).map(|o| render(o, r, &version))
    }

    /// Every object of a kind, in all namespaces.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let Some((r, version)) = resource_by_kind(api_version, kind) else {
            return Vec::new();
        };
        let store = self.inner.store.lock().unwrap();
        store
            .list(r, None, &Selectors::default())
            .iter()
            .map(|o| render(o, r, &version))
            .collect()
    }

    /// Deletes the object and returns its last state, or `None` if there was none.
    pub fn delete(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let (r, version) = resource_by_kind(api_version, kind)?;
        let mut store = self.inner.store.lock().unwrap();
        store
            .remove(r, ns, name, &Value::Null, false)
            .ok()
            .map(|o| render(&o, r, &version))
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.store.lock().unwrap().rv
    }

    /// Forgets history up to now: a watch from any older resourceVersion gets `410 Expired`.
    pub fn compact(&self) {
        let mut store = self.inner.store.lock().unwrap();
        store.compacted = store.rv;
    }

    /// Ends every open watch stream now; clients have to re-watch.
    pub fn drop_watches(&self) {
        self.inner.epoch.send_modify(|e| *e += 1);
    }

    /// While down every request gets `503` and open watches are closed, like an API server
    /// outage behind a load balancer.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
        if down {
            self.drop_watches();
        }
    }

    /// How often watches that allow bookmarks get one (1 s by default); applies to watches
    /// opened afterwards.
    pub fn set_bookmark_interval(&self, every: Duration) {
        *self.inner.bookmark_interval.lock().unwrap() = every;
    }

    /// Whether discovery answers the aggregated (`apidiscovery.k8s.io/v2`) form when a client
    /// asks for it (on by default, as on real servers since 1.30). Off, clients fall back to
    /// the per-group documents.
    pub fn set_aggregated_discovery(&self, on: bool) {
        self.inner.aggregated_discovery.store(on, Ordering::SeqCst);
    }

    /// Every request so far as `METHOD /path?query`, in arrival order.
    pub fn requests(&self) -> Vec<String> {
        self.inner.requests.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.inner.requests.lock().unwrap().clear();
    }

    /// Watch streams open right now.
    pub fn watch_count(&self) -> usize {
        self.inner.watches.load(Ordering::SeqCst)
    }
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let line = format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    inner.requests.lock().unwrap().push(line);
    if inner.down.load(Ordering::SeqCst) {
        return Ok(
            ApiError::new(503, "ServiceUnavailable", "the fake API server is down").response(),
        );
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(route(&inner, &parts, &body).unwrap_or_else(|e| e.response()))
}

fn route(
    inner: &Arc<Inner>,
    req: &http::request::Parts,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let path = req.uri.path();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query = Query::parse(req.uri.query());
    let get = req.method == Method::GET;
    match segs.as_slice() {
        ["version"] if get => Ok(json_response(StatusCode::OK, &version_info())),
        ["healthz" | "livez" | "readyz"] if get => Ok(Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(full("ok"))
            .expect("valid response")),
        ["api"] if get => Ok(discovery(inner, req, true)),
        ["apis"] if get => Ok(discovery(inner, req, false)),
        ["api", "v1"] if get => Ok(json_response(StatusCode::OK, &resource_list("", "v1"))),
        ["apis", g] if get => api_group(g)
            .map(|v| json_response(StatusCode::OK, &v))
            .ok_or_else(ApiError::no_route),
        ["apis", g, v] if get => {
            let list = resource_list(g, v);
            if list["resources"].as_array().is_some_and(|a| a.is_empty()) {
                return Err(ApiError::no_route());
            }
            Ok(json_response(StatusCode::OK, &list))
        }
        ["openapi", "v3"] if get => Ok(json_response(StatusCode::OK, &openapi_v3_root())),
        ["openapi", "v3", "api", "v1"] if get => {
            Ok(json_response(StatusCode::OK, &openapi_v3_doc("", "v1")))
        }
        ["openapi", "v3", "apis", g, v]
            if get
                && resource_list(g, v)["resources"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty()) =>
        {
            Ok(json_response(StatusCode::OK, &openapi_v3_doc(g, v)))
        }
        ["api", "v1", rest @ ..] => resource_request(inner, req, &query, body, "", "v1", rest),
        ["apis", g, v, rest @ ..] => resource_request(inner, req, &query, body, g, v, rest),
        _ => Err(ApiError::no_route()),
    }
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-splitgate-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn with_optional_lists(mut v: Map<String, Value>, r: &Resource) -> Value {
    if !r.short_names.is_empty() {
        v.insert("shortNames".into(), json!(r.short_names));
    }
    if !r.categories.is_empty() {
        v.insert("categories".into(), json!(r.categories));
    }
    Value::Object(v)
}

fn resource_list(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.versions.contains(&version))
        .map(|r| {
            let m = json!({
                "name": r.plural,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": VERBS,
            });
            with_optional_lists(m.as_object().expect("object").clone(), r)
        })
        .collect();
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn api_group(group: &str) -> Option<Value> {
    let (g, versions) = groups().into_iter().find(|(g, _)| *g == group)?;
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": g,
        "versions": vs,
        "preferredVersion": vs[0],
    }))
}

/// `/api` and `/apis`. Clients that can take the aggregated form say so in Accept and tell the
/// forms apart by the Content-Type of the answer, so plain JSON is always a valid reply.
fn discovery(inner: &Inner, req: &http::request::Parts, core: bool) -> Response<Body> {
    // The first media range that asks for the aggregated form decides its version, as the
    // client lists them in preference order.
    let aggregated_version = req
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|range| range.split(';').map(str::trim).collect::<Vec<_>>())
        .filter(|params| {
            params.contains(&"as=APIGroupDiscoveryList")
                && params.contains(&"g=apidiscovery.k8s.io")
        })
        .find_map(
            |params| match params.iter().find_map(|p| p.strip_prefix("v=")) {
                Some(v @ ("v2" | "v2beta1")) => Some(v.to_string()),
                _ => None,
            },
        );
    if let Some(version) =
        aggregated_version.filter(|_| inner.aggregated_discovery.load(Ordering::SeqCst))
    {
        return json_response_as(
            StatusCode::OK,
            &aggregated_discovery(core, &version),
            &format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"),
        );
    }
    if core {
        return json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": inner.addr.to_string()}
                ],
            }),
        );
    }
    let groups: Vec<Value> = groups()
        .into_iter()
        .filter_map(|(g, _)| api_group(g))
        .map(|mut g| {
            let o = g.as_object_mut().expect("object");
            o.remove("kind");
            o.remove("apiVersion");
            g
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
    )
}

fn aggregated_discovery(core: bool, doc_version: &str) -> Value {
    let group_list: Vec<(&str, &[&str])> = if core {
        vec![("", &["v1"][..])]
    } else {
        groups()
    };
    let items: Vec<Value> = group_list
        .into_iter()
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = RESOURCES
                        .iter()
                        .filter(|r| r.group == g && r.versions.contains(v))
                        .map(|r| {
                            let m = json!({
                                "resource": r.plural,
                                "responseKind": {"group": g, "version": v, "kind": r.kind},
                                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": r.singular,
                                "verbs": VERBS,
                            });
                            with_optional_lists(m.as_object().expect("object").clone(), r)
                        })
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let mut meta = Map::new();
            if !g.is_empty() {
                meta.insert("name".into(), json!(g));
            }
            json!({"metadata": meta, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{doc_version}"),
        "metadata": {},
        "items": items,
    })
}

/// The OpenAPI v3 index: one document per group-version. kubectl reads it to learn that the
/// server validates fields itself (`fieldValidation` on PATCH), which spares it the protobuf
/// OpenAPI v2 download it otherwise needs for client-side validation.
fn openapi_v3_root() -> Value {
    let mut gvs = vec![("api/v1".to_string(), openapi_v3_doc("", "v1"))];
    for (g, versions) in groups() {
        for v in versions {
            gvs.push((format!("apis/{g}/{v}"), openapi_v3_doc(g, v)));
        }
    }
    let paths: Map<String, Value> = gvs
        .into_iter()
        .map(|(path, doc)| {
            // Clients cache a document by this hash, so it must change with the content.
            let hash = fnv1a(&serde_json::to_vec(&doc).expect("JSON values serialise"));
            let url = format!("/openapi/v3/{path}?hash={hash:016X}");
            (path, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// Paths and operations only, no schemas: enough for clients that look up which patch types
/// and query parameters an operation takes. Without a schema kubectl computes strategic merge
/// patches from its compiled-in types, so no operation offers that patch type here.
fn openapi_v3_doc(group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.versions.contains(&version))
    {
        let gvk = json!({"group": group, "version": version, "kind": r.kind});
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let collection = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{prefix}/{}", r.plural)
        };
        let field_validation = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
        ]);
        let op = |action: &str, body: Option<&[&str]>| {
            let mut o = json!({
                "operationId": format!("{action}{}", r.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "responses": {"200": {"description": "OK"}},
            });
            if let Some(types) = body {
                let content: Map<String, Value> =
                    types.iter().map(|t| (t.to_string(), json!({}))).collect();
                o["requestBody"] = json!({"content": content, "required": true});
                o["parameters"] = field_validation.clone();
            }
            o
        };
        paths.insert(
            collection.clone(),
            json!({"get": op("list", None), "post": op("post", Some(&["*/*"]))}),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": op("get", None),
                "put": op("put", Some(&["*/*"])),
                "patch": op("patch", Some(&["application/json-patch+json", "application/merge-patch+json"])),
                "delete": op("delete", None),
            }),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": version_info()["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {}},
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn decode_body(req: &http::request::Parts, body: &[u8]) -> Result<Value, ApiError> {
    let ct = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.contains("protobuf") || ct.contains("cbor") {
        // kubectl's typed generators (`kubectl create namespace`, ...) send core types as
        // protobuf; decoding that needs every type's schema, which a fake cannot carry.
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the fake API server only accepts JSON or YAML bodies, not {ct}"),
        ));
    }
    if ct.contains("yaml") {
        return serde_yaml_ng::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid YAML body: {e}")));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn resource_request(
    inner: &Arc<Inner>,
    req: &http::request::Parts,
    query: &Query,
    body: &[u8],
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Response<Body>, ApiError> {
    // The deprecated `/watch/` path prefix still exists on real servers.
    let (watch_path, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, r @ ..] if !r.is_empty() => (Some(*ns), r),
        r => (None, r),
    };
    let (plural, name) = match rest {
        [p] => (*p, None),
        [p, n] => (*p, Some(*n)),
        _ => return Err(ApiError::no_route()),
    };
    let r = resource_by_path(group, version, plural).ok_or_else(ApiError::no_route)?;
    let res = &RESOURCES[r];
    // A cluster-scoped kind has no namespace in its paths, and a namespaced object is only
    // addressed with one (its kind is listed across namespaces without).
    if matches!(
        (res.namespaced, ns, name),
        (false, Some(_), _) | (true, None, Some(_))
    ) {
        return Err(ApiError::no_route());
    }
    let ns_str = ns.unwrap_or("");
    let dry = query.get("dryRun") == Some("All");
    let watching = watch_path || query.flag("watch");
    let m = &req.method;
    match name {
        None if *m == Method::GET && watching => start_watch(inner, query, r, version, ns, None),
        None if *m == Method::GET => {
            let sel = selectors(query)?;
            let store = inner.store.lock().unwrap();
            let items: Vec<Value> = store
                .list(r, ns, &sel)
                .iter()
                .map(|o| render(o, r, version))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &list_doc(r, version, store.rv, items),
            ))
        }
        None if *m == Method::POST => {
            if ns.is_none() && res.namespaced {
                return Err(ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "create needs a namespace",
                ));
            }
            let obj = decode_body(req, body)?;
            let created = inner.store.lock().unwrap().create(r, ns_str, obj, dry)?;
            Ok(json_response(
                StatusCode::CREATED,
                &render(&created, r, version),
            ))
        }
        None if *m == Method::DELETE => {
            let sel = selectors(query)?;
            let mut store = inner.store.lock().unwrap();
            let mut gone = Vec::new();
            for obj in store.list(r, ns, &sel) {
                let (ons, oname) = (
                    Store::meta_str(&obj, "namespace").to_string(),
                    Store::meta_str(&obj, "name").to_string(),
                );
                gone.push(render(
                    &store.remove(r, &ons, &oname, &Value::Null, dry)?,
                    r,
                    version,
                ));
            }
            Ok(json_response(
                StatusCode::OK,
                &list_doc(r, version, store.rv, gone),
            ))
        }
        Some(name) if *m == Method::GET && watching => {
            start_watch(inner, query, r, version, ns, Some(name))
        }
        Some(name) if *m == Method::GET => {
            let store = inner.store.lock().unwrap();
            let key = (r, ns_of(res, ns_str), name.to_string());
            let obj = store
                .objects
                .get(&key)
                .ok_or_else(|| ApiError::not_found(res, name))?;
            Ok(json_response(StatusCode::OK, &render(obj, r, version)))
        }
        Some(name) if *m == Method::PUT => {
            let obj = decode_body(req, body)?;
            let updated = inner
                .store
                .lock()
                .unwrap()
                .update(r, ns_str, name, obj, dry)?;
            Ok(json_response(StatusCode::OK, &render(&updated, r, version)))
        }
        Some(name) if *m == Method::PATCH => {
            let ct = req
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let ct = ct.split(';').next().unwrap_or("").trim().to_string();
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid patch: {e}")))?;
            let mut store = inner.store.lock().unwrap();
            let key = (r, ns_of(res, ns_str), name.to_string());
            let mut obj = render(
                store
                    .objects
                    .get(&key)
                    .ok_or_else(|| ApiError::not_found(res, name))?,
                r,
                version,
            );
            match ct.as_str() {
                "application/merge-patch+json" => merge_patch(&mut obj, &patch),
                "application/strategic-merge-patch+json" => strategic_merge(&mut obj, &patch),
                "application/json-patch+json" => {
                    json_patch(&mut obj, &patch).map_err(ApiError::invalid)?
                }
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other})"),
                    ))
                }
            }
            let updated = store.update(r, ns_str, name, obj, dry)?;
            Ok(json_response(StatusCode::OK, &render(&updated, r, version)))
        }
        Some(name) if *m == Method::DELETE => {
            let opts: Value = if body.is_empty() {
                Value::Null
            } else {
                decode_body(req, body)?
            };
            let pre = opts.get("preconditions").cloned().unwrap_or(Value::Null);
            let gone = inner
                .store
                .lock()
                .unwrap()
                .remove(r, ns_str, name, &pre, dry)?;
            Ok(json_response(StatusCode::OK, &render(&gone, r, version)))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({m})"),
        )),
    }
}

fn selectors(query: &Query) -> Result<Selectors, ApiError> {
    Selectors::parse(
        query.get("labelSelector").unwrap_or(""),
        query.get("fieldSelector").unwrap_or(""),
    )
}

fn list_doc(r: usize, version: &str, rv: u64, items: Vec<Value>) -> Value {
    let res = &RESOURCES[r];
    json!({
        "kind": format!("{}List", res.kind),
        "apiVersion": res.group_version(version),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    })
}

// ---------------------------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------------------------

/// What one watch stream wants to see.
struct WatchView {
    r: usize,
    version: String,
    ns: Option<String>,
    sel: Selectors,
}

impl WatchView {
    fn in_scope(&self, key: &Key) -> bool {
        key.0 == self.r && self.ns.as_ref().is_none_or(|n| *n == key.1)
    }

    /// The event this watcher sees for a write, if any. As on the real server, an object
    /// moving out of a selector's view is a DELETED (of its previous state at the new
    /// resourceVersion) and one moving in is an ADDED.
    fn event_for(&self, ev: &Event) -> Option<Value> {
        if !self.in_scope(&ev.key) {
            return None;
        }
        let was = ev.old.as_ref().is_some_and(|o| self.sel.matches(o));
        let is = ev.new.as_ref().is_some_and(|o| self.sel.matches(o));
        let (kind, obj) = match (was, is) {
            (false, true) => ("ADDED", ev.new.clone()?),
            (true, true) => ("MODIFIED", ev.new.clone()?),
            (true, false) => {
                let mut old = ev.old.clone()?;
                if let Ok(m) = Store::meta_mut(&mut old) {
                    m.insert("resourceVersion".into(), json!(ev.rv.to_string()));
                }
                ("DELETED", old)
            }
            (false, false) => return None,
        };
        Some(json!({"type": kind, "object": render(&obj, self.r, &self.version)}))
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Value {
        let res = &RESOURCES[self.r];
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"type": "BOOKMARK", "object": {
            "kind": res.kind,
            "apiVersion": res.group_version(&self.version),
            "metadata": meta,
        }})
    }

    /// Events logged after `cursor`, which then moves to the store's current resourceVersion
    /// (so bookmarks never claim more than this watcher has been sent).
    fn drain(&self, store: &Store, cursor: &mut u64) -> Vec<Bytes> {
        let start = store.log.partition_point(|e| e.rv <= *cursor);
        let lines = store.log[start..]
            .iter()
            .filter_map(|e| self.event_for(e))
            .map(|v| line(&v))
            .collect();
        *cursor = (*cursor).max(store.rv);
        lines
    }
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).expect("JSON values serialise");
    b.push(b'\n');
    Bytes::from(b)
}

/// Counts a watch as open from before its response is sent until its task ends.
struct WatchGuard(Arc<Inner>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn start_watch(
    inner: &Arc<Inner>,
    query: &Query,
    r: usize,
    version: &str,
    ns: Option<&str>,
    name: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let mut sel = selectors(query)?;
    if let Some(name) = name {
        sel.fields
            .push(("metadata.name".into(), true, name.to_string()));
    }
    let view = WatchView {
        r,
        version: version.to_string(),
        ns: ns.map(str::to_string),
        sel,
    };
    let start_rv = match query.get("resourceVersion").unwrap_or("") {
        "" | "0" => None,
        rv => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?,
        ),
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let initial_events = query.flag("sendInitialEvents");
    let timeout = match query.get("timeoutSeconds") {
        Some(t) if !t.is_empty() => {
            Some(Duration::from_secs(t.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid timeoutSeconds: {t}"))
            })?))
        }
        _ => None,
    };
    let interval = *inner.bookmark_interval.lock().unwrap();

    // The first lines and the cursor are taken under the same lock as the subscription, so the
    // replay and the live stream neither overlap nor leave a gap.
    let (first, mut cursor, mut rv_rx, expired) = {
        let store = inner.store.lock().unwrap();
        let rv_rx = store.rv_tx.subscribe();
        match start_rv {
            Some(rv) if !initial_events && rv < store.compacted => {
                let status = ApiError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {rv} ({})", store.compacted),
                )
                .status();
                (
                    vec![line(&json!({"type": "ERROR", "object": status}))],
                    0,
                    rv_rx,
                    true,
                )
            }
            Some(rv) if !initial_events => {
                let mut cursor = rv;
                let lines = view.drain(&store, &mut cursor);
                (lines, cursor.max(rv), rv_rx, false)
            }
            _ => {
                let mut lines: Vec<Bytes> = store
                    .list(r, ns, &view.sel)
                    .iter()
                    .map(|o| line(&json!({"type": "ADDED", "object": render(o, r, version)})))
                    .collect();
                if initial_events {
                    lines.push(line(&view.bookmark(store.rv, true)));
                }
                (lines, store.rv, rv_rx, false)
            }
        }
    };

    let (tx, rx) = mpsc::channel::<Bytes>(64);
    inner.watches.fetch_add(1, Ordering::SeqCst);
    let guard = WatchGuard(inner.clone());
    let mut epoch = inner.epoch.subscribe();
    let mut stop = inner.shutdown.clone();
    let task_inner = inner.clone();
    tokio::spawn(async move {
        let _guard = guard;
        for l in first {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut bookmark = false;
            let mut last = false;
            tokio::select! {
                biased;
                _ = epoch.changed() => return,
                _ = stop.changed() => return,
                _ = tx.closed() => return,
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    bookmark = bookmarks;
                    last = true;
                }
                r = rv_rx.changed() => if r.is_err() { return },
                _ = ticks.tick(), if bookmarks => bookmark = true,
            }
            let mut lines = {
                let store = task_inner.store.lock().unwrap();
                view.drain(&store, &mut cursor)
            };
            if bookmark {
                lines.push(line(&view.bookmark(cursor, false)));
            }
            for l in lines {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            if last {
                return;
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(LineBody(rx).boxed())
        .expect("static response parts are valid"))
}
