//! The metrics endpoint: `GET /stats/prometheus` (Istio's path) and `GET /metrics`.

use crate::control::Control;
use crate::runtime::Runtime;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::hub::{StateLabel, SubsetLabel};

/// The exposition of `rt`, with the gauges that are read at scrape time brought up to date.
pub fn scrape(rt: &Runtime) -> String {
    let (mut idle, mut active) = (0i64, 0i64);
    for ep in rt
        .services
        .iter()
        .flat_map(|s| &s.subsets)
        .flat_map(|s| s.balancer.endpoints())
    {
        idle += i64::try_from(ep.idle_count()).unwrap_or(0);
        active += i64::try_from(ep.in_flight()).unwrap_or(0);
    }
    let own = &rt.hub.own;
    for service in rt.services.iter() {
        for subset in service.subsets.iter().filter(|s| s.outlier.is_some()) {
            let out = subset
                .balancer
                .endpoints()
                .iter()
                .filter(|e| e.outlier().is_ejected())
                .count();
            let label = SubsetLabel {
                service: service.name.to_string(),
                subset: subset.name.to_string(),
            };
            own.ejected
                .get_or_create(&label)
                .set(i64::try_from(out).unwrap_or(0));
        }
    }
    own.upstream_connections
        .get_or_create(&StateLabel { state: "idle" })
        .set(idle);
    own.upstream_connections
        .get_or_create(&StateLabel { state: "active" })
        .set(active);
    rt.hub.encode()
}

fn answer(control: &Control, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/stats/prometheus" | "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(scrape(&control.runtime().load()))));
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
