//! Broker configuration: every setting, its default, and loading from a TOML file.
//!
//! `docs/configuration.md` lists the same settings for users; keep the two in step.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// Why a configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown, or a value has the wrong type.
    #[error("invalid config at `{key}`: {message}")]
    Parse {
        /// Dotted path of the offending key (`.` for the document itself).
        key: String,
        /// What was wrong.
        message: String,
    },
    /// A value has the right type but is out of range.
    #[error("invalid config value for `{key}`: {message}")]
    Invalid {
        /// Dotted path of the offending key.
        key: &'static str,
        /// What was wrong.
        message: String,
    },
    /// A `[[bridge]]` setting is wrong, or a file it names cannot be used.
    #[error("invalid bridge `{bridge}`: `{key}`: {message}")]
    Bridge {
        /// The bridge's `name`.
        bridge: String,
        /// The key, e.g. `topics[2].local_prefix`.
        key: String,
        /// What was wrong.
        message: String,
    },
}

/// What happens when a client's QoS 1/2 queue is full (`sessions.queue_overflow`), online or
/// offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueOverflow {
    /// Drop the oldest queued message to make room for the new one (counted); the client stays
    /// connected.
    DropOldest,
    /// Drop the new message (counted); the client stays connected.
    DropNewest,
    /// Disconnect an online client as a slow consumer (its persistent session keeps the latest
    /// messages up to the bound); an offline session drops the oldest.
    Disconnect,
}

mod listeners;
mod operations;

pub use listeners::{AuthConfig, ListenerConfig, TlsConfig, TlsVersion};
pub use operations::{HttpConfig, LogConfig, LogFormat, SysConfig, WebSocketListenerConfig};

/// The whole broker configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[listener]`: where to accept connections.
    pub listener: ListenerConfig,
    /// `[limits]`: protection against bad or hostile peers.
    pub limits: LimitsConfig,
    /// `[sessions]`: per-client queues and windows.
    pub sessions: SessionConfig,
    /// `[auth]`: who may connect.
    pub auth: AuthConfig,
    /// `[tls]`: a TLS listener beside the plain one.
    pub tls: TlsConfig,
    /// `[persistence]`: durable state.
    pub persistence: PersistenceConfig,
    /// `[sys]`: the `$SYS` topics.
    pub sys: SysConfig,
    /// `[http]`: the dashboard, Prometheus metrics, health checks and admin API over HTTP.
    pub http: HttpConfig,
    /// `[log]`: how the binary writes its log.
    pub log: LogConfig,
    /// `[websocket]`: MQTT over WebSocket.
    pub websocket: WebSocketListenerConfig,
    /// `[[bridge]]`: bridges to other brokers.
    pub bridge: Vec<crate::bridge::BridgeConfig>,
    /// `[cluster]`: the nodes sharing their traffic through NATS.
    pub cluster: crate::cluster::ClusterConfig,
}

/// When the persistence log is synced to disk (`persistence.fsync`), and so what an
/// acknowledgement promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// PUBACK/PUBREC after the change is written and `fdatasync`ed: survives power loss.
    Always,
    /// PUBACK/PUBREC after the change is written; synced every `fsync_interval`: survives
    /// `kill -9`, power loss loses up to the interval.
    Interval,
    /// PUBACK/PUBREC after the change is written; never synced by the broker: survives
    /// `kill -9`, power loss loses what the OS had not flushed.
    Never,
}

