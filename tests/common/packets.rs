//! Builders for client-to-server packets, byte by byte from the spec, independent of the broker's
//! codec.

fn remaining_length(mut len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return out;
        }
    }
}

/// A packet from its first byte and body.
pub fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![byte1];
    out.extend(remaining_length(body.len()));
    out.extend_from_slice(body);
    out
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// Everything a CONNECT can carry.
#[derive(Debug, Clone)]
pub struct ConnectSpec<'a> {
    pub protocol_name: &'a str,
    pub level: u8,
    pub clean: bool,
    pub keep_alive: u16,
    pub client_id: &'a str,
    /// (topic, payload, qos, retain)
    pub will: Option<(&'a str, &'a [u8], u8, bool)>,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// Replaces the computed connect flags byte.
    pub flags_override: Option<u8>,
}

impl Default for ConnectSpec<'_> {
    fn default() -> Self {
        ConnectSpec {
            protocol_name: "MQTT",
            level: 4,
            clean: true,
            keep_alive: 60,
            client_id: "",
            will: None,
            username: None,
            password: None,
            flags_override: None,
        }
    }
}

impl ConnectSpec<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some((_, _, qos, retain)) = self.will {
            flags |= 0x04 | (qos << 3) | if retain { 0x20 } else { 0 };
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        let mut body = string(self.protocol_name.as_bytes());
        body.push(self.level);
        body.push(self.flags_override.unwrap_or(flags));
        body.extend(self.keep_alive.to_be_bytes());
        if self.level == 5 {
            body.push(0); // MQTT 5 property length
        }
        body.extend(string(self.client_id.as_bytes()));
        if let Some((topic, payload, _, _)) = self.will {
            if self.level == 5 {
                body.push(0); // will property length
            }
            body.extend(string(topic.as_bytes()));
            body.extend(string(payload));
        }
        if let Some(user) = self.username {
            body.extend(string(user.as_bytes()));
        }
        if let Some(password) = self.password {
            body.extend(string(password));
        }
        frame(0x10, &body)
    }
}

/// A plain MQTT 3.1.1 CONNECT.
pub fn connect(client_id: &str, clean: bool, keep_alive: u16) -> Vec<u8> {
    ConnectSpec {
        client_id,
        clean,
        keep_alive,
        ..Default::default()
    }
    .encode()
}

/// A PUBLISH.
pub fn publish(topic: &str, payload: &[u8], qos: u8, pid: u16, retain: bool, dup: bool) -> Vec<u8> {
    let byte1 = 0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain);
    let mut body = string(topic.as_bytes());
    if qos > 0 {
        body.extend(pid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    frame(byte1, &body)
}

/// A SUBSCRIBE.
pub fn subscribe(pid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        body.extend(string(filter.as_bytes()));
        body.push(*qos);
    }
    frame(0x82, &body)
}

/// An UNSUBSCRIBE.
pub fn unsubscribe(pid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    for filter in filters {
        body.extend(string(filter.as_bytes()));
    }
    frame(0xA2, &body)
}

/// The first whole packet in `bytes`, and how many bytes it took; `None` while it is not whole.
pub fn split_frame(bytes: &[u8]) -> Option<(super::Frame, usize)> {
    let (mut len, mut shift, mut at) = (0usize, 0, 1);
    loop {
        let byte = *bytes.get(at)?;
        len |= usize::from(byte & 0x7F) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let body = bytes.get(at..at + len)?.to_vec();
    Some((
        super::Frame {
            byte1: bytes[0],
            body,
        },
        at + len,
    ))
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP by first byte.
pub fn ack(byte1: u8, pid: u16) -> Vec<u8> {
    frame(byte1, &pid.to_be_bytes())
}

/// A decoded PUBLISH from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub pid: u16,
    pub retain: bool,
    pub dup: bool,
}

/// Decodes a PUBLISH frame.
pub fn parse_publish(frame: &super::Frame) -> Published {
    assert_eq!(frame.packet_type(), 3, "PUBLISH expected, got {frame:?}");
    let qos = (frame.byte1 >> 1) & 3;
    let topic_len = u16::from_be_bytes([frame.body[0], frame.body[1]]) as usize;
    let topic = String::from_utf8(frame.body[2..2 + topic_len].to_vec()).expect("utf-8 topic");
    let mut at = 2 + topic_len;
    let pid = if qos > 0 {
        at += 2;
        u16::from_be_bytes([frame.body[at - 2], frame.body[at - 1]])
    } else {
        0
    };
    Published {
        topic,
        payload: frame.body[at..].to_vec(),
        qos,
        pid,
        retain: frame.byte1 & 1 == 1,
        dup: frame.byte1 & 8 == 8,
    }
}
