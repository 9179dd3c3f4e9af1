//! What the cluster link shows of itself: whether it is on, connected to NATS, and its message
//! counts. Written by the link; read by `/metrics` through
//! [`Metrics::cluster`](crate::metrics::Metrics).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The live state of this node's cluster link.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    enabled: AtomicBool,
    connected: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
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

    /// Records whether NATS is connected.
    pub(super) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// Counts a message handed to NATS.
    pub(super) fn add_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a message from another node.
    pub(super) fn add_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a dropped message.
    pub(super) fn add_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// The state now; `None` without `[cluster]`.
    pub fn snapshot(&self) -> Option<ClusterSnapshot> {
        self.enabled
            .load(Ordering::Relaxed)
            .then(|| ClusterSnapshot {
                connected: self.connected.load(Ordering::Relaxed),
                sent: self.sent.load(Ordering::Relaxed),
                received: self.received.load(Ordering::Relaxed),
                dropped: self.dropped.load(Ordering::Relaxed),
            })
    }
}
