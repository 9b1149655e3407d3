//! The config file as written: plain serde structs, strings left unparsed.
//!
//! `validate.rs` turns these into typed values and reports every problem with its path, so this
//! layer only rejects what serde must (YAML syntax, wrong types, unknown fields).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole config file (SPEC §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Ports the gateway serves traffic on.
    pub listeners: Vec<RawListener>,
    /// Admin API settings.
    #[serde(default)]
    pub admin: RawAdmin,
    /// Readiness endpoint settings.
    #[serde(default)]
    pub readiness: RawReadiness,
    /// What a shutdown signal starts.
    #[serde(default, skip_serializing_if = "RawDrain::is_default")]
    pub drain: RawDrain,
    /// Metrics endpoint settings.
    #[serde(default)]
    pub metrics: RawMetrics,
    /// Upstream services by name; ordered so errors come out in a stable order. May be empty
    /// when `kubernetes` is set.
    #[serde(default)]
    pub services: BTreeMap<String, RawService>,
    /// Routes, matched by host. May be empty when `kubernetes` is set.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Serve what the cluster's Istio objects say, beside the file's routes (SPEC §6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<RawKubernetes>,
}

/// The `kubernetes` section: which gateway the VirtualServices bind to, and where to watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    /// `namespace/name` of the Gateway that VirtualServices name in `spec.gateways`.
    pub gateway: String,
    /// Watch only these namespaces; empty: all.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// A kubeconfig file; none: the in-cluster ServiceAccount when present, else
    /// `$KUBECONFIG`, else `~/.kube/config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    /// The cluster's DNS domain, for `name.ns.svc.<domain>` hosts; default `cluster.local`.
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
    /// VirtualServices (`namespace/name`) whose weighted rules are sticky, and how: the
    /// gateway's own say, for objects a controller rewrites whole (Flagger drops annotations
    /// it did not set). Wins over the object's `splitgate.io/sticky` annotation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sticky: BTreeMap<String, RawSticky>,
}

fn default_cluster_domain() -> String {
    "cluster.local".into()
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Unique name.
    pub name: String,
    /// `ip:port`.
    pub address: String,
    /// TLS termination: with it, the listener speaks HTTPS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    /// How long a request or response body may make no progress (Envoy's
    /// `stream_idle_timeout`); duration string, default 5m, `0s` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<String>,
    /// What one client may hold or send: sizes, deadlines, connections, HTTP/2 streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RawLimits>,
}

/// A listener's limits (Envoy's names where Envoy has the setting); each defaults when absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest request head, in KiB (Envoy's `max_request_headers_kb`); default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_headers_kb: Option<u32>,
    /// Most header fields in a request (Envoy's `max_headers_count`); default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_headers: Option<u32>,
    /// From accept to the first byte and a known protocol; default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout: Option<String>,
    /// From the first byte of an HTTP/1.1 request head to its end; default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_timeout: Option<String>,
    /// How long a connection may carry no request; default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Client connections open at once; default derived from the descriptor limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Streams an HTTP/2 client may have open at once; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_concurrent_streams: Option<u32>,
    /// Streams an HTTP/2 client may reset within 10 s before its connection is closed;
    /// default 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_resets_per_10s: Option<u32>,
    /// Longest wait before a new connection is read from an address that broke one of these
    /// limits in the last 10 s (doubling per offence from 10 ms); `0s` turns it off; default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tarpit: Option<String>,
}

/// Listener TLS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Certificate/key pairs; SNI picks one by its SANs.
    pub certificates: Vec<RawCertificate>,
}

/// One certificate and its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM certificate chain.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
}

/// Admin API settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// `ip:port`, loopback by default.
    pub address: String,
    /// Bearer token file for /v1 calls.
    pub token_file: Option<String>,
    /// Where API overrides are persisted.
    pub state_file: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:15000".into(),
            token_file: None,
            state_file: None,
        }
    }
}