/// `[persistence]` settings. Without `dir`, state is kept in memory only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceConfig {
    /// Directory of the log (created if missing; one broker per directory). Unset: in memory.
    pub dir: Option<PathBuf>,
    /// When the log is synced. Default `interval`.
    pub fsync: FsyncPolicy,
    /// Sync period of `fsync = "interval"`. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Start even if a log segment is damaged (not just torn at its end): the damaged part is
    /// cut off, with a warning; or if the segments before the oldest one are missing: what is
    /// there is read, with a warning. Default false: start-up stops with an error naming the
    /// file. A log of a newer format is refused either way.
    pub repair: bool,
    /// The log is compacted once it is larger than this and than twice the live state. Larger
    /// compacts less often (fewer syncs under heavy churn) for more disk. Default 64 MiB; at
    /// least 1 MiB.
    pub compact_min_bytes: u64,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        PersistenceConfig {
            dir: None,
            fsync: FsyncPolicy::Interval,
            fsync_interval: Duration::from_secs(1),
            repair: false,
            compact_min_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[limits]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest accepted packet, as its remaining length in bytes; larger packets close the
    /// connection. Default 1 MiB; at most 268,435,455.
    pub max_packet_size: usize,
    /// Most clients connected at once; CONNECTs beyond get CONNACK 0x03. Default 100,000.
    pub max_connections: usize,
    /// How long a new socket may take to send CONNECT before it is closed. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest keep-alive honoured. A client asking for more, or for none (0), is still closed
    /// after 1.5 times this without traffic. Default 18 h 12 m 15 s (the protocol's maximum).
    #[serde(with = "humantime_serde")]
    pub max_keep_alive: Duration,
    /// Most subscriptions one client may hold; further filters get SUBACK 0x80. Default 1000.
    pub max_subscriptions_per_client: usize,
    /// Longest topic name or filter in bytes. A longer PUBLISH topic closes the connection, a
    /// longer filter gets SUBACK 0x80, a longer will topic refuses the CONNECT. Default 1024.
    pub max_topic_length: usize,
    /// Most levels in a topic name or filter, treated like `max_topic_length`. Default 32.
    pub max_topic_levels: usize,
    /// Most inbound QoS 2 messages of one client awaiting PUBREL; one more closes the connection.
    /// Default 1024.
    pub max_inbound_qos2: usize,
    /// New connections per second accepted from one source address (bursts up to the same
    /// number); beyond, sockets are closed at once. 0 turns the limit off. Default 200.
    pub max_connection_rate: u32,
    /// Whether `max_connection_rate` also applies to loopback addresses (local tools, benchmarks).
    /// Default false.
    pub rate_limit_loopback: bool,
    /// Topic aliases an MQTT 5 client may set towards the broker (announced as Topic Alias
    /// Maximum in CONNACK); 0 turns inbound aliases off. Default 64.
    pub topic_alias_maximum: u16,
    /// Topic aliases the broker assigns towards one MQTT 5 client at most, whatever larger
    /// Topic Alias Maximum the client announces: each holds a topic for the life of the
    /// connection, so a client announcing 65,535 would otherwise hold as many topics of up to
    /// `max_topic_length` bytes. 0 assigns none. Default 64.
    pub outbound_topic_alias_maximum: u16,
    /// Most topics holding a retained message (the broker's own `$SYS` topics aside). At the
    /// limit, a retained message for a new topic is delivered but not stored (counted in
    /// `limits_hit`, warned of); updates and clears of stored topics go on. 0: no limit, the
    /// default.
    pub max_retained_messages: usize,
}

impl LimitsConfig {
    /// Whether a topic name or filter is within `max_topic_length` and `max_topic_levels`.
    pub fn topic_within(&self, topic: &str) -> bool {
        topic.len() <= self.max_topic_length
            && topic.bytes().filter(|&b| b == b'/').count() < self.max_topic_levels
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_packet_size: 1024 * 1024,
            max_connections: 100_000,
            connect_timeout: Duration::from_secs(10),
            max_keep_alive: Duration::from_secs(65_535),
            max_subscriptions_per_client: 1000,
            max_topic_length: 1024,
            max_topic_levels: 32,
            max_inbound_qos2: 1024,
            max_connection_rate: 200,
            rate_limit_loopback: false,
            topic_alias_maximum: 64,
            outbound_topic_alias_maximum: 64,
            max_retained_messages: 0,
        }
    }
}

