//! From the watched objects to config: a pure function, run again whole on every change.
//!
//! Each VirtualService bound to our gateway becomes a route, named `<name>.<namespace>`, whose
//! destinations are Kubernetes Services: service `<name>.<namespace>` (`…:<port>` when the
//! Service has several ports), subset the DestinationRule subset named, or `*` (every ready
//! endpoint) when none is. The result is checked object by object, so that one bad object
//! is rejected alone and its last valid version keeps serving.

use super::cluster::{Cluster, Key, Meta, Object};
use super::istio::{
    CorsPolicy, Destination, DestinationRuleSpec, HttpMatch, LoadBalancerSettings, StringMatch,
    VirtualServiceSpec,
};
use crate::config::hashing::{self, Spelling};
use crate::config::kubernetes::KubernetesSpec;
use crate::config::model::{
    RawConfig, RawCorsPolicy, RawDestination, RawDestinationWeight, RawListener, RawMatchBlock,
    RawMirror, RawRoute, RawRule, RawService, RawSticky, RawStringMatch, RawSubset,
};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The subset of a destination that names none: every ready endpoint of the Service.
pub const ALL_ENDPOINTS: &str = "*";

/// What became of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Served as it is now.
    Applied,
    /// Not served as it is now; `served` says whether an earlier version still is.
    Rejected,
    /// Not for this gateway (a VirtualService bound elsewhere, a DestinationRule no served
    /// route uses).
    Ignored,
}

impl Status {
    /// As `/v1/state` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "applied",
            Status::Rejected => "rejected",
            Status::Ignored => "ignored",
        }
    }
}

/// One object's outcome, for `/v1/state` and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectStatus {
    /// `VirtualService` or `DestinationRule`.
    pub kind: &'static str,
    /// Its metadata.
    pub meta: Meta,
    /// Applied, rejected or ignored.
    pub status: Status,
    /// Why it was rejected or ignored; empty when applied.
    pub message: String,
    /// Field paths it sets that are not served.
    pub unsupported: Vec<String>,
    /// The generation served now, if any (an earlier one when this one was rejected).
    pub served_generation: Option<i64>,
}

/// The last version of each VirtualService that was served, and of each DestinationRule such a
/// version drew on: what serves while a newer version is bad.
#[derive(Debug, Clone, Default)]
pub struct LastGood {
    /// VirtualServices: generation and spec.
    pub virtual_services: BTreeMap<Key, (i64, VirtualServiceSpec)>,
    /// DestinationRules: generation and spec.
    pub destination_rules: BTreeMap<Key, (i64, DestinationRuleSpec)>,
}

impl LastGood {
    /// Nothing served yet.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The cluster with each DestinationRule a served VirtualService drew on as it was then;
/// made once per translation, and only when a VirtualService fails without it.
struct Earlier(std::cell::OnceCell<Cluster>);

impl Earlier {
    fn get<'a>(&'a self, cluster: &Cluster, last_good: &LastGood) -> &'a Cluster {
        self.0.get_or_init(|| {
            let mut c = cluster.clone();
            for (key, (generation, spec)) in &last_good.destination_rules {
                if let Some(o) = c.destination_rules.get_mut(key) {
                    o.spec = Ok(spec.clone());
                    o.meta.generation = *generation;
                }
            }
            c
        })
    }
}

/// Records the DestinationRules `rules` (as `cluster` has them) as last good, except those
/// held at an earlier version.
fn keep_rules(out: &mut Translation, cluster: &Cluster, rules: &BTreeSet<Key>) {
    for key in rules {
        if out.held.contains_key(key) {
            continue;
        }
        if let Some(Ok(spec)) = cluster.destination_rules.get(key).map(|o| &o.spec) {
            let generation = cluster.destination_rules[key].meta.generation;
            out.last_good
                .destination_rules
                .insert(key.clone(), (generation, spec.clone()));
        }
    }
}

/// The config that the objects make.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    /// Services by key.
    pub services: BTreeMap<String, RawService>,
    /// Routes, oldest VirtualService first.
    pub routes: Vec<RawRoute>,
    /// Every VirtualService and DestinationRule, by kind, namespace and name.
    pub objects: Vec<ObjectStatus>,
    /// The versions served now, to fall back on next time.
    pub last_good: LastGood,
    /// How each served subset's endpoints were chosen, by service key and subset: what an
    /// endpoint or pod change recomputes without translating again.
    pub recipes: BTreeMap<(String, String), Recipe>,
    /// What each VirtualService served at its current generation draws on.
    pub served: BTreeMap<Key, Served>,
    /// DestinationRules served at an earlier generation because their current one breaks a
    /// VirtualService that draws on them: the generation served, and why.
    pub held: BTreeMap<Key, (i64, String)>,
}

/// What a served VirtualService draws on. A new version that draws on the same (same hosts,
/// same subsets chosen the same way) changes its route alone: [`translate_one`] is enough.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// Its hosts, as served.
    pub hosts: Vec<String>,
    /// The subsets it sends to, by service key and subset.
    pub recipes: BTreeMap<(String, String), Recipe>,
    /// The DestinationRules whose subsets it names.
    pub rules_used: BTreeSet<Key>,
}

/// One VirtualService translated alone: its route, its status and what it draws on, as
/// [`translate`] makes them when no other route claims its hosts. `None` when it is not served
/// as it is now (unreadable, bound elsewhere, or invalid): only a full translation says what
/// is served then.
pub fn translate_one(
    cluster: &Cluster,
    spec: &KubernetesSpec,
    file: &RawConfig,
    vs: &Object<VirtualServiceSpec>,
) -> Option<(RawRoute, ObjectStatus, Served)> {
    let s = vs.spec.as_ref().ok()?;
    if !s
        .gateways
        .iter()
        .any(|g| names_gateway(g, &vs.meta.namespace, spec))
    {
        return None;
    }
    let t = route_for(cluster, spec, file, &vs.meta, s, &HashMap::new()).ok()?;
    let status = ObjectStatus {
        kind: "VirtualService",
        meta: vs.meta.clone(),
        status: Status::Applied,
        message: String::new(),
        unsupported: s.unsupported(),
        served_generation: Some(vs.meta.generation),
    };
    let served = Served {
        hosts: t.route.hosts.clone(),
        recipes: t.recipes,
        rules_used: t.rules_used,
    };
    Some((t.route, status, served))
}

/// How a subset's endpoints are chosen: the ready endpoints of a Service's port, of the pods
/// a DestinationRule subset's labels select (every pod when none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// The Service port's name (empty for a sole unnamed port).
    pub port_name: String,
    /// The subset's pod labels, when the destination names a subset.
    pub selector: Option<BTreeMap<String, String>>,
}

impl Recipe {
    /// The subset as `cluster` makes it now.
    pub fn subset(&self, cluster: &Cluster) -> RawSubset {
        endpoints(
            cluster,
            &self.namespace,
            &self.service,
            &self.port_name,
            self.selector.as_ref(),
        )
    }
}

/// The route name of a VirtualService.
pub fn route_name(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}")
}

