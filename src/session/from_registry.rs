//! What the Registry tells a Session: deliveries ([`Deliver`]), acknowledgements of its
//! subscription changes ([`Subscribed`], [`Unsubscribed`]), and the reasons to close
//! ([`Takeover`], [`ServerClosing`]) or to stop ([`Detached`]).

use std::time::Instant;

use actix::prelude::*;
use tracing::warn;

use super::durability::Reply;
use super::{Phase, Session};
use crate::codec;
use crate::drops::DropReason;
use crate::hooks::DisconnectReason;
use crate::message::QoS;
use crate::queue::{Pushed, QueueLimits};
use crate::registry::{
    Deliver, Detached, Routed, ServerClosing, SessionEnded, Subscribed, Takeover, ToSession,
    Unsubscribed,
};

/// The handle a Session gives the Registry ([`registry::Connect`](crate::registry::Connect)):
/// its own address, so that the Registry and the route table share one address and one `Arc`.
impl crate::registry::SessionHandle for Addr<Session> {
    fn send(&self, msg: ToSession) {
        self.do_send(msg);
    }
}

/// The route table's way into a Session: the Registry's handle, the deliveries wrapped in
/// [`ToSession::Deliver`] (a workers' delivery and the Registry's reach the Session by one
/// handler and so keep their order).
impl crate::routing::SessionInbox for Addr<Session> {
    fn deliver(&self, deliver: Deliver) {
        self.do_send(ToSession::Deliver(deliver));
    }
}

impl Handler<ToSession> for Session {
    type Result = ();

    /// From the Registry: handled as the message inside.
    fn handle(&mut self, msg: ToSession, ctx: &mut Context<Self>) {
        match msg {
            ToSession::Deliver(m) => <Self as Handler<Deliver>>::handle(self, m, ctx),
            ToSession::Routed(routed) => <Self as Handler<Routed>>::handle(self, routed, ctx),
            ToSession::Detached => <Self as Handler<Detached>>::handle(self, Detached, ctx),
            ToSession::Takeover => <Self as Handler<Takeover>>::handle(self, Takeover, ctx),
            ToSession::ServerClosing => {
                <Self as Handler<ServerClosing>>::handle(self, ServerClosing, ctx)
            }
            ToSession::Subscribed(m) => <Self as Handler<Subscribed>>::handle(self, m, ctx),
            ToSession::Unsubscribed(m) => <Self as Handler<Unsubscribed>>::handle(self, m, ctx),
            ToSession::Kick => {
                self.close(ctx, DisconnectReason::Kicked);
                self.flush(ctx);
            }
            ToSession::Report(reply) => {
                let _ = reply.send(crate::registry::SessionReport {
                    inflight: self.outbound.inflight_len(),
                    queued: self.outbound.queued(),
                });
            }
            ToSession::Messages {
                offset,
                limit,
                reply,
            } => {
                let _ = reply.send(crate::session_state::HeldMessages::page(
                    self.outbound.inflight(),
                    self.outbound.queue(),
                    self.inbound_qos2.iter(),
                    offset,
                    limit,
                ));
            }
        }
    }
}

impl Handler<Deliver> for Session {
    type Result = ();

    fn handle(&mut self, mut msg: Deliver, ctx: &mut Context<Self>) {
        if let Some(settlement) = msg.settlement.take() {
            self.note_settling(&msg.deliveries, settlement);
        }
        if let Some(deliver) = self.hold_delivery(msg, ctx) {
            self.take_deliveries(deliver.deliveries, deliver.retained, ctx);
        }
    }
}

