//! API overrides: an overlay on the file config. The effective config is the file with the overlay
//! applied; a reload re-applies it and drops the parts whose route, rule or subsets are gone.

use crate::config::model::{
    RawConfig, RawDestination, RawDestinationWeight, RawMatchBlock, RawRoute, RawRule,
    RawStringMatch,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every override the API has made, by route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// Overrides by route name.
    #[serde(default)]
    pub routes: BTreeMap<String, RouteOverlay>,
}

/// The overrides of one route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteOverlay {
    /// Rule name → subset → weight.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, BTreeMap<String, u32>>,
    /// Header routes, in the order they were first set; placed before the file's rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_routes: Vec<HeaderRoute>,
    /// Mirror routes, in the order they were first set; placed after the header routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirror_routes: Vec<MirrorRoute>,
}

impl RouteOverlay {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty() && self.header_routes.is_empty() && self.mirror_routes.is_empty()
    }
}

/// Argo Rollouts' `setHeaderRoute`: requests whose headers match go to one subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRoute {
    /// Name (from the URL).
    #[serde(default)]
    pub name: String,
    /// Header conditions, all of which must hold.
    #[serde(rename = "match")]
    pub matches: Vec<HeaderMatch>,
    /// Subset that matching requests go to.
    pub subset: String,
    /// Service of that subset; defaults to the route's service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// One header condition of a header route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// Header name.
    pub header: String,
    /// Value equals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Value starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Value ends with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// Value fully matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Header is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

impl HeaderMatch {
    fn value(&self) -> RawStringMatch {
        RawStringMatch {
            exact: self.exact.clone(),
            prefix: self.prefix.clone(),
            suffix: self.suffix.clone(),
            regex: self.regex.clone(),
            present: self.present,
        }
    }
}

/// Argo Rollouts' `setMirrorRoute`: copies of matching requests go to a subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorRoute {
    /// Name (from the URL).
    #[serde(default)]
    pub name: String,
    /// Subset that receives the copies.
    pub subset: String,
    /// Share of matching requests copied, 0–100.
    #[serde(default = "full_percentage")]
    pub percentage: f64,
    /// Match blocks (Istio names; `path` is accepted for `uri`); none means all requests.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RawMatchBlock>,
    /// Service of that subset; defaults to the route's service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

fn full_percentage() -> f64 {
    100.0
}

/// Why an override can't be applied: the field at fault and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayError {
    /// The API field at fault (`route`, `rule`, `weights.canary`, `subset`, …).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// Whether the thing named does not exist (HTTP 404) rather than being malformed (400).
    pub not_found: bool,
}

impl OverlayError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        OverlayError {
            field: field.into(),
            message: message.into(),
            not_found: false,
        }
    }

    fn missing(field: impl Into<String>, message: impl Into<String>) -> Self {
        OverlayError {
            field: field.into(),
            message: message.into(),
            not_found: true,
        }
    }
}

/// An override a reload could no longer apply, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dropped {
    /// Route name.
    pub route: String,
    /// What was dropped.
    pub what: Overridden,
    /// Why.
    pub reason: String,
    /// The generation that no longer has it.
    pub generation: u64,
}

/// One override of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Overridden {
    /// Every override of the route (the route is gone).
    AllOverrides,
    /// The weights of the named rule.
    Weights(String),
    /// The named header route.
    HeaderRoute(String),
    /// The named mirror route.
    MirrorRoute(String),
}

/// Prefix of the rule names that header routes become.
pub const HEADER_RULE_PREFIX: &str = "header-route/";
/// Prefix of the rule names that mirror routes become.
pub const MIRROR_RULE_PREFIX: &str = "mirror-route/";

/// The rule that weights address: the named one, else the route's only weighted rule (more than
/// one destination), else its only rule without match conditions.
pub fn weighted_rule<'a>(
    route: &'a RawRoute,
    rule: Option<&str>,
) -> Result<(String, &'a RawRule), OverlayError> {
    let named = route
        .http
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone().unwrap_or_else(|| format!("rule-{i}")), r));
    if let Some(name) = rule {
        return named.into_iter().find(|(n, _)| n == name).ok_or_else(|| {
            OverlayError::missing(
                "rule",
                format!("route {:?} has no rule {name:?}", route.name),
            )
        });
    }
    let weighted: Vec<(String, &RawRule)> =
        named.clone().filter(|(_, r)| r.route.len() > 1).collect();
    let candidates = if weighted.is_empty() {
        named.filter(|(_, r)| r.matches.is_empty()).collect()
    } else {
        weighted
    };
    match <[_; 1]>::try_from(candidates) {
        Ok([one]) => Ok(one),
        Err(many) => Err(OverlayError::new(
            "rule",
            format!(
                "route {:?} has {} weighted rules: name one with \"rule\"",
                route.name,
                many.len()
            ),
        )),
    }
}

