//! The records of the log, and their byte encoding. A record is one change to durable state;
//! on disk each is framed as `length (u32 LE) | CRC-32 of the record (u32 LE) | record`.
//!
//! Record bodies start with a kind byte. Integers are little-endian; strings and byte strings
//! carry a u16 length (MQTT's own limit), payloads a u32 length.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use thiserror::Error;

use crate::message::{Message, MessageProperties, QoS, SubscriptionOptions};

const RETAIN_SET: u8 = 1;
const RETAIN_CLEAR: u8 = 2;
const SNAPSHOT: u8 = 3;
const SESSION_SET: u8 = 4;
const SESSION_GONE: u8 = 5;
const SUBSCRIBE: u8 = 6;
const UNSUBSCRIBE: u8 = 7;

/// Bytes of a frame header: length and CRC.
pub const FRAME_HEADER: usize = 8;

/// Largest record accepted when reading: a retained message of the largest packet MQTT allows,
/// with room for its properties.
pub const MAX_RECORD: usize = 256 * 1024 * 1024 + 64 * 1024;

/// One change to durable state.
#[derive(Debug, Clone)]
pub enum Record {
    /// A retained message was stored for its topic (replacing any other).
    RetainSet(Arc<Message>),
    /// The retained message of a topic was removed.
    RetainClear(String),
    /// Everything before this record (in earlier segments) is superseded: a compaction wrote the
    /// whole state after it.
    Snapshot,
    /// A session with an expiry interval above 0 exists for `client_id` (new, or changed).
    SessionSet {
        /// The client id.
        client_id: String,
        /// Session Expiry Interval in seconds; `u32::MAX` never.
        expiry: u32,
        /// When its connection ended, in ms since the Unix epoch; 0 while connected.
        offline_since: u64,
    },
    /// The session of `client_id` ended (clean start, expiry, or an interval of 0); its
    /// subscriptions with it.
    SessionGone(String),
    /// A subscription of a persisted session.
    Subscribe {
        /// The client id.
        client_id: String,
        /// The filter as subscribed (`$share/...` included).
        filter: String,
        /// Its options.
        options: SubscriptionOptions,
    },
    /// A subscription removed.
    Unsubscribe {
        /// The client id.
        client_id: String,
        /// The filter.
        filter: String,
    },
}

/// Why a record could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    /// The record ends before its fields do.
    #[error("record truncated")]
    Truncated,
    /// A field holds a value no writer produces.
    #[error("{0}")]
    Invalid(&'static str),
}

impl Record {
    /// The key under which this record is part of the live state (for compaction): the same key
    /// replaces, a removal record's key (or, for a session, key prefix) removes. `None` for the
    /// snapshot marker.
    pub fn live_key(&self) -> Option<String> {
        Some(match self {
            Record::RetainSet(message) => format!("r:{}", message.topic),
            Record::RetainClear(topic) => format!("r:{topic}"),
            Record::SessionSet { client_id, .. } | Record::SessionGone(client_id) => {
                format!("s:{client_id}\0")
            }
            Record::Subscribe {
                client_id, filter, ..
            }
            | Record::Unsubscribe { client_id, filter } => format!("s:{client_id}\0{filter}"),
            Record::Snapshot => return None,
        })
    }

    /// Whether this record removes what its [`live_key`](Record::live_key) names (a session:
    /// everything under its prefix).
    pub fn removes(&self) -> bool {
        matches!(
            self,
            Record::RetainClear(_) | Record::SessionGone(_) | Record::Unsubscribe { .. }
        )
    }