/// `[sessions]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// QoS 1/2 messages sent to one client and not yet acknowledged. Default 32.
    pub max_inflight: u16,
    /// QoS 1/2 messages queued for one client beyond the inflight window, online or offline;
    /// past it `queue_overflow` applies. Default [`DEFAULT_MAX_QUEUED_MESSAGES`].
    pub max_queued_messages: usize,
    /// Bytes (topic, payload and properties) of the QoS 1/2 messages queued for one client, online
    /// or offline; past it `queue_overflow` applies. Default [`DEFAULT_MAX_QUEUED_BYTES`].
    pub max_queued_bytes: usize,
    /// What a full queue does, online or offline. Default `drop_oldest`.
    pub queue_overflow: QueueOverflow,
    /// Bytes (topic, payload and properties) of the QoS 1/2 messages held for all the clients
    /// that are not connected, together; at the bound a new message for one of them is dropped
    /// and counted, whatever `queue_overflow` says. 0, the default: no bound.
    pub max_offline_queued_bytes: usize,
    /// Bytes a Session may hold unwritten for a slow reader; QoS 0 messages beyond it are dropped
    /// and counted. Default 1 MiB.
    pub max_outbound_bytes: usize,
    /// Capacity of the Registry's mailbox; when it is full, Sessions that hand it messages
    /// (retained publishes, deliveries for clients that are not connected) stop reading their
    /// sockets so TCP slows those publishers down. Live publishes do not go through it. Default
    /// 1024.
    pub registry_mailbox: usize,
    /// Longest Session Expiry Interval granted to an MQTT 5 client (a longer request, or "never",
    /// is cut to this and announced in CONNACK). Unset: as asked. MQTT 3.1.1 persistent sessions
    /// are kept until this long after their last connection (unset: forever).
    #[serde(with = "humantime_serde")]
    pub max_session_expiry: Option<Duration>,
    /// How a message for a shared subscription (`$share/group/filter`) picks its member.
    /// Default `round_robin`.
    pub shared_subscription_strategy: SharedStrategy,
    /// Prefix of the Response Information given to MQTT 5 clients that request it: the client
    /// id is appended (`response/<client id>`). Default `response/`.
    pub response_topic_prefix: String,
}

/// How the member of a shared subscription group that gets a message is picked, among the
/// connected members (with an ACL file, those that may read it): by whichever thread routes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedStrategy {
    /// Each connected member in turn.
    RoundRobin,
    /// A connected member at random.
    Random,
}

/// Default `sessions.max_queued_messages`. Measured with MQTT.js (`tests/mqttjs.rs`): a burst of
/// 3,000 QoS 1 messages, 100 in flight, to a QoS 2 subscriber queues up to about 2,000 for it; a
/// burst of 15,000 stays under 10,000. With a bound of 1,000 (Mosquitto's) the subscriber lost
/// part of the first.
pub const DEFAULT_MAX_QUEUED_MESSAGES: usize = 10_000;

