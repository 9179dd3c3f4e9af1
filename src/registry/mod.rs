//! The Registry actor: the one owner of the client-id table, the subscriptions (the one writer
//! of the [`RouteTable`](crate::routing::RouteTable) every worker routes by), retained messages,
//! stored sessions of offline clients, and the lifecycle hooks. It routes what does not go
//! straight from worker to Session: retained publishes, wills, deliveries to clients that are not
//! connected, messages handed to another shared-subscription member; it batches its deliveries
//! per Session per turn.

mod admin;
mod admin_pages;
mod backup;
mod client;
mod cluster;
mod connecting;
mod ending;
mod filter_watch;
mod filters;
mod messages;
mod offline_bytes;
mod persisting;
mod recovering;
mod retained_writes;
mod subscribe_barrier;
mod subscriptions;
mod sys_topics;
mod wills;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use actix::prelude::*;
use tracing::info;

pub use admin::{
    AdminPublish, ClientMessages, ClientSummary, GetClient, GetClientMessages, Kick, Kicked,
    ListClients, ListRetained, ListSubscriptions, Page, SessionReport, SubscriptionSummary,
    WillSummary,
};
pub use backup::BackUp;
pub use cluster::{
    exempt_from_acl, ConnectedElsewhere, RetainedAmong, RetainedPublished, SharedShare,
    WatchRetained, CLUSTER_CLIENT_ID, INTERNAL_CLIENT_PREFIX,
};
pub use filter_watch::{FilterChange, FiltersChanged, ReleaseUnheld, WatchFilters};
pub use messages::*;
pub use recovering::Recover;
pub use subscribe_barrier::{AwaitInterest, HoldSubscribes};

use self::client::Client;
use crate::config::{Config, QueueOverflow, SessionConfig};
use crate::hooks::LifecycleHooks;
use crate::log_gate::LogGate;
use crate::message::{Delivery, Message, QoS, SubscriptionOptions};
use crate::metrics::Metrics;
use crate::persistence::{Durable, DurableTo, Record, Store};
use crate::queue::{Pushed, QueueLimits};
use crate::routing::{Routes, Target};
use crate::topic::RetainedStore;

/// A Session's batch is sent at once when it reaches this many deliveries, without waiting for
/// the end of the turn.
const BATCH_LIMIT: usize = 256;

/// The Registry actor. Start it with [`Broker::start`](crate::Broker::start).
pub struct Registry {
    config: SessionConfig,
    max_subscriptions: usize,
    /// Filters refused for `max_subscriptions`, warned of at most once a second with the count
    /// since the last warning (`subscriptions.rs`): a client may subscribe past it in a loop.
    limit_refusals: LogGate,
    metrics: Arc<Metrics>,
    hooks: LifecycleHooks,
    /// Client records by slot, boxed: the vector grows by doubling, and an idle fleet should not
    /// pay for spare slots at the width of a whole record.
    clients: Vec<Option<Box<Client>>>,
    free_slots: Vec<u32>,
    by_id: HashMap<Arc<str>, ClientKey>,
    /// The same, in client id order: the admin API's pages (`admin_pages.rs`) read it instead
    /// of sorting the table. Changed only where a client record is made or removed.
    by_order: BTreeMap<Arc<str>, ClientKey>,
    /// The subscriptions and where each client's deliveries go; written here only.
    routes: Routes,
    /// Whether the route table keeps who each client connected as (with an ACL at start; see
    /// [`RouteTable::wants_readers`](crate::routing::RouteTable::wants_readers)), read once.
    keeps_readers: bool,
    retained: RetainedStore<Arc<Message>>,
    /// Clients whose batch is not empty.
    dirty: Vec<ClientKey>,
    /// Publishers whose [`Publish`] was routed this turn, answered [`Routed`] after the flush.
    routed: Vec<(ClientKey, ConnId, Routed)>,
    flush_scheduled: bool,
    /// Scratch space for one publish's matches.
    matches: Vec<(ClientKey, SubscriptionOptions)>,
    /// Scratch space for one publish's deliveries.
    deliveries: Vec<(ClientKey, Delivery)>,
    online: usize,
    /// Source of timer tokens (see `Client::timer_token`).
    next_token: u64,
    /// Source of slot generations (see `Client::generation`).
    next_generation: u32,
    /// Durable state (`[persistence]`), if configured.
    store: Option<Store>,
    /// Publishers whose [`Publish`] waits for its changes to be durable before [`Routed`], by
    /// the sequence number of the last change submitted when it was routed.
    awaiting_durable: VecDeque<(u64, ClientKey, ConnId, Routed)>,
    /// The last change the store reported durable.
    durable: u64,
    /// The last change the Registry asked the store to report.
    durable_asked: u64,
    /// The Registry as the store's writer tells it, made at its first wait and lent to every
    /// later one (a wait then allocates nothing).
    durable_to: Option<DurableTo>,
    /// While routing a [`Publish`] with `hold`: the store change its deliveries wait for.
    hold_after: u64,
    /// `limits.max_retained_messages`, and how many topics hold a retained message.
    retained_limit: retained_writes::RetainedLimit,
    /// `sessions.max_offline_queued_bytes` and the bytes offline sessions hold.
    offline_bytes: offline_bytes::OfflineBytes,
    /// How often the `$SYS` topics are published (`sys.interval`); zero: never.
    sys_interval: std::time::Duration,
    /// What the `$SYS` topics were last published with.
    sys: sys_topics::SysTopics,
    /// The holders of each filter, counted while the cluster link watches: the link is told of
    /// each new holder and of a filter's last holder leaving (`filter_watch.rs`).
    filter_watch: filter_watch::FilterWatch,
    /// The cluster link, told of each retained message published here.
    retained_watcher: Option<Recipient<RetainedPublished>>,
    /// The cluster link, asked before each SUBSCRIBE is taken (`subscribe_barrier.rs`).
    subscribe_barrier: Option<Recipient<AwaitInterest>>,
    /// Clients with a SUBSCRIBE waiting for the cluster: what they sent after it.
    behind_barrier: HashMap<ClientKey, VecDeque<subscribe_barrier::Held>>,
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.config.registry_mailbox);
        self.start_sys_topics(self.sys_interval, ctx);
    }
}

