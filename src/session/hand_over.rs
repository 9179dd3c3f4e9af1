//! What a Session does with the messages its client publishes: it routes each read burst on its
//! own worker by the route table ([`route_burst`]), straight into the subscribers' mailboxes, or
//! hands the burst to the Registry when the Registry must see it first (a retained message).
//! The burst is routed, and the turn's output written, at the end of the Session's turn
//! ([`Session::schedule_turn_end`], [`Session::end_turn`]).

use std::sync::Arc;

use actix::dev::SendError;
use actix::prelude::*;
use tracing::debug;

use super::acks::AckWait;
use super::{Phase, Session};
use crate::hooks::DisconnectReason;
use crate::message::Message;
use crate::registry::{self, Routed, WaitForRoom};
use crate::routing::{route_burst, BurstDurability, RegistryRoom};

impl Session {
    /// Queues a message for routing. A burst read from the socket is routed at the end of the
    /// read turn (or every [`super::PUBLISH_BATCH`] messages).
    pub(super) fn forward(&mut self, message: Arc<Message>, ctx: &mut Context<Self>) {
        self.to_route.push(message);
        if self.to_route.len() >= super::PUBLISH_BATCH {
            self.hand_over(ctx);
        } else if !self.route_scheduled {
            self.route_scheduled = true;
            self.schedule_turn_end(ctx);
        }
    }

    /// Has [`Session::end_turn`] run at the end of this turn. Where the packet reader is
    /// polled later in this poll of the Session's task and will run dry, it asks the reader
    /// for a [`ReadEvent::TurnEnd`](super::reader::ReadEvent) (a handler, a wait future or the
    /// stream handler call this, and all of them run before the reader). Where it may not (the
    /// Session is closing and its reader may be gone, or the reader is busy: actix hands the
    /// task back after 16 packets, and the socket may not run dry for long), a future of the
    /// Session's own runs it after the reader, as every turn end did before 2026-12-06: a
    /// spawned future also keeps a busy Session's task polling its mailbox and reader again at
    /// once, which pipelined traffic needs (without it, 8 pipelined QoS 1 pairs fell from 1.04M
    /// to 0.66M messages a second).
    pub(super) fn schedule_turn_end(&mut self, ctx: &mut Context<Self>) {
        if self.closing || self.stream.reader_busy() {
            ctx.spawn(actix::fut::ready(()).map(|(), act: &mut Session, ctx| act.end_turn(ctx)));
        } else {
            self.stream.want_turn_end();
        }
    }

    /// The end of a turn: routes the burst read in it and writes the output it made (in that
    /// order: the acknowledgements of a routed burst go with it).
    pub(super) fn end_turn(&mut self, ctx: &mut Context<Self>) {
        if self.route_scheduled {
            self.route_scheduled = false;
            self.hand_over(ctx);
        }
        if self.write_scheduled {
            self.write_scheduled = false;
            self.flush(ctx);
        }
    }

