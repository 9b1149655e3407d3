//! The Istio objects as splitgate reads them: our own serde types with only the fields the
//! data plane serves. Every other field is kept aside (`rest`) so that it can be reported by
//! path as unsupported, never dropped in silence.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Fields read past, by name, at one level of an object.
pub type Rest = BTreeMap<String, Value>;

/// `spec` of a `networking.istio.io` VirtualService.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualServiceSpec {
    /// Hosts the routes answer for.
    pub hosts: Vec<String>,
    /// Gateways (and `mesh`) the routes apply to.
    pub gateways: Vec<String>,
    /// Ordered HTTP rules.
    pub http: Vec<HttpRoute>,
    /// Everything else (`tls`, `tcp`, `exportTo`, ...).
    #[serde(flatten)]
    pub rest: Rest,
}

/// One `http[]` rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRoute {
    /// Rule name (Argo Rollouts and Flagger name theirs).
    pub name: Option<String>,
    /// Conditions, OR'ed.
    #[serde(rename = "match")]
    pub matches: Vec<HttpMatch>,
    /// Weighted destinations.
    pub route: Vec<RouteDestination>,
    /// Response-head timeout, as a duration string (`2s`, `1.5s`, `300ms`).
    pub timeout: Option<String>,
    /// One mirror destination.
    pub mirror: Option<Destination>,
    /// Share mirrored, `{value: 0–100}`.
    pub mirror_percentage: Option<Percent>,
    /// The old integer form of the share.
    pub mirror_percent: Option<u32>,
    /// Several mirrors, each with its own share (not beside `mirror`).
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Cross-origin requests.
    pub cors_policy: Option<CorsPolicy>,
    /// Header changes for the rule.
    pub headers: Option<Headers>,
    /// Retries.
    pub retries: Option<HttpRetry>,
    /// Path and Host changes.
    pub rewrite: Option<HttpRewrite>,
    /// A redirect instead of a route.
    pub redirect: Option<HttpRedirect>,
    /// A fixed answer instead of a route.
    pub direct_response: Option<HttpDirectResponse>,
    /// Delays and errors injected.
    pub fault: Option<HttpFault>,
    /// Everything else (`delegate`, ...).
    #[serde(flatten)]
    pub rest: Rest,
}

/// One of `mirrors`: Istio's `HTTPMirrorPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMirrorPolicy {
    /// Where the copies go.
    pub destination: Destination,
    /// Share copied, `{value: 0–100}`; absent: all.
    pub percentage: Option<Percent>,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// Istio's `CorsPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CorsPolicy {
    /// Origins allowed, each `{exact|prefix|regex}`.
    pub allow_origins: Vec<StringMatch>,
    /// The deprecated form: exact origins, read only when `allowOrigins` is empty (as Istio
    /// reads it).
    pub allow_origin: Vec<String>,
    /// Methods a preflight's answer allows.
    pub allow_methods: Vec<String>,
    /// Request headers a preflight's answer allows.
    pub allow_headers: Vec<String>,
    /// Response headers the browser may show the page.
    pub expose_headers: Vec<String>,
    /// Duration string.
    pub max_age: Option<String>,
    /// Whether answers allow credentials.
    pub allow_credentials: Option<bool>,
    /// `UNSPECIFIED`, `FORWARD` or `IGNORE`.
    pub unmatched_preflights: Option<String>,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

impl CorsPolicy {
    fn unsupported(&self, at: &str, out: &mut Vec<String>) {
        paths(at, &self.rest, out);
        for (j, m) in self.allow_origins.iter().enumerate() {
            paths(&format!("{at}.allowOrigins[{j}]"), &m.rest, out);
        }
    }
}

/// Istio's `HTTPRetry`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRetry {
    /// Retries after the first try.
    pub attempts: Option<i64>,
    /// Bound on each try, as a duration string.
    pub per_try_timeout: Option<String>,
    /// Envoy's conditions, and status codes, comma-separated.
    pub retry_on: Option<String>,
    /// Anything else (`retryRemoteLocalities`, `backoff`, ...).
    #[serde(flatten)]
    pub rest: Rest,
}

