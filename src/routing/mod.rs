//! Routing a publish where it was read. The [`RouteTable`] is the Registry's subscriptions and
//! the whereabouts of each client; the Registry is its one writer, and every worker reads it
//! through [`Routes`] to match the messages its Sessions read, then hands each connected
//! subscriber its deliveries directly ([`route_burst`]).
//!
//! The table sits behind a reader-writer lock, and a reader holds the read lock until it has
//! sent what it matched. So when the Registry has taken the write lock for a change, every
//! delivery matched under the table before the change is already in its target's mailbox: an
//! answer the Registry sends after the change (SUBACK, UNSUBACK, `Detached`) arrives behind
//! them. That is the barrier the ordering guarantees of `docs/architecture.md` rest on.
//!
//! A SUBSCRIBE or UNSUBSCRIBE read on one connection reaches the table only once the Registry
//! takes it from its mailbox. Until then it is counted ([`Routes::change_on_its_way`]) and every
//! Session hands its bursts to the Registry, so a PUBLISH read after it on another connection is
//! routed after the change too.

mod burst;
mod settlement;
mod shared;

pub use shared::{spread_hash, Share};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use actix::prelude::*;

pub use burst::{route_burst, BurstDurability, BurstRouted, RegistryRoom, Stored, StoredDelivery};
#[cfg(test)]
pub(crate) use settlement::tests as settlement_tests;
pub use settlement::{Settled, Settlement};
use shared::SharedGroups;

use crate::auth::{AccessControl, AclFile};
use crate::config::SharedStrategy;
use crate::message::{Delivery, Message, SubscriptionOptions};
use crate::topic::{parse_shared, SubscriptionTrie};

/// The Registry's handle on a client (its slot in the client table). Slots are reused after a
/// client is forgotten, so every message that names one also names the connection, or (between
/// a worker and the Registry) the slot's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(pub u32);

/// Sent to a connected Session with deliveries for its client, in order: by the Session of a
/// publisher on any worker (what it routed from one read burst), or by the Registry (retained
/// messages, wills, redistributed and resumed messages). Handled by the Session.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    /// The deliveries, in order.
    pub deliveries: Vec<Delivery>,
    /// With persistence: the store change that must be durable before any of these reaches the
    /// client (the inbound QoS 2 id of what they deliver: exactly once across a crash); 0 for
    /// none.
    pub after: u64,
    /// The retained messages a SUBSCRIBE matched: the Session paces them by its socket
    /// instead of dropping QoS 0 ones when its output is full, so that a client subscribing to
    /// more retained messages than its output bound holds gets every one, as live traffic
    /// cannot (it is dropped for a client that does not keep up).
    pub retained: bool,
    /// With `fsync = "always"`: the burst's [`Settlement`], counted down by the client's
    /// PUBACKs of the deliveries here that are kept on disk; `None` for none.
    pub settlement: Option<Arc<Settlement>>,
}

impl Deliver {
    /// Deliveries that may go out at once.
    pub fn now(deliveries: Vec<Delivery>) -> Self {
        Deliver {
            deliveries,
            after: 0,
            retained: false,
            settlement: None,
        }
    }
}

/// A connected Session's mailbox as the route table reaches it: the Registry's handle on the
/// Session (`registry::SessionHandle` extends this trait), shared with the table (one actix
/// address per Session, not one per holder: each address allocates, and an idle connection
/// pays for every one).
pub trait SessionInbox: Send + Sync {
    /// Sends the Session `deliver`; never waits (a full mailbox grows).
    fn deliver(&self, deliver: Deliver);
}

/// Where deliveries to a client go.
pub enum Target {
    /// Connected: straight into its Session's mailbox.
    Online(Arc<dyn SessionInbox>),
    /// Not connected, or detaching: through the Registry, which stores or holds QoS 1/2
    /// deliveries. `generation` tells this client from a later one in the same slot.
    Registry {
        /// The slot's generation when this client took it.
        generation: u32,
    },
}

/// Who a client is to the ACL: asked of a shared group's member before it is picked for a
/// message, so that a message goes to a member that may read it (see [`RouteTable::route`]).
#[derive(Debug, Clone)]
pub struct Reader {
    /// The user name it connected with, if any.
    pub username: Option<Arc<str>>,
    /// Its client id.
    pub client_id: Arc<str>,
}