/// The drain on SIGTERM: readiness turns 503 at once; the listeners keep accepting for `delay`
/// while every answer asks its client to go (`Connection: close`, HTTP/2 GOAWAY); then they
/// close, and requests in flight get up to `timeout`. A second signal ends the process at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDrain {
    /// Duration string; default 5s (Istio's `terminationDrainDuration`). `0s`: close at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Duration string; default 10s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

impl RawDrain {
    fn is_default(&self) -> bool {
        *self == RawDrain::default()
    }
}

/// Readiness endpoint settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReadiness {
    /// `ip:port`.
    pub address: String,
}

impl Default for RawReadiness {
    fn default() -> Self {
        Self {
            address: "0.0.0.0:15021".into(),
        }
    }
}

/// Metrics endpoint settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// `ip:port`.
    pub address: String,
    /// `source`, `destination` or `both`.
    pub reporter: String,
    /// Value of `source_cluster` / `destination_cluster`.
    pub cluster: String,
    /// The gateway's own identity, for the `source_*` labels.
    pub workload: RawWorkload,
    /// Record requests in metrics (turn off only to measure what metrics cost).
    pub enabled: bool,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            address: "0.0.0.0:15090".into(),
            reporter: "source".into(),
            cluster: "Kubernetes".into(),
            workload: RawWorkload::default(),
            enabled: true,
        }
    }
}

/// The gateway's workload identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWorkload {
    /// Workload name.
    pub name: String,
    /// Workload namespace.
    pub namespace: String,
    /// `app` label.
    pub app: String,
    /// `version` label.
    pub version: String,
}

impl Default for RawWorkload {
    fn default() -> Self {
        Self {
            name: "splitgate".into(),
            namespace: "istio-system".into(),
            app: "splitgate".into(),
            version: "v1".into(),
        }
    }
}

/// An upstream service: its identity and its subsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// The Kubernetes Service name, `destination_service_name` in metrics; default the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kubernetes namespace.
    pub namespace: String,
    /// FQDN, the `destination_service` label.
    pub host: String,
    /// Subsets by name.
    pub subsets: BTreeMap<String, RawSubset>,
    /// Connection policy.
    #[serde(default)]
    pub policy: RawPolicy,
}

/// A subset: the endpoints of one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubset {
    /// Pod labels (`app`, `version`, `service.istio.io/canonical-*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Workload name; defaults to `<service>-<subset>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// `host:port` entries.
    pub endpoints: Vec<String>,
    /// `host:port` entries that get no request but keep their pooled connections: in
    /// Kubernetes mode, endpoints listed not ready and not terminating (a pod failing its
    /// readiness probe), which usually come back. Not read from the config file.
    #[serde(skip)]
    pub standby: Vec<String>,
}

/// DestinationRule-like policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Duration string; default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    /// `round_robin`, `least_request` or `random`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<String>,
    /// Idle keep-alive connections kept per endpoint; default 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_per_endpoint: Option<usize>,
    /// HTTP/1.1 connections open to one endpoint at once; more requests wait for one to come
    /// free, up to the connect timeout; default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_endpoint: Option<usize>,
    /// `http1` (default) or `http2` (for gRPC upstreams): what is spoken to the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// TLS to the endpoints (DestinationRule `tls.mode: SIMPLE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawUpstreamTls>,
    /// Eject endpoints that fail in a row (Istio's `outlierDetection`); none: no ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<RawOutlierDetection>,
    /// Bounds on each subset's connections and requests (Istio's `connectionPool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<RawConnectionPool>,
    /// Requests with the same key go to the same endpoint (Istio's
    /// `loadBalancer.consistentHash`); not with `load_balancer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<RawConsistentHash>,
}

/// Istio's `ConsistentHashLB`, in snake_case: exactly one key, and at most one of `ring_hash`
/// and `maglev` (default: a ring).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsistentHash {
    /// Hash this request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    /// Hash this cookie; with a `ttl`, the gateway gives clients without it one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<RawHashCookie>,
    /// Hash the client's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    /// Hash this query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    /// Look keys up on a ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RawRingHash>,
    /// Look keys up in a Maglev table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<RawMaglev>,
}

