//! Checks a service's `policy.consistent_hash` and turns it into what the balancer builds its
//! table from (`upstream::hash`). Kubernetes DestinationRules are checked here too, so the
//! problems come out in either spelling: the file's snake_case or Istio's camelCase.

use super::duration::parse_duration;
use super::headers::is_token_byte;
use super::model::RawConsistentHash;
use crate::upstream::hash::{
    Algorithm, HashKey, HashPolicy, DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_RING_POINTS,
    MAX_MAGLEV_TABLE_SIZE, MAX_RING_POINTS,
};
use http::HeaderName;
use std::borrow::Cow;

/// How field names are written in the problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// The config file's: `http_cookie.ttl`.
    Snake,
    /// Istio's: `httpCookie.ttl`.
    Camel,
}

impl Spelling {
    /// `field` (a snake_case path) as this spelling writes it.
    pub fn spell(self, field: &'static str) -> Cow<'static, str> {
        if self == Spelling::Snake || !field.contains('_') {
            return Cow::Borrowed(field);
        }
        Cow::Owned(camel_case(field))
    }
}

/// A config field path in the Istio API's spelling: `allow_origins[0]` → `allowOrigins[0]`.
pub fn camel_case(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    for c in path.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// A problem: the field's path below `consistent_hash` (empty: the block itself) and what is
/// wrong with it.
pub type Problem = (String, String);

/// `raw` checked: its key and table, or every problem with it, located in `spelling`.
pub fn consistent_hash(
    raw: &RawConsistentHash,
    spelling: Spelling,
) -> Result<HashPolicy, Vec<Problem>> {
    let mut problems: Vec<Problem> = Vec::new();
    let mut fail = |field: &'static str, message: String| {
        problems.push((spelling.spell(field).into_owned(), message))
    };
    let mut keys: Vec<(&'static str, Option<HashKey>)> = Vec::new();
    if let Some(name) = &raw.http_header_name {
        let key = match HeaderName::try_from(name.as_str()) {
            Ok(name) => Some(HashKey::Header(name)),
            Err(_) => {
                fail(
                    "http_header_name",
                    format!("{name:?} is not a valid header name"),
                );
                None
            }
        };
        keys.push(("http_header_name", key));
    }
    if let Some(c) = &raw.http_cookie {
        let name_ok = !c.name.is_empty() && c.name.bytes().all(is_token_byte);
        if !name_ok {
            fail(
                "http_cookie.name",
                format!(
                    "{:?} is not a valid cookie name: use letters, digits and ! # $ % & ' * + - . ^ _ ` | ~",
                    c.name
                ),
            );
        }
        let path_ok = c.path.as_deref().is_none_or(|p| {
            p.starts_with('/') && p.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b';')
        });
        if !path_ok {
            fail(
                "http_cookie.path",
                format!(
                    "{:?} is not a cookie path: it starts with / and holds no ; or control character",
                    c.path.as_deref().unwrap_or_default()
                ),
            );
        }
        let ttl = match c.ttl.as_deref().map(parse_duration) {
            None => Ok(None),
            Some(Ok(d)) if d.subsec_nanos() == 0 => Ok(Some(d.as_secs())),
            Some(Ok(_)) => Err(format!(
                "{:?} is not a whole number of seconds, which Max-Age counts",
                c.ttl.as_deref().unwrap_or_default()
            )),
            Some(Err(m)) => Err(m),
        };
        let ttl = ttl.map_err(|m| fail("http_cookie.ttl", m)).ok();
        let key = (name_ok && path_ok)
            .then_some(())
            .zip(ttl)
            .map(|((), ttl)| {
                // A ttl, even 0s (a session cookie), means the gateway gives out the cookie.
                let set = ttl.map(|secs| {
                    let mut attributes = String::new();
                    if let Some(path) = &c.path {
                        attributes.push_str(&format!("; Path={path}"));
                    }
                    if secs > 0 {
                        attributes.push_str(&format!("; Max-Age={secs}"));
                    }
                    attributes.push_str("; HttpOnly");
                    attributes.into_boxed_str()
                });
                HashKey::Cookie {
                    name: c.name.as_str().into(),
                    set,
                }
            });
        keys.push(("http_cookie", key));
    }
    if raw.use_source_ip == Some(true) {
        keys.push(("use_source_ip", Some(HashKey::SourceIp)));
    }
    if let Some(name) = &raw.http_query_parameter_name {
        let key = if name.is_empty() || name.contains(['&', '=', '#']) {
            fail(
                "http_query_parameter_name",
                format!("{name:?} is not a valid query parameter name"),
            );
            None
        } else {
            Some(HashKey::Query(name.as_str().into()))
        };
        keys.push(("http_query_parameter_name", key));
    }
    let key = match keys.as_slice() {
        [(_, key)] => key.clone(),
        [] => {
            fail(
                "",
                format!(
                    "names no key to hash: set one of {}, {}, {}: true or {}",
                    spelling.spell("http_header_name"),
                    spelling.spell("http_cookie"),
                    spelling.spell("use_source_ip"),
                    spelling.spell("http_query_parameter_name"),
                ),
            );
            None
        }
        several => {
            let names: Vec<_> = several.iter().map(|(f, _)| spelling.spell(f)).collect();
            fail(
                "",
                format!(
                    "names {} keys ({}): set only one",
                    names.len(),
                    names.join(", ")
                ),
            );
            None
        }
    };
    let algorithm = match (&raw.ring_hash, &raw.maglev) {
        (Some(_), Some(_)) => {
            fail(
                "",
                format!(
                    "sets both {} and maglev: choose one",
                    spelling.spell("ring_hash")
                ),
            );
            None
        }
        (None, None) => Some(Algorithm::default()),
        (Some(r), None) => match r.minimum_ring_size.unwrap_or(DEFAULT_RING_POINTS.into()) {
            n @ 1.. if n <= MAX_RING_POINTS as u64 => {
                Some(Algorithm::RingHash { points: n as u32 })
            }
            n => {
                fail(
                    "ring_hash.minimum_ring_size",
                    format!("must be between 1 and {MAX_RING_POINTS}, got {n}"),
                );
                None
            }
        },
        (None, Some(m)) => match m.table_size.unwrap_or(DEFAULT_MAGLEV_TABLE_SIZE.into()) {
            n if n > u64::from(MAX_MAGLEV_TABLE_SIZE) => {
                fail(
                    "maglev.table_size",
                    format!("must be at most {MAX_MAGLEV_TABLE_SIZE}, got {n}"),
                );
                None
            }
            n if !is_prime(n) => {
                fail(
                    "maglev.table_size",
                    format!(
                        "{n} is not a prime number: a Maglev table needs a prime size, like {DEFAULT_MAGLEV_TABLE_SIZE} (the default)"
                    ),
                );
                None
            }
            n => Some(Algorithm::Maglev {
                table_size: n as u32,
            }),
        },
    };
    match (key, algorithm) {
        (Some(key), Some(algorithm)) if problems.is_empty() => Ok(HashPolicy { key, algorithm }),
        _ => Err(problems),
    }
}

/// Whether `n` is prime (by trial division: `n` is at most a few million).
fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes_and_spellings() {
        let primes: Vec<u64> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537) && is_prime(5_000_011) && !is_prime(65_536));
        assert_eq!(
            Spelling::Camel.spell("http_query_parameter_name"),
            "httpQueryParameterName"
        );
        assert_eq!(
            Spelling::Camel.spell("ring_hash.minimum_ring_size"),
            "ringHash.minimumRingSize"
        );
        assert_eq!(Spelling::Snake.spell("http_cookie.ttl"), "http_cookie.ttl");
    }
}