impl HttpRetry {
    /// As the config file writes them. Status codes in `retryOn` (`"503,gateway-error"`) are
    /// retriable status codes, as Istio reads them.
    pub fn to_raw(&self) -> crate::config::model::RawRetries {
        let (mut conditions, mut codes) = (Vec::new(), Vec::new());
        for token in self
            .retry_on
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
        {
            match token.parse::<u16>() {
                Ok(code) => codes.push(code),
                Err(_) if !token.is_empty() => conditions.push(token),
                Err(_) => {}
            }
        }
        if !codes.is_empty() && !conditions.contains(&"retriable-status-codes") {
            conditions.push("retriable-status-codes");
        }
        crate::config::model::RawRetries {
            attempts: self
                .attempts
                .map(|a| u32::try_from(a.max(0)).unwrap_or(u32::MAX)),
            per_try_timeout: self.per_try_timeout.clone(),
            retry_on: self.retry_on.as_ref().map(|_| conditions.join(",")),
            retriable_status_codes: (!codes.is_empty()).then_some(codes),
        }
    }
}

/// Istio's `HTTPRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRewrite {
    /// New path or prefix.
    pub uri: Option<String>,
    /// New Host.
    pub authority: Option<String>,
    /// Regex substitution on the path.
    pub uri_regex_rewrite: Option<RegexRewrite>,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// Istio's `RegexRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RegexRewrite {
    /// The regex.
    #[serde(rename = "match")]
    pub pattern: String,
    /// What its matches become.
    pub rewrite: String,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// Istio's `HTTPRedirect`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRedirect {
    /// New path.
    pub uri: Option<String>,
    /// New host.
    pub authority: Option<String>,
    /// New port.
    pub port: Option<u32>,
    /// New scheme.
    pub scheme: Option<String>,
    /// Status, 301 by default.
    pub redirect_code: Option<u32>,
    /// Anything else (`derivePort`).
    #[serde(flatten)]
    pub rest: Rest,
}

/// Istio's `HTTPDirectResponse`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct HttpDirectResponse {
    /// Status.
    pub status: u32,
    /// Body.
    pub body: Option<HttpBody>,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// Istio's `HTTPBody`: text, or bytes in base64.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct HttpBody {
    /// Text.
    pub string: Option<String>,
    /// Base64.
    pub bytes: Option<String>,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// Istio's `HTTPFaultInjection`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct HttpFault {
    /// A delay.
    pub delay: Option<FaultDelay>,
    /// An error instead of the upstream.
    pub abort: Option<FaultAbort>,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// Istio's fault `Delay`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultDelay {
    /// Duration string.
    pub fixed_delay: Option<String>,
    /// Share, 0–100.
    pub percentage: Option<Percent>,
    /// The old integer share.
    pub percent: Option<u32>,
    /// Anything else (`exponentialDelay`).
    #[serde(flatten)]
    pub rest: Rest,
}

/// Istio's fault `Abort`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultAbort {
    /// HTTP status sent.
    pub http_status: Option<u32>,
    /// gRPC status sent (`UNAVAILABLE`).
    pub grpc_status: Option<String>,
    /// Share, 0–100.
    pub percentage: Option<Percent>,
    /// Anything else (`http2Error`).
    #[serde(flatten)]
    pub rest: Rest,
}

impl HttpRewrite {
    /// As the config file writes it.
    pub fn to_raw(&self) -> crate::config::model::RawRewrite {
        crate::config::model::RawRewrite {
            uri: self.uri.clone(),
            uri_regex_rewrite: self.uri_regex_rewrite.as_ref().map(|r| {
                crate::config::model::RawRegexRewrite {
                    pattern: r.pattern.clone(),
                    rewrite: r.rewrite.clone(),
                }
            }),
            authority: self.authority.clone(),
        }
    }
}

impl HttpRedirect {
    /// As the config file writes it; out-of-range numbers are kept out of range, for
    /// validation to refuse.
    pub fn to_raw(&self) -> crate::config::model::RawRedirect {
        let narrow = |n: u32| u16::try_from(n).unwrap_or(0);
        crate::config::model::RawRedirect {
            uri: self.uri.clone(),
            authority: self.authority.clone(),
            scheme: self.scheme.clone(),
            port: self.port.map(narrow),
            redirect_code: self.redirect_code.map(narrow),
        }
    }
}