/// The subscriptions and the whereabouts of every client, as routing needs them.
pub struct RouteTable {
    trie: SubscriptionTrie<ClientKey, SubscriptionOptions>,
    shared: SharedGroups,
    /// Indexed by client slot; `None` for a free slot.
    targets: Vec<Option<Target>>,
    /// Indexed by client slot: the client id of a session whose QoS 1/2 deliveries are kept on
    /// disk (persistence on, expiry interval above 0).
    durable: Vec<Option<Arc<str>>>,
    strategy: SharedStrategy,
    /// The broker's access control, when it has an ACL file: a shared group's member that may
    /// not read a message is passed over for it.
    access: Option<Arc<AccessControl>>,
    /// Indexed by client slot, with an ACL only: who the client last connected as.
    readers: Vec<Option<Reader>>,
}

impl RouteTable {
    /// An empty table; shared groups pick their member by `strategy`, among those that may
    /// read the message by `access`'s ACL (if it has one).
    pub fn new(strategy: SharedStrategy, access: Option<Arc<AccessControl>>) -> Self {
        RouteTable {
            trie: SubscriptionTrie::new(),
            shared: SharedGroups::default(),
            targets: Vec::new(),
            durable: Vec::new(),
            strategy,
            // Without an ACL at start there is none to reload.
            access: access.filter(|a| a.acl().is_some()),
            readers: Vec::new(),
        }
    }

    /// Whether the table keeps who each client is ([`RouteTable::set_reader`]): only with an
    /// ACL.
    pub fn wants_readers(&self) -> bool {
        self.access.is_some()
    }

    /// Sets who `key` connected as (kept only with an ACL, see
    /// [`RouteTable::wants_readers`]); `None` forgets it.
    pub fn set_reader(&mut self, key: ClientKey, reader: Option<Reader>) {
        if self.access.is_some() {
            set_in_slot(&mut self.readers, key, reader);
        }
    }

    /// Who `key` connected as, if the table keeps it ([`RouteTable::set_reader`]).
    pub fn reader(&self, key: ClientKey) -> Option<&Reader> {
        self.readers.get(key.0 as usize).and_then(Option::as_ref)
    }

    /// Whether `key` may read `topic` by `acl`: true for a client the table does not know.
    fn may_read(&self, acl: &AclFile, key: ClientKey, topic: &str) -> bool {
        self.reader(key)
            .is_none_or(|r| acl.may_read(r.username.as_deref(), &r.client_id, topic))
    }

    /// Picks the member of shared group `group` that gets a message on `topic`: by the
    /// strategy, connected ones first, and (with an ACL) one that may read it. If no member
    /// may, one is picked as if there were no ACL, and its Session drops the message and
    /// counts it, as for any message a client may not read. `leaving` is never picked, and
    /// with `online_only` nor is a member whose session is stored.
    fn pick_member(
        &self,
        group: u32,
        topic: &str,
        leaving: Option<ClientKey>,
        online_only: bool,
    ) -> Option<(ClientKey, SubscriptionOptions)> {
        let is_online = |k| self.is_online(k);
        let acl = self.access.as_ref().and_then(|a| a.acl());
        if let Some(acl) = &acl {
            let readable = self.shared.pick(
                group,
                self.strategy,
                is_online,
                |k| self.may_read(acl, k, topic),
                leaving,
                online_only,
            );
            if readable.is_some() {
                return readable;
            }
        }
        self.shared.pick(
            group,
            self.strategy,
            is_online,
            |_| true,
            leaving,
            online_only,
        )
    }

    /// Adds (or updates) `key`'s subscription to `filter`; a `$share/` filter joins its group.
    pub fn subscribe(&mut self, filter: &str, key: ClientKey, options: SubscriptionOptions) {
        match parse_shared(filter) {
            Some(Ok(shared)) => self.shared.join(shared.group, shared.filter, key, options),
            _ => {
                self.trie.insert(filter, key, options);
            }
        }
    }

