//! How a Session ends: it stops reading, routes what it read, says goodbye (MQTT 5), detaches
//! from the Registry, hands back what it holds for its client ([`SessionEnded`], from the
//! [`Detached`](crate::registry::Detached) handler), and stops once its output is written.
//!
//! [`SessionEnded`]: crate::registry::SessionEnded

use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, warn};

use super::linger::linger;
use super::peer::disconnect_code;
use super::{Phase, Session};
use crate::codec;
use crate::hooks::DisconnectReason;
use crate::registry::Detach;
use crate::session_state::SessionState;

/// How long a closing Session waits for its last bytes (e.g. a refusing CONNACK) to be written
/// to the socket; past it the socket is closed without the lingering close.
const CLOSE_WRITE_DEADLINE: Duration = Duration::from_secs(2);

/// How long a closing Session waits for the Registry's [`Detached`](crate::registry::Detached)
/// before it stops regardless.
/// The Registry answers every Detach of an attached connection, so this is a safety net only.
const DETACH_DEADLINE: Duration = Duration::from_secs(30);

impl Session {
    /// Ends the connection: stops reading, detaches from the Registry if connected, and stops the
    /// actor once the output is written (or after [`CLOSE_WRITE_DEADLINE`]).
    pub(super) fn close(&mut self, ctx: &mut Context<Self>, reason: DisconnectReason) {
        if self.closing {
            return;
        }
        self.closing = true;
        // Once: `closing` is set above.
        ctx.cancel_future(self.read_handle);
        // A turn end asked of the reader will not come from it now.
        if self.stream.take_turn_end() {
            self.schedule_turn_end(ctx);
        }
        if let Phase::Connected { key, .. } = self.phase {
            self.shared.metrics.disconnected(&reason);
            // What the client published goes to the Registry before its will can
            // [MQTT-3.1.2-8], and the acknowledgements released by routing it go out before a
            // DISCONNECT.
            self.hand_over(ctx);
            if self.peer_options.protocol.is_v5() && !self.socket_dead {
                // (5.0) the broker says why it closes the connection (section 4.13.2), only
                // ever after a successful CONNACK [MQTT-3.14.0-1].
                let code = match self.disconnect_code.take().map(|b| *b) {
                    Some((code, why)) => Some((code, Some(why))),
                    None => disconnect_code(&reason).map(|code| (code, None)),
                };
                if let Some((code, why)) = code {
                    let why = why.or_else(|| Some(reason.to_string()));
                    let max = self.peer_options.max_packet_size;
                    codec::write_disconnect_v5(&mut self.out, code, why.as_deref(), max);
                }
            }
            let ends_session = self.session_ends_with_connection();
            self.awaiting_detached = !ends_session;
            self.shared.registry.do_send(Detach {
                key,
                conn: self.conn,
                reason,
                session_expiry: self.disconnect_expiry,
                ends_session,
            });
        } else {
            debug!(addr = %self.peer, reason = %reason, "connection closed before CONNECT completed");
        }
        self.flush(ctx);
        ctx.run_later(CLOSE_WRITE_DEADLINE, |act, ctx| {
            act.socket_dead = true;
            act.maybe_stop(ctx);
        });
        ctx.run_later(DETACH_DEADLINE, |act, ctx| {
            if act.awaiting_detached {
                warn!(client_id = %act.client_id(), "no answer to Detach from the Registry; stopping");
                ctx.stop();
            }
        });
        self.maybe_stop(ctx);
    }

    /// Whether nothing of this session outlives the connection, so that closing needs no
    /// [`Detached`](crate::registry::Detached) handshake (see [`Detach::ends_session`]).
    pub(super) fn session_ends_with_connection(&self) -> bool {
        let expiry = self
            .disconnect_expiry
            .unwrap_or(self.peer_options.session_expiry);
        expiry == 0 && self.fresh_session && !self.shared_subscriber
    }

    /// Stops the actor once it is closing, not waiting for the Registry's
    /// [`Detached`](crate::registry::Detached), and its output is written (or its socket dead).
    pub(super) fn maybe_stop(&mut self, ctx: &mut Context<Self>) {
        if !self.closing || self.awaiting_detached {
            return;
        }
        let written = self.writer.is_some() && self.out.is_empty();
        if written || self.socket_dead {
            // The socket outlives the actor in a lingering close, unless it failed (nothing
            // more can reach the client). Spawned here, inside the worker's running event loop;
            // an actor stopped by its arbiter shutting down just drops its socket.
            if let (Some(stream), Some(slot)) = (self.stream.take_back(), self.slot.take()) {
                if !self.socket_dead {
                    actix::spawn(linger(stream, slot));
                }
            }
            ctx.stop();
        }
    }

    /// What the Session holds for its client, handed to the Registry as it ends: the deliveries
    /// still held, the window and the queue, and the inbound QoS 2 ids.
    pub(super) fn state_for_registry(&mut self) -> SessionState {
        for deliver in self.take_held() {
            for delivery in deliver.deliveries {
                if delivery.qos != crate::message::QoS::AtMostOnce {
                    self.outbound.push_unbounded(delivery);
                }
            }
        }
        self.submit_durable_changes();
        // What it holds leaves the gauge of messages held for connected clients before the
        // Registry, on another thread with two workers, counts it offline: a scrape between
        // the two never sees it twice.
        let held = self.outbound.uncount_held();
        self.shared.metrics.traffic.held_changed(held);
        let (inflight, queue) = self.outbound.take();
        SessionState {
            inflight,
            queue,
            inbound_qos2: self.inbound_qos2.take(),
        }
    }
}
