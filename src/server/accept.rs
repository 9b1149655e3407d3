//! Accepting clients, shared by the proxy listeners and the side ports: never more than a
//! listener's connection limit open at once, a few accepts per turn, and failures logged
//! sparingly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Connections accepted in a row before the accept loop lets the open connections run.
const ACCEPTS_PER_TURN: u32 = 8;

/// A listening socket and the slots of the connections it may have open.
pub struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    failures: AcceptFailures,
    accepted: u32,
}

impl Acceptor {
    /// Accepts on `listener`, at most `max_connections` open at once.
    pub fn new(listener: TcpListener, max_connections: usize) -> Self {
        Acceptor {
            listener,
            slots: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            failures: AcceptFailures::default(),
            accepted: 0,
        }
    }

    /// The next client, with its slot (given back when dropped); `None` once `stop` changes.
    /// At the limit it stops accepting: new clients wait in the kernel's backlog.
    pub async fn next(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
        // A few accepts per turn, then the connections already open run: a flood of new
        // connections (each cheap to refuse, but thousands a second) cannot starve the clients
        // being served. HAProxy bounds its accepts per turn the same way (`tune.maxaccept`).
        self.accepted = self.accepted.wrapping_add(1);
        if self.accepted % ACCEPTS_PER_TURN == 0 {
            tokio::task::yield_now().await;
        }
        loop {
            let accepted = tokio::select! {
                accepted = async {
                    let permit = self.slots.clone().acquire_owned().await;
                    (permit, self.listener.accept().await)
                } => accepted,
                _ = stop.changed() => return None,
            };
            match accepted {
                (Ok(permit), Ok((stream, peer))) => return Some((permit, stream, peer)),
                (_, Err(e)) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    self.failures.note(&e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (Err(_), _) => return None,
            }
        }
    }
}

/// Failed accepts, logged at most once every 10 s so that a descriptor shortage does not
/// flood the log.
#[derive(Default)]
struct AcceptFailures {
    last_log: Option<Instant>,
    unlogged: u64,
}

impl AcceptFailures {
    fn note(&mut self, e: &std::io::Error) {
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|t| now < t + Duration::from_secs(10))
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(error = %e, more = self.unlogged, "accept failed");
        self.last_log = Some(now);
        self.unlogged = 0;
    }
}
