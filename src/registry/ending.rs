//! How a client's connection and session end: the detach handshake with its Session
//! ([`Detach`], [`SessionEnded`]), whether the will goes (`wills.rs`), shared-subscription messages handed to another
//! member, the stored session and its expiry.

use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, info};

use super::{client_in, ClientKey, ConnId, Detach, Registry, SessionEnded, ToSession};
use crate::hooks::ClientDisconnected;
use crate::message::Delivery;
use crate::queue::QueueLimits;
use crate::session_state::{InflightEntry, InflightStage, SessionState};

impl Registry {
    /// Final step of a disconnect: hands shared-subscription messages the client did not
    /// acknowledge to other members, keeps or drops the state, then serves a waiting CONNECT.
    pub(super) fn end_session(
        &mut self,
        key: ClientKey,
        conn: ConnId,
        mut state: SessionState,
        ctx: &mut Context<Self>,
    ) {
        let limits = QueueLimits::from_config(&self.config);
        let Some(client) = self.attached_client(key, conn) else {
            return;
        };
        client.attached = None;
        let pending = client.pending.take();
        // Normally done on Detach already; a Session that stopped without it is gone too.
        self.stop_routing_to(key);
        let Some(client) = self.client(key) else {
            return;
        };
        let expiry = client.session_expiry;
        let token = client.timer_token;
        let held = client.take_held();
        self.online -= 1;
        self.redistribute(key, &mut state, held, ctx);
        let Some(client) = client_in(&mut self.clients, key) else {
            return;
        };
        if expiry == 0 {
            self.clear_session(key);
        } else {
            // Over the bound when the Session was disconnected for it (`disconnect`), or with
            // what was held during the detach appended.
            let dropped = state.queue.trim(&limits, limits.overflow);
            let done = state.queue.take_dropped_durable();
            self.offline_bytes.store(client, state);
            client.offline_drops(&self.metrics, dropped);
            self.persist_session(key, true);
            self.persist_done(key, done);
        }
        match pending {
            Some(msg) => self.begin_connect(key, *msg, ctx),
            None if expiry == 0 => self.expire(key, token, ctx),
            None if expiry == u32::MAX => {}
            None => {
                // [MQTT-3.1.2-23] the session is kept for its expiry interval, then freed.
                let after = Duration::from_secs(u64::from(expiry));
                ctx.run_later(after, move |act, ctx| act.expire(key, token, ctx));
            }
        }
    }

    /// Ends a stored session whose expiry interval passed (or that had none), if no connection
    /// took it back meanwhile: publishes a will still delayed, and frees everything.
    pub(super) fn expire(&mut self, key: ClientKey, token: u64, ctx: &mut Context<Self>) {
        let Some(client) = self.client(key) else {
            return;
        };
        if client.timer_token != token || client.attached.is_some() || client.connect_in_progress()
        {
            return;
        }
        let will = client.delayed_will.take();
        let expiry = client.session_expiry;
        let client_id = client.id.clone();
        if expiry > 0 {
            info!(client_id = %client_id, "session expired");
            self.metrics.add_sessions_expired(1);
        }
        self.remove_client(key);
        if let Some(delayed) = will {
            // [MQTT-3.1.3-9] published when the session ends, if that comes before the delay.
            self.publish_will(&client_id, key, &delayed.will, ctx);
        }
    }

    /// Gives the shared-subscription deliveries a leaving client did not acknowledge to another
    /// connected member of their group (MQTT 5 section 4.8.2): QoS 1 messages in flight and
    /// messages not sent yet. A QoS 2 message in flight stays with the client [MQTT-4.8.2-4]
    /// [MQTT-4.8.2-5]. Without another connected member the delivery stays in the session where
    /// it was: one in flight is sent again with its packet identifier when the client resumes
    /// [MQTT-4.4.0-1], and one queued keeps its place [MQTT-4.6.0-6].
    fn redistribute(
        &mut self,
        key: ClientKey,
        state: &mut SessionState,
        held: std::collections::VecDeque<Delivery>,
        ctx: &mut Context<Self>,
    ) {
        if !self.routes.read().has_shared() {
            // No shared subscription exists: nothing to hand over, and no copying either.
            state.queue.extend(held);
            return;
        }
        let mut inflight = std::collections::VecDeque::new();
        for entry in std::mem::take(&mut state.inflight) {
            if entry.stage != InflightStage::AwaitingPubAck {
                inflight.push_back(entry);
            } else if let Some(delivery) = self.hand_to_other_member(key, entry.delivery, ctx) {
                inflight.push_back(InflightEntry { delivery, ..entry });
            }
        }
        state.inflight = inflight;
        let queue = std::mem::take(&mut state.queue);
        for delivery in queue.into_iter().chain(held) {
            if let Some(delivery) = self.hand_to_other_member(key, delivery, ctx) {
                state.queue.push_back(delivery);
            }
        }
    }

