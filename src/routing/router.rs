//! Host → route → first matching rule. Pure: `find` reads the request head and nothing else.

use super::matcher::MatchBlock;
use crate::split::{Split, Target};
use http::request::Parts;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A route: its name and ordered rules.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route's name in the config.
    pub name: Box<str>,
    /// Position in the config (set by `Router::new`).
    pub index: usize,
    /// First match wins. Shared, so that a weight change rebuilds only the rules it touches.
    pub rules: Vec<Arc<Rule>>,
    /// Protocol upgrades passed through, lowercased (`websocket`).
    pub upgrades: Box<[Box<str>]>,
}

impl Route {
    /// Whether the route passes an upgrade to `protocol` (an `Upgrade` value, case-insensitive).
    pub fn allows_upgrade(&self, protocol: &[u8]) -> bool {
        // A value may list protocols; all of them must be allowed, since the upstream picks.
        let mut any = false;
        for p in protocol.split(|&b| b == b',') {
            let p = p.trim_ascii();
            let p = p.split(|&b| b == b'/').next().unwrap_or(p);
            if p.is_empty() {
                continue;
            }
            if !self
                .upgrades
                .iter()
                .any(|u| u.as_bytes().eq_ignore_ascii_case(p))
            {
                return false;
            }
            any = true;
        }
        any
    }
}

/// One rule: conditions, where matching requests go, and how long to wait.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name, unique within its route.
    pub name: Box<str>,
    /// OR'ed blocks; empty matches everything.
    pub matches: Vec<MatchBlock>,
    /// Weighted destinations (none when `answer` is set).
    pub split: Split,
    /// Upper bound on the wait for the upstream's response headers.
    pub timeout: Option<Duration>,
    /// Where copies of matching requests go: each mirror samples requests on its own.
    pub mirrors: Box<[Mirror]>,
    /// When a request is tried again, on another endpoint.
    pub retry: super::retry::Retry,
    /// The rule's header changes, if any.
    pub headers: Option<Box<super::header_ops::Headers>>,
    /// Each destination's header changes, in the split's order; empty when none has any.
    pub destination_headers: Box<[Option<Box<super::header_ops::Headers>>]>,
    /// Keeps each client on its destination while the weights move, if set.
    pub sticky: Option<Box<super::sticky::Sticky>>,
    /// Path and Host changes for the upstream, if any.
    pub rewrite: Option<Box<super::rewrite::Rewrite>>,
    /// Answers the request itself (redirect, direct response) instead of routing; the split
    /// is then empty.
    pub answer: Option<Box<super::answer::Answer>>,
    /// Delays and errors injected, if any.
    pub fault: Option<Box<super::fault::Fault>>,
    /// The CORS policy, if any.
    pub cors: Option<Box<super::cors::CorsPolicy>>,
}

/// A traffic mirror: a share of requests is copied to another subset, fire and forget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mirror {
    /// The subset that receives the copies.
    pub target: Target,
    /// Copies per million requests (100% = 1,000,000).
    pub per_million: u32,
}

impl Mirror {
    /// Whether this request is one of the copied share.
    pub fn sampled<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> bool {
        self.per_million >= 1_000_000
            || (self.per_million > 0 && rng.random_range(0..1_000_000) < self.per_million)
    }
}

impl Rule {
    /// Whether this rule takes the request: `Some` with the first block that matched, or
    /// `Some(None)` for a rule without blocks; `None` when it does not.
    pub fn matched(&self, req: &Parts, authority: Option<&str>) -> Option<Option<&MatchBlock>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches
            .iter()
            .find(|b| b.matches(req, authority))
            .map(Some)
    }
}

/// Where a request was routed.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    /// The route whose hosts matched.
    pub route: &'a Route,
    /// The first rule of it that matched.
    pub rule: &'a Rule,
    /// The rule's first block that matched (none when it has no blocks).
    pub block: Option<&'a MatchBlock>,
}

/// Hosts are tried most specific first: exact, then the longest `*.suffix`, then `*`.
#[derive(Debug, Default, Clone)]
pub struct Router {
    routes: Vec<Arc<Route>>,
    exact: HashMap<Box<str>, usize>,
    /// `(".example.com", route)`, longest suffix first.
    suffixes: Vec<(Box<str>, usize)>,
    catch_all: Option<usize>,
}

/// Longest host (without port) that is looked up; longer ones only match `*`.
const MAX_HOST: usize = 255;

impl Router {
    /// Builds the host index. Hosts must be lowercase and unique across routes (validation checks).
    pub fn new(routes: Vec<(Route, Vec<String>)>) -> Self {
        let mut router = Router::default();
        for (idx, (mut route, hosts)) in routes.into_iter().enumerate() {
            route.index = idx;
            for host in hosts {
                if host == "*" {
                    router.catch_all = Some(idx);
                } else if let Some(suffix) = host.strip_prefix('*') {
                    router.suffixes.push((suffix.into(), idx));
                } else {
                    router.exact.insert(host.into(), idx);
                }
            }
            router.routes.push(Arc::new(route));
        }
        router
            .suffixes
            .sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        router
    }

