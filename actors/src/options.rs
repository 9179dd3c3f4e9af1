//! Options of a [`ManagedConnection`](crate::ManagedConnection).

use std::path::PathBuf;
use std::time::Duration;

use switchboard_mqtt::{ProtocolVersion, QoS};

use crate::transport::Transport;

/// What to do when the pending queue is full and another message is enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the oldest queued message (reported as dropped) and queue the new one.
    DropOldest,
    /// Drop the new message (reported as dropped).
    DropNewest,
    /// Refuse the new message: `Enqueue` answers [`EnqueueError::QueueFull`](crate::EnqueueError)
    /// so the caller can back off.
    Refuse,
}

/// Reconnect delays: exponential from `initial` to `max`, each with random jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first reconnect attempt.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before attempt number `attempt` (0 = first retry): `initial * 2^attempt` capped at
    /// `max`, then a uniformly random value between half of it and all of it, so a fleet that lost
    /// its broker at once does not come back at once.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponential = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let half = exponential / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// A broker to connect to: a host name or IP address, and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerAddress {
    /// Host name or IP address (an IPv6 address without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl BrokerAddress {
    /// The broker at `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        BrokerAddress {
            host: host.into(),
            port,
        }
    }

    /// Parses `host:port` (`[v6 address]:port` for IPv6); `None` without a host, or with a port
    /// that is not 1 to 65535.
    pub fn parse(address: &str) -> Option<Self> {
        let (host, port) = address.rsplit_once(':')?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().ok()?;
        if host.is_empty() || port == 0 || host.contains(['[', ']']) {
            return None;
        }
        Some(BrokerAddress::new(host, port))
    }
}

impl BrokerAddress {
    /// The first server of an MQTT 5 Server Reference (section 4.11: references separated by
    /// spaces, each a name with an optional `:port`, a name with a colon in brackets), its port
    /// `default_port` when it names none.
    pub fn from_server_reference(reference: &str, default_port: u16) -> Option<Self> {
        let first = reference.split_whitespace().next()?;
        if let Some(bracketed) = first.strip_prefix('[') {
            let (host, rest) = bracketed.split_once(']')?;
            let port = match rest.strip_prefix(':') {
                Some(port) => port.parse().ok()?,
                None if rest.is_empty() => default_port,
                None => return None,
            };
            return (!host.is_empty() && port != 0).then(|| BrokerAddress::new(host, port));
        }
        match first.split_once(':') {
            Some((host, port)) => {
                let port: u16 = port.parse().ok()?;
                (!host.is_empty() && port != 0).then(|| BrokerAddress::new(host, port))
            }
            None => Some(BrokerAddress::new(first, default_port)),
        }
    }
}

impl std::fmt::Display for BrokerAddress {
    /// `host:port`, an IPv6 address in brackets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A will: published by the broker if this connection is lost without DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
}

