//! CONNECT parsing. mqttbytes rejects MQTT 3.1 (`MQIsdp`) and misreads MQTT 5, and does not check
//! the reserved flag or the will/password flag rules, so CONNECT is parsed here, to the spec.

use bytes::{Buf, Bytes};

use super::decode::{read_binary, read_string};
use super::properties::{id, read_properties, Value};
use super::CodecError;
use crate::message::{LastWill, MessageProperties, ProtocolVersion, QoS};
use crate::topic::validate_topic_name;

/// The MQTT 5 properties of a CONNECT (section 3.1.2.11), with the spec's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectProperties {
    /// Session Expiry Interval in seconds (0: the session ends with the connection;
    /// `u32::MAX`: never) `[MQTT-3.1.2-23]`.
    pub session_expiry: u32,
    /// Receive Maximum: QoS 1/2 PUBLISHes the client accepts unacknowledged (default 65,535).
    pub receive_maximum: u16,
    /// Maximum Packet Size the client accepts, if it set one `[MQTT-3.1.2-24]`.
    pub maximum_packet_size: Option<u32>,
    /// Topic Alias Maximum: aliases the broker may use towards the client (default 0).
    pub topic_alias_maximum: u16,
    /// Request Response Information.
    pub request_response_information: bool,
    /// Request Problem Information (default true) `[MQTT-3.1.2-29]`.
    pub request_problem_information: bool,
    /// User properties.
    pub user_properties: Vec<(String, String)>,
    /// Authentication Method (extended authentication), if any.
    pub authentication_method: Option<String>,
}

impl Default for ConnectProperties {
    fn default() -> Self {
        ConnectProperties {
            session_expiry: 0,
            receive_maximum: u16::MAX,
            maximum_packet_size: None,
            topic_alias_maximum: 0,
            request_response_information: false,
            request_problem_information: true,
            user_properties: Vec::new(),
            authentication_method: None,
        }
    }
}

const CONNECT_PROPERTIES: &[u8] = &[
    id::SESSION_EXPIRY,
    id::RECEIVE_MAXIMUM,
    id::MAXIMUM_PACKET_SIZE,
    id::TOPIC_ALIAS_MAXIMUM,
    id::REQUEST_RESPONSE_INFO,
    id::REQUEST_PROBLEM_INFO,
    id::USER_PROPERTY,
    id::AUTH_METHOD,
    id::AUTH_DATA,
];

const WILL_PROPERTIES: &[u8] = &[
    id::WILL_DELAY,
    id::PAYLOAD_FORMAT,
    id::MESSAGE_EXPIRY,
    id::CONTENT_TYPE,
    id::RESPONSE_TOPIC,
    id::CORRELATION_DATA,
    id::USER_PROPERTY,
];

fn parse_connect_properties(body: &mut Bytes) -> Result<ConnectProperties, CodecError> {
    let mut props = ConnectProperties::default();
    for (identifier, value) in read_properties(body, CONNECT_PROPERTIES, "CONNECT")? {
        match identifier {
            id::SESSION_EXPIRY => props.session_expiry = value.u32(),
            id::RECEIVE_MAXIMUM => {
                props.receive_maximum = value.u16();
                if props.receive_maximum == 0 {
                    return Err(CodecError::Protocol5("CONNECT", "Receive Maximum of 0"));
                }
            }
            id::MAXIMUM_PACKET_SIZE => {
                if value.u32() == 0 {
                    return Err(CodecError::Protocol5("CONNECT", "Maximum Packet Size of 0"));
                }
                props.maximum_packet_size = Some(value.u32());
            }
            id::TOPIC_ALIAS_MAXIMUM => props.topic_alias_maximum = value.u16(),
            id::REQUEST_RESPONSE_INFO | id::REQUEST_PROBLEM_INFO => {
                let flag = match value.byte() {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(CodecError::Protocol5(
                            "CONNECT",
                            "Request Response/Problem Information other than 0 or 1",
                        ))
                    }
                };
                if identifier == id::REQUEST_PROBLEM_INFO {
                    props.request_problem_information = flag;
                } else {
                    props.request_response_information = flag;
                }
            }
            id::AUTH_METHOD => props.authentication_method = Some(value.into_string()),
            id::USER_PROPERTY => {
                if let Value::Pair(k, v) = value {
                    props.user_properties.push((k, v));
                }
            }
            _ => {}
        }
    }
    Ok(props)
}

