//! Checks a raw config and converts it into typed values, reporting every problem with its path.

use super::actions;
use super::duration::parse_duration;
use super::hashing::Spelling;
use super::headers::is_token_byte;
use super::model::*;
use super::string_match::parse_string_match;
use super::FieldError;
use crate::routing::retry::{self, Retry};
use crate::routing::sticky::{Key, Source as StickySource, Sticky};
use crate::routing::{MatchBlock, Mirror, NamedMatch, Route, Rule, StringMatch};
use crate::server::limits::Limits;
use crate::split::{Split, Target};
use crate::tls::{CertPaths, UpstreamTls};
use crate::upstream::circuit::Limits as CircuitLimits;
use crate::upstream::hash::HashPolicy;
use crate::upstream::outlier::OutlierPolicy;
use crate::upstream::{EndpointAddr, LoadBalancer, UpstreamProtocol};
use http::HeaderName;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Default upstream connect timeout (Istio's).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A body that makes no progress this long is cut off: Envoy's default `stream_idle_timeout`.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default idle connections kept per endpoint.
pub const DEFAULT_MAX_IDLE: usize = 256;
/// Default cap on HTTP/1.1 connections to one endpoint (Envoy's default circuit breaker is
/// 1024 connections).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// A validated config: typed, cross-referenced, ready to compile.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config as written (kept to diff reloads and to apply API overrides on).
    pub raw: RawConfig,
    /// Listening sockets.
    pub listeners: Vec<ListenerSpec>,
    /// Admin API address.
    pub admin_addr: SocketAddr,
    /// Readiness endpoint address.
    pub readiness_addr: SocketAddr,
    /// Metrics endpoint address.
    pub metrics_addr: SocketAddr,
    /// Services in name order; `Target::service` indexes this.
    pub services: Vec<ServiceSpec>,
    /// Routes in config order, with their hosts.
    pub routes: Vec<RouteSpec>,
    /// What to watch in Kubernetes, when the config says so.
    pub kubernetes: Option<super::kubernetes::KubernetesSpec>,
    /// The drain on a shutdown signal.
    pub drain: DrainSpec,
}

/// The drain on a shutdown signal ([`RawDrain`](super::model::RawDrain)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainSpec {
    /// How long the listeners keep accepting, every answer asking its client to go.
    pub delay: Duration,
    /// How long requests in flight then get.
    pub timeout: Duration,
}

/// `drain.delay` unless set.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);
/// `drain.timeout` unless set.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Its name.
    pub name: String,
    /// Where it binds.
    pub addr: SocketAddr,
    /// Its certificates, when it terminates TLS.
    pub tls: Option<Vec<CertPaths>>,
    /// How long a request or response body may make no progress; `None`: no limit.
    pub stream_idle_timeout: Option<Duration>,
    /// What one client may hold or send (`max_connections` 0: derived at bind).
    pub limits: Limits,
}

/// A service and its subsets.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Key in `services`.
    pub name: String,
    /// The Kubernetes Service name (`destination_service_name`): `name` from the config, else
    /// the key.
    pub service_name: String,
    /// Namespace.
    pub namespace: String,
    /// FQDN.
    pub host: String,
    /// Connect timeout for its endpoints.
    pub connect_timeout: Duration,
    /// Endpoint choice within a subset.
    pub load_balancer: LoadBalancer,
    /// Endpoint choice by a request's key, before `load_balancer`.
    pub consistent_hash: Option<HashPolicy>,
    /// Idle connections kept per endpoint.
    pub max_idle: usize,
    /// HTTP/1.1 connections open to one endpoint at once.
    pub max_connections: usize,
    /// What is spoken to the endpoints.
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints.
    pub tls: Option<UpstreamTls>,
    /// Ejection of endpoints that fail in a row.
    pub outlier: Option<OutlierPolicy>,
    /// Each subset's bounds (`connection_pool`).
    pub circuit: CircuitLimits,
    /// Requests an HTTP/1.1 connection carries before it closes.
    pub max_requests_per_connection: Option<u32>,
    /// How long a pooled connection may stay idle.
    pub idle_timeout: Option<Duration>,
    /// Subsets in name order; `Target::subset` indexes this.
    pub subsets: Vec<SubsetSpec>,
}

/// A subset.
#[derive(Debug, Clone)]
pub struct SubsetSpec {
    /// Name.
    pub name: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Workload name.
    pub workload: String,
    /// Endpoint addresses.
    pub endpoints: Vec<EndpointAddr>,
    /// Addresses that get no request but keep their pooled connections ([`RawSubset::standby`]).
    pub standby: Vec<EndpointAddr>,
}

