//! Keys that a YAML mapping repeats.
//!
//! serde keeps the last value of a repeated key without a word, so a GitOps merge that writes
//! `svc:` twice under `services:` would drop a whole service. [`repeated`] reads the document's
//! events once and names every repeat with its path, line and column, before anything is
//! deserialized.

use super::FieldError;
use saphyr_parser::{Event, Parser, Span};
use std::collections::HashMap;

/// Where a node starts, as editors count: line and column from 1.
#[derive(Debug, Clone, Copy)]
struct At {
    line: usize,
    column: usize,
}

impl At {
    fn of(span: Span) -> At {
        At {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

/// An open mapping or sequence, and where its children go in the path.
enum Open {
    Mapping {
        path: String,
        /// Each plain key so far, where it first appeared.
        keys: HashMap<String, At>,
        /// The next node is a key (else a value).
        at_key: bool,
        /// The key of the value that comes next; `None` for a key that is not a scalar.
        key: Option<String>,
    },
    Sequence {
        path: String,
        index: usize,
    },
}

impl Open {
    /// The path of the node that comes next in this one.
    fn child(&self) -> String {
        match self {
            Open::Mapping { path, key, .. } => {
                let key = key.as_deref().unwrap_or("?");
                if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                }
            }
            Open::Sequence { path, index } => format!("{path}[{index}]"),
        }
    }

    /// One child node is complete.
    fn advance(&mut self) {
        match self {
            Open::Mapping { at_key, key, .. } => {
                if !*at_key {
                    *key = None;
                }
                *at_key = !*at_key;
            }
            Open::Sequence { index, .. } => *index += 1,
        }
    }
}

/// Every key that repeats within one mapping of `text`, as an error at the repeat's path. A
/// document the scanner cannot read gives none here; the deserializer reports its syntax.
/// The merge key `<<` may repeat, as YAML allows several merges.
pub fn repeated(text: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    for event in Parser::new_from_str(text) {
        let Ok((event, span)) = event else {
            return errors;
        };
        match event {
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = open.last().map(Open::child).unwrap_or_default();
                open.push(if matches!(event, Event::MappingStart(..)) {
                    Open::Mapping {
                        path,
                        keys: HashMap::new(),
                        at_key: true,
                        key: None,
                    }
                } else {
                    Open::Sequence { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                open.pop();
                if let Some(parent) = open.last_mut() {
                    parent.advance();
                }
            }
            Event::Scalar(value, ..) => {
                if let Some(Open::Mapping {
                    path,
                    keys,
                    at_key: true,
                    key,
                }) = open.last_mut()
                {
                    let here = At::of(span);
                    if value != "<<" {
                        if let Some(first) = keys.get(value.as_ref()) {
                            errors.push(FieldError {
                                path: if path.is_empty() {
                                    value.to_string()
                                } else {
                                    format!("{path}.{value}")
                                },
                                message: format!(
                                    "the key {value:?} appears again at line {}, column {} \
                                     (first at line {}, column {}); YAML would keep only the \
                                     last one, so merge them or remove one",
                                    here.line, here.column, first.line, first.column
                                ),
                            });
                        } else {
                            keys.insert(value.to_string(), here);
                        }
                    }
                    *key = Some(value.to_string());
                }
                if let Some(parent) = open.last_mut() {
                    parent.advance();
                }
            }
            Event::Alias(_) => {
                if let Some(parent) = open.last_mut() {
                    parent.advance();
                }
            }
            Event::DocumentStart(_) => open.clear(),
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(text: &str) -> Vec<String> {
        repeated(text).into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn a_repeated_key_is_named_with_its_path_line_and_column() {
        let text = "services:\n  svc:\n    host: a\n  other:\n    host: b\n  svc:\n    host: c\n";
        let errors = repeated(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "services.svc");
        assert!(
            errors[0]
                .message
                .contains("at line 6, column 3 (first at line 2, column 3)"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn repeats_are_found_at_every_depth_and_in_flow_style() {
        let text = "routes:\n  - name: a\n    http:\n      - route: []\n        route: []\n  - { name: b, name: c }\nroutes: []\n";
        assert_eq!(
            paths(text),
            ["routes[0].http[0].route", "routes[1].name", "routes"]
        );
    }

    #[test]
    fn the_same_key_in_different_mappings_or_as_a_value_is_no_repeat() {
        let text = "a:\n  x: 1\nb:\n  x: 1\nc: a\nd: [{ k: 1 }, { k: 2 }]\ne: { f: e }\n";
        assert!(paths(text).is_empty(), "{:?}", paths(text));
    }

    #[test]
    fn merge_keys_may_repeat_and_values_that_are_mappings_keep_the_path_right() {
        let text = "base: &b { t: 1 }\nmore: &m { u: 2 }\nx:\n  <<: *b\n  <<: *m\n  y: { z: 1 }\n  y2: 1\n  y2: 2\n";
        assert_eq!(paths(text), ["x.y2"]);
    }

    #[test]
    fn a_document_the_scanner_cannot_read_is_left_to_serde() {
        assert!(paths("a: [1, 2\nb: c: d").is_empty());
    }
}
