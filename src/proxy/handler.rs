//! One request, start to end: route → split → forward → answer.

use super::body::{self, ProxyBody, Recorder};
use super::error::ProxyError;
use super::flags::Flags;
use super::headers::{self, ConnInfo};
use super::idle::IdleBody;
use super::mirror;
use crate::http1::{OnUpgrade, RequestBody};
use crate::metrics::istio::Sample;
use crate::routing::answer::Answer;
use crate::routing::cors::Verdict;
use crate::routing::fault::Abort;
use crate::routing::header_ops::Headers;
use crate::routing::retry::Retry;
use crate::routing::router::strip_port;
use crate::routing::{request_authority, MatchBlock, Route, Rule};
use crate::runtime::{Runtime, SharedRuntime, Subset};
use crate::upstream::h1::{Added, Io};
use crate::upstream::outlier::{Outcome, OutlierPolicy, Standing};
use crate::upstream::{Endpoint, PooledBody, SendError, UpstreamBody, UpstreamProtocol};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Endpoints of a subset tried in turn when connecting fails (Istio retries connect failures).
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Fields a request's map makes room for when the forwarding fields (four) go into it, with a
/// few that header rules add.
const FORWARDING_AND_RULE_FIELDS: usize = 8;

/// Serves one request against the runtime that is live when it arrives; it keeps that snapshot
/// to the end, whatever is swapped in meanwhile. `raw_answers`: the server writes an upstream
/// answer's fields as text ([`ProxyBody::fields`]) before the response's own headers, as
/// the gateway's HTTP/1.1 server does; an answer the gateway does not change is then passed on
/// without a header map.
///
/// Not an async fn: one holds its arguments for its whole life, beside the parts taken out of
/// them, and the request is 264 bytes.
pub fn handle<'a>(
    shared: &'a SharedRuntime,
    conn: &'a ConnInfo,
    req: Request<RequestBody>,
    raw_answers: bool,
) -> impl Future<Output = Response<ProxyBody>> + 'a {
    let (mut parts, body) = req.into_parts();
    async move {
        let start = Instant::now();
        let rt = shared.load_full();
        let protocol = request_protocol(&parts.headers);
        let request_bytes = if rt.metrics_enabled {
            request_size(&parts)
        } else {
            0
        };
        let grpc = protocol == "grpc";
        // An answer the gateway makes without a destination, counted as Envoy does: destination
        // unknown, under the host asked for.
        let answered = |parts: &http::request::Parts, resp: &Response<ProxyBody>, flags: Flags| {
            if rt.metrics_enabled {
                let sample = Sample {
                    code: resp.status().as_u16(),
                    flags: flags.as_str(),
                    protocol,
                    grpc_status: body::grpc_status(protocol, resp.headers()).unwrap_or(""),
                    duration_ms: start.elapsed().as_secs_f64() * 1000.0,
                    request_bytes,
                    response_bytes: answer_size(resp),
                };
                rt.hub
                    .record_no_route(request_authority(parts).map(strip_port), &sample);
            }
        };
        let unrouted = |parts: &http::request::Parts, e: ProxyError| {
            let mut resp = error_response(&e, grpc);
            // HTTP/2 has no Connection field: a refused stream never affects the others.
            if e.closes_connection() && parts.version < http::Version::HTTP_2 {
                let close = HeaderValue::from_static("close");
                resp.headers_mut().insert(header::CONNECTION, close);
            }
            answered(parts, &resp, e.flags());
            resp
        };
        if let Err(e) = headers::check_request(&mut parts) {
            return unrouted(&parts, e);
        }
        let Some(hit) = rt.router.find(&parts) else {
            return unrouted(&parts, ProxyError::NoRoute);
        };
        // CORS comes first, as Envoy's filter does: a preflight is answered here, and every other
        // answer to an allowed origin (the gateway's own included) gets the policy's headers.
        let cors = match hit.rule.cors.as_deref() {
            None => None,
            Some(c) => match c.verdict(&parts.method, &parts.headers) {
                Verdict::Pass => None,
                Verdict::Allowed(origin) => Some((c, origin)),
                Verdict::Preflight(headers) => {
                    let mut resp = Response::new(ProxyBody::fixed(Bytes::new()));
                    *resp.headers_mut() = headers;
                    answered(&parts, &resp, Flags::NONE);
                    return resp;
                }
            },
        };
        if let Some(answer) = &hit.rule.answer {
            let mut resp = local_answer(answer, &parts, conn);
            if let Some(h) = &hit.rule.headers {
                h.response.apply(resp.headers_mut());
            }
            if let Some((c, origin)) = cors {
                c.decorate(origin, resp.headers_mut());
            }
            answered(&parts, &resp, Flags::NONE);
            return resp;
        }
        let (picked, target, new_position) = match &hit.rule.sticky {
            None => {
                let (picked, target) = hit.rule.split.pick_indexed(&mut rand::rng());
                (picked, target, None)
            }
            Some(sticky) => sticky.pick(&hit.rule.split, &parts, &mut rand::rng()),
        };
        let subset = rt.subset(target);
        let changes = HeaderChanges {
            rule: hit.rule.headers.as_deref(),
            destination: hit
                .rule
                .destination_headers
                .get(picked)
                .and_then(Option::as_deref),
        };
        // Recorded as code 0 / DC if the client goes away before the answer (this future is dropped).
        let mut pending = Pending(rt.metrics_enabled.then(|| Recorder {
            metrics: subset.metrics.clone(),
            window: rt.window(hit.route.index, target).cloned(),
            start,
            code: 0,
            request_bytes,
            response_bytes: 0,
            protocol,
            grpc_status: "",
            done_flags: Flags::NONE,
        }));
        // Envoy's fault filter: a delay first (`DI`), then perhaps an error instead of the upstream
        // (`FI`); both counted against the destination picked.
        let mut injected = Flags::NONE;
        if let Some(fault) = &hit.rule.fault {
            let drawn = fault.draw(&mut rand::rng());
            if let Some(delay) = drawn.delay {
                tokio::time::sleep(delay).await;
                injected = Flags::DI;
            }
            if let Some(abort) = drawn.abort {
                let mut resp = fault_answer(abort);
                if let Some((c, origin)) = cors {
                    c.decorate(origin, resp.headers_mut());
                }
                if let Some(r) = pending.0.take() {
                    Recorder {
                        code: resp.status().as_u16(),
                        response_bytes: answer_size(&resp),
                        grpc_status: body::grpc_status(protocol, resp.headers()).unwrap_or(""),
                        ..r
                    }
                    .finish(injected.with(Flags::FI));
                }
                return resp;
            }
        }
        let choice = Choice {
            route: hit.route,
            rule: hit.rule,
            block: hit.block,
            subset,
            changes,
            grpc,
            // gRPC answers are read (`grpc-status`) on the way.
            raw: raw_answers && cors.is_none() && !grpc && !changes.changes_response(),
        };
        let result = proxy(&rt, conn, &mut parts, body, choice).await;
        let recorder = pending.0.take();
        match result {
            Ok((resp, exhausted)) => {
                let (mut parts, body) = resp.into_parts();
                changes.response(&mut parts.headers);
                if let Some((c, origin)) = cors {
                    c.decorate(origin, &mut parts.headers);
                }
                // A client placed just now keeps its place on its next requests.
                if let Some(cookie) = new_position
                    .zip(hit.rule.sticky.as_deref())
                    .and_then(|(p, sticky)| sticky.set_cookie(p))
                {
                    parts.headers.append(header::SET_COOKIE, cookie);
                }
                let fields = body.fields();
                let recorder = recorder.map(|r| Recorder {
                    code: parts.status.as_u16(),
                    response_bytes: head_size(parts.status, &parts.headers)
                        + fields.map_or(0, |f| f.text().len() as u64),
                    // An answer kept as text is never a gRPC request's.
                    grpc_status: body::grpc_status(protocol, &parts.headers).unwrap_or(""),
                    done_flags: if exhausted {
                        injected.with(Flags::URX)
                    } else {
                        injected
                    },
                    ..r
                });
                Response::from_parts(parts, ProxyBody::upstream(body, recorder, conn.stream_idle))
            }
            Err(e) => {
                tracing::debug!(flags = %e.flags(), error = %e, "request failed");
                let mut resp = error_response(&e, grpc);
                if let Some((c, origin)) = cors {
                    c.decorate(origin, resp.headers_mut());
                }
                if let Some(r) = recorder {
                    let (code, response_bytes) = (resp.status().as_u16(), answer_size(&resp));
                    Recorder {
                        code,
                        response_bytes,
                        grpc_status: body::grpc_status(protocol, resp.headers()).unwrap_or(""),
                        ..r
                    }
                    .finish(e.flags().with(injected));
                }
                resp
            }
        }
    }
}

