//! Extending the broker by writing actors: lifecycle events (notifications from the Registry) and
//! interceptors (questions a Session asks before it acts).
//!
//! See `docs/hooks.md` and `examples/hooks.rs`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;

use crate::message::{ConnectReturnCode, MessageProperties, ProtocolVersion, QoS};

/// Why a client's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT (MQTT 5: with reason code 0x00).
    Clean,
    /// The client sent an MQTT 5 DISCONNECT with this reason code (not 0x00): 0x04 asks for the
    /// will, and so does every error code.
    ClientReason(u8),
    /// Nothing arrived within 1.5 times the keep-alive `[MQTT-3.1.2-24]`.
    KeepAliveTimeout,
    /// A malformed packet or a protocol violation; the text says which.
    ProtocolError(String),
    /// Another connection CONNECTed with the same client id `[MQTT-3.1.4-2]`.
    TakenOver,
    /// The peer closed the socket or it failed, without DISCONNECT.
    Network(String),
    /// The client fell too far behind on QoS 1/2 messages.
    SlowConsumer,
    /// The broker is shutting down.
    ServerShutdown,
    /// An operator disconnected the client through the admin API.
    Kicked,
}

impl DisconnectReason {
    /// Whether the will is published: on every end but a DISCONNECT with reason 0x00
    /// `[MQTT-3.1.2-8]` `[MQTT-3.1.2-10]` (5.0: `[MQTT-3.14.4-3]`).
    pub fn publishes_will(&self) -> bool {
        !matches!(self, DisconnectReason::Clean)
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Clean => f.write_str("clean"),
            DisconnectReason::ClientReason(code) => write!(f, "client DISCONNECT {code:#04x}"),
            DisconnectReason::KeepAliveTimeout => f.write_str("keep-alive timeout"),
            DisconnectReason::ProtocolError(why) => write!(f, "protocol error: {why}"),
            DisconnectReason::TakenOver => f.write_str("taken over"),
            DisconnectReason::Network(why) => write!(f, "network: {why}"),
            DisconnectReason::SlowConsumer => f.write_str("slow consumer"),
            DisconnectReason::ServerShutdown => f.write_str("server shutdown"),
            DisconnectReason::Kicked => f.write_str("disconnected by an operator"),
        }
    }
}

/// Sent by the Registry to every registered hook once a client's CONNECT has been accepted.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ClientConnected {
    /// Client identifier (assigned by the broker if the client sent an empty one).
    pub client_id: Arc<str>,
    /// Remote address.
    pub peer: SocketAddr,
    /// Protocol spoken.
    pub protocol: ProtocolVersion,
    /// Clean session flag of the CONNECT.
    pub clean_session: bool,
    /// Whether a stored session was resumed.
    pub session_present: bool,
}

/// Sent by the Registry to every registered hook when an accepted client's connection ends.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ClientDisconnected {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// Remote address.
    pub peer: SocketAddr,
    /// Why it ended.
    pub reason: DisconnectReason,
}

/// Sent by the Registry to every registered hook for each filter a client subscribed to.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ClientSubscribed {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// The topic filter.
    pub filter: String,
    /// The QoS granted.
    pub qos: QoS,
}

/// Sent by the Registry to every registered hook for each filter a client unsubscribed from.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ClientUnsubscribed {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// The topic filter.
    pub filter: String,
}

/// The recipients of lifecycle events. Owned by the Registry; build one with the `on_*` methods or
/// [`LifecycleHooks::all`], hand it to [`Broker::hooks`](crate::Broker::hooks), or add more at run
/// time with [`AddHooks`](crate::registry::AddHooks).
#[derive(Default, Clone)]
pub struct LifecycleHooks {
    pub(crate) connected: Vec<Recipient<ClientConnected>>,
    pub(crate) disconnected: Vec<Recipient<ClientDisconnected>>,
    pub(crate) subscribed: Vec<Recipient<ClientSubscribed>>,
    pub(crate) unsubscribed: Vec<Recipient<ClientUnsubscribed>>,
}

