//! The Registry actor: the one owner of the client-id table, the subscription trie, retained
//! messages, stored sessions of offline clients, and the lifecycle hooks. It routes every publish to
//! the Sessions that match, batching deliveries per Session per turn.

mod client;
mod messages;

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use tracing::{debug, info, warn};

pub use messages::*;

use self::client::{push_bounded, Attached, Client};
use crate::config::{Config, QueueOverflow, SessionConfig};
use crate::hooks::{
    ClientConnected, ClientDisconnected, ClientSubscribed, ClientUnsubscribed, LifecycleHooks,
};
use crate::message::{Delivery, Message, QoS};
use crate::metrics::Metrics;
use crate::session::SessionState;
use crate::topic::{RetainedStore, SubscriptionTrie};

/// A Session's batch is sent at once when it reaches this many deliveries, without waiting for
/// the end of the turn.
const BATCH_LIMIT: usize = 256;

/// The Registry actor. Start it with [`Broker::start`](crate::Broker::start).
pub struct Registry {
    config: SessionConfig,
    max_subscriptions: usize,
    metrics: Arc<Metrics>,
    hooks: LifecycleHooks,
    clients: Vec<Option<Client>>,
    free_slots: Vec<u32>,
    by_id: HashMap<Arc<str>, ClientKey>,
    trie: SubscriptionTrie<ClientKey, QoS>,
    retained: RetainedStore<Arc<Message>>,
    /// Clients whose batch is not empty.
    dirty: Vec<ClientKey>,
    flush_scheduled: bool,
    /// Scratch space for one publish's matches.
    matches: Vec<(ClientKey, QoS)>,
    online: usize,
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.config.registry_mailbox);
    }
}

impl Registry {
    /// A Registry with the given settings, counters and hooks.
    pub fn new(config: &Config, metrics: Arc<Metrics>, hooks: LifecycleHooks) -> Self {
        Registry {
            config: config.sessions.clone(),
            max_subscriptions: config.limits.max_subscriptions_per_client,
            metrics,
            hooks,
            clients: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::new(),
            trie: SubscriptionTrie::new(),
            retained: RetainedStore::new(),
            dirty: Vec::new(),
            flush_scheduled: false,
            matches: Vec::new(),
            online: 0,
        }
    }

    fn client(&mut self, key: ClientKey) -> Option<&mut Client> {
        self.clients
            .get_mut(key.0 as usize)
            .and_then(Option::as_mut)
    }

    /// The client at `key` if `conn` is its current connection.
    fn attached_client(&mut self, key: ClientKey, conn: ConnId) -> Option<&mut Client> {
        self.client(key)
            .filter(|c| c.attached.as_ref().is_some_and(|a| a.conn == conn))
    }

    fn insert_client(&mut self, id: Arc<str>) -> ClientKey {
        let client = Client::new(id.clone());
        let key = match self.free_slots.pop() {
            Some(slot) => {
                self.clients[slot as usize] = Some(client);
                ClientKey(slot)
            }
            None => {
                self.clients.push(Some(client));
                ClientKey((self.clients.len() - 1) as u32)
            }
        };
        self.by_id.insert(id, key);
        key
    }

    fn remove_client(&mut self, key: ClientKey) {
        if let Some(client) = self.clients.get_mut(key.0 as usize).and_then(Option::take) {
            for filter in client.subscriptions.keys() {
                self.trie.remove(filter, key);
            }
            self.by_id.remove(&client.id);
            self.free_slots.push(key.0);
        }
    }

    /// Drops a client's subscriptions and stored state (clean session).
    fn clear_session(&mut self, key: ClientKey) {
        let Some(client) = self
            .clients
            .get_mut(key.0 as usize)
            .and_then(Option::as_mut)
        else {
            return;
        };
        for filter in client.subscriptions.drain().map(|(f, _)| f) {
            self.trie.remove(&filter, key);
        }
        client.stored = SessionState::default();
        client.held.clear();
    }

