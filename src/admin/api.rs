//! The admin API's changes, each an edit of the overlay that `Control::change` checks and commits.

use crate::config::duration::parse_duration;
use crate::config::model::{RawConfig, RawRoute};
use crate::control::overlay::{self, HeaderRoute, MirrorRoute, Overlay, RouteOverlay};
use crate::control::{ChangeError, Control};
use crate::metrics::analysis::{now_secs, Summary, MAX_WINDOW_SECS};
use crate::routing::matcher::percent_decode;
use serde::Deserialize;
use serde::Serialize;
use std::collections::BTreeMap;

/// Body of `PUT /v1/routes/{route}/weights`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsBody {
    /// The rule; may be left out when the route has one weighted rule.
    #[serde(default)]
    pub rule: Option<String>,
    /// Subset → weight.
    pub weights: BTreeMap<String, u32>,
}

fn find_route<'a>(file: &'a RawConfig, route: &str) -> Result<&'a RawRoute, ChangeError> {
    file.routes
        .iter()
        .find(|r| r.name == route)
        .ok_or_else(|| ChangeError::NotFound {
            field: "route".into(),
            message: format!("unknown route {route:?}"),
        })
}

fn not_found(what: &str, name: &str, route: &str) -> ChangeError {
    ChangeError::NotFound {
        field: "name".into(),
        message: format!("route {route:?} has no {what} {name:?}"),
    }
}

/// Sets the weights of a rule.
pub async fn set_weights(
    control: &Control,
    if_match: Option<u64>,
    route: &str,
    body: WeightsBody,
) -> Result<u64, ChangeError> {
    control
        .change(if_match, |overlay: &mut Overlay, file: &RawConfig| {
            let (rule, _) = overlay::weighted_rule(find_route(file, route)?, body.rule.as_deref())?;
            overlay
                .routes
                .entry(route.to_string())
                .or_default()
                .weights
                .insert(rule, body.weights);
            Ok(route.to_string())
        })
        .await
}

/// An override kept in a named list of a route (header routes, mirror routes).
pub trait NamedOverride: Sized {
    /// What it is called in messages.
    const KIND: &'static str;
    /// Its name.
    fn name(&self) -> &str;
    /// Names it.
    fn set_name(&mut self, name: &str);
    /// The route's list of this kind.
    fn list(ro: &mut RouteOverlay) -> &mut Vec<Self>;
}

impl NamedOverride for HeaderRoute {
    const KIND: &'static str = "header route";
    fn name(&self) -> &str {
        &self.name
    }
    fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }
    fn list(ro: &mut RouteOverlay) -> &mut Vec<Self> {
        &mut ro.header_routes
    }
}

impl NamedOverride for MirrorRoute {
    const KIND: &'static str = "mirror route";
    fn name(&self) -> &str {
        &self.name
    }
    fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }
    fn list(ro: &mut RouteOverlay) -> &mut Vec<Self> {
        &mut ro.mirror_routes
    }
}

/// Sets (adds, or replaces in place) a header or mirror route; the name comes from the URL.
pub async fn put_named<T: NamedOverride>(
    control: &Control,
    if_match: Option<u64>,
    route: &str,
    name: &str,
    mut body: T,
) -> Result<u64, ChangeError> {
    body.set_name(name);
    control
        .change(if_match, |overlay, file| {
            find_route(file, route)?;
            let list = T::list(overlay.routes.entry(route.to_string()).or_default());
            match list.iter_mut().find(|x| x.name() == name) {
                Some(existing) => *existing = body,
                None => list.push(body),
            }
            Ok(route.to_string())
        })
        .await
}

/// Removes a header or mirror route.
pub async fn delete_named<T: NamedOverride>(
    control: &Control,
    if_match: Option<u64>,
    route: &str,
    name: &str,
) -> Result<u64, ChangeError> {
    control
        .change(if_match, |overlay, file| {
            find_route(file, route)?;
            let list = T::list(overlay.routes.entry(route.to_string()).or_default());
            let before = list.len();
            list.retain(|x| x.name() != name);
            if list.len() == before {
                return Err(not_found(T::KIND, name, route));
            }
            Ok(route.to_string())
        })
        .await
}

/// Drops every API override of a route: it is served from the file again.
pub async fn clear_overrides(
    control: &Control,
    if_match: Option<u64>,
    route: &str,
) -> Result<u64, ChangeError> {
    control
        .change(if_match, |overlay, file| {
            find_route(file, route)?;
            overlay.routes.remove(route);
            Ok(route.to_string())
        })
        .await
}

/// Answer of `GET /v1/analysis`.
#[derive(Debug, Serialize)]
pub struct AnalysisView {
    /// The route.
    pub route: String,
    /// Window length.
    pub window_seconds: u64,
    /// Generation now live.
    pub generation: u64,
    /// Per subset of the route (`service/subset` when the route spans services).
    pub subsets: BTreeMap<String, Summary>,
}

/// `GET /v1/analysis?route=R&window=60s`: per subset of the route, its requests, rate, success
/// rate and latency quantiles over the window.
pub fn analysis(control: &Control, query: Option<&str>) -> Result<AnalysisView, ChangeError> {
    let invalid = |field: &str, message: String| ChangeError::Invalid {
        field: field.into(),
        message,
    };
    let (mut route, mut window) = (None, None);
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "route" => route = Some(percent_decode(v).into_owned()),
            "window" => window = Some(percent_decode(v).into_owned()),
            other => {
                return Err(invalid(
                    other,
                    format!("unknown parameter {other:?}; use route and window"),
                ))
            }
        }
    }
    let route = route.ok_or_else(|| invalid("route", "the route parameter is required".into()))?;
    let secs = match window {
        None => 60,
        Some(w) => {
            let d = parse_duration(&w).map_err(|m| invalid("window", m))?;
            // Windows are made of whole seconds: a fraction would be silently dropped.
            if d.subsec_nanos() != 0 {
                return Err(invalid(
                    "window",
                    format!("{w:?} is not a whole number of seconds (like 30s, 90s or 5m)"),
                ));
            }
            let secs = d.as_secs();
            if !(1..=MAX_WINDOW_SECS).contains(&secs) {
                return Err(invalid(
                    "window",
                    format!(
                        "{w:?}: must be between 1s and {MAX_WINDOW_SECS}s (the analysis keeps {MAX_WINDOW_SECS} s)"
                    ),
                ));
            }
            secs
        }
    };
    let rt = control.runtime().load();
    let r = rt
        .router
        .routes()
        .iter()
        .find(|r| *r.name == *route)
        .ok_or_else(|| ChangeError::NotFound {
            field: "route".into(),
            message: format!("unknown route {route:?}"),
        })?;
    let windows = rt
        .windows
        .get(r.index)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let one_service = windows.windows(2).all(|w| w[0].0.service == w[1].0.service);
    let now = now_secs();
    let subsets = windows
        .iter()
        .map(|(t, w)| {
            let sub = rt.subset(*t);
            let key = if one_service {
                sub.name.to_string()
            } else {
                format!("{}/{}", rt.services[t.service].name, sub.name)
            };
            (key, w.summary(now, secs))
        })
        .collect();
    Ok(AnalysisView {
        route,
        window_seconds: secs,
        generation: rt.generation,
        subsets,
    })
}