    /// The framed record: header and body, ready to append.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64);
        match self {
            Record::RetainSet(message) => {
                body.push(RETAIN_SET);
                put_str(&mut body, &message.topic);
                body.push(message.qos as u8);
                body.extend_from_slice(&wall_clock_deadline(message.expires_at).to_le_bytes());
                body.extend_from_slice(&(message.payload.len() as u32).to_le_bytes());
                body.extend_from_slice(&message.payload);
                match message.properties.as_deref() {
                    None => body.push(0),
                    Some(p) => {
                        body.push(1);
                        put_properties(&mut body, p);
                    }
                }
            }
            Record::RetainClear(topic) => {
                body.push(RETAIN_CLEAR);
                put_str(&mut body, topic);
            }
            Record::Snapshot => body.push(SNAPSHOT),
            Record::SessionSet {
                client_id,
                expiry,
                offline_since,
            } => {
                body.push(SESSION_SET);
                put_str(&mut body, client_id);
                body.extend_from_slice(&expiry.to_le_bytes());
                body.extend_from_slice(&offline_since.to_le_bytes());
            }
            Record::SessionGone(client_id) => {
                body.push(SESSION_GONE);
                put_str(&mut body, client_id);
            }
            Record::Subscribe {
                client_id,
                filter,
                options,
            } => {
                body.push(SUBSCRIBE);
                put_str(&mut body, client_id);
                put_str(&mut body, filter);
                body.push(options.qos as u8);
                body.push(u8::from(options.no_local) | u8::from(options.retain_as_published) << 1);
                body.push(options.retain_handling);
                body.extend_from_slice(&options.id.unwrap_or(0).to_le_bytes());
            }
            Record::Unsubscribe { client_id, filter } => {
                body.push(UNSUBSCRIBE);
                put_str(&mut body, client_id);
                put_str(&mut body, filter);
            }
        }
        let mut frame = Vec::with_capacity(FRAME_HEADER + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    /// Decodes one record body (the CRC already checked).
    pub fn decode(body: &[u8]) -> Result<Record, RecordError> {
        let mut r = Reader(body);
        let record = match r.u8()? {
            RETAIN_SET => {
                let topic = r.string()?;
                let qos = QoS::from_u8(r.u8()?).ok_or(RecordError::Invalid("QoS above 2"))?;
                let expires_at = instant_of(r.u64()?);
                let len = r.u32()? as usize;
                let payload = Bytes::copy_from_slice(r.take(len)?);
                let properties = match r.u8()? {
                    0 => None,
                    1 => Some(Box::new(get_properties(&mut r)?)),
                    _ => return Err(RecordError::Invalid("bad properties flag")),
                };
                let mut message = Message::new(topic, payload, qos, true);
                message.properties = properties;
                message.expires_at = expires_at;
                Record::RetainSet(Arc::new(message))
            }
            RETAIN_CLEAR => Record::RetainClear(r.string()?),
            SNAPSHOT => Record::Snapshot,
            SESSION_SET => Record::SessionSet {
                client_id: r.string()?,
                expiry: r.u32()?,
                offline_since: r.u64()?,
            },
            SESSION_GONE => Record::SessionGone(r.string()?),
            SUBSCRIBE => {
                let client_id = r.string()?;
                let filter = r.string()?;
                let qos = QoS::from_u8(r.u8()?).ok_or(RecordError::Invalid("QoS above 2"))?;
                let flags = r.u8()?;
                let retain_handling = r.u8()?;
                if flags > 3 || retain_handling > 2 {
                    return Err(RecordError::Invalid("bad subscription options"));
                }
                let id = r.u32()?;
                Record::Subscribe {
                    client_id,
                    filter,
                    options: SubscriptionOptions {
                        qos,
                        no_local: flags & 1 != 0,
                        retain_as_published: flags & 2 != 0,
                        retain_handling,
                        id: (id != 0).then_some(id),
                    },
                }
            }
            UNSUBSCRIBE => Record::Unsubscribe {
                client_id: r.string()?,
                filter: r.string()?,
            },
            _ => return Err(RecordError::Invalid("unknown record kind")),
        };
        if !r.0.is_empty() {
            return Err(RecordError::Invalid("bytes after the record"));
        }
        Ok(record)
    }
}

/// A deadline as milliseconds since the Unix epoch (wall clock, so it holds across a restart);
/// 0 for none.
fn wall_clock_deadline(at: Option<Instant>) -> u64 {
    let Some(at) = at else {
        return 0;
    };
    let left = at.saturating_duration_since(Instant::now());
    let when = SystemTime::now() + left;
    when.duration_since(UNIX_EPOCH)
        .map_or(1, |d| (d.as_millis() as u64).max(1))
}

/// The monotonic deadline of a wall-clock one (0: none); one already past is now.
fn instant_of(unix_ms: u64) -> Option<Instant> {
    if unix_ms == 0 {
        return None;
    }
    let when = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let left = when
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Some(Instant::now() + left)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // MQTT strings and binary data are at most 65,535 bytes; the codec refused longer ones.
    let len = b.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&b[..len]);
}

fn put_opt_str(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

fn put_properties(out: &mut Vec<u8>, p: &MessageProperties) {
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

fn get_properties(r: &mut Reader<'_>) -> Result<MessageProperties, RecordError> {
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
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes16(&mut self) -> Result<&'a [u8], RecordError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn string(&mut self) -> Result<String, RecordError> {
        let b = self.bytes16()?;
        String::from_utf8(b.to_vec()).map_err(|_| RecordError::Invalid("string not UTF-8"))
    }

    fn opt_string(&mut self) -> Result<Option<String>, RecordError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(RecordError::Invalid("bad optional string flag")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        &frame[FRAME_HEADER..]
    }

    #[test]
    fn a_retained_message_with_properties_and_expiry_round_trips() {
        let props = MessageProperties {
            payload_format: Some(1),
            content_type: Some("text/plain".into()),
            response_topic: Some("r/1".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "v".into())],
        };
        let message = Message::new(
            "gate/1/state",
            Bytes::from_static(b"closed"),
            QoS::AtLeastOnce,
            true,
        )
        .with_properties(Some(Box::new(props.clone())), Some(3600));
        let frame = Record::RetainSet(Arc::new(message)).to_frame();
        let Record::RetainSet(back) = Record::decode(body(&frame)).expect("decodes") else {
            panic!("kind");
        };
        assert_eq!(back.topic, "gate/1/state");
        assert_eq!(&back.payload[..], b"closed");
        assert_eq!(back.qos, QoS::AtLeastOnce);
        assert_eq!(back.properties.as_deref(), Some(&props));
        let left = back.remaining_expiry(Instant::now()).expect("expires");
        assert!((3598..=3600).contains(&left), "{left}");
    }

    #[test]
    fn every_truncation_of_a_record_is_an_error_not_a_panic() {
        let message = Message::new("a/b", Bytes::from_static(b"xyz"), QoS::AtMostOnce, true);
        let frame = Record::RetainSet(Arc::new(message)).to_frame();
        let b = body(&frame);
        for cut in 0..b.len() {
            assert!(Record::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            Record::decode(body(&Record::RetainClear("a".into()).to_frame())),
            Ok(Record::RetainClear(t)) if t == "a"
        ));
    }
}
