//! One `{exact|prefix|suffix|regex|present}` condition of the config, compiled: shared by
//! rule matches, CORS origins and the admin API's header routes. Regexes compiled lately are
//! kept, so a config that changes only a weight does not compile its regexes again.

use super::model::RawStringMatch;
use crate::routing::StringMatch;
use regex::Regex;
use std::collections::HashMap;

/// Turns one `{exact|prefix|suffix|regex|present}` into a matcher. On failure, returns the
/// sub-field at fault (`regex`, `present`, or empty for the whole condition) and why.
pub fn parse_string_match(m: &RawStringMatch) -> Result<StringMatch, (&'static str, String)> {
    let set = [
        m.exact.is_some(),
        m.prefix.is_some(),
        m.suffix.is_some(),
        m.regex.is_some(),
        m.present.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err((
            "",
            "exactly one of exact, prefix, suffix, regex or present is required".into(),
        ));
    }
    if let Some(e) = &m.exact {
        return Ok(StringMatch::Exact(e.as_str().into()));
    }
    if let Some(e) = &m.prefix {
        return Ok(StringMatch::Prefix(e.as_str().into()));
    }
    if let Some(e) = &m.suffix {
        return Ok(StringMatch::Suffix(e.as_str().into()));
    }
    if let Some(r) = &m.regex {
        return anchored_regex(r).map(StringMatch::Regex).map_err(|e| {
            (
                "regex",
                format!("invalid regex {r:?}: {}", regex_reason(&e)),
            )
        });
    }
    if m.present == Some(true) {
        Ok(StringMatch::Present)
    } else {
        Err((
            "present",
            "only `present: true` is allowed (use without_headers for absence)".into(),
        ))
    }
}

/// Patterns compiled lately, anchored: a config that changes a weight keeps its other rules'
/// regexes, and compiling them again would cost tens of microseconds each (1,000 regex rules
/// made every weight change take 110 ms). Two generations, so that patterns no longer used go
/// away: when the newer holds twice as many as the older (and at least 1,024), the older is
/// dropped and the newer takes its place.
#[derive(Default)]
struct RegexCache {
    newer: HashMap<Box<str>, Regex>,
    older: HashMap<Box<str>, Regex>,
}

static REGEXES: std::sync::Mutex<Option<RegexCache>> = std::sync::Mutex::new(None);

/// `pattern` compiled to match whole values, from the cache when it was compiled lately.
fn anchored_regex(pattern: &str) -> Result<Regex, regex::Error> {
    let mut guard = REGEXES.lock().unwrap_or_else(|p| p.into_inner());
    let cache = guard.get_or_insert_with(RegexCache::default);
    if let Some(r) = cache.newer.get(pattern) {
        return Ok(r.clone());
    }
    let regex = match cache.older.remove(pattern) {
        Some(r) => r,
        // Check the pattern as written, so the error points into what the user wrote; then
        // anchor it.
        None => Regex::new(pattern).and_then(|_| Regex::new(&format!("^(?:{pattern})$")))?,
    };
    if cache.newer.len() >= (2 * cache.older.len()).max(1024) {
        cache.older = std::mem::take(&mut cache.newer);
    }
    cache.newer.insert(pattern.into(), regex.clone());
    Ok(regex)
}

/// The reason line of a regex error (its text also draws the pattern with a caret under it).
pub fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(&text);
    last.trim().trim_start_matches("error: ").to_string()
}
