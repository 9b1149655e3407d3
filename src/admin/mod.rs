//! The admin API (SPEC §4): JSON over HTTP/1.1 on the admin address. Every change goes through
//! `Control::change` or `Control::reload`; a refused call changes nothing.

mod api;
mod body;
pub mod client;

use crate::control::overlay::{HeaderRoute, MirrorRoute};
use crate::control::{ChangeError, Control};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What every admin request needs.
#[derive(Debug, Clone)]
pub struct AdminContext {
    /// The control plane.
    pub control: Arc<Control>,
    /// Bearer token required on /v1 calls, if any.
    pub token: Option<Arc<str>>,
}

/// An error answer: `{"error": "...", "field": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    field: String,
    extra: Option<serde_json::Value>,
    /// For 405: the methods the path takes.
    allow: Option<&'static str>,
    /// Close the connection after the answer (an HTTP/1.x request whose body was refused).
    close: bool,
}

impl ApiError {
    fn new(status: StatusCode, field: impl Into<String>, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            field: field.into(),
            extra: None,
            allow: None,
            close: false,
        }
    }

    fn bad(field: impl Into<String>, error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, field, error)
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut body = serde_json::json!({ "error": self.error, "field": self.field });
        if let (Some(extra), Some(obj)) = (self.extra, body.as_object_mut()) {
            if let Some(e) = extra.as_object() {
                obj.extend(e.clone());
            }
        }
        let mut resp = json(self.status, &body);
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::NotFound { field, message } => {
                ApiError::new(StatusCode::NOT_FOUND, field, message)
            }
            ChangeError::Invalid { field, message } => ApiError::bad(field, message),
            ChangeError::Stale { current, expected } => ApiError {
                status: StatusCode::CONFLICT,
                error: format!("stale generation: {expected} was expected, {current} is live"),
                field: "If-Match".into(),
                extra: Some(serde_json::json!({ "generation": current })),
                allow: None,
                close: false,
            },
            ChangeError::Owned { route, owner } => ApiError {
                status: StatusCode::CONFLICT,
                error: format!("route {route} is served from {owner}: change that object instead"),
                field: "route".into(),
                extra: Some(serde_json::json!({ "owner": owner })),
                allow: None,
                close: false,
            },
            ChangeError::Persist { message } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "admin.state_file",
                format!("cannot write the state file, so the change would not survive a restart; nothing was changed: {message}"),
            ),
            ChangeError::Config(errors) => ApiError {
                status: StatusCode::BAD_REQUEST,
                error: "the config file was rejected; the running config stays".into(),
                field: errors.first().map(|e| e.path.clone()).unwrap_or_default(),
                extra: Some(
                    serde_json::json!({ "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>() }),
                ),
                allow: None,
                close: false,
            },
        }
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Serves the admin API on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, ctx: AdminContext, stop: watch::Receiver<bool>) {
    crate::server::endpoint::serve(listener, stop, move |req| {
        let ctx = ctx.clone();
        async move { handle(&ctx, req).await }
    })
    .await;
}

