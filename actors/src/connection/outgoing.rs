//! Sending what is queued: the inflight window, a broker's Maximum Packet Size, and what becomes
//! of each message (delivered, dropped, refused).

use tracing::warn;

use switchboard_mqtt::QoS;

use super::{Awaiting, Inflight, Link, ManagedConnection};
use crate::codec::write_publish_of;
use crate::events::{ConnectionEvent, DropReason, MessageId};

impl ManagedConnection {
    /// Sends queued messages while connected and the window has room. A message larger than
    /// the broker takes is dropped instead (`DropReason::TooLarge`).
    pub(super) fn pump(&mut self) {
        if self.link != Link::Up {
            return;
        }
        let window = usize::from(self.options.inflight.max(1));
        while let Some(next) = self.queue.front() {
            if next.qos != QoS::AtMostOnce && self.inflight.len() >= window {
                break;
            }
            let Some(message) = self.queue.pop() else {
                break;
            };
            // The clock is read only for a message that can expire.
            if message.expires_at.is_some() && message.is_expired(std::time::Instant::now()) {
                self.dropped(message.id, DropReason::Expired);
                continue;
            }
            let pid = match message.qos {
                QoS::AtMostOnce => 0,
                _ => self.allocate_pid(),
            };
            let start = self.out.len();
            write_publish_of(&mut self.out, self.options.protocol, &message, pid, false);
            if self
                .server_max_packet
                .is_some_and(|max| self.out.len() - start > max)
            {
                self.out.truncate(start);
                warn!(client_id = %self.options.client_id, topic = %message.topic, "a message larger than the broker's Maximum Packet Size is dropped");
                self.dropped(message.id, DropReason::TooLarge);
                continue;
            }
            let stage = match message.qos {
                QoS::AtMostOnce => {
                    self.delivered(message.id);
                    continue;
                }
                QoS::AtLeastOnce => Awaiting::Ack,
                QoS::ExactlyOnce => Awaiting::Rec,
            };
            self.inflight.push_back(Inflight {
                pid,
                message,
                stage,
            });
        }
    }

    pub(super) fn delivered(&mut self, id: MessageId) {
        self.forget_durable(id);
        self.emit(ConnectionEvent::MessageDelivered(id));
    }

    pub(super) fn dropped(&mut self, id: MessageId, reason: DropReason) {
        self.forget_durable(id);
        self.emit(ConnectionEvent::MessageDropped(id, reason));
    }

    fn forget_durable(&mut self, id: MessageId) {
        if let Some(log) = &mut self.durable {
            if let Err(e) = log.remove(id) {
                warn!(error = %e, "cannot update the durable queue");
            }
        }
    }

    /// The broker refused an inflight message (MQTT 5 PUBACK/PUBREC with a code of 0x80 or
    /// above): it is dropped, not re-sent.
    pub(super) fn refused(&mut self, pid: u16, code: u8) {
        if let Some(i) = self.inflight.iter().position(|e| e.pid == pid) {
            if let Some(entry) = self.inflight.remove(i) {
                warn!(client_id = %self.options.client_id, topic = %entry.message.topic, code, "the broker refused a message");
                self.dropped(entry.message.id, DropReason::Refused(code));
            }
        }
    }

    pub(super) fn complete(&mut self, pid: u16, stage: Awaiting) {
        if let Some(i) = self
            .inflight
            .iter()
            .position(|e| e.pid == pid && e.stage == stage)
        {
            if let Some(entry) = self.inflight.remove(i) {
                self.delivered(entry.message.id);
            }
        }
    }
}
