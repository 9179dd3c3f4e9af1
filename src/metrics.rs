//! Broker-wide counters, updated with relaxed atomics from Sessions and the Registry.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one broker. Shared as `Arc<Metrics>`; read with [`Metrics::snapshot`].
#[derive(Debug, Default)]
pub struct Metrics {
    connections_current: AtomicU64,
    /// The most connections open at once since [`Metrics::take_connections_peak`].
    connections_peak: AtomicU64,
    connections_total: AtomicU64,
    publishes_received: AtomicU64,
    qos0_dropped_slow_consumer: AtomicU64,
    online_queue_dropped: AtomicU64,
    offline_queue_dropped: AtomicU64,
    slow_consumer_disconnects: AtomicU64,
    protocol_errors: AtomicU64,
    limits_hit: AtomicU64,
    acl_denied: AtomicU64,
    expired_dropped: AtomicU64,
    too_large_dropped: AtomicU64,
    /// Packets, PUBLISHes and bytes each way, counted per worker thread.
    pub traffic: crate::traffic::Traffic,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// TCP connections open now, those in a lingering close included.
    pub connections_current: u64,
    /// TCP connections accepted since start.
    pub connections_total: u64,
    /// PUBLISH packets received from clients.
    pub publishes_received: u64,
    /// QoS 0 messages dropped because a subscriber's output buffer was full.
    pub qos0_dropped_slow_consumer: u64,
    /// QoS 1/2 messages dropped by a connected client's full queue (`sessions.queue_overflow`
    /// `drop_oldest` or `drop_newest`).
    pub online_queue_dropped: u64,
    /// QoS 1/2 messages dropped by a full offline-session queue.
    pub offline_queue_dropped: u64,
    /// Clients disconnected because their QoS 1/2 queue overflowed while online
    /// (`sessions.queue_overflow = "disconnect"`).
    pub slow_consumer_disconnects: u64,
    /// Connections closed for malformed packets or protocol violations.
    pub protocol_errors: u64,
    /// Times a client hit a configured limit (`[limits]`): refused subscription, topic too long or
    /// deep, too many QoS 2 messages awaiting PUBREL, keep-alive capped.
    pub limits_hit: u64,
    /// Publishes dropped, subscriptions refused and wills dropped by the ACL.
    pub acl_denied: u64,
    /// Messages whose MQTT 5 Message Expiry Interval passed before they could be sent.
    pub expired_dropped: u64,
    /// Messages not sent to an MQTT 5 client because they exceed its Maximum Packet Size.
    pub too_large_dropped: u64,
}

macro_rules! counter {
    ($inc:ident, $field:ident) => {
        #[doc = concat!("Adds `n` to `", stringify!($field), "`.")]
        pub fn $inc(&self, n: u64) {
            self.$field.fetch_add(n, Ordering::Relaxed);
        }
    };
}

impl Metrics {
    counter!(add_publishes_received, publishes_received);
    counter!(add_qos0_dropped, qos0_dropped_slow_consumer);
    counter!(add_online_queue_dropped, online_queue_dropped);
    counter!(add_offline_queue_dropped, offline_queue_dropped);
    counter!(add_slow_consumer_disconnects, slow_consumer_disconnects);
    counter!(add_protocol_errors, protocol_errors);
    counter!(add_limits_hit, limits_hit);
    counter!(add_acl_denied, acl_denied);
    counter!(add_expired_dropped, expired_dropped);
    counter!(add_too_large_dropped, too_large_dropped);

    /// A connection opened.
    pub fn connection_opened(&self) -> u64 {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        let now = self.connections_current.fetch_add(1, Ordering::Relaxed) + 1;
        self.connections_peak.fetch_max(now, Ordering::Relaxed);
        now
    }

    /// The most connections open at once since the last call (or start), and the current
    /// count; the peak starts again from the current count.
    pub fn take_connections_peak(&self) -> (u64, u64) {
        let current = self.connections_current.load(Ordering::Relaxed);
        let peak = self.connections_peak.swap(current, Ordering::Relaxed);
        (peak.max(current), current)
    }

    /// A connection closed.
    pub fn connection_closed(&self) {
        self.connections_current.fetch_sub(1, Ordering::Relaxed);
    }

    /// Current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            connections_current: get(&self.connections_current),
            connections_total: get(&self.connections_total),
            publishes_received: get(&self.publishes_received),
            qos0_dropped_slow_consumer: get(&self.qos0_dropped_slow_consumer),
            online_queue_dropped: get(&self.online_queue_dropped),
            offline_queue_dropped: get(&self.offline_queue_dropped),
            slow_consumer_disconnects: get(&self.slow_consumer_disconnects),
            protocol_errors: get(&self.protocol_errors),
            limits_hit: get(&self.limits_hit),
            acl_denied: get(&self.acl_denied),
            expired_dropped: get(&self.expired_dropped),
            too_large_dropped: get(&self.too_large_dropped),
        }
    }
}
