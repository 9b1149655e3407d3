//! Checks and compiles what a rule does besides choosing a destination: `rewrite`, `redirect`,
//! `direct_response` and `fault`. Each problem is reported with its path.

use super::duration::parse_duration;
use super::model::{RawDirectResponse, RawFault, RawRedirect, RawRewrite, RawRule};
use super::string_match::regex_reason;
use super::FieldError;
use crate::routing::answer::{Answer, Redirect};
use crate::routing::fault::{grpc_code, per_million, Abort, Fault};
use crate::routing::rewrite::{replacement, Rewrite, UriRewrite};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use regex::Regex;

/// Largest `direct_response` body.
pub const MAX_DIRECT_BODY: usize = 64 * 1024;

struct Errs<'a>(&'a mut Vec<FieldError>);

impl Errs<'_> {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// What rule `rp` does instead of routing, if anything; and whether it routes at all, which
/// decides whether it needs destinations. A rule that answers itself may not also route,
/// rewrite or inject faults.
pub fn answer(errs: &mut Vec<FieldError>, rp: &str, rule: &RawRule) -> Option<Box<Answer>> {
    let mut errs = Errs(errs);
    let answer = match (&rule.redirect, &rule.direct_response) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            errs.add(
                rp,
                "redirect and direct_response are both set: a rule answers one way",
            );
            return None;
        }
        (Some(r), None) => redirect(&mut errs, &format!("{rp}.redirect"), r),
        (None, Some(d)) => direct(&mut errs, &format!("{rp}.direct_response"), d),
    };
    let which = if rule.redirect.is_some() {
        "redirect"
    } else {
        "direct_response"
    };
    let routing = [
        ("route", !rule.route.is_empty()),
        ("mirror", rule.mirror.is_some()),
        ("mirrors", !rule.mirrors.is_empty()),
        ("rewrite", rule.rewrite.is_some()),
        ("fault", rule.fault.is_some()),
        ("retries", rule.retries.is_some()),
        ("timeout", rule.timeout.is_some()),
        ("sticky", rule.sticky.is_some()),
    ];
    for (field, set) in routing {
        if set {
            errs.add(
                format!("{rp}.{field}"),
                format!("not allowed with {which}: the gateway answers this rule itself, nothing is sent upstream"),
            );
        }
    }
    answer.map(Box::new)
}

fn redirect(errs: &mut Errs, p: &str, r: &RawRedirect) -> Option<Answer> {
    let status = match r.redirect_code.unwrap_or(301) {
        c @ (301 | 302 | 303 | 307 | 308) => StatusCode::from_u16(c).ok()?,
        c => {
            errs.add(
                format!("{p}.redirect_code"),
                format!("{c} is not a redirect: use 301, 302, 303, 307 or 308"),
            );
            return None;
        }
    };
    let scheme = match r.scheme.as_deref().map(str::to_ascii_lowercase) {
        None => None,
        Some(s) if s == "http" || s == "https" => Some(s.into_boxed_str()),
        Some(s) => {
            errs.add(format!("{p}.scheme"), format!("{s:?} is not http or https"));
            return None;
        }
    };
    if let Some(a) = &r.authority {
        let ok = !a.is_empty()
            && !a.contains(':')
            && a.parse::<http::uri::Authority>()
                .is_ok_and(|x| x.as_str() == a);
        if !ok {
            errs.add(
                format!("{p}.authority"),
                format!("{a:?} is not a host name (give a port in `port`)"),
            );
            return None;
        }
    }
    if let Some(u) = &r.uri {
        if !u.starts_with('/') || http::uri::PathAndQuery::try_from(u.as_str()).is_err() {
            errs.add(
                format!("{p}.uri"),
                format!("{u:?} is not a path: it must start with / and use only URL characters"),
            );
            return None;
        }
    }
    if r.port == Some(0) {
        errs.add(format!("{p}.port"), "must be 1–65535");
        return None;
    }
    Some(Answer::Redirect(Redirect {
        status,
        scheme,
        authority: r.authority.as_deref().map(Into::into),
        port: r.port,
        uri: r.uri.as_deref().map(Into::into),
    }))
}

