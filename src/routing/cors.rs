//! CORS (Istio's `corsPolicy`), served as Envoy's CORS filter serves it. Pure: what a request
//! head asks for, and the headers of the answer.
//!
//! - A request without `Origin`, or from an origin the policy does not allow, passes as it is
//!   and its answer gets nothing added.
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed
//!   origin is answered by the gateway: 200, the origin echoed, and the policy's methods,
//!   headers, max age and credentials. From an origin not allowed, it is forwarded (Istio's
//!   `unmatchedPreflights: FORWARD`), or answered 200 with no CORS header (`IGNORE`).
//! - Any other request from an allowed origin is forwarded, and its answer gets
//!   `access-control-allow-origin` (the origin), and `-allow-credentials` and
//!   `-expose-headers` when the policy sets them.
//!
//! An origin is allowed when one of the policy's matchers matches it, or matches `*` (Envoy's
//! rule: `{exact: "*"}` allows every origin, which is still echoed, never sent as `*`).

use super::matcher::StringMatch;
use http::header::{self, HeaderMap, HeaderValue};
use http::Method;

/// What happens to a preflight from an origin that is not allowed (Istio's
/// `unmatchedPreflights`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnmatchedPreflights {
    /// Sent on to the upstream like any request (Istio's default).
    #[default]
    Forward,
    /// Answered by the gateway, 200 with no CORS header, so the browser refuses the request.
    Ignore,
}

/// A rule's CORS policy, as served: every header value built when the config is compiled.
#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    /// Allowed origins; a request's `Origin` must match one (or one must match `*`).
    pub allow_origins: Box<[StringMatch]>,
    /// `access-control-allow-methods` of a preflight's answer, if any.
    pub allow_methods: Option<HeaderValue>,
    /// `access-control-allow-headers` of a preflight's answer, if any.
    pub allow_headers: Option<HeaderValue>,
    /// `access-control-expose-headers` of an actual request's answer, if any.
    pub expose_headers: Option<HeaderValue>,
    /// `access-control-max-age` (seconds) of a preflight's answer, if any.
    pub max_age: Option<HeaderValue>,
    /// Whether answers say `access-control-allow-credentials: true`.
    pub allow_credentials: bool,
    /// What a preflight from another origin gets.
    pub unmatched_preflights: UnmatchedPreflights,
}

/// What the policy makes of one request.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Not a CORS request, or one from an origin not allowed: forwarded, nothing added.
    Pass,
    /// A preflight the gateway answers itself: status 200 with these headers and no body.
    Preflight(HeaderMap),
    /// A request from an allowed origin (this `Origin` value): forwarded, and its answer gets
    /// the policy's headers ([`CorsPolicy::decorate`]).
    Allowed(HeaderValue),
}

const TRUE: HeaderValue = HeaderValue::from_static("true");

impl CorsPolicy {
    /// What to do with a request of `method` with `headers`.
    pub fn verdict(&self, method: &Method, headers: &HeaderMap) -> Verdict {
        let Some(origin) = headers.get(header::ORIGIN).filter(|o| !o.is_empty()) else {
            return Verdict::Pass;
        };
        let preflight = method == Method::OPTIONS
            && headers
                .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .is_some_and(|m| !m.is_empty());
        match (self.allows(origin), preflight) {
            (true, true) => Verdict::Preflight(self.preflight(origin)),
            (true, false) => Verdict::Allowed(origin.clone()),
            (false, true) if self.unmatched_preflights == UnmatchedPreflights::Ignore => {
                Verdict::Preflight(HeaderMap::new())
            }
            (false, _) => Verdict::Pass,
        }
    }

