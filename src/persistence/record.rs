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
pub(super) const LOG_FORMAT_KIND: u8 = 16;

/// The format of the log this build writes, in the [`Record::LogFormat`] at the head of every
/// segment it starts. 2: sessions carry their user, and segments start with their format; a
/// log without one is of this format or the one before (1), both read alike. A build reads a
/// log of its own format or an older one, and refuses to start on a newer one.
pub const LOG_FORMAT: u16 = 2;

/// [`SessionUser`] tags in a [`Record::SessionSet`] body.
const USER_ANONYMOUS: u8 = 0;
const USER_NAMED: u8 = 1;

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
        /// Who its client connected as; `None` when not recorded (the broker records it only
        /// with an ACL, which picks shared-group members by it; logs of earlier versions
        /// have none). Encoded after the other fields, only when known.
        user: Option<SessionUser>,
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
    /// The first record of a segment: the [`LOG_FORMAT`] of the build that started it.
    LogFormat(u16),
}

/// Who a kept session's client connected as ([`Record::SessionSet`]), so that after a
/// restart the ACL can tell which member of a shared group may read a message while the
/// session is offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionUser {
    /// It connected without a user name.
    Anonymous,
    /// It connected with this user name.
    Named(String),
}

impl SessionUser {
    /// Of a client that connected with `username`, or without one.
    pub fn from_username(username: Option<&str>) -> Self {
        username.map_or(SessionUser::Anonymous, |name| {
            SessionUser::Named(name.into())
        })
    }

    /// The user name; `None` for a client that connected without one.
    pub fn into_username(self) -> Option<String> {
        match self {
            SessionUser::Named(name) => Some(name),
            SessionUser::Anonymous => None,
        }
    }
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
    /// The kind byte is none this build knows: a newer build wrote it, or it is damage.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
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
            Record::LogFormat(format) => {
                body.push(LOG_FORMAT_KIND);
                body.extend_from_slice(&format.to_le_bytes());
            }
            Record::SessionSet {
                client_id,
                expiry,
                offline_since,
                user,
            } => {
                body.push(SESSION_SET);
                put_str(body, client_id);
                body.extend_from_slice(&expiry.to_le_bytes());
                body.extend_from_slice(&offline_since.to_le_bytes());
                match user {
                    None => {}
                    Some(SessionUser::Anonymous) => body.push(USER_ANONYMOUS),
                    Some(SessionUser::Named(name)) => {
                        body.push(USER_NAMED);
                        put_str(body, name);
                    }
                }
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
                user: if r.0.is_empty() {
                    None
                } else {
                    Some(match r.u8()? {
                        USER_ANONYMOUS => SessionUser::Anonymous,
                        USER_NAMED => SessionUser::Named(r.string()?),
                        _ => return Err(RecordError::Invalid("unknown kind of session user")),
                    })
                },
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
            LOG_FORMAT_KIND => Record::LogFormat(r.u16()?),
            kind => return Err(RecordError::UnknownKind(kind)),
        };
        if !r.0.is_empty() {
            return Err(RecordError::Invalid("bytes after the record"));
        }
        Ok(record)
    }
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
