//! Bounds what YAML aliases may add to a document, before anything expands them.
//!
//! serde expands an alias by replaying its anchored node, so a small file whose anchors
//! reference each other (or one big anchor referenced many times) becomes gigabytes of strings.
//! [`check`] reads the document's events once, with a parser that keeps anchors as ids, and adds
//! up the nodes and scalar bytes each alias would bring in, nested aliases included. The sums
//! saturate, so even an exponential "billion laughs" is measured in a single pass.

use saphyr_parser::{Event, Parser, ScanError, Span};
use std::collections::HashMap;

/// The most nodes (scalars, sequences, mappings) that aliases may add to a document. Sharing a
/// policy or match block among hundreds of services or rules stays far below it.
pub const MAX_ALIAS_NODES: u64 = 100_000;

/// The most scalar bytes that aliases may add to a document.
pub const MAX_ALIAS_BYTES: u64 = 8 << 20;

/// Why a document was refused before it was deserialized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    /// The aliases would add more than a bound.
    #[error("YAML aliases would expand the document past {limit} {what} (at line {line}, alias *{name})")]
    TooLarge {
        /// `nodes` or `bytes of text`.
        what: &'static str,
        /// The bound crossed.
        limit: u64,
        /// The line of the alias that crossed it.
        line: usize,
        /// Its anchor's name.
        name: String,
    },
    /// An alias inside the node its anchor names: expanding it would never end.
    #[error("YAML alias *{name} at line {line} is inside the node it refers to")]
    Recursive {
        /// The line of the alias.
        line: usize,
        /// Its anchor's name.
        name: String,
    },
    /// The scanner could not read the document.
    #[error("{0}")]
    Syntax(ScanError),
}

/// What a node expands to.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    nodes: u64,
    bytes: u64,
}