/// Reads the message properties shared by PUBLISH and wills into `props`; returns the Message
/// Expiry Interval. Other identifiers are left to the caller.
pub(super) fn take_message_property(
    props: &mut MessageProperties,
    expiry: &mut Option<u32>,
    identifier: u8,
    value: Value,
    packet: &'static str,
) -> Result<(), CodecError> {
    match identifier {
        id::PAYLOAD_FORMAT => {
            if value.byte() > 1 {
                return Err(CodecError::Protocol5(
                    packet,
                    "Payload Format Indicator other than 0 or 1",
                ));
            }
            props.payload_format = Some(value.byte());
        }
        id::MESSAGE_EXPIRY => *expiry = Some(value.u32()),
        id::CONTENT_TYPE => props.content_type = Some(value.into_string()),
        id::RESPONSE_TOPIC => {
            let topic = value.into_string();
            // [MQTT-3.3.2-13] [MQTT-3.3.2-14] the Response Topic is a topic name: no wildcards.
            // Breaking it is a Protocol Error (0x82); 0x90 names the packet's own Topic Name.
            validate_topic_name(&topic).map_err(|_| {
                CodecError::Protocol5(
                    packet,
                    "Response Topic is not a valid topic name [MQTT-3.3.2-14]",
                )
            })?;
            props.response_topic = Some(topic);
        }
        id::CORRELATION_DATA => props.correlation_data = Some(value.into_bytes()),
        id::USER_PROPERTY => {
            if let Value::Pair(k, v) = value {
                props.user_properties.push((k, v));
            }
        }
        _ => {}
    }
    Ok(())
}

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
    /// MQTT 5 properties (defaults for earlier protocols).
    pub properties: ConnectProperties,
    /// MQTT 5: the will's Payload Format Indicator says UTF-8 and its payload is not; the
    /// Session refuses the connection with 0x99.
    pub will_payload_invalid: bool,
    /// The client is another broker's bridge: it set the high bit of the protocol level (0x84
    /// for 3.1.1, 0x83 for 3.1), as Mosquitto does with `try_private`.
    pub bridge: bool,
}

/// The bit a bridge sets in the protocol level of an MQTT 3.1 or 3.1.1 CONNECT.
const BRIDGE_BIT: u8 = 0x80;

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
    // MQTT 5 has no bridge bit (a bridge subscribes with No Local and Retain As Published).
    let bridge = level & BRIDGE_BIT != 0 && level & !BRIDGE_BIT != 5;
    let level = if bridge { level & !BRIDGE_BIT } else { level };
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) => ProtocolVersion::V3_1_1,
        ("MQTT", 5) => ProtocolVersion::V5,
        ("MQIsdp", 3) => ProtocolVersion::V3_1,
        ("MQTT", other) | ("MQIsdp", other) => {
            return Err(CodecError::UnsupportedProtocolLevel(other))
        }
        _ => return Err(CodecError::InvalidProtocolName),
    };
    parse_connect_fields(body, protocol, bridge).map_err(|error| {
        if protocol.is_v5() {
            CodecError::Connect5(Box::new(error))
        } else {
            error
        }
    })
}

/// Parses what follows the protocol level of a CONNECT: flags, keep-alive, properties (MQTT 5)
/// and payload.
fn parse_connect_fields(
    mut body: Bytes,
    protocol: ProtocolVersion,
    bridge: bool,
) -> Result<Connect, CodecError> {
    // MQTT 5 calls these a Malformed Packet (0x81; a set reserved flag and Will QoS 3 in
    // sections 3.1.2.3 and 3.1.2.6), 3.1.1 a protocol violation; either closes the connection.
    let malformed_in_5 = |what: &'static str| {
        if protocol.is_v5() {
            CodecError::Malformed5("CONNECT", what)
        } else {
            CodecError::Protocol(what)
        }
    };
    if body.remaining() < 3 {
        return Err(malformed_in_5("CONNECT truncated in variable header"));
    }
    let flags = body.get_u8();
    let keep_alive = body.get_u16();
    if flags & FLAG_RESERVED != 0 {
        return Err(malformed_in_5(
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
    let will_qos = QoS::from_u8(will_qos_bits)
        .ok_or_else(|| malformed_in_5("will QoS 3 (3.1.1 [MQTT-3.1.2-14], 5.0 [MQTT-3.1.2-12])"))?;
    let has_username = flags & FLAG_USERNAME != 0;
    let has_password = flags & FLAG_PASSWORD != 0;
    // MQTT 5 allows a password without a user name (section 3.1.2.9).
    if has_password && !has_username && !protocol.is_v5() {
        return Err(CodecError::Protocol(
            "password flag without user name flag [MQTT-3.1.2-22]",
        ));
    }

    let properties = if protocol.is_v5() {
        parse_connect_properties(&mut body)?
    } else {
        ConnectProperties::default()
    };
    let client_id = read_string(&mut body)?;
    let mut will_payload_invalid = false;
    let will = if will_flag {
        let mut will_props = MessageProperties::default();
        let (mut expiry, mut delay) = (None, 0);
        if protocol.is_v5() {
            for (identifier, value) in read_properties(&mut body, WILL_PROPERTIES, "CONNECT")? {
                if identifier == id::WILL_DELAY {
                    delay = value.u32();
                } else {
                    take_message_property(
                        &mut will_props,
                        &mut expiry,
                        identifier,
                        value,
                        "CONNECT",
                    )?;
                }
            }
        }
        let topic = read_string(&mut body)?;
        validate_topic_name(&topic)?;
        let payload = read_binary(&mut body)?;
        will_payload_invalid =
            will_props.payload_format == Some(1) && std::str::from_utf8(&payload).is_err();
        let mut will = LastWill::new(topic, payload, will_qos, will_retain);
        will.properties = Some(Box::new(will_props)).filter(|p| !p.is_empty());
        will.expiry = expiry;
        will.delay = delay;
        Some(will)
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
        return Err(malformed_in_5("trailing bytes after CONNECT payload"));
    }
    Ok(Connect {
        protocol,
        clean_session: flags & FLAG_CLEAN != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
        will_payload_invalid,
        bridge,
    })
}