/// Everything a managed connection needs. Build with [`ConnectionOptions::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Further brokers to try, in order, when the one in use cannot be reached (a standby, or
    /// the other nodes of a cluster). A connection stays on the broker it reached: after losing
    /// it, it tries that one again first, then each of the others in turn at once, and waits
    /// out the backoff only when a whole round failed. Each attempt still takes up to
    /// `connect_timeout`. Not used with [`Transport::Custom`], which opens its own streams.
    /// Default: none.
    pub failover: Vec<BrokerAddress>,
    /// While connected to one of the `failover` brokers, look this often whether the first
    /// broker accepts TCP connections again, and go back to it when it does (Mosquitto's bridge
    /// with `round_robin false`: a main broker and standbys). `None` (the default): stay on the
    /// broker reached until it goes (brokers as equals, such as the nodes of a cluster).
    pub return_to_first: Option<Duration>,
    /// Client identifier.
    pub client_id: String,
    /// Keep-alive; a PINGREQ is sent after this long without sending, and the link is considered
    /// dead after 1.5 times this without receiving. Default 30 s.
    pub keep_alive: Duration,
    /// Clean session flag. Default true.
    pub clean_session: bool,
    /// User name and password.
    pub credentials: Option<(String, String)>,
    /// Will message.
    pub will: Option<Will>,
    /// Largest packet accepted from the broker. Default 1 MiB.
    pub max_packet_size: usize,
    /// How long to wait for the TCP connect and then for CONNACK. Default 10 s.
    pub connect_timeout: Duration,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Most messages waiting to be sent (not counting the inflight window). Default 10,000.
    pub queue_capacity: usize,
    /// What a full queue does. Default [`Overflow::DropOldest`].
    pub overflow: Overflow,
    /// QoS 1/2 messages sent and not yet acknowledged. Default 16.
    pub inflight: u16,
    /// Keep pending messages in this file so they survive a restart of the device process.
    /// (MQTT 5 properties of queued messages are kept in memory only.)
    pub durable_queue: Option<PathBuf>,
    /// Protocol to speak: [`ProtocolVersion::V3_1_1`] (default) or [`ProtocolVersion::V5`]
    /// (3.1 is spoken as 3.1.1). With MQTT 5, `clean_session = false` asks for a session that
    /// never expires, like a 3.1.1 persistent session.
    pub protocol: ProtocolVersion,
    /// Present this connection as another broker's bridge: with MQTT 3.1.1 the CONNECT's protocol
    /// level carries the bridge bit (0x84, Mosquitto's `try_private`), and a broker that honours
    /// it neither sends this connection its own messages back nor clears RETAIN on what it
    /// forwards. MQTT 5 has no such bit: there every subscription carries No Local and Retain As
    /// Published instead, to the same effect. Default false.
    pub bridge: bool,
    /// MQTT 5 only: every subscription asks for no retained messages when it is made (Retain
    /// Handling 2, section 3.8.3.1). A cluster link uses it: the retained messages a node
    /// already holds are not news to the other nodes. Default false.
    pub skip_retained: bool,
    /// How to reach the broker: TCP (default), TLS, or a custom byte stream.
    pub transport: Transport,
    /// Acknowledge QoS 1/2 messages from the broker only when a listener says they are safe:
    /// they come as [`ConnectionEvent::MessageToAcknowledge`](crate::ConnectionEvent) and the
    /// listener answers [`Acknowledge`](crate::Acknowledge). A bridge uses it so that the broker
    /// it reads from forgets a message only once the bridge has queued it. Default false: they
    /// are acknowledged on receipt and come as `MessageReceived`.
    pub manual_acks: bool,
}

impl ConnectionOptions {
    /// Options with the defaults for a broker at `host:port` and this client id.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        ConnectionOptions {
            host: host.into(),
            port,
            failover: Vec::new(),
            return_to_first: None,
            client_id: client_id.into(),
            keep_alive: Duration::from_secs(30),
            clean_session: true,
            credentials: None,
            will: None,
            max_packet_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
            queue_capacity: 10_000,
            overflow: Overflow::DropOldest,
            inflight: 16,
            durable_queue: None,
            protocol: ProtocolVersion::V3_1_1,
            bridge: false,
            skip_retained: false,
            transport: Transport::Tcp,
            manual_acks: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_parse_and_print_back() {
        let parsed = BrokerAddress::parse("central.example:1883");
        assert_eq!(parsed, Some(BrokerAddress::new("central.example", 1883)));
        let v6 = BrokerAddress::parse("[::1]:8883").expect("v6");
        assert_eq!(v6, BrokerAddress::new("::1", 8883));
        assert_eq!(v6.to_string(), "[::1]:8883");
        assert_eq!(
            BrokerAddress::new("10.0.0.1", 1883).to_string(),
            "10.0.0.1:1883"
        );
        for bad in [
            "central.example",
            ":1883",
            "host:0",
            "host:99999",
            "[::1:1883",
            "h:x",
        ] {
            assert_eq!(BrokerAddress::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_server_reference_names_its_first_server() {
        let reference = |r: &str| BrokerAddress::from_server_reference(r, 1883);
        assert_eq!(
            reference("b.example"),
            Some(BrokerAddress::new("b.example", 1883))
        );
        assert_eq!(
            reference("b.example:8883 c.example:1883"),
            Some(BrokerAddress::new("b.example", 8883))
        );
        assert_eq!(
            reference("[::1]:1884"),
            Some(BrokerAddress::new("::1", 1884))
        );
        assert_eq!(reference("[::1]"), Some(BrokerAddress::new("::1", 1883)));
        for bad in ["", "  ", "b:x", ":1883", "[::1", "[::1]x", "[]:1", "b:0"] {
            assert_eq!(reference(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for attempt in 0..40 {
            let full = (Duration::from_millis(100) * 2u32.pow(attempt.min(20))).min(b.max);
            let d = b.delay(attempt);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| b.delay(3)).collect();
        assert!(spread.len() > 1, "jitter varies the delay");
    }
}
