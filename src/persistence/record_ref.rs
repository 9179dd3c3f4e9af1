//! What the [`Store`](super::Store) frames into the writer's queue: an owned [`Record`], or a
//! [`RecordRef`] that borrows its fields, so that the records a Session writes for every
//! message it delivers (and a publisher's Session for every message it routes) cost no copy
//! of the client id and no owned record to build and drop. The writer thread reads each
//! frame's key in its live state back from the frame ([`live_key_of_body`]), so a submitter
//! frames its records and nothing more.

use super::frame::frame_unsealed;
#[cfg(doc)]
use super::live::live_key_of_body;
use super::record::{put_delivery_end, put_queued, put_sent, Record, DONE, RELEASED};
use crate::message::Delivery;

/// A record the store can frame: its bytes in the log.
pub trait Framed {
    /// Appends the framed record (header and body) to `out`, its CRC-32 left zero: the writer
    /// thread fills it in before it appends the frame to the log.
    fn write_unsealed_frame(&self, out: &mut Vec<u8>);
}

impl Framed for Record {
    fn write_unsealed_frame(&self, out: &mut Vec<u8>) {
        Record::write_unsealed_frame(self, out);
    }
}

/// A record whose fields are borrowed. Framed, it is byte for byte the [`Record`] of the same
/// name, and has the same key.
#[derive(Debug, Clone, Copy)]
pub enum RecordRef<'a> {
    /// An owned record, borrowed (to submit it with borrowed ones as one change).
    Record(&'a Record),
    /// [`Record::Queued`] of `delivery` under durable id `id`.
    Queued {
        /// The client id.
        client_id: &'a str,
        /// The delivery's durable id.
        id: u64,
        /// The delivery (its QoS, RETAIN flag, Subscription Identifiers and message).
        delivery: &'a Delivery,
    },
    /// [`Record::Sent`].
    Sent {
        /// The client id.
        client_id: &'a str,
        /// The durable id.
        id: u64,
        /// Its packet identifier.
        pid: u16,
    },
    /// [`Record::Released`].
    Released {
        /// The client id.
        client_id: &'a str,
        /// The durable id.
        id: u64,
    },
    /// [`Record::Done`].
    Done {
        /// The client id.
        client_id: &'a str,
        /// The durable id.
        id: u64,
    },
}

impl Framed for RecordRef<'_> {
    fn write_unsealed_frame(&self, out: &mut Vec<u8>) {
        match *self {
            RecordRef::Record(record) => record.write_unsealed_frame(out),
            RecordRef::Queued {
                client_id,
                id,
                delivery,
            } => frame_unsealed(out, |body| {
                put_queued(
                    body,
                    client_id,
                    id,
                    delivery.qos,
                    delivery.retain,
                    delivery.subscription_ids(),
                    &delivery.message,
                )
            }),
            RecordRef::Sent { client_id, id, pid } => {
                frame_unsealed(out, |body| put_sent(body, client_id, id, pid))
            }
            RecordRef::Released { client_id, id } => {
                frame_unsealed(out, |body| put_delivery_end(body, RELEASED, client_id, id))
            }
            RecordRef::Done { client_id, id } => {
                frame_unsealed(out, |body| put_delivery_end(body, DONE, client_id, id))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::message::{Message, QoS};

    use crate::persistence::frame::seal_frames;
    use crate::persistence::live::{live_key_of_body, LiveKind};
    use crate::persistence::record::FRAME_HEADER;

    /// The record framed as the store frames it, then sealed and keyed as the writer seals and
    /// keys it.
    fn framed(record: &impl Framed) -> (Vec<u8>, Vec<u8>, LiveKind) {
        let (mut frame, mut key) = (Vec::new(), Vec::new());
        record.write_unsealed_frame(&mut frame);
        seal_frames(&mut frame);
        let kind = live_key_of_body(&frame[FRAME_HEADER..], &mut key);
        (frame, key, kind)
    }

    #[test]
    fn a_borrowed_record_frames_and_keys_as_its_owned_one() {
        let message = Message::new(
            "gate/1AB/state",
            Bytes::from_static(b"closed"),
            QoS::ExactlyOnce,
            true,
        );
        let delivery = Delivery::new(Arc::new(message), QoS::AtLeastOnce, false)
            .with_extras(vec![3, 70_000], None);
        let client_id = "gate-1AB";
        let id = 0x1234_5678_9abc;
        let pairs = [
            (
                Record::queued(client_id.to_string(), id, &delivery),
                RecordRef::Queued {
                    client_id,
                    id,
                    delivery: &delivery,
                },
            ),
            (
                Record::Sent {
                    client_id: client_id.to_string(),
                    id,
                    pid: 513,
                },
                RecordRef::Sent {
                    client_id,
                    id,
                    pid: 513,
                },
            ),
            (
                Record::Released {
                    client_id: client_id.to_string(),
                    id,
                },
                RecordRef::Released { client_id, id },
            ),
            (
                Record::Done {
                    client_id: client_id.to_string(),
                    id,
                },
                RecordRef::Done { client_id, id },
            ),
        ];
        for (owned, borrowed) in &pairs {
            let expected = framed(owned);
            let mut key = Vec::new();
            let kind = owned.live_key(&mut key);
            assert_eq!(
                (expected.1.clone(), expected.2),
                (key, kind),
                "{owned:?} keyed"
            );
            assert_eq!(
                expected.0,
                owned.to_frame(),
                "{owned:?} sealed as framed at once"
            );
            assert_eq!(framed(borrowed), expected, "{owned:?}");
            assert_eq!(framed(&RecordRef::Record(owned)), expected, "{owned:?}");
            let body = &expected.0[FRAME_HEADER..];
            let back = Record::decode(body).expect("decodes");
            assert_eq!(framed(&back), expected, "{owned:?} read back");
        }
    }
}
