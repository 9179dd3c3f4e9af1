//! The records of the log, and their byte encoding. A record is one change to durable state;
//! on disk each is framed as `length (u32 LE) | CRC-32 of the record (u32 LE) | record`.
//!
//! Record bodies start with a kind byte. Integers are little-endian; strings and byte strings
//! carry a u16 length (MQTT's own limit), payloads a u32 length.

use std::sync::Arc;

use thiserror::Error;

use super::frame::{frame, frame_unsealed};
use super::wire::{get_message, get_will, put_message, put_str, put_will, Reader};
use crate::message::{Delivery, LastWill, Message, QoS, SubscriptionOptions};

pub(super) const RETAIN_SET: u8 = 1;
pub(super) const RETAIN_CLEAR: u8 = 2;
pub(super) const SNAPSHOT: u8 = 3;
pub(super) const SESSION_SET: u8 = 4;
pub(super) const SESSION_GONE: u8 = 5;
pub(super) const SUBSCRIBE: u8 = 6;
pub(super) const UNSUBSCRIBE: u8 = 7;
pub(super) const QUEUED: u8 = 8;
pub(super) const SENT: u8 = 9;
pub(super) const RELEASED: u8 = 10;
pub(super) const DONE: u8 = 11;
pub(super) const INBOUND_QOS2: u8 = 12;
pub(super) const INBOUND_RELEASED: u8 = 13;
pub(super) const WILL_SET: u8 = 14;
pub(super) const WILL_CLEAR: u8 = 15;

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
    /// A QoS 1/2 message for a persisted session, kept until [`Record::Done`].
    Queued {
        /// The client id.
        client_id: String,
        /// The delivery's durable id (unique in the log).
        id: u64,
        /// The QoS it is delivered at.
        qos: QoS,
        /// Its RETAIN flag towards the client.
        retain: bool,
        /// Subscription Identifiers sent with it.
        subscription_ids: Vec<u32>,
        /// The message.
        message: Arc<Message>,
    },
    /// The queued message `id` was sent with packet identifier `pid`.
    Sent {
        /// The client id.
        client_id: String,
        /// The durable id.
        id: u64,
        /// Its packet identifier.
        pid: u16,
    },
    /// The client sent PUBREC for the QoS 2 message `id`; PUBREL is what is left.
    Released {
        /// The client id.
        client_id: String,
        /// The durable id.
        id: u64,
    },
    /// The queued message `id` is done: acknowledged, dropped or expired.
    Done {
        /// The client id.
        client_id: String,
        /// The durable id.
        id: u64,
    },
    /// An inbound QoS 2 PUBLISH with `pid` was taken; its PUBREL has not come yet.
    InboundQos2 {
        /// The client id.
        client_id: String,
        /// The packet identifier.
        pid: u16,
    },
    /// The PUBREL of inbound `pid` came.
    InboundReleased {
        /// The client id.
        client_id: String,
        /// The packet identifier.
        pid: u16,
    },
    /// The will of a kept session: armed while its client is connected (`deadline` 0, it
    /// goes out if the connection ends without DISCONNECT, a crash included), or waiting for
    /// its Will Delay Interval until `deadline` (ms since the Unix epoch).
    WillSet {
        /// The client id.
        client_id: String,
        /// 0 while connected; else when the will is published.
        deadline: u64,
        /// The will.
        will: Box<LastWill>,
    },
    /// The session has no will any more: published, cancelled by a reconnection, or its
    /// client disconnected normally.
    WillClear(String),
}

/// The body of a [`Record::Queued`].
pub(super) fn put_queued(
    body: &mut Vec<u8>,
    client_id: &str,
    id: u64,
    qos: QoS,
    retain: bool,
    subscription_ids: &[u32],
    message: &Message,
) {
    body.push(QUEUED);
    put_str(body, client_id);
    body.extend_from_slice(&id.to_le_bytes());
    body.push(qos as u8);
    body.push(u8::from(retain) | u8::from(message.retain) << 1);
    let n = subscription_ids.len().min(usize::from(u16::MAX));
    body.extend_from_slice(&(n as u16).to_le_bytes());
    for sid in &subscription_ids[..n] {
        body.extend_from_slice(&sid.to_le_bytes());
    }
    put_message(body, message);
}

/// The body of a [`Record::Sent`].
pub(super) fn put_sent(body: &mut Vec<u8>, client_id: &str, id: u64, pid: u16) {
    body.push(SENT);
    put_str(body, client_id);
    body.extend_from_slice(&id.to_le_bytes());
    body.extend_from_slice(&pid.to_le_bytes());
}

