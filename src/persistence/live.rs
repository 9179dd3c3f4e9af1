//! Where each record sits in the live state the writer keeps for compaction: its key, and
//! what it does there.

use super::record::{
    Record, DONE, INBOUND_QOS2, INBOUND_RELEASED, QUEUED, RELEASED, RETAIN_CLEAR, RETAIN_SET, SENT,
    SESSION_GONE, SESSION_SET, SUBSCRIBE, UNSUBSCRIBE, WILL_CLEAR, WILL_SET,
};
use super::wire::Reader;

/// What a record does to the live state the writer keeps for compaction, under the key
/// [`Record::live_key`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveKind {
    /// Nothing (the snapshot marker).
    None,
    /// The record is the live value of the key, replacing any.
    Set,
    /// The record joins the key's live value, if the key is live.
    Append,
    /// The key is no longer live.
    Remove,
    /// No key starting with this one is live any more.
    RemovePrefix,
    /// A queued message (`queued_key`): the record is its first live frame.
    QueuedSet,
    /// The record of its sending or release joins its live frames, if it is live.
    QueuedAppend,
    /// It is no longer live (delivered, or dropped).
    QueuedRemove,
}

/// Appends the key prefix of everything of `client_id`'s session: `s:{client_id}\0`.
pub(super) fn session_key(key: &mut Vec<u8>, client_id: &[u8]) {
    key.extend_from_slice(b"s:");
    key.extend_from_slice(client_id);
    key.push(0);
}

/// The bytes after a session's key prefix in a queued message's key: `\0q` and the id.
pub(super) const QUEUED_KEY_SUFFIX: usize = 2 + 8;

/// Appends the key of a `Queued` record: the prefix of its session (`client_id`'s), `\0q`, and
/// the durable id as 8 big-endian bytes. Durable ids are unique across sessions, so the writer
/// keys its queued messages by the id alone ([`split_queued_key`]) and keeps the prefix for the
/// session.
pub(super) fn queued_key(key: &mut Vec<u8>, client_id: &[u8], id: u64) {
    session_key(key, client_id);
    key.extend_from_slice(b"\0q");
    key.extend_from_slice(&id.to_be_bytes());
}

/// Appends the key of a queued message's later records (`Sent`, `Released`, `Done`): the
/// suffix of [`queued_key`] alone, `\0q` and the id. The writer finds the message by its id
/// ([`split_queued_key`] gives an empty prefix), so these keys (two of the three records of
/// every QoS 1 message delivered) cost the submitter no copy of the client id.
pub(super) fn queued_id_key(key: &mut Vec<u8>, id: u64) {
    key.extend_from_slice(b"\0q");
    key.extend_from_slice(&id.to_be_bytes());
}

/// A queued message's key split into its session's key prefix and its id (`None` for a key
/// too short to be one).
pub(super) fn split_queued_key(key: &[u8]) -> Option<(&[u8], u64)> {
    let prefix_len = key.len().checked_sub(QUEUED_KEY_SUFFIX)?;
    let id: [u8; 8] = key[prefix_len + 2..].try_into().ok()?;
    Some((&key[..prefix_len], u64::from_be_bytes(id)))
}

impl Record {
    /// Writes the key of this record in the live state (for compaction) to `key` and says
    /// what the record does to it. Everything of a session sits under the key prefix
    /// `s:{client_id}\0`: the session itself, then its subscriptions by filter, and after a
    /// second NUL (no filter holds one) its queued messages (`q` and the id) and inbound
    /// QoS 2 ids (`i` and the id), and its will (`w`).
    pub fn live_key(&self, key: &mut Vec<u8>) -> LiveKind {
        let session = |key: &mut Vec<u8>, client_id: &str| session_key(key, client_id.as_bytes());
        let queued = |key: &mut Vec<u8>, client_id: &str, id: u64| {
            queued_key(key, client_id.as_bytes(), id);
        };
        let inbound = |key: &mut Vec<u8>, client_id: &str, pid: u16| {
            session(key, client_id);
            key.extend_from_slice(b"\0i");
            key.extend_from_slice(&pid.to_be_bytes());
        };
        match self {
            Record::RetainSet(message) => {
                key.extend_from_slice(b"r:");
                key.extend_from_slice(message.topic.as_bytes());
                LiveKind::Set
            }
            Record::RetainClear(topic) => {
                key.extend_from_slice(b"r:");
                key.extend_from_slice(topic.as_bytes());
                LiveKind::Remove
            }
            Record::SessionSet { client_id, .. } => {
                session(key, client_id);
                LiveKind::Set
            }
            Record::SessionGone(client_id) => {
                session(key, client_id);
                LiveKind::RemovePrefix
            }
            Record::Subscribe {
                client_id, filter, ..
            } => {
                session(key, client_id);
                key.extend_from_slice(filter.as_bytes());
                LiveKind::Set
            }
            Record::Unsubscribe { client_id, filter } => {
                session(key, client_id);
                key.extend_from_slice(filter.as_bytes());
                LiveKind::Remove
            }
            Record::Queued { client_id, id, .. } => {
                queued(key, client_id, *id);
                LiveKind::QueuedSet
            }
            Record::Sent { id, .. } | Record::Released { id, .. } => {
                queued_id_key(key, *id);
                LiveKind::QueuedAppend
            }
            Record::Done { id, .. } => {
                queued_id_key(key, *id);
                LiveKind::QueuedRemove
            }
            Record::WillSet { client_id, .. } => {
                session(key, client_id);
                key.extend_from_slice(b"\0w");
                LiveKind::Set
            }
            Record::WillClear(client_id) => {
                session(key, client_id);
                key.extend_from_slice(b"\0w");
                LiveKind::Remove
            }
            Record::InboundQos2 { client_id, pid } => {
                inbound(key, client_id, *pid);
                LiveKind::Set
            }
            Record::InboundReleased { client_id, pid } => {
                inbound(key, client_id, *pid);
                LiveKind::Remove
            }
            Record::Snapshot | Record::LogFormat(_) => LiveKind::None,
        }
    }
}