/// The one service a rule sends to.
fn rule_service(rule: &RawRule) -> Result<&str, OverlayError> {
    let first = rule
        .route
        .first()
        .map(|d| d.destination.service.as_str())
        .unwrap_or_default();
    if rule.route.iter().all(|d| d.destination.service == first) {
        Ok(first)
    } else {
        Err(OverlayError::new(
            "rule",
            "the rule sends to several services; weights can't be set by subset alone",
        ))
    }
}

/// The service that header and mirror routes of a route default to: the one service all of its
/// rules send to.
fn route_service(route: &RawRoute) -> Result<&str, OverlayError> {
    let mut services = route
        .http
        .iter()
        .flat_map(|r| &r.route)
        .map(|d| d.destination.service.as_str());
    let first = services.next().unwrap_or_default();
    if services.all(|s| s == first) {
        Ok(first)
    } else {
        Err(OverlayError::new(
            "service",
            format!("route {:?} sends to several services: name one", route.name),
        ))
    }
}

fn check_subset(
    config: &RawConfig,
    service: &str,
    subset: &str,
    field: &str,
) -> Result<(), OverlayError> {
    let svc = config
        .services
        .get(service)
        .ok_or_else(|| OverlayError::new("service", format!("unknown service {service:?}")))?;
    if svc.subsets.contains_key(subset) {
        Ok(())
    } else {
        let known: Vec<&str> = svc.subsets.keys().map(String::as_str).collect();
        Err(OverlayError::new(
            field,
            format!(
                "unknown subset {subset:?} of service {service:?} (known: {})",
                known.join(", ")
            ),
        ))
    }
}

/// Sets the weights of a rule in `route`. Destinations not named get 0; named subsets of the
/// rule's service that are not yet destinations are added.
fn apply_weights(
    config: &RawConfig,
    route: &mut RawRoute,
    rule: &str,
    weights: &BTreeMap<String, u32>,
) -> Result<(), OverlayError> {
    if weights.is_empty() {
        return Err(OverlayError::new(
            "weights",
            "at least one subset weight is required",
        ));
    }
    if weights.values().all(|w| *w == 0) {
        return Err(OverlayError::new(
            "weights",
            "the weights sum to 0: at least one must be above 0",
        ));
    }
    let (_, target) = weighted_rule(route, Some(rule))?;
    let service = rule_service(target)?.to_string();
    for subset in weights.keys() {
        check_subset(config, &service, subset, &format!("weights.{subset}"))?;
    }
    let idx = route
        .http
        .iter()
        .position(|r| std::ptr::eq(r, target))
        .expect("the rule is in its route");
    let dests = &mut route.http[idx].route;
    for d in dests.iter_mut() {
        d.weight = Some(weights.get(&d.destination.subset).copied().unwrap_or(0));
    }
    for (subset, w) in weights {
        if !dests.iter().any(|d| &d.destination.subset == subset) {
            let destination = RawDestination {
                service: service.clone(),
                subset: subset.clone(),
            };
            dests.push(RawDestinationWeight {
                destination,
                weight: Some(*w),
                headers: None,
            });
        }
    }
    Ok(())
}

fn header_rule(
    config: &RawConfig,
    route: &RawRoute,
    hr: &HeaderRoute,
) -> Result<RawRule, OverlayError> {
    if hr.matches.is_empty() {
        return Err(OverlayError::new(
            "match",
            "at least one header condition is required",
        ));
    }
    let service = match &hr.service {
        Some(s) => s.clone(),
        None => route_service(route)?.to_string(),
    };
    check_subset(config, &service, &hr.subset, "subset")?;
    let mut block = RawMatchBlock::default();
    for (i, m) in hr.matches.iter().enumerate() {
        if http::HeaderName::from_bytes(m.header.as_bytes()).is_err() {
            return Err(OverlayError::new(
                format!("match[{i}].header"),
                format!("invalid header name {:?}", m.header),
            ));
        }
        check_condition(m, &format!("match[{i}]"))?;
        block
            .headers
            .insert(m.header.to_ascii_lowercase(), m.value());
    }
    Ok(RawRule {
        name: Some(format!("{HEADER_RULE_PREFIX}{}", hr.name)),
        matches: vec![block],
        route: vec![RawDestinationWeight {
            destination: RawDestination {
                service,
                subset: hr.subset.clone(),
            },
            weight: None,
            headers: None,
        }],
        ..RawRule::default()
    })
}