fn direct(errs: &mut Errs, p: &str, d: &RawDirectResponse) -> Option<Answer> {
    let Some(status) = StatusCode::from_u16(d.status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
    else {
        errs.add(
            format!("{p}.status"),
            format!("{} is not a status from 200 to 599", d.status),
        );
        return None;
    };
    let body = d.body.clone().unwrap_or_default();
    if body.len() > MAX_DIRECT_BODY {
        errs.add(
            format!("{p}.body"),
            format!(
                "is {} bytes; at most {MAX_DIRECT_BODY} are served from the config",
                body.len()
            ),
        );
        return None;
    }
    Some(Answer::Direct {
        status,
        body: Bytes::from(body),
    })
}

/// Rule `rp`'s `rewrite`.
pub fn rewrite(errs: &mut Vec<FieldError>, rp: &str, raw: &RawRewrite) -> Option<Box<Rewrite>> {
    let mut errs = Errs(errs);
    let p = format!("{rp}.rewrite");
    let uri = match (&raw.uri, &raw.uri_regex_rewrite) {
        (Some(_), Some(_)) => {
            errs.add(
                &p,
                "uri and uri_regex_rewrite are both set: a path is rewritten one way",
            );
            return None;
        }
        (Some(u), None) => {
            let ok = u.is_empty() || http::uri::PathAndQuery::try_from(u.as_str()).is_ok();
            if !ok || u.contains(['?', '#']) {
                errs.add(
                    format!("{p}.uri"),
                    format!("{u:?} is not a path prefix: use URL characters, no ? or #"),
                );
                return None;
            }
            Some(UriRewrite::Prefix(u.as_str().into()))
        }
        (None, Some(r)) => match Regex::new(&r.pattern) {
            Ok(re) => Some(UriRewrite::Regex(re, replacement(&r.rewrite).into())),
            Err(e) => {
                errs.add(
                    format!("{p}.uri_regex_rewrite.match"),
                    format!("invalid regex: {}", regex_reason(&e)),
                );
                return None;
            }
        },
        (None, None) => None,
    };
    let authority = match &raw.authority {
        None => None,
        Some(a) => match a.parse::<http::uri::Authority>() {
            Ok(x) if x.as_str() == a && !a.is_empty() => HeaderValue::try_from(a.as_str()).ok(),
            _ => {
                errs.add(
                    format!("{p}.authority"),
                    format!("{a:?} is not a host[:port]"),
                );
                return None;
            }
        },
    };
    if uri.is_none() && authority.is_none() {
        errs.add(
            &p,
            "changes nothing: set uri, uri_regex_rewrite or authority",
        );
        return None;
    }
    Some(Box::new(Rewrite { uri, authority }))
}

/// Rule `rp`'s `fault`.
pub fn fault(errs: &mut Vec<FieldError>, rp: &str, raw: &RawFault) -> Option<Box<Fault>> {
    let mut errs = Errs(errs);
    let p = format!("{rp}.fault");
    let share = |errs: &mut Errs, at: String, pct: f64| {
        if (0.0..=100.0).contains(&pct) {
            Some(per_million(pct))
        } else {
            errs.add(at, format!("must be between 0 and 100, not {pct}"));
            None
        }
    };
    let delay = match &raw.delay {
        None => None,
        Some(d) => {
            let share = share(&mut errs, format!("{p}.delay.percentage"), d.percentage);
            match parse_duration(&d.fixed_delay) {
                Ok(t) => share.map(|s| (t, s)),
                Err(m) => {
                    errs.add(format!("{p}.delay.fixed_delay"), m);
                    None
                }
            }
        }
    };
    let abort = match &raw.abort {
        None => None,
        Some(a) => {
            let share = share(&mut errs, format!("{p}.abort.percentage"), a.percentage);
            let http = |code: u16| {
                StatusCode::from_u16(code)
                    .ok()
                    .filter(|s| (200..=599).contains(&s.as_u16()))
            };
            match (a.http_status, a.grpc_status.as_deref()) {
                (Some(code), None) => match http(code) {
                    Some(s) => share.map(|share| (Abort::Http(s), share)),
                    None => {
                        errs.add(
                            format!("{p}.abort.http_status"),
                            format!("{code} is not a status from 200 to 599"),
                        );
                        None
                    }
                },
                (None, Some(name)) => match grpc_code(name) {
                    Some(code) => share.map(|share| (Abort::Grpc(code), share)),
                    None => {
                        errs.add(
                            format!("{p}.abort.grpc_status"),
                            format!("{name:?} is not a gRPC status: use a name like UNAVAILABLE, or 0–16"),
                        );
                        None
                    }
                },
                _ => {
                    errs.add(
                        format!("{p}.abort"),
                        "needs exactly one of http_status or grpc_status",
                    );
                    None
                }
            }
        }
    };
    if raw.delay.is_none() && raw.abort.is_none() {
        errs.add(&p, "injects nothing: set delay, abort or both");
    }
    (delay.is_some() || abort.is_some()).then(|| Box::new(Fault { delay, abort }))
}