/// A route and the hosts it serves (lowercase).
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// The compiled route.
    pub route: Route,
    /// Its hosts.
    pub hosts: Vec<String>,
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn addr(&mut self, path: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|_| {
            self.add(
                path,
                format!("invalid address {value:?}: expected ip:port, like 0.0.0.0:8080"),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }
}

/// Flags each socket (`(path, address)`) that would bind what an earlier one binds: the same
/// port on the same IP, or on any IP when one of them is the wildcard (`[::]` takes IPv4 too,
/// as Linux binds it dual-stack). Port 0 asks for a fresh port and never clashes. Without
/// this, `run` would fail at its second bind, with a message blaming another process.
fn shared_addresses(errs: &mut Errors, sockets: &[(String, &str)]) {
    let parsed: Vec<(&str, SocketAddr)> = sockets
        .iter()
        .filter_map(|(path, a)| Some((path.as_str(), a.parse().ok()?)))
        .filter(|(_, a): &(&str, SocketAddr)| a.port() != 0)
        .collect();
    let clash = |a: SocketAddr, b: SocketAddr| {
        let wide =
            |x: SocketAddr, y: SocketAddr| x.ip().is_unspecified() && (x.is_ipv6() || y.is_ipv4());
        a.port() == b.port() && (a.ip() == b.ip() || wide(a, b) || wide(b, a))
    };
    for (j, &(path, addr)) in parsed.iter().enumerate() {
        if let Some(&(first, other)) = parsed[..j].iter().find(|(_, b)| clash(addr, *b)) {
            errs.add(
                path,
                format!(
                    "{addr} would share its port with {first} ({other}): each listener, the \
                     admin API, readiness and metrics need an address of their own"
                ),
            );
        }
    }
}

/// A route's allowed protocol upgrades, lowercased; `websocket` when the route names none.
/// `h2c` is refused: its upgrade would tunnel the connection's next requests past routing.
fn upgrades(errs: &mut Errors, p: &str, raw: Option<&[String]>) -> Box<[Box<str>]> {
    let Some(raw) = raw else {
        return Box::new(["websocket".into()]);
    };
    let mut out = Vec::new();
    for (j, u) in raw.iter().enumerate() {
        let token = u.trim().to_ascii_lowercase();
        let path = format!("{p}.upgrades[{j}]");
        if token == "h2c" {
            errs.add(
                path,
                "h2c cannot be allowed: after the switch, the connection's requests would \
                 reach the upstream unrouted (clients may use HTTP/2 with prior knowledge)",
            );
        } else if token.is_empty() || !token.bytes().all(is_token_byte) {
            errs.add(
                path,
                format!("{u:?} is not a protocol name (an HTTP token, like websocket)"),
            );
        } else {
            out.push(token.into());
        }
    }
    out.into()
}

/// Validates a raw config. On failure, returns every problem found, in document order.
pub fn validate(raw: &RawConfig) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors::default();

    let mut listener_names = HashSet::new();
    let listeners = raw
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let p = format!("listeners[{i}]");
            if l.name.is_empty() {
                errs.add(format!("{p}.name"), "must not be empty");
            } else if !listener_names.insert(&l.name) {
                errs.add(
                    format!("{p}.name"),
                    format!("duplicate listener name {:?}", l.name),
                );
            }
            let tls = l.tls.as_ref().map(|t| listener_tls(&mut errs, &p, t));
            let stream_idle_timeout = match l.stream_idle_timeout.as_deref().map(parse_duration) {
                None => Some(DEFAULT_STREAM_IDLE_TIMEOUT),
                Some(Ok(d)) => (!d.is_zero()).then_some(d),
                Some(Err(m)) => {
                    errs.add(format!("{p}.stream_idle_timeout"), m);
                    None
                }
            };
            let limits =
                super::limits::listener_limits(l.limits.as_ref(), &p).unwrap_or_else(|e| {
                    errs.0.extend(e);
                    Limits::listener(0)
                });
            ListenerSpec {
                name: l.name.clone(),
                addr: errs.addr(&format!("{p}.address"), &l.address),
                tls,
                stream_idle_timeout,
                limits,
            }
        })
        .collect();
    if raw.listeners.is_empty() {
        errs.add("listeners", "at least one listener is required");
    }
    let admin_addr = errs.addr("admin.address", &raw.admin.address);
    let readiness_addr = errs.addr("readiness.address", &raw.readiness.address);
    let metrics_addr = errs.addr("metrics.address", &raw.metrics.address);
    let mut sockets: Vec<(String, &str)> = raw
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("listeners[{i}].address"), l.address.as_str()))
        .collect();
    sockets.extend([
        ("admin.address".to_string(), raw.admin.address.as_str()),
        (
            "readiness.address".to_string(),
            raw.readiness.address.as_str(),
        ),
        ("metrics.address".to_string(), raw.metrics.address.as_str()),
    ]);
    shared_addresses(&mut errs, &sockets);
    if !matches!(
        raw.metrics.reporter.as_str(),
        "source" | "destination" | "both"
    ) {
        errs.add(
            "metrics.reporter",
            format!(
                "must be source, destination or both, not {:?}",
                raw.metrics.reporter
            ),
        );
    }

    let mut drain_duration = |field: &str, value: &Option<String>, default: Duration| match value
        .as_deref()
        .map(parse_duration)
    {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(m)) => {
            errs.add(format!("drain.{field}"), m);
            default
        }
    };
    let drain = DrainSpec {
        delay: drain_duration("delay", &raw.drain.delay, DEFAULT_DRAIN_DELAY),
        timeout: drain_duration("timeout", &raw.drain.timeout, DEFAULT_DRAIN_TIMEOUT),
    };

    for (key, s) in raw.kubernetes.iter().flat_map(|k| &k.sticky) {
        // Checked as on a rule of two destinations; the rules it applies to come later.
        sticky(&mut errs, &format!("kubernetes.sticky[{key:?}]"), s, 2);
    }
    let kubernetes = raw.kubernetes.as_ref().and_then(|k| {
        super::kubernetes::kubernetes(k)
            .map_err(|e| errs.0.extend(e))
            .ok()
    });

    let services: Vec<ServiceSpec> = raw
        .services
        .iter()
        .map(|(name, s)| service(&mut errs, name, s))
        .collect();
    let service_index: HashMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();

    let mut route_names = HashSet::new();
    let mut host_owner: HashMap<String, &str> = HashMap::new();
    let mut routes = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if r.name.is_empty() {
            errs.add(format!("{p}.name"), "must not be empty");
        } else if !route_names.insert(&r.name) {
            errs.add(
                format!("{p}.name"),
                format!("duplicate route name {:?}", r.name),
            );
        }
        if r.hosts.is_empty() {
            errs.add(
                format!("{p}.hosts"),
                "at least one host is required (use \"*\" for any)",
            );
        }
        let mut hosts = Vec::new();
        for (j, h) in r.hosts.iter().enumerate() {
            let hp = format!("{p}.hosts[{j}]");
            let host = h.to_ascii_lowercase();
            if let Err(m) = check_host_pattern(&host) {
                errs.add(hp, m);
            } else if let Some(other) = host_owner.insert(host.clone(), &r.name) {
                errs.add(
                    hp,
                    format!("host {h:?} is already served by route {other:?}"),
                );
            } else {
                hosts.push(host);
            }
        }
        routes.push(route(&mut errs, i, r, hosts, &services, &service_index));
    }

    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(Config {
        raw: raw.clone(),
        listeners,
        admin_addr,
        readiness_addr,
        metrics_addr,
        services,
        routes,
        kubernetes,
        drain,
    })
}

