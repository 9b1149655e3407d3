//! `GET /healthz/ready` on the readiness address: 200 while serving; 503 while draining, and in
//! Kubernetes mode until the objects have been read once.

use crate::control::Control;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

fn answer(control: &Control, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz/ready") if control.is_draining() => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        (&Method::GET | &Method::HEAD, "/healthz/ready") if !control.is_synced() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first full list of the Kubernetes objects\n",
        ),
        (&Method::GET | &Method::HEAD, "/healthz/ready") => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}

/// Serves readiness on `listener` until `stop` turns true. It is bound only once the first
/// config is live, so before that the probe's connection is refused (not ready).
pub async fn serve(listener: TcpListener, control: Arc<Control>, stop: watch::Receiver<bool>) {
    super::endpoint::serve(listener, stop, move |req| {
        std::future::ready(answer(&control, &req))
    })
    .await;
}
