//! Match conditions (Istio's HTTPMatchRequest): pure functions of the request head.
//!
//! A rule matches when any of its blocks matches; a block matches when all of its conditions hold.
//! Nothing here allocates unless a query parameter or cookie value is percent-encoded.

use http::request::Parts;
use regex::Regex;
use std::borrow::Cow;

/// How one string value is tested.
#[derive(Debug, Clone)]
pub enum StringMatch {
    /// Equal to.
    Exact(Box<str>),
    /// Starts with.
    Prefix(Box<str>),
    /// Ends with.
    Suffix(Box<str>),
    /// The whole value matches (the pattern is anchored when compiled).
    Regex(Regex),
    /// The value exists (any content, even empty).
    Present,
}

impl StringMatch {
    /// Tests a value that is there.
    pub fn test(&self, value: &str) -> bool {
        match self {
            Self::Exact(e) => value == &**e,
            Self::Prefix(p) => value.starts_with(&**p),
            Self::Suffix(s) => value.ends_with(&**s),
            Self::Regex(r) => r.is_match(value),
            Self::Present => true,
        }
    }

    /// Tests an optional value: an absent value never matches.
    fn test_opt(&self, value: Option<&str>) -> bool {
        value.is_some_and(|v| self.test(v))
    }
}

/// One header condition; the name is lowercase.
#[derive(Debug, Clone)]
pub struct NamedMatch {
    /// Header, query parameter or cookie name.
    pub name: Box<str>,
    /// A header's name, made once when the config is compiled (a name given as text is parsed
    /// and hashed anew on each lookup).
    pub header: Option<http::HeaderName>,
    /// The test for its value.
    pub test: StringMatch,
}

/// Conditions AND'ed together.
#[derive(Debug, Clone, Default)]
pub struct MatchBlock {
    /// Tested against the path without its query string.
    pub uri: Option<StringMatch>,
    /// Tested against the method.
    pub method: Option<StringMatch>,
    /// Tested against Host (HTTP/1) or :authority (HTTP/2), as sent.
    pub authority: Option<StringMatch>,
    /// Each must hold for some value of the header.
    pub headers: Vec<NamedMatch>,
    /// Each must hold for no value of the header (an absent header satisfies it).
    pub without_headers: Vec<NamedMatch>,
    /// Each must hold for some occurrence of the (percent-decoded) parameter.
    pub query_params: Vec<NamedMatch>,
    /// Each must hold for some cookie of that name.
    pub cookies: Vec<NamedMatch>,
}

impl MatchBlock {
    /// Whether every condition holds for this request head.
    pub fn matches(&self, req: &Parts, authority: Option<&str>) -> bool {
        if let Some(m) = &self.uri {
            if !m.test(req.uri.path()) {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if !m.test(req.method.as_str()) {
                return false;
            }
        }
        if let Some(m) = &self.authority {
            if !m.test_opt(authority) {
                return false;
            }
        }
        self.headers.iter().all(|h| header_matches(req, h))
            && self.without_headers.iter().all(|h| !header_matches(req, h))
            && self
                .query_params
                .iter()
                .all(|q| query_matches(req.uri.query(), q))
            && self.cookies.iter().all(|c| cookie_matches(req, c))
    }
}

fn header_matches(req: &Parts, m: &NamedMatch) -> bool {
    let values = match &m.header {
        Some(name) => req.headers.get_all(name),
        None => req.headers.get_all(&*m.name),
    };
    values
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| m.test.test(s)))
}

fn query_matches(query: Option<&str>, m: &NamedMatch) -> bool {
    let Some(query) = query else { return false };
    query.split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        !k.is_empty() && percent_decode(k) == *m.name && m.test.test(&percent_decode(v))
    })
}

fn cookie_matches(req: &Parts, m: &NamedMatch) -> bool {
    req.headers.get_all(http::header::COOKIE).iter().any(|h| {
        h.to_str().is_ok_and(|s| {
            s.split(';').any(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                k.trim() == &*m.name && m.test.test(v.trim().trim_matches('"'))
            })
        })
    })
}

/// Decodes `%XX` and `+` (form encoding); borrows when there is nothing to decode.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn named(name: &str, test: StringMatch) -> NamedMatch {
        NamedMatch {
            name: name.into(),
            header: http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok(),
            test,
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%41"), "A");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn query_and_cookie_conditions() {
        let block = MatchBlock {
            query_params: vec![named("user", StringMatch::Exact("jane doe".into()))],
            cookies: vec![named("canary", StringMatch::Exact("yes".into()))],
            ..Default::default()
        };
        let hit = parts("/p?x=1&user=jane%20doe", &[("cookie", "a=b; canary=yes")]);
        assert!(block.matches(&hit, None));
        let wrong_cookie = parts("/p?user=jane+doe", &[("cookie", "canary=no")]);
        assert!(!block.matches(&wrong_cookie, None));
        let no_query = parts("/p", &[("cookie", "canary=yes")]);
        assert!(!block.matches(&no_query, None));
    }

    #[test]
    fn without_headers_holds_when_absent() {
        let block = MatchBlock {
            without_headers: vec![named("x-beta", StringMatch::Present)],
            ..Default::default()
        };
        assert!(block.matches(&parts("/", &[]), None));
        assert!(!block.matches(&parts("/", &[("x-beta", "")]), None));
    }
}