/// The key and [`LiveKind`] of the record whose body is `body`, as [`Record::live_key`] gives
/// them for the decoded record, read from the body's leading fields alone (every key is its
/// kind and first one or two fields): the writer thread keys each frame it appends this way,
/// so that a submitter frames its records and nothing more. A body too short for its fields
/// (never written so) has no key.
pub(super) fn live_key_of_body(body: &[u8], key: &mut Vec<u8>) -> LiveKind {
    let mut r = Reader(body);
    let (Ok(kind), Ok(first)) = (r.u8(), r.bytes16()) else {
        return LiveKind::None;
    };
    let with_suffix = |key: &mut Vec<u8>, suffix: &[u8]| {
        session_key(key, first);
        key.extend_from_slice(suffix);
    };
    match kind {
        RETAIN_SET | RETAIN_CLEAR => {
            key.extend_from_slice(b"r:");
            key.extend_from_slice(first);
            if kind == RETAIN_SET {
                LiveKind::Set
            } else {
                LiveKind::Remove
            }
        }
        SESSION_SET => {
            session_key(key, first);
            LiveKind::Set
        }
        SESSION_GONE => {
            session_key(key, first);
            LiveKind::RemovePrefix
        }
        SUBSCRIBE | UNSUBSCRIBE => {
            let Ok(filter) = r.bytes16() else {
                return LiveKind::None;
            };
            with_suffix(key, filter);
            if kind == SUBSCRIBE {
                LiveKind::Set
            } else {
                LiveKind::Remove
            }
        }
        QUEUED | SENT | RELEASED | DONE => {
            let Ok(id) = r.u64() else {
                return LiveKind::None;
            };
            match kind {
                QUEUED => {
                    queued_key(key, first, id);
                    LiveKind::QueuedSet
                }
                DONE => {
                    queued_id_key(key, id);
                    LiveKind::QueuedRemove
                }
                _ => {
                    queued_id_key(key, id);
                    LiveKind::QueuedAppend
                }
            }
        }
        WILL_SET => {
            with_suffix(key, b"\0w");
            LiveKind::Set
        }
        WILL_CLEAR => {
            with_suffix(key, b"\0w");
            LiveKind::Remove
        }
        INBOUND_QOS2 | INBOUND_RELEASED => {
            let Ok(pid) = r.u16() else {
                return LiveKind::None;
            };
            with_suffix(key, b"\0i");
            key.extend_from_slice(&pid.to_be_bytes());
            if kind == INBOUND_QOS2 {
                LiveKind::Set
            } else {
                LiveKind::Remove
            }
        }
        _ => LiveKind::None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::message::{LastWill, Message, QoS, SubscriptionOptions};
    use crate::persistence::record::FRAME_HEADER;

    #[test]
    fn every_record_is_keyed_from_its_body_as_from_the_record() {
        let message = Arc::new(Message::new(
            "gate/1AB/state",
            Bytes::from_static(b"closed"),
            QoS::AtLeastOnce,
            true,
        ));
        let client_id = || "gate-1AB".to_string();
        let records = [
            Record::RetainSet(message.clone()),
            Record::RetainClear("gate/1AB/state".into()),
            Record::Snapshot,
            Record::SessionSet {
                client_id: client_id(),
                expiry: 3600,
                offline_since: 7,
                user: Some(crate::persistence::SessionUser::Named("gate".into())),
            },
            Record::SessionGone(client_id()),
            Record::Subscribe {
                client_id: client_id(),
                filter: "detrd/status/request/1AB".into(),
                options: SubscriptionOptions::qos(QoS::ExactlyOnce),
            },
            Record::Unsubscribe {
                client_id: client_id(),
                filter: "detrd/status/request/1AB".into(),
            },
            Record::Queued {
                client_id: client_id(),
                id: 0x0102_0304_0506,
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![4],
                message,
            },
            Record::Sent {
                client_id: client_id(),
                id: 9,
                pid: 0x1234,
            },
            Record::Released {
                client_id: client_id(),
                id: 9,
            },
            Record::Done {
                client_id: client_id(),
                id: 9,
            },
            Record::InboundQos2 {
                client_id: client_id(),
                pid: 0x0102,
            },
            Record::InboundReleased {
                client_id: client_id(),
                pid: 0x0102,
            },
            Record::WillSet {
                client_id: client_id(),
                deadline: 1_700_000_000_000,
                will: Box::new(LastWill::new(
                    "gates/1AB/status",
                    Bytes::from_static(b"offline"),
                    QoS::AtLeastOnce,
                    true,
                )),
            },
            Record::WillClear(client_id()),
        ];
        for record in &records {
            let frame = record.to_frame();
            let body = &frame[FRAME_HEADER..];
            let (mut from_record, mut from_body) = (Vec::new(), Vec::new());
            let kind = record.live_key(&mut from_record);
            assert_eq!(
                (live_key_of_body(body, &mut from_body), from_body),
                (kind, from_record),
                "{record:?}"
            );
            // A body cut short (never written so) has no key, and no panic.
            for cut in 0..body.len().min(40) {
                let mut key = Vec::new();
                let cut_kind = live_key_of_body(&body[..cut], &mut key);
                assert!(
                    cut_kind == LiveKind::None || cut_kind == kind,
                    "{record:?} cut at {cut}: {cut_kind:?}"
                );
            }
        }
    }
}