/// A rule's retry policy; Istio's default without a `retries` block.
fn retries(errs: &mut Errors, rp: &str, raw: Option<&RawRetries>) -> Retry {
    let Some(raw) = raw else {
        return Retry::default();
    };
    let p = format!("{rp}.retries");
    let default = Retry::default();
    let attempts = raw.attempts.unwrap_or(default.attempts);
    if attempts > retry::MAX_ATTEMPTS {
        errs.add(
            format!("{p}.attempts"),
            format!("{attempts} is more than {}", retry::MAX_ATTEMPTS),
        );
    }
    let per_try_timeout = raw
        .per_try_timeout
        .as_deref()
        .and_then(|t| match parse_duration(t) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(m) => {
                errs.add(format!("{p}.per_try_timeout"), m);
                None
            }
        });
    let on = match raw.retry_on.as_deref().map(retry::parse_retry_on) {
        None => default.on,
        Some(Ok(on)) => on,
        Some(Err(m)) => {
            errs.add(format!("{p}.retry_on"), m);
            default.on
        }
    };
    let codes = match &raw.retriable_status_codes {
        None => default.codes,
        Some(codes) => {
            for (i, c) in codes.iter().enumerate() {
                if !(100..=599).contains(c) {
                    errs.add(
                        format!("{p}.retriable_status_codes[{i}]"),
                        format!("{c} is not an HTTP status"),
                    );
                }
            }
            codes.clone().into()
        }
    };
    Retry {
        attempts: attempts.min(retry::MAX_ATTEMPTS),
        per_try_timeout,
        on,
        codes,
    }
}

/// A rule's `sticky` (at `p`), for a rule of `destinations` destinations.
fn sticky(errs: &mut Errors, p: &str, raw: &RawSticky, destinations: usize) -> Option<Box<Sticky>> {
    if destinations < 2 {
        errs.add(
            p,
            "needs a rule with two or more destinations: it keeps each client on the one it got",
        );
        return None;
    }
    let token = |at: String, errs: &mut Errors, name: &str, what: &str| {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        if !ok {
            errs.add(
                at,
                format!("{name:?} is not a valid {what} name: use letters, digits and - _ . ! ~ * ' + # $ & % ^ ` |"),
            );
        }
        ok
    };
    match (&raw.cookie, &raw.hash_on) {
        (Some(name), None) => {
            let ttl = match raw.ttl.as_deref().map(parse_duration) {
                None => None,
                Some(Ok(d)) if d.is_zero() => None,
                Some(Ok(d)) => Some(d),
                Some(Err(m)) => {
                    errs.add(format!("{p}.ttl"), m);
                    return None;
                }
            };
            token(format!("{p}.cookie"), errs, name, "cookie")
                .then(|| Box::new(Sticky::cookie(name, ttl)))
        }
        (None, Some(h)) => {
            if raw.ttl.is_some() {
                errs.add(
                    format!("{p}.ttl"),
                    "applies only to a cookie the gateway sets (sticky.cookie), not to hash_on",
                );
            }
            let hp = format!("{p}.hash_on");
            let key = match (&h.header, &h.cookie, &h.query) {
                (Some(name), None, None) => match HeaderName::try_from(name.as_str()) {
                    Ok(name) => Key::Header(name),
                    Err(_) => {
                        errs.add(
                            format!("{hp}.header"),
                            format!("{name:?} is not a valid header name"),
                        );
                        return None;
                    }
                },
                (None, Some(name), None) => {
                    if !token(format!("{hp}.cookie"), errs, name, "cookie") {
                        return None;
                    }
                    Key::Cookie(name.as_str().into())
                }
                (None, None, Some(name)) if !name.is_empty() && !name.contains(['&', '=']) => {
                    Key::Query(name.as_str().into())
                }
                (None, None, Some(name)) => {
                    errs.add(
                        format!("{hp}.query"),
                        format!("{name:?} is not a valid query parameter name"),
                    );
                    return None;
                }
                _ => {
                    errs.add(hp, "needs exactly one of header, cookie or query");
                    return None;
                }
            };
            Some(Box::new(Sticky::new(StickySource::Hash(key))))
        }
        _ => {
            errs.add(
                p,
                "needs exactly one of cookie (the gateway sets it) or hash_on (a key the client sends)",
            );
            None
        }
    }
}

