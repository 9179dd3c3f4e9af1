//! Going back to the first broker ([`ConnectionOptions::return_to_first`](crate::ConnectionOptions)):
//! while the connection is up on one of its `failover` brokers, it looks whether the first
//! broker accepts TCP connections again, at that interval, and when it does, it leaves the
//! broker in use (with DISCONNECT, so no will goes out there) and connects to the first. Its
//! unacknowledged QoS 1/2 messages go again there, with DUP, as after any reconnect.

use std::time::Instant;

use actix::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::{Link, ManagedConnection};
use crate::events::{ConnectionEvent, LinkDown};
use crate::transport::Transport;

impl ManagedConnection {
    /// Notes, once connected, when to look at the first broker next (never while on it, nor
    /// without `return_to_first`, nor with a custom transport, whose streams have no address,
    /// nor on a server a broker sent the connection to with 0x9C: that lasts while it works).
    pub(super) fn plan_return_to_first(&mut self) {
        self.next_look_at_first = match self.options.return_to_first {
            Some(every)
                if !self.brokers.on_first()
                    && !self.brokers.on_detour()
                    && !matches!(self.options.transport, Transport::Custom(_)) =>
            {
                Some(Instant::now() + every)
            }
            _ => None,
        };
    }

    /// From the keep-alive tick: looks at the first broker when it is time, with a TCP connect
    /// that does not hold the link up meanwhile.
    pub(super) fn look_at_first_if_due(&mut self, ctx: &mut Context<Self>) {
        let due = self
            .next_look_at_first
            .is_some_and(|at| Instant::now() >= at);
        if !due || self.link != Link::Up {
            return;
        }
        self.next_look_at_first = None;
        let first = self.brokers.first().clone();
        let generation = self.generation;
        let look = tokio::time::timeout(
            self.options.connect_timeout,
            TcpStream::connect((first.host.clone(), first.port)),
        );
        ctx.spawn(look.into_actor(self).map(move |answer, act, ctx| {
            if act.generation != generation || act.link != Link::Up {
                return; // the link changed meanwhile: its own plan applies
            }
            match answer {
                Ok(Ok(_probe)) => act.move_back_to_first(ctx),
                _ => {
                    debug!(client_id = %act.options.client_id, broker = %first, "the first broker does not answer yet");
                    act.plan_return_to_first();
                }
            }
        }));
    }

    /// Leaves the broker in use for the first one: DISCONNECT, then a connection attempt at once.
    /// With a write under way it waits for the next tick, so the DISCONNECT goes after it.
    fn move_back_to_first(&mut self, ctx: &mut Context<Self>) {
        let Some(mut writer) = self.writer.take() else {
            self.next_look_at_first = Some(Instant::now());
            return;
        };
        let left = self.attempt_broker.clone();
        info!(client_id = %self.options.client_id, %left, first = %self.brokers.first(), "the first broker answers again; moving back to it");
        let mut last = std::mem::take(&mut self.out);
        last.extend_from_slice(&[0xE0, 0x00]);
        actix_rt::spawn(async move {
            let _ = writer.write_all(&last).await;
            let _ = writer.shutdown().await;
        });
        if let Some(handle) = self.read_handle.take() {
            ctx.cancel_future(handle);
        }
        self.generation += 1;
        self.awaiting_suback.clear();
        self.link = Link::Down;
        self.emit(ConnectionEvent::Disconnected(LinkDown::BackToFirstBroker));
        self.brokers.go_to_first();
        self.connect(ctx);
    }
}
