//! Broker-wide counters, updated with relaxed atomics from Sessions and the Registry.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::hooks::DisconnectReason;

/// Live counters of one broker. Shared as `Arc<Metrics>`; read with [`Metrics::snapshot`].
#[derive(Debug, Default)]
pub struct Metrics {
    connections_current: AtomicU64,
    /// The most connections open at once since [`Metrics::take_connections_peak`].
    connections_peak: AtomicU64,
    connections_total: AtomicU64,
    qos0_dropped_slow_consumer: AtomicU64,
    online_queue_dropped: AtomicU64,
    offline_queue_dropped: AtomicU64,
    offline_total_dropped: AtomicU64,
    slow_consumer_disconnects: AtomicU64,
    protocol_errors: AtomicU64,
    limits_hit: AtomicU64,
    acl_denied: AtomicU64,
    expired_dropped: AtomicU64,
    too_large_dropped: AtomicU64,
    connects: AtomicU64,
    auth_failures: AtomicU64,
    sessions_expired: AtomicU64,
    /// Ends of MQTT connections by [`DisconnectKind`].
    disconnects: [AtomicU64; DisconnectKind::ALL.len()],
    /// Packets, PUBLISHes and bytes each way, counted per worker thread.
    pub traffic: crate::traffic::Traffic,
    /// The state of each running bridge (`[[bridge]]`).
    pub bridges: crate::bridge::BridgeStatuses,
    /// The cluster link's state (`[cluster]`).
    pub cluster: crate::cluster::ClusterStatus,
    /// When the TLS listeners' server certificate expires, in Unix seconds; 0 without TLS.
    tls_certificate_expiry: AtomicI64,
    /// The persistence writer's commits and syncs (`[persistence]`).
    pub persistence: std::sync::Arc<crate::persistence::PersistenceStats>,
}

/// Whether a link to another server is up, and its message counts: a bridge's, the cluster
/// link's. Written by the link's actor; read by `$SYS`, `/metrics` and the admin API.
#[derive(Debug, Default)]
pub struct LinkCounters {
    connected: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
}

impl LinkCounters {
    /// Records whether the link is up.
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// Counts a message the other side took.
    pub fn add_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a message from the other side, published here.
    pub fn add_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a dropped message.
    pub fn add_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the link is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Whether the link is up, and the messages sent, received and dropped.
    pub fn read(&self) -> (bool, u64, u64, u64) {
        (
            self.connected.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// TCP connections open now, those in a lingering close included.
    pub connections_current: u64,
    /// TCP connections accepted since start.
    pub connections_total: u64,
    /// QoS 0 messages dropped because a subscriber's output buffer was full.
    pub qos0_dropped_slow_consumer: u64,
    /// QoS 1/2 messages dropped by a connected client's full queue (`sessions.queue_overflow`
    /// `drop_oldest` or `drop_newest`).
    pub online_queue_dropped: u64,
    /// QoS 1/2 messages dropped by a full offline-session queue.
    pub offline_queue_dropped: u64,
    /// QoS 1/2 messages for clients that are not connected, dropped at
    /// `sessions.max_offline_queued_bytes`.
    pub offline_total_dropped: u64,
    /// Clients disconnected because their QoS 1/2 queue overflowed while online
    /// (`sessions.queue_overflow = "disconnect"`).
    pub slow_consumer_disconnects: u64,
    /// Connections closed for malformed packets or protocol violations.
    pub protocol_errors: u64,
    /// Times a client hit a configured limit (`[limits]`): refused subscription, topic too long or
    /// deep, too many QoS 2 messages awaiting PUBREL, keep-alive capped.
    pub limits_hit: u64,
    /// Publishes dropped, subscriptions refused and wills dropped by the ACL, and messages not
    /// delivered because the ACL does not let their subscriber read them.
    pub acl_denied: u64,
    /// Messages whose MQTT 5 Message Expiry Interval passed before they could be sent.
    pub expired_dropped: u64,
    /// Messages not sent to an MQTT 5 client because they exceed its Maximum Packet Size.
    pub too_large_dropped: u64,
    /// CONNECTs accepted (CONNACK 0).
    pub connects: u64,
    /// CONNECTs refused for their credentials: no user name where one is required, a wrong
    /// password, or an interceptor's Bad user name or password / Not authorized.
    pub auth_failures: u64,
    /// Persistent sessions (expiry above 0) ended because their expiry interval passed while
    /// their client was away, those found expired in the persistence log at start included.
    pub sessions_expired: u64,
    /// Ends of accepted MQTT connections, by [`DisconnectKind`] (indexed as
    /// [`DisconnectKind::ALL`]).
    pub disconnects: [u64; DisconnectKind::ALL.len()],
}

impl MetricsSnapshot {
    /// Messages not delivered: QoS 0 for a full output buffer, full queues online and offline,
    /// the bound on all offline sessions together, expired, too large for the client (what
    /// `$SYS` and the dashboard call dropped).
    pub fn messages_dropped(&self) -> u64 {
        self.qos0_dropped_slow_consumer
            + self.online_queue_dropped
            + self.offline_queue_dropped
            + self.offline_total_dropped
            + self.expired_dropped
            + self.too_large_dropped
    }
}

/// Why an accepted MQTT connection ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectKind {
    /// The client sent DISCONNECT (MQTT 5: any reason code).
    Client,
    /// The socket closed or failed without DISCONNECT.
    Network,
    /// Nothing arrived within 1.5 times the keep-alive.
    KeepAliveTimeout,
    /// A malformed packet or a protocol violation.
    ProtocolError,
    /// Another connection took the client id over.
    TakenOver,
    /// The client fell too far behind on QoS 1/2 messages.
    SlowConsumer,
    /// The broker shut down.
    ServerShutdown,
    /// An operator disconnected the client (admin API).
    Kicked,
}

impl DisconnectKind {
    /// Every kind, in the order of [`MetricsSnapshot::disconnects`].
    pub const ALL: [DisconnectKind; 8] = [
        DisconnectKind::Client,
        DisconnectKind::Network,
        DisconnectKind::KeepAliveTimeout,
        DisconnectKind::ProtocolError,
        DisconnectKind::TakenOver,
        DisconnectKind::SlowConsumer,
        DisconnectKind::ServerShutdown,
        DisconnectKind::Kicked,
    ];