/// A fault abort's answer, as Envoy's fault filter makes it: the status with the body
/// `fault filter abort`, or for a gRPC status an HTTP 200 carrying it.
fn fault_answer(abort: Abort) -> Response<ProxyBody> {
    const MESSAGE: &str = "fault filter abort";
    match abort {
        Abort::Http(status) => {
            let mut resp = Response::new(ProxyBody::fixed(Bytes::from_static(MESSAGE.as_bytes())));
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            resp
        }
        Abort::Grpc(code) => {
            let mut resp = Response::new(ProxyBody::fixed(Bytes::new()));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from_static(code));
            h.insert("grpc-message", HeaderValue::from_static(MESSAGE));
            resp
        }
    }
}

/// What a rule that answers itself sends: a redirect, or its fixed status and body.
fn local_answer(
    answer: &Answer,
    parts: &http::request::Parts,
    conn: &ConnInfo,
) -> Response<ProxyBody> {
    match answer {
        Answer::Direct { status, body } => {
            let mut resp = Response::new(ProxyBody::fixed(body.clone()));
            *resp.status_mut() = *status;
            if !body.is_empty() {
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            resp
        }
        Answer::Redirect(r) => {
            let scheme = conn.proto.to_str().unwrap_or("http");
            let mut resp = Response::new(ProxyBody::fixed(Bytes::new()));
            match r.location(parts, scheme, request_authority(parts)) {
                Some(location) => {
                    *resp.status_mut() = r.status;
                    resp.headers_mut().insert(header::LOCATION, location);
                }
                // A request whose own parts cannot make a URL (no Host at all).
                None => *resp.status_mut() = StatusCode::BAD_REQUEST,
            }
            resp
        }
    }
}

/// What routing chose for a request.
struct Choice<'a> {
    route: &'a Route,
    rule: &'a Rule,
    /// The rule's block that matched, whose path condition a prefix rewrite replaces.
    block: Option<&'a MatchBlock>,
    subset: &'a Subset,
    changes: HeaderChanges<'a>,
    /// A gRPC request.
    grpc: bool,
    /// The answer goes to the client as it came but for fields added: an HTTP/1.1 upstream's
    /// fields may stay out of a header map.
    raw: bool,
}