/// The rules of route `r` (the `i`th), whose checked hosts are `hosts`.
fn route(
    errs: &mut Errors,
    i: usize,
    r: &RawRoute,
    hosts: Vec<String>,
    services: &[ServiceSpec],
    service_index: &HashMap<&str, usize>,
) -> RouteSpec {
    let p = format!("routes[{i}]");
    if r.http.is_empty() {
        errs.add(format!("{p}.http"), "at least one rule is required");
    }
    let mut rule_names = HashSet::new();
    let rules =
        r.http
            .iter()
            .enumerate()
            .map(|(j, rule)| {
                let rp = format!("{p}.http[{j}]");
                let name = rule.name.clone().unwrap_or_else(|| format!("rule-{j}"));
                if name.is_empty() {
                    errs.add(format!("{rp}.name"), "must not be empty");
                } else if !rule_names.insert(name.clone()) {
                    errs.add(
                        format!("{rp}.name"),
                        format!("duplicate rule name {name:?} in route {:?}", r.name),
                    );
                }
                let matches = rule
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(k, b)| match_block(errs, &format!("{rp}.match[{k}]"), b))
                    .collect();
                // A rule that answers itself (redirect, direct_response) has no destinations.
                let answers = rule.redirect.is_some() || rule.direct_response.is_some();
                let answer = actions::answer(&mut errs.0, &rp, rule);
                let split = if answers {
                    Split::new(Vec::new())
                } else {
                    destinations(errs, &rp, rule, services, service_index)
                };
                let timeout = rule
                    .timeout
                    .as_deref()
                    .and_then(|t| match parse_duration(t) {
                        Ok(d) if d.is_zero() => None,
                        Ok(d) => Some(d),
                        Err(m) => {
                            errs.add(format!("{rp}.timeout"), m);
                            None
                        }
                    });
                let mirrors = mirrors(errs, &rp, rule, services, service_index);
                let cors = rule.cors_policy.as_ref().and_then(|raw| {
                    super::cors::cors_policy(raw)
                        .map_err(|e| {
                            for (field, m) in e {
                                errs.add(format!("{rp}.cors_policy.{field}"), m);
                            }
                        })
                        .ok()
                        .map(Box::new)
                });
                let retry = retries(errs, &rp, rule.retries.as_ref());
                let mut compile_headers = |at: String, raw: &Option<RawHeaders>| {
                    raw.as_ref().and_then(|raw| {
                        super::headers::headers(raw)
                            .map_err(|m| {
                                let (field, message) = m.split_once(": ").unwrap_or(("", &m));
                                errs.add(format!("{at}.headers.{field}"), message)
                            })
                            .ok()
                            .flatten()
                            .map(Box::new)
                    })
                };
                let headers = compile_headers(rp.clone(), &rule.headers);
                let mut destination_headers: Vec<_> = rule
                    .route
                    .iter()
                    .enumerate()
                    .map(|(k, d)| compile_headers(format!("{rp}.route[{k}]"), &d.headers))
                    .collect();
                if destination_headers.iter().all(Option::is_none) {
                    destination_headers.clear();
                }
                let sticky =
                    rule.sticky.as_ref().filter(|_| !answers).and_then(|raw| {
                        sticky(errs, &format!("{rp}.sticky"), raw, rule.route.len())
                    });
                let rewrite = rule
                    .rewrite
                    .as_ref()
                    .and_then(|raw| actions::rewrite(&mut errs.0, &rp, raw));
                let fault = rule
                    .fault
                    .as_ref()
                    .and_then(|raw| actions::fault(&mut errs.0, &rp, raw));
                Arc::new(Rule {
                    name: name.into(),
                    matches,
                    split,
                    timeout,
                    mirrors,
                    retry,
                    headers,
                    destination_headers: destination_headers.into(),
                    sticky,
                    rewrite,
                    answer,
                    fault,
                    cors,
                })
            })
            .collect();
    let upgrades = upgrades(errs, &p, r.upgrades.as_deref());
    RouteSpec {
        route: Route {
            name: r.name.as_str().into(),
            index: i,
            rules,
            upgrades,
        },
        hosts,
    }
}

/// The fast path for a weight change: `old` (the route compiled from `old_raw`) with the
/// weights of `new_raw`, when nothing else differs and the new weights are valid. The rules
/// whose weights stay are shared with `old`, so a change costs the same with 1,000 regex
/// rules as with one. `None` otherwise: the caller validates the route whole (and gets its
/// errors).
pub fn reweigh(old_raw: &RawRoute, new_raw: &RawRoute, old: &RouteSpec) -> Option<RouteSpec> {
    let RawRoute {
        name,
        hosts,
        http,
        upgrades,
    } = new_raw;
    let same_shape = *name == old_raw.name
        && *hosts == old_raw.hosts
        && *upgrades == old_raw.upgrades
        && http.len() == old_raw.http.len()
        && http.len() == old.route.rules.len();
    if !same_shape {
        return None;
    }
    let changes: Vec<_> = old_raw
        .http
        .iter()
        .zip(http)
        .enumerate()
        .filter(|(_, (before, after))| before != after)
        .map(|(k, (before, after))| (k, before, after))
        .collect();
    reweigh_rules(old, &changes)
}

/// `old` with rules replaced: each `(k, before, after)` gives rule `k` the weights of `after`,
/// when nothing else differs from `before` (the raw rule `old`'s rule `k` was compiled from).
/// The other rules are shared with `old`. `None` as for [`reweigh`].
pub fn reweigh_rules(
    old: &RouteSpec,
    changes: &[(usize, &RawRule, &RawRule)],
) -> Option<RouteSpec> {
    let mut rules = old.route.rules.clone();
    for &(k, before, after) in changes {
        if before.route.len() != after.route.len() {
            return None;
        }
        let mut reweighed = after.clone();
        for (d, was) in reweighed.route.iter_mut().zip(&before.route) {
            d.weight = was.weight;
        }
        if reweighed != *before {
            return None;
        }
        let n = after.route.len();
        let weights = after
            .route
            .iter()
            .map(|d| d.weight.or((n == 1).then_some(100)))
            .collect::<Option<Vec<u32>>>()?;
        let rule = rules.get(k)?;
        let targets: Vec<Target> = rule.split.entries().map(|(t, _)| t).collect();
        if weights.iter().all(|&w| w == 0) || targets.len() != n {
            return None;
        }
        let split = Split::new(targets.into_iter().zip(weights).collect());
        rules[k] = Arc::new(Rule {
            split,
            ..Rule::clone(rule)
        });
    }
    Some(RouteSpec {
        route: Route {
            name: old.route.name.clone(),
            index: old.route.index,
            rules,
            upgrades: old.route.upgrades.clone(),
        },
        hosts: old.hosts.clone(),
    })
}

/// Validates route `r`, the `i`th, on its own against `services` (those of a valid config):
/// what changes when only one route does, its name and hosts staying as they were (whose
/// uniqueness across routes is not checked here).
pub fn validate_route(
    i: usize,
    r: &RawRoute,
    services: &[ServiceSpec],
) -> Result<RouteSpec, Vec<FieldError>> {
    let mut errs = Errors::default();
    let service_index: HashMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut hosts = Vec::new();
    for (j, h) in r.hosts.iter().enumerate() {
        let host = h.to_ascii_lowercase();
        match check_host_pattern(&host) {
            Ok(()) => hosts.push(host),
            Err(m) => errs.add(format!("routes[{i}].hosts[{j}]"), m),
        }
    }
    let spec = route(&mut errs, i, r, hosts, services, &service_index);
    if errs.0.is_empty() {
        Ok(spec)
    } else {
        Err(errs.0)
    }
}