    fn unique_client_id(&self, conn: ConnId) -> Arc<str> {
        let mut n = 0u32;
        loop {
            let id: Arc<str> = match n {
                0 => format!("switchboard-{}", conn.0).into(),
                _ => format!("switchboard-{}-{n}", conn.0).into(),
            };
            if !self.by_id.contains_key(&id) {
                return id;
            }
            n += 1;
        }
    }

    /// Attaches the connection in `msg` to the client and answers it.
    fn complete_connect(&mut self, key: ClientKey, msg: Connect) {
        if msg.clean_session {
            // [MQTT-3.1.2-6] a clean session discards any previous session.
            self.clear_session(key);
        }
        let Some(client) = self.client(key) else {
            return;
        };
        // [MQTT-3.2.2-2] [MQTT-3.2.2-3] a persistent session exists if the last connection with
        // this id was persistent; a new or clean one has none.
        let session_present = !msg.clean_session && !client.clean_session;
        let state = std::mem::take(&mut client.stored);
        client.clean_session = msg.clean_session;
        client.attached = Some(Attached {
            conn: msg.conn,
            session: msg.session.clone(),
            peer: msg.peer,
            will: msg.will,
            detaching: false,
        });
        let client_id = client.id.clone();
        self.online += 1;
        let outcome = ConnectOutcome {
            key,
            client_id: client_id.clone(),
            session_present,
            state,
        };
        if let Err(ConnectOutcome { state, .. }) = msg.reply.send(outcome) {
            // The Session is gone already: keep what it would have resumed.
            debug!(client_id = %client_id, "session vanished before CONNACK");
            self.end_session(key, msg.conn, state);
            return;
        }
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

    /// Final step of a disconnect: keeps or drops the state, then serves a waiting CONNECT.
    fn end_session(&mut self, key: ClientKey, conn: ConnId, mut state: SessionState) {
        let max = self.config.max_queued_messages;
        let overflow = self.config.queue_overflow;
        let Some(client) = self.attached_client(key, conn) else {
            return;
        };
        client.attached = None;
        let pending = client.pending.take();
        let clean_session = client.clean_session;
        self.online -= 1;
        let Some(client) = self.client(key) else {
            return;
        };
        if clean_session {
            self.clear_session(key);
        } else {
            let mut dropped = 0;
            // The Session's own queue may be over the bound (it disconnects at the bound + 1).
            while state.queue.len() > max {
                dropped += 1;
                match overflow {
                    QueueOverflow::DropOldest => state.queue.pop_front(),
                    QueueOverflow::DropNewest => state.queue.pop_back(),
                };
            }
            for delivery in std::mem::take(&mut client.held) {
                dropped += push_bounded(&mut state.queue, delivery, max, overflow);
            }
            client.stored = state;
            self.metrics.add_queued_dropped(dropped);
        }
        match pending {
            Some(msg) => self.complete_connect(key, msg),
            None => {
                let forget = self.client(key).is_some_and(|c| c.clean_session);
                if forget {
                    self.remove_client(key);
                }
            }
        }
    }

    /// Routes one message to every matching subscriber, once each at the highest granted QoS
    /// `[MQTT-3.3.5-1]`, and updates the retained store `[MQTT-3.3.1-5]`.
    fn route(&mut self, message: Arc<Message>, ctx: &mut Context<Self>) {
        if message.retain {
            if message.payload.is_empty() {
                // [MQTT-3.3.1-10] [MQTT-3.3.1-11] an empty retained message deletes, and is not stored.
                self.retained.remove(&message.topic);
            } else {
                self.retained.insert(&message.topic, message.clone());
            }
        }
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        self.trie
            .for_each_match(&message.topic, |key, qos| matches.push((key, *qos)));
        if matches.len() > 1 {
            // Highest QoS first per client, then keep the first of each client.
            matches.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            matches.dedup_by_key(|m| m.0);
        }
        for &(key, granted) in &matches {
            let delivery = Delivery {
                message: message.clone(),
                qos: message.qos.min(granted),
                // [MQTT-3.3.1-9] RETAIN is 0 towards established subscriptions.
                retain: false,
            };
            self.deliver(key, delivery, ctx);
        }
        self.matches = matches;
    }

    fn deliver(&mut self, key: ClientKey, delivery: Delivery, ctx: &mut Context<Self>) {
        let max = self.config.max_queued_messages;
        let overflow = self.config.queue_overflow;
        let Some(client) = self
            .clients
            .get_mut(key.0 as usize)
            .and_then(Option::as_mut)
        else {
            return;
        };
        match &client.attached {
            Some(a) if !a.detaching => {
                client.batch.push(delivery);
                if client.batch.len() == 1 {
                    self.dirty.push(key);
                    self.schedule_flush(ctx);
                } else if client.batch.len() >= BATCH_LIMIT {
                    a.session
                        .do_send(Deliver(std::mem::take(&mut client.batch)));
                }
            }
            // QoS 0 is not kept for clients that are not connected.
            _ if delivery.qos == QoS::AtMostOnce => {}
            Some(_) => client.held.push_back(delivery),
            None => {
                let dropped = push_bounded(&mut client.stored.queue, delivery, max, overflow);
                self.metrics.add_queued_dropped(dropped);
            }
        }
    }

    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flush_scheduled {
            return;
        }
        self.flush_scheduled = true;
        // Runs after the mailbox is drained (or after actix's per-poll message budget), so every
        // publish handled in this turn lands in the same batch.
        ctx.spawn(fut::ready(()).map(|(), act: &mut Registry, _| {
            act.flush_scheduled = false;
            act.flush_all();
        }));
    }