impl Size {
    fn add(&mut self, other: Size) {
        self.nodes = self.nodes.saturating_add(other.nodes);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

/// An open sequence or mapping: its anchor (0 for none) and its size so far.
struct Open {
    anchor: usize,
    size: Size,
}

/// Refuses `text` when its aliases would add more than [`MAX_ALIAS_NODES`] nodes or
/// [`MAX_ALIAS_BYTES`] bytes of scalar text; see [`check_with`].
pub fn check(text: &str) -> Result<(), AliasError> {
    check_with(text, MAX_ALIAS_NODES, MAX_ALIAS_BYTES)
}

/// Refuses `text` when its aliases would add more than `max_nodes` nodes or `max_bytes` bytes
/// of scalar text, naming the alias that crosses the bound. Works in one pass with memory in
/// proportion to the text, never to its expansion.
pub fn check_with(text: &str, max_nodes: u64, max_bytes: u64) -> Result<(), AliasError> {
    // The size of each anchored node once it is complete, aliases within it expanded.
    let mut anchored: HashMap<usize, Size> = HashMap::new();
    // The root stands for the whole stream, so a closing node always has a parent.
    let mut open = vec![Open {
        anchor: 0,
        size: Size::default(),
    }];
    let mut added = Size::default();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(AliasError::Syntax)?;
        let done = match event {
            Event::Scalar(value, _, anchor, _) => Some((
                anchor,
                Size {
                    nodes: 1,
                    bytes: value.len() as u64,
                },
            )),
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                open.push(Open {
                    anchor,
                    size: Size { nodes: 1, bytes: 0 },
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let closed = open.pop().filter(|_| !open.is_empty());
                closed.map(|o| (o.anchor, o.size))
            }
            Event::Alias(id) => {
                let Some(&size) = anchored.get(&id) else {
                    // The parser knows the anchor, so it is still open: this alias is inside it.
                    return Err(AliasError::Recursive {
                        line: span.start.line(),
                        name: alias_name(text, span),
                    });
                };
                added.add(size);
                let crossed = if added.nodes > max_nodes {
                    Some(("nodes", max_nodes))
                } else if added.bytes > max_bytes {
                    Some(("bytes of text", max_bytes))
                } else {
                    None
                };
                if let Some((what, limit)) = crossed {
                    return Err(AliasError::TooLarge {
                        what,
                        limit,
                        line: span.start.line(),
                        name: alias_name(text, span),
                    });
                }
                Some((0, size))
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd => None,
        };
        if let Some((anchor, size)) = done {
            if anchor != 0 {
                anchored.insert(anchor, size);
            }
            if let Some(parent) = open.last_mut() {
                parent.size.add(size);
            }
        }
    }
    Ok(())
}

/// The anchor name an alias event spells (`*name`), for the message. Spans count characters,
/// not bytes; this runs once, for the error.
fn alias_name(text: &str, span: Span) -> String {
    text.chars()
        .skip(span.start.index())
        .skip_while(|&c| c == '*')
        .take_while(|&c| !c.is_whitespace() && !matches!(c, ',' | '[' | ']' | '{' | '}'))
        .take(64)
        .collect()
}

/// Whether `text` could hold an alias at all: an alias needs an anchor (`&`) and a reference
/// (`*`). When [`check`] cannot scan a document that has neither, serde may report the syntax
/// error in its own words, since there is nothing to expand.
pub fn may_have_aliases(text: &str) -> bool {
    text.contains('&') && text.contains('*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1,000-item anchored list referenced `refs` times.
    fn bomb(refs: usize) -> String {
        let items: Vec<String> = (0..1000).map(|i| format!("h{i}")).collect();
        let mut s = format!("a: &h [{}]\nb:\n", items.join(", "));
        for _ in 0..refs {
            s.push_str("  - *h\n");
        }
        s
    }

    #[test]
    fn refuses_a_list_referenced_too_often_naming_the_alias_and_its_line() {
        let e = check(&bomb(1000)).unwrap_err();
        // Each alias adds 1,001 nodes: the 100th crosses 100,000, on line 2 + 100.
        assert_eq!(
            e.to_string(),
            "YAML aliases would expand the document past 100000 nodes (at line 102, alias *h)"
        );
    }

    #[test]
    fn counts_aliases_nested_in_anchored_nodes() {
        // Each level doubles the one below: 2^20 scalars from a few hundred bytes.
        let mut s = String::from("l0: &l0 [x, x]\n");
        for i in 1..=20 {
            s.push_str(&format!("l{i}: &l{i} [*l{}, *l{}]\n", i - 1, i - 1));
        }
        let e = check(&s).unwrap_err();
        assert!(
            matches!(e, AliasError::TooLarge { what: "nodes", .. }),
            "{e}"
        );
    }

    #[test]
    fn counts_scalar_bytes() {
        let big = "x".repeat(1 << 20);
        let s = format!("a: &a {big}\nb: [{}]\n", ["*a"; 9].join(", "));
        let e = check(&s).unwrap_err();
        assert_eq!(
            e.to_string(),
            "YAML aliases would expand the document past 8388608 bytes of text (at line 2, alias *a)"
        );
    }

    #[test]
    fn allows_a_block_shared_many_times() {
        let mut s = String::from("base: &policy {connect_timeout: 1s, load_balancer: random}\n");
        for i in 0..500 {
            s.push_str(&format!("s{i}: {{policy: *policy}}\n"));
        }
        assert_eq!(check(&s), Ok(()));
        assert_eq!(check(&bomb(99)), Ok(()));
    }

    #[test]
    fn refuses_an_alias_inside_its_own_anchor() {
        let e = check("a: &a [1, *a]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "YAML alias *a at line 1 is inside the node it refers to"
        );
    }

    #[test]
    fn reports_what_it_cannot_scan() {
        assert!(matches!(check("a: [1, 2"), Err(AliasError::Syntax(_))));
        assert!(may_have_aliases("a: &x 1\nb: *x"));
        assert!(!may_have_aliases("hosts: [\"*\"]"));
    }
}