/// The header changes of the destination picked and of its rule: the destination's first,
/// then the rule's, in Envoy's order (a weighted cluster's, then its route's), so that the
/// rule's `set` wins over the destination's, as in Envoy by default.
#[derive(Clone, Copy)]
struct HeaderChanges<'a> {
    rule: Option<&'a Headers>,
    destination: Option<&'a Headers>,
}

impl HeaderChanges<'_> {
    fn request(&self, h: &mut http::HeaderMap) {
        for c in [self.destination, self.rule].into_iter().flatten() {
            c.request.apply(h);
        }
    }

    fn response(&self, h: &mut http::HeaderMap) {
        for c in [self.destination, self.rule].into_iter().flatten() {
            c.response.apply(h);
        }
    }

    /// Whether any rule changes the request's headers.
    fn changes_request(&self) -> bool {
        [self.destination, self.rule]
            .into_iter()
            .flatten()
            .any(|c| !c.request.is_empty())
    }

    /// Whether any rule changes the answer's headers.
    fn changes_response(&self) -> bool {
        [self.destination, self.rule]
            .into_iter()
            .flatten()
            .any(|c| !c.response.is_empty())
    }
}

/// Holds a request's recorder while the upstream is asked; dropped with it (client gone), it
/// records code 0 and `DC`.
struct Pending(Option<Recorder>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.finish(Flags::DC);
        }
    }
}

