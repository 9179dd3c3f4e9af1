//! How a connection attaches to its client: a new client id at once; a known one (stored
//! session, takeover, a CONNECT that replaced another) after a barrier on the route table, so
//! that every delivery a worker sent the Registry for it while it was not connected is in the
//! session handed to the new Session, and every later one goes straight to that Session behind
//! it.

use std::sync::Arc;

use actix::prelude::*;
use tracing::{debug, info};

use super::client::Attached;
use super::{client_in, ClientKey, Connect, ConnectOutcome, FinishConnect, Registry, ToSession};
use crate::drops::DropLog;
use crate::hooks::ClientConnected;
use crate::routing::{Reader, Target};

impl Registry {
    /// Attaches `msg` to a client whose deliveries went through the Registry until now, once
    /// every [`Stored`](super::Stored) matched for it before is handled. Under one write lock
    /// the route table starts sending the workers' deliveries straight to the new Session,
    /// which handles nothing from its mailbox before its [`ConnectOutcome`]: they come after
    /// what the outcome carries. Taking that lock waits for the workers still routing, whose
    /// `Stored` are then in this mailbox ahead of the [`FinishConnect`] sent here, and go into
    /// the stored session the outcome hands over. (Switching the target only at the attach
    /// let a `Stored` routed between the two reach the client after later messages sent
    /// straight to it [MQTT-4.6.0-6].) A clean start ends the old session first, so that
    /// nothing its subscriptions match reaches the new connection [MQTT-3.1.2-6].
    pub(super) fn begin_connect(&mut self, key: ClientKey, msg: Connect, ctx: &mut Context<Self>) {
        if msg.clean_session {
            self.clear_session(key);
        }
        let Some(client) = self.client(key) else {
            return;
        };
        let session = msg.session.clone();
        client.finishing = Some(Box::new(msg));
        self.routes
            .write()
            .set_target(key, Some(Target::Online(session)));
        ctx.address().do_send(FinishConnect(key));
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
            // discards any previous session (and what was routed to it while this connection
            // was on its way in).
            self.clear_session(key);
        }
        self.next_token += 1;
        let token = self.next_token;
        let Some(client) = client_in(&mut self.clients, key) else {
            return;
        };
        // [MQTT-3.2.2-2] [MQTT-3.2.2-3] a session is present if the last connection with this
        // id kept one (persistent / expiry above 0); a new or clean one has none.
        let session_present = !msg.clean_session && client.session_expiry > 0;
        let state = self.offline_bytes.take(client).unwrap_or_default();
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
        // The session is recorded before the Session hears its answer: from then on it may
        // record what its client sends (an inbound QoS 2 id) from its own thread, and start-up
        // drops any record of a session that comes before the session's own.
        self.persist_session(key, false);
        let outcome = ConnectOutcome {
            key,
            client_id: client_id.clone(),
            session_present,
            state,
        };
        if let Err(ConnectOutcome { state, .. }) = msg.reply.send(outcome) {
            // The Session is gone already (its worker stopped): keep what it would have
            // resumed. What the workers sent straight to it went with its mailbox.
            debug!(client_id = %client_id, "session vanished before CONNACK");
            self.end_session(key, msg.conn, state, ctx);
            return;
        }
        // Armed while connected: a crash publishes it at the next start. None cancels a will
        // that was delayed.
        if let Some(client) = self.client(key).filter(|c| c.persisted) {
            let will = client.attached.as_ref().and_then(|a| a.will.clone());
            self.persist_will(key, will.as_deref().map(|w| (0, w)));
        }
        // Workers deliver to the Session directly (a parked CONNECT's target was set in
        // `begin_connect`; a new client id's is set here). The Session handles nothing from its
        // mailbox before the reply, so what `state` holds comes first.
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
            // One connection is being attached: this one takes it over once it is, and a
            // CONNECT already waiting loses to this one (dropping its reply closes it).
            None if client.finishing.is_some() => client.pending = Some(Box::new(msg)),
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
        let Some(connect) = self.client(key).and_then(|c| c.finishing.take()) else {
            return;
        };
        self.complete_connect(key, *connect, ctx);
        // A CONNECT that came meanwhile takes the new connection over [MQTT-3.1.4-2]; the
        // Session reads what was sent to it first, then this.
        let Some(client) = self.client(key) else {
            return;
        };
        if client.pending.is_some() {
            if let Some(attached) = client.attached.as_ref().filter(|a| !a.detaching) {
                attached.session.send(ToSession::Takeover);
            }
        }
    }
}
