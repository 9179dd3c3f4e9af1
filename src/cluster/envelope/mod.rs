//! What the nodes of a cluster send each other over NATS, as bytes: a message with its MQTT
//! flags and properties ([`message`]), the news that a client connected on a node, a sync
//! request and the end of its answer (with the topics whose retained message was cleared), and
//! the nodes' interest (announcements, and asks and their answers). Version 1; anything else
//! (another version, a cut or damaged envelope) is an [`EnvelopeError`], never a panic.

mod message;
mod wire;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

pub use message::ClusterMessage;
use message::{decode_message, encode_message};
use wire::{get_list, get_str, get_u64, get_u8, put_str};

const VERSION: u8 = 1;
pub(super) const KIND_MESSAGE: u8 = 1;
const KIND_CONNECTED: u8 = 2;
const KIND_SYNC_END: u8 = 3;
const KIND_SYNC_REQUEST: u8 = 4;
const KIND_INTEREST: u8 = 5;
const KIND_HELLO: u8 = 6;
const KIND_INTEREST_END: u8 = 7;
const KIND_BYE: u8 = 8;
const KIND_INTEREST_ASK: u8 = 9;
const KIND_INTEREST_READY: u8 = 10;
const KIND_ALIVE: u8 = 11;
const KIND_RESYNC: u8 = 12;
const KIND_RETAIN_CLEARED: u8 = 13;

/// One envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// An application message.
    Message(ClusterMessage),
    /// A client connected on `node` at `at_ms` (Unix milliseconds): the other nodes end
    /// their older connection of the same client id [MQTT-3.1.4-2], and with `clean_start`
    /// its session there too [MQTT-3.1.2-6].
    Connected {
        /// The node it connected to.
        node: String,
        /// The client id.
        client_id: String,
        /// When, in milliseconds since the Unix epoch.
        at_ms: u64,
        /// The CONNECT's Clean Session (3.1.1) or Clean Start (5) flag.
        clean_start: bool,
    },
    /// `node` starts and asks one other node for the retained messages it holds.
    SyncRequest {
        /// The node asking (the answer goes to its inbox).
        node: String,
    },
    /// `node`'s clients subscribed to `added` and no longer hold `removed` (filters, shared
    /// ones without their `$share/{group}/`).
    Interest {
        /// The node.
        node: String,
        /// Filters it now holds.
        added: Vec<String>,
        /// Filters it no longer holds.
        removed: Vec<String>,
    },
    /// `node` (re)joins: it announces all its filters next, then [`Envelope::InterestEnd`];
    /// every other node answers with all of its own.
    Hello {
        /// The node.
        node: String,
    },
    /// `node` has announced all its filters since its [`Envelope::Hello`].
    InterestEnd {
        /// The node.
        node: String,
    },
    /// `node` leaves the cluster (it shuts down).
    Bye {
        /// The node.
        node: String,
    },
    /// `node` asks every other node to answer [`Envelope::InterestReady`] once it forwards
    /// `filters` (announced before) to `node`: a SUBSCRIBE there waits for it.
    InterestAsk {
        /// The asking node (the answers go to its inbox).
        node: String,
        /// The ask, numbered in the order the asking node sends them.
        id: u64,
        /// The filters.
        filters: Vec<String>,
    },
    /// `node` forwards the filters of ask `id`, and of every earlier ask of the same node.
    InterestReady {
        /// The answering node.
        node: String,
        /// The ask.
        id: u64,
    },
    /// `node` is alive and holds `filters` filters, whose digest is `digest`
    /// (`liveness::digest`).
    Alive {
        /// The node.
        node: String,
        /// How many filters it holds.
        filters: u64,
        /// Their digest.
        digest: u64,
    },
    /// `node` asks the node whose inbox this reaches to announce all its filters again (what
    /// it holds of them differs from that node's [`Envelope::Alive`]).
    Resync {
        /// The node asking.
        node: String,
    },
    /// Part of the answer to a sync request, after the retained messages: `topics` whose
    /// retained message `node` last saw cleared (`cluster::cleared`). The asking node clears
    /// them too, but those set or cleared there since it lost NATS.
    RetainCleared {
        /// The node that answers.
        node: String,
        /// The topics.
        topics: Vec<String>,
    },
    /// The node answering a sync request has sent all `count` retained messages it holds.
    SyncEnd {
        /// The node that answered.
        node: String,
        /// How many messages it sent.
        count: u64,
    },
}

/// Why bytes from NATS are not an envelope.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Empty, or another version than this node speaks.
    #[error("not a version 1 cluster envelope")]
    Version,
    /// An unknown kind byte.
    #[error("unknown envelope kind {0}")]
    Kind(u8),
    /// It ends before a field it announces.
    #[error("envelope cut short")]
    Short,
    /// A string that is not UTF-8.
    #[error("a string in the envelope is not UTF-8")]
    Utf8,
    /// A QoS above 2.
    #[error("QoS {0} in the envelope")]
    QoS(u8),
}

