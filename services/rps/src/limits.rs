//! Handshake budget of the rpc listener: connections between accept and their first
//! message, at most `max` at once and at most `per_source` from one address (IPv6: per /64).
//! A place is held by a guard and given back when it drops.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

pub struct Handshakes {
    max: usize,
    per_source: usize,
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One connection's place; dropping it gives the place back.
pub struct Place {
    owner: Arc<Handshakes>,
    source: IpAddr,
}

/// The key a source is counted under: the address, or its /64 for IPv6.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            for s in seg.iter_mut().skip(4) {
                *s = 0;
            }
            IpAddr::V6(std::net::Ipv6Addr::from(seg))
        }
    }
}

impl Handshakes {
    pub fn new(max: usize, per_source: usize) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            max,
            per_source,
            inner: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a connection from `ip`, if the budgets allow.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Place> {
        let source = source_key(ip);
        let mut s = self.lock();
        let mine = s.by_source.get(&source).copied().unwrap_or(0);
        if s.total >= self.max || mine >= self.per_source {
            return None;
        }
        s.total += 1;
        s.by_source.insert(source, mine + 1);
        Some(Place {
            owner: self.clone(),
            source,
        })
    }

    /// Connections holding a place now.
    pub fn held(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut s = self.owner.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                s.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_globally_and_per_source_and_come_back() {
        let h = Handshakes::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let b: IpAddr = "10.0.0.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let p1 = h.enter(a);
        let p2 = h.enter(a);
        assert!(p1.is_some() && p2.is_some());
        assert!(h.enter(a).is_none(), "per source");
        let p3 = h.enter(b);
        assert!(p3.is_some());
        assert!(h.enter(b).is_none(), "global");
        drop(p1);
        assert!(h.enter(a).is_some());
        drop((p2, p3));
        assert_eq!(h.held(), 0);
        // IPv6 addresses of one /64 share a budget.
        let x: IpAddr = "2001:db8::1".parse().unwrap_or(a);
        let y: IpAddr = "2001:db8::ffff:2".parse().unwrap_or(a);
        let _q1 = h.enter(x);
        let _q2 = h.enter(y);
        assert!(h.enter(x).is_none());
    }
}
