//! The QoS 1/2 queue of one client: deliveries waiting for a slot in its inflight window (online)
//! or for its return (offline), bounded in messages and in bytes, with the overflow policy of
//! `sessions.queue_overflow`.

use std::collections::VecDeque;

use crate::config::{QueueOverflow, SessionConfig};
use crate::message::Delivery;

/// The bounds of a client's queue and what a full queue does (from `[sessions]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most messages queued (`sessions.max_queued_messages`).
    pub max_messages: usize,
    /// Most bytes of topic, payload and properties queued (`sessions.max_queued_bytes`).
    pub max_bytes: usize,
    /// What a full queue does (`sessions.queue_overflow`).
    pub overflow: QueueOverflow,
}

impl QueueLimits {
    /// The limits configured in `[sessions]`.
    pub fn from_config(sessions: &SessionConfig) -> Self {
        QueueLimits {
            max_messages: sessions.max_queued_messages,
            max_bytes: sessions.max_queued_bytes,
            overflow: sessions.queue_overflow,
        }
    }
}

/// What [`DeliveryQueue::push_bounded`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; `dropped` older messages made room for it (`drop_oldest`), or it was itself
    /// dropped (`dropped` = 1 and nothing queued: `drop_newest`, or larger than the byte bound).
    Queued {
        /// Messages dropped to apply the bound.
        dropped: u64,
    },
    /// The queue is over its bound and the policy is `disconnect`: the message was queued and
    /// the client must be disconnected as a slow consumer.
    Overflowed,
}

/// A FIFO of deliveries that knows its size in bytes.
#[derive(Debug, Default)]
pub struct DeliveryQueue {
    items: VecDeque<Delivery>,
    bytes: usize,
    /// Durable ids of the deliveries dropped by a bound, for the owner to record done.
    dropped_durable: Vec<u64>,
}

impl DeliveryQueue {
    /// Number of queued messages.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// True when nothing is queued and no dropped delivery kept on disk waits to be reported
    /// ([`DeliveryQueue::take_dropped_durable`]).
    pub fn holds_nothing(&self) -> bool {
        self.items.is_empty() && self.dropped_durable.is_empty()
    }

    /// Bytes of topic, payload and properties queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The queued deliveries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.items.iter()
    }

    /// Appends regardless of any bound (the Registry merging what it held for a client).
    pub fn push_back(&mut self, delivery: Delivery) {
        self.bytes += delivery.message.size();
        self.items.push_back(delivery);
    }

    /// The durable ids of deliveries dropped by a bound since the last call (see
    /// [`Delivery::durable_id`]).
    pub fn take_dropped_durable(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.dropped_durable)
    }

    /// Takes the oldest delivery.
    pub fn pop_front(&mut self) -> Option<Delivery> {
        let delivery = self.items.pop_front()?;
        self.bytes -= delivery.message.size();
        Some(delivery)
    }

    fn pop_back(&mut self) -> Option<Delivery> {
        let delivery = self.items.pop_back()?;
        self.bytes -= delivery.message.size();
        Some(delivery)
    }

    fn over(&self, limits: &QueueLimits) -> bool {
        self.items.len() > limits.max_messages || self.bytes > limits.max_bytes
    }

    /// Appends within `limits`, applying the overflow policy when the queue would exceed them.
    /// A message larger than the byte bound alone is never queued (dropped, counted), whatever
    /// the policy: no amount of room would make it fit.
    pub fn push_bounded(&mut self, delivery: Delivery, limits: &QueueLimits) -> Pushed {
        if delivery.message.size() > limits.max_bytes {
            self.dropped_durable.extend(delivery.durable_id());
            return Pushed::Queued { dropped: 1 };
        }
        self.push_back(delivery);
        if !self.over(limits) {
            return Pushed::Queued { dropped: 0 };
        }
        match limits.overflow {
            QueueOverflow::Disconnect => Pushed::Overflowed,
            QueueOverflow::DropNewest => {
                if let Some(dropped) = self.pop_back() {
                    self.dropped_durable.extend(dropped.durable_id());
                }
                Pushed::Queued { dropped: 1 }
            }
            QueueOverflow::DropOldest => Pushed::Queued {
                dropped: self.trim(limits, QueueOverflow::DropOldest),
            },
        }
    }

    /// Drops messages until the queue is within `limits`: the oldest for `drop_oldest` and
    /// `disconnect` (a slow consumer's stored session keeps its latest messages), the newest for
    /// `drop_newest`. Returns how many were dropped.
    pub fn trim(&mut self, limits: &QueueLimits, overflow: QueueOverflow) -> u64 {
        let mut dropped = 0;
        while self.over(limits) {
            let popped = match overflow {
                QueueOverflow::DropNewest => self.pop_back(),
                QueueOverflow::DropOldest | QueueOverflow::Disconnect => self.pop_front(),
            };
            let Some(popped) = popped else {
                break;
            };
            self.dropped_durable.extend(popped.durable_id());
            dropped += 1;
        }
        dropped
    }
}