    fn flush_all(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            let Some(client) = self
                .clients
                .get_mut(key.0 as usize)
                .and_then(Option::as_mut)
            else {
                continue;
            };
            Self::flush_client(client);
        }
    }

    fn flush_client(client: &mut Client) {
        if client.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut client.batch);
        if let Some(a) = &client.attached {
            a.session.do_send(Deliver(batch));
        }
    }
}

impl Handler<Connect> for Registry {
    type Result = ();

    fn handle(&mut self, mut msg: Connect, _: &mut Context<Self>) {
        if msg.client_id.is_empty() {
            // [MQTT-3.1.3-6] assign a unique id to a clean-session client that sent none.
            msg.client_id = self.unique_client_id(msg.conn).to_string();
        }
        let key = match self.by_id.get(msg.client_id.as_str()) {
            Some(&key) => key,
            None => {
                let id: Arc<str> = msg.client_id.as_str().into();
                let key = self.insert_client(id);
                self.complete_connect(key, msg);
                return;
            }
        };
        let Some(client) = self.client(key) else {
            return;
        };
        match &mut client.attached {
            None => self.complete_connect(key, msg),
            Some(attached) => {
                // [MQTT-3.1.4-2] the existing connection is closed; this one waits for its state.
                if !attached.detaching {
                    attached.session.do_send(Takeover);
                }
                // A CONNECT already waiting loses to the newer one: dropping its reply closes it.
                client.pending = Some(msg);
            }
        }
    }
}

impl Handler<Publish> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) {
        for message in msg.messages {
            self.route(message, ctx);
        }
    }
}