impl Session {
    /// Queues or writes deliveries for the client, in order. A QoS 0 delivery is dropped
    /// while the output holds `max_outbound_bytes` (a client that does not keep up), except
    /// the `retained` messages of a SUBSCRIBE: those wait for room ([`Session::feed_output`]),
    /// and QoS 0 deliveries after them wait behind them, in order.
    pub(super) fn take_deliveries(
        &mut self,
        deliveries: Vec<crate::message::Delivery>,
        retained: bool,
        ctx: &mut Context<Self>,
    ) {
        let sessions = &self.shared.config.sessions;
        let output_limit = sessions.max_outbound_bytes;
        let limits = QueueLimits::from_config(sessions);
        let mut output_full = 0;
        let mut queue_full = 0;
        let now = Instant::now();
        for delivery in deliveries {
            if delivery.qos != QoS::AtMostOnce {
                if let Pushed::Queued { dropped } = self.outbound.push(delivery, &limits) {
                    queue_full += dropped;
                }
                // Into the window while it has room: the bound counts what waits beyond it.
                if !self.closing {
                    self.pump_at(now);
                }
            } else if self.closing
                || (!retained && self.unwritten() + self.outbound.paced_bytes() >= output_limit)
            {
                output_full += 1;
            } else if self.outbound.paces_output() || self.unwritten() >= output_limit {
                // A retained message the output has no room for, or one behind such.
                self.outbound.pace(delivery);
            } else {
                self.write_qos0(&delivery, now);
            }
        }
        self.record_drops(DropReason::OutputFull, output_full);
        self.record_drops(DropReason::OnlineQueueFull, queue_full);
        if self.closing {
            return;
        }
        // Only `queue_overflow = "disconnect"` lets the queue grow past its bounds.
        if self.outbound.queued() > limits.max_messages
            || self.outbound.queued_bytes() > limits.max_bytes
        {
            self.shared.metrics.add_slow_consumer_disconnects(1);
            warn!(
                client_id = %self.client_id(),
                queued = self.outbound.queued(),
                queued_bytes = self.outbound.queued_bytes(),
                "closing connection: slow consumer, QoS 1/2 queue full (queue_overflow = disconnect)"
            );
            self.close(ctx, DisconnectReason::SlowConsumer);
        }
        // Other deliveries may wait in the mailbox (a fan-in): one write for all of them.
        self.flush_after_turn(ctx);
    }
}

impl Handler<Takeover> for Session {
    type Result = ();

    fn handle(&mut self, _: Takeover, ctx: &mut Context<Self>) {
        self.close(ctx, DisconnectReason::TakenOver);
    }
}

impl Handler<ServerClosing> for Session {
    type Result = ();

    fn handle(&mut self, _: ServerClosing, ctx: &mut Context<Self>) {
        self.close(ctx, DisconnectReason::ServerShutdown);
    }
}

impl Handler<Detached> for Session {
    type Result = ();

    fn handle(&mut self, _: Detached, ctx: &mut Context<Self>) {
        if let Phase::Connected { key, .. } = self.phase {
            let state = self.state_for_registry();
            self.shared.registry.do_send(SessionEnded {
                key,
                conn: self.conn,
                state,
            });
        }
        self.awaiting_detached = false;
        self.maybe_stop(ctx);
    }
}

impl Handler<Subscribed> for Session {
    type Result = ();

    /// The SUBACK, once the subscriptions it acknowledges are durable.
    fn handle(&mut self, msg: Subscribed, ctx: &mut Context<Self>) {
        // The change is in the route table: bursts may be routed here again.
        self.via_registry = self.via_registry.saturating_sub(1);
        let reply = Reply::SubAck {
            pid: msg.pid,
            codes: msg.codes,
        };
        if let Some(reply) = self.hold_reply(msg.after, reply, ctx) {
            self.write_reply(reply);
            self.flush(ctx);
        }
    }
}

impl Handler<Unsubscribed> for Session {
    type Result = ();

    /// The UNSUBACK, once the removal it acknowledges is durable.
    fn handle(&mut self, msg: Unsubscribed, ctx: &mut Context<Self>) {
        // The change is in the route table: bursts may be routed here again.
        self.via_registry = self.via_registry.saturating_sub(1);
        let reply = Reply::UnsubAck {
            pid: msg.pid,
            codes: msg.codes,
        };
        if let Some(reply) = self.hold_reply(msg.after, reply, ctx) {
            self.write_reply(reply);
            self.flush(ctx);
        }
    }
}

impl Session {
    /// Writes a SUBACK or UNSUBACK (unless the connection is closing). QoS 0 deliveries
    /// waiting for room in the output go into it first, whatever it holds: what was routed to
    /// the client before the acknowledgement arrives before it, and so do the retained
    /// messages of an earlier SUBSCRIBE before those of this one (QoS 1/2 ones do not wait).
    pub(super) fn write_reply(&mut self, reply: Reply) {
        if self.closing {
            return;
        }
        if self.outbound.paces_output() {
            self.feed_output(Instant::now(), usize::MAX);
        }
        match reply {
            Reply::SubAck { pid, codes } => {
                if self.peer_options.protocol.is_v5() {
                    self.write_v5_ack(0x90, pid, &codes, 0x80);
                } else {
                    codec::write_suback(&mut self.out, pid, &codes);
                }
            }
            // [MQTT-3.10.4-4] [MQTT-3.10.4-5] UNSUBACK, even when nothing matched; (5.0) with a
            // reason code per filter [MQTT-3.11.3-1].
            Reply::UnsubAck { pid, codes } => {
                if self.peer_options.protocol.is_v5() {
                    self.write_v5_ack(0xB0, pid, &codes, 0x11);
                } else {
                    codec::write_ack(&mut self.out, codec::Ack::UnsubAck, pid);
                }
            }
        }
    }
}
