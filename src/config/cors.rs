//! Checks and compiles a rule's `cors_policy` into what the data plane serves
//! (`routing::cors`): origins compiled (regexes too) and every header value built here, so a
//! request pays only for the origin test.

use super::duration::parse_duration;
use super::model::RawCorsPolicy;
use super::string_match::parse_string_match;
use crate::routing::cors::{CorsPolicy, UnmatchedPreflights};
use crate::routing::StringMatch;
use http::{HeaderName, HeaderValue};

/// The methods a policy may allow: Istio's list.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Compiles `raw`. On failure, every problem, each with the field at fault under
/// `cors_policy` (`allow_origins[1].regex`) and what is wrong.
pub fn cors_policy(raw: &RawCorsPolicy) -> Result<CorsPolicy, Vec<(String, String)>> {
    let mut errs = Vec::new();
    let mut allow_origins = Vec::new();
    for (i, m) in raw.allow_origins.iter().enumerate() {
        let at = format!("allow_origins[{i}]");
        let empty = [&m.exact, &m.prefix, &m.suffix, &m.regex]
            .iter()
            .any(|v| v.as_deref() == Some(""));
        match parse_string_match(m) {
            Ok(StringMatch::Present) => errs.push((
                format!("{at}.present"),
                "an origin is matched by exact, prefix, suffix or regex".into(),
            )),
            Ok(_) if empty => errs.push((at, "an empty string matches no origin".into())),
            Ok(m) => allow_origins.push(m),
            Err(("", message)) => errs.push((at, message)),
            Err((sub, message)) => errs.push((format!("{at}.{sub}"), message)),
        }
    }
    for (i, m) in raw.allow_methods.iter().enumerate() {
        if !METHODS.contains(&m.as_str()) {
            errs.push((
                format!("allow_methods[{i}]"),
                format!(
                    "{m:?} is not a method a policy can allow (one of {})",
                    METHODS.join(", ")
                ),
            ));
        }
    }
    let mut names = |field: &str, list: &[String]| {
        for (i, n) in list.iter().enumerate() {
            if HeaderName::from_bytes(n.as_bytes()).is_err() {
                errs.push((
                    format!("{field}[{i}]"),
                    format!("{n:?} is not a header name"),
                ));
            }
        }
        joined(list)
    };
    let allow_headers = names("allow_headers", &raw.allow_headers);
    let expose_headers = names("expose_headers", &raw.expose_headers);
    let max_age = match raw.max_age.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(d)) if d.subsec_nanos() == 0 => Some(HeaderValue::from(d.as_secs())),
        Some(Ok(_)) => {
            errs.push((
                "max_age".into(),
                "must be whole seconds: browsers read it in seconds".into(),
            ));
            None
        }
        Some(Err(m)) => {
            errs.push(("max_age".into(), m));
            None
        }
    };
    let unmatched_preflights = match raw.unmatched_preflights.as_deref() {
        None | Some("forward") => UnmatchedPreflights::Forward,
        Some("ignore") => UnmatchedPreflights::Ignore,
        Some(other) => {
            errs.push((
                "unmatched_preflights".into(),
                format!("must be forward or ignore, not {other:?}"),
            ));
            UnmatchedPreflights::Forward
        }
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(CorsPolicy {
        allow_origins: allow_origins.into(),
        allow_methods: joined(&raw.allow_methods),
        allow_headers,
        expose_headers,
        max_age,
        allow_credentials: raw.allow_credentials == Some(true),
        unmatched_preflights,
    })
}

/// The items joined by commas, as Istio gives them to Envoy; `None` when there are none (or
/// they do not make a header value, which is reported on its own).
fn joined(list: &[String]) -> Option<HeaderValue> {
    if list.is_empty() {
        return None;
    }
    HeaderValue::from_str(&list.join(",")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<CorsPolicy, Vec<(String, String)>> {
        cors_policy(&serde_yaml_ng::from_str(yaml).unwrap())
    }

    #[test]
    fn values_are_built_as_istio_gives_them_to_envoy() {
        let p = compile(
            "{ allow_origins: [{exact: \"https://a.example\"}, {regex: \".*\\\\.b\\\\.example\"}],
               allow_methods: [GET, POST], allow_headers: [x-a, X-B], expose_headers: [x-e],
               max_age: 24h, allow_credentials: true, unmatched_preflights: ignore }",
        )
        .unwrap();
        assert_eq!(p.allow_origins.len(), 2);
        assert!(p.allows(&HeaderValue::from_static("https://x.b.example")));
        assert!(!p.allows(&HeaderValue::from_static("https://x.b.example.evil")));
        assert_eq!(p.allow_methods.unwrap(), "GET,POST");
        assert_eq!(p.allow_headers.unwrap(), "x-a,X-B");
        assert_eq!(p.expose_headers.unwrap(), "x-e");
        assert_eq!(p.max_age.unwrap(), "86400");
        assert!(p.allow_credentials);
        assert_eq!(p.unmatched_preflights, UnmatchedPreflights::Ignore);

        let p = compile("{ allow_origins: [{prefix: \"https://\"}] }").unwrap();
        assert_eq!(
            (p.allow_methods, p.max_age, p.allow_credentials),
            (None, None, false)
        );
        assert_eq!(p.unmatched_preflights, UnmatchedPreflights::Forward);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let errs = compile(
            "{ allow_origins: [{exact: a, prefix: b}, {regex: \"(\"}, {present: true}, {exact: \"\"}],
               allow_methods: [GET, get], allow_headers: [\"bad name\"], expose_headers: [\"x:y\"],
               max_age: 1.5s, unmatched_preflights: drop }",
        )
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "allow_origins[0]",
                "allow_origins[1].regex",
                "allow_origins[2].present",
                "allow_origins[3]",
                "allow_methods[1]",
                "allow_headers[0]",
                "expose_headers[0]",
                "max_age",
                "unmatched_preflights",
            ]
        );
        assert!(
            errs[1].1.starts_with("invalid regex \"(\""),
            "{}",
            errs[1].1
        );
        assert!(
            errs[4].1.starts_with("\"get\" is not a method"),
            "{}",
            errs[4].1
        );
        assert_eq!(errs[8].1, "must be forward or ignore, not \"drop\"");
        let errs = compile("{ max_age: soon }").unwrap_err();
        assert_eq!(errs[0].0, "max_age");
        assert!(errs[0].1.starts_with("invalid duration"), "{}", errs[0].1);
    }
}