    /// Whether `origin` is allowed.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        self.allow_origins
            .iter()
            .any(|m| m.test("*") || m.test(origin))
    }

    /// The headers of the answer to a preflight from the allowed `origin`.
    fn preflight(&self, origin: &HeaderValue) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(5);
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.allow_credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        for (name, value) in [
            (header::ACCESS_CONTROL_ALLOW_METHODS, &self.allow_methods),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, &self.allow_headers),
            (header::ACCESS_CONTROL_MAX_AGE, &self.max_age),
        ] {
            if let Some(v) = value {
                h.insert(name, v.clone());
            }
        }
        h
    }

    /// Adds the policy's headers to the answer to a request from the allowed `origin`,
    /// replacing any the upstream set, as Envoy does.
    pub fn decorate(&self, origin: HeaderValue, h: &mut HeaderMap) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.allow_credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        if let Some(v) = &self.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn policy() -> CorsPolicy {
        CorsPolicy {
            allow_origins: Box::new([
                StringMatch::Exact("https://a.example".into()),
                StringMatch::Prefix("https://b.".into()),
                StringMatch::Regex(Regex::new(r"^(?:https://[a-z]+\.c\.example)$").unwrap()),
            ]),
            allow_methods: Some(HeaderValue::from_static("GET,POST")),
            allow_headers: Some(HeaderValue::from_static("x-a,x-b")),
            expose_headers: Some(HeaderValue::from_static("x-e")),
            max_age: Some(HeaderValue::from_static("86400")),
            allow_credentials: true,
            unmatched_preflights: UnmatchedPreflights::Forward,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    fn preflight(origin: &'static str) -> HeaderMap {
        headers(&[
            ("origin", origin),
            ("access-control-request-method", "POST"),
        ])
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_with_every_header() {
        let v = policy().verdict(&Method::OPTIONS, &preflight("https://a.example"));
        let Verdict::Preflight(h) = v else {
            panic!("{v:?}")
        };
        assert_eq!(h["access-control-allow-origin"], "https://a.example");
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
        assert_eq!(h["access-control-allow-headers"], "x-a,x-b");
        assert_eq!(h["access-control-max-age"], "86400");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h.len(), 5, "{h:?}");
    }

    #[test]
    fn what_the_policy_leaves_out_is_not_sent() {
        let p = CorsPolicy {
            allow_origins: Box::new([StringMatch::Exact("https://a.example".into())]),
            ..CorsPolicy::default()
        };
        let Verdict::Preflight(h) = p.verdict(&Method::OPTIONS, &preflight("https://a.example"))
        else {
            panic!("a preflight")
        };
        assert_eq!(h.len(), 1, "the origin only: {h:?}");
        let mut answer = HeaderMap::new();
        p.decorate(HeaderValue::from_static("https://a.example"), &mut answer);
        assert_eq!(answer.len(), 1, "the origin only: {answer:?}");
    }

    #[test]
    fn origins_match_exactly_by_prefix_or_by_regex_over_the_whole_value() {
        let p = policy();
        for (origin, allowed) in [
            ("https://a.example", true),
            ("https://a.example.evil", false),
            ("http://a.example", false),
            ("https://b.anything", true),
            ("https://x.c.example", true),
            ("https://x.c.example.evil", false),
            ("https://X.c.example", false),
            ("null", false),
        ] {
            assert_eq!(
                p.allows(&HeaderValue::from_static(origin)),
                allowed,
                "{origin}"
            );
        }
        // A matcher that matches `*` allows every origin (Envoy's rule).
        let any = CorsPolicy {
            allow_origins: Box::new([StringMatch::Exact("*".into())]),
            ..CorsPolicy::default()
        };
        assert!(any.allows(&HeaderValue::from_static("https://anyone.example")));
    }

    #[test]
    fn an_actual_request_from_an_allowed_origin_is_decorated_and_others_pass() {
        let p = policy();
        let req = headers(&[("origin", "https://a.example")]);
        let v = p.verdict(&Method::GET, &req);
        assert_eq!(
            v,
            Verdict::Allowed(HeaderValue::from_static("https://a.example"))
        );
        // OPTIONS without Access-Control-Request-Method is an actual request.
        assert!(matches!(
            p.verdict(&Method::OPTIONS, &req),
            Verdict::Allowed(_)
        ));
        let Verdict::Allowed(origin) = v else {
            unreachable!()
        };
        let mut answer = headers(&[("access-control-allow-origin", "*")]);
        p.decorate(origin, &mut answer);
        assert_eq!(answer["access-control-allow-origin"], "https://a.example");
        assert_eq!(answer["access-control-allow-credentials"], "true");
        assert_eq!(answer["access-control-expose-headers"], "x-e");
        assert_eq!(answer.len(), 3, "{answer:?}");

        for req in [
            headers(&[]),
            headers(&[("origin", "")]),
            headers(&[("origin", "https://evil.example")]),
        ] {
            assert_eq!(p.verdict(&Method::GET, &req), Verdict::Pass, "{req:?}");
        }
    }

    #[test]
    fn a_preflight_from_another_origin_is_forwarded_unless_ignored() {
        let mut p = policy();
        let evil = preflight("https://evil.example");
        assert_eq!(p.verdict(&Method::OPTIONS, &evil), Verdict::Pass);
        p.unmatched_preflights = UnmatchedPreflights::Ignore;
        assert_eq!(
            p.verdict(&Method::OPTIONS, &evil),
            Verdict::Preflight(HeaderMap::new())
        );
        // Only preflights: an actual request from that origin still passes.
        let req = headers(&[("origin", "https://evil.example")]);
        assert_eq!(p.verdict(&Method::GET, &req), Verdict::Pass);
    }
}
