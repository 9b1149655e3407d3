//! The admin API's changes, each an edit of the overlay that `Control::change` checks and commits.

use crate::config::model::{RawConfig, RawRoute};
use crate::control::overlay::{self, HeaderRoute, MirrorRoute, Overlay};
use crate::control::{ChangeError, Control};
use serde::Deserialize;
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

/// Sets (adds or replaces) a header route.
pub async fn put_header_route(
    control: &Control,
    if_match: Option<u64>,
    route: &str,
    name: &str,
    mut body: HeaderRoute,
) -> Result<u64, ChangeError> {
    body.name = name.to_string();
    control
        .change(if_match, |overlay, file| {
            find_route(file, route)?;
            let list = &mut overlay
                .routes
                .entry(route.to_string())
                .or_default()
                .header_routes;
            match list.iter_mut().find(|h| h.name == name) {
                Some(existing) => *existing = body,
                None => list.push(body),
            }
            Ok(route.to_string())
        })
        .await
}

/// Removes a header route.
pub async fn delete_header_route(
    control: &Control,
    if_match: Option<u64>,
    route: &str,
    name: &str,
) -> Result<u64, ChangeError> {
    control
        .change(if_match, |overlay, file| {
            find_route(file, route)?;
            let list = &mut overlay
                .routes
                .entry(route.to_string())
                .or_default()
                .header_routes;
            let before = list.len();
            list.retain(|h| h.name != name);
            if list.len() == before {
                return Err(not_found("header route", name, route));
            }
            Ok(route.to_string())
        })
        .await
}

/// Sets (adds or replaces) a mirror route.
pub async fn put_mirror_route(
    control: &Control,
    if_match: Option<u64>,
    route: &str,
    name: &str,
    mut body: MirrorRoute,
) -> Result<u64, ChangeError> {
    body.name = name.to_string();
    control
        .change(if_match, |overlay, file| {
            find_route(file, route)?;
            let list = &mut overlay
                .routes
                .entry(route.to_string())
                .or_default()
                .mirror_routes;
            match list.iter_mut().find(|m| m.name == name) {
                Some(existing) => *existing = body,
                None => list.push(body),
            }
            Ok(route.to_string())
        })
        .await
}

/// Removes a mirror route.
pub async fn delete_mirror_route(
    control: &Control,
    if_match: Option<u64>,
    route: &str,
    name: &str,
) -> Result<u64, ChangeError> {
    control
        .change(if_match, |overlay, file| {
            find_route(file, route)?;
            let list = &mut overlay
                .routes
                .entry(route.to_string())
                .or_default()
                .mirror_routes;
            let before = list.len();
            list.retain(|m| m.name != name);
            if list.len() == before {
                return Err(not_found("mirror route", name, route));
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
