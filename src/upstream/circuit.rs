//! A subset's circuit breakers, as Istio's `connectionPool` sets Envoy's for a cluster: bounds
//! on its connections, on the requests waiting for one, on its active requests and on its
//! retries. Past a bound a request is answered `503` with flag `UO` at once, instead of
//! queueing behind a subset that cannot keep up.
//!
//! The retry budget holds even when no bound is set: retries in flight stay under 20% of the
//! subset's active requests (at least 3 at a time), as Envoy's `retry_budget`, so that a
//! failing subset does not get up to three times its load.

use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Share of a subset's active requests that may be retries in flight (Envoy's
/// `retry_budget.budget_percent` default).
pub const RETRY_BUDGET_PERCENT: usize = 20;
/// Retries in flight always allowed, whatever the share (`min_retry_concurrency`).
pub const RETRY_BUDGET_MIN: usize = 3;

/// A service's subset-wide bounds (`policy.connection_pool`); `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    /// HTTP/1.1 connections open to the subset's endpoints at once (`max_connections`).
    pub max_connections: Option<usize>,
    /// Requests waiting for a connection at once (`http1_max_pending_requests`).
    pub max_pending: Option<usize>,
    /// Requests in flight to the subset at once, either protocol (`http2_max_requests`).
    pub max_requests: Option<usize>,
    /// Retries in flight to the subset at once (`max_retries`), on top of the budget.
    pub max_retries: Option<usize>,
}

/// The counters a subset's events add to (`splitgate_upstream_retries_total` and the like).
#[derive(Debug, Clone, Default)]
pub struct Events {
    /// Retries sent.
    pub retries: Counter,
    /// Retries the budget or `max_retries` refused.
    pub retry_overflow: Counter,
    /// Requests answered `UO` at a bound.
    pub overflow: Counter,
    /// Endpoints ejected by outlier detection.
    pub ejections: Counter,
}

/// A subset's live counts against its [`Limits`]. Carried from one runtime to the next while
/// its service, subset and limits stay the same, so that the connections already open count.
#[derive(Debug, Default)]
pub struct Circuit {
    /// The bounds.
    pub limits: Limits,
    /// Where its events are counted.
    pub events: Events,
    connections: AtomicUsize,
    pending: AtomicUsize,
    requests: AtomicUsize,
    retries: AtomicUsize,
    /// Signalled when one of its connections closes.
    freed: Notify,
}

/// Takes one unit of `count` if that keeps it at or under `max`.
fn take(count: &AtomicUsize, max: usize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// A subset at its bound on requests in flight.
#[derive(Debug)]
pub struct Full {
    /// The bound.
    pub max: usize,
}

impl Circuit {
    /// A circuit with no connection, request or retry counted yet.
    pub fn new(limits: Limits, events: Events) -> Arc<Self> {
        Arc::new(Circuit {
            limits,
            events,
            ..Default::default()
        })
    }

    /// The right to open one more connection, when the subset is under `max_connections`.
    pub fn connection(self: &Arc<Self>) -> Option<Held> {
        match self.limits.max_connections {
            None => Some(Held::new(self, Kind::Connection, false)),
            Some(max) => {
                take(&self.connections, max).then(|| Held::new(self, Kind::Connection, true))
            }
        }
    }

    /// A place among the requests waiting for a connection, when there is one.
    pub fn pending(self: &Arc<Self>) -> Option<Held> {
        match self.limits.max_pending {
            None => Some(Held::new(self, Kind::Pending, false)),
            Some(max) => take(&self.pending, max).then(|| Held::new(self, Kind::Pending, true)),
        }
    }

    /// A place among the subset's active requests, held until dropped; `Ok(None)` when there
    /// is no bound (nothing is counted), [`Full`] when `max_requests` are in flight.
    pub fn request(self: &Arc<Self>) -> Result<Option<Held>, Full> {
        let Some(max) = self.limits.max_requests else {
            return Ok(None);
        };
        if take(&self.requests, max) {
            Ok(Some(Held::new(self, Kind::Request, true)))
        } else {
            Err(Full { max })
        }
    }

    /// A place for one retry, within the budget: retries in flight under
    /// [`RETRY_BUDGET_PERCENT`] of `active` requests (at least [`RETRY_BUDGET_MIN`]) and under
    /// `max_retries`.
    pub fn retry(self: &Arc<Self>, active: usize) -> Option<Held> {
        let budget = (active * RETRY_BUDGET_PERCENT / 100).max(RETRY_BUDGET_MIN);
        let max = self.limits.max_retries.map_or(budget, |m| m.min(budget));
        if take(&self.retries, max) {
            self.events.retries.inc();
            Some(Held::new(self, Kind::Retry, true))
        } else {
            self.events.retry_overflow.inc();
            None
        }
    }

    /// Connections counted against `max_connections` now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// A future that completes when one of the subset's connections closes. Create it (and
    /// enable it) before looking for a connection, so that none closing meanwhile is missed.
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connection,
    Pending,
    Request,
    Retry,
}

/// One unit of a circuit's count, given back when dropped.
#[derive(Debug)]
pub struct Held {
    circuit: Arc<Circuit>,
    kind: Kind,
    counted: bool,
}

impl Held {
    fn new(circuit: &Arc<Circuit>, kind: Kind, counted: bool) -> Self {
        Held {
            circuit: circuit.clone(),
            kind,
            counted,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let c = &self.circuit;
        let count = match self.kind {
            Kind::Connection => &c.connections,
            Kind::Pending => &c.pending,
            Kind::Request => &c.requests,
            Kind::Retry => &c.retries,
        };
        count.fetch_sub(1, Ordering::AcqRel);
        if self.kind == Kind::Connection {
            c.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(limits: Limits) -> Arc<Circuit> {
        Circuit::new(limits, Events::default())
    }

    #[test]
    fn a_bound_gives_out_that_many_places_and_takes_them_back_when_dropped() {
        let c = circuit(Limits {
            max_connections: Some(2),
            ..Limits::default()
        });
        let a = c.connection().expect("first");
        let _b = c.connection().expect("second");
        assert!(c.connection().is_none(), "a third is over the bound");
        assert_eq!(c.connections(), 2);
        drop(a);
        assert!(c.connection().is_some(), "a place came free");
    }

    #[test]
    fn unbounded_counts_nothing() {
        let c = circuit(Limits::default());
        let held: Vec<_> = (0..100).filter_map(|_| c.connection()).collect();
        assert_eq!(held.len(), 100);
        assert_eq!(c.connections(), 0);
        assert!(
            matches!(c.request(), Ok(None)),
            "no bound on requests: nothing to hold"
        );
    }

    #[test]
    fn the_retry_budget_is_a_fifth_of_active_requests_and_at_least_three() {
        let c = circuit(Limits::default());
        let few: Vec<_> = (0..5).filter_map(|_| c.retry(4)).collect();
        assert_eq!(few.len(), 3, "at least 3 at a time");
        drop(few);
        let many: Vec<_> = (0..100).filter_map(|_| c.retry(100)).collect();
        assert_eq!(many.len(), 20, "20% of 100 active requests");
        assert_eq!(c.events.retries.get(), 23);
        assert_eq!(c.events.retry_overflow.get(), 82);
        drop(many);
        let c = circuit(Limits {
            max_retries: Some(1),
            ..Limits::default()
        });
        let one: Vec<_> = (0..3).filter_map(|_| c.retry(100)).collect();
        assert_eq!(one.len(), 1, "max_retries bounds the budget");
    }
}