async fn proxy(
    rt: &Arc<Runtime>,
    conn: &ConnInfo,
    parts: &mut http::request::Parts,
    body: RequestBody,
    choice: Choice<'_>,
) -> Result<(Response<PooledBody>, bool), ProxyError> {
    let Choice {
        route,
        rule,
        block,
        subset,
        changes,
        grpc,
        raw,
    } = choice;
    let upgrade = headers::is_upgrade(parts) && allowed_upgrade(parts, route)?;
    if upgrade && subset.protocol == UpstreamProtocol::Http2 {
        return Err(ProxyError::UpgradeToHttp2);
    }
    let client_upgrade = if upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    // The rewrite looks at the request as it matched, before it is prepared for the upstream.
    let authority = rule.rewrite.as_deref().map(|rw| {
        if let Some(uri) = rw.path(block, parts) {
            parts.uri = uri;
        }
        rw.authority.clone()
    });
    let mut forwarded = headers::prepare_request_kept(parts, conn, upgrade);
    if let Some(host) = authority.flatten() {
        parts.headers.insert(header::HOST, host);
    }
    // A header rule, a hash policy on a header and a mirror see the head as the upstream gets
    // it, forwarding fields included; otherwise those stay out of the map and are written as
    // text after it.
    if changes.changes_request() || subset.balancer.hashes_header() || !rule.mirrors.is_empty() {
        // Room for them and a rule's own, made once.
        parts.headers.reserve(FORWARDING_AND_RULE_FIELDS);
        std::mem::take(&mut forwarded).into_map(&mut parts.headers);
    }
    changes.request(&mut parts.headers);
    // Read off the head as the upstream will get it, as Envoy hashes its request headers.
    let affinity = subset.balancer.affinity(parts, conn.client_ip.as_bytes());
    let body = IdleBody::new(body, conn.stream_idle);
    let body = if upgrade || rule.mirrors.is_empty() {
        UpstreamBody::Stream(body)
    } else {
        mirror::copy(rt, &rule.mirrors, parts, body).await?
    };
    // An upgrade is never retried: its upstream may have switched already.
    let retry = (!upgrade).then_some(&rule.retry);
    let added = forwarded.added();
    let sent = forward_hashed(
        subset,
        parts,
        body,
        &added,
        retry,
        grpc,
        affinity.hash,
        raw && !upgrade,
    );
    let (mut resp, exhausted) = match rule.timeout {
        Some(t) => tokio::time::timeout(t, sent)
            .await
            .map_err(|_| ProxyError::UpstreamTimeout)??,
        None => sent.await?,
    };
    respond(&mut resp, client_upgrade);
    // A client given a hash cookie just now sends it back next time.
    if let Some(cookie) = affinity.set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok((resp, exhausted))
}

/// Whether an upgrade the request asks for is passed through. `h2c` never is: the request is
/// served as plain HTTP/1.1 without it, as Envoy does, since a switch would carry the
/// connection's next requests to the upstream unrouted. Other protocols the route does not
/// allow are refused.
fn allowed_upgrade(parts: &mut http::request::Parts, route: &Route) -> Result<bool, ProxyError> {
    let Some(value) = parts.headers.get(header::UPGRADE) else {
        return Ok(false);
    };
    if crate::http1::head::has_token(value.as_bytes(), b"h2c") {
        parts.headers.remove(header::UPGRADE);
        parts.headers.remove("http2-settings");
        return Ok(false);
    }
    if route.allows_upgrade(value.as_bytes()) {
        Ok(true)
    } else {
        Err(ProxyError::UpgradeRefused)
    }
}

