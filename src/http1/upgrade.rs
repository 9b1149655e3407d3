//! A connection handed over after a `101 Switching Protocols` (websocket and the like): the
//! HTTP/1.1 server gives up its socket, with any bytes the client sent behind its request.

use bytes::Bytes;
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// A client's byte stream: plain TCP or TLS.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

/// The client's connection after the switch.
pub struct Upgraded {
    /// The socket.
    pub io: Box<dyn Transport>,
    /// What the client sent after its request head, already read.
    pub early: Bytes,
}

impl fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgraded")
            .field("early", &self.early.len())
            .finish_non_exhaustive()
    }
}

/// The promise of the client's connection, in the extensions of a request that asks for an
/// upgrade; it comes once the `101` head has been written, and never if the answer is another.
/// Clones share the one promise (request extensions must be cloneable); the first to wait
/// gets the connection.
#[derive(Debug, Clone)]
pub struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

/// The server's side of [`OnUpgrade`].
#[derive(Debug)]
pub struct Handover(oneshot::Sender<Upgraded>);

impl OnUpgrade {
    /// A promise and the means to keep it.
    pub fn pair() -> (Handover, OnUpgrade) {
        let (tx, rx) = oneshot::channel();
        (Handover(tx), OnUpgrade(Arc::new(Mutex::new(Some(rx)))))
    }

    /// The connection, once switched; `None` if it never is.
    pub async fn wait(self) -> Option<Upgraded> {
        let rx = self.0.lock().ok()?.take()?;
        rx.await.ok()
    }
}

impl Handover {
    /// Gives the connection to whoever waits for it; `false` when nobody does any more.
    pub fn send(self, upgraded: Upgraded) -> bool {
        self.0.send(upgraded).is_ok()
    }
}
