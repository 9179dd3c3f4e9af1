//! The version-neutral message model shared by the codec, Sessions and the Registry.
//!
//! Nothing here is tied to the MQTT 3.1.1 wire format, so MQTT 5 (properties, reason codes) can be
//! added as extra fields without reshaping the actors.

use std::fmt;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::codec::encode_publish_frame;

/// Quality of service of a message or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// At most once (0).
    AtMostOnce = 0,
    /// At least once (1).
    AtLeastOnce = 1,
    /// Exactly once (2).
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a wire value, `None` for 3 and above.
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// The protocol a client speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// MQTT 3.1 (`MQIsdp`, level 3), served with 3.1.1 semantics.
    V3_1,
    /// MQTT 3.1.1 (`MQTT`, level 4).
    V3_1_1,
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolVersion::V3_1 => f.write_str("MQTT 3.1"),
            ProtocolVersion::V3_1_1 => f.write_str("MQTT 3.1.1"),
        }
    }
}

/// An application message as it travels through the broker: built once by the Session that
/// received it and shared (`Arc`) by every delivery.
pub struct Message {
    /// The topic name it was published to.
    pub topic: String,
    /// The payload; points into the frame it was read from.
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// The RETAIN flag it was published with.
    pub retain: bool,
    /// The QoS 0, non-retained PUBLISH frame of this message, encoded at most once and written
    /// byte for byte to every QoS 0 subscriber.
    qos0_frame: OnceLock<Bytes>,
}

impl Message {
    /// A message with no pre-encoded frame.
    pub fn new(topic: impl Into<String>, payload: Bytes, qos: QoS, retain: bool) -> Self {
        Message {
            topic: topic.into(),
            payload,
            qos,
            retain,
            qos0_frame: OnceLock::new(),
        }
    }

    /// A QoS 0, non-retained message whose inbound `frame` can be forwarded unchanged.
    pub fn with_qos0_frame(topic: String, payload: Bytes, frame: Bytes) -> Self {
        let message = Message::new(topic, payload, QoS::AtMostOnce, false);
        // A fresh OnceLock is empty, so this cannot fail.
        let _ = message.qos0_frame.set(frame);
        message
    }

    /// The QoS 0 PUBLISH frame (RETAIN 0, DUP 0) of this message, encoded on first use.
    pub fn qos0_frame(&self) -> &Bytes {
        self.qos0_frame
            .get_or_init(|| encode_publish_frame(&self.topic, &self.payload))
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .finish()
    }
}

/// One message on its way to one subscriber: the shared message and the QoS and RETAIN flag this
/// subscriber gets it with.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// min(published QoS, granted QoS) `[MQTT-3.8.4-6]`.
    pub qos: QoS,
    /// 1 only for retained messages sent because of a new subscription `[MQTT-3.3.1-8]`.
    pub retain: bool,
}

/// The will a client registered in its CONNECT.
#[derive(Debug, Clone)]
pub struct LastWill {
    /// Topic the will is published to.
    pub topic: String,
    /// Will payload.
    pub payload: Bytes,
    /// QoS of the will message.
    pub qos: QoS,
    /// Whether the will is published as retained.
    pub retain: bool,
}

impl LastWill {
    /// The will as an application message.
    pub fn to_message(&self) -> Message {
        Message::new(
            self.topic.clone(),
            self.payload.clone(),
            self.qos,
            self.retain,
        )
    }
}

/// CONNACK return codes of MQTT 3.1.1 (section 3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReturnCode {
    /// 0x00 Connection accepted.
    Accepted = 0,
    /// 0x01 The server does not support the protocol level requested.
    UnacceptableProtocolVersion = 1,
    /// 0x02 The client identifier is not allowed.
    IdentifierRejected = 2,
    /// 0x03 The MQTT service is unavailable.
    ServerUnavailable = 3,
    /// 0x04 The user name or password is malformed or wrong.
    BadUsernameOrPassword = 4,
    /// 0x05 The client is not authorized to connect.
    NotAuthorized = 5,
}
