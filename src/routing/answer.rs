//! Rules that answer without an upstream: Istio's `redirect` and `directResponse`. Everything
//! but the request-dependent parts of a `Location` is prepared when the config is compiled.

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, StatusCode};

/// What such a rule answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A redirect to a `Location` built from the request and the rule.
    Redirect(Redirect),
    /// A fixed status and body.
    Direct {
        /// Status sent.
        status: StatusCode,
        /// Body sent (`text/plain` when not empty).
        body: Bytes,
    },
}

/// Istio's `HTTPRedirect`: each part that is set replaces the request's.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: StatusCode,
    /// `http` or `https`.
    pub scheme: Option<Box<str>>,
    /// Host, without port.
    pub authority: Option<Box<str>>,
    /// Port.
    pub port: Option<u16>,
    /// Path; with its own `?query` it also replaces the request's query string.
    pub uri: Option<Box<str>>,
}

impl Redirect {
    /// The `Location` for a request that arrived over `scheme` (`http` / `https`) for `host`
    /// (its Host or `:authority`, with any port). A port is kept only while the scheme stays:
    /// a port the client used for `http` says nothing about `https`. A port that is the new
    /// scheme's default is left out.
    pub fn location(&self, parts: &Parts, scheme: &str, host: Option<&str>) -> Option<HeaderValue> {
        let (req_host, req_port) = split_host(host.unwrap_or(""));
        let new_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let host = self.authority.as_deref().unwrap_or(req_host);
        let port = match self.port {
            Some(p) => Some(p),
            None if new_scheme.eq_ignore_ascii_case(scheme) && self.authority.is_none() => req_port,
            None => None,
        };
        let default = if new_scheme.eq_ignore_ascii_case("https") {
            443
        } else {
            80
        };
        let (path, query) = match self.uri.as_deref() {
            Some(u) if u.contains('?') => (u, None),
            Some(u) => (u, parts.uri.query()),
            None => (parts.uri.path(), parts.uri.query()),
        };
        let mut loc = String::with_capacity(new_scheme.len() + host.len() + path.len() + 16);
        loc.push_str(new_scheme);
        loc.push_str("://");
        loc.push_str(host);
        if let Some(p) = port.filter(|&p| p != default) {
            loc.push(':');
            loc.push_str(&p.to_string());
        }
        if !path.starts_with('/') {
            loc.push('/');
        }
        loc.push_str(path);
        if let Some(q) = query {
            loc.push('?');
            loc.push_str(q);
        }
        HeaderValue::try_from(loc).ok()
    }
}

/// `host[:port]` (or `[v6][:port]`) into the host, brackets kept, and the port.
fn split_host(authority: &str) -> (&str, Option<u16>) {
    let port_at = if authority.starts_with('[') {
        authority.find("]:").map(|i| i + 1)
    } else {
        authority.rfind(':')
    };
    match port_at {
        Some(i) => match authority[i + 1..].parse() {
            Ok(p) => (&authority[..i], Some(p)),
            Err(_) => (authority, None),
        },
        None => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(uri: &str) -> Parts {
        Request::get(uri).body(()).unwrap().into_parts().0
    }

    fn redirect() -> Redirect {
        Redirect {
            status: StatusCode::MOVED_PERMANENTLY,
            scheme: None,
            authority: None,
            port: None,
            uri: None,
        }
    }

    #[test]
    fn only_the_parts_set_change() {
        let r = Redirect {
            uri: Some("/new".into()),
            ..redirect()
        };
        let loc = r.location(&parts("/old?a=1"), "http", Some("shop.example:8080"));
        assert_eq!(loc.unwrap(), "http://shop.example:8080/new?a=1");
        let loc = redirect().location(&parts("/p"), "https", Some("[::1]:8443"));
        assert_eq!(loc.unwrap(), "https://[::1]:8443/p");
    }

    #[test]
    fn a_new_scheme_drops_the_old_port_and_a_default_port_is_left_out() {
        let r = Redirect {
            scheme: Some("https".into()),
            ..redirect()
        };
        let loc = r.location(&parts("/a"), "http", Some("shop.example:8080"));
        assert_eq!(loc.unwrap(), "https://shop.example/a");
        let r = Redirect {
            scheme: Some("https".into()),
            port: Some(443),
            ..redirect()
        };
        assert_eq!(
            r.location(&parts("/a"), "http", Some("x")).unwrap(),
            "https://x/a"
        );
        let r = Redirect {
            authority: Some("other.example".into()),
            port: Some(9000),
            uri: Some("/b?z=2".into()),
            ..redirect()
        };
        assert_eq!(
            r.location(&parts("/a?q=1"), "http", Some("x:81")).unwrap(),
            "http://other.example:9000/b?z=2"
        );
    }
}
