//! Header changes a rule or a destination makes (Istio's `headers`): compiled once with the
//! config, so a request pays only for the map operations themselves.

use crate::config::model::{RawHeaderOps, RawHeaders};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Fields a rule may not touch: they describe the connection or the body's framing, which the
/// gateway owns on each hop.
const OWNED: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// One direction's changes, applied in Envoy's order: remove, then set, then add.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderOps {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
}

impl HeaderOps {
    /// Compiles `raw`; the message names the field at fault (`set.x-a`).
    pub fn compile(raw: &RawHeaderOps) -> Result<Self, String> {
        let name = |field: &str, n: &str| {
            let parsed = HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("{field}: {n:?} is not a header name"))?;
            if OWNED.contains(&parsed.as_str()) {
                return Err(format!(
                    "{field}: {n} describes the connection or the body's framing and cannot be changed"
                ));
            }
            Ok(parsed)
        };
        let pairs = |field: &str, m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .map(|(n, v)| {
                    let value = HeaderValue::from_str(v)
                        .map_err(|_| format!("{field}.{n}: {v:?} is not a header value"))?;
                    Ok((name(field, n)?, value))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        Ok(HeaderOps {
            remove: raw
                .remove
                .iter()
                .map(|n| name("remove", n))
                .collect::<Result<_, _>>()?,
            set: pairs("set", &raw.set)?.into(),
            add: pairs("add", &raw.add)?.into(),
        })
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the changes to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

/// The changes to a request and to its response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Headers {
    /// On the way to the upstream.
    pub request: HeaderOps,
    /// On the way back to the client.
    pub response: HeaderOps,
}

impl Headers {
    /// Compiles `raw`; `None` when it changes nothing. The message names the field at fault
    /// (`response.add.x-a`).
    pub fn compile(raw: &RawHeaders) -> Result<Option<Self>, String> {
        let side = |which: &str, ops: &Option<RawHeaderOps>| {
            ops.as_ref()
                .map(HeaderOps::compile)
                .transpose()
                .map(Option::unwrap_or_default)
                .map_err(|e| format!("{which}.{e}"))
        };
        let h = Headers {
            request: side("request", &raw.request)?,
            response: side("response", &raw.response)?,
        };
        Ok((!h.request.is_empty() || !h.response.is_empty()).then_some(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(yaml: &str) -> Result<HeaderOps, String> {
        HeaderOps::compile(&serde_yaml_ng::from_str(yaml).unwrap())
    }

    #[test]
    fn remove_then_set_then_add() {
        let o = ops("{ remove: [x-gone, x-b], set: { x-a: one, x-b: two }, add: { x-b: three } }")
            .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-gone", HeaderValue::from_static("1"));
        h.insert("x-a", HeaderValue::from_static("old"));
        h.insert("x-b", HeaderValue::from_static("old"));
        o.apply(&mut h);
        assert!(h.get("x-gone").is_none());
        assert_eq!(h["x-a"], "one");
        let b: Vec<_> = h.get_all("x-b").iter().collect();
        assert_eq!(b, ["two", "three"]);
    }

    #[test]
    fn framing_fields_and_bad_names_are_refused() {
        assert_eq!(
            ops("{ set: { Transfer-Encoding: gzip } }").unwrap_err(),
            "set: Transfer-Encoding describes the connection or the body's framing and cannot be changed"
        );
        assert_eq!(
            ops("{ add: { \"bad name\": x } }").unwrap_err(),
            "add: \"bad name\" is not a header name"
        );
        assert_eq!(
            ops("{ add: { x-a: \"a\\nb\" } }").unwrap_err(),
            "add.x-a: \"a\\nb\" is not a header value"
        );
    }
}
