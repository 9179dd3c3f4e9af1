//! Writing to the client: the output buffer and its one-write-at-a-time flush (the completed
//! write counts its packets and bytes), the QoS 1/2 window's pump, and re-sending a resumed
//! session's unacknowledged messages.

use std::time::Instant;

use actix::prelude::*;
use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::output_pool;
use super::peer::{note_delivery_latency, write_delivery};
use super::read_access::read_check;
use super::socket::SharedStream;
use super::{Phase, Session};
use crate::codec;
use crate::drops::{DropLog, DropReason};
use crate::hooks::DisconnectReason;
use crate::session_state::InflightStage;
use crate::traffic::Written;

impl Session {
    /// Writes what is buffered, one write at a time; the completion of a write starts the next.
    /// A plain TCP socket with room takes it at once.
    pub(super) fn flush(&mut self, ctx: &mut Context<Self>) {
        self.write_out(ctx, true);
    }

    /// [`Session::flush`] where more output may follow in this turn (the other packets of a
    /// burst read at once, other deliveries in the mailbox): the write waits until they are
    /// handled, and takes all of it.
    pub(super) fn flush_after_turn(&mut self, ctx: &mut Context<Self>) {
        self.write_out(ctx, false);
    }

    fn write_out(&mut self, ctx: &mut Context<Self>, at_once: bool) {
        // Every packet, delivery and turn end comes through here: the gauge of messages held
        // for connected clients follows this client's window and queue. With a write scheduled
        // for the end of the turn, that write counts them, once for all the turn's packets.
        if !self.write_scheduled {
            let held_change = self.outbound.take_held_change();
            self.shared.metrics.traffic.held_changed(held_change);
        }
        loop {
            if self.outbound.paces_output() {
                let limit = self.shared.config.sessions.max_outbound_bytes;
                self.feed_output(Instant::now(), limit);
            }
            if !at_once {
                let output_due = !self.out.is_empty() && !self.socket_dead;
                if output_due && self.writer.is_some() && !self.write_scheduled {
                    self.write_scheduled = true;
                    // Runs once the handlers and the packet reader ready now have run.
                    self.schedule_turn_end(ctx);
                }
                // With a write scheduled, the records of what was sent and acknowledged go to
                // the store with it, once the turn's packets are handled: one submission for
                // all of them, not one per packet (each takes a lock the writer thread shares,
                // and reckons the duplicate bound again). Without one they go now: a task of
                // their own for each lone acknowledgement was tried, and at window 1 the medians
                // of four A/Bs were 2-14% lower with it (`docs/benchmarks.md`).
                if !self.write_scheduled && self.shared.store.is_some() {
                    self.output_waits(ctx);
                }
                return;
            }
            if self.shared.store.is_some() && self.output_waits(ctx) {
                return;
            }
            if self.out.is_empty() || self.socket_dead {
                return;
            }
            let Some(writer) = self.writer.take() else {
                return;
            };
            // The buffer goes to the write whole; deliveries written meanwhile take a spare one.
            let mut buf = std::mem::take(&mut self.out);
            let written = Written::count(&buf);
            // A stream with room takes the write at once: no task to spawn, poll and drop for it
            // (two per message at window 1: the PUBLISH out and the PUBACK back). Another stream
            // than plain TCP (TLS) is flushed too; what it did not flush goes as a task.
            match writer.try_write_at_once(&buf) {
                Some((n, true)) if n == buf.len() => {
                    self.shared.metrics.traffic.written(&written);
                    output_pool::give_back(buf);
                    self.writer = Some(writer);
                    if self.outbound.paces_output() && !self.closing {
                        // Retained messages waiting for room go next, as after a write below.
                        continue;
                    }
                    self.maybe_stop(ctx);
                    return;
                }
                // The rest (or only the flush) is written as below, once the socket has room.
                Some((n, _)) => buf.advance(n),
                None => {}
            }
            self.spawn_write(ctx, writer, buf, written);
            return;
        }
    }