    /// All routes, in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// This router with `routes` in place of those at their indexes, which must serve the
    /// same hosts as the routes they replace: the host index is kept as it is.
    pub fn with_routes(&self, routes: impl IntoIterator<Item = Route>) -> Router {
        let mut next = self.clone();
        for r in routes {
            let index = r.index;
            next.routes[index] = Arc::new(r);
        }
        next
    }

    /// The route serving `host` (any case, port allowed).
    pub fn route_for_host(&self, host: Option<&str>) -> Option<&Route> {
        let idx = host.and_then(|h| self.host_index(h)).or(self.catch_all)?;
        Some(&self.routes[idx])
    }

    fn host_index(&self, host: &str) -> Option<usize> {
        if self.exact.is_empty() && self.suffixes.is_empty() {
            // Only catch-all routes: no host to read.
            return None;
        }
        let host = strip_port(host);
        if host.len() > MAX_HOST {
            return None;
        }
        // Lowercase on the stack: host lookups must not allocate.
        let mut buf = [0u8; MAX_HOST];
        let lower = &mut buf[..host.len()];
        lower.copy_from_slice(host.as_bytes());
        lower.make_ascii_lowercase();
        let lower = std::str::from_utf8(lower).ok()?;
        if let Some(&idx) = self.exact.get(lower) {
            return Some(idx);
        }
        self.suffixes
            .iter()
            .find(|(suffix, _)| lower.len() > suffix.len() && lower.ends_with(&**suffix))
            .map(|&(_, idx)| idx)
    }

    /// The route and rule for a request head. `None` is Envoy's `NR`.
    pub fn find<'a>(&'a self, req: &Parts) -> Option<RouteMatch<'a>> {
        let authority = request_authority(req);
        let route = self.route_for_host(authority)?;
        let (rule, block) = route
            .rules
            .iter()
            .find_map(|r| Some((&**r, r.matched(req, authority)?)))?;
        Some(RouteMatch { route, rule, block })
    }
}

/// Host header (HTTP/1) or the URI's authority (HTTP/2 `:authority`).
pub fn request_authority(req: &Parts) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// The host without its port (`[v6]` loses its brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    // A byte search: `rsplit_once` with a char pattern cost several times more per request.
    let bytes = host.as_bytes();
    match bytes.iter().rposition(|&b| b == b':') {
        Some(colon) if bytes[colon + 1..].iter().all(u8::is_ascii_digit) => &host[..colon],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str) -> Route {
        let split = Split::new(vec![(
            Target {
                service: 0,
                subset: 0,
            },
            1,
        )]);
        Route {
            name: name.into(),
            index: 0,
            rules: vec![Arc::new(Rule {
                name: "r".into(),
                matches: vec![],
                split,
                timeout: None,
                mirrors: Box::new([]),
                retry: Default::default(),
                headers: None,
                destination_headers: Box::new([]),
                sticky: None,
                rewrite: None,
                answer: None,
                fault: None,
                cors: None,
            })],
            upgrades: Box::new(["websocket".into()]),
        }
    }

    #[test]
    fn a_port_is_stripped_only_when_it_is_digits() {
        for (host, bare) in [
            ("a.example:8080", "a.example"),
            ("a.example", "a.example"),
            ("10.0.0.7:80", "10.0.0.7"),
            ("[::1]:8080", "::1"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("a:b", "a:b"),
            ("a:8:0", "a:8"),
            ("a:", "a"),
            ("", ""),
        ] {
            assert_eq!(strip_port(host), bare, "{host:?}");
        }
    }

    #[test]
    fn most_specific_host_wins() {
        let router = Router::new(vec![
            (route("any"), vec!["*".into()]),
            (route("wild"), vec!["*.example.com".into()]),
            (route("deep"), vec!["*.api.example.com".into()]),
            (route("exact"), vec!["www.example.com".into()]),
        ]);
        let name = |h: &str| router.route_for_host(Some(h)).map(|r| &*r.name);
        assert_eq!(name("www.example.com"), Some("exact"));
        assert_eq!(name("WWW.Example.com:8080"), Some("exact"));
        assert_eq!(name("a.example.com"), Some("wild"));
        assert_eq!(name("v1.api.example.com"), Some("deep"));
        assert_eq!(name("example.com"), Some("any"));
        assert_eq!(name("[::1]:80"), Some("any"));
        assert_eq!(router.route_for_host(None).map(|r| &*r.name), Some("any"));
    }

    #[test]
    fn no_catch_all_means_no_route() {
        let router = Router::new(vec![(route("exact"), vec!["a.test".into()])]);
        assert!(router.route_for_host(Some("b.test")).is_none());
        assert!(router.route_for_host(None).is_none());
    }
}
