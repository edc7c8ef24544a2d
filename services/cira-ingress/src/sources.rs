//! Handshakes in progress per source address: one host cannot hold more than its share of the
//! node's unauthenticated connections, whatever it sends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts connections per source address from accept until login (or their end). The map holds
/// only addresses with a connection in that phase, so it is bounded by the connection limit.
#[derive(Debug)]
pub(crate) struct SourceGate {
    max: u32,
    counts: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection's place in its source's count; given back on drop.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    gate: Arc<SourceGate>,
    ip: IpAddr,
}

impl SourceGate {
    pub(crate) fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `ip`, or `None` when that address already has `max` handshakes in progress.
    pub(crate) fn try_enter(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
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
        let gate = SourceGate::new(2);
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
}