/// Translates `cluster` for the gateway `spec`, beside the file's `file` config (whose hosts
/// and service keys the objects may not take).
pub fn translate(
    cluster: &Cluster,
    spec: &KubernetesSpec,
    file: &RawConfig,
    last_good: &LastGood,
) -> Translation {
    let mut out = Translation::default();
    let mut claimed: HashMap<String, String> = file
        .routes
        .iter()
        .flat_map(|r| {
            r.hosts
                .iter()
                .map(move |h| (h.clone(), format!("file route {}", r.name)))
        })
        .collect();
    let mut used_rules: BTreeSet<Key> = BTreeSet::new();
    let earlier = Earlier(std::cell::OnceCell::new());
    let mut ordered: Vec<&Object<VirtualServiceSpec>> = cluster.virtual_services.values().collect();
    ordered.sort_by(|a, b| {
        (&a.meta.created, &a.meta.namespace, &a.meta.name).cmp(&(
            &b.meta.created,
            &b.meta.namespace,
            &b.meta.name,
        ))
    });
    for vs in ordered {
        let key = vs.meta.key();
        let unsupported = vs
            .spec
            .as_ref()
            .map(|s| s.unsupported())
            .unwrap_or_default();
        let status = |status, message: String, served| ObjectStatus {
            kind: "VirtualService",
            meta: vs.meta.clone(),
            status,
            message,
            unsupported: unsupported.clone(),
            served_generation: served,
        };
        let bound = match &vs.spec {
            Ok(s) => s
                .gateways
                .iter()
                .any(|g| names_gateway(g, &vs.meta.namespace, spec)),
            // An unreadable spec may have been bound: its last version decides.
            Err(_) => last_good.virtual_services.contains_key(&key),
        };
        if !bound {
            out.objects.push(status(
                Status::Ignored,
                format!(
                    "spec.gateways does not name {}/{}",
                    spec.gateway_namespace, spec.gateway_name
                ),
                None,
            ));
            continue;
        }
        let attempt =
            |s: &VirtualServiceSpec| route_for(cluster, spec, file, &vs.meta, s, &claimed);
        let earlier = &earlier;
        let now = vs.spec.clone().and_then(|s| attempt(&s).map(|t| (t, s)));
        let (served, status) = match now {
            Ok((t, s)) => {
                keep_rules(&mut out, cluster, &t.rules_used);
                out.last_good
                    .virtual_services
                    .insert(key.clone(), (vs.meta.generation, s));
                out.served.insert(
                    key.clone(),
                    Served {
                        hosts: t.route.hosts.clone(),
                        recipes: t.recipes.clone(),
                        rules_used: t.rules_used.clone(),
                    },
                );
                (
                    Some(t),
                    status(Status::Applied, String::new(), Some(vs.meta.generation)),
                )
            }
            Err(why) => {
                // What still serves: this version with the DestinationRules as they were when
                // it last served (a rule change broke it), else the last good version with the
                // rules as they are, else with the rules as they were.
                let with_earlier = |s: &VirtualServiceSpec| {
                    let c = earlier.get(cluster, last_good);
                    route_for(c, spec, file, &vs.meta, s, &claimed)
                };
                let old = last_good.virtual_services.get(&key);
                let this = vs.spec.as_ref().ok();
                // The bool: served with the rules as they were (which are then held).
                let fallback = this
                    .filter(|_| !last_good.destination_rules.is_empty())
                    .and_then(|s| {
                        let t = with_earlier(s).ok()?;
                        Some((t, true, vs.meta.generation, s.clone()))
                    })
                    .or_else(|| {
                        let (generation, old) = old?;
                        let (t, earlier) = match attempt(old) {
                            Ok(t) => (t, false),
                            Err(_) => (with_earlier(old).ok()?, true),
                        };
                        Some((t, earlier, *generation, old.clone()))
                    });
                match fallback {
                    Some((t, used_earlier, generation, s)) => {
                        if used_earlier {
                            hold_rules(&mut out, cluster, last_good, &t.rules_used, &key, &why);
                        }
                        keep_rules(&mut out, cluster, &t.rules_used);
                        out.last_good
                            .virtual_services
                            .insert(key.clone(), (generation, s));
                        let served = if generation == vs.meta.generation {
                            status(Status::Applied, String::new(), Some(generation))
                        } else {
                            let message = format!("{why}; generation {generation} is still served");
                            status(Status::Rejected, message, Some(generation))
                        };
                        (Some(t), served)
                    }
                    None => (None, status(Status::Rejected, why, None)),
                }
            }
        };
        out.objects.push(status);
        if let Some(t) = served {
            for h in &t.route.hosts {
                claimed.insert(h.clone(), format!("VirtualService {}/{}", key.0, key.1));
            }
            used_rules.extend(t.rules_used);
            // Two VirtualServices may send to one Service, each to its own subsets.
            for (key, service) in t.services {
                match out.services.entry(key) {
                    Entry::Vacant(e) => {
                        e.insert(service);
                    }
                    Entry::Occupied(mut e) => e.get_mut().subsets.extend(service.subsets),
                }
            }
            out.recipes.extend(t.recipes);
            out.routes.push(t.route);
        }
    }
    for dr in cluster.destination_rules.values() {
        let key = dr.meta.key();
        let problem = dr.spec.as_ref().ok().and_then(|s| {
            load_balancer_problem(s.traffic_policy.as_ref()?.load_balancer.as_ref()?)
        });
        if let Some((generation, why)) = out.held.get(&key) {
            // Its own problem when it has one, else the VirtualService it breaks.
            let own = match &dr.spec {
                Err(e) => Some(e.clone()),
                Ok(_) => problem.clone(),
            };
            let cause = own.unwrap_or_else(|| format!("this generation breaks {why}"));
            out.objects.push(ObjectStatus {
                kind: "DestinationRule",
                meta: dr.meta.clone(),
                status: Status::Rejected,
                message: format!("{cause}; generation {generation} is still served"),
                unsupported: dr
                    .spec
                    .as_ref()
                    .map(|s| s.unsupported())
                    .unwrap_or_default(),
                served_generation: Some(*generation),
            });
            continue;
        }
        let (status, message) = match &dr.spec {
            Err(e) => (Status::Rejected, e.clone()),
            Ok(_) if problem.is_some() => (Status::Rejected, problem.unwrap_or_default()),
            Ok(_) if used_rules.contains(&key) => (Status::Applied, String::new()),
            Ok(s) => (
                Status::Ignored,
                format!("no served VirtualService names a subset of {}", s.host),
            ),
        };
        out.objects.push(ObjectStatus {
            kind: "DestinationRule",
            meta: dr.meta.clone(),
            status,
            message,
            unsupported: dr
                .spec
                .as_ref()
                .map(|s| s.unsupported())
                .unwrap_or_default(),
            served_generation: (status == Status::Applied).then_some(dr.meta.generation),
        });
    }
    out.objects.sort_by(|a, b| {
        (a.kind, &a.meta.namespace, &a.meta.name).cmp(&(b.kind, &b.meta.namespace, &b.meta.name))
    });
    out
}

/// Marks as held the DestinationRules of `rules` whose current version differs from the one
/// last served (VirtualService `vs` needed the earlier one: `why`), keeping that one.
fn hold_rules(
    out: &mut Translation,
    cluster: &Cluster,
    last_good: &LastGood,
    rules: &BTreeSet<Key>,
    vs: &Key,
    why: &str,
) {
    for rule in rules {
        let Some((generation, then)) = last_good.destination_rules.get(rule) else {
            continue;
        };
        let changed = match cluster.destination_rules.get(rule).map(|o| &o.spec) {
            Some(Ok(now)) => now != then,
            Some(Err(_)) => true,
            None => false,
        };
        if changed {
            out.last_good
                .destination_rules
                .insert(rule.clone(), (*generation, then.clone()));
            out.held.entry(rule.clone()).or_insert((
                *generation,
                format!("VirtualService {}/{}: {why}", vs.0, vs.1),
            ));
        }
    }
}

/// Whether `gateway`, as written in a VirtualService of namespace `vs_ns`, names ours:
/// `ns/name`, a bare `name` (in the VirtualService's namespace), or
/// `name.ns.svc.<cluster_domain>`.
pub fn names_gateway(gateway: &str, vs_ns: &str, spec: &KubernetesSpec) -> bool {
    let (ns, name) = if let Some((ns, name)) = gateway.split_once('/') {
        (ns, name)
    } else if let Some(short) = gateway.strip_suffix(&format!(".svc.{}", spec.cluster_domain)) {
        match short.rsplit_once('.') {
            Some((name, ns)) => (ns, name),
            None => return false,
        }
    } else {
        (vs_ns, gateway)
    };
    ns == spec.gateway_namespace && name == spec.gateway_name
}

/// A destination host resolved to `(namespace, name)` of a Service: `name` (the
/// VirtualService's namespace), `name.ns`, `name.ns.svc` or `name.ns.svc.<domain>`.
pub fn service_of(host: &str, vs_ns: &str, domain: &str) -> Option<(String, String)> {
    let short = host
        .strip_suffix(&format!(".svc.{domain}"))
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(host);
    match short.split_once('.') {
        None => Some((vs_ns.to_string(), short.to_string())),
        Some((name, ns)) if !ns.contains('.') => Some((ns.to_string(), name.to_string())),
        _ => None,
    }
}

/// A VirtualService made into a route, with the services it needs.
struct Translated {
    route: RawRoute,
    services: BTreeMap<String, RawService>,
    recipes: BTreeMap<(String, String), Recipe>,
    rules_used: BTreeSet<Key>,
}

