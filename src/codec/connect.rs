//! CONNECT parsing. mqttbytes rejects MQTT 3.1 (`MQIsdp`) and misreads MQTT 5, and does not check
//! the reserved flag or the will/password flag rules, so CONNECT is parsed here, to the spec.

use bytes::{Buf, Bytes};

use super::decode::{read_binary, read_string};
use super::CodecError;
use crate::message::{LastWill, ProtocolVersion, QoS};
use crate::topic::validate_topic_name;

/// A decoded CONNECT.
#[derive(Debug, Clone)]
pub struct Connect {
    /// Protocol from the name and level.
    pub protocol: ProtocolVersion,
    /// Clean session flag.
    pub clean_session: bool,
    /// Keep-alive in seconds; 0 turns the mechanism off.
    pub keep_alive: u16,
    /// Client identifier; may be empty.
    pub client_id: String,
    /// Will, if the will flag was set.
    pub will: Option<LastWill>,
    /// User name, if the flag was set.
    pub username: Option<String>,
    /// Password, if the flag was set.
    pub password: Option<Bytes>,
}

const FLAG_RESERVED: u8 = 0x01;
const FLAG_CLEAN: u8 = 0x02;
const FLAG_WILL: u8 = 0x04;
const FLAG_WILL_RETAIN: u8 = 0x20;
const FLAG_PASSWORD: u8 = 0x40;
const FLAG_USERNAME: u8 = 0x80;

/// Parses the variable header and payload of a CONNECT (`body` excludes the fixed header).
pub(super) fn parse_connect(mut body: Bytes) -> Result<Connect, CodecError> {
    let name = read_string(&mut body)?;
    if body.remaining() < 1 {
        return Err(CodecError::Protocol(
            "CONNECT truncated after protocol name",
        ));
    }
    let level = body.get_u8();
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) => ProtocolVersion::V3_1_1,
        ("MQIsdp", 3) => ProtocolVersion::V3_1,
        ("MQTT", other) | ("MQIsdp", other) => {
            return Err(CodecError::UnsupportedProtocolLevel(other))
        }
        _ => return Err(CodecError::InvalidProtocolName),
    };
    if body.remaining() < 3 {
        return Err(CodecError::Protocol("CONNECT truncated in variable header"));
    }
    let flags = body.get_u8();
    let keep_alive = body.get_u16();
    if flags & FLAG_RESERVED != 0 {
        return Err(CodecError::Protocol(
            "CONNECT reserved flag is set [MQTT-3.1.2-3]",
        ));
    }
    let will_flag = flags & FLAG_WILL != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & FLAG_WILL_RETAIN != 0;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        return Err(CodecError::Protocol(
            "will QoS or will retain set without the will flag [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15]",
        ));
    }
    let will_qos =
        QoS::from_u8(will_qos_bits).ok_or(CodecError::Protocol("will QoS 3 [MQTT-3.1.2-14]"))?;
    let has_username = flags & FLAG_USERNAME != 0;
    let has_password = flags & FLAG_PASSWORD != 0;
    if has_password && !has_username {
        return Err(CodecError::Protocol(
            "password flag without user name flag [MQTT-3.1.2-22]",
        ));
    }

    let client_id = read_string(&mut body)?;
    let will = if will_flag {
        let topic = read_string(&mut body)?;
        validate_topic_name(&topic)?;
        let payload = read_binary(&mut body)?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(read_string(&mut body)?)
    } else {
        None
    };
    let password = if has_password {
        Some(read_binary(&mut body)?)
    } else {
        None
    };
    if body.has_remaining() {
        return Err(CodecError::Protocol("trailing bytes after CONNECT payload"));
    }
    Ok(Connect {
        protocol,
        clean_session: flags & FLAG_CLEAN != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}
