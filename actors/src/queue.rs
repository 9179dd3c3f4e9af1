//! The bounded pending queue of a managed connection: messages enqueued and not yet sent.

use std::collections::VecDeque;

use bytes::Bytes;
use switchboard_mqtt::{MessageProperties, QoS};

use crate::events::MessageId;
use crate::options::Overflow;

/// A message waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its id (for delivery and drop events).
    pub id: MessageId,
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 properties (response topic, correlation data, ...); not sent over 3.1.1.
    pub properties: Option<Box<MessageProperties>>,
    /// (5.0) When its Message Expiry Interval runs out.
    pub expires_at: Option<std::time::Instant>,
}

impl Outgoing {
    /// Whether its Message Expiry Interval ran out before `now`.
    pub fn is_expired(&self, now: std::time::Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// What remains of its Message Expiry Interval at `now`, in whole seconds rounded up.
    pub fn remaining_expiry(&self, now: std::time::Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }
}

/// What [`PendingQueue::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued.
    Queued,
    /// Queued, and this older message was dropped to make room.
    QueuedDropping(Outgoing),
    /// Not queued: the new message was dropped (drop newest).
    Dropped(Outgoing),
    /// Not queued: refused (the caller should back off).
    Refused(Outgoing),
}

/// A FIFO of at most `capacity` messages with an overflow strategy.
#[derive(Debug)]
pub struct PendingQueue {
    items: VecDeque<Outgoing>,
    capacity: usize,
    overflow: Overflow,
}

impl PendingQueue {
    /// An empty queue.
    pub fn new(capacity: usize, overflow: Overflow) -> Self {
        PendingQueue {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            overflow,
        }
    }

    /// Number of queued messages.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Appends a message, applying the overflow strategy when full.
    pub fn push(&mut self, message: Outgoing) -> PushOutcome {
        if self.items.len() < self.capacity {
            self.items.push_back(message);
            return PushOutcome::Queued;
        }
        match self.overflow {
            Overflow::DropOldest => {
                let oldest = self.items.pop_front();
                self.items.push_back(message);
                match oldest {
                    Some(oldest) => PushOutcome::QueuedDropping(oldest),
                    None => PushOutcome::Queued,
                }
            }
            Overflow::DropNewest => PushOutcome::Dropped(message),
            Overflow::Refuse => PushOutcome::Refused(message),
        }
    }

    /// Puts a message back at the front (restored from disk, in order).
    pub fn push_restored(&mut self, message: Outgoing) {
        self.items.push_back(message);
    }

    /// The next message to send.
    pub fn front(&self) -> Option<&Outgoing> {
        self.items.front()
    }

    /// Removes and returns the next message.
    pub fn pop(&mut self) -> Option<Outgoing> {
        self.items.pop_front()
    }

    /// Removes everything.
    pub fn drain(&mut self) -> impl Iterator<Item = Outgoing> + '_ {
        self.items.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: MessageId) -> Outgoing {
        Outgoing {
            id,
            topic: "t".into(),
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            expires_at: None,
        }
    }

    fn ids(q: &mut PendingQueue) -> Vec<MessageId> {
        q.drain().map(|m| m.id).collect()
    }

    #[test]
    fn drop_oldest() {
        let mut q = PendingQueue::new(2, Overflow::DropOldest);
        assert_eq!(q.push(msg(1)), PushOutcome::Queued);
        q.push(msg(2));
        assert_eq!(q.push(msg(3)), PushOutcome::QueuedDropping(msg(1)));
        assert_eq!(ids(&mut q), vec![2, 3]);
    }

    #[test]
    fn drop_newest_and_refuse() {
        let mut q = PendingQueue::new(1, Overflow::DropNewest);
        q.push(msg(1));
        assert_eq!(q.push(msg(2)), PushOutcome::Dropped(msg(2)));
        assert_eq!(ids(&mut q), vec![1]);
        let mut q = PendingQueue::new(1, Overflow::Refuse);
        q.push(msg(1));
        assert_eq!(q.push(msg(2)), PushOutcome::Refused(msg(2)));
        assert_eq!(q.len(), 1);
    }
}