    /// Hands a shared-subscription `delivery` of the leaving `key` to another connected member
    /// of its group, if one is there; gives it back otherwise (and for any other delivery).
    fn hand_to_other_member(
        &mut self,
        key: ClientKey,
        delivery: Delivery,
        ctx: &mut Context<Self>,
    ) -> Option<Delivery> {
        let Some(group) = delivery.group() else {
            return Some(delivery);
        };
        let pick = self
            .routes
            .read()
            .pick_other_member(group, key, &delivery.message.topic);
        let Some((member, options)) = pick else {
            return Some(delivery);
        };
        // It leaves this session (on disk too); the member's keeps it if durable.
        self.persist_done(key, delivery.durable_id().into_iter().collect());
        debug!(
            group,
            "redistributing an unacknowledged shared-subscription message"
        );
        let redelivery = Delivery::new(
            delivery.message.clone(),
            delivery.message.qos.min(options.qos),
            delivery.retain,
        )
        .with_extras(options.id.into_iter().collect(), Some(group));
        self.deliver(member, redelivery, ctx);
        None
    }
}

impl Handler<Detach> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Detach, ctx: &mut Context<Self>) {
        let Some(client) = self.attached_client(msg.key, msg.conn) else {
            return;
        };
        // What is batched for it goes first, so the Session's state is complete on `Detached`.
        Self::flush_client(client);
        if let Some(attached) = client.attached.as_mut() {
            attached.detaching = true;
        }
        // And what the workers routed to it: from here on its deliveries come here, held.
        self.stop_routing_to(msg.key);
        let Some(client) = self.client(msg.key) else {
            return;
        };
        let client_id = client.id.clone();
        let Some(attached) = client.attached.as_mut() else {
            return;
        };
        let peer = attached.peer;
        let will = attached.will.take();
        if !msg.ends_session {
            attached.session.send(ToSession::Detached);
        }
        if let Some(expiry) = msg.session_expiry {
            client.session_expiry = expiry;
        }
        let (expiry, token) = (client.session_expiry, client.timer_token);
        info!(client_id = %client_id, addr = %peer, reason = %msg.reason, "client disconnected");
        match (msg.reason.publishes_will(), will) {
            (true, Some(will)) if will.delay == 0 || expiry == 0 => {
                self.publish_will(&client_id, msg.key, &will, ctx);
                self.persist_will(msg.key, None);
            }
            (true, Some(will)) => {
                // (5.0) published after the Will Delay Interval or when the session ends,
                // whichever comes first [MQTT-3.1.2-8], unless the client reconnects before
                // [MQTT-3.1.3-9].
                let now_ms = crate::persistence::unix_ms_now();
                let due_ms = crate::persistence::will_due_ms(&will, expiry, now_ms);
                self.delay_will(msg.key, token, *will, due_ms, ctx);
            }
            // A normal DISCONNECT discards the will [MQTT-3.1.2-10].
            (false, Some(_)) => self.persist_will(msg.key, None),
            (_, None) => {}
        }
        let event = ClientDisconnected {
            client_id,
            peer,
            reason: msg.reason,
        };
        for hook in &self.hooks.disconnected {
            hook.do_send(event.clone());
        }
        if msg.ends_session {
            // The Session has stopped waiting: its state is empty by its own account.
            self.end_session(msg.key, msg.conn, SessionState::default(), ctx);
        }
    }
}

impl Handler<SessionEnded> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SessionEnded, ctx: &mut Context<Self>) {
        self.end_session(msg.key, msg.conn, msg.state, ctx);
    }
}