impl Registry {
    /// A Registry with the given settings, counters and hooks, writing the route table `routes`
    /// that the workers read.
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        hooks: LifecycleHooks,
        routes: Routes,
    ) -> Self {
        let keeps_readers = routes.read().wants_readers();
        Registry {
            config: config.sessions.clone(),
            max_subscriptions: config.limits.max_subscriptions_per_client,
            limit_refusals: LogGate::new(std::time::Duration::from_secs(1)),
            metrics,
            hooks,
            clients: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::new(),
            by_order: BTreeMap::new(),
            keeps_readers,
            routes,
            retained: RetainedStore::new(),
            dirty: Vec::new(),
            routed: Vec::new(),
            flush_scheduled: false,
            matches: Vec::new(),
            deliveries: Vec::new(),
            online: 0,
            next_token: 0,
            next_generation: 0,
            store: None,
            awaiting_durable: VecDeque::new(),
            durable: 0,
            durable_asked: 0,
            durable_to: None,
            hold_after: 0,
            retained_limit: retained_writes::RetainedLimit::new(
                config.limits.max_retained_messages,
            ),
            offline_bytes: offline_bytes::OfflineBytes::new(
                config.sessions.max_offline_queued_bytes,
            ),
            sys_interval: config.sys.interval,
            sys: sys_topics::SysTopics::new(),
            filter_watch: Default::default(),
            retained_watcher: None,
            subscribe_barrier: None,
            behind_barrier: HashMap::new(),
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
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let client = Box::new(Client::new(id.clone(), generation));
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
        self.by_order.insert(id.clone(), key);
        self.by_id.insert(id, key);
        self.routes
            .write()
            .set_target(key, Some(Target::Registry { generation }));
        key
    }

    fn remove_client(&mut self, key: ClientKey) {
        if let Some(client) = self.clients.get_mut(key.0 as usize).and_then(Option::take) {
            if let Some(state) = client.stored.as_deref() {
                self.offline_bytes.forget(state);
            }
            if client.persisted {
                self.persist(Record::SessionGone(client.id.to_string()));
            }
            let mut table = self.routes.write();
            for filter in client.subscriptions.keys() {
                table.unsubscribe(filter, key);
                self.filter_watch.released(&client.id, filter);
            }
            table.set_target(key, None);
            drop(table);
            self.filter_watch.flush();
            self.by_id.remove(&client.id);
            self.by_order.remove(&client.id);
            self.free_slots.push(key.0);
        }
    }

    /// Drops a client's subscriptions and stored state (clean session).
    fn clear_session(&mut self, key: ClientKey) {
        let Some(client) = client_in(&mut self.clients, key) else {
            return;
        };
        self.offline_bytes.take(client);
        drop(client.take_held());
        let gone = std::mem::take(&mut client.persisted).then(|| client.id.to_string());
        // The route table's durable mark is set only with `persisted`: a client with neither
        // subscriptions nor that mark (a clean start cleared at its barrier and again at its
        // attach, a clean client's every end) costs the workers no write lock.
        if !client.subscriptions.is_empty() || gone.is_some() {
            // What a worker matched for this session before the lock below is taken may still
            // be on its way here (`Stored`): it ends with the session. A new generation tells
            // it from the next session's deliveries [MQTT-3.1.2-6].
            self.next_generation = self.next_generation.wrapping_add(1);
            client.generation = self.next_generation;
            let mut table = self.routes.write();
            for (filter, _) in client.subscriptions.drain() {
                table.unsubscribe(&filter, key);
                self.filter_watch.released(&client.id, &filter);
            }
            self.filter_watch.flush();
            table.set_durable(key, None);
            if let Some(Target::Registry { .. }) = table.target(key) {
                let generation = client.generation;
                table.set_target(key, Some(Target::Registry { generation }));
            }
        }
        if let Some(client_id) = gone {
            self.persist(Record::SessionGone(client_id));
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

    /// Routes one message by the route table, through this Registry's batches, and updates the
    /// retained store `[MQTT-3.3.1-5]`. `from` is the publisher, for No Local. Returns how many
    /// deliveries it made.
    fn route(
        &mut self,
        message: Arc<Message>,
        from: Option<ClientKey>,
        ctx: &mut Context<Self>,
    ) -> usize {
        if message.retain {
            self.tell_retained_watcher(&message, from);
            if message.payload.is_empty() {
                // An empty retained message deletes, and is not stored: 3.1.1 [MQTT-3.3.1-10]
                // [MQTT-3.3.1-11], 5.0 [MQTT-3.3.1-6] [MQTT-3.3.1-7].
                self.remove_retained(&message.topic);
            } else {
                self.set_retained(&message, from);
            }
        }
        let mut deliveries = std::mem::take(&mut self.deliveries);
        self.routes
            .read()
            .route(&message, from, &mut self.matches, |key, delivery| {
                deliveries.push((key, delivery))
            });
        let count = deliveries.len();
        for (key, delivery) in deliveries.drain(..) {
            self.deliver(key, delivery, ctx);
        }
        self.deliveries = deliveries;
        count
    }

    fn deliver(&mut self, key: ClientKey, mut delivery: Delivery, ctx: &mut Context<Self>) {
        let Some(client) = client_in(&mut self.clients, key) else {
            return;
        };
        // Not connected, or its connection ending: what it is sent now is held for it offline.
        let offline = client.attached.as_ref().is_none_or(|a| a.detaching);
        if offline && delivery.qos != QoS::AtMostOnce && !self.offline_room_for(key, &delivery) {
            return;
        }
        let Some(client) = client_in(&mut self.clients, key) else {
            return;
        };
        if let (Some(store), true) = (self.store.as_ref(), client.persisted) {
            if let Some(record) = persisting::queued_record(store, &client.id, &mut delivery) {
                store.submit(record);
            }
        }
        match &client.attached {
            Some(a) if !a.detaching => {
                let outgoing = client.outgoing_mut();
                outgoing.batch.push(delivery);
                outgoing.batch_after = outgoing.batch_after.max(self.hold_after);
                let queued = outgoing.batch.len();
                if queued == 1 {
                    self.dirty.push(key);
                    self.schedule_flush(ctx);
                } else if queued >= BATCH_LIMIT {
                    Self::flush_client(client);
                }
            }
            // QoS 0 is not kept for clients that are not connected.
            _ if delivery.qos == QoS::AtMostOnce => {}
            Some(_) => client.outgoing_mut().held.push_back(delivery),
            None => {
                let limits = QueueLimits::from_config(&self.config);
                let stored = client.stored.get_or_insert_with(Box::default);
                let before = offline_bytes::queue_size(stored);
                let dropped = match stored.queue.push_bounded(delivery, &limits) {
                    Pushed::Queued { dropped } => dropped,
                    // Nobody to disconnect: an offline session drops the oldest.
                    Pushed::Overflowed => stored.queue.trim(&limits, QueueOverflow::DropOldest),
                };
                self.offline_bytes
                    .queue_changed(before, offline_bytes::queue_size(stored));
                let done = stored.queue.take_dropped_durable();
                client.offline_drops(&self.metrics, dropped);
                self.persist_done(key, done);
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
        for (key, conn, routed) in std::mem::take(&mut self.routed) {
            if let Some(attached) = self
                .attached_client(key, conn)
                .and_then(|c| c.attached.as_ref())
            {
                attached.session.send(ToSession::Routed(routed));
            }
        }
    }

    fn flush_client(client: &mut Client) {
        let Some((batch, after)) = client.take_batch() else {
            return;
        };
        if let Some(a) = &client.attached {
            a.session.send(ToSession::Deliver(Deliver {
                deliveries: batch,
                after,
                retained: false,
                settlement: None,
            }));
        }
    }
}

impl Handler<Publish> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) {
        // A burst sent behind a SUBSCRIBE held for the cluster waits behind it too.
        if let Some(waiting) = self.behind_barrier.get_mut(&msg.from) {
            waiting.push_back(subscribe_barrier::Held::Publish(msg));
            return;
        }
        self.publish_now(msg, ctx);
    }
}

impl Registry {
    /// Routes a burst a Session handed over, and answers [`Routed`] once what it changed is
    /// durable.
    fn publish_now(&mut self, msg: Publish, ctx: &mut Context<Self>) {
        // Deliveries of a burst with inbound QoS 2 ids wait for them to be durable.
        self.hold_after = match (&self.store, msg.hold) {
            (Some(store), true) => store.last_submitted(),
            _ => 0,
        };
        let mut routed = Routed { unmatched: 0 };
        for (i, message) in msg.messages.into_iter().enumerate() {
            if self.route(message, Some(msg.from), ctx) == 0 && i < 64 {
                routed.unmatched |= 1 << i;
            }
        }
        self.hold_after = 0;
        self.wait_for_writer(ctx);
        // With a store, the publisher's acknowledgements wait for `Routed`: after what this
        // burst changed is durable.
        match self
            .store
            .as_ref()
            .map(|store| (store.last_submitted(), store))
        {
            Some((seq, store)) if seq > self.durable => {
                self.awaiting_durable
                    .push_back((seq, msg.from, msg.conn, routed));
                if seq > self.durable_asked {
                    self.durable_asked = seq;
                    let to = self
                        .durable_to
                        .get_or_insert_with(|| DurableTo::new(ctx.address().recipient()));
                    if store.notify_when_durable(seq, to) {
                        ctx.notify(Durable::at(seq));
                    }
                }
            }
            _ => {
                self.routed.push((msg.from, msg.conn, routed));
                self.schedule_flush(ctx);
            }
        }
    }
}

impl Handler<Stored> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Stored, ctx: &mut Context<Self>) {
        for stored in msg.0 {
            let current = client_in(&mut self.clients, stored.key)
                .is_some_and(|c| c.generation == stored.generation);
            if current {
                self.deliver(stored.key, stored.delivery, ctx);
            }
        }
        self.wait_for_writer(ctx);
    }
}