fn route_for(
    cluster: &Cluster,
    spec: &KubernetesSpec,
    file: &RawConfig,
    meta: &Meta,
    vs: &VirtualServiceSpec,
    claimed: &HashMap<String, String>,
) -> Result<Translated, String> {
    if vs.hosts.is_empty() {
        return Err("spec.hosts is empty".into());
    }
    if vs.http.is_empty() {
        return Err("spec.http has no rule: nothing to serve".into());
    }
    let hosts: Vec<String> = vs
        .hosts
        .iter()
        .map(|h| {
            if h == "*" || h.contains('.') {
                h.clone()
            } else {
                format!("{h}.{}.svc.{}", meta.namespace, spec.cluster_domain)
            }
        })
        .collect();
    if let Some((h, owner)) = hosts.iter().find_map(|h| Some((h, claimed.get(h)?))) {
        return Err(format!("host {h} is already served by {owner}"));
    }
    let mut t = Translated {
        route: RawRoute {
            name: route_name(&meta.namespace, &meta.name),
            hosts,
            http: Vec::new(),
            upgrades: None,
        },
        services: BTreeMap::new(),
        recipes: BTreeMap::new(),
        rules_used: BTreeSet::new(),
    };
    let sticky = sticky_of(spec, meta)?;
    for (i, h) in vs.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        let matches = h
            .matches
            .iter()
            .enumerate()
            .map(|(j, m)| match_block(m).map_err(|e| format!("{at}.match[{j}].{e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let answers = h.redirect.is_some() || h.direct_response.is_some();
        if h.route.is_empty() && !answers {
            return Err(format!("{at}.route: no destination"));
        }
        let sole = h.route.len() == 1;
        let mut route = Vec::new();
        for (j, r) in h.route.iter().enumerate() {
            let rp = format!("{at}.route[{j}]");
            let weight = match r.weight {
                None if sole => 100,
                None => 0,
                Some(w) if w < 0.0 => return Err(format!("{rp}.weight: {w} is negative")),
                Some(w) if w.fract() != 0.0 || w > f64::from(u32::MAX) => {
                    return Err(format!("{rp}.weight: {w} is not a whole number"))
                }
                Some(w) => w as u32,
            };
            let destination = destination(cluster, spec, file, meta, &r.destination, &mut t)
                .map_err(|e| format!("{rp}.destination: {e}"))?;
            route.push(RawDestinationWeight {
                destination,
                weight: Some(weight),
                headers: r.headers.as_ref().map(|h| h.to_raw()),
            });
        }
        if !route.is_empty() && route.iter().all(|d| d.weight == Some(0)) {
            return Err(format!("{at}.route: the weights sum to 0"));
        }
        let mirror = h
            .mirror
            .as_ref()
            .map(|m| {
                destination(cluster, spec, file, meta, m, &mut t)
                    .map_err(|e| format!("{at}.mirror: {e}"))
            })
            .transpose()?;
        let mirror_percentage = mirror.as_ref().and_then(|_| {
            h.mirror_percentage
                .map(|p| p.value)
                .or(h.mirror_percent.map(f64::from))
        });
        if mirror.is_some() && !h.mirrors.is_empty() {
            return Err(format!(
                "{at}.mirrors: cannot be set beside mirror (as in Istio): list every mirror under mirrors"
            ));
        }
        let mut mirrors = Vec::new();
        for (j, m) in h.mirrors.iter().enumerate() {
            let mp = format!("{at}.mirrors[{j}]");
            let destination = destination(cluster, spec, file, meta, &m.destination, &mut t)
                .map_err(|e| format!("{mp}.destination: {e}"))?;
            let percentage = m.percentage.map(|p| p.value);
            if let Some(p) = percentage.filter(|p| !(0.0..=100.0).contains(p)) {
                return Err(format!(
                    "{mp}.percentage.value: must be between 0 and 100, not {p}"
                ));
            }
            mirrors.push(RawMirror {
                destination,
                percentage,
            });
        }
        let cors_policy = h
            .cors_policy
            .as_ref()
            .map(|c| cors_policy(&format!("{at}.corsPolicy"), c))
            .transpose()?;
        t.route.http.push(RawRule {
            name: Some(h.name.clone().unwrap_or_else(|| format!("rule-{i}"))),
            matches,
            route,
            timeout: h.timeout.clone(),
            mirror,
            mirror_percentage,
            mirrors,
            cors_policy,
            headers: h.headers.as_ref().map(|h| h.to_raw()),
            retries: h.retries.as_ref().map(|r| r.to_raw()),
            sticky: sticky.clone().filter(|_| h.route.len() > 1),
            rewrite: h.rewrite.as_ref().map(|r| r.to_raw()),
            redirect: h.redirect.as_ref().map(|r| r.to_raw()),
            direct_response: h
                .direct_response
                .as_ref()
                .map(|d| d.to_raw().map_err(|e| format!("{at}.directResponse.{e}")))
                .transpose()?,
            fault: h
                .fault
                .as_ref()
                .map(|f| f.to_raw().map_err(|e| format!("{at}.fault.{e}")))
                .transpose()?,
        });
    }
    check(&t).map_err(|e| format!("does not validate: {e}"))?;
    Ok(t)
}

/// The annotation that makes a VirtualService's weighted rules sticky (our extension; Istio
/// has none that spans subsets): the `sticky` block of the config file, in YAML or JSON.
pub const STICKY_ANNOTATION: &str = "splitgate.io/sticky";

/// How the weighted rules of the VirtualService `meta` are sticky: as the gateway's config
/// says for it, else as its annotation says, else not.
fn sticky_of(spec: &KubernetesSpec, meta: &Meta) -> Result<Option<RawSticky>, String> {
    if let Some(s) = spec
        .sticky
        .get(&format!("{}/{}", meta.namespace, meta.name))
    {
        return Ok(Some(s.clone()));
    }
    let Some(text) = meta.annotations.get(STICKY_ANNOTATION) else {
        return Ok(None);
    };
    serde_yaml_ng::from_str::<RawSticky>(text)
        .map(Some)
        .map_err(|e| format!("metadata.annotations.{STICKY_ANNOTATION}: {e}"))
}

fn string_match(s: &StringMatch) -> Result<RawStringMatch, String> {
    let set = [&s.exact, &s.prefix, &s.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set != 1 {
        return Err("must set exactly one of exact, prefix, regex".into());
    }
    Ok(RawStringMatch {
        exact: s.exact.clone(),
        prefix: s.prefix.clone(),
        regex: s.regex.clone(),
        ..RawStringMatch::default()
    })
}

/// A `corsPolicy` (at `at`) as the config file writes it, checked here so that a problem is
/// named by the VirtualService's field.
fn cors_policy(at: &str, c: &CorsPolicy) -> Result<RawCorsPolicy, String> {
    // Istio reads the deprecated exact origins only when there is no `allowOrigins`.
    let deprecated = c.allow_origins.is_empty() && !c.allow_origin.is_empty();
    let allow_origins = if deprecated {
        c.allow_origin
            .iter()
            .map(|o| RawStringMatch {
                exact: Some(o.clone()),
                ..RawStringMatch::default()
            })
            .collect()
    } else {
        c.allow_origins
            .iter()
            .enumerate()
            .map(|(j, m)| string_match(m).map_err(|e| format!("{at}.allowOrigins[{j}]: {e}")))
            .collect::<Result<_, _>>()?
    };
    let unmatched_preflights = match c.unmatched_preflights.as_deref() {
        None | Some("UNSPECIFIED") => None,
        Some("FORWARD") => Some("forward".to_string()),
        Some("IGNORE") => Some("ignore".to_string()),
        Some(other) => {
            return Err(format!(
                "{at}.unmatchedPreflights: must be FORWARD or IGNORE, not {other:?}"
            ))
        }
    };
    let raw = RawCorsPolicy {
        allow_origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age: c.max_age.clone(),
        allow_credentials: c.allow_credentials,
        unmatched_preflights,
    };
    crate::config::cors::cors_policy(&raw).map_err(|errs| {
        errs.iter()
            .map(|(field, message)| {
                let mut field = hashing::camel_case(field);
                if deprecated {
                    field = field.replacen("allowOrigins", "allowOrigin", 1);
                }
                format!("{at}.{field}: {message}")
            })
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    Ok(raw)
}

fn match_block(m: &HttpMatch) -> Result<RawMatchBlock, String> {
    let one = |field: &str, s: &Option<StringMatch>| {
        s.as_ref()
            .map(|s| string_match(s).map_err(|e| format!("{field}: {e}")))
            .transpose()
    };
    let map = |field: &str, m: &BTreeMap<String, StringMatch>| {
        m.iter()
            .map(|(k, s)| {
                string_match(s)
                    .map(|s| (k.clone(), s))
                    .map_err(|e| format!("{field}.{k}: {e}"))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()
    };
    Ok(RawMatchBlock {
        uri: one("uri", &m.uri)?,
        method: one("method", &m.method)?,
        authority: one("authority", &m.authority)?,
        headers: map("headers", &m.headers)?,
        without_headers: map("withoutHeaders", &m.without_headers)?,
        query_params: map("queryParams", &m.query_params)?,
        cookies: BTreeMap::new(),
    })
}

/// The destination's service and subset, added to `t.services` with its endpoints.
fn destination(
    cluster: &Cluster,
    spec: &KubernetesSpec,
    file: &RawConfig,
    meta: &Meta,
    d: &Destination,
    t: &mut Translated,
) -> Result<RawDestination, String> {
    let (ns, name) = service_of(&d.host, &meta.namespace, &spec.cluster_domain)
        .ok_or_else(|| format!("host {:?} is not a Service of this cluster", d.host))?;
    let svc = cluster
        .services
        .get(&(ns.clone(), name.clone()))
        .ok_or_else(|| format!("no Service {name} in namespace {ns}"))?;
    let (port_name, port) = match d.port.map(|p| p.number) {
        Some(n) => svc
            .ports
            .iter()
            .find(|(_, p)| u32::from(*p) == n)
            .cloned()
            .ok_or_else(|| format!("Service {ns}/{name} has no port {n}"))?,
        None => match svc.ports.as_slice() {
            [one] => one.clone(),
            [] => return Err(format!("Service {ns}/{name} has no TCP port")),
            many => {
                return Err(format!(
                    "Service {ns}/{name} has {} ports: port.number must say which",
                    many.len()
                ))
            }
        },
    };
    let fqdn = format!("{name}.{ns}.svc.{}", spec.cluster_domain);
    let key = if svc.ports.len() > 1 {
        format!("{name}.{ns}:{port}")
    } else {
        format!("{name}.{ns}")
    };
    if file.services.contains_key(&key) {
        return Err(format!("service key {key} is taken by the config file"));
    }
    let (subset_name, selector) = match &d.subset {
        None => (ALL_ENDPOINTS.to_string(), None),
        Some(s) => {
            let (rule, labels) = subset_rule(cluster, spec, &meta.namespace, &ns, &fqdn, s)
                .ok_or_else(|| format!("subset {s} is in no DestinationRule for {fqdn}"))?;
            t.rules_used.insert(rule);
            (s.clone(), Some(labels))
        }
    };
    // The Service's DestinationRule sets its policy for every subset.
    let mut policy = crate::config::model::RawPolicy::default();
    if let Some((rule, tp)) = service_rule(cluster, spec, &meta.namespace, &ns, &fqdn)
        .and_then(|(k, s)| Some((k, s.traffic_policy.as_ref()?)))
    {
        policy.outlier_detection = tp.outlier_detection.as_ref().map(|od| od.to_raw());
        if let Some(cp) = &tp.connection_pool {
            let (pool, connect_timeout) = cp.to_raw();
            policy.connection_pool = Some(pool);
            policy.connect_timeout = connect_timeout;
        }
        if let Some(lb) = &tp.load_balancer {
            if let Some(problem) = load_balancer_problem(lb) {
                return Err(format!("DestinationRule {}/{}: {problem}", rule.0, rule.1));
            }
            policy.load_balancer = lb.simple_to_raw();
            policy.consistent_hash = lb.consistent_hash.as_ref().map(|c| c.to_raw());
        }
        if policy != crate::config::model::RawPolicy::default() {
            t.rules_used.insert(rule);
        }
    }
    let service = t.services.entry(key.clone()).or_insert_with(|| RawService {
        name: Some(name.clone()),
        namespace: ns.clone(),
        host: fqdn,
        subsets: BTreeMap::new(),
        policy,
    });
    if !service.subsets.contains_key(&subset_name) {
        let recipe = Recipe {
            namespace: ns,
            service: name,
            port_name,
            selector,
        };
        service
            .subsets
            .insert(subset_name.clone(), recipe.subset(cluster));
        t.recipes.insert((key.clone(), subset_name.clone()), recipe);
    }
    Ok(RawDestination {
        service: key,
        subset: subset_name,
    })
}

/// Why a DestinationRule's `trafficPolicy.loadBalancer` cannot be served, each problem with
/// its field's path; none when it can.
fn load_balancer_problem(lb: &LoadBalancerSettings) -> Option<String> {
    let at = "spec.trafficPolicy.loadBalancer";
    let ch = lb.consistent_hash.as_ref()?;
    if lb.simple.as_deref().is_some_and(|s| s != "UNSPECIFIED") {
        return Some(format!(
            "{at}: sets both simple and consistentHash: choose one"
        ));
    }
    let problems = hashing::consistent_hash(&ch.to_raw(), Spelling::Camel).err()?;
    // The deprecated field is read as ringHash's: name it as the object does.
    let deprecated = ch.ring_hash.is_none() && ch.maglev.is_none();
    let located: Vec<String> = problems
        .into_iter()
        .map(|(field, message)| match field.as_str() {
            "" => format!("{at}.consistentHash: {message}"),
            "ringHash.minimumRingSize" if deprecated => {
                format!("{at}.consistentHash.minimumRingSize: {message}")
            }
            _ => format!("{at}.consistentHash.{field}: {message}"),
        })
        .collect();
    Some(located.join("; "))
}

/// The DestinationRule subset `subset` of the Service `fqdn` (see [`service_rule`]).
fn subset_rule(
    cluster: &Cluster,
    spec: &KubernetesSpec,
    vs_ns: &str,
    svc_ns: &str,
    fqdn: &str,
    subset: &str,
) -> Option<(Key, BTreeMap<String, String>)> {
    let (key, s) = service_rule(cluster, spec, vs_ns, svc_ns, fqdn)?;
    let found = s.subsets.iter().find(|x| x.name == subset)?;
    Some((key, found.labels.clone()))
}

/// The DestinationRule of the Service `fqdn`: the rule in the VirtualService's namespace
/// first, then the Service's, then the oldest.
fn service_rule<'a>(
    cluster: &'a Cluster,
    spec: &KubernetesSpec,
    vs_ns: &str,
    svc_ns: &str,
    fqdn: &str,
) -> Option<(Key, &'a DestinationRuleSpec)> {
    let mut rules: Vec<(&Object<DestinationRuleSpec>, &DestinationRuleSpec)> = cluster
        .destination_rules
        .values()
        .filter_map(|dr| Some((dr, dr.spec.as_ref().ok()?)))
        .filter(|(dr, s)| {
            service_of(&s.host, &dr.meta.namespace, &spec.cluster_domain).is_some_and(
                |(ns, name)| format!("{name}.{ns}.svc.{}", spec.cluster_domain) == fqdn,
            )
        })
        .collect();
    rules.sort_by_key(|(dr, _)| {
        let ns = dr.meta.namespace.as_str();
        (ns != vs_ns, ns != svc_ns, dr.meta.created.clone())
    });
    let (dr, s) = rules.first()?;
    Some((dr.meta.key(), s))
}

/// The ready, not terminating endpoints of Service `ns/name` on its port `port_name`, those of
/// pods with `selector`'s labels when given; their labels and workload, as Istio derives
/// them for metrics. Those listed not ready and not terminating (a pod failing its readiness
/// probe, which usually comes back) are its standby: they get no request but keep their
/// pooled connections, as Envoy keeps an unhealthy host's.
fn endpoints(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    port_name: &str,
    selector: Option<&BTreeMap<String, String>>,
) -> RawSubset {
    let mut addrs = BTreeSet::new();
    let mut standby = BTreeSet::new();
    let mut pods = Vec::new();
    let slices = cluster
        .slices
        .range((ns.to_string(), String::new())..)
        .take_while(|((sns, _), _)| sns == ns)
        .map(|(_, s)| s)
        .filter(|s| s.service == name);
    for slice in slices {
        let Some(&(_, port)) = slice.ports.iter().find(|(n, _)| n == port_name) else {
            continue;
        };
        for e in slice.endpoints.iter().filter(|e| !e.terminating) {
            let pod = e
                .pod
                .as_ref()
                .and_then(|p| cluster.pods.get(&(ns.to_string(), p.clone())));
            if let Some(selector) = selector {
                let Some(pod) = pod else { continue };
                if !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
                    continue;
                }
            }
            let addr = std::net::SocketAddr::new(e.ip, port).to_string();
            if !e.ready {
                standby.insert(addr);
            } else if addrs.insert(addr) {
                pods.extend(pod);
            }
        }
    }
    // Labels every pod shares; without pods, what the subset selects.
    let mut labels: BTreeMap<String, String> = match pods.split_first() {
        Some((first, rest)) => first
            .labels
            .iter()
            .filter(|(k, v)| rest.iter().all(|p| p.labels.get(*k) == Some(*v)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        None => selector.cloned().unwrap_or_default(),
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &pods {
        *counts.entry(p.workload.as_str()).or_default() += 1;
    }
    let workload = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map_or("unknown".to_string(), |(w, _)| w.to_string());
    istio_labels(&mut labels, &workload);
    RawSubset {
        labels,
        workload: Some(workload),
        // An address another slice lists ready is served, not on standby.
        standby: standby.difference(&addrs).cloned().collect(),
        endpoints: addrs.into_iter().collect(),
    }
}

/// Fills in `app`, `version` and the canonical labels as Istio derives them from pod labels.
fn istio_labels(labels: &mut BTreeMap<String, String>, workload: &str) {
    let get =
        |l: &BTreeMap<String, String>, keys: &[&str]| keys.iter().find_map(|k| l.get(*k).cloned());
    let app = get(labels, &["app", "app.kubernetes.io/name"]);
    let version = get(labels, &["version", "app.kubernetes.io/version"]);
    let canonical_name = get(
        labels,
        &[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ],
    )
    .unwrap_or_else(|| workload.to_string());
    let canonical_revision = get(
        labels,
        &[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ],
    )
    .unwrap_or_else(|| "latest".to_string());
    labels.insert("app".into(), app.unwrap_or_else(|| "unknown".into()));
    labels.insert(
        "version".into(),
        version.unwrap_or_else(|| "unknown".into()),
    );
    labels.insert("service.istio.io/canonical-name".into(), canonical_name);
    labels.insert(
        "service.istio.io/canonical-revision".into(),
        canonical_revision,
    );
}

/// Validates one translated VirtualService on its own, as the file's routes are validated.
fn check(t: &Translated) -> Result<(), String> {
    // A listener of its own: the file's may name certificate files, which are not at issue.
    let raw = RawConfig {
        listeners: vec![RawListener {
            name: "check".into(),
            address: "127.0.0.1:0".into(),
            tls: None,
            stream_idle_timeout: None,
            limits: None,
        }],
        admin: Default::default(),
        readiness: Default::default(),
        drain: Default::default(),
        metrics: Default::default(),
        services: t.services.clone(),
        routes: vec![t.route.clone()],
        kubernetes: None,
    };
    // A rule's fields are named as the config file names them (`fault.abort.percentage`),
    // under the object's own path (`spec.http[1]`).
    crate::config::validate(&raw).map(|_| ()).map_err(|errs| {
        errs.iter()
            .map(|e| match e.path.strip_prefix("routes[0].") {
                Some(field) => format!("spec.{field}: {}", e.message),
                None => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::cluster::Cluster;

    const ARGO_HOST: &str = include_str!("../../tests/fixtures/kubernetes/argo-host-level.yaml");
    const ARGO_SUBSET: &str =
        include_str!("../../tests/fixtures/kubernetes/argo-subset-level.yaml");
    const FLAGGER: &str = include_str!("../../tests/fixtures/kubernetes/flagger.yaml");

    fn gateway(ns_name: &str) -> KubernetesSpec {
        let (ns, name) = ns_name.split_once('/').unwrap();
        KubernetesSpec {
            gateway_namespace: ns.into(),
            gateway_name: name.into(),
            namespaces: vec![],
            kubeconfig: None,
            cluster_domain: "cluster.local".into(),
            sticky: Default::default(),
        }
    }

    fn file() -> RawConfig {
        crate::config::parse("listeners: [{name: http, address: \"127.0.0.1:0\"}]\n", "t").unwrap()
    }

    fn run(yaml: &str, gw: &str) -> Translation {
        let cluster = Cluster::from_yaml(yaml).unwrap();
        translate(&cluster, &gateway(gw), &file(), &LastGood::new())
    }

    /// `(service, subset, weight)` of a rule.
    fn weights(rule: &RawRule) -> Vec<(String, String, u32)> {
        rule.route
            .iter()
            .map(|d| {
                let w = d.weight.unwrap();
                (
                    d.destination.service.clone(),
                    d.destination.subset.clone(),
                    w,
                )
            })
            .collect()
    }

    fn status<'a>(t: &'a Translation, kind: &str, name: &str) -> &'a ObjectStatus {
        t.objects
            .iter()
            .find(|o| o.kind == kind && o.meta.name == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", t.objects))
    }

    #[test]
    fn argo_host_level_split_serves_both_services_by_weight() {
        let t = run(ARGO_HOST, "istio-system/splitgate");
        let vs = status(&t, "VirtualService", "rollouts-demo-vsvc");
        assert_eq!(
            (vs.status, vs.served_generation),
            (Status::Applied, Some(4))
        );
        assert_eq!(t.routes.len(), 1);
        let r = &t.routes[0];
        assert_eq!(r.name, "rollouts-demo-vsvc.shop");
        assert_eq!(r.hosts, ["rollouts-demo.example.com"]);
        assert_eq!(r.http[0].name.as_deref(), Some("primary"));
        assert_eq!(
            weights(&r.http[0]),
            [
                ("rollouts-demo-stable.shop".into(), "*".into(), 90),
                ("rollouts-demo-canary.shop".into(), "*".into(), 10)
            ]
        );
        let stable = &t.services["rollouts-demo-stable.shop"];
        assert_eq!(stable.host, "rollouts-demo-stable.shop.svc.cluster.local");
        assert_eq!(stable.name.as_deref(), Some("rollouts-demo-stable"));
        let all = &stable.subsets["*"];
        // The terminating, not ready pod gets nothing; the slice's port, not the Service's.
        assert_eq!(all.endpoints, ["10.1.0.11:8080", "10.1.0.12:8080"]);
        assert_eq!(all.workload.as_deref(), Some("rollouts-demo"));
        assert_eq!(all.labels["version"], "v1");
        assert_eq!(
            all.labels["service.istio.io/canonical-name"],
            "rollouts-demo"
        );
        let canary = &t.services["rollouts-demo-canary.shop"].subsets["*"];
        assert_eq!(canary.endpoints, ["10.1.0.21:8080"]);
        assert_eq!(canary.labels["version"], "v2");
    }

    #[test]
    fn argo_subset_level_split_selects_pods_by_destination_rule_labels() {
        let t = run(ARGO_SUBSET, "istio-system/splitgate");
        assert_eq!(
            status(&t, "VirtualService", "rollouts-demo-vsvc").status,
            Status::Applied
        );
        let dr = status(&t, "DestinationRule", "rollouts-demo-destrule");
        assert_eq!(
            (dr.status, dr.served_generation),
            (Status::Applied, Some(7))
        );
        let r = &t.routes[0];
        let names: Vec<_> = r.http.iter().map(|h| h.name.clone().unwrap()).collect();
        assert_eq!(
            names,
            ["canary-header", "mirror-get", "primary"],
            "order kept"
        );
        let header = &r.http[0];
        assert_eq!(
            header.matches[0].headers["x-canary"].exact.as_deref(),
            Some("yes")
        );
        assert_eq!(
            weights(header),
            [("rollouts-demo.shop".into(), "canary".into(), 100)]
        );
        let mirror = &r.http[1];
        assert_eq!(
            mirror.matches[0].method.as_ref().unwrap().exact.as_deref(),
            Some("GET")
        );
        assert_eq!(
            mirror.matches[0].uri.as_ref().unwrap().prefix.as_deref(),
            Some("/api")
        );
        assert_eq!(mirror.mirror.as_ref().unwrap().subset, "canary");
        assert_eq!(mirror.mirror_percentage, Some(35.0));
        assert_eq!(
            weights(&r.http[2]),
            [
                ("rollouts-demo.shop".into(), "stable".into(), 70),
                ("rollouts-demo.shop".into(), "canary".into(), 30)
            ]
        );
        let svc = &t.services["rollouts-demo.shop"];
        assert_eq!(svc.subsets["stable"].endpoints, ["10.1.0.11:8080"]);
        assert_eq!(svc.subsets["canary"].endpoints, ["10.1.0.21:8080"]);

        // Promotion: Argo Rollouts relabels the stable subset with the canary's hash.
        let promoted = ARGO_SUBSET.replace(
            "    - name: stable\n      labels: {rollouts-pod-template-hash: 7bf84f9696}",
            "    - name: stable\n      labels: {rollouts-pod-template-hash: 5d4c7b9b4c}",
        );
        assert_ne!(promoted, ARGO_SUBSET);
        let t = run(&promoted, "istio-system/splitgate");
        assert_eq!(
            t.services["rollouts-demo.shop"].subsets["stable"].endpoints,
            ["10.1.0.21:8080"]
        );
    }

    #[test]
    fn flagger_objects_bind_by_fqdn_and_route_ab_matches_to_the_canary() {
        let t = run(FLAGGER, "istio-system/public-gateway");
        let vs = status(&t, "VirtualService", "podinfo");
        assert_eq!(vs.status, Status::Applied);
        assert!(vs.unsupported.is_empty(), "{:?}", vs.unsupported);
        let r = &t.routes[0];
        // Flagger's retries are served as written.
        let retries = r.http[0].retries.as_ref().unwrap();
        assert_eq!(retries.attempts, Some(3));
        assert_eq!(retries.per_try_timeout.as_deref(), Some("1s"));
        assert_eq!(
            retries.retry_on.as_deref(),
            Some("gateway-error,connect-failure,refused-stream")
        );
        assert_eq!(
            r.hosts,
            ["app.example.com", "podinfo.test.svc.cluster.local"]
        );
        assert_eq!(r.http[0].name.as_deref(), Some("rule-0"));
        assert_eq!(r.http[0].matches.len(), 2);
        assert_eq!(
            r.http[0].matches[1].headers["cookie"].regex.as_deref(),
            Some("^(.*?;)?(canary=always)(;.*)?$")
        );
        assert_eq!(
            weights(&r.http[0]),
            [
                ("podinfo-primary.test".into(), "*".into(), 0),
                ("podinfo-canary.test".into(), "*".into(), 100)
            ]
        );
        let canary = &t.services["podinfo-canary.test"].subsets["*"];
        assert_eq!(canary.workload.as_deref(), Some("podinfo"));
        assert_eq!(canary.labels["version"], "6.1.0");
        assert_eq!(
            t.services["podinfo-primary.test"].subsets["*"]
                .workload
                .as_deref(),
            Some("podinfo-primary")
        );
        // The DestinationRules name no subset a route uses.
        assert_eq!(
            status(&t, "DestinationRule", "podinfo-primary").status,
            Status::Ignored
        );
        // Bound to another gateway, the same objects are ignored.
        let other = run(FLAGGER, "istio-system/splitgate");
        assert!(other.routes.is_empty());
        assert_eq!(
            status(&other, "VirtualService", "podinfo").status,
            Status::Ignored
        );
    }

    #[test]
    fn gateways_are_named_in_any_of_istios_forms() {
        let spec = gateway("istio-system/splitgate");
        for (g, vs_ns, yes) in [
            ("istio-system/splitgate", "shop", true),
            ("splitgate", "istio-system", true),
            ("splitgate", "shop", false),
            ("splitgate.istio-system.svc.cluster.local", "shop", true),
            ("splitgate.other.svc.cluster.local", "shop", false),
            ("mesh", "istio-system", false),
        ] {
            assert_eq!(names_gateway(g, vs_ns, &spec), yes, "{g} from {vs_ns}");
        }
        for (h, want) in [
            ("reviews", Some(("shop", "reviews"))),
            ("reviews.prod", Some(("prod", "reviews"))),
            ("reviews.prod.svc", Some(("prod", "reviews"))),
            ("reviews.prod.svc.cluster.local", Some(("prod", "reviews"))),
            ("api.example.com", None),
        ] {
            let got = service_of(h, "shop", "cluster.local");
            let want = want.map(|(a, b)| (a.to_string(), b.to_string()));
            assert_eq!(got, want, "{h}");
        }
    }

    #[test]
    fn a_not_ready_endpoint_waits_on_standby_and_a_terminating_one_is_gone() {
        let spec = gateway("istio-system/splitgate");
        let t = run(ARGO_HOST, "istio-system/splitgate");
        let stable = &t.services["rollouts-demo-stable.shop"].subsets["*"];
        assert_eq!(stable.endpoints, ["10.1.0.11:8080", "10.1.0.12:8080"]);
        assert!(stable.standby.is_empty(), "{:?}", stable.standby);

        // The terminating pod is back to not ready only (its readiness probe fails): it gets
        // no request, but the gateway keeps its connections for when it passes again.
        let terminating = "{ready: false, serving: true, terminating: true}";
        assert!(ARGO_HOST.contains(terminating));
        let flapping = ARGO_HOST.replace(
            terminating,
            "{ready: false, serving: false, terminating: false}",
        );
        let cluster = Cluster::from_yaml(&flapping).unwrap();
        let t = translate(&cluster, &spec, &file(), &LastGood::new());
        let stable = &t.services["rollouts-demo-stable.shop"].subsets["*"];
        assert_eq!(stable.endpoints, ["10.1.0.11:8080", "10.1.0.12:8080"]);
        assert_eq!(stable.standby, ["10.1.0.13:8080"]);
        // Its labels count for nothing while it is out.
        assert_eq!(stable.workload.as_deref(), Some("rollouts-demo"));
    }

    #[test]
    fn a_destination_rules_outlier_detection_and_connection_pool_are_served_for_its_service() {
        let old = "spec:\n  host: rollouts-demo\n  subsets:";
        assert!(ARGO_SUBSET.contains(old));
        let yaml = ARGO_SUBSET.replace(
            old,
            "spec:\n  host: rollouts-demo\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 7, baseEjectionTime: 15s, minHealthPercent: 50}\n    connectionPool: {tcp: {maxConnections: 100, connectTimeout: 2s, tcpKeepalive: {time: 7200s}}, http: {http1MaxPendingRequests: 0, http2MaxRequests: 50, maxRequestsPerConnection: 10, idleTimeout: 30s}}\n  subsets:",
        );
        let t = run(&yaml, "istio-system/splitgate");
        let od = t.services["rollouts-demo.shop"]
            .policy
            .outlier_detection
            .as_ref()
            .expect("the rule's outlierDetection");
        assert_eq!(od.consecutive_5xx_errors, Some(7));
        assert_eq!(od.base_ejection_time.as_deref(), Some("15s"));
        let policy = &t.services["rollouts-demo.shop"].policy;
        let pool = policy.connection_pool.as_ref().expect("the connectionPool");
        assert_eq!(pool.max_connections, Some(100));
        assert_eq!(
            pool.http1_max_pending_requests, None,
            "Istio's 0 is no bound"
        );
        assert_eq!(pool.http2_max_requests, Some(50));
        assert_eq!(pool.max_requests_per_connection, Some(10));
        assert_eq!(pool.idle_timeout.as_deref(), Some("30s"));
        assert_eq!(policy.connect_timeout.as_deref(), Some("2s"));
        let dr = status(&t, "DestinationRule", "rollouts-demo-destrule");
        assert_eq!(dr.status, Status::Applied);
        assert_eq!(
            dr.unsupported,
            [
                "spec.trafficPolicy.outlierDetection.minHealthPercent",
                "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive",
            ]
        );
    }

    /// The Argo subset-level fixture with `policy` (YAML lines under `trafficPolicy:`) on its
    /// DestinationRule.
    fn with_traffic_policy(policy: &str) -> String {
        let old = "spec:\n  host: rollouts-demo\n  subsets:";
        assert!(ARGO_SUBSET.contains(old));
        ARGO_SUBSET.replace(
            old,
            &format!("spec:\n  host: rollouts-demo\n  trafficPolicy:\n{policy}  subsets:"),
        )
    }

    #[test]
    fn a_destination_rules_consistent_hash_is_served_field_by_field() {
        use crate::config::model::{RawConsistentHash, RawHashCookie, RawMaglev, RawRingHash};
        let header = RawConsistentHash {
            http_header_name: Some("x-user".into()),
            ..Default::default()
        };
        for (lb, want, unsupported) in [
            (
                "{consistentHash: {httpHeaderName: x-user}, localityLbSetting: {enabled: true}, warmupDurationSecs: 30s}",
                header.clone(),
                vec![
                    "spec.trafficPolicy.loadBalancer.localityLbSetting",
                    "spec.trafficPolicy.loadBalancer.warmupDurationSecs",
                ],
            ),
            (
                "{consistentHash: {httpCookie: {name: u, path: /, ttl: 3600s, attributes: [{name: SameSite, value: Lax}]}, ringHash: {minimumRingSize: 2048}}}",
                RawConsistentHash {
                    http_cookie: Some(RawHashCookie {
                        name: "u".into(),
                        path: Some("/".into()),
                        ttl: Some("3600s".into()),
                    }),
                    ring_hash: Some(RawRingHash {
                        minimum_ring_size: Some(2048),
                    }),
                    ..Default::default()
                },
                vec!["spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.attributes"],
            ),
            (
                "{consistentHash: {useSourceIp: true, maglev: {tableSize: 251}, minimumRingSize: 64}}",
                RawConsistentHash {
                    use_source_ip: Some(true),
                    maglev: Some(RawMaglev {
                        table_size: Some(251),
                    }),
                    ..Default::default()
                },
                vec!["spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize"],
            ),
            (
                "{consistentHash: {httpQueryParameterName: user, minimumRingSize: 64}}",
                RawConsistentHash {
                    http_query_parameter_name: Some("user".into()),
                    ring_hash: Some(RawRingHash {
                        minimum_ring_size: Some(64),
                    }),
                    ..Default::default()
                },
                vec![],
            ),
        ] {
            let t = run(
                &with_traffic_policy(&format!("    loadBalancer: {lb}\n")),
                "istio-system/splitgate",
            );
            let policy = &t.services["rollouts-demo.shop"].policy;
            assert_eq!(policy.consistent_hash.as_ref(), Some(&want), "{lb}");
            assert_eq!(policy.load_balancer, None, "{lb}");
            let dr = status(&t, "DestinationRule", "rollouts-demo-destrule");
            assert_eq!((dr.status, dr.message.as_str()), (Status::Applied, ""), "{lb}");
            assert_eq!(dr.unsupported, unsupported, "{lb}");
            let vs = status(&t, "VirtualService", "rollouts-demo-vsvc");
            assert_eq!(vs.status, Status::Applied, "{lb}: {}", vs.message);
        }
        // simple keeps its meaning; one that is not served is listed.
        for (simple, want, unsupported) in [
            ("LEAST_CONN", Some("least_request"), vec![]),
            ("RANDOM", Some("random"), vec![]),
            ("UNSPECIFIED", None, vec![]),
            (
                "PASSTHROUGH",
                None,
                vec!["spec.trafficPolicy.loadBalancer.simple"],
            ),
        ] {
            let t = run(
                &with_traffic_policy(&format!("    loadBalancer: {{simple: {simple}}}\n")),
                "istio-system/splitgate",
            );
            let policy = &t.services["rollouts-demo.shop"].policy;
            assert_eq!(policy.load_balancer.as_deref(), want, "{simple}");
            assert_eq!(policy.consistent_hash, None);
            let dr = status(&t, "DestinationRule", "rollouts-demo-destrule");
            assert_eq!(dr.unsupported, unsupported, "{simple}");
        }
    }

    #[test]
    fn an_invalid_consistent_hash_rejects_its_destination_rule_with_the_fields_path() {
        let spec = gateway("istio-system/splitgate");
        for (lb, reason) in [
            (
                "{consistentHash: {httpHeaderName: x-user, useSourceIp: true}}",
                "spec.trafficPolicy.loadBalancer.consistentHash: names 2 keys (httpHeaderName, useSourceIp): set only one",
            ),
            (
                "{consistentHash: {useSourceIp: false}}",
                "spec.trafficPolicy.loadBalancer.consistentHash: names no key to hash: set one of httpHeaderName, httpCookie, useSourceIp: true or httpQueryParameterName",
            ),
            (
                "{simple: ROUND_ROBIN, consistentHash: {useSourceIp: true}}",
                "spec.trafficPolicy.loadBalancer: sets both simple and consistentHash: choose one",
            ),
            (
                "{consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}}",
                "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: 1000 is not a prime number: a Maglev table needs a prime size, like 65537 (the default)",
            ),
            (
                "{consistentHash: {useSourceIp: true, minimumRingSize: 0}}",
                "spec.trafficPolicy.loadBalancer.consistentHash.minimumRingSize: must be between 1 and 1048576, got 0",
            ),
            (
                "{consistentHash: {useSourceIp: true, ringHash: {}, maglev: {}}}",
                "spec.trafficPolicy.loadBalancer.consistentHash: sets both ringHash and maglev: choose one",
            ),
            (
                "{consistentHash: {httpCookie: {name: u, ttl: 1.5s}}}",
                "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl: \"1.5s\" is not a whole number of seconds, which Max-Age counts",
            ),
        ] {
            let cluster =
                Cluster::from_yaml(&with_traffic_policy(&format!("    loadBalancer: {lb}\n")))
                    .unwrap();
            let t = translate(&cluster, &spec, &file(), &LastGood::new());
            let dr = status(&t, "DestinationRule", "rollouts-demo-destrule");
            assert_eq!((dr.status, dr.message.as_str()), (Status::Rejected, reason), "{lb}");
            assert_eq!(dr.served_generation, None);
            // As with its other fields, a VirtualService that needs the rule is not served.
            let vs = status(&t, "VirtualService", "rollouts-demo-vsvc");
            assert_eq!(vs.status, Status::Rejected, "{lb}");
            let named = format!(
                "spec.http[0].route[0].destination: DestinationRule shop/rollouts-demo-destrule: {reason}"
            );
            assert_eq!(vs.message, named, "{lb}");
        }
    }

    /// The Argo host-level fixture with its primary rule's route replaced.
    fn with_route(route: &str) -> String {
        let old = "        - destination: {host: rollouts-demo-stable, port: {number: 80}}\n          weight: 90\n        - destination: {host: rollouts-demo-canary, port: {number: 80}}\n          weight: 10\n";
        assert!(ARGO_HOST.contains(old));
        ARGO_HOST
            .replace(old, route)
            .replace("generation: 4", "generation: 5")
    }

    /// ARGO_HOST with its VirtualService's `http:` list replaced by `rules`.
    fn with_rules(rules: &str) -> String {
        let old = "  http:\n    - name: primary\n      route:\n        - destination: {host: rollouts-demo-stable, port: {number: 80}}\n          weight: 90\n        - destination: {host: rollouts-demo-canary, port: {number: 80}}\n          weight: 10\n";
        assert!(ARGO_HOST.contains(old));
        ARGO_HOST
            .replace(old, &format!("  http:\n{rules}"))
            .replace("generation: 4", "generation: 5")
    }

    #[test]
    fn rewrite_redirect_direct_response_and_fault_are_served_as_written() {
        let rules = "    - name: moved
      match: [{uri: {prefix: /old}}]
      redirect: {uri: /new, authority: shop.example, scheme: https, port: 8443, redirectCode: 302, derivePort: FROM_REQUEST_PORT}
    - name: down
      match: [{uri: {prefix: /down}}]
      directResponse: {status: 503, body: {bytes: YmFjayBzb29uCg==}}
    - name: api
      match: [{uri: {prefix: /api}}]
      rewrite: {uri: /v2, authority: internal.example, uriRegexRewrite: null}
      fault:
        delay: {fixedDelay: 2s, percentage: {value: 10}}
        abort: {httpStatus: 503, percentage: {value: 5}, http2Error: CANCEL}
      route:
        - destination: {host: rollouts-demo-stable}
    - name: regex
      rewrite: {uriRegexRewrite: {match: \"^/a/(.*)\", rewrite: \"/b/\\\\1\"}}
      fault: {delay: {fixedDelay: 1s, percent: 3}}
      route:
        - destination: {host: rollouts-demo-stable}
";
        let t = run(&with_rules(rules), "istio-system/splitgate");
        let vs = status(&t, "VirtualService", "rollouts-demo-vsvc");
        assert_eq!(vs.status, Status::Applied, "{}", vs.message);
        assert_eq!(
            vs.unsupported,
            [
                "spec.http[0].redirect.derivePort",
                "spec.http[2].fault.abort.http2Error"
            ]
        );
        let http = &t.routes[0].http;
        let redirect = http[0].redirect.as_ref().unwrap();
        assert_eq!(
            (redirect.uri.as_deref(), redirect.authority.as_deref()),
            (Some("/new"), Some("shop.example"))
        );
        assert_eq!(
            (
                redirect.scheme.as_deref(),
                redirect.port,
                redirect.redirect_code
            ),
            (Some("https"), Some(8443), Some(302))
        );
        assert!(http[0].route.is_empty());
        let direct = http[1].direct_response.as_ref().unwrap();
        assert_eq!(
            (direct.status, direct.body.as_deref()),
            (503, Some("back soon\n"))
        );
        let rewrite = http[2].rewrite.as_ref().unwrap();
        assert_eq!(
            (rewrite.uri.as_deref(), rewrite.authority.as_deref()),
            (Some("/v2"), Some("internal.example"))
        );
        let fault = http[2].fault.as_ref().unwrap();
        let (delay, abort) = (fault.delay.as_ref().unwrap(), fault.abort.as_ref().unwrap());
        assert_eq!((delay.fixed_delay.as_str(), delay.percentage), ("2s", 10.0));
        assert_eq!((abort.http_status, abort.percentage), (Some(503), 5.0));
        assert_eq!(abort.grpc_status, None);
        let regex = http[3]
            .rewrite
            .as_ref()
            .unwrap()
            .uri_regex_rewrite
            .as_ref()
            .unwrap();
        assert_eq!(
            (regex.pattern.as_str(), regex.rewrite.as_str()),
            ("^/a/(.*)", "/b/\\1")
        );
        assert_eq!(
            http[3]
                .fault
                .as_ref()
                .unwrap()
                .delay
                .as_ref()
                .unwrap()
                .percentage,
            3.0
        );
    }

    #[test]
    fn weighted_rules_are_sticky_by_the_gateways_config_or_else_by_annotation() {
        let two = "    - name: split\n      route:\n        - destination: {host: rollouts-demo-stable}\n          weight: 90\n        - destination: {host: rollouts-demo-canary}\n          weight: 10\n    - name: one\n      route: [{destination: {host: rollouts-demo-stable}}]\n";
        let annotated = |value: &str| {
            with_rules(two).replace(
                "  name: rollouts-demo-vsvc\n",
                &format!("  name: rollouts-demo-vsvc\n  annotations: {{splitgate.io/sticky: '{value}'}}\n"),
            )
        };
        let yaml = annotated("{hash_on: {header: x-user}}");
        assert!(yaml.contains("splitgate.io/sticky"), "{yaml}");
        let t = run(&yaml, "istio-system/splitgate");
        let http = &t.routes[0].http;
        let hash = http[0].sticky.as_ref().and_then(|s| s.hash_on.as_ref());
        assert_eq!(hash.and_then(|h| h.header.as_deref()), Some("x-user"));
        assert_eq!(
            http[1].sticky, None,
            "a rule of one destination has nothing to keep"
        );

        // The gateway's own entry wins over the annotation.
        let mut spec = gateway("istio-system/splitgate");
        let cookie = RawSticky {
            cookie: Some("pos".into()),
            ..RawSticky::default()
        };
        spec.sticky
            .insert("shop/rollouts-demo-vsvc".into(), cookie.clone());
        let t = translate(
            &Cluster::from_yaml(&yaml).unwrap(),
            &spec,
            &file(),
            &LastGood::new(),
        );
        assert_eq!(t.routes[0].http[0].sticky.as_ref(), Some(&cookie));

        // A bad annotation rejects the object with the annotation named.
        for (value, reason) in [
            (
                "{cookie: a, colour: blue}",
                "metadata.annotations.splitgate.io/sticky: unknown field `colour`",
            ),
            (
                "{cookie: \"a b\"}",
                "spec.http[0].sticky.cookie: \"a b\" is not a valid cookie name",
            ),
        ] {
            let t = run(&annotated(value), "istio-system/splitgate");
            let vs = status(&t, "VirtualService", "rollouts-demo-vsvc");
            assert_eq!(vs.status, Status::Rejected, "{value}");
            assert!(
                vs.message.contains(reason),
                "{:?} lacks {reason:?}",
                vs.message
            );
        }
    }

    #[test]
    fn bad_rule_actions_reject_the_object_with_the_field_and_reason() {
        let spec = gateway("istio-system/splitgate");
        let good = Cluster::from_yaml(ARGO_HOST).unwrap();
        let first = translate(&good, &spec, &file(), &LastGood::new());
        for (rules, reason) in [
            (
                "    - redirect: {redirectCode: 200}\n",
                "spec.http[0].redirect.redirect_code: 200 is not a redirect",
            ),
            (
                "    - directResponse: {status: 200, body: {bytes: \"//79\"}}\n",
                "spec.http[0].directResponse.body.bytes: only text bodies are served",
            ),
            (
                "    - fault: {abort: {http2Error: CANCEL, percentage: {value: 1}}}\n      route: [{destination: {host: rollouts-demo-stable}}]\n",
                "spec.http[0].fault.abort: needs httpStatus or grpcStatus",
            ),
            (
                "    - redirect: {uri: /x}\n      route: [{destination: {host: rollouts-demo-stable}}]\n",
                "spec.http[0].route: not allowed with redirect",
            ),
        ] {
            let bad = Cluster::from_yaml(&with_rules(rules)).unwrap();
            let t = translate(&bad, &spec, &file(), &first.last_good);
            let vs = status(&t, "VirtualService", "rollouts-demo-vsvc");
            assert_eq!(vs.status, Status::Rejected, "{reason}");
            assert!(vs.message.contains(reason), "{:?} lacks {reason:?}", vs.message);
            assert_eq!(vs.served_generation, Some(4), "the last good version serves");
        }
    }

    #[test]
    fn a_destination_rule_that_breaks_its_virtual_service_is_held_at_its_last_good_version() {
        let spec = gateway("istio-system/splitgate");
        let first = translate(
            &Cluster::from_yaml(ARGO_SUBSET).unwrap(),
            &spec,
            &file(),
            &LastGood::new(),
        );
        assert_eq!(
            status(&first, "VirtualService", "rollouts-demo-vsvc").status,
            Status::Applied
        );
        let dr_spec = "spec:\n  host: rollouts-demo\n  subsets:";
        assert!(ARGO_SUBSET.contains(dr_spec));
        let stable = "    - name: stable\n      labels: {rollouts-pod-template-hash: 7bf84f9696}\n";
        assert!(ARGO_SUBSET.contains(stable));
        for (change, reason) in [
            (
                ARGO_SUBSET.replace(
                    dr_spec,
                    "spec:\n  host: rollouts-demo\n  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 1000}}}}\n  subsets:",
                ),
                "tableSize",
            ),
            (
                ARGO_SUBSET.replace(stable, ""),
                "this generation breaks VirtualService shop/rollouts-demo-vsvc: ",
            ),
            (
                ARGO_SUBSET.replace(dr_spec, "spec:\n  host: rollouts-demo\n  subsets: 7\n  unused:"),
                "",
            ),
        ] {
            let changed = change.replace("generation: 7", "generation: 8");
            assert_ne!(changed, ARGO_SUBSET);
            let t = translate(&Cluster::from_yaml(&changed).unwrap(), &spec, &file(), &first.last_good);
            let vs = status(&t, "VirtualService", "rollouts-demo-vsvc");
            assert_eq!(vs.status, Status::Applied, "{reason}: {}", vs.message);
            assert_eq!(vs.served_generation, Some(9), "{reason}");
            let dr = status(&t, "DestinationRule", "rollouts-demo-destrule");
            assert_eq!(dr.status, Status::Rejected, "{reason}");
            assert_eq!(dr.served_generation, Some(7), "{reason}");
            assert!(
                dr.message.contains(reason)
                    && dr.message.ends_with("generation 7 is still served"),
                "{}",
                dr.message
            );
            // Served as before: the split and both subsets' endpoints.
            assert_eq!(t.routes, first.routes, "{reason}");
            assert_eq!(t.services, first.services, "{reason}");
            assert_eq!(t.held.len(), 1);
            // Held again on the next event, from what this translation kept.
            let again = translate(&Cluster::from_yaml(&changed).unwrap(), &spec, &file(), &t.last_good);
            assert_eq!(again.routes, first.routes, "{reason}: held on the next event too");
            // Mended, the new version serves and nothing is held.
            let mended = ARGO_SUBSET.replace("generation: 7", "generation: 9");
            let t = translate(&Cluster::from_yaml(&mended).unwrap(), &spec, &file(), &again.last_good);
            let dr = status(&t, "DestinationRule", "rollouts-demo-destrule");
            assert_eq!((dr.status, dr.served_generation), (Status::Applied, Some(9)));
            assert!(t.held.is_empty());
        }
        // A VirtualService rejected for its own fault, while its rule changes for the good
        // (Argo Rollouts relabels a subset): the old VirtualService serves on the new rule,
        // which is applied, not held.
        let relabelled = ARGO_SUBSET
            .replace(
                "    - name: stable\n      labels: {rollouts-pod-template-hash: 7bf84f9696}",
                "    - name: stable\n      labels: {rollouts-pod-template-hash: 5d4c7b9b4c}",
            )
            .replace("generation: 7", "generation: 8")
            .replace("weight: 70", "weight: -70")
            .replace("generation: 9", "generation: 10");
        assert!(relabelled.contains("weight: -70"), "the fixture's weight");
        let t = translate(
            &Cluster::from_yaml(&relabelled).unwrap(),
            &spec,
            &file(),
            &first.last_good,
        );
        let vs = status(&t, "VirtualService", "rollouts-demo-vsvc");
        assert_eq!(
            (vs.status, vs.served_generation),
            (Status::Rejected, Some(9))
        );
        let dr = status(&t, "DestinationRule", "rollouts-demo-destrule");
        assert_eq!(
            (dr.status, dr.served_generation),
            (Status::Applied, Some(8)),
            "{}",
            dr.message
        );
        assert!(t.held.is_empty());
        assert_eq!(
            t.services["rollouts-demo.shop"].subsets["stable"].endpoints,
            ["10.1.0.21:8080"],
            "the new labels serve"
        );

        // With nothing served before, a bad rule leaves nothing to hold.
        let bad = ARGO_SUBSET.replace(stable, "");
        let t = translate(
            &Cluster::from_yaml(&bad).unwrap(),
            &spec,
            &file(),
            &LastGood::new(),
        );
        assert_eq!(
            status(&t, "VirtualService", "rollouts-demo-vsvc").status,
            Status::Rejected
        );
        assert!(t.routes.is_empty());
    }

    #[test]
    fn invalid_objects_are_rejected_with_a_reason_and_the_last_good_version_serves() {
        let spec = gateway("istio-system/splitgate");
        let good = Cluster::from_yaml(ARGO_HOST).unwrap();
        let first = translate(&good, &spec, &file(), &LastGood::new());
        for (route, reason) in [
            (
                "        - destination: {host: rollouts-demo-stable}\n          weight: 0\n        - destination: {host: rollouts-demo-canary}\n          weight: 0\n",
                "spec.http[0].route: the weights sum to 0",
            ),
            (
                "        - destination: {host: rollouts-demo-stable}\n          weight: -10\n        - destination: {host: rollouts-demo-canary}\n          weight: 110\n",
                "spec.http[0].route[0].weight: -10 is negative",
            ),
            (
                "        - destination: {host: nowhere}\n",
                "spec.http[0].route[0].destination: no Service nowhere in namespace shop",
            ),
            (
                "        - destination: {host: rollouts-demo-stable, subset: blue}\n",
                "spec.http[0].route[0].destination: subset blue is in no DestinationRule for rollouts-demo-stable.shop.svc.cluster.local",
            ),
            (
                "        - destination: {host: rollouts-demo-stable, port: {number: 81}}\n",
                "spec.http[0].route[0].destination: Service shop/rollouts-demo-stable has no port 81",
            ),
        ] {
            let bad = Cluster::from_yaml(&with_route(route)).unwrap();
            let t = translate(&bad, &spec, &file(), &first.last_good);
            let vs = status(&t, "VirtualService", "rollouts-demo-vsvc");
            assert_eq!(vs.status, Status::Rejected, "{reason}");
            assert!(vs.message.starts_with(reason), "{:?} does not start with {reason:?}", vs.message);
            assert!(vs.message.ends_with("generation 4 is still served"), "{}", vs.message);
            assert_eq!(vs.served_generation, Some(4));
            assert_eq!(weights(&t.routes[0].http[0])[1].2, 10, "the 90/10 split still serves");
            // Without a version to fall back on, nothing is served.
            let t = translate(&bad, &spec, &file(), &LastGood::new());
            assert!(t.routes.is_empty());
            assert_eq!(status(&t, "VirtualService", "rollouts-demo-vsvc").served_generation, None);
        }
    }

    /// The Argo subset-level fixture with the `mirror-get` rule's mirror lines replaced by
    /// `with` (YAML at the rule's indentation).
    fn with_mirror_rule(with: &str) -> String {
        let old = "      mirror: {host: rollouts-demo, subset: canary}\n      mirrorPercentage: {value: 35}\n";
        assert!(ARGO_SUBSET.contains(old));
        ARGO_SUBSET.replace(old, with)
    }

    #[test]
    fn cors_policy_and_mirrors_are_translated_field_by_field() {
        let t = run(
            &with_mirror_rule(
                "      mirrors:
        - {destination: {host: rollouts-demo, subset: canary}, percentage: {value: 25}}
        - destination: {host: rollouts-demo.shop.svc.cluster.local, subset: stable, port: {number: 80}}
      corsPolicy:
        allowOrigins: [{exact: \"https://a.example\"}, {prefix: \"https://b.\"}, {regex: \".*\\\\.c\\\\.example\"}]
        allowOrigin: [\"https://ignored.example\"]
        allowMethods: [GET, POST]
        allowHeaders: [x-a, x-b]
        exposeHeaders: [x-e]
        maxAge: 24h
        allowCredentials: true
        unmatchedPreflights: IGNORE
",
            ),
            "istio-system/splitgate",
        );
        let vs = status(&t, "VirtualService", "rollouts-demo-vsvc");
        assert_eq!(vs.status, Status::Applied, "{}", vs.message);
        assert!(vs.unsupported.is_empty(), "{:?}", vs.unsupported);
        let rule = &t.routes[0].http[1];
        assert_eq!(rule.mirror, None);
        let mirrors: Vec<_> = rule
            .mirrors
            .iter()
            .map(|m| {
                (
                    m.destination.service.as_str(),
                    m.destination.subset.as_str(),
                    m.percentage,
                )
            })
            .collect();
        assert_eq!(
            mirrors,
            [
                ("rollouts-demo.shop", "canary", Some(25.0)),
                ("rollouts-demo.shop", "stable", None)
            ]
        );
        let cors = rule.cors_policy.as_ref().expect("the corsPolicy");
        let origins: Vec<_> = cors
            .allow_origins
            .iter()
            .map(|m| (m.exact.as_deref(), m.prefix.as_deref(), m.regex.as_deref()))
            .collect();
        assert_eq!(
            origins,
            [
                (Some("https://a.example"), None, None),
                (None, Some("https://b."), None),
                (None, None, Some(".*\\.c\\.example")),
            ],
            "allowOrigins wins over the deprecated allowOrigin, as in Istio"
        );
        assert_eq!(cors.allow_methods, ["GET", "POST"]);
        assert_eq!(cors.allow_headers, ["x-a", "x-b"]);
        assert_eq!(cors.expose_headers, ["x-e"]);
        assert_eq!(cors.max_age.as_deref(), Some("24h"));
        assert_eq!(cors.allow_credentials, Some(true));
        assert_eq!(cors.unmatched_preflights.as_deref(), Some("ignore"));
        // The copies go to the DestinationRule's subsets.
        let svc = &t.services["rollouts-demo.shop"];
        assert_eq!(svc.subsets["canary"].endpoints, ["10.1.0.21:8080"]);

        // Alone, the deprecated allowOrigin gives exact origins.
        let t = run(
            &with_mirror_rule(
                "      corsPolicy: {allowOrigin: [\"https://old.example\"], unmatchedPreflights: UNSPECIFIED}\n",
            ),
            "istio-system/splitgate",
        );
        let cors = t.routes[0].http[1].cors_policy.as_ref().unwrap();
        assert_eq!(cors.allow_origins.len(), 1);
        assert_eq!(
            cors.allow_origins[0].exact.as_deref(),
            Some("https://old.example")
        );
        assert_eq!(cors.unmatched_preflights, None, "UNSPECIFIED is FORWARD");
        assert!(t.routes[0].http[1].mirrors.is_empty());
    }

    #[test]
    fn cors_and_mirrors_fields_not_served_are_listed_by_path() {
        let t = run(
            &with_mirror_rule(
                "      mirrorPercentage: {value: 35}
      mirrors:
        - {destination: {host: rollouts-demo, subset: canary, weight: 3}, sample: true}
      corsPolicy:
        allowOrigins: [{exact: \"https://a.example\", ignoreCase: true}]
        allowPrivateNetworkAccess: true
",
            ),
            "istio-system/splitgate",
        );
        let vs = status(&t, "VirtualService", "rollouts-demo-vsvc");
        assert_eq!(vs.status, Status::Applied, "{}", vs.message);
        assert_eq!(
            vs.unsupported,
            [
                "spec.http[1].mirrorPercentage",
                "spec.http[1].mirrors[0].sample",
                "spec.http[1].mirrors[0].destination.weight",
                "spec.http[1].corsPolicy.allowPrivateNetworkAccess",
                "spec.http[1].corsPolicy.allowOrigins[0].ignoreCase",
            ]
        );
    }

    #[test]
    fn invalid_cors_and_mirrors_reject_the_object_naming_the_field() {
        let spec = gateway("istio-system/splitgate");
        let good = Cluster::from_yaml(ARGO_SUBSET).unwrap();
        let first = translate(&good, &spec, &file(), &LastGood::new());
        for (rule, reason) in [
            (
                "      mirror: {host: rollouts-demo, subset: canary}
      mirrors: [{destination: {host: rollouts-demo, subset: stable}}]
",
                "spec.http[1].mirrors: cannot be set beside mirror",
            ),
            (
                "      mirrors: [{destination: {host: rollouts-demo, subset: canary}, percentage: {value: 150}}]\n",
                "spec.http[1].mirrors[0].percentage.value: must be between 0 and 100, not 150",
            ),
            (
                "      mirrors: [{destination: {host: rollouts-demo, subset: blue}}]\n",
                "spec.http[1].mirrors[0].destination: subset blue is in no DestinationRule",
            ),
            (
                "      corsPolicy: {allowOrigins: [{exact: a, prefix: b}]}\n",
                "spec.http[1].corsPolicy.allowOrigins[0]: must set exactly one of exact, prefix, regex",
            ),
            (
                "      corsPolicy: {allowOrigins: [{regex: \"(\"}]}\n",
                "spec.http[1].corsPolicy.allowOrigins[0].regex: invalid regex \"(\"",
            ),
            (
                "      corsPolicy: {allowOrigin: [\"\"]}\n",
                "spec.http[1].corsPolicy.allowOrigin[0]: an empty string matches no origin",
            ),
            (
                "      corsPolicy: {allowOrigins: [{exact: a}], allowMethods: [get], maxAge: 1.5s}\n",
                "spec.http[1].corsPolicy.allowMethods[0]: \"get\" is not a method a policy can allow (one of GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH); spec.http[1].corsPolicy.maxAge: must be whole seconds",
            ),
            (
                "      corsPolicy: {allowOrigins: [{exact: a}], unmatchedPreflights: DROP}\n",
                "spec.http[1].corsPolicy.unmatchedPreflights: must be FORWARD or IGNORE, not \"DROP\"",
            ),
        ] {
            let bad = with_mirror_rule(rule).replace("generation: 9", "generation: 10");
            let bad = Cluster::from_yaml(&bad).unwrap();
            let t = translate(&bad, &spec, &file(), &first.last_good);
            let vs = status(&t, "VirtualService", "rollouts-demo-vsvc");
            assert_eq!(vs.status, Status::Rejected, "{reason}");
            assert!(
                vs.message.starts_with(reason),
                "{:?} does not start with {reason:?}",
                vs.message
            );
            assert_eq!(vs.served_generation, Some(9), "the last good version serves");
        }
    }

    #[test]
    fn a_host_is_served_once_the_file_and_the_oldest_object_win() {
        let spec = gateway("istio-system/splitgate");
        let mut yaml = ARGO_HOST.to_string();
        yaml.push_str(
            "---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: copycat, namespace: shop, creationTimestamp: \"2026-11-02T10:00:00Z\"}
spec:
  gateways: [istio-system/splitgate]
  hosts: [rollouts-demo.example.com]
  http: [{route: [{destination: {host: rollouts-demo-canary}}]}]
",
        );
        let cluster = Cluster::from_yaml(&yaml).unwrap();
        let t = translate(&cluster, &spec, &file(), &LastGood::new());
        let copy = status(&t, "VirtualService", "copycat");
        assert_eq!(copy.status, Status::Rejected);
        assert_eq!(
            copy.message,
            "host rollouts-demo.example.com is already served by VirtualService shop/rollouts-demo-vsvc"
        );
        let mut f = file();
        f.routes = crate::config::parse(
            "listeners: [{name: http, address: \"127.0.0.1:0\"}]
services: {s: {namespace: d, host: s.d, subsets: {a: {endpoints: [\"127.0.0.1:1\"]}}}}
routes: [{name: web, hosts: [rollouts-demo.example.com], http: [{route: [{destination: {service: s, subset: a}}]}]}]
",
            "t",
        )
        .unwrap()
        .routes;
        let t = translate(&cluster, &spec, &f, &LastGood::new());
        assert!(t.routes.is_empty());
        assert_eq!(
            status(&t, "VirtualService", "rollouts-demo-vsvc").message,
            "host rollouts-demo.example.com is already served by file route web"
        );
    }
}