impl HttpDirectResponse {
    /// As the config file writes it: `bytes` are decoded and must be text.
    pub fn to_raw(&self) -> Result<crate::config::model::RawDirectResponse, String> {
        use base64::Engine;
        let body = match &self.body {
            None => None,
            Some(HttpBody {
                string: Some(s),
                bytes: None,
                ..
            }) => Some(s.clone()),
            Some(HttpBody {
                string: None,
                bytes: Some(b),
                ..
            }) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| format!("body.bytes: not base64 ({e})"))?;
                Some(String::from_utf8(raw).map_err(|_| {
                    "body.bytes: only text bodies are served; this one is not UTF-8".to_string()
                })?)
            }
            Some(_) => return Err("body: needs exactly one of string or bytes".into()),
        };
        Ok(crate::config::model::RawDirectResponse {
            status: u16::try_from(self.status).unwrap_or(0),
            body,
        })
    }
}

impl HttpFault {
    /// As the config file writes it. A share left out injects into no request, as in Istio.
    pub fn to_raw(&self) -> Result<crate::config::model::RawFault, String> {
        let delay = match &self.delay {
            None => None,
            Some(d) => Some(crate::config::model::RawFaultDelay {
                fixed_delay: d
                    .fixed_delay
                    .clone()
                    .ok_or("delay.fixedDelay: required (exponentialDelay is not served)")?,
                percentage: d
                    .percentage
                    .map(|p| p.value)
                    .or(d.percent.map(f64::from))
                    .unwrap_or(0.0),
            }),
        };
        let abort = match &self.abort {
            None => None,
            Some(a) if a.http_status.is_none() && a.grpc_status.is_none() => {
                return Err(
                    "abort: needs httpStatus or grpcStatus (http2Error is not served)".into(),
                )
            }
            Some(a) => Some(crate::config::model::RawFaultAbort {
                http_status: a.http_status.map(|s| u16::try_from(s).unwrap_or(0)),
                grpc_status: a.grpc_status.clone(),
                percentage: a.percentage.map(|p| p.value).unwrap_or(0.0),
            }),
        };
        Ok(crate::config::model::RawFault { delay, abort })
    }
}

/// Istio's `Headers`: changes to the request and the response.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Headers {
    /// To the request.
    pub request: Option<HeaderOperations>,
    /// To the response.
    pub response: Option<HeaderOperations>,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// `set`, `add`, `remove`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct HeaderOperations {
    /// Replace.
    pub set: BTreeMap<String, String>,
    /// Append.
    pub add: BTreeMap<String, String>,
    /// Remove.
    pub remove: Vec<String>,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

impl Headers {
    /// As the config file writes them.
    pub fn to_raw(&self) -> crate::config::model::RawHeaders {
        let ops = |o: &Option<HeaderOperations>| {
            o.as_ref().map(|o| crate::config::model::RawHeaderOps {
                set: o.set.clone(),
                add: o.add.clone(),
                remove: o.remove.clone(),
            })
        };
        crate::config::model::RawHeaders {
            request: ops(&self.request),
            response: ops(&self.response),
        }
    }

    fn unsupported(&self, at: &str, out: &mut Vec<String>) {
        paths(at, &self.rest, out);
        for (side, o) in [("request", &self.request), ("response", &self.response)] {
            if let Some(o) = o {
                paths(&format!("{at}.{side}"), &o.rest, out);
            }
        }
    }
}

/// `{value: f64}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Percent {
    /// 0–100.
    pub value: f64,
}

/// One `match[]` block: conditions AND'ed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMatch {
    /// Match name (ignored: it only names the match in Envoy's stats).
    pub name: Option<String>,
    /// Path.
    pub uri: Option<StringMatch>,
    /// Method.
    pub method: Option<StringMatch>,
    /// Host / :authority.
    pub authority: Option<StringMatch>,
    /// Header conditions.
    pub headers: BTreeMap<String, StringMatch>,
    /// Headers that must not match.
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Query parameters.
    pub query_params: BTreeMap<String, StringMatch>,
    /// Everything else (`port`, `sourceLabels`, `gateways`, `ignoreUriCase`, ...).
    #[serde(flatten)]
    pub rest: Rest,
}

/// Istio's StringMatch: one of `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StringMatch {
    /// Equals.
    pub exact: Option<String>,
    /// Starts with.
    pub prefix: Option<String>,
    /// RE2 regex over the whole value.
    pub regex: Option<String>,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// `route[]`: a destination and its weight.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteDestination {
    /// Where.
    pub destination: Destination,
    /// Relative weight; absent is 0, or 100 for a sole destination. Argo Rollouts writes it as
    /// a JSON float.
    pub weight: Option<f64>,
    /// Header changes when this destination is chosen (Flagger's session-affinity cookie).
    pub headers: Option<Headers>,
    /// Everything else (`headers`, ...).
    #[serde(flatten)]
    pub rest: Rest,
}