impl Envelope {
    /// The envelope as bytes.
    pub fn encode(&self) -> Bytes {
        // A message's payload and topic, and room for its flags and lengths: one allocation.
        let room = match self {
            Envelope::Message(m) => 64 + m.topic.len() + m.payload.len(),
            _ => 64,
        };
        let mut out = BytesMut::with_capacity(room);
        out.put_u8(VERSION);
        match self {
            Envelope::Message(message) => encode_message(message, &mut out),
            Envelope::Connected {
                node,
                client_id,
                at_ms,
                clean_start,
            } => {
                out.put_u8(KIND_CONNECTED);
                out.put_u64(*at_ms);
                out.put_u8(u8::from(*clean_start));
                put_str(&mut out, node);
                put_str(&mut out, client_id);
            }
            Envelope::SyncRequest { node } => {
                out.put_u8(KIND_SYNC_REQUEST);
                put_str(&mut out, node);
            }
            Envelope::Interest {
                node,
                added,
                removed,
            } => {
                out.put_u8(KIND_INTEREST);
                put_str(&mut out, node);
                for list in [added, removed] {
                    out.put_u32(list.len() as u32);
                    for filter in list {
                        put_str(&mut out, filter);
                    }
                }
            }
            Envelope::Hello { node } => {
                out.put_u8(KIND_HELLO);
                put_str(&mut out, node);
            }
            Envelope::InterestEnd { node } => {
                out.put_u8(KIND_INTEREST_END);
                put_str(&mut out, node);
            }
            Envelope::Bye { node } => {
                out.put_u8(KIND_BYE);
                put_str(&mut out, node);
            }
            Envelope::InterestAsk { node, id, filters } => {
                out.put_u8(KIND_INTEREST_ASK);
                out.put_u64(*id);
                put_str(&mut out, node);
                out.put_u32(filters.len() as u32);
                for filter in filters {
                    put_str(&mut out, filter);
                }
            }
            Envelope::InterestReady { node, id } => {
                out.put_u8(KIND_INTEREST_READY);
                out.put_u64(*id);
                put_str(&mut out, node);
            }
            Envelope::Alive {
                node,
                filters,
                digest,
            } => {
                out.put_u8(KIND_ALIVE);
                out.put_u64(*filters);
                out.put_u64(*digest);
                put_str(&mut out, node);
            }
            Envelope::Resync { node } => {
                out.put_u8(KIND_RESYNC);
                put_str(&mut out, node);
            }
            Envelope::RetainCleared { node, topics } => {
                out.put_u8(KIND_RETAIN_CLEARED);
                put_str(&mut out, node);
                out.put_u32(topics.len() as u32);
                for topic in topics {
                    put_str(&mut out, topic);
                }
            }
            Envelope::SyncEnd { node, count } => {
                out.put_u8(KIND_SYNC_END);
                out.put_u64(*count);
                put_str(&mut out, node);
            }
        }
        out.freeze()
    }