/// `grpc` for gRPC requests (Istio's `request_protocol`), else `http`.
fn request_protocol(headers: &http::HeaderMap) -> &'static str {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        "grpc"
    } else {
        "http"
    }
}

/// Size of a request as HTTP/1.1 text: request line, headers, and the declared body length.
fn request_size(parts: &http::request::Parts) -> u64 {
    let line = parts.method.as_str().len()
        + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + 11;
    let body = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    (line + headers_size(&parts.headers)) as u64 + body
}

/// Size of a response head as HTTP/1.1 text.
fn head_size(status: StatusCode, headers: &http::HeaderMap) -> u64 {
    let line = 13 + status.canonical_reason().map_or(0, str::len) + 2;
    (line + headers_size(headers)) as u64
}

fn headers_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + 2
}

/// Size of an answer the gateway made itself: head and fixed body.
fn answer_size(resp: &Response<ProxyBody>) -> u64 {
    head_size(resp.status(), resp.headers()) + resp.body().size_hint().exact().unwrap_or(0)
}

/// [`forward_hashed`] without a key: the subset's `load_balancer` picks.
pub(crate) async fn forward(
    subset: &Subset,
    req: Request<UpstreamBody>,
    retry: Option<&Retry>,
    grpc: bool,
) -> Result<(Response<PooledBody>, bool), ProxyError> {
    let (mut head, body) = req.into_parts();
    forward_hashed(
        subset,
        &mut head,
        body,
        &Added::default(),
        retry,
        grpc,
        None,
        false,
    )
    .await
}

