//! Traffic mirroring: a copy of a request goes to another subset, fire and forget. Its answer is
//! read and dropped; its failure or slowness never reaches the client.

use super::error::ProxyError;
use super::handler::forward;
use super::idle::IdleBody;
use crate::http1::RequestBody;
use crate::metrics::hub::ResultLabel;
use crate::routing::Mirror;
use crate::runtime::Runtime;
use crate::split::Target;
use crate::upstream::UpstreamBody;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{header, HeaderValue, Request};
use http_body::Body;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body that is copied (it has to be held in memory for both sends).
pub const MIRROR_BODY_LIMIT: u64 = 64 * 1024;
/// A mirrored exchange is abandoned after this long.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// Splits a request body into the primary's body and, when the request can be copied, the
/// copy's. Bodies of unknown length or above `MIRROR_BODY_LIMIT` are not copied.
pub async fn tee(
    parts: &Parts,
    body: IdleBody<RequestBody>,
) -> Result<(UpstreamBody, Option<UpstreamBody>), ProxyError> {
    if body.is_end_stream() {
        return Ok((
            UpstreamBody::Stream(body),
            Some(UpstreamBody::Buffered(None)),
        ));
    }
    let small = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= MIRROR_BODY_LIMIT);
    if !small {
        return Ok((UpstreamBody::Stream(body), None));
    }
    let bytes = body
        .collect()
        .await
        .map_err(ProxyError::client_body)?
        .to_bytes();
    Ok((
        UpstreamBody::buffered(bytes.clone()),
        Some(UpstreamBody::buffered(bytes)),
    ))
}

/// Copies the request to each of `mirrors` that samples it (each samples on its own), in the
/// background, and returns the body for the primary. The body is read once, and its bytes are
/// shared by every copy.
pub async fn copy(
    rt: &Arc<Runtime>,
    mirrors: &[Mirror],
    parts: &Parts,
    body: IdleBody<RequestBody>,
) -> Result<UpstreamBody, ProxyError> {
    let first = {
        let mut rng = rand::rng();
        mirrors.iter().position(|m| m.sampled(&mut rng))
    };
    let Some(first) = first else {
        return Ok(UpstreamBody::Stream(body));
    };
    let (primary, copy) = tee(parts, body).await?;
    if let Some(copy) = copy {
        let mut rng = rand::rng();
        let rest = mirrors[first + 1..].iter().filter(|m| m.sampled(&mut rng));
        for m in std::iter::once(&mirrors[first]).chain(rest) {
            if let Some(body) = copy.replay() {
                spawn(rt.clone(), m.target, parts, body);
            }
        }
    }
    Ok(primary)
}

/// Sends a copy of a request (head already prepared for upstream) to `target` in the background.
pub fn spawn(rt: Arc<Runtime>, target: Target, parts: &Parts, body: UpstreamBody) {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    // As Envoy does, the copy's Host says it is a shadow, so the mirror can tell copies apart.
    if let Some(host) = parts.headers.get(header::HOST) {
        let mut shadow = BytesMut::from(host.as_bytes());
        shadow.extend_from_slice(b"-shadow");
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(shadow)) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    tokio::spawn(async move {
        let subset = rt.subset(target);
        let exchange = async {
            let (resp, _) = forward(subset, req, None, false).await?;
            // Read the answer to the end so its connection goes back to the pool.
            let _ = resp.into_body().collect().await;
            Ok::<_, ProxyError>(())
        };
        let result = match tokio::time::timeout(MIRROR_TIMEOUT, exchange).await {
            Ok(Ok(())) => "ok",
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "mirrored request failed");
                "failed"
            }
            Err(_) => {
                tracing::debug!("mirrored request timed out");
                "timeout"
            }
        };
        rt.hub
            .own
            .mirror_requests
            .get_or_create(&ResultLabel { result })
            .inc();
    });
}
