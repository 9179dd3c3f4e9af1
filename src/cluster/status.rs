//! What the cluster link shows of itself: whether it is on, connected to NATS, and its message
//! counts. Written by the link; read by `/metrics` through
//! [`Metrics::cluster`](crate::metrics::Metrics).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::LinkCounters;

/// The live state of this node's cluster link.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    enabled: AtomicBool,
    /// NATS up or not; messages handed to NATS (sent), from the other nodes published here
    /// (received), and dropped.
    pub link: LinkCounters,
}

/// A copy of the link's state at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterSnapshot {
    /// Whether the NATS connection is up.
    pub connected: bool,
    /// Messages published here and handed to NATS for the other nodes.
    pub sent: u64,
    /// Messages from the other nodes published here.
    pub received: u64,
    /// Messages not sent to the other nodes (QoS 0 while NATS was unreachable, larger than
    /// the server's `max_payload`) or not published here.
    pub dropped: u64,
}

impl ClusterStatus {
    /// Records that the link runs.
    pub(super) fn set_enabled(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// The state now; `None` without `[cluster]`.
    pub fn snapshot(&self) -> Option<ClusterSnapshot> {
        let (connected, sent, received, dropped) = self.link.read();
        self.enabled
            .load(Ordering::Relaxed)
            .then_some(ClusterSnapshot {
                connected,
                sent,
                received,
                dropped,
            })
    }
}