    /// Writes `buf` (holding `written`) once the socket takes it; its completion writes what
    /// was buffered meanwhile.
    fn spawn_write(
        &mut self,
        ctx: &mut Context<Self>,
        mut writer: SharedStream,
        buf: BytesMut,
        written: Written,
    ) {
        self.writing = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let write = async move {
            // The flush matters where the stream buffers (TLS, WebSocket); on TCP it is free.
            let result = match writer.write_all(&buf[..]).await {
                Ok(()) => writer.flush().await,
                Err(e) => Err(e),
            };
            (writer, buf, result)
        };
        ctx.spawn(
            write
                .into_actor(self)
                .map(move |(writer, buf, result), act, ctx| {
                    act.writing = 0;
                    // Written: spare for the next fill, here or in another Session.
                    output_pool::give_back(buf);
                    match result {
                        Ok(()) => {
                            act.shared.metrics.traffic.written(&written);
                            act.writer = Some(writer);
                            act.flush(ctx);
                            if act.writer.is_some() && act.out.is_empty() {
                                // Nothing more to write: an idle connection keeps no buffer.
                                output_pool::give_back(std::mem::take(&mut act.out));
                            }
                        }
                        Err(e) => {
                            act.socket_dead = true;
                            act.close(ctx, DisconnectReason::Network(e.to_string()));
                        }
                    }
                    act.maybe_stop(ctx);
                }),
        );
    }

    /// Moves QoS 0 deliveries that wait for room in the output (the retained messages of a
    /// SUBSCRIBE, and what came after them) into it while it holds less than `limit` bytes
    /// (`max_outbound_bytes` as writes complete): they go out as fast as the client reads,
    /// none dropped.
    pub(super) fn feed_output(&mut self, now: Instant, limit: usize) {
        while !self.closing && self.unwritten() < limit {
            let Some(delivery) = self.outbound.next_paced() else {
                break;
            };
            self.write_qos0(&delivery, now);
        }
    }

    /// Writes a QoS 0 delivery into the output, unless it expired `[MQTT-3.3.2-5]` or is too
    /// large for the client `[MQTT-3.1.2-25]` (each counted).
    pub(super) fn write_qos0(&mut self, delivery: &crate::message::Delivery, now: Instant) {
        self.take_spare_output();
        if delivery.message.is_expired(now) {
            self.shared.metrics.add_expired_dropped(1);
        } else if read_check(
            self.reads_checked(),
            &self.acl.1,
            &self.username,
            &self.phase,
        )
        .is_some_and(|check| !check.allows(delivery))
        {
            self.unreadable_dropped(1);
        } else if write_delivery(
            &mut self.out,
            &self.peer_options,
            &mut self.aliases,
            delivery,
            0,
            false,
            now,
        ) {
            note_delivery_latency(&self.shared.metrics.traffic, delivery, now);
        } else {
            self.too_large_for_client();
        }
    }

    /// Before deliveries are written into an output that has no buffer (the last write gave
    /// it back): one of the worker's spare buffers, if it has any.
    fn take_spare_output(&mut self) {
        if self.out.capacity() == 0 {
            self.out = output_pool::take();
        }
    }

    /// Bytes held for the socket: buffered plus being written.
    pub(super) fn unwritten(&self) -> usize {
        self.out.len() + self.writing as usize
    }

    /// Sends queued QoS 1/2 messages while the window has room, after the messages of a resumed
    /// session that are still to go again (see [`Session::resend_inflight`]). A message too
    /// large for the client is dropped as if delivered `[MQTT-3.1.2-25]`.
    pub(super) fn pump(&mut self) {
        self.pump_at(Instant::now());
    }

