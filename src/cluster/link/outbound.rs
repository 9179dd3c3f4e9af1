//! What the link sends to NATS: this node's messages that another node wants, every retained
//! message published here, its own announcements, and the answer to a sync request. All but
//! the answer go through the outbox (`outbox.rs`): the announcements in their order, ahead of
//! the messages in theirs.

use actix::prelude::*;
use switchboard_actors::{Acknowledge, PendingAck, QoS, Received};
use tracing::warn;

use super::outbox::Outgoing;
use super::{ClusterLink, OUTBOX_MAX, OUTBOX_QOS0};
use crate::cluster::envelope::{ClusterMessage, Envelope};
use crate::cluster::nats::NatsClient;
use crate::registry::RetainedPublished;

impl ClusterLink {
    /// A message published here that matches a filter of another node (the link's local
    /// subscriptions): to NATS on its topic's subject. This broker has it acknowledged (`ack`)
    /// once it is in NATS's queue.
    pub(super) fn send_out(
        &mut self,
        message: Received,
        ack: Option<PendingAck>,
        ctx: &mut Context<Self>,
    ) {
        if message.retain {
            // Every retained message reaches the link from the Registry (`RetainedPublished`),
            // whoever subscribes to it: this copy would be a second one.
            return self.acknowledge_local(ack);
        }
        let subject = self.env.subjects.for_topic(&message.topic);
        let envelope = ClusterMessage {
            topic: message.topic,
            qos: message.qos,
            retain: false,
            properties: message.properties,
            expiry: message.expiry,
            payload: message.payload,
        };
        self.queue_message(subject, envelope, ack, ctx);
    }

    fn queue_message(
        &mut self,
        subject: String,
        message: ClusterMessage,
        ack: Option<PendingAck>,
        ctx: &mut Context<Self>,
    ) {
        // QoS 0 promises nothing: it is not kept while NATS is unreachable or behind. A
        // retained message is state the other nodes keep: it waits (up to a bound).
        let droppable = message.qos == QoS::AtMostOnce && !message.retain;
        let full = if droppable {
            !self.status().is_connected() || self.outbox.messages() >= OUTBOX_QOS0
        } else {
            self.outbox.messages() >= OUTBOX_MAX
        };
        if full {
            self.status().add_dropped();
            return self.acknowledge_local(ack);
        }
        let envelope = Envelope::Message(message).encode();
        if envelope.len() > self.max_payload {
            self.status().add_dropped();
            warn!(subject, size = envelope.len(), max_payload = self.max_payload, "a message is larger than the NATS server's max_payload; not sent to the other nodes");
            return self.acknowledge_local(ack);
        }
        self.outbox.push_message(Outgoing {
            subject,
            envelope,
            ack,
            counted: true,
        });
        self.pump(ctx);
    }

    /// An announcement of this node's (interest, asks, heartbeats): in order with the others,
    /// ahead of the application messages waiting for NATS.
    pub(super) fn queue_envelope(
        &mut self,
        subject: String,
        envelope: Envelope,
        ctx: &mut Context<Self>,
    ) {
        self.outbox.push_control(Outgoing {
            subject,
            envelope: envelope.encode(),
            ack: None,
            counted: false,
        });
        self.pump(ctx);
    }

    /// Hands the outbox to NATS in order while its queue has room; when it has none, waits for
    /// some and goes on. QoS 1/2 messages wait unacknowledged meanwhile, so this broker sends
    /// the link no more than its inflight window of them and keeps the rest (up to its bounds).
    pub(super) fn pump(&mut self, ctx: &mut Context<Self>) {
        let Some(nats) = self.nats.clone() else {
            return;
        };
        if self.pumping {
            return;
        }
        while let Some(next) = self.outbox.front() {
            if !nats.try_publish(&next.subject, &next.envelope) {
                self.wait_for_room(nats, ctx);
                return;
            }
            if let Some(sent) = self.outbox.pop_front() {
                if sent.counted {
                    self.status().add_sent();
                }
                self.acknowledge_local(sent.ack);
            }
        }
    }

    fn wait_for_room(&mut self, nats: NatsClient, ctx: &mut Context<Self>) {
        self.pumping = true;
        async move { nats.room().await }
            .into_actor(self)
            .map(|open, act, ctx| {
                act.pumping = false;
                if open {
                    act.pump(ctx);
                }
            })
            .spawn(ctx);
    }

    pub(super) fn acknowledge_local(&self, ack: Option<PendingAck>) {
        if let (Some(ack), Some(local)) = (ack, &self.local) {
            local.do_send(Acknowledge(ack));
        }
    }
}

impl Handler<RetainedPublished> for ClusterLink {
    type Result = ();

    /// Every node keeps every retained message: on the broadcast subject.
    fn handle(&mut self, RetainedPublished(message): RetainedPublished, ctx: &mut Context<Self>) {
        if !self.status().is_connected() {
            // Newer than what the cluster may answer a sync with once NATS is back.
            self.retained_while_down.insert(message.topic.clone());
        }
        self.cleared
            .note(&message.topic, message.payload.is_empty());
        let cluster_message = ClusterMessage::retained(&message, std::time::Instant::now());
        let subject = self.env.subjects.broadcast();
        self.queue_message(subject, cluster_message, None, ctx);
    }
}