/// One subset of the service `service` (whose path is `p`).
fn subset(errs: &mut Errors, p: &str, service: &str, name: &str, ss: &RawSubset) -> SubsetSpec {
    let sp = format!("{p}.subsets.{name}");
    let mut parse = |field: &str, list: &[String]| -> Vec<EndpointAddr> {
        list.iter()
            .enumerate()
            .filter_map(|(i, e)| {
                parse_endpoint(e)
                    .map_err(|m| errs.add(format!("{sp}.{field}[{i}]"), m))
                    .ok()
            })
            .collect()
    };
    let endpoints = parse("endpoints", &ss.endpoints);
    let standby = parse("standby", &ss.standby);
    SubsetSpec {
        name: name.to_string(),
        labels: ss.labels.clone(),
        workload: ss
            .workload
            .clone()
            .unwrap_or_else(|| format!("{service}-{name}")),
        endpoints,
        standby,
    }
}

/// Validates one subset of the service `service` on its own: what changes when only a
/// subset's endpoints, labels or workload do.
pub fn validate_subset(
    service: &str,
    name: &str,
    raw: &RawSubset,
) -> Result<SubsetSpec, Vec<FieldError>> {
    let mut errs = Errors::default();
    let spec = subset(
        &mut errs,
        &format!("services.{service}"),
        service,
        name,
        raw,
    );
    if errs.0.is_empty() {
        Ok(spec)
    } else {
        Err(errs.0)
    }
}

fn service(errs: &mut Errors, name: &str, s: &RawService) -> ServiceSpec {
    let p = format!("services.{name}");
    if s.namespace.is_empty() {
        errs.add(format!("{p}.namespace"), "must not be empty");
    }
    if s.host.is_empty() {
        errs.add(format!("{p}.host"), "must not be empty");
    }
    if s.subsets.is_empty() {
        errs.add(format!("{p}.subsets"), "at least one subset is required");
    }
    let connect_timeout = match s.policy.connect_timeout.as_deref().map(parse_duration) {
        None => DEFAULT_CONNECT_TIMEOUT,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            errs.add(format!("{p}.policy.connect_timeout"), "must be above zero");
            DEFAULT_CONNECT_TIMEOUT
        }
        Some(Err(m)) => {
            errs.add(format!("{p}.policy.connect_timeout"), m);
            DEFAULT_CONNECT_TIMEOUT
        }
    };
    let load_balancer = match s.policy.load_balancer.as_deref() {
        None => LoadBalancer::default(),
        Some(lb) => LoadBalancer::parse(lb).unwrap_or_else(|| {
            errs.add(
                format!("{p}.policy.load_balancer"),
                format!("must be round_robin, least_request or random, not {lb:?}"),
            );
            LoadBalancer::default()
        }),
    };
    let consistent_hash = s.policy.consistent_hash.as_ref().and_then(|raw| {
        let hp = format!("{p}.policy.consistent_hash");
        if s.policy.load_balancer.is_some() {
            errs.add(
                &hp,
                "cannot be combined with load_balancer: a key picks the endpoint, and requests \
                 without one are balanced round robin",
            );
        }
        super::hashing::consistent_hash(raw, Spelling::Snake)
            .map_err(|problems| {
                for (field, message) in problems {
                    let at = if field.is_empty() {
                        hp.clone()
                    } else {
                        format!("{hp}.{field}")
                    };
                    errs.add(at, message);
                }
            })
            .ok()
    });
    let protocol = match s.policy.protocol.as_deref() {
        None | Some("http1") => UpstreamProtocol::Http1,
        Some("http2") => UpstreamProtocol::Http2,
        Some(other) => {
            errs.add(
                format!("{p}.policy.protocol"),
                format!("must be http1 or http2, not {other:?}"),
            );
            UpstreamProtocol::Http1
        }
    };
    let tls = s.policy.tls.as_ref().and_then(|t| {
        let tp = format!("{p}.policy.tls");
        upstream_tls(t, &s.host, protocol)
            .map_err(|(field, m)| errs.add(format!("{tp}.{field}"), m))
            .ok()
    });
    let subsets = s
        .subsets
        .iter()
        .map(|(sub, ss)| subset(errs, &p, name, sub, ss))
        .collect();
    let max_connections = match s.policy.max_connections_per_endpoint {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(0) => {
            errs.add(
                format!("services.{name}.policy.max_connections_per_endpoint"),
                "must be above 0",
            );
            DEFAULT_MAX_CONNECTIONS
        }
        Some(n) => n.min(1 << 24),
    };
    let pool = connection_pool(errs, &p, s.policy.connection_pool.as_ref());
    ServiceSpec {
        name: name.to_string(),
        service_name: s.name.clone().unwrap_or_else(|| name.to_string()),
        namespace: s.namespace.clone(),
        host: s.host.clone(),
        connect_timeout,
        load_balancer,
        consistent_hash,
        max_idle: s.policy.max_idle_per_endpoint.unwrap_or(DEFAULT_MAX_IDLE),
        max_connections,
        protocol,
        tls,
        outlier: outlier(errs, &p, s.policy.outlier_detection.as_ref()),
        circuit: pool.circuit,
        max_requests_per_connection: pool.max_requests_per_connection,
        idle_timeout: pool.idle_timeout,
        subsets,
    }
}

/// Pool idle timeout when `connection_pool.idle_timeout` is left out (Envoy's and Istio's).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A service's `policy.connection_pool`, checked.
struct ConnectionPool {
    circuit: CircuitLimits,
    max_requests_per_connection: Option<u32>,
    idle_timeout: Option<Duration>,
}

