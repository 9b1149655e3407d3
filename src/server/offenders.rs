//! Client addresses that recently broke a limit, and how long their next connections wait.
//!
//! The kernel's accept queue is first in, first out: a client that reconnects as soon as it is
//! answered 431 (or cut at a deadline) keeps hundreds of connections ahead of everybody else
//! in it, and each costs the worker a full read of a 60 KiB head. Refusing such an address
//! outright would also refuse the well-behaved clients behind the same address (a NAT, a load
//! balancer without the PROXY protocol). So its new connections are accepted at once, which
//! keeps the queue short, but read only after a delay that doubles with each offence, up to
//! the listener's `tarpit`. An address that stays clean for [`FORGIVE_AFTER`] is forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The delay after a first offence; each further one doubles it.
const FIRST_DELAY: Duration = Duration::from_millis(10);
/// How long an address is remembered after its last offence.
pub const FORGIVE_AFTER: Duration = Duration::from_secs(10);
/// Addresses remembered at once. Past it, new offenders are not recorded until old ones are
/// forgotten: a flood from more addresses than this is met by the other limits alone.
const MAX_ADDRESSES: usize = 65_536;

/// One address's record.
#[derive(Debug, Clone, Copy)]
struct Record {
    offences: u32,
    last: Instant,
}

/// The offending addresses of one listener.
#[derive(Debug)]
pub struct Offenders {
    max_delay: Duration,
    records: Mutex<HashMap<IpAddr, Record>>,
}

impl Offenders {
    /// Delays of at most `max_delay`; zero turns the tarpit off.
    pub fn new(max_delay: Duration) -> Self {
        Offenders {
            max_delay,
            records: Mutex::new(HashMap::new()),
        }
    }

    /// How long a new connection from `ip` waits before it is read, if at all.
    pub fn delay(&self, ip: IpAddr) -> Option<Duration> {
        self.delay_at(ip, Instant::now())
    }

    fn delay_at(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.max_delay.is_zero() {
            return None;
        }
        let records = self.records.lock().ok()?;
        let r = records.get(&ip)?;
        if now.saturating_duration_since(r.last) >= FORGIVE_AFTER {
            return None;
        }
        let doubled = FIRST_DELAY.saturating_mul(1 << (r.offences - 1).min(16));
        Some(doubled.min(self.max_delay))
    }

    /// Notes an offence by `ip`: a head over the limit, a deadline missed, a reset flood.
    pub fn offence(&self, ip: IpAddr) {
        self.offence_at(ip, Instant::now());
    }

    fn offence_at(&self, ip: IpAddr, now: Instant) {
        if self.max_delay.is_zero() {
            return;
        }
        let Ok(mut records) = self.records.lock() else {
            return;
        };
        if records.len() >= MAX_ADDRESSES && !records.contains_key(&ip) {
            records.retain(|_, r| now.saturating_duration_since(r.last) < FORGIVE_AFTER);
            if records.len() >= MAX_ADDRESSES {
                return;
            }
        }
        let r = records.entry(ip).or_insert(Record {
            offences: 0,
            last: now,
        });
        if now.saturating_duration_since(r.last) >= FORGIVE_AFTER {
            r.offences = 0;
        }
        r.offences = r.offences.saturating_add(1);
        r.last = now;
    }

    /// Addresses remembered now (forgotten ones may linger until the table fills).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.records.lock().map(|r| r.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn delays_double_per_offence_up_to_the_tarpit_and_are_forgiven() {
        let o = Offenders::new(Duration::from_millis(100));
        let t = Instant::now();
        assert_eq!(
            o.delay_at(ip(1), t),
            None,
            "a clean address waits for nothing"
        );
        let mut seen = Vec::new();
        for _ in 0..6 {
            o.offence_at(ip(1), t);
            seen.push(o.delay_at(ip(1), t).unwrap().as_millis());
        }
        assert_eq!(seen, [10, 20, 40, 80, 100, 100]);
        assert_eq!(o.delay_at(ip(2), t), None, "only the offender waits");
        let later = t + FORGIVE_AFTER;
        assert_eq!(
            o.delay_at(ip(1), later),
            None,
            "forgiven after a clean spell"
        );
        o.offence_at(ip(1), later);
        assert_eq!(o.delay_at(ip(1), later).unwrap().as_millis(), 10);
    }

    #[test]
    fn a_zero_tarpit_records_nothing() {
        let o = Offenders::new(Duration::ZERO);
        o.offence(ip(1));
        assert_eq!(o.delay(ip(1)), None);
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn the_table_is_bounded_and_makes_room_from_forgiven_addresses() {
        let o = Offenders::new(Duration::from_secs(1));
        let t = Instant::now();
        for i in 0..MAX_ADDRESSES as u32 {
            o.offence_at(IpAddr::from(i.to_be_bytes()), t);
        }
        let extra = IpAddr::from([255, 255, 255, 255]);
        o.offence_at(extra, t);
        assert_eq!(o.len(), MAX_ADDRESSES);
        assert_eq!(o.delay_at(extra, t), None, "full: not recorded");
        let later = t + FORGIVE_AFTER;
        o.offence_at(extra, later);
        assert_eq!(o.len(), 1, "the forgiven addresses made room");
        assert!(o.delay_at(extra, later).is_some());
    }
}
