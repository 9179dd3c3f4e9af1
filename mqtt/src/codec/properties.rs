//! MQTT 5 properties (section 2.2.2): reading a property block with the spec's rules (known
//! identifiers only, each allowed in the packet, at most once unless the spec allows repeats), and
//! the variable byte integer both ways.

use bytes::{Buf, BufMut, Bytes};

use super::decode::{read_binary, read_string};
use super::CodecError;

/// Property identifiers (section 2.2.2.2).
pub mod id {
    /// Payload Format Indicator (byte).
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    /// Message Expiry Interval (four-byte integer).
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    /// Content Type (string).
    pub const CONTENT_TYPE: u8 = 0x03;
    /// Response Topic (string).
    pub const RESPONSE_TOPIC: u8 = 0x08;
    /// Correlation Data (binary).
    pub const CORRELATION_DATA: u8 = 0x09;
    /// Subscription Identifier (variable byte integer).
    pub const SUBSCRIPTION_ID: u8 = 0x0B;
    /// Session Expiry Interval (four-byte integer).
    pub const SESSION_EXPIRY: u8 = 0x11;
    /// Assigned Client Identifier (string).
    pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
    /// Server Keep Alive (two-byte integer).
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    /// Authentication Method (string).
    pub const AUTH_METHOD: u8 = 0x15;
    /// Authentication Data (binary).
    pub const AUTH_DATA: u8 = 0x16;
    /// Request Problem Information (byte).
    pub const REQUEST_PROBLEM_INFO: u8 = 0x17;
    /// Will Delay Interval (four-byte integer).
    pub const WILL_DELAY: u8 = 0x18;
    /// Request Response Information (byte).
    pub const REQUEST_RESPONSE_INFO: u8 = 0x19;
    /// Response Information (string).
    pub const RESPONSE_INFO: u8 = 0x1A;
    /// Server Reference (string).
    pub const SERVER_REFERENCE: u8 = 0x1C;
    /// Reason String (string).
    pub const REASON_STRING: u8 = 0x1F;
    /// Receive Maximum (two-byte integer).
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    /// Topic Alias Maximum (two-byte integer).
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    /// Topic Alias (two-byte integer).
    pub const TOPIC_ALIAS: u8 = 0x23;
    /// Maximum QoS (byte).
    pub const MAXIMUM_QOS: u8 = 0x24;
    /// Retain Available (byte).
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    /// User Property (string pair).
    pub const USER_PROPERTY: u8 = 0x26;
    /// Maximum Packet Size (four-byte integer).
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    /// Wildcard Subscription Available (byte).
    pub const WILDCARD_AVAILABLE: u8 = 0x28;
    /// Subscription Identifier Available (byte).
    pub const SUBSCRIPTION_IDS_AVAILABLE: u8 = 0x29;
    /// Shared Subscription Available (byte).
    pub const SHARED_AVAILABLE: u8 = 0x2A;
}

/// The value of one property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(String),
    Bin(Bytes),
    Pair(String, String),
}

impl Value {
    pub fn byte(&self) -> u8 {
        match self {
            Value::Byte(b) => *b,
            _ => 0,
        }
    }
    pub fn u16(&self) -> u16 {
        match self {
            Value::U16(v) => *v,
            _ => 0,
        }
    }
    pub fn u32(&self) -> u32 {
        match self {
            Value::U32(v) | Value::VarInt(v) => *v,
            _ => 0,
        }
    }
    pub fn into_string(self) -> String {
        match self {
            Value::Str(s) => s,
            _ => String::new(),
        }
    }
    pub fn into_bytes(self) -> Bytes {
        match self {
            Value::Bin(b) => b,
            _ => Bytes::new(),
        }
    }
}