/// A Service, its port and subset.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Destination {
    /// `name`, `name.ns`, or the FQDN.
    pub host: String,
    /// A DestinationRule subset of that host.
    pub subset: Option<String>,
    /// The Service port.
    pub port: Option<PortSelector>,
    /// Anything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// `{number: N}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PortSelector {
    /// The Service port number.
    pub number: u32,
}

/// `spec` of a DestinationRule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DestinationRuleSpec {
    /// The Service it applies to (`name`, `name.ns` or the FQDN).
    pub host: String,
    /// Named label sets over the Service's pods.
    pub subsets: Vec<DrSubset>,
    /// The Service's traffic policy (for all its subsets).
    pub traffic_policy: Option<Box<TrafficPolicy>>,
    /// Everything else (`exportTo`, `workloadSelector`, ...).
    #[serde(flatten)]
    pub rest: Rest,
}

/// A DestinationRule's `trafficPolicy`: its `outlierDetection`, `connectionPool` and
/// `loadBalancer` are served.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficPolicy {
    /// Ejection of endpoints that fail in a row.
    pub outlier_detection: Option<OutlierDetection>,
    /// Bounds on connections and requests.
    pub connection_pool: Option<ConnectionPool>,
    /// Endpoint choice.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Everything else (`tls`, `portLevelSettings`, ...).
    #[serde(flatten)]
    pub rest: Rest,
}

/// Istio's `LoadBalancerSettings`: `simple` or `consistentHash`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancerSettings {
    /// `ROUND_ROBIN`, `LEAST_REQUEST` (`LEAST_CONN`), `RANDOM`, `PASSTHROUGH` or `UNSPECIFIED`.
    pub simple: Option<String>,
    /// Requests with the same key to the same endpoint.
    pub consistent_hash: Option<ConsistentHash>,
    /// Everything else (`localityLbSetting`, `warmupDurationSecs`, `warmup`).
    #[serde(flatten)]
    pub rest: Rest,
}

/// Istio's `ConsistentHashLB`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsistentHash {
    /// Hash this header.
    pub http_header_name: Option<String>,
    /// Hash this cookie.
    pub http_cookie: Option<HttpCookie>,
    /// Hash the client's IP.
    pub use_source_ip: Option<bool>,
    /// Hash this query parameter.
    pub http_query_parameter_name: Option<String>,
    /// A ring, sized.
    pub ring_hash: Option<RingHash>,
    /// A Maglev table, sized.
    pub maglev: Option<Maglev>,
    /// The ring's size before `ringHash` (deprecated by Istio).
    pub minimum_ring_size: Option<u64>,
    /// Everything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// Istio's `HTTPCookie`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct HttpCookie {
    /// Its name.
    pub name: String,
    /// `Path` of a cookie the gateway sets.
    pub path: Option<String>,
    /// With it, the gateway sets the cookie on clients without it, for this long.
    pub ttl: Option<String>,
    /// Everything else (`attributes`).
    #[serde(flatten)]
    pub rest: Rest,
}

/// Istio's `RingHash`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RingHash {
    /// Points per endpoint, here.
    pub minimum_ring_size: Option<u64>,
    /// Everything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// Istio's `MagLev`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Maglev {
    /// Slots, a prime.
    pub table_size: Option<u64>,
    /// Everything else.
    #[serde(flatten)]
    pub rest: Rest,
}

impl LoadBalancerSettings {
    /// The config file's `load_balancer` for `simple` (none for `UNSPECIFIED` or one not
    /// served, which [`DestinationRuleSpec::unsupported`] lists).
    pub fn simple_to_raw(&self) -> Option<String> {
        let lb = match self.simple.as_deref()? {
            "ROUND_ROBIN" => "round_robin",
            "LEAST_REQUEST" | "LEAST_CONN" => "least_request",
            "RANDOM" => "random",
            _ => return None,
        };
        Some(lb.to_string())
    }

