//! The byte encoding of record fields: little-endian integers, strings and byte strings with a
//! u16 length, payloads with a u32 length, deadlines as wall-clock milliseconds.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::record::RecordError;
use crate::message::{LastWill, Message, MessageProperties, QoS};

/// A deadline as milliseconds since the Unix epoch (wall clock, so it holds across a restart);
/// 0 for none.
pub(super) fn wall_clock_deadline(at: Option<Instant>) -> u64 {
    let Some(at) = at else {
        return 0;
    };
    let left = at.saturating_duration_since(Instant::now());
    let when = SystemTime::now() + left;
    when.duration_since(UNIX_EPOCH)
        .map_or(1, |d| (d.as_millis() as u64).max(1))
}

/// The monotonic deadline of a wall-clock one (0: none); one already past is now.
pub(super) fn instant_of(unix_ms: u64) -> Option<Instant> {
    if unix_ms == 0 {
        return None;
    }
    let when = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let left = when
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Some(Instant::now() + left)
}

/// A message's topic, QoS, expiry (wall clock), payload and properties; its RETAIN flag is the
/// caller's.
pub(super) fn put_message(body: &mut Vec<u8>, message: &Message) {
    put_str(body, &message.topic);
    body.push(message.qos as u8);
    body.extend_from_slice(&wall_clock_deadline(message.expires_at).to_le_bytes());
    put_payload_and_properties(body, &message.payload, message.properties.as_deref());
}

/// A payload (u32 length) and optional MQTT 5 properties (a flag byte, then the properties).
fn put_payload_and_properties(
    body: &mut Vec<u8>,
    payload: &[u8],
    properties: Option<&MessageProperties>,
) {
    body.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    body.extend_from_slice(payload);
    match properties {
        None => body.push(0),
        Some(p) => {
            body.push(1);
            put_properties(body, p);
        }
    }
}

/// Reads what [`put_payload_and_properties`] wrote.
fn get_payload_and_properties(
    r: &mut Reader<'_>,
) -> Result<(Bytes, Option<Box<MessageProperties>>), RecordError> {
    let len = r.u32()? as usize;
    let payload = Bytes::copy_from_slice(r.take(len)?);
    let properties = match r.u8()? {
        0 => None,
        1 => Some(Box::new(get_properties(r)?)),
        _ => return Err(RecordError::Invalid("bad properties flag")),
    };
    Ok((payload, properties))
}

pub(super) fn get_message(r: &mut Reader<'_>, retain: bool) -> Result<Message, RecordError> {
    let topic = r.string()?;
    let qos = QoS::from_u8(r.u8()?).ok_or(RecordError::Invalid("QoS above 2"))?;
    let expires_at = instant_of(r.u64()?);
    let (payload, properties) = get_payload_and_properties(r)?;
    let mut message = Message::new(topic, payload, qos, retain);
    message.properties = properties;
    message.expires_at = expires_at;
    Ok(message)
}

/// A will: topic, QoS, RETAIN, payload, properties, message expiry and delay.
pub(super) fn put_will(body: &mut Vec<u8>, will: &LastWill) {
    put_str(body, &will.topic);
    body.push(will.qos as u8);
    body.push(u8::from(will.retain));
    put_payload_and_properties(body, &will.payload, will.properties.as_deref());
    match will.expiry {
        None => body.push(0),
        Some(e) => {
            body.push(1);
            body.extend_from_slice(&e.to_le_bytes());
        }
    }
    body.extend_from_slice(&will.delay.to_le_bytes());
}

pub(super) fn get_will(r: &mut Reader<'_>) -> Result<LastWill, RecordError> {
    let topic = r.string()?;
    let qos = QoS::from_u8(r.u8()?).ok_or(RecordError::Invalid("QoS above 2"))?;
    let retain = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(RecordError::Invalid("bad will retain flag")),
    };
    let (payload, properties) = get_payload_and_properties(r)?;
    let expiry = match r.u8()? {
        0 => None,
        1 => Some(r.u32()?),
        _ => return Err(RecordError::Invalid("bad will expiry flag")),
    };
    let mut will = LastWill::new(topic, payload, qos, retain);
    will.properties = properties;
    will.expiry = expiry;
    will.delay = r.u32()?;
    Ok(will)
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // MQTT strings and binary data are at most 65,535 bytes; the codec refused longer ones.
    let len = b.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&b[..len]);
}

pub(super) fn put_opt_str(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

pub(super) fn put_properties(out: &mut Vec<u8>, p: &MessageProperties) {
    out.push(p.payload_format.map_or(0xFF, |f| f.min(0xFE)));
    put_opt_str(out, &p.content_type);
    put_opt_str(out, &p.response_topic);
    match &p.correlation_data {
        None => out.push(0),
        Some(d) => {
            out.push(1);
            put_bytes(out, d);
        }
    }
    let n = p.user_properties.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(n as u16).to_le_bytes());
    for (k, v) in &p.user_properties[..n] {
        put_str(out, k);
        put_str(out, v);
    }
}

pub(super) fn get_properties(r: &mut Reader<'_>) -> Result<MessageProperties, RecordError> {
    let payload_format = match r.u8()? {
        0xFF => None,
        f => Some(f),
    };
    let content_type = r.opt_string()?;
    let response_topic = r.opt_string()?;
    let correlation_data = match r.u8()? {
        0 => None,
        1 => Some(Bytes::copy_from_slice(r.bytes16()?)),
        _ => return Err(RecordError::Invalid("bad correlation data flag")),
    };
    let n = r.u16()?;
    let mut user_properties = Vec::with_capacity(usize::from(n).min(1024));
    for _ in 0..n {
        user_properties.push((r.string()?, r.string()?));
    }
    Ok(MessageProperties {
        payload_format,
        content_type,
        response_topic,
        correlation_data,
        user_properties,
    })
}

/// Reads fields off the front of a record body.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(super) fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, RecordError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn u64(&mut self) -> Result<u64, RecordError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub(super) fn bytes16(&mut self) -> Result<&'a [u8], RecordError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    pub(super) fn string(&mut self) -> Result<String, RecordError> {
        let b = self.bytes16()?;
        String::from_utf8(b.to_vec()).map_err(|_| RecordError::Invalid("string not UTF-8"))
    }

    pub(super) fn opt_string(&mut self) -> Result<Option<String>, RecordError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(RecordError::Invalid("bad optional string flag")),
        }
    }
}