/// Reads a variable byte integer (section 1.5.5): at most four bytes `[MQTT-1.5.5-1]`.
pub(super) fn read_var_int(body: &mut Bytes) -> Result<u32, CodecError> {
    let mut value = 0u32;
    for i in 0..4 {
        if !body.has_remaining() {
            return Err(CodecError::Malformed5(
                "variable byte integer",
                "truncated [MQTT-1.5.5-1]",
            ));
        }
        let byte = body.get_u8();
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(CodecError::Malformed5(
        "variable byte integer",
        "longer than four bytes [MQTT-1.5.5-1]",
    ))
}

/// Writes a variable byte integer with the fewest bytes `[MQTT-1.5.5-1]`.
pub fn put_var_int(out: &mut impl BufMut, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Bytes a variable byte integer takes.
pub fn var_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Reads a property block (its length, then the properties). Every identifier must be in
/// `allowed`; a property other than User Property may appear once. Returns the properties in
/// wire order (user properties keep their order `[MQTT-3.3.2-18]`).
pub(super) fn read_properties(
    body: &mut Bytes,
    allowed: &[u8],
    packet: &'static str,
) -> Result<Vec<(u8, Value)>, CodecError> {
    read_properties_repeating(body, allowed, &[id::USER_PROPERTY], packet)
}

/// [`read_properties`], with the identifiers in `repeatable` allowed more than once (a server's
/// PUBLISH carries a Subscription Identifier per matching subscription, section 3.3.2.3.8).
pub(super) fn read_properties_repeating(
    body: &mut Bytes,
    allowed: &[u8],
    repeatable: &[u8],
    packet: &'static str,
) -> Result<Vec<(u8, Value)>, CodecError> {
    let len = read_var_int(body)? as usize;
    if body.remaining() < len {
        return Err(CodecError::Malformed5(
            packet,
            "property length beyond the packet",
        ));
    }
    let mut block = body.split_to(len);
    let mut seen = 0u64;
    let mut props = Vec::new();
    while block.has_remaining() {
        let identifier = read_var_int(&mut block)?;
        let Ok(identifier) = u8::try_from(identifier) else {
            return Err(CodecError::Malformed5(
                packet,
                "unknown property identifier",
            ));
        };
        if !allowed.contains(&identifier) {
            return Err(CodecError::Malformed5(
                packet,
                "property not allowed in this packet",
            ));
        }
        if !repeatable.contains(&identifier) {
            let bit = 1u64 << (identifier & 0x3F);
            if seen & bit != 0 {
                return Err(CodecError::Protocol5(
                    packet,
                    "property included more than once",
                ));
            }
            seen |= bit;
        }
        let value = match identifier {
            id::PAYLOAD_FORMAT
            | id::REQUEST_PROBLEM_INFO
            | id::REQUEST_RESPONSE_INFO
            | id::MAXIMUM_QOS
            | id::RETAIN_AVAILABLE
            | id::WILDCARD_AVAILABLE
            | id::SUBSCRIPTION_IDS_AVAILABLE
            | id::SHARED_AVAILABLE => {
                if !block.has_remaining() {
                    return Err(CodecError::Malformed5(packet, "property truncated"));
                }
                Value::Byte(block.get_u8())
            }
            id::SERVER_KEEP_ALIVE
            | id::RECEIVE_MAXIMUM
            | id::TOPIC_ALIAS_MAXIMUM
            | id::TOPIC_ALIAS => {
                if block.remaining() < 2 {
                    return Err(CodecError::Malformed5(packet, "property truncated"));
                }
                Value::U16(block.get_u16())
            }
            id::MESSAGE_EXPIRY | id::SESSION_EXPIRY | id::WILL_DELAY | id::MAXIMUM_PACKET_SIZE => {
                if block.remaining() < 4 {
                    return Err(CodecError::Malformed5(packet, "property truncated"));
                }
                Value::U32(block.get_u32())
            }
            id::SUBSCRIPTION_ID => Value::VarInt(read_var_int(&mut block)?),
            id::CORRELATION_DATA | id::AUTH_DATA => Value::Bin(read_binary(&mut block)?),
            id::USER_PROPERTY => {
                let key = read_string(&mut block)?;
                let value = read_string(&mut block)?;
                Value::Pair(key, value)
            }
            _ => Value::Str(read_string(&mut block)?),
        };
        props.push((identifier, value));
    }
    Ok(props)
}

/// Builds a property block; [`PropertyWriter::finish`] writes its length and content.
#[derive(Debug, Default)]
pub struct PropertyWriter {
    buf: Vec<u8>,
}

impl PropertyWriter {
    /// An empty block.
    pub fn new() -> Self {
        Self::default()
    }

    /// A byte property.
    pub fn byte(&mut self, identifier: u8, value: u8) -> &mut Self {
        self.buf.extend_from_slice(&[identifier, value]);
        self
    }

    /// A two-byte integer property.
    pub fn u16(&mut self, identifier: u8, value: u16) -> &mut Self {
        self.buf.push(identifier);
        self.buf.put_u16(value);
        self
    }

    /// A four-byte integer property.
    pub fn u32(&mut self, identifier: u8, value: u32) -> &mut Self {
        self.buf.push(identifier);
        self.buf.put_u32(value);
        self
    }

    /// A variable byte integer property.
    pub fn var_int(&mut self, identifier: u8, value: u32) -> &mut Self {
        self.buf.push(identifier);
        put_var_int(&mut self.buf, value as usize);
        self
    }

    /// A string property.
    pub fn string(&mut self, identifier: u8, value: &str) -> &mut Self {
        self.binary(identifier, value.as_bytes())
    }

    /// A binary property.
    pub fn binary(&mut self, identifier: u8, value: &[u8]) -> &mut Self {
        self.buf.push(identifier);
        self.buf.put_u16(value.len() as u16);
        self.buf.extend_from_slice(value);
        self
    }

    /// A user property.
    pub fn user(&mut self, key: &str, value: &str) -> &mut Self {
        self.string(id::USER_PROPERTY, key);
        self.buf.put_u16(value.len() as u16);
        self.buf.extend_from_slice(value.as_bytes());
        self
    }

    /// Bytes of the block including its length field.
    pub fn encoded_len(&self) -> usize {
        var_int_len(self.buf.len()) + self.buf.len()
    }

    /// Writes the length and the properties.
    pub fn finish(&self, out: &mut impl BufMut) {
        put_var_int(out, self.buf.len());
        out.put_slice(&self.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_int_round_trip_and_limits() {
        for value in [
            0usize,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut buf = Vec::new();
            put_var_int(&mut buf, value);
            assert_eq!(buf.len(), var_int_len(value));
            let mut bytes = Bytes::from(buf);
            assert_eq!(read_var_int(&mut bytes).ok(), Some(value as u32));
        }
        // five bytes [MQTT-1.5.5-1]
        let mut bytes = Bytes::from_static(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]);
        assert!(read_var_int(&mut bytes).is_err());
    }

    #[test]
    fn duplicates_and_foreign_properties_are_refused() {
        let allowed = [id::PAYLOAD_FORMAT, id::USER_PROPERTY];
        let mut twice = Bytes::from_static(&[4, 0x01, 1, 0x01, 0]);
        assert!(matches!(
            read_properties(&mut twice, &allowed, "PUBLISH"),
            Err(CodecError::Protocol5(..))
        ));
        let mut foreign = Bytes::from_static(&[3, 0x21, 0, 1]);
        assert!(read_properties(&mut foreign, &allowed, "PUBLISH").is_err());
        let mut users = Bytes::from_static(&[12, 0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'a', 0, 0]);
        let props = read_properties(&mut users, &allowed, "PUBLISH").expect("two user properties");
        assert_eq!(props.len(), 2, "user properties may repeat");
        let mut short = Bytes::from_static(&[9, 0x01]);
        assert!(read_properties(&mut short, &allowed, "PUBLISH").is_err());
    }
}
