//! Start-up with `[persistence]`: the Registry takes the store and rebuilds its tables from what
//! was read back ([`Recover`]).

use std::sync::Arc;

use actix::prelude::*;
use tracing::debug;

use super::{client_in, Registry};
use crate::message::{LastWill, Message};
use crate::persistence::{Record, RecoveredSession, Store};
use crate::routing::Reader;

/// Sent once by the broker to the Registry at start, before any connection is accepted: the
/// store to keep durable state in, and what was read back from it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Recover {
    /// The handle on the writer thread.
    pub store: Store,
    /// Retained messages, expired ones left out.
    pub retained: Vec<Arc<Message>>,
    /// Persistent sessions, expired ones left out.
    pub sessions: Vec<RecoveredSession>,
    /// What ended while the broker was down, to be recorded.
    pub ended: Vec<Record>,
    /// Wills of sessions that expired while the broker was down, by client id: published now.
    pub wills_of_ended: Vec<(String, LastWill)>,
}

impl Handler<Recover> for Registry {
    type Result = ();

    /// Retained messages go back into the retained store; each persistent session comes back
    /// offline, with its subscriptions, its queued and in-flight messages and inbound QoS 2
    /// ids, an expiry timer for what is left of its interval `[MQTT-3.1.2-23]`, and its will
    /// with what is left of its delay.
    fn handle(&mut self, msg: Recover, ctx: &mut Context<Self>) {
        for message in msg.retained {
            self.recover_retained(message);
        }
        self.warn_if_over_retained_limit();
        let sessions_expired = msg
            .ended
            .iter()
            .filter(|record| matches!(record, Record::SessionGone(_)))
            .count();
        self.metrics.add_sessions_expired(sessions_expired as u64);
        if !msg.ended.is_empty() {
            msg.store.submit_all(msg.ended);
        }
        let mut recovered_wills = Vec::with_capacity(msg.sessions.len());
        for session in msg.sessions {
            let key = self.insert_client(session.client_id.as_str().into());
            let Some(client) = client_in(&mut self.clients, key) else {
                continue;
            };
            client.session_expiry = session.expiry;
            client.persisted = true;
            self.offline_bytes.store(client, session.state);
            let id = client.id.clone();
            let token = client.timer_token;
            let mut table = self.routes.write();
            for (filter, options) in &session.subscriptions {
                table.subscribe(filter, key, *options);
            }
            // Who it connected as, so that shared groups pass it over for what it may not
            // read while it is offline, as before the restart.
            let keeps_reader = self.keeps_readers && !super::exempt_from_acl(&id);
            if let Some(user) = session.user.filter(|_| keeps_reader) {
                let reader = Reader {
                    username: user.into_username().map(Arc::from),
                    client_id: id.clone(),
                };
                table.set_reader(key, Some(reader));
            }
            table.set_durable(key, Some(id));
            drop(table);
            if let Some(client) = client_in(&mut self.clients, key) {
                client.subscriptions = session.subscriptions.into_iter().collect();
                for filter in client.subscriptions.keys() {
                    self.filter_watch.held(&client.id, filter, true);
                }
            }
            if let Some(after) = session.expires_in {
                ctx.run_later(after, move |act, ctx| act.expire(key, token, ctx));
            }
            recovered_wills.push((key, session.will));
        }
        self.filter_watch.flush();
        self.store = Some(msg.store);
        self.warn_if_recovered_over_offline_bound();
        // Wills go out once every session is back, so that their subscriptions get them.
        for (client_id, will) in msg.wills_of_ended {
            debug!(client_id = %client_id, topic = %will.topic, "publishing the will of a session that expired while the broker was down");
            self.route(Arc::new(will.to_message()), None, ctx);
        }
        for (key, will) in recovered_wills {
            if let Some((will, due_ms)) = will {
                self.recover_will(key, will, due_ms, ctx);
            }
        }
    }
}