    /// Reads an envelope.
    pub fn decode(mut bytes: Bytes) -> Result<Envelope, EnvelopeError> {
        if bytes.len() < 2 || bytes[0] != VERSION {
            return Err(EnvelopeError::Version);
        }
        bytes.advance(1);
        match bytes.get_u8() {
            KIND_MESSAGE => decode_message(bytes).map(Envelope::Message),
            KIND_CONNECTED => {
                let at_ms = get_u64(&mut bytes)?;
                let clean_start = get_u8(&mut bytes)? != 0;
                let node = get_str(&mut bytes)?;
                let client_id = get_str(&mut bytes)?;
                Ok(Envelope::Connected {
                    node,
                    client_id,
                    at_ms,
                    clean_start,
                })
            }
            KIND_SYNC_END => {
                let count = get_u64(&mut bytes)?;
                let node = get_str(&mut bytes)?;
                Ok(Envelope::SyncEnd { node, count })
            }
            KIND_SYNC_REQUEST => Ok(Envelope::SyncRequest {
                node: get_str(&mut bytes)?,
            }),
            KIND_INTEREST => {
                let node = get_str(&mut bytes)?;
                let added = get_list(&mut bytes)?;
                let removed = get_list(&mut bytes)?;
                Ok(Envelope::Interest {
                    node,
                    added,
                    removed,
                })
            }
            KIND_HELLO => Ok(Envelope::Hello {
                node: get_str(&mut bytes)?,
            }),
            KIND_INTEREST_END => Ok(Envelope::InterestEnd {
                node: get_str(&mut bytes)?,
            }),
            KIND_BYE => Ok(Envelope::Bye {
                node: get_str(&mut bytes)?,
            }),
            KIND_INTEREST_ASK => {
                let id = get_u64(&mut bytes)?;
                let node = get_str(&mut bytes)?;
                let filters = get_list(&mut bytes)?;
                Ok(Envelope::InterestAsk { node, id, filters })
            }
            KIND_INTEREST_READY => {
                let id = get_u64(&mut bytes)?;
                let node = get_str(&mut bytes)?;
                Ok(Envelope::InterestReady { node, id })
            }
            KIND_ALIVE => {
                let filters = get_u64(&mut bytes)?;
                let digest = get_u64(&mut bytes)?;
                let node = get_str(&mut bytes)?;
                Ok(Envelope::Alive {
                    node,
                    filters,
                    digest,
                })
            }
            KIND_RESYNC => Ok(Envelope::Resync {
                node: get_str(&mut bytes)?,
            }),
            KIND_RETAIN_CLEARED => {
                let node = get_str(&mut bytes)?;
                let topics = get_list(&mut bytes)?;
                Ok(Envelope::RetainCleared { node, topics })
            }
            other => Err(EnvelopeError::Kind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{MessageProperties, QoS};
    use proptest::prelude::*;

    fn message() -> ClusterMessage {
        ClusterMessage {
            topic: "detrd/status/response/1AB".into(),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Some(MessageProperties {
                payload_format: Some(1),
                content_type: Some("application/json".into()),
                response_topic: Some("app/answers".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            }),
            expiry: Some(30),
            payload: Bytes::from_static(b"{\"state\":\"ok\"}"),
        }
    }

    #[test]
    fn every_kind_comes_back_as_it_went() {
        let bare = ClusterMessage {
            properties: None,
            expiry: None,
            qos: QoS::ExactlyOnce,
            retain: false,
            payload: Bytes::new(),
            ..message()
        };
        for envelope in [
            Envelope::Message(message()),
            Envelope::Message(bare),
            Envelope::Connected {
                node: "n2".into(),
                client_id: "gate-1".into(),
                at_ms: 1_764_000_000_000,
                clean_start: true,
            },
            Envelope::SyncEnd {
                node: "n1".into(),
                count: 7,
            },
            Envelope::SyncRequest { node: "n3".into() },
            Envelope::Interest {
                node: "n2".into(),
                added: vec!["gate/#".into(), "a/+/b".into()],
                removed: vec!["x".into()],
            },
            Envelope::Hello { node: "n4".into() },
            Envelope::InterestEnd { node: "n4".into() },
            Envelope::Bye { node: "n4".into() },
            Envelope::InterestAsk {
                node: "n1".into(),
                id: 12,
                filters: vec!["gate/#".into(), "$share/g/radar/+".into()],
            },
            Envelope::InterestReady {
                node: "n2".into(),
                id: 12,
            },
            Envelope::Alive {
                node: "n3".into(),
                filters: 3,
                digest: 0xdead_beef_0123_4567,
            },
            Envelope::Resync { node: "n1".into() },
            Envelope::RetainCleared {
                node: "n2".into(),
                topics: vec!["gate/1AB/state".into(), "radar/2/speed".into()],
            },
            Envelope::RetainCleared {
                node: "n2".into(),
                topics: Vec::new(),
            },
        ] {
            assert_eq!(Envelope::decode(envelope.encode()), Ok(envelope));
        }
    }

    #[test]
    fn foreign_bytes_are_refused() {
        assert_eq!(Envelope::decode(Bytes::new()), Err(EnvelopeError::Version));
        assert_eq!(
            Envelope::decode(Bytes::from_static(b"\x02\x01")),
            Err(EnvelopeError::Version)
        );
        assert_eq!(
            Envelope::decode(Bytes::from_static(b"\x01\x63")),
            Err(EnvelopeError::Kind(0x63))
        );
        assert_eq!(
            Envelope::decode(Bytes::from_static(b"\x01\x01\x03")),
            Err(EnvelopeError::QoS(3))
        );
    }

    proptest! {
        /// Any cut or damage gives an envelope or an error, never a panic.
        #[test]
        fn damaged_envelopes_never_panic(cut in 0usize..120, flip in 0usize..120, bit in 0u8..8) {
            let mut bytes = Envelope::Message(message()).encode().to_vec();
            if flip < bytes.len() {
                bytes[flip] ^= 1 << bit;
            }
            bytes.truncate(cut);
            let _ = Envelope::decode(Bytes::from(bytes));
        }

        /// Any bytes after the version and any kind byte: an envelope or an error.
        #[test]
        fn arbitrary_bodies_never_panic(kind in 0u8..16, body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = vec![VERSION, kind];
            bytes.extend(body);
            let _ = Envelope::decode(Bytes::from(bytes));
        }
    }
}
