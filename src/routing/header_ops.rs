//! Header changes a rule or a destination makes (Istio's `headers`), as served: names and
//! values parsed when the config is compiled (`config::headers`), so a request pays only for
//! the map operations themselves.

use http::{HeaderMap, HeaderName, HeaderValue};

/// One direction's changes, applied in Envoy's order: remove, then set, then add.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderOps {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
}

impl HeaderOps {
    /// Fields to remove, to set and to add.
    pub fn new(
        remove: Vec<HeaderName>,
        set: Vec<(HeaderName, HeaderValue)>,
        add: Vec<(HeaderName, HeaderValue)>,
    ) -> Self {
        HeaderOps {
            remove: remove.into(),
            set: set.into(),
            add: add.into(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_then_set_then_add() {
        let name = |n: &'static str| HeaderName::from_static(n);
        let value = HeaderValue::from_static;
        let o = HeaderOps::new(
            vec![name("x-gone"), name("x-b")],
            vec![(name("x-a"), value("one")), (name("x-b"), value("two"))],
            vec![(name("x-b"), value("three"))],
        );
        let mut h = HeaderMap::new();
        h.insert("x-gone", value("1"));
        h.insert("x-a", value("old"));
        h.insert("x-b", value("old"));
        o.apply(&mut h);
        assert!(h.get("x-gone").is_none());
        assert_eq!(h["x-a"], "one");
        let b: Vec<_> = h.get_all("x-b").iter().collect();
        assert_eq!(b, ["two", "three"]);
    }
}