    /// [`Session::pump`] with the time already read.
    pub(super) fn pump_at(&mut self, now: Instant) {
        self.take_spare_output();
        let check = read_check(
            self.reads_checked(),
            &self.acl.1,
            &self.username,
            &self.phase,
        );
        while let Some(entry) = self.outbound.next_to_resend() {
            let pid = entry.pid;
            if check.is_some_and(|c| !c.allows(&entry.delivery)) {
                self.outbound.discard(pid);
                self.unreadable_dropped(1);
                continue;
            }
            let written = write_delivery(
                &mut self.out,
                &self.peer_options,
                &mut self.aliases,
                &entry.delivery,
                pid,
                true,
                now,
            );
            if !written {
                self.outbound.discard(pid);
                self.too_large_for_client();
            }
        }
        while let Some(entry) = self
            .outbound
            .next_to_send(now, |d| check.is_none_or(|c| c.allows(d)))
        {
            let pid = entry.pid;
            let written = write_delivery(
                &mut self.out,
                &self.peer_options,
                &mut self.aliases,
                &entry.delivery,
                pid,
                false,
                now,
            );
            if written {
                note_delivery_latency(&self.shared.metrics.traffic, &entry.delivery, now);
            } else {
                self.outbound.discard(pid);
                self.too_large_for_client();
            }
        }
        let refused = self.outbound.take_refused();
        if refused > 0 {
            self.unreadable_dropped(refused);
        }
        let expired = self.outbound.take_expired();
        if expired > 0 {
            self.shared.metrics.add_expired_dropped(expired);
            debug!(client_id = %self.client_id(), expired, "expired messages not delivered");
        }
    }

    /// Counts `n` messages dropped for `reason` and warns (rate-limited) naming the client.
    pub(super) fn record_drops(&mut self, reason: DropReason, n: u64) {
        let client_id = match &self.phase {
            Phase::Connected { client_id, .. } => client_id,
            _ => "",
        };
        DropLog::record(&mut self.drops, &self.shared.metrics, client_id, reason, n);
    }

    pub(super) fn too_large_for_client(&self) {
        self.shared.metrics.add_too_large_dropped(1);
        debug!(client_id = %self.client_id(), "message larger than the client's Maximum Packet Size dropped");
    }

    /// Re-sends a resumed session's unacknowledged messages: PUBLISH with DUP, or PUBREL
    /// `[MQTT-4.4.0-1]`. A PUBLISH the client may not read (the session was resumed under
    /// another user name) is dropped instead. PUBLISH packets beyond this connection's window
    /// (its Receive Maximum may be smaller than the last one's) go again as acknowledgements
    /// make room, before anything queued `[MQTT-3.3.4-9]` ([`Session::pump`]).
    pub(super) fn resend_inflight(&mut self) {
        self.outbound.hold_beyond_window();
        let now = Instant::now();
        let mut too_large = Vec::new();
        let mut unreadable = Vec::new();
        let check = read_check(
            self.reads_checked(),
            &self.acl.1,
            &self.username,
            &self.phase,
        );
        for entry in self.outbound.inflight() {
            match entry.stage {
                InflightStage::AwaitingPubComp => {
                    codec::write_ack(&mut self.out, codec::Ack::PubRel, entry.pid)
                }
                _ if self.outbound.is_held(entry.pid) => {}
                _ if check.is_some_and(|c| !c.allows(&entry.delivery)) => {
                    unreadable.push(entry.pid);
                }
                _ => {
                    let written = write_delivery(
                        &mut self.out,
                        &self.peer_options,
                        &mut self.aliases,
                        &entry.delivery,
                        entry.pid,
                        true,
                        now,
                    );
                    if !written {
                        too_large.push(entry.pid);
                    }
                }
            }
        }
        for pid in too_large {
            self.outbound.discard(pid);
            self.too_large_for_client();
        }
        if !unreadable.is_empty() {
            self.unreadable_dropped(unreadable.len() as u64);
            for pid in unreadable {
                self.outbound.discard(pid);
            }
        }
    }
}