    /// Routes the queued messages. Called before any other message to the Registry, to keep
    /// order.
    ///
    /// A burst with a retained message goes to the Registry (it updates the retained store
    /// where subscribing reads it), and so does every burst after it until the Registry answers
    /// [`Routed`]: routing one here meanwhile could overtake it. So does every burst while a
    /// SUBSCRIBE or UNSUBSCRIBE of this client waits for its answer, so that it is routed by
    /// the table the change is in, and every burst while another client's SUBSCRIBE or
    /// UNSUBSCRIBE is on its way to the Registry, so that it is routed behind that change as
    /// it was read behind it ([`crate::routing::Routes::change_on_its_way`]). Otherwise the
    /// burst is routed here. Either way, when the Registry's mailbox is full the Session waits
    /// for room without reading its socket, so TCP slows the publisher down.
    pub(super) fn hand_over(&mut self, ctx: &mut Context<Self>) {
        if self.to_route.is_empty() {
            return;
        }
        let Phase::Connected { key, .. } = self.phase else {
            self.to_route.clear();
            return;
        };
        let inbound = self.take_inbound_records();
        if self.via_registry == 0
            && !self.to_route.iter().any(|m| m.retain)
            && !self.shared.routes.change_pending()
        {
            let settlement = if inbound.is_empty() {
                self.offer_settlement(ctx)
            } else {
                None
            };
            let durability = self.shared.store.as_ref().map(|store| BurstDurability {
                store,
                // Deliveries of a QoS 2 message wait for its id to be on disk: a crash before
                // that cannot then deliver it twice when the client sends it again.
                hold: !inbound.is_empty(),
                records: inbound,
                settlement: settlement.as_ref(),
            });
            let routed = route_burst(
                &self.shared.routes,
                &self.shared.stored_to,
                key,
                &self.to_route,
                durability,
            );
            self.to_route.clear();
            self.mark_unmatched(routed.unmatched);
            // This burst's acknowledgements, after those still waiting, once what it kept on
            // disk is durable, or its subscribers acknowledged it all.
            let wait = AckWait::Durable(routed.durable_after.unwrap_or(0));
            let settlement = self.armed_settlement(settlement, routed.settlement_armed);
            self.settle_acks_or_settled(wait, settlement, ctx);
            self.wait_for_writer(ctx);
            match routed.room {
                RegistryRoom::Room => {}
                RegistryRoom::Full => self.wait_for_registry(WaitForRoom, ctx),
                RegistryRoom::Closed => {
                    self.close(ctx, DisconnectReason::Network("registry stopped".into()));
                }
            }
            return;
        }
        let hold = !inbound.is_empty();
        if let (Some(store), true) = (self.shared.store.as_ref(), hold) {
            // Before the burst: the Registry answers once what was submitted before is durable.
            store.submit_all(inbound);
        }
        let publish = registry::Publish {
            from: key,
            conn: self.conn,
            messages: std::mem::take(&mut self.to_route),
            hold,
        };
        self.via_registry += 1;
        // With persistence the acknowledgements wait for `Routed`: it comes once what the
        // burst changed is durable. So do an MQTT 5 publisher's, in memory too: `Routed` says
        // which of its messages reached no subscriber. Every `Routed` has its batch, empty or
        // not, so that each answer releases the burst it is for.
        let wait = if self.shared.store.is_some() || self.acks_await_routing() {
            self.deferred_acks.get_or_insert_with(Box::default);
            AckWait::Routed
        } else {
            AckWait::Durable(0)
        };
        self.settle_acks(wait, ctx);
        match self.shared.registry.try_send(publish) {
            Ok(()) => {}
            Err(SendError::Full(publish)) => self.wait_for_registry(publish, ctx),
            Err(SendError::Closed(_)) => {
                self.close(ctx, DisconnectReason::Network("registry stopped".into()));
                return;
            }
        }
        // The Registry submits this burst's records; while the writer is far behind, this
        // Session stops reading rather than filling the Registry's mailbox, which other
        // clients' Sessions share.
        self.wait_for_writer(ctx);
    }

    /// With persistence, when the store's writer is far behind: reads nothing until it caught
    /// up, so TCP slows the publisher down (the store's own limit, which blocks the thread, is
    /// then not reached by this Session).
    fn wait_for_writer(&mut self, ctx: &mut Context<Self>) {
        let Some(store) = self.shared.store.as_ref().filter(|s| s.is_behind()) else {
            return;
        };
        debug!(client_id = %self.client_id(), "persistence writer behind: reading paused");
        ctx.wait(store.room().into_actor(self));
    }

    /// Sends `msg` to the Registry when its mailbox has room, reading nothing until then.
    fn wait_for_registry<M>(&mut self, msg: M, ctx: &mut Context<Self>)
    where
        M: actix::Message<Result = ()> + Send + 'static,
        registry::Registry: Handler<M>,
    {
        let send = self.shared.registry.send(msg);
        ctx.wait(send.into_actor(self).map(|result, act, ctx| {
            if result.is_err() {
                act.close(ctx, DisconnectReason::Network("registry stopped".into()));
            }
        }));
    }
}

impl Handler<Routed> for Session {
    type Result = ();

    fn handle(&mut self, msg: Routed, ctx: &mut Context<Self>) {
        self.via_registry = self.via_registry.saturating_sub(1);
        // The burst is routed (and, with persistence, durable): its acknowledgements go out.
        self.burst_routed(msg.unmatched);
        if !self.closing {
            self.flush(ctx);
        }
    }
}
