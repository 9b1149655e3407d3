//! The small HTTP servers beside the data plane (admin API, readiness, metrics): HTTP/1.1 or h2c,
//! one handler, served until told to stop, under the fixed limits of [`Limits::endpoint`].

use super::accept::Acceptor;
use super::conn::Http;
use super::limits::Limits;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// Serves `handler` on `listener` until `stop` turns true.
pub async fn serve<F, Fut>(listener: TcpListener, mut stop: watch::Receiver<bool>, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let http = Arc::new(Http::new(Limits::endpoint()));
    let mut acceptor = Acceptor::new(listener, http.limits().max_connections);
    while let Some((permit, stream, _)) = acceptor.next(&mut stop).await {
        let deadline = Instant::now() + http.limits().first_byte_timeout;
        let (handler, http, mut stop) = (handler.clone(), http.clone(), stop.clone());
        tokio::spawn(async move {
            super::conn::serve(stream, deadline, &http, None, &mut stop, None, handler).await;
            drop(permit);
        });
    }
}
