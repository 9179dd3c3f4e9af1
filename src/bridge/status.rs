//! What each bridge shows of itself: connected or not, and its message counts. Written by the
//! bridge's actor; read by `$SYS`, `/metrics` and the admin API through [`Metrics::bridges`]
//! (crate::metrics::Metrics).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::metrics::LinkCounters;

/// The live state of one bridge.
#[derive(Debug)]
pub struct BridgeStatus {
    /// The bridge's `name`.
    pub name: String,
    /// The remote brokers' `address`, separated by commas.
    pub address: String,
    /// Up or not, and the message counts.
    pub link: LinkCounters,
    /// The broker of `address` the link is up to (`host:port`), while it is.
    remote: RwLock<Option<String>>,
    subscribed: AtomicBool,
    queued: AtomicU64,
}

/// A copy of one bridge's state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSnapshot {
    /// The bridge's `name`.
    pub name: String,
    /// The remote brokers' `address`, separated by commas.
    pub address: String,
    /// The one of them the link is up to, while it is.
    pub connected_to: Option<String>,
    /// Whether the link to the remote broker is up (CONNACK received).
    pub connected: bool,
    /// Whether every subscription of the bridge, here and at the remote, is granted: messages
    /// flow both ways.
    pub subscribed: bool,
    /// Messages for the remote that are queued or in flight (not yet acknowledged by it).
    pub queued: u64,
    /// Messages the remote broker accepted (QoS 0 written, QoS 1 PUBACKed, QoS 2 PUBCOMPed).
    pub sent: u64,
    /// Messages received from the remote broker and published locally.
    pub received: u64,
    /// Messages dropped: QoS 0 going out while the link was down, queue overflow, refusals.
    pub dropped: u64,
}

impl BridgeStatus {
    /// A bridge that has not connected yet.
    pub fn new(name: &str, address: &str) -> Self {
        BridgeStatus {
            name: name.to_string(),
            address: address.to_string(),
            link: LinkCounters::default(),
            remote: RwLock::new(None),
            subscribed: AtomicBool::new(false),
            queued: AtomicU64::new(0),
        }
    }

    /// Records which broker the link is up to (`None`: it is down).
    pub(super) fn set_remote(&self, broker: Option<String>) {
        // A poisoned lock only means a writer panicked mid-store; the value is whole.
        *self.remote.write().unwrap_or_else(|e| e.into_inner()) = broker;
    }

    /// Records whether every subscription is granted on both sides.
    pub(super) fn set_subscribed(&self, all: bool) {
        self.subscribed.store(all, Ordering::Relaxed);
    }

    /// Records how many messages wait for the remote.
    pub(super) fn set_queued(&self, queued: u64) {
        self.queued.store(queued, Ordering::Relaxed);
    }

    /// The state now.
    pub fn snapshot(&self) -> BridgeSnapshot {
        let (connected, sent, received, dropped) = self.link.read();
        BridgeSnapshot {
            name: self.name.clone(),
            address: self.address.clone(),
            connected_to: self
                .remote
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            connected,
            subscribed: self.subscribed.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            sent,
            received,
            dropped,
        }
    }
}

/// The bridges running now, in configuration order; replaced as a whole when they change.
#[derive(Debug, Default)]
pub struct BridgeStatuses(RwLock<Vec<Arc<BridgeStatus>>>);

impl BridgeStatuses {
    /// Every bridge's state now.
    pub fn snapshots(&self) -> Vec<BridgeSnapshot> {
        // A poisoned lock only means a writer panicked mid-replace; the list is still whole.
        let list = self.0.read().unwrap_or_else(|e| e.into_inner());
        list.iter().map(|status| status.snapshot()).collect()
    }

    /// Replaces the list (the bridges were started, stopped or reloaded).
    pub(super) fn replace(&self, statuses: Vec<Arc<BridgeStatus>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = statuses;
    }
}
