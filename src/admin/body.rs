//! Reading an admin request's JSON body: at most 64 KiB and nested at most 32 deep, both checked
//! as the bytes arrive, and a refused body is read to its end in the background so that the
//! connection closes cleanly under the answer.

use super::ApiError;
use bytes::BytesMut;
use http::{header, Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::time::Duration;

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;
/// Most bytes of a refused body read and dropped after the answer. Closing a connection with
/// bytes unread makes the kernel reset it, and a client still sending then loses the answer;
/// reading the rest first (nginx's lingering close) lets it arrive.
const DRAIN_MAX: usize = 16 * 1024 * 1024;
/// Longest time spent reading a refused body, so a client that sends slowly or stops can't
/// hold its connection.
const DRAIN_TIME: Duration = Duration::from_secs(5);
/// Deepest nesting of arrays and objects accepted. The API's bodies need 5; serde_json would
/// stop at 128, but only once the whole body is in, which a client may take its time to send.
const MAX_DEPTH: u32 = 32;

/// Refuses `req` with 413 when its `content-length` says its body is over the limit, whatever
/// the call, before anything else about it is looked at; else hands it back.
pub(super) fn refuse_declared_oversize(
    req: Request<Incoming>,
) -> Result<Request<Incoming>, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_none_or(|n| n <= MAX_BODY as u64) {
        return Ok(req);
    }
    let h1 = req.version() < Version::HTTP_2;
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut e = too_large();
    if expects_continue {
        // Nothing sent yet: reading would ask for the body with `100 Continue`. Unread,
        // the client gets the 413 in its place and the connection closes.
        e.close = h1;
    } else if h1 {
        tokio::spawn(drain(req.into_body()));
        e.close = true;
    }
    Err(e)
}

/// Reads the body of `req` and parses it as a `T`.
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    // Over HTTP/2, a stream refused mid-body is reset on its own: only HTTP/1.x needs the rest
    // read, and the connection closed after the answer.
    let h1 = req.version() < Version::HTTP_2;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = req.into_body();
    let refuse = |body: Incoming, mut e: ApiError| {
        if h1 {
            tokio::spawn(drain(body));
            e.close = true;
        }
        e
    };
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        if expects_continue {
            // Nothing sent yet: reading would ask for the body with `100 Continue`. Unread,
            // the client gets the 413 in its place and the connection closes.
            let mut e = too_large();
            e.close = h1;
            return Err(e);
        }
        return Err(refuse(body, too_large()));
    }
    let mut bytes = BytesMut::new();
    let mut nesting = Nesting::default();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad("body", format!("cannot read the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if bytes.len() + data.len() > MAX_BODY {
            return Err(refuse(body, too_large()));
        }
        if !nesting.scan(&data) {
            let e = ApiError::bad(
                "body",
                format!("invalid JSON body: nested deeper than {MAX_DEPTH} levels"),
            );
            return Err(refuse(body, e));
        }
        bytes.extend_from_slice(&data);
    }
    parse(&bytes)
}

/// How deep the JSON read so far is nested, kept across the body's frames.
#[derive(Debug, Default)]
struct Nesting {
    depth: u32,
    in_string: bool,
    escaped: bool,
}

impl Nesting {
    /// Follows `data`; `false` once the nesting passes `MAX_DEPTH`. Brackets inside strings
    /// don't count. Whether the JSON is valid is for the parser to say, afterwards.
    fn scan(&mut self, data: &[u8]) -> bool {
        for &b in data {
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'[' | b'{' => {
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return false;
                    }
                }
                b']' | b'}' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
        true
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body",
        format!("the body is larger than {MAX_BODY} bytes"),
    )
}

/// Reads and drops what is left of a refused body, up to `DRAIN_MAX` bytes and `DRAIN_TIME`;
/// past either, the body is dropped unread and hyper closes the connection as it is.
async fn drain(mut body: Incoming) {
    let read = async {
        let mut left = DRAIN_MAX;
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len());
            match left.checked_sub(n) {
                Some(l) => left = l,
                None => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body is an object: say so plainly rather than what serde expected of a struct.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::bad(
                "body",
                "the body is empty: a JSON object is required",
            ))
        }
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::bad(
                "body",
                "invalid JSON body: it must be a JSON object ({...})",
            ))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_eof() {
            return ApiError::bad(
                "body",
                format!(
                    "invalid JSON body: it ends before the value is complete (cut short?): {inner}"
                ),
            );
        }
        // A syntax error sits between fields, where the path has no name yet.
        let path = if inner.is_syntax() || path.contains('?') {
            ".".to_string()
        } else {
            path
        };
        let text = plain_types(&inner.to_string());
        // A missing field is reported at its parent: name the field itself.
        let missing = text
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next());
        let field = match (path.as_str(), missing) {
            (".", Some(m)) => m.to_string(),
            (p, Some(m)) => format!("{p}.{m}"),
            (".", None) => "body".to_string(),
            (p, None) => p.to_string(),
        };
        ApiError::bad(field, format!("invalid JSON body: {text}"))
    })?;
    de.end().map_err(|e| {
        ApiError::bad(
            "body",
            format!("invalid JSON body: trailing data after the value ({e})"),
        )
    })?;
    Ok(value)
}

/// serde's message with the Rust type names it gives for objects (`struct WeightsBody`, `with 2
/// elements` for an array in its place) put the way the API describes them.
fn plain_types(text: &str) -> String {
    let Some(at) = text.find("expected struct ") else {
        return text.to_string();
    };
    // The rest after the type name: ` with N elements`, then ` at line L column C`.
    let after = &text[at + "expected struct ".len()..];
    let tail = after.find(" at line ").map_or("", |i| &after[i..]);
    let head = &text[..at];
    if head.starts_with("invalid length") {
        return format!("expected a JSON object, not an array{tail}");
    }
    format!("{head}expected a JSON object{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fits(parts: &[&str]) -> bool {
        let mut n = Nesting::default();
        parts.iter().all(|p| n.scan(p.as_bytes()))
    }

    #[test]
    fn type_names_are_put_plainly() {
        assert_eq!(
            plain_types(
                "invalid type: integer `1`, expected struct HeaderMatch at line 1 column 12"
            ),
            "invalid type: integer `1`, expected a JSON object at line 1 column 12"
        );
        assert_eq!(
            plain_types(
                "invalid length 0, expected struct HeaderMatch with 6 elements at line 1 column 3"
            ),
            "expected a JSON object, not an array at line 1 column 3"
        );
        assert_eq!(plain_types("unknown field `x`"), "unknown field `x`");
    }

    #[test]
    fn nesting_is_followed_across_frames_and_strings() {
        let deep = |n: usize| "[".repeat(n);
        assert!(fits(&[&deep(32)]));
        assert!(!fits(&[&deep(33)]));
        assert!(!fits(&[&deep(20), &deep(13)]), "across frames");
        let closed = "[]".repeat(1000);
        assert!(
            fits(&[&closed, &deep(32)]),
            "closed brackets give their level back"
        );
        let quoted = format!(r#"{{"rule": "{}"}}"#, deep(100));
        assert!(fits(&[&quoted]), "brackets in a string");
        let escaped = format!(r#"{{"rule": "\\\"{}"}}"#, deep(100));
        assert!(
            fits(&[&escaped]),
            "an escaped quote does not end the string"
        );
        assert!(fits(&[r#"{"rule": "a\"#, &format!("\"{}\"}}", deep(100))]));
        let mirror = r#"{"subset": "c", "match": [{"headers": {"x": {"exact": "["}}}]}"#;
        assert!(fits(&[mirror]));
    }
}