/// The body of a [`Record::Released`] (`kind` [`RELEASED`]) or [`Record::Done`] ([`DONE`]).
pub(super) fn put_delivery_end(body: &mut Vec<u8>, kind: u8, client_id: &str, id: u64) {
    body.push(kind);
    put_str(body, client_id);
    body.extend_from_slice(&id.to_le_bytes());
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
    /// The [`Record::Queued`] of `delivery` for `client_id`'s session, under durable id `id`.
    pub fn queued(client_id: String, id: u64, delivery: &Delivery) -> Record {
        Record::Queued {
            client_id,
            id,
            qos: delivery.qos,
            retain: delivery.retain,
            subscription_ids: delivery.subscription_ids().to_vec(),
            message: delivery.message.clone(),
        }
    }

    /// The framed record: header and body, ready to append.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(64);
        self.write_frame(&mut frame);
        frame
    }

    /// Appends the framed record (header and body) to `out`.
    pub fn write_frame(&self, out: &mut Vec<u8>) {
        frame(out, |body| self.write_body(body));
    }

    /// Appends the framed record with its CRC-32 left for the writer to fill in.
    pub(super) fn write_unsealed_frame(&self, out: &mut Vec<u8>) {
        frame_unsealed(out, |body| self.write_body(body));
    }

    /// Appends the record's body (kind byte and fields).
    fn write_body(&self, body: &mut Vec<u8>) {
        match self {
            Record::RetainSet(message) => {
                body.push(RETAIN_SET);
                put_message(body, message);
            }
            Record::RetainClear(topic) => {
                body.push(RETAIN_CLEAR);
                put_str(body, topic);
            }
            Record::Snapshot => body.push(SNAPSHOT),
            Record::SessionSet {
                client_id,
                expiry,
                offline_since,
            } => {
                body.push(SESSION_SET);
                put_str(body, client_id);
                body.extend_from_slice(&expiry.to_le_bytes());
                body.extend_from_slice(&offline_since.to_le_bytes());
            }
            Record::SessionGone(client_id) => {
                body.push(SESSION_GONE);
                put_str(body, client_id);
            }
            Record::Subscribe {
                client_id,
                filter,
                options,
            } => {
                body.push(SUBSCRIBE);
                put_str(body, client_id);
                put_str(body, filter);
                body.push(options.qos as u8);
                body.push(u8::from(options.no_local) | u8::from(options.retain_as_published) << 1);
                body.push(options.retain_handling);
                body.extend_from_slice(&options.id.unwrap_or(0).to_le_bytes());
            }
            Record::Unsubscribe { client_id, filter } => {
                body.push(UNSUBSCRIBE);
                put_str(body, client_id);
                put_str(body, filter);
            }
            Record::Queued {
                client_id,
                id,
                qos,
                retain,
                subscription_ids,
                message,
            } => put_queued(
                body,
                client_id,
                *id,
                *qos,
                *retain,
                subscription_ids,
                message,
            ),
            Record::Sent { client_id, id, pid } => put_sent(body, client_id, *id, *pid),
            Record::Released { client_id, id } => put_delivery_end(body, RELEASED, client_id, *id),
            Record::Done { client_id, id } => put_delivery_end(body, DONE, client_id, *id),
            Record::WillSet {
                client_id,
                deadline,
                will,
            } => {
                body.push(WILL_SET);
                put_str(body, client_id);
                body.extend_from_slice(&deadline.to_le_bytes());
                put_will(body, will);
            }
            Record::WillClear(client_id) => {
                body.push(WILL_CLEAR);
                put_str(body, client_id);
            }
            Record::InboundQos2 { client_id, pid } | Record::InboundReleased { client_id, pid } => {
                body.push(if matches!(self, Record::InboundQos2 { .. }) {
                    INBOUND_QOS2
                } else {
                    INBOUND_RELEASED
                });
                put_str(body, client_id);
                body.extend_from_slice(&pid.to_le_bytes());
            }
        }
    }

    /// Decodes one record body (the CRC already checked).
    pub fn decode(body: &[u8]) -> Result<Record, RecordError> {
        let mut r = Reader(body);
        let record = match r.u8()? {
            RETAIN_SET => Record::RetainSet(Arc::new(get_message(&mut r, true)?)),
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
            QUEUED => {
                let client_id = r.string()?;
                let id = r.u64()?;
                let qos = QoS::from_u8(r.u8()?).ok_or(RecordError::Invalid("QoS above 2"))?;
                let flags = r.u8()?;
                if flags > 3 || qos == QoS::AtMostOnce {
                    return Err(RecordError::Invalid("bad queued message flags"));
                }
                let n = r.u16()?;
                let mut subscription_ids = Vec::with_capacity(usize::from(n).min(64));
                for _ in 0..n {
                    subscription_ids.push(r.u32()?);
                }
                let message = get_message(&mut r, flags & 2 != 0)?;
                Record::Queued {
                    client_id,
                    id,
                    qos,
                    retain: flags & 1 != 0,
                    subscription_ids,
                    message: Arc::new(message),
                }
            }
            SENT => Record::Sent {
                client_id: r.string()?,
                id: r.u64()?,
                pid: r.u16()?,
            },
            RELEASED => Record::Released {
                client_id: r.string()?,
                id: r.u64()?,
            },
            DONE => Record::Done {
                client_id: r.string()?,
                id: r.u64()?,
            },
            INBOUND_QOS2 => Record::InboundQos2 {
                client_id: r.string()?,
                pid: r.u16()?,
            },
            INBOUND_RELEASED => Record::InboundReleased {
                client_id: r.string()?,
                pid: r.u16()?,
            },
            WILL_SET => Record::WillSet {
                client_id: r.string()?,
                deadline: r.u64()?,
                will: Box::new(get_will(&mut r)?),
            },
            WILL_CLEAR => Record::WillClear(r.string()?),
            _ => return Err(RecordError::Invalid("unknown record kind")),
        };
        if !r.0.is_empty() {
            return Err(RecordError::Invalid("bytes after the record"));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageProperties;
    use crate::persistence::LiveKind;
    use bytes::Bytes;
    use std::time::Instant;

    fn body(frame: &[u8]) -> &[u8] {
        &frame[FRAME_HEADER..]
    }

    #[test]
    fn a_will_with_its_properties_delay_and_deadline_round_trips() {
        let mut will = LastWill::new(
            "gates/1/status",
            Bytes::from_static(b"offline"),
            QoS::AtLeastOnce,
            true,
        );
        will.properties = Some(Box::new(MessageProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("why".into(), "lost".into())],
            ..MessageProperties::default()
        }));
        will.expiry = Some(60);
        will.delay = 30;
        let record = Record::WillSet {
            client_id: "gate-1".into(),
            deadline: 1_700_000_000_000,
            will: Box::new(will.clone()),
        };
        let frame = record.to_frame();
        let Record::WillSet {
            client_id,
            deadline,
            will: back,
        } = Record::decode(body(&frame)).expect("decodes")
        else {
            panic!("kind");
        };
        assert_eq!(
            (client_id.as_str(), deadline),
            ("gate-1", 1_700_000_000_000)
        );
        assert_eq!(*back, will);
        for cut in 0..body(&frame).len() {
            assert!(
                Record::decode(&body(&frame)[..cut]).is_err(),
                "cut at {cut}"
            );
        }
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

    #[test]
    fn queued_messages_and_their_progress_round_trip_and_key_by_session_and_id() {
        let message = Message::new("d/1", Bytes::from_static(b"on"), QoS::ExactlyOnce, true);
        let mut delivery =
            Delivery::new(Arc::new(message), QoS::AtLeastOnce, false).with_extras(vec![7, 9], None);
        delivery.set_durable_id(Some(42));
        let queued = Record::queued("c1".into(), 42, &delivery);
        let Record::Queued {
            client_id,
            id,
            qos,
            retain,
            subscription_ids,
            message,
        } = Record::decode(body(&queued.to_frame())).expect("decodes")
        else {
            panic!("kind");
        };
        assert_eq!(
            (client_id.as_str(), id, qos, retain),
            ("c1", 42, QoS::AtLeastOnce, false)
        );
        assert_eq!(subscription_ids, vec![7, 9]);
        assert!(message.retain, "the message's own RETAIN flag is kept");
        assert_eq!(&message.payload[..], b"on");
        let live = |record: &Record| {
            let mut key = Vec::new();
            let kind = record.live_key(&mut key);
            (kind, key)
        };
        assert_eq!(
            live(&Record::SessionGone("c1".into())),
            (LiveKind::RemovePrefix, b"s:c1\0".to_vec())
        );
        // The queued message is under its session (whose removal takes it); the records of its
        // progress find it by its id alone, which they share with it.
        let (kind, queued_key) = live(&queued);
        assert_eq!(kind, LiveKind::QueuedSet);
        assert!(queued_key.starts_with(b"s:c1\0\0q"), "{queued_key:?}");
        let queued_id = super::super::live::split_queued_key(&queued_key).map(|(_, id)| id);
        assert_eq!(queued_id, Some(42));
        for record in [
            Record::Sent {
                client_id: "c1".into(),
                id: 42,
                pid: 3,
            },
            Record::Released {
                client_id: "c1".into(),
                id: 42,
            },
            Record::Done {
                client_id: "c1".into(),
                id: 42,
            },
        ] {
            let back = Record::decode(body(&record.to_frame())).expect("decodes");
            assert_eq!(live(&back), live(&record));
            let (kind, key) = live(&record);
            assert!(
                matches!(kind, LiveKind::QueuedAppend | LiveKind::QueuedRemove),
                "{record:?}"
            );
            assert_eq!(key, [&b"\0q"[..], &42u64.to_be_bytes()].concat());
            let id = super::super::live::split_queued_key(&key).map(|(_, id)| id);
            assert_eq!(id, queued_id, "{record:?} finds its message");
        }
        for record in [
            Record::InboundQos2 {
                client_id: "c1".into(),
                pid: 5,
            },
            Record::InboundReleased {
                client_id: "c1".into(),
                pid: 5,
            },
        ] {
            let back = Record::decode(body(&record.to_frame())).expect("decodes");
            assert_eq!(live(&back), live(&record));
            let (kind, key) = live(&record);
            assert_ne!(kind, LiveKind::None);
            assert!(key.starts_with(b"s:c1\0\0"), "{key:?} is under the session");
        }
    }
}
