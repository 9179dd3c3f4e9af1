//! How a connection attaches to its client: a new client id at once; a known one (stored
//! session, takeover, a CONNECT that replaced another) after a barrier on the route table, so
//! that every delivery a worker sent the Registry for it while it was not connected is in its
//! session before deliveries start going straight to the new Session.

use std::sync::Arc;

use actix::prelude::*;
use tracing::{debug, info};

use super::client::Attached;
use super::{ClientKey, Connect, ConnectOutcome, FinishConnect, Registry, ToSession};
use crate::drops::DropLog;
use crate::hooks::ClientConnected;
use crate::routing::{Reader, Target};

impl Registry {
    /// Parks `msg` on the client and attaches it once every [`Stored`](super::Stored) matched
    /// before now is handled: taking the table's write lock waits for the workers still
    /// routing, whose `Stored` are then in this mailbox ahead of the [`FinishConnect`] sent
    /// here. A CONNECT parked already loses to this one (dropping its reply closes it).
    pub(super) fn begin_connect(&mut self, key: ClientKey, msg: Connect, ctx: &mut Context<Self>) {
        let Some(client) = self.client(key) else {
            return;
        };
        let already_finishing = client.pending.is_some() && client.attached.is_none();
        client.pending = Some(Box::new(msg));
        if !already_finishing {
            drop(self.routes.write());
            ctx.address().do_send(FinishConnect(key));
        }
    }

    /// Attaches the connection in `msg` to the client and answers it.
    pub(super) fn complete_connect(
        &mut self,
        key: ClientKey,
        msg: Connect,
        ctx: &mut Context<Self>,
    ) {
        if msg.clean_session {
            // [MQTT-3.1.2-6] (3.1.1) [MQTT-3.1.2-4] (5.0) a clean session / clean start
            // discards any previous session.
            self.clear_session(key);
        }
        self.next_token += 1;
        let token = self.next_token;
        let Some(client) = self.client(key) else {
            return;
        };
        // [MQTT-3.2.2-2] [MQTT-3.2.2-3] a session is present if the last connection with this
        // id kept one (persistent / expiry above 0); a new or clean one has none.
        let session_present = !msg.clean_session && client.session_expiry > 0;
        let state = client.stored.take().map(|s| *s).unwrap_or_default();
        DropLog::flush(&mut client.drops, &client.id);
        client.drops = None;
        client.session_expiry = msg.session_expiry;
        // A new connection cancels the session expiry and a will still delayed [MQTT-3.1.3-9].
        client.timer_token = token;
        client.delayed_will = None;
        let session = msg.session;
        client.attached = Some(Attached {
            conn: msg.conn,
            session: session.clone(),
            peer: msg.peer,
            protocol: msg.protocol,
            since_ms: crate::persistence::unix_ms_now(),
            will: msg.will.map(Box::new),
            detaching: false,
        });
        let client_id = client.id.clone();
        self.online += 1;
        // Who the client is, before its session is recorded with it (a restart reads
        // it back), even if its Session vanishes before the CONNACK.
        if self.keeps_readers && !super::exempt_from_acl(&client_id) {
            let reader = Reader {
                username: msg.username,
                client_id: client_id.clone(),
            };
            self.routes.write().set_reader(key, Some(reader));
        }
        let outcome = ConnectOutcome {
            key,
            client_id: client_id.clone(),
            session_present,
            state,
        };
        if let Err(ConnectOutcome { state, .. }) = msg.reply.send(outcome) {
            // The Session is gone already: keep what it would have resumed.
            debug!(client_id = %client_id, "session vanished before CONNACK");
            self.end_session(key, msg.conn, state, ctx);
            return;
        }
        self.persist_session(key, false);
        // Armed while connected: a crash publishes it at the next start. None cancels a will
        // that was delayed.
        if let Some(client) = self.client(key).filter(|c| c.persisted) {
            let will = client.attached.as_ref().and_then(|a| a.will.clone());
            self.persist_will(key, will.as_deref().map(|w| (0, w)));
        }
        // From here on workers deliver to the Session directly. The Session handles nothing
        // from its mailbox before the reply, so what `state` holds comes first.
        self.routes
            .write()
            .set_target(key, Some(Target::Online(session)));
        info!(
            client_id = %client_id,
            addr = %msg.peer,
            protocol = %msg.protocol,
            clean_session = msg.clean_session,
            session_present,
            "client connected"
        );
        let event = ClientConnected {
            client_id,
            peer: msg.peer,
            protocol: msg.protocol,
            clean_session: msg.clean_session,
            session_present,
        };
        for hook in &self.hooks.connected {
            hook.do_send(event.clone());
        }
    }

    /// Sends `key`'s deliveries through the Registry from now on (its connection is ending).
    /// Once the write lock is taken, every delivery a worker matched for the Session before is
    /// in its mailbox.
    pub(super) fn stop_routing_to(&mut self, key: ClientKey) {
        let Some(generation) = self.client(key).map(|c| c.generation) else {
            return;
        };
        self.routes
            .write()
            .set_target(key, Some(Target::Registry { generation }));
    }
}

impl Handler<Connect> for Registry {
    type Result = ();

    fn handle(&mut self, mut msg: Connect, ctx: &mut Context<Self>) {
        if msg.client_id.is_empty() {
            // [MQTT-3.1.3-6] assign a unique id to a clean-session client that sent none.
            msg.client_id = self.unique_client_id(msg.conn).to_string();
        }
        let key = match self.by_id.get(msg.client_id.as_str()) {
            Some(&key) => key,
            None => {
                // Nobody can have routed to a client id that did not exist: attach at once.
                let id: Arc<str> = msg.client_id.as_str().into();
                let key = self.insert_client(id);
                self.complete_connect(key, msg, ctx);
                return;
            }
        };
        let Some(client) = self.client(key) else {
            return;
        };
        match &mut client.attached {
            None => self.begin_connect(key, msg, ctx),
            Some(attached) => {
                // [MQTT-3.1.4-2] the existing connection is closed; this one waits for its state.
                if !attached.detaching {
                    attached.session.send(ToSession::Takeover);
                }
                // A CONNECT already waiting loses to the newer one: dropping its reply closes it.
                client.pending = Some(Box::new(msg));
            }
        }
    }
}

impl Handler<FinishConnect> for Registry {
    type Result = ();

    fn handle(&mut self, msg: FinishConnect, ctx: &mut Context<Self>) {
        let key = msg.0;
        let Some(client) = self.client(key) else {
            return;
        };
        if client.attached.is_some() {
            return;
        }
        if let Some(connect) = client.pending.take() {
            self.complete_connect(key, *connect, ctx);
        }
    }
}
