//! What a managed connection tells its listeners, and the messages it takes.

use actix::prelude::*;
use bytes::Bytes;
use switchboard_mqtt::QoS;
use thiserror::Error;

use crate::options::BrokerAddress;

/// Identifies one enqueued message for the life of a connection actor (and across restarts with a
/// durable queue).
pub type MessageId = u64;

/// Why the link to the broker went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkDown {
    /// The broker closed the connection, or the socket failed.
    Network(String),
    /// Nothing arrived within 1.5 times the keep-alive.
    KeepAliveTimeout,
    /// The broker sent something this client could not decode.
    Protocol(String),
    /// The broker closed the connection with an MQTT 5 DISCONNECT and this reason code (e.g.
    /// 0x8E session taken over, 0x8B server shutting down).
    DisconnectedByBroker(u8),
    /// [`Stop`](crate::Stop) was asked for.
    Stopped,
    /// The connection left a `failover` broker because the first one answers again
    /// ([`ConnectionOptions::return_to_first`](crate::ConnectionOptions)); it connects there now.
    BackToFirstBroker,
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    /// TCP connect failed or timed out.
    Network(String),
    /// The broker answered CONNACK with this non-zero return code.
    Refused(u8),
    /// No CONNACK within the connect timeout.
    Timeout,
}

/// Why a message was dropped without being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The pending queue was full (overflow strategy drop oldest / drop newest).
    QueueOverflow,
    /// The connection was stopped before it could be delivered.
    Stopped,
    /// The broker refused it with this MQTT 5 reason code (0x80 or above) in PUBACK or PUBREC.
    Refused(u8),
    /// (5.0) As a PUBLISH it would exceed the Maximum Packet Size the broker announced in
    /// CONNACK, which a client must not send [MQTT-3.2.2-15].
    TooLarge,
    /// (5.0) Its Message Expiry Interval ran out while it waited in the queue.
    Expired,
}

/// Sent by a [`ManagedConnection`](crate::ManagedConnection) to every registered listener.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub enum ConnectionEvent {
    /// CONNACK 0 received.
    Connected {
        /// Whether the broker kept the session (subscriptions are then not sent again).
        session_present: bool,
        /// The broker reached: the connection's own, or one of its `failover` brokers.
        broker: BrokerAddress,
    },
    /// The link went down; a reconnect follows unless stopped.
    Disconnected(LinkDown),
    /// A connection attempt failed; the next is in `retry_in`.
    ConnectFailed {
        /// What failed.
        failure: ConnectFailure,
        /// Delay before the next attempt: zero when the next of the connection's brokers is
        /// tried at once.
        retry_in: std::time::Duration,
        /// The broker this attempt was made to.
        broker: BrokerAddress,
    },
    /// SUBACK for a filter: the granted QoS, or `None` if the broker refused it (0x80).
    SubscriptionGranted {
        /// The filter.
        filter: String,
        /// Granted QoS.
        granted: Option<QoS>,
    },
    /// An application message from the broker.
    MessageReceived(Received),
    /// With [`ConnectionOptions::manual_acks`](crate::ConnectionOptions): a QoS 1/2 message
    /// from the broker whose PUBACK (PUBREC) is sent only when the listener sends
    /// [`Acknowledge`](crate::Acknowledge) with this token, once the message is safe with it.
    MessageToAcknowledge(Received, PendingAck),
    /// A message left this client for good: QoS 0 written, QoS 1 PUBACKed, QoS 2 PUBCOMPed.
    MessageDelivered(MessageId),
    /// A message was dropped.
    MessageDropped(MessageId, DropReason),
    /// (3.1.1) A QoS 1/2 message from the broker larger than the connection's
    /// `max_packet_size`: acknowledged to the broker (3.1.1 has no refusal, and a closed
    /// connection would have the broker send it again after every reconnect) and dropped,
    /// never read whole.
    MessageTooLarge {
        /// Its topic, as far as it is UTF-8.
        topic: String,
        /// Its size (remaining length) in bytes.
        size: usize,
    },
}

/// A received QoS 1/2 message not yet acknowledged to the broker (see
/// [`ConnectionEvent::MessageToAcknowledge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingAck {
    /// The link it came over: a token from an older link is ignored (the broker sends the
    /// message again on the new one).
    pub(crate) generation: u64,
    pub(crate) pid: u16,
    pub(crate) qos: QoS,
}

/// An application message received from the broker. Carried inside [`ConnectionEvent`] from a
/// `ManagedConnection` to its listeners, and sent as a message by a `Consumer` to its sink (any
/// actor of the application that handles it).
#[derive(Debug, Clone, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct Received {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was delivered with.
    pub qos: QoS,
    /// Retain flag (set for retained messages sent on subscribe).
    pub retain: bool,
    /// MQTT 5 properties the broker forwarded (response topic, correlation data, ...).
    pub properties: Option<switchboard_mqtt::MessageProperties>,
    /// (5.0) What remained of its Message Expiry Interval when the broker sent it, in seconds.
    pub expiry: Option<u32>,
}

/// Why [`Enqueue`](crate::Enqueue) did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EnqueueError {
    /// The queue is full and the overflow strategy is [`Overflow::Refuse`](crate::Overflow).
    #[error("the pending queue is full")]
    QueueFull,
    /// The connection is stopping.
    #[error("the connection is stopping")]
    Stopping,
    /// The topic is not a valid topic name.
    #[error("invalid topic name")]
    InvalidTopic,
    /// The durable queue could not be written.
    #[error("the durable queue could not be written")]
    Storage,
}