    /// Its label value in the metrics (`reason="..."`).
    pub fn label(self) -> &'static str {
        match self {
            DisconnectKind::Client => "client",
            DisconnectKind::Network => "network",
            DisconnectKind::KeepAliveTimeout => "keep_alive_timeout",
            DisconnectKind::ProtocolError => "protocol_error",
            DisconnectKind::TakenOver => "taken_over",
            DisconnectKind::SlowConsumer => "slow_consumer",
            DisconnectKind::ServerShutdown => "server_shutdown",
            DisconnectKind::Kicked => "administrative_action",
        }
    }

    /// The kind of a [`DisconnectReason`].
    pub fn of(reason: &DisconnectReason) -> DisconnectKind {
        match reason {
            DisconnectReason::Clean | DisconnectReason::ClientReason(_) => DisconnectKind::Client,
            DisconnectReason::Network(_) => DisconnectKind::Network,
            DisconnectReason::KeepAliveTimeout => DisconnectKind::KeepAliveTimeout,
            DisconnectReason::ProtocolError(_) => DisconnectKind::ProtocolError,
            DisconnectReason::TakenOver => DisconnectKind::TakenOver,
            DisconnectReason::SlowConsumer => DisconnectKind::SlowConsumer,
            DisconnectReason::ServerShutdown => DisconnectKind::ServerShutdown,
            DisconnectReason::Kicked => DisconnectKind::Kicked,
        }
    }
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
    counter!(add_qos0_dropped, qos0_dropped_slow_consumer);
    counter!(add_online_queue_dropped, online_queue_dropped);
    counter!(add_offline_queue_dropped, offline_queue_dropped);
    counter!(add_offline_total_dropped, offline_total_dropped);
    counter!(add_slow_consumer_disconnects, slow_consumer_disconnects);
    counter!(add_protocol_errors, protocol_errors);
    counter!(add_limits_hit, limits_hit);
    counter!(add_acl_denied, acl_denied);
    counter!(add_expired_dropped, expired_dropped);
    counter!(add_too_large_dropped, too_large_dropped);
    counter!(add_connects, connects);
    counter!(add_auth_failures, auth_failures);
    counter!(add_sessions_expired, sessions_expired);

    /// An accepted MQTT connection ended for `reason`.
    pub fn disconnected(&self, reason: &DisconnectReason) {
        let kind = DisconnectKind::of(reason);
        if let Some(at) = DisconnectKind::ALL.iter().position(|k| *k == kind) {
            self.disconnects[at].fetch_add(1, Ordering::Relaxed);
        }
    }

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

    /// Notes when the server certificate in use expires (Unix seconds; `None`: no TLS, or not
    /// known). Set at start and after each reload.
    pub fn set_tls_certificate_expiry(&self, unix_seconds: Option<i64>) {
        let value = unix_seconds.filter(|s| *s != 0).unwrap_or(0);
        self.tls_certificate_expiry.store(value, Ordering::Relaxed);
    }

    /// When the server certificate in use expires (Unix seconds), if there is one.
    pub fn tls_certificate_expiry(&self) -> Option<i64> {
        Some(self.tls_certificate_expiry.load(Ordering::Relaxed)).filter(|s| *s != 0)
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
            qos0_dropped_slow_consumer: get(&self.qos0_dropped_slow_consumer),
            online_queue_dropped: get(&self.online_queue_dropped),
            offline_queue_dropped: get(&self.offline_queue_dropped),
            offline_total_dropped: get(&self.offline_total_dropped),
            slow_consumer_disconnects: get(&self.slow_consumer_disconnects),
            protocol_errors: get(&self.protocol_errors),
            limits_hit: get(&self.limits_hit),
            acl_denied: get(&self.acl_denied),
            expired_dropped: get(&self.expired_dropped),
            too_large_dropped: get(&self.too_large_dropped),
            connects: get(&self.connects),
            auth_failures: get(&self.auth_failures),
            sessions_expired: get(&self.sessions_expired),
            disconnects: std::array::from_fn(|at| get(&self.disconnects[at])),
        }
    }
}
