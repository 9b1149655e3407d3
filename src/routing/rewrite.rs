//! Istio's `rewrite`: what the upstream sees as path and Host, set when the config is compiled.
//!
//! A `uri` rewrite replaces the prefix the rule matched when the matching block tested the path
//! by prefix, and the whole path otherwise (an exact or regex path condition). A rule with no
//! path condition matches as Istio's catch-all `/` prefix does, so its leading `/` is what is
//! replaced. The query string always stays.

use super::matcher::{MatchBlock, StringMatch};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderValue, Uri};
use regex::Regex;

/// A rule's path and Host changes.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// The path change, if any.
    pub uri: Option<UriRewrite>,
    /// The new Host, if any.
    pub authority: Option<HeaderValue>,
}

/// How the path changes.
#[derive(Debug, Clone)]
pub enum UriRewrite {
    /// The matched prefix (or the whole path) becomes this.
    Prefix(Box<str>),
    /// Every match of the regex becomes the replacement (in `regex` syntax: `${1}`).
    Regex(Regex, Box<str>),
}

/// Turns Istio's replacement syntax (`\1` for a capture group, as RE2 and Envoy write it) into
/// the `regex` crate's (`${1}`); a literal `$` is escaped.
pub fn replacement(istio: &str) -> String {
    let mut out = String::with_capacity(istio.len() + 4);
    let mut chars = istio.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str("${");
                    while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                        out.push(*d);
                        chars.next();
                    }
                    out.push('}');
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

impl Rewrite {
    /// The path the upstream gets for a request whose rule matched by block `matched` (none:
    /// a rule without conditions), or `None` when the path stays.
    pub fn path(&self, matched: Option<&MatchBlock>, parts: &Parts) -> Option<Uri> {
        let uri = self.uri.as_ref()?;
        let path = parts.uri.path();
        let new_path = match uri {
            UriRewrite::Prefix(to) => {
                let matched = match matched.and_then(|b| b.uri.as_ref()) {
                    Some(StringMatch::Prefix(p)) => p.len(),
                    Some(_) => path.len(),
                    None => usize::from(path.starts_with('/')),
                };
                let mut p = String::with_capacity(to.len() + path.len() - matched);
                p.push_str(to);
                p.push_str(&path[matched..]);
                p
            }
            UriRewrite::Regex(re, with) => re.replace_all(path, &**with).into_owned(),
        };
        let mut pq = new_path;
        if pq.is_empty() || !pq.starts_with('/') {
            pq.insert(0, '/');
        }
        if let Some(q) = parts.uri.query() {
            pq.push('?');
            pq.push_str(q);
        }
        let pq = PathAndQuery::try_from(pq).ok()?;
        let mut p = parts.uri.clone().into_parts();
        p.path_and_query = Some(pq);
        Uri::from_parts(p).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(uri: &str) -> Parts {
        Request::get(uri).body(()).unwrap().into_parts().0
    }

    fn block(uri: Option<StringMatch>) -> MatchBlock {
        MatchBlock {
            uri,
            ..MatchBlock::default()
        }
    }

    fn prefix(to: &str) -> Rewrite {
        Rewrite {
            uri: Some(UriRewrite::Prefix(to.into())),
            authority: None,
        }
    }

    #[test]
    fn a_prefix_match_loses_only_its_prefix_and_keeps_the_query() {
        let b = block(Some(StringMatch::Prefix("/api/".into())));
        let uri = prefix("/v2/").path(Some(&b), &parts("/api/users?id=7"));
        assert_eq!(uri.unwrap(), "/v2/users?id=7");
    }

    #[test]
    fn the_block_that_matched_decides_what_is_replaced() {
        let blocks = [
            block(Some(StringMatch::Prefix("/old/".into()))),
            block(Some(StringMatch::Exact("/exact".into()))),
        ];
        let rw = prefix("/new");
        assert_eq!(
            rw.path(Some(&blocks[0]), &parts("/old/a")).unwrap(),
            "/newa"
        );
        assert_eq!(rw.path(Some(&blocks[1]), &parts("/exact")).unwrap(), "/new");
    }

    #[test]
    fn no_path_condition_replaces_the_leading_slash_as_istio_does() {
        let uri = prefix("/v2/").path(None, &parts("/users"));
        assert_eq!(uri.unwrap(), "/v2/users");
    }

    #[test]
    fn a_regex_rewrite_substitutes_every_match_with_istio_group_syntax() {
        let rw = Rewrite {
            uri: Some(UriRewrite::Regex(
                Regex::new("^/a/([^/]+)/(.*)").unwrap(),
                replacement(r"/b/\2/\1").into(),
            )),
            authority: None,
        };
        assert_eq!(
            rw.path(None, &parts("/a/x/y/z?q=1")).unwrap(),
            "/b/y/z/x?q=1"
        );
        assert_eq!(replacement(r"$5 \\ \12"), r"$$5 \ ${12}");
    }

    #[test]
    fn no_uri_change_leaves_the_path_alone() {
        let rw = Rewrite {
            uri: None,
            authority: Some(HeaderValue::from_static("x")),
        };
        assert!(rw.path(None, &parts("/a")).is_none());
    }
}