/// Sends to an endpoint of the subset: the key's when `hash` is given, else one the subset's
/// `load_balancer` picks. A connection that can't be made moves the request to the next
/// endpoint (nothing was sent). An answer that `retry` retries (a 503, by default) sends it
/// again to the next endpoint, up to its attempts, when the request body can be sent again
/// (none, or held in memory) and the subset's retry budget allows. Also true when the last
/// answer was one to retry but no retry was left (Envoy's `URX`). `grpc`: the request is gRPC,
/// whose answers' `grpc-status` `retry_on` may name (it must not be `raw` then). `raw`: the
/// answer's fields may stay out of its header map ([`PooledBody::fields`]). `added`: fields
/// the request gets besides its map's, on every try ([`headers::Forwarded`]).
// The request's parts apart, so that the head is lent rather than moved through each layer.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn forward_hashed(
    subset: &Subset,
    head: &mut http::request::Parts,
    mut body: UpstreamBody,
    added: &Added<'_>,
    retry: Option<&Retry>,
    grpc: bool,
    hash: Option<u64>,
    raw: bool,
) -> Result<(Response<PooledBody>, bool), ProxyError> {
    let endpoints = subset.balancer.endpoints();
    let Some(mut order) = subset.balancer.order(hash, &mut rand::rng()) else {
        return Err(ProxyError::NoHealthyUpstream);
    };
    let circuit = &subset.circuit;
    // Held until the answer's body ends.
    let request = circuit.request().map_err(|full| {
        circuit.events.overflow.inc();
        ProxyError::UpstreamOverflow(format!(
            "the subset {} has its {} requests in flight (connection_pool.http2_max_requests)",
            subset.name, full.max
        ))
    })?;
    // The head is lent to each try. HTTP/2 hands it to h2, so only an HTTP/1.1 subset retries.
    let retry = retry.filter(|r| r.attempts > 0 && subset.protocol == UpstreamProtocol::Http1);
    // The body again for each retry; none when it cannot be sent twice.
    let replay = retry.and_then(|_| body.replay());
    let mut retries = match (&replay, retry) {
        (Some(_), Some(r)) => r.attempts,
        _ => 0,
    };
    // The retry in flight's place in the budget.
    let mut _retrying = None;
    let per_try = retry.and_then(|r| r.per_try_timeout);
    // After a failed connect, move on to endpoints not tried yet (the pick may repeat itself).
    let mut connects = endpoints.len().min(MAX_CONNECT_ATTEMPTS);
    // Tries that could not connect.
    let mut tries_connecting = 0;
    loop {
        let endpoint = &endpoints[subset.balancer.next(&mut order, |e| serves(subset, e))];
        let sent = endpoint.send(head, added, body, circuit, raw);
        let sent = match per_try {
            Some(t) => tokio::time::timeout(t, sent)
                .await
                .unwrap_or(Err(SendError::TimedOut)),
            None => sent.await,
        };
        if let Some(policy) = &subset.outlier {
            let outcome = match &sent {
                Ok(resp) if resp.status().as_u16() >= 500 => {
                    Some(Outcome::Status(resp.status().as_u16()))
                }
                Ok(_) => Some(Outcome::Success),
                Err(
                    SendError::Connect { .. }
                    | SendError::Reset(_)
                    | SendError::Protocol(_)
                    | SendError::TimedOut,
                ) => Some(Outcome::Local),
                Err(_) => None,
            };
            if let Some(outcome) = outcome {
                note(subset, endpoint, policy, outcome);
            }
        }
        // Whether this try's failure or answer is one to retry.
        let wanted = match (&sent, retry) {
            (_, None) => false,
            (Err(SendError::Reset(_)), Some(r)) => r.on.reset,
            (Err(SendError::TimedOut), Some(r)) => r.retries_timeout(),
            (Ok(resp), Some(r)) => {
                let status = resp.status().as_u16();
                let grpc = grpc
                    .then(|| resp.headers().get("grpc-status"))
                    .flatten()
                    .map(|v| v.as_bytes());
                r.retries_answer(status, grpc)
            }
            (Err(_), Some(_)) => false,
        };
        if wanted && retries > 0 {
            let again = replay.as_ref().and_then(UpstreamBody::replay);
            if let Some(again) = again {
                let active = endpoints.iter().map(|e| e.in_flight()).sum();
                // The try before is over: its place in the budget is free.
                _retrying = None;
                if let Some(held) = circuit.retry(active) {
                    retries -= 1;
                    _retrying = Some(held);
                    match sent {
                        Ok(resp) => {
                            tracing::debug!(status = %resp.status(), endpoint = %endpoint.addr(), "retrying on the next endpoint");
                            // Boxed: rare, and every request's future would otherwise
                            // reserve room for it.
                            Box::pin(discard(resp)).await;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, endpoint = %endpoint.addr(), "try failed; retrying on the next endpoint");
                        }
                    }
                    body = again;
                    continue;
                }
                // Over budget: no retry left.
                retries = 0;
            }
        }
        // URX only when retries were possible and ran out.
        let exhausted = wanted && replay.is_some();
        let last = match sent {
            Ok(mut resp) => {
                if let Some(held) = request {
                    resp.body_mut().hold(held);
                }
                return Ok((resp, exhausted));
            }
            Err(SendError::Reset(e)) => ProxyError::UpstreamReset(e),
            Err(SendError::Protocol(e)) => ProxyError::UpstreamProtocol(e),
            Err(SendError::TimedOut) => ProxyError::UpstreamTimeout,
            Err(SendError::ClientBody(e)) => return Err(ProxyError::client_body(e)),
            Err(SendError::Overflow(e)) => {
                circuit.events.overflow.inc();
                return Err(ProxyError::UpstreamOverflow(e));
            }
            Err(SendError::Connect {
                endpoint,
                reason,
                body: back,
            }) => {
                connects -= 1;
                tries_connecting += 1;
                if connects > 0 {
                    body = *back;
                    continue;
                }
                let failed = ProxyError::ConnectFailure(format!("{endpoint}: {reason}"));
                // Connect failures are always retried on the next endpoint; when the rule
                // allows retries and more than one try failed so, they ran out (`UF,URX`).
                if retry.is_some() && tries_connecting > 1 {
                    return Err(ProxyError::RetriesExhausted(Box::new(failed)));
                }
                return Err(failed);
            }
        };
        return Err(if exhausted {
            ProxyError::RetriesExhausted(Box::new(last))
        } else {
            last
        });
    }
}