impl Handler<Subscribe> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        let (max_subscriptions, metrics) = (self.max_subscriptions, self.metrics.clone());
        let Some(client) = self.attached_client(msg.key, msg.conn) else {
            return;
        };
        // Deliveries routed before the subscription took effect go before the SUBACK.
        Self::flush_client(client);
        let client_id = client.id.clone();
        let mut codes = msg.codes;
        let mut granted = Vec::with_capacity(msg.filters.len());
        for (position, filter, qos) in msg.filters {
            let new = !client.subscriptions.contains_key(&filter);
            if new && client.subscriptions.len() >= max_subscriptions {
                warn!(client_id = %client_id, filter = %filter, limit = max_subscriptions, "subscription refused: limit of subscriptions per client");
                metrics.add_limits_hit(1);
                if let Some(code) = codes.get_mut(position) {
                    *code = crate::codec::SUBACK_FAILURE;
                }
                continue;
            }
            client.subscriptions.insert(filter.clone(), qos);
            granted.push((filter, qos));
        }
        if let Some(attached) = &client.attached {
            attached.session.do_send(Subscribed {
                pid: msg.pid,
                codes,
            });
        }
        let mut retained = Vec::new();
        for (filter, qos) in granted {
            self.trie.insert(&filter, msg.key, qos);
            // [MQTT-3.8.4-3] retained messages are (re-)sent for every subscription.
            self.retained.for_each_match(&filter, |m| {
                retained.push(Delivery {
                    message: m.clone(),
                    qos: m.qos.min(qos),
                    retain: true, // [MQTT-3.3.1-8]
                });
            });
            info!(client_id = %client_id, filter = %filter, qos = qos as u8, "client subscribed");
            let event = ClientSubscribed {
                client_id: client_id.clone(),
                filter,
                qos,
            };
            for hook in &self.hooks.subscribed {
                hook.do_send(event.clone());
            }
        }
        for delivery in retained {
            self.deliver(msg.key, delivery, ctx);
        }
    }
}

impl Handler<Unsubscribe> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        let Some(client) = self.attached_client(msg.key, msg.conn) else {
            return;
        };
        Self::flush_client(client);
        if let Some(attached) = &client.attached {
            attached.session.do_send(Unsubscribed { pid: msg.pid });
        }
        let client_id = client.id.clone();
        let removed: Vec<String> = msg
            .filters
            .into_iter()
            .filter(|f| client.subscriptions.remove(f).is_some())
            .collect();
        for filter in removed {
            self.trie.remove(&filter, msg.key);
            info!(client_id = %client_id, filter = %filter, "client unsubscribed");
            let event = ClientUnsubscribed {
                client_id: client_id.clone(),
                filter,
            };
            for hook in &self.hooks.unsubscribed {
                hook.do_send(event.clone());
            }
        }
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
        let client_id = client.id.clone();
        let Some(attached) = client.attached.as_mut() else {
            return;
        };
        attached.detaching = true;
        let peer = attached.peer;
        let will = attached.will.take();
        attached.session.do_send(Detached);
        info!(client_id = %client_id, addr = %peer, reason = %msg.reason, "client disconnected");
        if let (true, Some(will)) = (msg.reason.publishes_will(), will) {
            debug!(client_id = %client_id, topic = %will.topic, "publishing will");
            self.route(Arc::new(will.to_message()), ctx);
        }
        let event = ClientDisconnected {
            client_id,
            peer,
            reason: msg.reason,
        };
        for hook in &self.hooks.disconnected {
            hook.do_send(event.clone());
        }
    }
}

impl Handler<SessionEnded> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SessionEnded, _: &mut Context<Self>) {
        self.end_session(msg.key, msg.conn, msg.state);
    }
}

impl Handler<AddHooks> for Registry {
    type Result = ();

    fn handle(&mut self, msg: AddHooks, _: &mut Context<Self>) {
        self.hooks.extend(msg.0);
    }
}

impl Handler<GetStats> for Registry {
    type Result = RegistryStats;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> RegistryStats {
        RegistryStats {
            clients_online: self.online,
            sessions_offline: self.by_id.len() - self.online,
            subscriptions: self.trie.len(),
            retained: self.retained.len(),
        }
    }
}

impl Handler<Freeze> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Freeze, _: &mut Context<Self>) {
        let _ = msg.0.recv_timeout(std::time::Duration::from_secs(60));
    }
}