fn connection_pool(errs: &mut Errors, p: &str, raw: Option<&RawConnectionPool>) -> ConnectionPool {
    let Some(raw) = raw else {
        return ConnectionPool {
            circuit: CircuitLimits::default(),
            max_requests_per_connection: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        };
    };
    let p = format!("{p}.policy.connection_pool");
    let mut bound = |field: &str, value: Option<usize>| match value {
        Some(0) => {
            errs.add(
                format!("{p}.{field}"),
                "must be above 0 (leave it out for no bound)",
            );
            None
        }
        other => other,
    };
    let circuit = CircuitLimits {
        max_connections: bound("max_connections", raw.max_connections),
        max_pending: bound("http1_max_pending_requests", raw.http1_max_pending_requests),
        max_requests: bound("http2_max_requests", raw.http2_max_requests),
        max_retries: bound("max_retries", raw.max_retries),
    };
    let idle_timeout = match raw.idle_timeout.as_deref().map(parse_duration) {
        None => Some(DEFAULT_IDLE_TIMEOUT),
        Some(Ok(d)) => (!d.is_zero()).then_some(d),
        Some(Err(m)) => {
            errs.add(format!("{p}.idle_timeout"), m);
            Some(DEFAULT_IDLE_TIMEOUT)
        }
    };
    ConnectionPool {
        circuit,
        max_requests_per_connection: raw.max_requests_per_connection.filter(|&n| n > 0),
        idle_timeout,
    }
}

/// A service's `policy.outlier_detection`, with Istio's defaults for what it leaves out.
fn outlier(errs: &mut Errors, p: &str, raw: Option<&RawOutlierDetection>) -> Option<OutlierPolicy> {
    let raw = raw?;
    let p = format!("{p}.policy.outlier_detection");
    let mut duration = |field: &str, value: &Option<String>, default: Duration| match value
        .as_deref()
        .map(parse_duration)
    {
        None => default,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            errs.add(format!("{p}.{field}"), "must be above zero");
            default
        }
        Some(Err(m)) => {
            errs.add(format!("{p}.{field}"), m);
            default
        }
    };
    let interval = duration("interval", &raw.interval, Duration::from_secs(10));
    let base_ejection_time = duration(
        "base_ejection_time",
        &raw.base_ejection_time,
        Duration::from_secs(30),
    );
    let max_ejection_percent = raw.max_ejection_percent.unwrap_or(10);
    if max_ejection_percent > 100 {
        errs.add(
            format!("{p}.max_ejection_percent"),
            format!("{max_ejection_percent} is more than 100"),
        );
    }
    Some(OutlierPolicy {
        consecutive_5xx: raw.consecutive_5xx_errors.unwrap_or(5),
        consecutive_gateway: raw.consecutive_gateway_errors.unwrap_or(0),
        interval,
        base_ejection_time,
        max_ejection_percent: max_ejection_percent.min(100),
    })
}

/// A listener's `tls`: the pairs it names. Their files are checked by [`check_files`], not
/// here, so that a certificate mid-rotation never holds back a config reload.
fn listener_tls(errs: &mut Errors, p: &str, t: &RawTls) -> Vec<CertPaths> {
    if t.certificates.is_empty() {
        errs.add(
            format!("{p}.tls.certificates"),
            "at least one certificate is required",
        );
    }
    t.certificates
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let cp = format!("{p}.tls.certificates[{j}]");
            for (field, value) in [("cert_file", &c.cert_file), ("key_file", &c.key_file)] {
                if value.is_empty() {
                    errs.add(format!("{cp}.{field}"), "must not be empty");
                }
            }
            CertPaths {
                cert_file: c.cert_file.clone().into(),
                key_file: c.key_file.clone().into(),
            }
        })
        .collect()
}

/// A service's `policy.tls`, its CA file read now: a reload that names an unreadable CA is
/// rejected whole.
fn upstream_tls(
    t: &RawUpstreamTls,
    host: &str,
    protocol: UpstreamProtocol,
) -> Result<UpstreamTls, (&'static str, String)> {
    let ca = if t.insecure_skip_verify {
        Vec::new()
    } else {
        let path = t
            .ca_file
            .as_deref()
            .unwrap_or(crate::tls::client::SYSTEM_CA_FILE);
        match super::files::read_regular(Path::new(path), super::files::MAX_FILE_BYTES) {
            Ok(bytes) => bytes,
            Err(e @ super::files::FileError::Io(_)) => {
                return Err(("ca_file", format!("cannot read {path}: {e}")))
            }
            Err(e) => return Err(("ca_file", format!("{path:?} {e}"))),
        }
    };
    let sni = t.sni.as_deref().unwrap_or(host);
    let ca_file = t
        .ca_file
        .as_deref()
        .unwrap_or(crate::tls::client::SYSTEM_CA_FILE);
    UpstreamTls::new(
        &ca,
        sni,
        t.insecure_skip_verify,
        protocol == UpstreamProtocol::Http2,
    )
    .map_err(|e| match e.field {
        "ca_file" => (e.field, format!("{ca_file} {}", e.message)),
        _ => (e.field, e.message),
    })
}

/// What `splitgate validate` and `splitgate run` check on disk beyond [`validate`]: that each
/// listener certificate and key can serve, that the admin token file holds a token, and that
/// the state file's directory exists and can be written. An expired certificate is a warning.
/// Works on the raw config, so a config that fails [`validate`] gets its file problems listed
/// in the same run.
pub fn check_files(raw: &RawConfig) -> (Vec<FieldError>, Vec<FieldError>) {
    let mut errors = Errors::default();
    let mut warnings = Errors::default();
    if let Some(path) = &raw.admin.token_file {
        if let Err(m) = super::files::read_token(Path::new(path)) {
            errors.add("admin.token_file", m);
        }
    }
    if let Some(path) = &raw.admin.state_file {
        if let Err(m) = state_dir(Path::new(path)) {
            errors.add("admin.state_file", m);
        }
    }
    for (i, l) in raw.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        // An empty name is `validate`'s to report.
        let pairs: Vec<(usize, CertPaths)> = tls
            .certificates
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.cert_file.is_empty() && !c.key_file.is_empty())
            .map(|(j, c)| {
                let paths = CertPaths {
                    cert_file: c.cert_file.clone().into(),
                    key_file: c.key_file.clone().into(),
                };
                (j, paths)
            })
            .collect();
        let only: Vec<CertPaths> = pairs.iter().map(|(_, p)| p.clone()).collect();
        let found = crate::tls::server::check_pairs(&only);
        let p = format!("listeners[{i}].tls.certificates");
        for (k, e) in found.errors {
            errors.add(
                format!("{p}[{}].{}", pairs[k].0, e.field),
                format!("{}: {}", e.path, e.message),
            );
        }
        for (k, m) in found.expired {
            warnings.add(format!("{p}[{}].cert_file", pairs[k].0), m);
        }
    }
    (errors.0, warnings.0)
}

