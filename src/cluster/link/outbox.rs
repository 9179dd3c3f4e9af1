//! This node's envelopes on their way to NATS while its queue there is full: the announcements
//! and heartbeats on the interest subject go ahead of the application messages, each kind in
//! its own order. A backlog of messages (NATS slow, or this node publishing faster than it
//! takes them) then delays neither a SUBACK's ask nor the heartbeat that keeps this node known
//! to the others (a node not heard from for `node_timeout` is forgotten).

use std::collections::VecDeque;

use bytes::Bytes;
use switchboard_actors::PendingAck;

/// An envelope of this node's on its way to NATS.
pub(super) struct Outgoing {
    /// The subject it goes on.
    pub(super) subject: String,
    /// The envelope's bytes.
    pub(super) envelope: Bytes,
    /// What this broker waits for to forget it (QoS 1/2).
    pub(super) ack: Option<PendingAck>,
    /// Whether it is an application message (counted as sent).
    pub(super) counted: bool,
}

/// The envelopes not yet in NATS's queue.
#[derive(Default)]
pub(super) struct Outbox {
    /// Announcements, asks and heartbeats, in order.
    control: VecDeque<Outgoing>,
    /// Application messages, in order.
    messages: VecDeque<Outgoing>,
}

impl Outbox {
    /// Queues an application message behind the others.
    pub(super) fn push_message(&mut self, outgoing: Outgoing) {
        self.messages.push_back(outgoing);
    }

    /// Queues an announcement behind the other announcements, ahead of the messages.
    pub(super) fn push_control(&mut self, outgoing: Outgoing) {
        self.control.push_back(outgoing);
    }

    /// The application messages waiting (what the outbox's bounds count).
    pub(super) fn messages(&self) -> usize {
        self.messages.len()
    }

    /// The next to go: the oldest announcement, else the oldest message.
    pub(super) fn front(&self) -> Option<&Outgoing> {
        self.control.front().or_else(|| self.messages.front())
    }

    /// Takes [`Outbox::front`].
    pub(super) fn pop_front(&mut self) -> Option<Outgoing> {
        self.control
            .pop_front()
            .or_else(|| self.messages.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(subject: &str, counted: bool) -> Outgoing {
        Outgoing {
            subject: subject.to_string(),
            envelope: Bytes::new(),
            ack: None,
            counted,
        }
    }

    #[test]
    fn announcements_go_ahead_of_messages_each_in_order() {
        let mut outbox = Outbox::default();
        outbox.push_message(outgoing("m1", true));
        outbox.push_control(outgoing("hello", false));
        outbox.push_message(outgoing("m2", true));
        outbox.push_control(outgoing("alive", false));
        assert_eq!(outbox.messages(), 2);
        let mut order = Vec::new();
        while let Some(next) = outbox.pop_front() {
            order.push(next.subject);
        }
        assert_eq!(order, ["hello", "alive", "m1", "m2"]);
        assert!(outbox.front().is_none());
        assert_eq!(outbox.messages(), 0);
    }
}
