//! Per source address: handshakes in progress (one host cannot hold more than its share of the
//! node's unauthenticated connections, whatever it sends) and new connections per second (one
//! host cannot make the node spend its CPU on TLS handshakes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::bounded::Generations;

/// The address limits apply to: IPv4 as it is, IPv6 by its /64 (one host commonly holds a whole
/// /64, so per-address limits would not bound it).
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !0xFFFF_FFFF_FFFF_FFFF_u128,
            )),
        },
    }
}

/// Sources whose connection rate is remembered (the least recent are forgotten first).
const MAX_RATED_SOURCES: usize = 100_000;

/// Counts connections per source address from accept until login (or their end). The map holds
/// only addresses with a connection in that phase, so it is bounded by the connection limit.
pub(crate) struct SourceGate {
    max: u32,
    counts: Mutex<HashMap<IpAddr, u32>>,
    /// New connections per second per source, and the burst allowed.
    rate: f64,
    burst: f64,
    /// Token bucket per source: tokens left, when last refilled.
    buckets: Mutex<Generations<IpAddr, (f64, Instant)>>,
}

impl std::fmt::Debug for SourceGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceGate")
            .field("max", &self.max)
            .finish()
    }
}

/// One connection's place in its source's count; given back on drop.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    gate: Arc<SourceGate>,
    ip: IpAddr,
}

impl SourceGate {
    /// At most `max` handshakes in progress and `per_second` new connections a second (bursts
    /// of twice that) per source address.
    pub(crate) fn new(max: u32, per_second: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: Mutex::new(HashMap::new()),
            rate: f64::from(per_second),
            burst: f64::from(per_second) * 2.0,
            buckets: Mutex::new(Generations::new(MAX_RATED_SOURCES)),
        })
    }

    /// Spends one of `ip`'s new-connection tokens; false when it has none left.
    fn take_token(&self, ip: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = buckets.get_mut_or_insert(&ip, || (self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.rate)
            .min(self.burst);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    /// A slot for `ip`, or `None` when that address already has `max` handshakes in progress
    /// or has opened connections faster than its rate.
    pub(crate) fn try_enter(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        self.try_enter_at(ip, Instant::now())
    }

    fn try_enter_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Option<SourceSlot> {
        let ip = source_key(ip);
        if !self.take_token(ip, now) {
            return None;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            gate: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.counts.lock().map(|c| c.len()).unwrap_or(0)
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.gate.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_has_its_own_bound_and_empty_sources_are_forgotten() {
        let gate = SourceGate::new(2, 1000);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = gate.try_enter(a).expect("first");
        let a2 = gate.try_enter(a).expect("second");
        assert!(gate.try_enter(a).is_none(), "third from one source");
        let b1 = gate.try_enter(b).expect("another source is not affected");
        drop(a1);
        let a3 = gate.try_enter(a).expect("a slot came back");
        drop((a2, a3, b1));
        assert_eq!(gate.sources(), 0);
    }

    #[test]
    fn new_connections_per_source_are_rate_limited() {
        let gate = SourceGate::new(1000, 10);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        // A burst of twice the rate, then nothing until tokens come back.
        let burst = (0..100).filter_map(|_| gate.try_enter_at(a, t0)).count();
        assert_eq!(burst, 20);
        assert!(
            gate.try_enter_at(b, t0).is_some(),
            "another source is not affected"
        );
        let later = t0 + std::time::Duration::from_millis(500);
        let refilled = (0..100).filter_map(|_| gate.try_enter_at(a, later)).count();
        assert_eq!(refilled, 5, "half a second at ten a second");
    }

    #[test]
    fn an_ipv6_host_is_one_source_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(source_key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
        let gate = SourceGate::new(1, 1000);
        let _held = gate.try_enter(a).expect("first");
        assert!(gate.try_enter(b).is_none(), "same /64, same budget");
    }
}