/// One header condition must be a valid test (the same rules as in the config file).
fn check_condition(m: &HeaderMatch, field: &str) -> Result<(), OverlayError> {
    crate::config::string_match::parse_string_match(&m.value())
        .map(drop)
        .map_err(|(sub, message)| {
            // The file's message points to `without_headers`, which header routes do not have.
            let message = if sub == "present" {
                "only `present: true` is allowed: a header route matches headers that are there \
                 (by exact, prefix, suffix, regex or present: true), not missing ones"
                    .to_string()
            } else {
                message
            };
            OverlayError::new(
                if sub.is_empty() {
                    field.to_string()
                } else {
                    format!("{field}.{sub}")
                },
                message,
            )
        })
}

/// `primary` is the name of the rule whose routing matching requests keep: the route's weighted
/// rule as the file has it (API weights on a match rule must not make it a second candidate).
fn mirror_rule(
    config: &RawConfig,
    route: &RawRoute,
    primary: Result<&str, &OverlayError>,
    mr: &MirrorRoute,
) -> Result<RawRule, OverlayError> {
    if !(0.0..=100.0).contains(&mr.percentage) {
        return Err(OverlayError::new(
            "percentage",
            format!("must be between 0 and 100, not {}", mr.percentage),
        ));
    }
    let service = match &mr.service {
        Some(s) => s.clone(),
        None => route_service(route)?.to_string(),
    };
    check_subset(config, &service, &mr.subset, "subset")?;
    // Matching requests are served as the route's weighted rule serves them (with the weights
    // the API gave it), and copied.
    let primary = primary.map_err(Clone::clone)?;
    let (_, primary) = weighted_rule(route, Some(primary))?;
    Ok(RawRule {
        name: Some(format!("{MIRROR_RULE_PREFIX}{}", mr.name)),
        matches: mr.matches.clone(),
        mirror: Some(RawDestination {
            service,
            subset: mr.subset.clone(),
        }),
        mirror_percentage: Some(mr.percentage),
        // The API's mirror takes the place of the weighted rule's.
        mirrors: Vec::new(),
        ..primary.clone()
    })
}

/// One route with its overrides applied (API rules first), and the overrides that could not be.
pub fn apply_route(
    file: &RawConfig,
    route: &RawRoute,
    ro: &RouteOverlay,
) -> (RawRoute, Vec<(Overridden, OverlayError)>) {
    let mut route = route.clone();
    // Unnamed rules keep the name their place in the file gives them, however many API rules
    // go in front of them.
    for (i, r) in route.http.iter_mut().enumerate() {
        r.name.get_or_insert_with(|| format!("rule-{i}"));
    }
    // Which rule "the weighted rule" is, decided on the file's rules: weights the API sets on a
    // match rule apply to that rule's destinations and keep its match, without making it a
    // second weighted rule.
    let primary = weighted_rule(&route, None).map(|(name, _)| name);
    let mut failed = Vec::new();
    for (rule, weights) in &ro.weights {
        if let Err(e) = apply_weights(file, &mut route, rule, weights) {
            failed.push((Overridden::Weights(rule.clone()), e));
        }
    }
    let mut managed = Vec::new();
    for hr in &ro.header_routes {
        match header_rule(file, &route, hr) {
            Ok(r) => managed.push(r),
            Err(e) => failed.push((Overridden::HeaderRoute(hr.name.clone()), e)),
        }
    }
    for mr in &ro.mirror_routes {
        match mirror_rule(file, &route, primary.as_deref(), mr) {
            Ok(r) => managed.push(r),
            Err(e) => failed.push((Overridden::MirrorRoute(mr.name.clone()), e)),
        }
    }
    route.http.splice(0..0, managed);
    (route, failed)
}

/// The file config with `overlay` applied, and the overrides that could not be applied.
pub fn apply(file: &RawConfig, overlay: &Overlay) -> (RawConfig, Vec<Dropped>) {
    let mut out = file.clone();
    let mut dropped = Vec::new();
    for (route_name, ro) in &overlay.routes {
        let drop = |what, reason| Dropped {
            route: route_name.clone(),
            what,
            reason,
            generation: 0,
        };
        let Some(idx) = out.routes.iter().position(|r| &r.name == route_name) else {
            dropped.push(drop(
                Overridden::AllOverrides,
                "the route no longer exists".into(),
            ));
            continue;
        };
        let (route, failed) = apply_route(file, &out.routes[idx], ro);
        dropped.extend(failed.into_iter().map(|(what, e)| drop(what, e.message)));
        out.routes[idx] = route;
    }
    (out, dropped)
}

/// Checks that the overrides of `route` can all be applied to the file, naming the field at
/// fault if not. The API runs it before it commits anything.
pub fn check(file: &RawConfig, overlay: &Overlay, route: &str) -> Result<(), OverlayError> {
    let route_cfg = file
        .routes
        .iter()
        .find(|r| r.name == route)
        .ok_or_else(|| OverlayError::missing("route", format!("unknown route {route:?}")))?;
    let Some(ro) = overlay.routes.get(route) else {
        return Ok(());
    };
    match apply_route(file, route_cfg, ro).1.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}
