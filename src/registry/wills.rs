//! Wills: published when a connection ends without DISCONNECT, at once or after their Will
//! Delay Interval; and, with `[persistence]`, kept with a persistent session so that a crash
//! or restart publishes them too, and a delay resumes where it stood.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::debug;

use super::client::DelayedWill;
use super::{client_in, ClientKey, Registry};
use crate::message::LastWill;
use crate::persistence::{unix_ms_now, Record};

impl Registry {
    /// Publishes `will` of `client_id` (whose slot is `key`) now.
    pub(super) fn publish_will(
        &mut self,
        client_id: &str,
        key: ClientKey,
        will: &LastWill,
        ctx: &mut Context<Self>,
    ) {
        debug!(client_id = %client_id, topic = %will.topic, "publishing will");
        self.route(Arc::new(will.to_message()), Some(key), ctx);
    }

    /// Holds `will` of `key`'s session until `due_ms` (Unix milliseconds), then publishes it
    /// unless the client came back (`token` no longer current) or the session ended first.
    pub(super) fn delay_will(
        &mut self,
        key: ClientKey,
        token: u64,
        will: LastWill,
        due_ms: u64,
        ctx: &mut Context<Self>,
    ) {
        let due_ms = due_ms.max(1);
        self.persist_will(key, Some((due_ms, &will)));
        if let Some(client) = self.client(key) {
            client.delayed_will = Some(Box::new(DelayedWill { will, due_ms }));
        }
        let delay = Duration::from_millis(due_ms.saturating_sub(unix_ms_now()));
        ctx.run_later(delay, move |act, ctx| act.fire_will(key, token, ctx));
    }

    /// Publishes a delayed will whose delay has passed, unless the client came back.
    fn fire_will(&mut self, key: ClientKey, token: u64, ctx: &mut Context<Self>) {
        let Some(client) = self.client(key) else {
            return;
        };
        if client.timer_token != token {
            return;
        }
        let Some(delayed) = client.delayed_will.take() else {
            return;
        };
        let client_id = client.id.clone();
        self.publish_will(&client_id, key, &delayed.will, ctx);
        self.persist_will(key, None);
    }

    /// Records the will of `key`'s session if it is kept on disk: `(deadline, will)` (deadline
    /// 0 while its client is connected, else when the will is due, ms since the Unix epoch), or
    /// none.
    pub(super) fn persist_will(&mut self, key: ClientKey, will: Option<(u64, &LastWill)>) {
        let Some(client) = client_in(&mut self.clients, key) else {
            return;
        };
        if !client.persisted {
            return;
        }
        let client_id = client.id.to_string();
        self.persist(match will {
            Some((deadline, will)) => Record::WillSet {
                client_id,
                deadline,
                will: Box::new(will.clone()),
            },
            None => Record::WillClear(client_id),
        });
    }

    /// The will of a session read back at start: published now if its delay passed while the
    /// broker was down, else held until it is due (`due_ms`, Unix milliseconds).
    pub(super) fn recover_will(
        &mut self,
        key: ClientKey,
        will: LastWill,
        due_ms: u64,
        ctx: &mut Context<Self>,
    ) {
        let Some(client) = self.client(key) else {
            return;
        };
        let (client_id, token) = (client.id.clone(), client.timer_token);
        if due_ms <= unix_ms_now() {
            self.publish_will(&client_id, key, &will, ctx);
            self.persist_will(key, None);
        } else {
            self.delay_will(key, token, will, due_ms, ctx);
        }
    }
}
