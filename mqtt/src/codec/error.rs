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
    #[error("string not well-formed UTF-8 or containing U+0000 [MQTT-1.5.3-1] [MQTT-1.5.3-2]")]
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
    /// A packet that cannot be parsed (MQTT 5 reason code 0x81): packet, and what is wrong.
    #[error("malformed {0}: {1}")]
    Malformed5(&'static str, &'static str),
    /// An MQTT 5 packet that breaks a rule (reason code 0x82): packet, and which rule.
    #[error("protocol error in {0}: {1}")]
    Protocol5(&'static str, &'static str),
    /// A Topic Alias of 0, above the maximum the broker announced, or unknown (0x94)
    /// `[MQTT-3.3.2-8]` `[MQTT-3.3.2-9]`.
    #[error("invalid topic alias {0}")]
    TopicAliasInvalid(u16),
    /// An MQTT 5 CONNECT that does not conform to section 3.1 `[MQTT-3.1.4-1]`: the error
    /// found in it. The broker answers it with a CONNACK carrying that error's reason code
    /// (section 4.13) before closing, where MQTT 3.1.1 closes without a CONNACK.
    #[error(transparent)]
    Connect5(Box<CodecError>),
}

impl CodecError {
    /// Whether the peer should get CONNACK 0x01 before the connection is closed.
    pub fn wants_protocol_version_connack(&self) -> bool {
        matches!(self, CodecError::UnsupportedProtocolLevel(_))
    }

    /// For an MQTT 5 CONNECT that failed validation, the reason code of the CONNACK that
    /// refuses it: one of the CONNACK codes [MQTT-3.2.2-8], 0x80 or above [MQTT-3.2.2-7].
    pub fn v5_connack_code(&self) -> Option<u8> {
        let CodecError::Connect5(inner) = self else {
            return None;
        };
        Some(match inner.reason_code() {
            code @ (0x81 | 0x82 | 0x90 | 0x95) => code,
            _ => 0x80,
        })
    }

    /// The MQTT 5 reason code a DISCONNECT (or CONNACK) for this error carries (section 4.13).
    pub fn reason_code(&self) -> u8 {
        match self {
            CodecError::Connect5(inner) => inner.reason_code(),
            CodecError::Io(_) => 0x80,
            CodecError::PacketTooLarge { .. } => 0x95,
            CodecError::Protocol(_)
            | CodecError::Protocol5(..)
            | CodecError::UnexpectedPacketType(_)
            | CodecError::InvalidProtocolName => 0x82,
            CodecError::UnsupportedProtocolLevel(_) => 0x84,
            CodecError::TopicAliasInvalid(_) => 0x94,
            CodecError::Topic(_) => 0x90,
            CodecError::Malformed(_)
            | CodecError::Malformed5(..)
            | CodecError::InvalidPacketType(_)
            | CodecError::InvalidFlags { .. }
            | CodecError::InvalidUtf8 => 0x81,
        }
    }
}