    fn unsupported(&self, at: &str, out: &mut Vec<String>) {
        paths(at, &self.rest, out);
        let served = |s: &str| {
            [
                "ROUND_ROBIN",
                "LEAST_REQUEST",
                "LEAST_CONN",
                "RANDOM",
                "UNSPECIFIED",
            ]
            .contains(&s)
        };
        if self.simple.as_deref().is_some_and(|s| !served(s)) {
            out.push(format!("{at}.simple"));
        }
        if let Some(ch) = &self.consistent_hash {
            let at = format!("{at}.consistentHash");
            paths(&at, &ch.rest, out);
            if let Some(c) = &ch.http_cookie {
                paths(&format!("{at}.httpCookie"), &c.rest, out);
            }
            if let Some(r) = &ch.ring_hash {
                paths(&format!("{at}.ringHash"), &r.rest, out);
            }
            if let Some(m) = &ch.maglev {
                paths(&format!("{at}.maglev"), &m.rest, out);
            }
            if ch.minimum_ring_size.is_some() && (ch.ring_hash.is_some() || ch.maglev.is_some()) {
                out.push(format!("{at}.minimumRingSize"));
            }
        }
    }
}

impl ConsistentHash {
    /// As the config file writes it. The deprecated `minimumRingSize` counts when neither
    /// `ringHash` nor `maglev` is set, as in Istio (otherwise it is listed as not served).
    pub fn to_raw(&self) -> crate::config::model::RawConsistentHash {
        use crate::config::model::{RawConsistentHash, RawHashCookie, RawMaglev, RawRingHash};
        let ring_hash = match (&self.ring_hash, &self.maglev) {
            (Some(r), _) => Some(RawRingHash {
                minimum_ring_size: r.minimum_ring_size,
            }),
            (None, None) => self.minimum_ring_size.map(|n| RawRingHash {
                minimum_ring_size: Some(n),
            }),
            (None, Some(_)) => None,
        };
        let maglev = self.maglev.as_ref().map(|m| RawMaglev {
            table_size: m.table_size,
        });
        RawConsistentHash {
            http_header_name: self.http_header_name.clone(),
            http_cookie: self.http_cookie.as_ref().map(|c| RawHashCookie {
                name: c.name.clone(),
                path: c.path.clone(),
                ttl: c.ttl.clone(),
            }),
            use_source_ip: self.use_source_ip,
            http_query_parameter_name: self.http_query_parameter_name.clone(),
            ring_hash,
            maglev,
        }
    }
}

/// Istio's `ConnectionPoolSettings`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectionPool {
    /// TCP settings.
    pub tcp: Option<TcpPool>,
    /// HTTP settings.
    pub http: Option<HttpPool>,
    /// Everything else.
    #[serde(flatten)]
    pub rest: Rest,
}

/// `connectionPool.tcp`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpPool {
    /// Connections to the subset; 0: no bound.
    pub max_connections: Option<u32>,
    /// Duration string.
    pub connect_timeout: Option<String>,
    /// Duration string (the HTTP one wins when both are set).
    pub idle_timeout: Option<String>,
    /// Everything else (`tcpKeepalive`, `maxConnectionDuration`).
    #[serde(flatten)]
    pub rest: Rest,
}

/// `connectionPool.http`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpPool {
    /// 0: no bound.
    pub http1_max_pending_requests: Option<u32>,
    /// 0: no bound.
    pub http2_max_requests: Option<u32>,
    /// 0: no bound.
    pub max_requests_per_connection: Option<u32>,
    /// 0: no bound.
    pub max_retries: Option<u32>,
    /// Duration string.
    pub idle_timeout: Option<String>,
    /// Everything else (`h2UpgradePolicy`, `useClientProtocol`, `maxConcurrentStreams`).
    #[serde(flatten)]
    pub rest: Rest,
}

impl ConnectionPool {
    /// As the config file writes it (Istio's 0 is no bound: left out), and the connect
    /// timeout it sets.
    pub fn to_raw(&self) -> (crate::config::model::RawConnectionPool, Option<String>) {
        let bound = |n: Option<u32>| n.filter(|&n| n > 0).map(|n| n as usize);
        let (tcp, http) = (
            self.tcp.clone().unwrap_or_default(),
            self.http.clone().unwrap_or_default(),
        );
        let raw = crate::config::model::RawConnectionPool {
            max_connections: bound(tcp.max_connections),
            http1_max_pending_requests: bound(http.http1_max_pending_requests),
            http2_max_requests: bound(http.http2_max_requests),
            max_requests_per_connection: http.max_requests_per_connection,
            max_retries: bound(http.max_retries),
            idle_timeout: http.idle_timeout.or(tcp.idle_timeout),
        };
        (raw, tcp.connect_timeout)
    }