/// Whether outlier detection lets `endpoint` take requests now (always, without it).
fn serves(subset: &Subset, endpoint: &Endpoint) -> bool {
    if subset.outlier.is_none() {
        return true;
    }
    match endpoint.outlier().check() {
        Standing::In => true,
        Standing::Out => false,
        Standing::Returned => {
            tracing::info!(
                endpoint = %endpoint.addr(),
                subset = %subset.name,
                "outlier detection: endpoint back in"
            );
            true
        }
    }
}

/// Counts a try at `endpoint`, and ejects it when that makes too many failures in a row, it is
/// not out already, and no more than `max_ejection_percent` of the subset is out.
fn note(subset: &Subset, endpoint: &Endpoint, policy: &OutlierPolicy, outcome: Outcome) {
    // Answers to requests sent before an ejection do not eject the endpoint again.
    if !endpoint.outlier().record(policy, outcome) || endpoint.outlier().is_ejected() {
        return;
    }
    let endpoints = subset.balancer.endpoints();
    let out = endpoints
        .iter()
        .filter(|e| e.outlier().is_ejected())
        .count();
    if out * 100 >= endpoints.len() * policy.max_ejection_percent as usize && out > 0 {
        return;
    }
    let length = endpoint.outlier().eject(policy);
    subset.circuit.events.ejections.inc();
    tracing::warn!(
        endpoint = %endpoint.addr(),
        subset = %subset.name,
        seconds = length.as_secs_f64(),
        "outlier detection: endpoint ejected"
    );
}

/// Largest answer to a retried request that is read to its end, so that its connection goes
/// back to the pool; a larger one (or one slower than [`DISCARD_WAIT`]) closes it.
const DISCARD_BYTES: u64 = 16 * 1024;
const DISCARD_WAIT: Duration = Duration::from_millis(100);

/// Drops an answer that is retried, reading it to its end first when it is small.
async fn discard(resp: Response<PooledBody>) {
    use http_body_util::BodyExt;
    let body = resp.into_body();
    if body.size_hint().upper().is_some_and(|n| n <= DISCARD_BYTES) {
        let _ = tokio::time::timeout(DISCARD_WAIT, body.collect()).await;
    }
}

/// Readies an upstream's answer for the client where it lies (taken apart and returned, it was
/// copied twice more: BENCHMARKS.md, issue 17).
fn respond(resp: &mut Response<PooledBody>, client_upgrade: Option<OnUpgrade>) {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let (Some(client), Some(upstream)) = (client_upgrade, resp.body_mut().take_upgrade()) {
            tokio::spawn(tunnel(client, upstream));
        }
    }
    headers::prepare_response(resp.headers_mut(), switching);
}

/// Copies bytes both ways between an upgraded client and upstream (websocket and the like).
/// `early` holds what the upstream sent right behind its 101 head; the client's early bytes
/// come with its connection.
async fn tunnel(client: OnUpgrade, (mut upstream, early): (Io, Bytes)) {
    let Some(mut client) = client.wait().await else {
        return;
    };
    if !client.early.is_empty() && upstream.write_all(&client.early).await.is_err() {
        return;
    }
    if !early.is_empty() && client.io.write_all(&early).await.is_err() {
        return;
    }
    let result = tokio::io::copy_bidirectional(&mut client.io, &mut upstream).await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

/// The gateway's own answer for a failure. A gRPC client gets it in gRPC form, as Envoy sends
/// it: HTTP 200, no body, and the failure in `grpc-status` and `grpc-message`.
pub fn error_response(e: &ProxyError, grpc: bool) -> Response<ProxyBody> {
    if grpc {
        let mut resp = Response::new(ProxyBody::fixed(Bytes::new()));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static(e.grpc_status()));
        let message = e.body().trim_end();
        h.insert("grpc-message", HeaderValue::from_static(message));
        return resp;
    }
    let mut resp = Response::new(ProxyBody::fixed(e.body()));
    *resp.status_mut() = e.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
