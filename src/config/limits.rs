//! Checks a listener's `limits` section and fills in the defaults.

use super::duration::parse_duration;
use super::model::RawLimits;
use super::FieldError;
use crate::server::limits::{Limits, MIN_REQUEST_HEADERS_KB};
use std::time::Duration;

/// The limits of listener `path` (`listeners[0]`), or every problem with them.
/// `max_connections` is 0 when the config sets none: it is derived when the listener binds.
pub fn listener_limits(raw: Option<&RawLimits>, path: &str) -> Result<Limits, Vec<FieldError>> {
    let mut limits = Limits::listener(0);
    let Some(raw) = raw else {
        return Ok(limits);
    };
    let mut errs = Vec::new();
    let mut fail = |field: &str, message: String| {
        errs.push(FieldError {
            path: format!("{path}.limits.{field}"),
            message,
        })
    };
    if let Some(kb) = raw.max_request_headers_kb {
        if !(MIN_REQUEST_HEADERS_KB..=8192).contains(&kb) {
            fail(
                "max_request_headers_kb",
                format!("must be between {MIN_REQUEST_HEADERS_KB} and 8192, got {kb}"),
            );
        }
        limits.max_head_bytes = kb as usize * 1024;
    }
    if let Some(n) = raw.max_request_headers {
        if !(1..=10_000).contains(&n) {
            fail(
                "max_request_headers",
                format!("must be between 1 and 10000, got {n}"),
            );
        }
        limits.max_headers = n as usize;
    }
    let mut deadline = |field: &str, value: &Option<String>, slot: &mut Duration| {
        let Some(text) = value else { return };
        match parse_duration(text) {
            Ok(d) if d.is_zero() => fail(
                field,
                "must be above 0: a client that never finishes would hold its connection forever"
                    .into(),
            ),
            Ok(d) => *slot = d,
            Err(m) => fail(field, m),
        }
    };
    deadline(
        "first_byte_timeout",
        &raw.first_byte_timeout,
        &mut limits.first_byte_timeout,
    );
    deadline(
        "request_headers_timeout",
        &raw.request_headers_timeout,
        &mut limits.request_headers_timeout,
    );
    deadline("idle_timeout", &raw.idle_timeout, &mut limits.idle_timeout);
    if let Some(n) = raw.max_connections {
        if n == 0 {
            fail(
                "max_connections",
                "must be above 0 (leave it out for a limit derived from the descriptor limit)"
                    .into(),
            );
        }
        limits.max_connections = n as usize;
    }
    if let Some(n) = raw.http2_max_concurrent_streams {
        if n == 0 {
            fail("http2_max_concurrent_streams", "must be above 0".into());
        }
        limits.http2_max_concurrent_streams = n;
    }
    if let Some(n) = raw.http2_max_resets_per_10s {
        if n == 0 {
            fail("http2_max_resets_per_10s", "must be above 0".into());
        }
        limits.http2_max_resets = n;
    }
    if let Some(text) = &raw.tarpit {
        match parse_duration(text) {
            Ok(d) if d > Duration::from_secs(60) => fail(
                "tarpit",
                format!(
                    "must be at most 60s, got {text}: a longer wait holds descriptors for nothing"
                ),
            ),
            Ok(d) => limits.tarpit = d,
            Err(m) => fail("tarpit", m),
        }
    }
    if errs.is_empty() {
        Ok(limits)
    } else {
        Err(errs)
    }
}