/// Whether the state file at `path` can be written: its directory exists and is not read-only
/// (the file is replaced through a temporary file beside it), and the path itself, if it
/// exists, is a file.
fn state_dir(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "its directory {} does not exist (or is not a directory); create it, or name a \
             state file in one that does",
            dir.display()
        ));
    }
    if path.exists() && !path.is_file() {
        return Err(format!("{} exists and is not a file", path.display()));
    }
    if std::fs::metadata(dir).is_ok_and(|m| m.permissions().readonly()) {
        return Err(format!(
            "its directory {} is read-only; the file is replaced through a temporary file there",
            dir.display()
        ));
    }
    Ok(())
}

/// Finds a destination's service and subset, or records why it can't.
fn resolve(
    errs: &mut Errors,
    path: &str,
    d: &RawDestination,
    services: &[ServiceSpec],
    service_index: &HashMap<&str, usize>,
) -> Option<Target> {
    let Some(&service) = service_index.get(d.service.as_str()) else {
        let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        errs.add(
            format!("{path}.service"),
            format!(
                "unknown service {:?} (known: {})",
                d.service,
                known.join(", ")
            ),
        );
        return None;
    };
    let subsets = &services[service].subsets;
    let Some(subset) = subsets.iter().position(|s| s.name == d.subset) else {
        let known: Vec<&str> = subsets.iter().map(|s| s.name.as_str()).collect();
        errs.add(
            format!("{path}.subset"),
            format!(
                "unknown subset {:?} of service {:?} (known: {})",
                d.subset,
                d.service,
                known.join(", ")
            ),
        );
        return None;
    };
    Some(Target { service, subset })
}

/// A rule's mirrors: its `mirror` (with `mirror_percentage`) or its `mirrors`, which Istio
/// does not allow together.
fn mirrors(
    errs: &mut Errors,
    rp: &str,
    rule: &RawRule,
    services: &[ServiceSpec],
    service_index: &HashMap<&str, usize>,
) -> Box<[Mirror]> {
    if rule.mirror.is_none() && rule.mirror_percentage.is_some() {
        errs.add(format!("{rp}.mirror_percentage"), "set without a mirror");
    }
    if rule.mirror.is_some() && !rule.mirrors.is_empty() {
        errs.add(
            format!("{rp}.mirrors"),
            "cannot be set beside mirror (as in Istio): list every mirror under mirrors",
        );
        return Box::new([]);
    }
    let single = rule.mirror.iter().map(|d| {
        let at = (format!("{rp}.mirror"), format!("{rp}.mirror_percentage"));
        (at, d, rule.mirror_percentage)
    });
    let listed = rule.mirrors.iter().enumerate().map(|(k, m)| {
        let at = format!("{rp}.mirrors[{k}]");
        let at = (format!("{at}.destination"), format!("{at}.percentage"));
        (at, &m.destination, m.percentage)
    });
    let mut out = Vec::new();
    for ((dp, pp), dest, pct) in single.chain(listed) {
        let target = resolve(errs, &dp, dest, services, service_index);
        let pct = pct.unwrap_or(100.0);
        if !(0.0..=100.0).contains(&pct) {
            errs.add(pp, format!("must be between 0 and 100, not {pct}"));
            continue;
        }
        if let Some(target) = target {
            out.push(Mirror {
                target,
                per_million: (pct * 10_000.0).round() as u32,
            });
        }
    }
    out.into()
}

fn destinations(
    errs: &mut Errors,
    rp: &str,
    rule: &RawRule,
    services: &[ServiceSpec],
    service_index: &HashMap<&str, usize>,
) -> Split {
    if rule.route.is_empty() {
        errs.add(
            format!("{rp}.route"),
            "at least one destination is required",
        );
    }
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    for (k, d) in rule.route.iter().enumerate() {
        let dp = format!("{rp}.route[{k}]");
        let weight = match d.weight {
            Some(w) => w,
            None if rule.route.len() == 1 => 100,
            None => {
                errs.add(
                    format!("{dp}.weight"),
                    "required when a rule has more than one destination",
                );
                0
            }
        };
        let Some(target) = resolve(
            errs,
            &format!("{dp}.destination"),
            &d.destination,
            services,
            service_index,
        ) else {
            continue;
        };
        let Target { service, subset } = target;
        if !seen.insert((service, subset)) {
            errs.add(
                format!("{dp}.destination"),
                "the same service subset appears twice in this rule",
            );
        }
        entries.push((Target { service, subset }, weight));
    }
    if !entries.is_empty()
        && entries.iter().all(|e| e.1 == 0)
        && rule.route.iter().all(|d| d.weight.is_some())
    {
        errs.add(
            format!("{rp}.route"),
            "the weights sum to 0: at least one destination needs a weight above 0",
        );
    }
    if entries.is_empty() {
        // Keep the shape valid for the rest of validation; an error has been recorded.
        entries.push((
            Target {
                service: 0,
                subset: 0,
            },
            1,
        ));
    }
    Split::new(entries)
}