    fn unsupported(&self, at: &str, out: &mut Vec<String>) {
        paths(at, &self.rest, out);
        if let Some(t) = &self.tcp {
            paths(&format!("{at}.tcp"), &t.rest, out);
        }
        if let Some(h) = &self.http {
            paths(&format!("{at}.http"), &h.rest, out);
        }
    }
}

/// Istio's `OutlierDetection`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutlierDetection {
    /// 5xx answers and local failures in a row that eject.
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// 502, 503, 504 and local failures in a row that eject.
    pub consecutive_gateway_errors: Option<u32>,
    /// Duration string.
    pub interval: Option<String>,
    /// Duration string.
    pub base_ejection_time: Option<String>,
    /// Percent.
    pub max_ejection_percent: Option<u32>,
    /// Everything else (`minHealthPercent`, `consecutiveLocalOriginFailures`, ...).
    #[serde(flatten)]
    pub rest: Rest,
}

impl OutlierDetection {
    /// As the config file writes it.
    pub fn to_raw(&self) -> crate::config::model::RawOutlierDetection {
        crate::config::model::RawOutlierDetection {
            consecutive_5xx_errors: self.consecutive_5xx_errors,
            consecutive_gateway_errors: self.consecutive_gateway_errors,
            interval: self.interval.clone(),
            base_ejection_time: self.base_ejection_time.clone(),
            max_ejection_percent: self.max_ejection_percent,
        }
    }
}

/// A DestinationRule subset.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DrSubset {
    /// Its name.
    pub name: String,
    /// Pod labels it selects.
    pub labels: BTreeMap<String, String>,
    /// Everything else (`trafficPolicy`).
    #[serde(flatten)]
    pub rest: Rest,
}

/// The field paths of `rest` under `at` (`spec.http[0].retries`).
pub fn paths(at: &str, rest: &Rest, out: &mut Vec<String>) {
    for k in rest.keys() {
        out.push(format!("{at}.{k}"));
    }
}

impl VirtualServiceSpec {
    /// Every field path this spec sets that splitgate does not serve.
    pub fn unsupported(&self) -> Vec<String> {
        let mut out = Vec::new();
        paths("spec", &self.rest, &mut out);
        for (i, h) in self.http.iter().enumerate() {
            let at = format!("spec.http[{i}]");
            paths(&at, &h.rest, &mut out);
            if let Some(hd) = &h.headers {
                hd.unsupported(&format!("{at}.headers"), &mut out);
            }
            if let Some(r) = &h.retries {
                paths(&format!("{at}.retries"), &r.rest, &mut out);
            }
            if let Some(r) = &h.rewrite {
                paths(&format!("{at}.rewrite"), &r.rest, &mut out);
                if let Some(x) = &r.uri_regex_rewrite {
                    paths(&format!("{at}.rewrite.uriRegexRewrite"), &x.rest, &mut out);
                }
            }
            if let Some(r) = &h.redirect {
                paths(&format!("{at}.redirect"), &r.rest, &mut out);
            }
            if let Some(d) = &h.direct_response {
                paths(&format!("{at}.directResponse"), &d.rest, &mut out);
                if let Some(b) = &d.body {
                    paths(&format!("{at}.directResponse.body"), &b.rest, &mut out);
                }
            }
            if let Some(f) = &h.fault {
                paths(&format!("{at}.fault"), &f.rest, &mut out);
                if let Some(d) = &f.delay {
                    paths(&format!("{at}.fault.delay"), &d.rest, &mut out);
                }
                if let Some(a) = &f.abort {
                    paths(&format!("{at}.fault.abort"), &a.rest, &mut out);
                }
            }
            for (j, m) in h.matches.iter().enumerate() {
                let at = format!("{at}.match[{j}]");
                paths(&at, &m.rest, &mut out);
                let conditions = m.uri.iter().map(|s| ("uri".to_string(), s));
                let conditions = conditions
                    .chain(m.method.iter().map(|s| ("method".to_string(), s)))
                    .chain(m.authority.iter().map(|s| ("authority".to_string(), s)))
                    .chain(m.headers.iter().map(|(k, s)| (format!("headers.{k}"), s)))
                    .chain(
                        m.without_headers
                            .iter()
                            .map(|(k, s)| (format!("withoutHeaders.{k}"), s)),
                    )
                    .chain(
                        m.query_params
                            .iter()
                            .map(|(k, s)| (format!("queryParams.{k}"), s)),
                    );
                for (field, s) in conditions {
                    paths(&format!("{at}.{field}"), &s.rest, &mut out);
                }
            }
            for (j, r) in h.route.iter().enumerate() {
                let at = format!("{at}.route[{j}]");
                paths(&at, &r.rest, &mut out);
                paths(&format!("{at}.destination"), &r.destination.rest, &mut out);
                if let Some(hd) = &r.headers {
                    hd.unsupported(&format!("{at}.headers"), &mut out);
                }
            }
            if let Some(m) = &h.mirror {
                paths(&format!("{at}.mirror"), &m.rest, &mut out);
            } else {
                // Istio reads the share of `mirror` only.
                for (set, field) in [
                    (h.mirror_percentage.is_some(), "mirrorPercentage"),
                    (h.mirror_percent.is_some(), "mirrorPercent"),
                ] {
                    if set {
                        out.push(format!("{at}.{field}"));
                    }
                }
            }
            for (j, m) in h.mirrors.iter().enumerate() {
                let at = format!("{at}.mirrors[{j}]");
                paths(&at, &m.rest, &mut out);
                paths(&format!("{at}.destination"), &m.destination.rest, &mut out);
            }
            if let Some(c) = &h.cors_policy {
                c.unsupported(&format!("{at}.corsPolicy"), &mut out);
            }
        }
        out
    }
}

