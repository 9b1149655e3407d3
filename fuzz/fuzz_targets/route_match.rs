//! Arbitrary request heads against a fixed config whose routes use every host form and every
//! match kind: the router must never panic, and the rule it picks must match the request.
#![no_main]

use http::request::Parts;
use libfuzzer_sys::fuzz_target;
use splitgate::routing::request_authority;
use splitgate::runtime::Runtime;
use std::sync::OnceLock;

const CONFIG: &str = r#"
listeners: [{ name: http, address: "127.0.0.1:0" }]
services:
  reviews:
    namespace: bookinfo
    host: reviews.bookinfo.svc.cluster.local
    subsets:
      stable: { labels: { version: v1 }, endpoints: ["127.0.0.1:9001"] }
      canary: { labels: { version: v2 }, endpoints: ["127.0.0.1:9002"] }
routes:
  - name: exact
    hosts: ["reviews.example.com", "xn--bcher-kva.example"]
    http:
      - name: uri-kinds
        match:
          - uri: { exact: /login }
          - uri: { prefix: /api/v2/ }
          - path: { suffix: .json }
          - uri: { regex: "/users/[0-9]{1,6}(/[a-z]+)?" }
        route: [{ destination: { service: reviews, subset: canary } }]
      - name: method-and-authority
        match:
          - method: { exact: POST }
            authority: { prefix: "reviews.example.com:" }
          - method: { regex: "P(UT|ATCH)" }
        route: [{ destination: { service: reviews, subset: canary } }]
      - name: primary
        route:
          - { destination: { service: reviews, subset: stable }, weight: 90 }
          - { destination: { service: reviews, subset: canary }, weight: 10 }
  - name: suffix
    hosts: ["*.example.com", "*.shop.example.com"]
    http:
      - name: headers
        match:
          - headers: { x-canary: { exact: always }, x-debug: { present: true } }
          - headers: { user-agent: { regex: ".*(Mobile|Android).*" }, accept: { suffix: json } }
          - without_headers: { x-legacy: { present: true } }
            headers: { x-beta: { prefix: "on" } }
        route: [{ destination: { service: reviews, subset: canary } }]
      - name: query-and-cookies
        match:
          - query_params: { user: { exact: jane doe }, id: { regex: "[0-9]{3}" } }
          - cookies: { canary: { exact: "yes" }, session: { present: true } }
          - cookies: { tier: { suffix: gold } }
            query_params: { debug: { present: true } }
        route: [{ destination: { service: reviews, subset: canary } }]
      - name: rest
        route: [{ destination: { service: reviews, subset: stable } }]
  - name: catch-all
    hosts: ["*"]
    http:
      - name: only-get
        match: [{ method: { exact: GET } }]
        route: [{ destination: { service: reviews, subset: stable } }]
"#;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let config = splitgate::config::from_str(CONFIG, "route_match")
            .unwrap_or_else(|e| panic!("the fuzz config must be valid: {e}"));
        splitgate::config::compile(&config, None, 1)
    })
}

/// Routes `parts` and checks the answer against the rules themselves.
fn check(parts: &Parts) {
    let router = &runtime().router;
    let authority = request_authority(parts);
    let route = router.route_for_host(authority);
    match router.find(parts) {
        Some(m) => {
            assert!(
                m.rule.matched(parts, authority).is_some_and(|b| b.is_some()
                    == !m.rule.matches.is_empty()
                    && b.is_none_or(|b| b.matches(parts, authority))),
                "the picked rule (or its block) does not match"
            );
            assert_eq!(
                route.map(|r| r.index),
                Some(m.route.index),
                "find and the host index disagree"
            );
        }
        None => {
            if let Some(r) = route {
                assert!(
                    !r.rules.iter().any(|rule| rule.matched(parts, authority).is_some()),
                    "a matching rule was skipped"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(mut parts) = splitgate::fuzzing::request_parts(data) else {
        return;
    };
    // The router must hold up on any head; the handler gives it one that passed its checks.
    check(&parts);
    if splitgate::proxy::headers::check_request(&mut parts).is_ok() {
        check(&parts);
    }
});