/// Istio's `HTTPCookie`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHashCookie {
    /// The cookie's name.
    pub name: String,
    /// `Path` of the cookie the gateway sets; none: no `Path` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Duration string, whole seconds: with it, a client without the cookie is given one that
    /// lasts this long (`0s`: the browser session); without it, none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// Istio's `RingHash`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRingHash {
    /// Points each endpoint places on the ring (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// Istio's `MagLev`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaglev {
    /// Slots in the table, a prime (default 65537).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

/// Istio's `ConnectionPoolSettings`, flat and in snake_case. Bounds are per subset (an Envoy
/// cluster); one left out is no bound.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnectionPool {
    /// HTTP/1.1 connections open to the subset at once; more requests wait for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Requests waiting for a connection at once; more are answered 503 `UO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<usize>,
    /// Requests in flight to the subset at once (HTTP/1.1 and HTTP/2); more are answered 503
    /// `UO`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<usize>,
    /// Requests an HTTP/1.1 connection carries before it is closed; 0 (default): no bound,
    /// 1: no keep-alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Retries in flight to the subset at once (beyond the retry budget, which always holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<usize>,
    /// Duration string: an idle pooled connection is closed after this (default 1h; `0s`:
    /// never, the upstream closes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

/// Istio's `OutlierDetection`, in snake_case.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    /// 5xx answers and local failures in a row that eject (default 5; 0: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    /// 502, 503, 504 and local failures in a row that eject (default 0: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// Duration string: how often ejections are reviewed in Istio (default 10s). Here an
    /// endpoint returns when its ejection time is over, whatever the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Duration string: the first ejection's length (default 30s); the n-th is n times longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// Ejections stop while this percent of the subset is out (default 10); the first is
    /// always made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// TLS to a service's endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM CA bundle that signs the endpoints' certificates; default: the system bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Name sent as SNI and verified in the certificate; default: the service's `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Accept any certificate (the connection is still encrypted). For tests only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// A route: a set of hosts and its ordered rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name (used by the admin API).
    pub name: String,
    /// `exact.host`, `*.suffix` or `*`.
    pub hosts: Vec<String>,
    /// Rules, first match wins.
    pub http: Vec<RawRule>,
    /// Protocol upgrades passed through (`Upgrade:` values, case-insensitive); default
    /// `[websocket]`. `h2c` may not be listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrades: Option<Vec<String>>,
}

/// One rule of a route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Name, unique within the route; defaults to `rule-<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Match blocks, OR'ed; none means match all.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RawMatchBlock>,
    /// Weighted destinations; none when the rule answers itself (`redirect`, `direct_response`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RawDestinationWeight>,
    /// Time to wait for the upstream's response headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Also send a copy of each request here (Istio's `mirror`); its answer is discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<RawDestination>,
    /// Share of requests mirrored, 0–100 (default 100 when `mirror` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<f64>,
    /// Several mirrors, each with its own share (Istio's `mirrors`); not beside `mirror`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<RawMirror>,
    /// Cross-origin requests (Istio's `corsPolicy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<RawCorsPolicy>,
    /// Header changes to every request this rule sends and every answer it returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<RawHeaders>,
    /// Retries (Istio's `retries`); none: Istio's default, 2 on 503 and connect failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RawRetries>,
    /// Keeps each client on the destination it got while the weights move (our extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<RawSticky>,
    /// Path and Host changes on the way to the upstream (Istio's `rewrite`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<RawRewrite>,
    /// Answer with a redirect instead of routing (Istio's `redirect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RawRedirect>,
    /// Answer with a fixed status and body instead of routing (Istio's `directResponse`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<RawDirectResponse>,
    /// Delays and failures injected into a share of requests (Istio's `fault`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<RawFault>,
}

/// Istio's `HTTPRewrite`: a new path (or the matched prefix replaced), a regex substitution on
/// the path, and a new Host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    /// Replaces the prefix the rule matched, or the whole path when it matched otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replaces every match of a regex in the path (not with `uri`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Option<RawRegexRewrite>,
    /// Replaces the Host (`:authority`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// A regex and what its matches become; `\1` names a capture group, as in Istio.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegexRewrite {
    /// RE2-style regex, unanchored.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Replacement.
    pub rewrite: String,
}