impl Handler<WaitForRoom> for Registry {
    type Result = ();

    fn handle(&mut self, _: WaitForRoom, _: &mut Context<Self>) {}
}

impl Handler<CloseAll> for Registry {
    type Result = usize;

    fn handle(&mut self, _: CloseAll, _: &mut Context<Self>) -> usize {
        let mut told = 0;
        for client in self.clients.iter().flatten() {
            if let Some(attached) = client.attached.as_ref().filter(|a| !a.detaching) {
                attached.session.send(ToSession::ServerClosing);
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

    /// What the offline sessions hold is counted as it changes: a scrape, `$SYS` update or
    /// dashboard tick walks nothing. (Debug builds check that count, and the cluster link's
    /// count of each filter's holders, against a walk of every client.)
    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> RegistryStats {
        let (offline_messages, offline_bytes) = self.held_offline();
        debug_assert!(
            self.filter_watch
                .counts_agree(self.clients.iter().flatten().map(|c| &**c)),
            "the holders of the filters miscounted"
        );
        RegistryStats {
            clients_online: self.online,
            sessions_offline: self.by_id.len() - self.online,
            subscriptions: self.routes.read().subscriptions(),
            retained: self.retained.len(),
            retained_bytes: self.retained_limit.bytes,
            offline_messages,
            offline_bytes,
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
fn client_in(clients: &mut [Option<Box<Client>>], key: ClientKey) -> Option<&mut Client> {
    clients
        .get_mut(key.0 as usize)
        .and_then(Option::as_deref_mut)
}
