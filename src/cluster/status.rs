//! What the cluster link shows of itself: whether it is on, connected to NATS, and its message
//! counts. Written by the link; read by `/metrics` through
//! [`Metrics::cluster`](crate::metrics::Metrics).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

use crate::metrics::LinkCounters;

/// The live state of this node's cluster link.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    enabled: AtomicBool,
    /// NATS up or not; messages handed to NATS (sent), from the other nodes published here
    /// (received), and dropped.
    pub link: LinkCounters,
    /// SUBSCRIBEs that waited for the other nodes (`cluster.subscribe_wait`).
    subscribe_waits: AtomicU64,
    /// Asks for new filters whose wait ran out before every other node answered (the
    /// SUBSCRIBEs waiting for them went on).
    subscribe_wait_timeouts: AtomicU64,
    /// Nodes forgotten for not being heard from within `cluster.node_timeout`.
    nodes_timed_out: AtomicU64,
    view: RwLock<ClusterView>,
}

/// The cluster as this node sees it (`GET /api/v1/cluster`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// This node's name.
    pub node: String,
    /// The NATS server it is connected to, if any.
    pub server: Option<String>,
    /// How many distinct filters this node's clients hold.
    pub filters: usize,
    /// The other nodes that announced filters, and how many each holds.
    pub nodes: Vec<(String, usize)>,
    /// The shared groups (share name, filter) other nodes hold, with every node that holds
    /// them (this one included where its clients do): those nodes spread their messages.
    pub shared: Vec<(String, String, Vec<String>)>,
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
    /// The other nodes known now.
    pub nodes: u64,
    /// SUBSCRIBEs that waited for the other nodes to forward their new filters.
    pub subscribe_waits: u64,
    /// Asks for new filters whose wait ran out before every other node answered (the
    /// SUBSCRIBEs waiting for them went on).
    pub subscribe_wait_timeouts: u64,
    /// Nodes forgotten for not being heard from within `cluster.node_timeout`.
    pub nodes_timed_out: u64,
}

impl ClusterStatus {
    /// Records that the link runs, as node `node`.
    pub(super) fn set_enabled(&self, node: &str) {
        self.enabled.store(true, Ordering::Relaxed);
        self.change_view(|view| view.node = node.to_string());
    }

    /// Changes what [`view`](Self::view) shows.
    pub(super) fn change_view(&self, change: impl FnOnce(&mut ClusterView)) {
        // A poisoned lock only means a writer panicked mid-change; the view is still whole.
        change(&mut self.view.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// The cluster as this node sees it; `None` without `[cluster]`.
    pub fn view(&self) -> Option<ClusterView> {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        self.enabled.load(Ordering::Relaxed).then(|| view.clone())
    }

    /// Counts a SUBSCRIBE that waits for the other nodes.
    pub(super) fn add_subscribe_wait(&self) {
        self.subscribe_waits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a wait that ran out before every node answered.
    pub(super) fn add_subscribe_wait_timeout(&self) {
        self.subscribe_wait_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a node forgotten for its silence.
    pub(super) fn add_node_timed_out(&self) {
        self.nodes_timed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// The state now; `None` without `[cluster]`.
    pub fn snapshot(&self) -> Option<ClusterSnapshot> {
        let (connected, sent, received, dropped) = self.link.read();
        let nodes = self
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .nodes
            .len() as u64;
        self.enabled
            .load(Ordering::Relaxed)
            .then_some(ClusterSnapshot {
                connected,
                sent,
                received,
                dropped,
                nodes,
                subscribe_waits: self.subscribe_waits.load(Ordering::Relaxed),
                subscribe_wait_timeouts: self.subscribe_wait_timeouts.load(Ordering::Relaxed),
                nodes_timed_out: self.nodes_timed_out.load(Ordering::Relaxed),
            })
    }
}
