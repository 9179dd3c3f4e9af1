//! Where each record sits in the live state the writer keeps for compaction: its key, and
//! what it does there.

use super::record::Record;

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

impl LiveKind {
    /// Its number in the writer's queue.
    pub(super) fn to_u8(self) -> u8 {
        self as u8
    }

    /// Back from [`LiveKind::to_u8`].
    pub(super) fn from_u8(n: u8) -> LiveKind {
        match n {
            1 => LiveKind::Set,
            2 => LiveKind::Append,
            3 => LiveKind::Remove,
            4 => LiveKind::RemovePrefix,
            5 => LiveKind::QueuedSet,
            6 => LiveKind::QueuedAppend,
            7 => LiveKind::QueuedRemove,
            _ => LiveKind::None,
        }
    }
}

/// Appends the key prefix of everything of `client_id`'s session: `s:{client_id}\0`.
pub(super) fn session_key(key: &mut Vec<u8>, client_id: &str) {
    key.extend_from_slice(b"s:");
    key.extend_from_slice(client_id.as_bytes());
    key.push(0);
}

/// The bytes after a session's key prefix in a queued message's key: `\0q` and the id.
pub(super) const QUEUED_KEY_SUFFIX: usize = 2 + 8;

/// Appends the key of a `Queued` record: the prefix of its session (`client_id`'s), `\0q`, and
/// the durable id as 8 big-endian bytes. Durable ids are unique across sessions, so the writer
/// keys its queued messages by the id alone ([`split_queued_key`]) and keeps the prefix for the
/// session.
pub(super) fn queued_key(key: &mut Vec<u8>, client_id: &str, id: u64) {
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
        let session = session_key;
        let queued = queued_key;
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
            Record::Snapshot => LiveKind::None,
        }
    }
}