impl DestinationRuleSpec {
    /// Every field path this spec sets that splitgate does not serve.
    pub fn unsupported(&self) -> Vec<String> {
        let mut out = Vec::new();
        paths("spec", &self.rest, &mut out);
        for (i, s) in self.subsets.iter().enumerate() {
            paths(&format!("spec.subsets[{i}]"), &s.rest, &mut out);
        }
        if let Some(tp) = &self.traffic_policy {
            paths("spec.trafficPolicy", &tp.rest, &mut out);
            if let Some(od) = &tp.outlier_detection {
                paths("spec.trafficPolicy.outlierDetection", &od.rest, &mut out);
            }
            if let Some(cp) = &tp.connection_pool {
                cp.unsupported("spec.trafficPolicy.connectionPool", &mut out);
            }
            if let Some(lb) = &tp.load_balancer {
                lb.unsupported("spec.trafficPolicy.loadBalancer", &mut out);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_codes_in_retry_on_are_retriable_status_codes_as_istio_reads_them() {
        let r: HttpRetry =
            serde_json::from_value(json!({"attempts": -1, "retryOn": "503, gateway-error,429"}))
                .unwrap();
        let raw = r.to_raw();
        assert_eq!(raw.attempts, Some(0));
        assert_eq!(
            raw.retry_on.as_deref(),
            Some("gateway-error,retriable-status-codes")
        );
        assert_eq!(raw.retriable_status_codes, Some(vec![503, 429]));
    }

    #[test]
    fn fields_not_served_are_listed_by_path() {
        let spec: VirtualServiceSpec = serde_json::from_value(json!({
            "hosts": ["app.example.com"],
            "gateways": ["istio-system/splitgate"],
            "tcp": [],
            "http": [{
                "name": "primary",
                "match": [{"uri": {"prefix": "/"}, "ignoreUriCase": true,
                           "headers": {"x": {"exact": "1", "ignored": 1}}}],
                "route": [{"destination": {"host": "app", "port": {"number": 80}}, "weight": 100.0,
                           "headers": {"response": {"add": {"a": "b"}, "prepend": 1}}}],
                "retries": {"attempts": 3, "retryRemoteLocalities": true}
            }]
        }))
        .unwrap();
        assert_eq!(
            spec.unsupported(),
            [
                "spec.tcp",
                "spec.http[0].retries.retryRemoteLocalities",
                "spec.http[0].match[0].ignoreUriCase",
                "spec.http[0].match[0].headers.x.ignored",
                "spec.http[0].route[0].headers.response.prepend",
            ]
        );
        assert_eq!(spec.http[0].route[0].weight, Some(100.0));
    }
}