fn match_block(errs: &mut Errors, p: &str, b: &RawMatchBlock) -> MatchBlock {
    let mut one = |field: &str, m: &Option<RawStringMatch>| {
        m.as_ref()
            .and_then(|m| string_match(errs, &format!("{p}.{field}"), m))
    };
    let (uri, method, authority) = (
        one("uri", &b.uri),
        one("method", &b.method),
        one("authority", &b.authority),
    );
    let mut named =
        |field: &str, map: &BTreeMap<String, RawStringMatch>, header: bool| -> Vec<NamedMatch> {
            map.iter()
                .filter_map(|(name, m)| {
                    let np = format!("{p}.{field}.{name}");
                    let name = if header {
                        name.to_ascii_lowercase()
                    } else {
                        name.clone()
                    };
                    let parsed = header.then(|| http::HeaderName::from_bytes(name.as_bytes()));
                    if name.is_empty() || matches!(parsed, Some(Err(_))) {
                        errs.add(&np, format!("invalid name {name:?}"));
                        return None;
                    }
                    let test = string_match(errs, &np, m)?;
                    Some(NamedMatch {
                        name: name.into(),
                        header: parsed.and_then(Result::ok),
                        test,
                    })
                })
                .collect()
        };
    MatchBlock {
        uri,
        method,
        authority,
        headers: named("headers", &b.headers, true),
        without_headers: named("without_headers", &b.without_headers, true),
        query_params: named("query_params", &b.query_params, false),
        cookies: named("cookies", &b.cookies, false),
    }
}

fn string_match(errs: &mut Errors, p: &str, m: &RawStringMatch) -> Option<StringMatch> {
    parse_string_match(m)
        .map_err(|(sub, message)| {
            errs.add(
                if sub.is_empty() {
                    p.to_string()
                } else {
                    format!("{p}.{sub}")
                },
                message,
            )
        })
        .ok()
}

fn check_host_pattern(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if host == "*" {
        return Ok(());
    }
    let ok = !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid host {host:?}: expected a DNS name, \"*.suffix\" or \"*\" (no port)"
        ))
    }
}

/// Parses `ip:port`, `[v6]:port` or `dns-name:port`.
pub fn parse_endpoint(s: &str) -> Result<EndpointAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return if a.port() == 0 {
            Err(format!("invalid endpoint {s:?}: port 0"))
        } else {
            Ok(EndpointAddr::Ip(a))
        };
    }
    let bad = || {
        format!("invalid endpoint {s:?}: expected host:port, like 10.0.0.7:8080 or reviews-v1:9080")
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    let looks_like_ip = host.bytes().all(|b| b.is_ascii_digit() || b == b'.') || host.contains(':');
    if looks_like_ip && host.parse::<IpAddr>().is_err() {
        return Err(bad());
    }
    check_host_pattern(&host.to_ascii_lowercase()).map_err(|_| bad())?;
    if host.starts_with('*') {
        return Err(bad());
    }
    Ok(EndpointAddr::Dns(format!("{host}:{port}").into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(matches!(
            parse_endpoint("127.0.0.1:80"),
            Ok(EndpointAddr::Ip(_))
        ));
        assert!(matches!(
            parse_endpoint("[::1]:80"),
            Ok(EndpointAddr::Ip(_))
        ));
        assert!(matches!(
            parse_endpoint("reviews-v1.ns.svc:9080"),
            Ok(EndpointAddr::Dns(_))
        ));
        for bad in [
            "127.0.0.1",
            "127.0.0.300:80",
            "host:0",
            "host:99999",
            ":80",
            "a b:80",
            "*.x:80",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod reweigh_tests {
    use super::*;

    const YAML: &str = r#"
listeners: [{ name: http, address: "127.0.0.1:0" }]
services:
  svc:
    namespace: default
    host: svc.default.svc.cluster.local
    subsets:
      stable: { endpoints: ["127.0.0.1:1"] }
      canary: { endpoints: ["127.0.0.1:2"] }
routes:
  - name: main
    hosts: ["*"]
    http:
      - name: by-path
        match: [{ uri: { regex: "/r/[a-z]+" } }]
        route: [{ destination: { service: svc, subset: canary } }]
      - name: primary
        route:
          - { destination: { service: svc, subset: stable }, weight: 90 }
          - { destination: { service: svc, subset: canary }, weight: 10 }
"#;

    fn weights(spec: &RouteSpec, rule: usize) -> Vec<u32> {
        spec.route.rules[rule]
            .split
            .entries()
            .map(|e| e.1)
            .collect()
    }

    #[test]
    fn a_weight_change_rebuilds_only_its_rule_and_anything_else_takes_the_long_way() {
        let config = crate::config::from_str(YAML, "t").unwrap();
        let (raw, spec) = (&config.raw.routes[0], &config.routes[0]);
        let mut next = raw.clone();
        next.http[1].route[0].weight = Some(20);
        next.http[1].route[1].weight = Some(80);
        let got = reweigh(raw, &next, spec).expect("weights only");
        assert_eq!(weights(&got, 1), [20, 80]);
        assert!(
            Arc::ptr_eq(&got.route.rules[0], &spec.route.rules[0]),
            "the regex rule is shared, not rebuilt"
        );
        // The same as validating it whole.
        let whole = validate_route(0, &next, &config.services).unwrap();
        assert_eq!(weights(&whole, 1), weights(&got, 1));

        for (what, edit) in [
            (
                "a match",
                (|r: &mut RawRoute| r.http[0].matches.clear()) as fn(&mut RawRoute),
            ),
            ("a timeout", |r| r.http[1].timeout = Some("1s".into())),
            ("a destination", |r| {
                r.http[1].route[1].destination.subset = "stable".into()
            }),
            ("weights summing to 0", |r| {
                r.http[1].route[0].weight = Some(0);
                r.http[1].route[1].weight = Some(0);
            }),
            ("a missing weight", |r| r.http[1].route[0].weight = None),
            ("a rule less", |r| {
                r.http.remove(0);
            }),
            ("the hosts", |r| r.hosts = vec!["a.example".into()]),
        ] {
            let mut next = raw.clone();
            edit(&mut next);
            assert!(reweigh(raw, &next, spec).is_none(), "{what}");
        }
    }
}
