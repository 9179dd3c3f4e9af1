//! Which other nodes are alive, and whether this node's picture of their filters is theirs
//! (`cluster.node_timeout`).
//!
//! Every node says [`Envelope::Alive`](super::Envelope::Alive) on the interest subject a third of
//! the timeout apart, with the number of filters it holds and a [`digest`] of them. A node not
//! heard from for the whole timeout (it crashed, or lost NATS, without a goodbye) is forgotten
//! as if it had said goodbye: its filters go, and no SUBSCRIBE waits for it. A node whose
//! digest differs from what this node holds of it (an announcement lost on the way, or a node
//! forgotten that speaks again) is asked to announce all its filters again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// An order-independent digest of a set of filters: the wrapping sum of each filter's 64-bit
/// FNV-1a hash ([`filter_hash`]). Every node computes it alike (no random seed), and the sum of
/// a set does not depend on the order it is walked in; the link keeps it as a running sum,
/// adding a filter's hash as it comes and subtracting it as it goes, so that a heartbeat walks
/// no set.
pub fn digest<'a>(filters: impl IntoIterator<Item = &'a String>) -> u64 {
    filters
        .into_iter()
        .fold(0u64, |sum, filter| sum.wrapping_add(filter_hash(filter)))
}

/// One filter's part of a [`digest`]: its 64-bit FNV-1a hash.
pub fn filter_hash(filter: &str) -> u64 {
    filter.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// When each other node was last heard from, and when each last asked this one to announce
/// all its filters again.
#[derive(Debug)]
pub struct Liveness {
    timeout: Duration,
    last_heard: HashMap<String, Instant>,
    /// This node announced everything again at this moment (at most once per timeout).
    last_resync: Option<Instant>,
}

impl Liveness {
    /// Nodes silent for `timeout` are gone.
    pub fn new(timeout: Duration) -> Self {
        Liveness {
            timeout,
            last_heard: HashMap::new(),
            last_resync: None,
        }
    }

    /// How often this node says it is alive: three times per timeout.
    pub fn interval(&self) -> Duration {
        self.timeout / 3
    }

    /// `node` spoke at `now`.
    pub fn heard(&mut self, node: &str, now: Instant) {
        match self.last_heard.get_mut(node) {
            Some(at) => *at = now,
            None => {
                self.last_heard.insert(node.to_string(), now);
            }
        }
    }

    /// `node` said goodbye.
    pub fn gone(&mut self, node: &str) {
        self.last_heard.remove(node);
    }

    /// The nodes not heard from for the timeout at `now`; they are forgotten here.
    pub fn silent(&mut self, now: Instant) -> Vec<String> {
        let timeout = self.timeout;
        let mut silent = Vec::new();
        self.last_heard.retain(|node, at| {
            let alive = now.saturating_duration_since(*at) < timeout;
            if !alive {
                silent.push(node.clone());
            }
            alive
        });
        silent.sort();
        silent
    }

    /// Another node asks this one to announce everything again at `now`: whether to (at most
    /// once per timeout, however many ask).
    pub fn resync_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_resync
            .is_none_or(|at| now.saturating_duration_since(at) >= self.timeout);
        if due {
            self.last_resync = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_digest_is_the_same_in_any_order_and_differs_with_the_set() {
        let one = strings(&["gate/#", "radar/+/speed", "detrd/status/response/7"]);
        let other = strings(&["detrd/status/response/7", "gate/#", "radar/+/speed"]);
        assert_eq!(digest(&one), digest(&other));
        assert_ne!(digest(&one), digest(&one[..2]));
        assert_ne!(digest(&strings(&["a"])), digest(&strings(&["b"])));
        assert_eq!(digest(&Vec::new()), 0);
    }

    #[test]
    fn a_node_silent_for_the_timeout_is_forgotten_once() {
        let start = Instant::now();
        let mut liveness = Liveness::new(Duration::from_secs(15));
        assert_eq!(liveness.interval(), Duration::from_secs(5));
        liveness.heard("b", start);
        liveness.heard("c", start);
        liveness.heard("b", start + Duration::from_secs(10));
        assert!(liveness.silent(start + Duration::from_secs(14)).is_empty());
        assert_eq!(liveness.silent(start + Duration::from_secs(16)), ["c"]);
        assert!(liveness.silent(start + Duration::from_secs(17)).is_empty());
        liveness.gone("b");
        assert!(liveness.silent(start + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn everything_is_announced_again_at_most_once_per_timeout() {
        let start = Instant::now();
        let mut liveness = Liveness::new(Duration::from_secs(3));
        assert!(liveness.resync_due(start));
        assert!(!liveness.resync_due(start + Duration::from_secs(1)));
        assert!(liveness.resync_due(start + Duration::from_secs(3)));
    }
}