    /// Removes `key`'s subscription to `filter` (or its membership of the shared group).
    pub fn unsubscribe(&mut self, filter: &str, key: ClientKey) {
        match parse_shared(filter) {
            Some(Ok(shared)) => {
                self.shared.leave(shared.group, shared.filter, key);
            }
            _ => {
                self.trie.remove(filter, key);
            }
        }
    }

    /// Sets where `key`'s deliveries go; `None` frees the slot.
    pub fn set_target(&mut self, key: ClientKey, target: Option<Target>) {
        let slot = key.0 as usize;
        if self.targets.len() <= slot {
            self.targets.resize_with(slot + 1, || None);
        }
        if target.is_none() {
            self.set_durable(key, None);
            self.set_reader(key, None);
        }
        self.targets[slot] = target;
    }

    /// Marks `key`'s QoS 1/2 deliveries as kept on disk for the session of `client_id`
    /// (`None`: not kept).
    pub fn set_durable(&mut self, key: ClientKey, client_id: Option<Arc<str>>) {
        set_in_slot(&mut self.durable, key, client_id);
    }

    /// The client id of `key`'s session if its QoS 1/2 deliveries are kept on disk.
    pub fn durable(&self, key: ClientKey) -> Option<&Arc<str>> {
        self.durable.get(key.0 as usize).and_then(Option::as_ref)
    }

    /// Where `key`'s deliveries go, if the slot is taken.
    pub fn target(&self, key: ClientKey) -> Option<&Target> {
        self.targets.get(key.0 as usize).and_then(Option::as_ref)
    }

    /// Whether `key` is connected (and not detaching), or its connection is being attached.
    pub fn is_online(&self, key: ClientKey) -> bool {
        matches!(self.target(key), Some(Target::Online(_)))
    }

    /// Number of (filter, client) pairs, shared group memberships included.
    pub fn subscriptions(&self) -> usize {
        self.trie.len() + self.shared.len()
    }

    /// Calls `deliver` with each delivery of `message`: every matching subscriber once, at the
    /// highest granted QoS `[MQTT-3.3.5-1]` with the identifiers of all its matching
    /// subscriptions `[MQTT-3.3.4-3]`, and one member of each matching shared group. `from` is
    /// the publisher, for No Local `[MQTT-3.8.3-3]`. `scratch` is reused between calls.
    pub fn route(
        &self,
        message: &Arc<Message>,
        from: Option<ClientKey>,
        scratch: &mut Vec<(ClientKey, SubscriptionOptions)>,
        mut deliver: impl FnMut(ClientKey, Delivery),
    ) {
        scratch.clear();
        self.trie.for_each_match(&message.topic, |key, options| {
            if !(options.no_local && Some(key) == from) {
                scratch.push((key, *options));
            }
        });
        if scratch.len() > 1 {
            scratch.sort_unstable_by_key(|m| m.0);
        }
        let mut i = 0;
        while i < scratch.len() {
            let (key, first) = scratch[i];
            let mut qos = first.qos;
            let mut retain_as_published = first.retain_as_published;
            let mut ids: Vec<u32> = first.id.into_iter().collect();
            i += 1;
            while i < scratch.len() && scratch[i].0 == key {
                let options = scratch[i].1;
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
            deliver(key, delivery);
        }
        if self.shared.len() == 0 {
            return;
        }
        self.shared.for_each_match(message, |group| {
            let pick = self.pick_member(group, &message.topic, None, false);
            if let Some((member, options)) = pick {
                let delivery = Delivery::new(
                    message.clone(),
                    message.qos.min(options.qos),
                    options.retain_as_published && message.retain,
                )
                .with_extras(options.id.into_iter().collect(), Some(group));
                deliver(member, delivery);
            }
        });
    }

    /// A connected member of shared group `group` other than `leaving`, for a message on
    /// `topic` that member did not acknowledge (MQTT 5 section 4.8.2); with an ACL, one that
    /// may read it if any.
    pub fn pick_other_member(
        &self,
        group: u32,
        leaving: ClientKey,
        topic: &str,
    ) -> Option<(ClientKey, SubscriptionOptions)> {
        self.pick_member(group, topic, Some(leaving), true)
    }

    /// Sets which of shared group `name` on `filter`'s messages this node's members take,
    /// the group being held on several nodes of the cluster (the cluster link sets it; MQTT 5
    /// section 4.8.2 across nodes).
    pub fn set_shared_share(&mut self, name: &str, filter: &str, share: Share) {
        self.shared.set_share(name, filter, share);
    }

    /// Whether any shared subscription exists.
    pub fn has_shared(&self) -> bool {
        self.shared.len() > 0
    }
}

/// Sets `key`'s entry of a table indexed by client slot, growing the table only for a value.
fn set_in_slot<T>(table: &mut Vec<Option<T>>, key: ClientKey, value: Option<T>) {
    let slot = key.0 as usize;
    if table.len() <= slot {
        if value.is_none() {
            return;
        }
        table.resize_with(slot + 1, || None);
    }
    table[slot] = value;
}

/// The route table as the Registry and the workers share it, with the count of table changes
/// (SUBSCRIBE, UNSUBSCRIBE) on their way to the Registry.
#[derive(Clone)]
pub struct Routes(Arc<SharedRoutes>);

struct SharedRoutes {
    table: RwLock<RouteTable>,
    /// SUBSCRIBEs and UNSUBSCRIBEs that a Session has read and the Registry has not yet taken:
    /// while any is, bursts are routed through the Registry, behind them (see
    /// [`Routes::change_on_its_way`]).
    changes_on_their_way: AtomicUsize,
}

impl Routes {
    /// A shared, empty table (see [`RouteTable::new`]).
    pub fn new(strategy: SharedStrategy, access: Option<Arc<AccessControl>>) -> Self {
        Routes(Arc::new(SharedRoutes {
            table: RwLock::new(RouteTable::new(strategy, access)),
            changes_on_their_way: AtomicUsize::new(0),
        }))
    }