impl Extend<Delivery> for DeliveryQueue {
    fn extend<I: IntoIterator<Item = Delivery>>(&mut self, iter: I) {
        for delivery in iter {
            self.push_back(delivery);
        }
    }
}

impl IntoIterator for DeliveryQueue {
    type Item = Delivery;
    type IntoIter = std::collections::vec_deque::IntoIter<Delivery>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl FromIterator<Delivery> for DeliveryQueue {
    fn from_iter<I: IntoIterator<Item = Delivery>>(iter: I) -> Self {
        let mut queue = DeliveryQueue::default();
        queue.extend(iter);
        queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Message, QoS};
    use bytes::Bytes;
    use std::sync::Arc;

    fn delivery(n: u8, payload_len: usize) -> Delivery {
        let mut payload = vec![0u8; payload_len.max(1)];
        payload[0] = n;
        Delivery::new(
            Arc::new(Message::new(
                "t",
                Bytes::from(payload),
                QoS::AtLeastOnce,
                false,
            )),
            QoS::AtLeastOnce,
            false,
        )
    }

    fn firsts(q: &DeliveryQueue) -> Vec<u8> {
        q.iter().map(|d| d.message.payload[0]).collect()
    }

    fn limits(max_messages: usize, max_bytes: usize, overflow: QueueOverflow) -> QueueLimits {
        QueueLimits {
            max_messages,
            max_bytes,
            overflow,
        }
    }

    #[test]
    fn drop_oldest_keeps_the_latest() {
        let l = limits(2, 1 << 20, QueueOverflow::DropOldest);
        let mut q = DeliveryQueue::default();
        let dropped: Vec<_> = (0..4).map(|n| q.push_bounded(delivery(n, 1), &l)).collect();
        assert_eq!(firsts(&q), vec![2, 3]);
        assert_eq!(dropped[3], Pushed::Queued { dropped: 1 });
        assert_eq!(q.bytes(), 2 * (1 + 1), "topic and payload of two messages");
    }

    #[test]
    fn drop_newest_keeps_the_earliest() {
        let l = limits(2, 1 << 20, QueueOverflow::DropNewest);
        let mut q = DeliveryQueue::default();
        for n in 0..4 {
            q.push_bounded(delivery(n, 1), &l);
        }
        assert_eq!(firsts(&q), vec![0, 1]);
    }

    #[test]
    fn disconnect_reports_the_overflow() {
        let l = limits(1, 1 << 20, QueueOverflow::Disconnect);
        let mut q = DeliveryQueue::default();
        assert_eq!(
            q.push_bounded(delivery(0, 1), &l),
            Pushed::Queued { dropped: 0 }
        );
        assert_eq!(q.push_bounded(delivery(1, 1), &l), Pushed::Overflowed);
        assert_eq!(q.trim(&l, QueueOverflow::Disconnect), 1);
        assert_eq!(firsts(&q), vec![1], "the stored session keeps the latest");
    }

    #[test]
    fn byte_bound_drops_several_small_for_one_large() {
        // Each message is 1 (topic) + payload bytes.
        let l = limits(100, 300, QueueOverflow::DropOldest);
        let mut q = DeliveryQueue::default();
        for n in 0..3 {
            q.push_bounded(delivery(n, 99), &l);
        }
        assert_eq!(q.bytes(), 300);
        assert_eq!(
            q.push_bounded(delivery(3, 199), &l),
            Pushed::Queued { dropped: 2 }
        );
        assert_eq!(firsts(&q), vec![2, 3]);
        assert_eq!(q.bytes(), 300);
    }

    #[test]
    fn a_message_larger_than_the_bound_is_never_queued() {
        for overflow in [
            QueueOverflow::DropOldest,
            QueueOverflow::DropNewest,
            QueueOverflow::Disconnect,
        ] {
            let l = limits(100, 50, overflow);
            let mut q = DeliveryQueue::default();
            q.push_bounded(delivery(0, 10), &l);
            assert_eq!(
                q.push_bounded(delivery(1, 50), &l),
                Pushed::Queued { dropped: 1 }
            );
            assert_eq!(firsts(&q), vec![0], "{overflow:?}");
        }
    }

    #[test]
    fn pops_keep_the_byte_count() {
        let mut q: DeliveryQueue = (0..3).map(|n| delivery(n, 9)).collect();
        assert_eq!(q.bytes(), 30);
        q.pop_front();
        assert_eq!((q.len(), q.bytes()), (2, 20));
        let rest: Vec<_> = q.into_iter().map(|d| d.message.payload[0]).collect();
        assert_eq!(rest, vec![1, 2]);
    }
}