/// Default `sessions.max_queued_bytes`: 10,000 messages of up to about 1.6 KB each.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_inflight: 32,
            max_queued_messages: DEFAULT_MAX_QUEUED_MESSAGES,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            queue_overflow: QueueOverflow::DropOldest,
            max_offline_queued_bytes: 0,
            max_outbound_bytes: 1024 * 1024,
            registry_mailbox: 1024,
            max_session_expiry: None,
            shared_subscription_strategy: SharedStrategy::RoundRobin,
            response_topic_prefix: "response/".to_string(),
        }
    }
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let mut message = e.inner().message().to_string();
            if message.ends_with("expected a duration") {
                message.push_str(" such as \"500ms\", \"30s\", \"2m\" or \"1h 30m\"");
            }
            match crate::bridge::config::name_the_bridge(text, &key) {
                Some((bridge, key)) => ConfigError::Bridge {
                    bridge,
                    key,
                    message,
                },
                None => ConfigError::Parse { key, message },
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: &str) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        }
        let limits = &self.limits;
        let sessions = &self.sessions;
        if self.persistence.fsync == FsyncPolicy::Interval
            && self.persistence.fsync_interval.is_zero()
        {
            return invalid("persistence.fsync_interval", "must be more than 0");
        }
        if self.persistence.compact_min_bytes < 1024 * 1024 {
            return invalid(
                "persistence.compact_min_bytes",
                "must be at least 1048576 (1 MiB)",
            );
        }
        if self.log.buffer_lines > 1 << 20 {
            return invalid("log.buffer_lines", "must be at most 1048576");
        }
        if limits.max_packet_size < 2 || limits.max_packet_size > 268_435_455 {
            return invalid("limits.max_packet_size", "must be between 2 and 268435455");
        }
        if limits.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        if limits.connect_timeout.is_zero() {
            return invalid("limits.connect_timeout", "must be more than 0");
        }
        if limits.max_keep_alive < Duration::from_secs(1) {
            return invalid("limits.max_keep_alive", "must be at least 1s");
        }
        if limits.max_subscriptions_per_client == 0 {
            return invalid("limits.max_subscriptions_per_client", "must be at least 1");
        }
        if !(1..=65_535).contains(&limits.max_topic_length) {
            return invalid("limits.max_topic_length", "must be between 1 and 65535");
        }
        if limits.max_topic_levels == 0 {
            return invalid("limits.max_topic_levels", "must be at least 1");
        }
        if limits.max_inbound_qos2 == 0 {
            return invalid("limits.max_inbound_qos2", "must be at least 1");
        }
        if !self.sys.interval.is_zero() && self.sys.interval < Duration::from_millis(100) {
            return invalid("sys.interval", "must be \"0s\" (off) or at least 100ms");
        }
        if self.listener.use_identity_as_username && !self.listener.proxy_protocol {
            return invalid(
                "listener.use_identity_as_username",
                "the identity comes from a PROXY protocol header: set listener.proxy_protocol",
            );
        }
        let watch = self.tls.watch_interval;
        if !watch.is_zero() && watch < Duration::from_millis(100) {
            return invalid(
                "tls.watch_interval",
                "must be \"0s\" (off) or at least 100ms",
            );
        }
        if self.http.enabled && self.http.token.is_none() && !self.http.bind.is_loopback() {
            return invalid(
                "http.token",
                "required when http.bind is not a loopback address (anyone could read the metrics and use the API)",
            );
        }
        if self
            .http
            .token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return invalid("http.token", "must not be empty");
        }
        self.cluster.validate()?;
        if !self.websocket.path.starts_with('/') {
            return invalid("websocket.path", "must start with /");
        }
        if self.websocket.tls_port.is_some()
            && (self.tls.cert_file.is_none() || self.tls.key_file.is_none())
        {
            return invalid(
                "websocket.tls_port",
                "wss:// needs tls.cert_file and tls.key_file",
            );
        }
        if self.listener.workers > 1024 {
            return invalid("listener.workers", "must be at most 1024");
        }
        if self.tls.port.is_some() && (self.tls.cert_file.is_none() || self.tls.key_file.is_none())
        {
            return invalid(
                "tls.cert_file",
                "a TLS listener needs tls.cert_file and tls.key_file",
            );
        }
        if self.tls.client_ca_file.is_none() {
            if self.tls.crl_file.is_some() {
                return invalid(
                    "tls.crl_file",
                    "revocation lists are checked against client certificates: set tls.client_ca_file",
                );
            }
            if self.tls.use_identity_as_username {
                return invalid(
                    "tls.use_identity_as_username",
                    "the identity comes from a client certificate: set tls.client_ca_file",
                );
            }
        }
        if sessions.max_inflight == 0 {
            return invalid("sessions.max_inflight", "must be between 1 and 65535");
        }
        if sessions.max_queued_messages == 0 {
            return invalid("sessions.max_queued_messages", "must be at least 1");
        }
        if sessions.max_queued_bytes < 1024 {
            return invalid("sessions.max_queued_bytes", "must be at least 1024");
        }
        if sessions.max_offline_queued_bytes != 0 && sessions.max_offline_queued_bytes < 1024 {
            return invalid(
                "sessions.max_offline_queued_bytes",
                "must be 0 (no bound) or at least 1024",
            );
        }
        if sessions.max_outbound_bytes < 1024 {
            return invalid("sessions.max_outbound_bytes", "must be at least 1024");
        }
        if sessions.registry_mailbox < 16 {
            return invalid("sessions.registry_mailbox", "must be at least 16");
        }
        crate::bridge::config::check_all(&self.bridge)?;
        Ok(())
    }

    /// Worker threads to start: the configured number, or one per core but one (at least one).
    pub fn worker_count(&self) -> usize {
        match self.listener.workers {
            0 => default_workers(std::thread::available_parallelism().map_or(1, |n| n.get())),
            n => n,
        }
    }
}

/// Workers for `listener.workers = 0` on a machine with `cores`: one per core but one, which
/// is left to the persistence writer, the System's thread, the kernel's TCP work and, with more
/// than one worker, the Registry's thread; at least one. On two cores that is a single worker
/// (with the Registry on its thread): no delivery or connect crosses threads and the worker
/// rarely sleeps between messages. That costs a quarter of the pipelined pairs' throughput and
/// saves up to a third of the CPU per message on fleet traffic (`docs/benchmarks.md`, "The
/// default is now one worker per core but one").
fn default_workers(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

#[cfg(test)]
mod tests;