    /// The table for matching. Hold it until what was matched is sent (see the module doc).
    pub fn read(&self) -> RwLockReadGuard<'_, RouteTable> {
        // A panic while holding the lock cannot leave the table half-changed in a way that
        // matters more than stopping routing altogether would.
        self.0
            .table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The table for a change; the Registry only. Taking it waits for every reader, which is
    /// the barrier of the module doc.
    pub fn write(&self) -> RwLockWriteGuard<'_, RouteTable> {
        self.0
            .table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a SUBSCRIBE or UNSUBSCRIBE that a Session read and is sending to the Registry,
    /// until the returned token is dropped (by the Registry, once the change is in the table,
    /// or with the message if it never gets there).
    ///
    /// Meanwhile every Session hands its bursts to the Registry instead of routing them by
    /// the table, so they are routed behind the change, in the order the broker read the
    /// packets: a PUBLISH that one client sends right behind another client's SUBSCRIBE
    /// reaches the new subscription, as on a broker that reads both on one thread.
    pub fn change_on_its_way(&self) -> ChangeOnItsWay {
        self.0.changes_on_their_way.fetch_add(1, Ordering::SeqCst);
        ChangeOnItsWay(self.0.clone())
    }

    /// Whether a SUBSCRIBE or UNSUBSCRIBE is on its way to the Registry: bursts go through it.
    pub fn change_pending(&self) -> bool {
        self.0.changes_on_their_way.load(Ordering::SeqCst) > 0
    }
}

/// A SUBSCRIBE or UNSUBSCRIBE on its way to the Registry (from [`Routes::change_on_its_way`]):
/// counted until dropped.
pub struct ChangeOnItsWay(Arc<SharedRoutes>);

impl Drop for ChangeOnItsWay {
    fn drop(&mut self) {
        self.0.changes_on_their_way.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_counts_until_its_token_is_dropped_wherever_it_is_dropped() {
        let routes = Routes::new(SharedStrategy::RoundRobin, None);
        assert!(!routes.change_pending());
        let first = routes.change_on_its_way();
        let second = routes.clone().change_on_its_way();
        drop(first);
        assert!(routes.change_pending(), "one change is still on its way");
        // Dropped on another thread, as the Registry's may be, or with an undelivered message.
        std::thread::spawn(move || drop(second))
            .join()
            .expect("thread");
        assert!(!routes.change_pending());
    }
}
