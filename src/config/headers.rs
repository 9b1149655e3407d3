//! Checks and compiles `headers` (on rules and route destinations) into what the data plane
//! applies (`routing::header_ops`).

use super::model::{RawHeaderOps, RawHeaders};
use crate::routing::header_ops::{HeaderOps, Headers};
use http::{HeaderName, HeaderValue};
use std::collections::BTreeMap;

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

/// A `tchar` of RFC 9110 §5.6.2: what header names, protocol names and cookie names are made of.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One direction's changes; the message names the field at fault (`set.x-a: …`).
fn ops(raw: &RawHeaderOps) -> Result<HeaderOps, String> {
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
    let pairs = |field: &str, m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(n, v)| {
                let value = HeaderValue::from_str(v)
                    .map_err(|_| format!("{field}.{n}: {v:?} is not a header value"))?;
                Ok((name(field, n)?, value))
            })
            .collect::<Result<Vec<_>, String>>()
    };
    let remove = raw
        .remove
        .iter()
        .map(|n| name("remove", n))
        .collect::<Result<_, _>>()?;
    Ok(HeaderOps::new(
        remove,
        pairs("set", &raw.set)?,
        pairs("add", &raw.add)?,
    ))
}

/// Compiles `raw`; `None` when it changes nothing. The message names the field at fault
/// (`response.add.x-a: …`).
pub fn headers(raw: &RawHeaders) -> Result<Option<Headers>, String> {
    let side = |which: &str, o: &Option<RawHeaderOps>| {
        o.as_ref()
            .map(ops)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<HeaderOps, String> {
        ops(&serde_yaml_ng::from_str(yaml).unwrap())
    }

    #[test]
    fn framing_fields_and_bad_names_are_refused() {
        assert_eq!(
            compile("{ set: { Transfer-Encoding: gzip } }").unwrap_err(),
            "set: Transfer-Encoding describes the connection or the body's framing and cannot be changed"
        );
        assert_eq!(
            compile("{ add: { \"bad name\": x } }").unwrap_err(),
            "add: \"bad name\" is not a header name"
        );
        assert_eq!(
            compile("{ add: { x-a: \"a\\nb\" } }").unwrap_err(),
            "add.x-a: \"a\\nb\" is not a header value"
        );
    }

    #[test]
    fn nothing_to_change_compiles_to_none() {
        let raw: RawHeaders = serde_yaml_ng::from_str("{ request: {}, response: {} }").unwrap();
        assert_eq!(headers(&raw), Ok(None));
        let raw: RawHeaders = serde_yaml_ng::from_str("{ response: { remove: [x-a] } }").unwrap();
        assert!(headers(&raw).unwrap().is_some());
    }
}