/// Answers one admin request.
pub async fn handle(ctx: &AdminContext, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match route(ctx, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn route(
    ctx: &AdminContext,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = req.uri().path().to_string();
    let decoded = path
        .trim_matches('/')
        .split('/')
        .enumerate()
        .map(|(i, segment)| {
            percent_decoded(segment).ok_or_else(|| {
                // `/v1/routes/{route}/.../{name}`: say which of the two is malformed.
                let field = match i {
                    2 => "route",
                    4 => "name",
                    _ => "path",
                };
                ApiError::bad(
                    field,
                    format!("{segment:?} is not valid percent-encoding (`%` then two hex digits, of UTF-8)"),
                )
            })
        })
        .collect::<Result<Vec<String>, ApiError>>()?;
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    if segments.first() != Some(&"v1") {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "path",
            format!("no admin endpoint at {path}"),
        ));
    }
    authorize(ctx, &req)?;
    let req = body::refuse_declared_oversize(req)?;
    let if_match = if_match(&req)?;
    let method = req.method().clone();
    let control = &ctx.control;
    let generation = |g: u64| {
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "generation": g }),
        ))
    };
    match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "state"]) => {
            let view = control.state().await;
            let mut resp = json(StatusCode::OK, &view);
            // The generation, as an ETag, for `If-Match`.
            if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", view.generation)) {
                resp.headers_mut().insert(header::ETAG, etag);
            }
            Ok(resp)
        }
        (&Method::GET, ["v1", "analysis"]) => Ok(json(
            StatusCode::OK,
            &api::analysis(control, req.uri().query())?,
        )),
        (&Method::POST, ["v1", "reload"]) => {
            let outcome = control.reload(if_match).await?;
            let body = serde_json::json!({
                "generation": outcome.generation,
                "dropped_overrides": outcome.dropped,
                "restart_required": outcome.restart_required,
            });
            Ok(json(StatusCode::OK, &body))
        }
        (&Method::PUT, ["v1", "routes", route, "weights"]) => {
            let body = body::read_json(req).await?;
            generation(api::set_weights(control, if_match, route, body).await?)
        }
        (&Method::PUT, ["v1", "routes", route, "header-routes", name]) => {
            let body = body::read_json(req).await?;
            generation(api::put_named::<HeaderRoute>(control, if_match, route, name, body).await?)
        }
        (&Method::DELETE, ["v1", "routes", route, "header-routes", name]) => {
            generation(api::delete_named::<HeaderRoute>(control, if_match, route, name).await?)
        }
        (&Method::PUT, ["v1", "routes", route, "mirror-routes", name]) => {
            let body = body::read_json(req).await?;
            generation(api::put_named::<MirrorRoute>(control, if_match, route, name, body).await?)
        }
        (&Method::DELETE, ["v1", "routes", route, "mirror-routes", name]) => {
            generation(api::delete_named::<MirrorRoute>(control, if_match, route, name).await?)
        }
        (&Method::DELETE, ["v1", "routes", route, "overrides"]) => {
            generation(api::clear_overrides(control, if_match, route).await?)
        }
        (_, segments) if allowed_methods(segments).is_some() => {
            let allow = allowed_methods(segments).unwrap_or_default();
            let mut e = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
                format!("{method} is not allowed on {path}"),
            );
            e.allow = Some(allow);
            Err(e)
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "path",
            format!("no admin endpoint at {path}"),
        )),
    }
}

/// The methods a known admin path takes (`None`: no such path).
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    match segments {
        ["v1", "state"] | ["v1", "analysis"] => Some("GET"),
        ["v1", "reload"] => Some("POST"),
        ["v1", "routes", _, "weights"] => Some("PUT"),
        ["v1", "routes", _, "overrides"] => Some("DELETE"),
        ["v1", "routes", _, "header-routes" | "mirror-routes", _] => Some("PUT, DELETE"),
        _ => None,
    }
}

fn authorize(ctx: &AdminContext, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(token) = &ctx.token else {
        return Ok(());
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Authorization",
            "a valid bearer token is required",
        )),
    }
}

/// The token of `Bearer <token>`. The scheme is matched in any case (RFC 9110 §11.1) and may be
/// followed by several spaces (§11.4); the token is taken as sent.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares without stopping at the first difference, so timing tells nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `If-Match`: a generation, bare or quoted as the `ETag` of `/v1/state` has it; `*` (any
/// current state) is the same as none.
fn if_match(req: &Request<Incoming>) -> Result<Option<u64>, ApiError> {
    let Some(v) = req.headers().get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    text.parse().map(Some).map_err(|_| {
        ApiError::bad(
            "If-Match",
            format!("expected a generation number, got {text:?}"),
        )
    })
}

/// A path segment with its `%XX` escapes decoded (`+` is a plus in a path); `None` when an
/// escape is malformed or the result is not UTF-8.
fn percent_decoded(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            // Two hex digits, no sign (`from_str_radix` would take `+1`).
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, constant_time_eq, percent_decoded};

    #[test]
    fn path_segments_are_percent_decoded_strictly() {
        assert_eq!(percent_decoded("main").as_deref(), Some("main"));
        assert_eq!(percent_decoded("a%20b+c").as_deref(), Some("a b+c"));
        assert_eq!(percent_decoded("%C3%A9").as_deref(), Some("\u{e9}"));
        for bad in ["%", "a%2", "%zz", "%FF", "%+1"] {
            assert_eq!(percent_decoded(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bearer_scheme_in_any_case() {
        for v in ["Bearer t", "bearer t", "BEARER t", "BeArEr   t"] {
            assert_eq!(bearer_token(v), Some("t"), "{v:?}");
        }
        for v in ["Bearert", "Basic t", "Bear t", "t"] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
