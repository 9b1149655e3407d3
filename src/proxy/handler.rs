//! One request, start to end: route → split → forward → answer.

use super::body::ProxyBody;
use super::error::ProxyError;
use super::headers::{self, ConnInfo};
use super::mirror;
use crate::runtime::{Runtime, SharedRuntime, Subset};
use crate::upstream::{PooledBody, SendError, UpstreamBody};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

/// Endpoints of a subset tried in turn when connecting fails (Istio retries connect failures).
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Serves one request against the runtime that is live when it arrives; it keeps that snapshot
/// to the end, whatever is swapped in meanwhile.
pub async fn handle(
    shared: &SharedRuntime,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let rt = shared.load_full();
    match proxy(&rt, conn, req).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(flag = e.flag(), error = %e, "request failed");
            error_response(&e)
        }
    }
}

async fn proxy(
    rt: &Arc<Runtime>,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let hit = rt.router.find(&parts).ok_or(ProxyError::NoRoute)?;
    let subset = rt.subset(hit.rule.split.pick(&mut rand::rng()));
    let upgrade = headers::is_upgrade(&parts);
    let client_upgrade = if upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    headers::prepare_request(&mut parts, conn, upgrade);
    let sampled = hit
        .rule
        .mirror
        .filter(|m| !upgrade && m.sampled(&mut rand::rng()));
    let body = match sampled {
        None => UpstreamBody::Stream(body),
        Some(m) => {
            let (primary, copy) = mirror::tee(&parts, body).await?;
            if let Some(copy) = copy {
                mirror::spawn(rt.clone(), m.target, &parts, copy);
            }
            primary
        }
    };
    let sent = forward(subset, Request::from_parts(parts, body));
    let resp = match hit.rule.timeout {
        Some(t) => tokio::time::timeout(t, sent)
            .await
            .map_err(|_| ProxyError::UpstreamTimeout)??,
        None => sent.await?,
    };
    Ok(respond(resp, client_upgrade))
}

/// Sends to an endpoint of the subset, moving to the next endpoint when a connection can't be made.
pub(crate) async fn forward(
    subset: &Subset,
    mut req: Request<UpstreamBody>,
) -> Result<Response<PooledBody>, ProxyError> {
    let endpoints = subset.balancer.endpoints();
    let Some(first) = subset.balancer.pick_index(&mut rand::rng()) else {
        return Err(ProxyError::NoHealthyUpstream);
    };
    // After a failed connect, move on to endpoints not tried yet (the pick may repeat itself).
    let attempts = endpoints.len().min(MAX_CONNECT_ATTEMPTS);
    let mut last_error = String::new();
    for attempt in 0..attempts {
        let endpoint = &endpoints[(first + attempt) % endpoints.len()];
        match endpoint.send(req).await {
            Ok(resp) => return Ok(resp),
            Err(SendError::Reset(e)) => return Err(ProxyError::UpstreamReset(e)),
            Err(SendError::Connect {
                endpoint,
                reason,
                request,
            }) => {
                last_error = format!("{endpoint}: {reason}");
                req = *request;
            }
        }
    }
    Err(ProxyError::ConnectFailure(last_error))
}

fn respond(resp: Response<PooledBody>, client_upgrade: Option<OnUpgrade>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let (Some(client), Some(upstream)) =
            (client_upgrade, parts.extensions.remove::<OnUpgrade>())
        {
            tokio::spawn(tunnel(client, upstream));
        }
    }
    headers::prepare_response(&mut parts.headers, switching);
    Response::from_parts(parts, ProxyBody::Upstream(body))
}

/// Copies bytes both ways between an upgraded client and upstream (websocket and the like).
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade) {
    let (client, upstream) = tokio::join!(client, upstream);
    let (Ok(client), Ok(upstream)) = (client, upstream) else {
        return;
    };
    let result =
        tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(upstream)).await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

/// The gateway's own answer for a failure.
pub fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::fixed(e.body()));
    *resp.status_mut() = e.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
