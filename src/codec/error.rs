//! Errors of the codec wrapper.

use thiserror::Error;

use crate::topic::TopicError;

/// Why an inbound byte stream could not be decoded. Every variant closes the connection.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The packet's remaining length is above the configured maximum.
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    PacketTooLarge {
        /// Remaining length announced by the fixed header.
        size: usize,
        /// Configured limit.
        max: usize,
    },
    /// mqttbytes rejected the frame.
    #[error("malformed packet: {0:?}")]
    Malformed(mqttbytes::Error),
    /// A packet broke a rule of the spec; the text says which.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// Packet type 0 or 15.
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    /// A packet only a server may send (CONNACK, SUBACK, UNSUBACK, PINGRESP).
    #[error("unexpected server-to-client packet type {0}")]
    UnexpectedPacketType(u8),
    /// Fixed header flags other than the ones the spec fixes for the type `[MQTT-2.2.2-2]`.
    #[error("invalid fixed header flags {flags:#06b} for packet type {packet_type}")]
    InvalidFlags {
        /// Packet type.
        packet_type: u8,
        /// Low nibble of byte 1.
        flags: u8,
    },
    /// A string that is not well-formed UTF-8 or contains U+0000 `[MQTT-1.5.3-1]` `[MQTT-1.5.3-2]`.
    #[error("invalid UTF-8 string")]
    InvalidUtf8,
    /// The protocol name is neither `MQTT` nor `MQIsdp` `[MQTT-3.1.2-1]`.
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// A protocol level the broker does not serve (yet) `[MQTT-3.1.2-2]`; answered with CONNACK 0x01.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    /// A bad topic name in PUBLISH or in a will.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
}

impl CodecError {
    /// Whether the peer should get CONNACK 0x01 before the connection is closed.
    pub fn wants_protocol_version_connack(&self) -> bool {
        matches!(self, CodecError::UnsupportedProtocolLevel(_))
    }
}
