//! The Registry actor: the one owner of the client-id table, the subscription trie, retained
//! messages, stored sessions of offline clients, and the lifecycle hooks. It routes every publish to
//! the Sessions that match, batching deliveries per Session per turn.

mod client;
mod ending;
mod messages;
mod shared;
mod subscriptions;

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use tracing::{debug, info};

pub use messages::*;

use self::client::{Attached, Client};
use self::shared::SharedGroups;
use crate::config::{Config, QueueOverflow, SessionConfig};
use crate::drops::DropLog;
use crate::hooks::{ClientConnected, LifecycleHooks};
use crate::message::{Delivery, Message, QoS, SubscriptionOptions};
use crate::metrics::Metrics;
use crate::queue::{Pushed, QueueLimits};
use crate::session_state::SessionState;
use crate::topic::{parse_shared, RetainedStore, SubscriptionTrie};

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
    trie: SubscriptionTrie<ClientKey, SubscriptionOptions>,
    shared: SharedGroups,
    retained: RetainedStore<Arc<Message>>,
    /// Clients whose batch is not empty.
    dirty: Vec<ClientKey>,
    flush_scheduled: bool,
    /// Scratch space for one publish's matches.
    matches: Vec<(ClientKey, SubscriptionOptions)>,
    /// Scratch space for one publish's shared groups.
    groups: Vec<u32>,
    online: usize,
    /// Source of timer tokens (see `Client::timer_token`).
    next_token: u64,
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
            shared: SharedGroups::default(),
            retained: RetainedStore::new(),
            dirty: Vec::new(),
            flush_scheduled: false,
            matches: Vec::new(),
            groups: Vec::new(),
            online: 0,
            next_token: 0,
        }
    }

    fn client(&mut self, key: ClientKey) -> Option<&mut Client> {
        client_in(&mut self.clients, key)
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
                self.drop_subscription(filter, key);
            }
            self.by_id.remove(&client.id);
            self.free_slots.push(key.0);
        }
    }

    /// Removes `key`'s entry for `filter` from the trie or its shared group.
    fn drop_subscription(&mut self, filter: &str, key: ClientKey) {
        match parse_shared(filter) {
            Some(Ok(shared)) => {
                self.shared.leave(shared.group, shared.filter, key);
            }
            _ => {
                self.trie.remove(filter, key);
            }
        }
    }

    fn is_online(clients: &[Option<Client>], key: ClientKey) -> bool {
        clients
            .get(key.0 as usize)
            .and_then(Option::as_ref)
            .and_then(|c| c.attached.as_ref())
            .is_some_and(|a| !a.detaching)
    }

    /// Drops a client's subscriptions and stored state (clean session).
    fn clear_session(&mut self, key: ClientKey) {
        let Some(client) = client_in(&mut self.clients, key) else {
            return;
        };
        let filters: Vec<String> = client.subscriptions.drain().map(|(f, _)| f).collect();
        client.stored = SessionState::default();
        client.held.clear();
        for filter in filters {
            self.drop_subscription(&filter, key);
        }
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
    fn complete_connect(&mut self, key: ClientKey, msg: Connect, ctx: &mut Context<Self>) {
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
        let state = std::mem::take(&mut client.stored);
        DropLog::flush(&mut client.drops, &client.id);
        client.drops = None;
        client.session_expiry = msg.session_expiry;
        // A new connection cancels the session expiry and a will still delayed [MQTT-3.1.3-9].
        client.timer_token = token;
        client.delayed_will = None;
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
            self.end_session(key, msg.conn, state, ctx);
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

    /// Routes one message to every matching subscriber, once each at the highest granted QoS
    /// `[MQTT-3.3.5-1]` with the identifiers of all its matching subscriptions `[MQTT-3.3.4-3]`,
    /// and to one member of each matching shared group; updates the retained store
    /// `[MQTT-3.3.1-5]`. `from` is the publisher, for No Local `[MQTT-3.8.3-3]`.
    fn route(&mut self, message: Arc<Message>, from: Option<ClientKey>, ctx: &mut Context<Self>) {
        if message.retain {
            if message.payload.is_empty() {
                // An empty retained message deletes, and is not stored: 3.1.1 [MQTT-3.3.1-10]
                // [MQTT-3.3.1-11], 5.0 [MQTT-3.3.1-6] [MQTT-3.3.1-7].
                self.retained.remove(&message.topic);
            } else {
                self.retained.insert(&message.topic, message.clone());
            }
        }
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        self.trie.for_each_match(&message.topic, |key, options| {
            if !(options.no_local && Some(key) == from) {
                matches.push((key, *options));
            }
        });
        if matches.len() > 1 {
            matches.sort_unstable_by_key(|m| m.0);
        }
        let mut i = 0;
        while i < matches.len() {
            let (key, first) = matches[i];
            let mut qos = first.qos;
            let mut retain_as_published = first.retain_as_published;
            let mut ids: Vec<u32> = first.id.into_iter().collect();
            i += 1;
            while i < matches.len() && matches[i].0 == key {
                let options = matches[i].1;
                qos = qos.max(options.qos);
                retain_as_published |= options.retain_as_published;
                ids.extend(options.id);
                i += 1;
            }
            // [MQTT-3.3.1-9] (3.1.1) RETAIN is 0 towards established subscriptions, unless
            // (5.0) Retain As Published [MQTT-3.3.1-12] [MQTT-3.3.1-13].
            let retain = retain_as_published && message.retain;
            let delivery =
                Delivery::new(message.clone(), message.qos.min(qos), retain).with_extras(ids, None);
            self.deliver(key, delivery, ctx);
        }
        self.matches = matches;

        if self.shared.len() == 0 {
            return;
        }
        let mut groups = std::mem::take(&mut self.groups);
        groups.clear();
        self.shared
            .for_each_match(&message.topic, |id| groups.push(id));
        let strategy = self.config.shared_subscription_strategy;
        for &group in &groups {
            let clients = &self.clients;
            let pick = self.shared.pick(
                group,
                strategy,
                |k| Self::is_online(clients, k),
                None,
                false,
            );
            if let Some((member, options)) = pick {
                let delivery = Delivery::new(
                    message.clone(),
                    message.qos.min(options.qos),
                    options.retain_as_published && message.retain,
                )
                .with_extras(options.id.into_iter().collect(), Some(group));
                self.deliver(member, delivery, ctx);
            }
        }
        self.groups = groups;
    }

    fn deliver(&mut self, key: ClientKey, delivery: Delivery, ctx: &mut Context<Self>) {
        let Some(client) = client_in(&mut self.clients, key) else {
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
                let limits = QueueLimits::from_config(&self.config);
                let dropped = match client.stored.queue.push_bounded(delivery, &limits) {
                    Pushed::Queued { dropped } => dropped,
                    // Nobody to disconnect: an offline session drops the oldest.
                    Pushed::Overflowed => {
                        client.stored.queue.trim(&limits, QueueOverflow::DropOldest)
                    }
                };
                client.offline_drops(&self.metrics, dropped);
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
            let Some(client) = client_in(&mut self.clients, key) else {
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

    fn handle(&mut self, mut msg: Connect, ctx: &mut Context<Self>) {
        if msg.client_id.is_empty() {
            // [MQTT-3.1.3-6] assign a unique id to a clean-session client that sent none.
            msg.client_id = self.unique_client_id(msg.conn).to_string();
        }
        let key = match self.by_id.get(msg.client_id.as_str()) {
            Some(&key) => key,
            None => {
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
            None => self.complete_connect(key, msg, ctx),
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
            self.route(message, Some(msg.from), ctx);
        }
    }
}

impl Handler<CloseAll> for Registry {
    type Result = usize;

    fn handle(&mut self, _: CloseAll, _: &mut Context<Self>) -> usize {
        let mut told = 0;
        for client in self.clients.iter().flatten() {
            if let Some(attached) = client.attached.as_ref().filter(|a| !a.detaching) {
                attached.session.do_send(ServerClosing);
                told += 1;
            }
        }
        info!(
            clients = told,
            "closing every connection: server shutting down"
        );
        told
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
            subscriptions: self.trie.len() + self.shared.len(),
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

/// The client at `key` in `clients`; a function of the table alone, so that a caller can hold
/// it while it uses the Registry's other fields (metrics, config).
fn client_in(clients: &mut [Option<Client>], key: ClientKey) -> Option<&mut Client> {
    clients.get_mut(key.0 as usize).and_then(Option::as_mut)
}
