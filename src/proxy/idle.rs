//! The stream idle timeout (Envoy's `stream_idle_timeout`): a request or response body that
//! makes no progress for the listener's limit is cut off, so a client or upstream that stalls
//! mid-body cannot hold a connection and a pooled upstream connection forever.
//!
//! The timer costs nothing while a body is ready: it is armed only when a poll finds nothing to
//! send, and then runs until the next frame. A body whose bytes are all at hand never sets one.

use crate::upstream::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The error of a body cut off by the stream idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no body data for {0:?} (stream idle timeout)")]
pub struct StreamIdle(pub Duration);

/// Whether `e` is the stream idle timeout.
pub fn is_stream_idle(e: &(dyn std::error::Error + 'static)) -> bool {
    e.is::<StreamIdle>()
}

/// A body's idle timer. Small (16 bytes), as it travels inside every body.
#[derive(Debug)]
pub struct Idle {
    /// Made at the body's first wait, and reset at each later one.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The limit in milliseconds; 0: none.
    limit_ms: u32,
    /// Whether `sleep` runs for the current wait.
    armed: bool,
}

impl Idle {
    /// A timer for `limit` (to the millisecond, at least 1); `None` never fires.
    pub fn new(limit: Option<Duration>) -> Self {
        let limit_ms = limit.map_or(0, |d| d.as_millis().clamp(1, u128::from(u32::MAX)) as u32);
        Idle {
            sleep: None,
            limit_ms,
            armed: false,
        }
    }

    /// Notes a poll's outcome: a frame (or the end) disarms the timer; a wait arms it, and
    /// `Err` comes back once the wait has lasted the whole limit.
    pub fn check<T>(&mut self, polled: &Poll<T>, cx: &mut Context<'_>) -> Result<(), StreamIdle> {
        if self.limit_ms == 0 {
            return Ok(());
        }
        let limit = Duration::from_millis(u64::from(self.limit_ms));
        if polled.is_ready() {
            self.armed = false;
            return Ok(());
        }
        if !self.armed {
            let deadline = Instant::now() + limit;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let sleep = self.sleep.as_mut().expect("armed above");
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Err(StreamIdle(limit)),
            Poll::Pending => Ok(()),
        }
    }
}

/// A client's request body under the stream idle timeout.
#[derive(Debug)]
pub struct IdleBody<B> {
    inner: B,
    idle: Idle,
}

impl<B> IdleBody<B> {
    /// The body under the timeout.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// `inner`, cut off after `limit` without progress.
    pub fn new(inner: B, limit: Option<Duration>) -> Self {
        IdleBody {
            inner,
            idle: Idle::new(limit),
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Err(e) = this.idle.check(&polled, cx) {
            return Poll::Ready(Some(Err(e.into())));
        }
        let frame = ready!(polled);
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body fed by a channel: each message is a frame, and the closed channel is the end.
    struct Fed(mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
        }
    }

    #[test]
    fn the_timer_is_small() {
        assert_eq!(std::mem::size_of::<Idle>(), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_longer_than_the_limit_is_cut_off() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = IdleBody::new(Fed(rx), Some(Duration::from_secs(5)));
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "first");
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(is_stream_idle(&*err), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_limit() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = IdleBody::new(Fed(rx), Some(Duration::from_secs(5)));
        tokio::spawn(async move {
            // 4 s apart, 20 s in all: never 5 s without a frame.
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            got += frame.unwrap().into_data().unwrap().len();
        }
        assert_eq!(got, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn no_limit_waits_as_long_as_it_takes() {
        let (tx, rx) = mpsc::channel(4);
        let mut body = IdleBody::new(Fed(rx), None);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            tx.send(Bytes::from_static(b"late")).await.unwrap();
        });
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "late");
    }
}
