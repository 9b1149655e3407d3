//! The metrics endpoint: `GET /stats/prometheus` (Istio's path) and `GET /metrics`.

use crate::control::Control;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

fn answer(control: &Control, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats/prometheus" | "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(
                control.runtime().load().exposition(),
            )));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        _ => {
            let mut resp = Response::new(Full::new(Bytes::from_static(
                b"not found: try /stats/prometheus\n",
            )));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp
        }
    }
}

/// Serves metrics on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, control: Arc<Control>, stop: watch::Receiver<bool>) {
    crate::server::endpoint::serve(listener, stop, move |req| {
        std::future::ready(answer(&control, &req))
    })
    .await;
}