impl LifecycleHooks {
    /// No hooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// All four events to one actor.
    pub fn all<A>(addr: &Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>>
            + Handler<ClientConnected>
            + Handler<ClientDisconnected>
            + Handler<ClientSubscribed>
            + Handler<ClientUnsubscribed>,
    {
        LifecycleHooks::new()
            .on_connected(addr.clone().recipient())
            .on_disconnected(addr.clone().recipient())
            .on_subscribed(addr.clone().recipient())
            .on_unsubscribed(addr.clone().recipient())
    }

    /// Adds a recipient of [`ClientConnected`].
    pub fn on_connected(mut self, r: Recipient<ClientConnected>) -> Self {
        self.connected.push(r);
        self
    }

    /// Adds a recipient of [`ClientDisconnected`].
    pub fn on_disconnected(mut self, r: Recipient<ClientDisconnected>) -> Self {
        self.disconnected.push(r);
        self
    }

    /// Adds a recipient of [`ClientSubscribed`].
    pub fn on_subscribed(mut self, r: Recipient<ClientSubscribed>) -> Self {
        self.subscribed.push(r);
        self
    }

    /// Adds a recipient of [`ClientUnsubscribed`].
    pub fn on_unsubscribed(mut self, r: Recipient<ClientUnsubscribed>) -> Self {
        self.unsubscribed.push(r);
        self
    }

    /// Moves every recipient of `other` into `self`.
    pub fn extend(&mut self, other: LifecycleHooks) {
        self.connected.extend(other.connected);
        self.disconnected.extend(other.disconnected);
        self.subscribed.extend(other.subscribed);
        self.unsubscribed.extend(other.unsubscribed);
    }
}

/// Sent by a Session to the connect interceptor, if one is set, before the CONNECT reaches the
/// Registry. The answer decides the CONNACK. Its `Debug` output redacts the password.
#[derive(Clone, Message)]
#[rtype(result = "ConnectDecision")]
pub struct AuthorizeConnect {
    /// Client identifier as sent (may be empty).
    pub client_id: String,
    /// Remote address.
    pub peer: SocketAddr,
    /// Protocol spoken.
    pub protocol: ProtocolVersion,
    /// User name, if sent.
    pub username: Option<String>,
    /// Password, if sent.
    pub password: Option<Bytes>,
    /// MQTT 5 user properties of the CONNECT, in order (empty for earlier protocols).
    pub user_properties: Vec<(String, String)>,
}

impl fmt::Debug for AuthorizeConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizeConnect")
            .field("client_id", &self.client_id)
            .field("peer", &self.peer)
            .field("protocol", &self.protocol)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("user_properties", &self.user_properties)
            .finish()
    }
}

/// The connect interceptor's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub enum ConnectDecision {
    /// Let the connection proceed.
    Accept,
    /// Answer CONNACK with this (non-zero) return code and close.
    Refuse(ConnectReturnCode),
}

/// Sent by a Session to the publish interceptor, if one is set, for every PUBLISH (and will)
/// before it is routed.
#[derive(Debug, Clone, Message)]
#[rtype(result = "PublishDecision")]
pub struct AuthorizePublish {
    /// Publishing client.
    pub client_id: Arc<str>,
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// The MQTT 5 properties it carries (user properties, content type, response topic, ...);
    /// `None` for MQTT 3.1.1 publishes. A rewrite keeps them.
    pub properties: Option<MessageProperties>,
}

/// The publish interceptor's answer.
#[derive(Debug, Clone, PartialEq, Eq, MessageResponse)]
pub enum PublishDecision {
    /// Route it as it is.
    Accept,
    /// Do not route it (it is still acknowledged, as the spec requires of the server).
    Drop,
    /// Route it with this topic and payload instead.
    Rewrite {
        /// New topic name. The message is dropped unless it is a valid topic name within the
        /// limits that the ACL lets the client publish to (not the broker's own `$SYS`).
        topic: String,
        /// New payload.
        payload: Bytes,
    },
}

/// Sent by a Session to the subscribe interceptor, if one is set, for every valid filter of a
/// SUBSCRIBE.
#[derive(Debug, Clone, Message)]
#[rtype(result = "SubscribeDecision")]
pub struct AuthorizeSubscribe {
    /// Subscribing client.
    pub client_id: Arc<str>,
    /// Requested filter.
    pub filter: String,
    /// Requested QoS.
    pub qos: QoS,
}

/// The subscribe interceptor's answer.
#[derive(Debug, Clone, PartialEq, Eq, MessageResponse)]
pub enum SubscribeDecision {
    /// Grant it as requested.
    Accept,
    /// Refuse it: SUBACK return code 0x80.
    Refuse,
    /// Grant a different filter and/or QoS.
    Rewrite {
        /// Filter to subscribe instead. It is refused unless it is valid, within the limits,
        /// and granted by the ACL, as the client's own filter would have to be.
        filter: String,
        /// QoS to grant.
        qos: QoS,
    },
}

/// The interceptors a Session consults. Each is optional; with none set, nothing waits.
#[derive(Default, Clone)]
pub struct Interceptors {
    /// Asked for every CONNECT.
    pub connect: Option<Recipient<AuthorizeConnect>>,
    /// Asked for every PUBLISH.
    pub publish: Option<Recipient<AuthorizePublish>>,
    /// Asked for every SUBSCRIBE filter.
    pub subscribe: Option<Recipient<AuthorizeSubscribe>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_password() {
        let question = AuthorizeConnect {
            client_id: "gate".into(),
            peer: "127.0.0.1:1".parse().expect("address"),
            protocol: ProtocolVersion::V3_1_1,
            username: Some("gate".into()),
            password: Some(Bytes::from_static(b"hunter2")),
            user_properties: Vec::new(),
        };
        let shown = format!("{question:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