/// Istio's `HTTPRedirect`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    /// New path (the query string stays unless this one has its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// New host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// New scheme, `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// New port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u16>,
}

/// Istio's `HTTPDirectResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectResponse {
    /// Status, 200–599.
    pub status: u16,
    /// Body, sent as `text/plain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Istio's `HTTPFaultInjection`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    /// Hold a share of requests before forwarding them (flag `DI`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<RawFaultDelay>,
    /// Answer a share of requests with an error instead of forwarding them (flag `FI`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<RawFaultAbort>,
}

/// A fixed delay on a share of requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFaultDelay {
    /// How long.
    pub fixed_delay: String,
    /// Share of requests delayed, 0–100.
    pub percentage: f64,
}

/// An error on a share of requests: an HTTP status, or a gRPC status (exactly one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFaultAbort {
    /// HTTP status sent, 200–599.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// gRPC status sent in an HTTP 200 (`UNAVAILABLE`, or its number `14`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// Share of requests aborted, 0–100.
    pub percentage: f64,
}

/// One of a rule's `mirrors` (Istio's `HTTPMirrorPolicy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    /// The subset that receives the copies.
    pub destination: RawDestination,
    /// Share of requests copied, 0–100; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
}

/// Istio's `CorsPolicy`, in snake_case.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCorsPolicy {
    /// Origins allowed: each `{exact|prefix|suffix|regex}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<RawStringMatch>,
    /// Methods a preflight's answer allows (`GET`, `POST`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight's answer allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may show the page.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// How long the browser may keep a preflight's answer (duration string, whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Whether answers allow credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// `forward` (default) or `ignore`: what a preflight from an origin not allowed gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<String>,
}

/// A sticky weighted rule: each client gets a position, carried in a cookie the gateway sets
/// (`cookie`, `ttl`) or derived from a key the client sends (`hash_on`); exactly one of the
/// two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    /// The cookie that carries the position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// How long the cookie lasts (duration string); none: until the browser session ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// The request part whose value places the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<RawHashOn>,
}

/// What a sticky position is derived from: exactly one of a header, a cookie or a query
/// parameter, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHashOn {
    /// A request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// A query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// Istio's `HTTPRetry`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    /// Retries after the first try (default 2); 0 turns retries off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Duration string bounding each try (default: none but the rule's `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Comma-separated conditions, as Envoy's `retry_on`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    /// The statuses `retriable-status-codes` retries (default `[503]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_status_codes: Option<Vec<u16>>,
}

/// Header changes, as Istio's `headers`: to the request and to the response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    /// On the way to the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RawHeaderOps>,
    /// On the way back to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<RawHeaderOps>,
}

/// One direction's changes: applied as remove, then set, then add (Envoy's order).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    /// Replace (or add) these fields.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Add these values beside any already there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// Conditions AND'ed together (Istio's HTTPMatchRequest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatchBlock {
    /// Request path, without the query string.
    #[serde(default, alias = "path", skip_serializing_if = "Option::is_none")]
    pub uri: Option<RawStringMatch>,
    /// Request method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<RawStringMatch>,
    /// Host / :authority as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<RawStringMatch>,
    /// Header name → condition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, RawStringMatch>,
    /// Header name → condition that must NOT hold.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, RawStringMatch>,
    /// Query parameter name → condition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, RawStringMatch>,
    /// Cookie name → condition.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cookies: BTreeMap<String, RawStringMatch>,
}

/// `{exact|prefix|suffix|regex: "..."}` or `{present: true}`; exactly one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStringMatch {
    /// Whole value equals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Value starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Value ends with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// Value fully matches (anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Value is there at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// A destination and its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestinationWeight {
    /// Where to send.
    pub destination: RawDestination,
    /// Relative weight; may be omitted only when it is the rule's sole destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Header changes when this destination is chosen (after the rule's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<RawHeaders>,
}

/// A service subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    /// Service key.
    pub service: String,
    /// Subset name.
    pub subset: String,
}
