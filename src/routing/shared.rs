//! Shared subscription groups: `$share/{name}/{filter}` subscribers, of which each matching
//! message goes to one (MQTT 5 section 4.8.2). Part of the route table: the Registry changes
//! the members, every worker picks among them. In a cluster, the nodes holding a group spread
//! its messages among them by a hash of topic and payload ([`Share`]), which every node
//! computes alike.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::ClientKey;
use crate::config::SharedStrategy;
use crate::message::{Message, SubscriptionOptions};
use crate::topic::SubscriptionTrie;

/// Which of a shared group's messages this node's members take in a cluster: those whose
/// [`spread_hash`] modulo `count` is `index`. Each node holding the group has its own index
/// among them (by node name), so every message goes to one node; [`Share::ALL`] outside a
/// cluster, [`Share::NONE`] on a node with no member while other nodes hold the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// This node's place among the nodes holding the group.
    pub index: u32,
    /// How many nodes hold it; 0 takes nothing.
    pub count: u32,
}

impl Share {
    /// Every message: the only node holding the group.
    pub const ALL: Share = Share { index: 0, count: 1 };
    /// None: other nodes hold the group, and this one no member yet.
    pub const NONE: Share = Share { index: 0, count: 0 };

    /// Whether this node takes a message whose [`spread_hash`] `hash` gives (called only when
    /// the group is spread over several nodes).
    pub fn takes(self, hash: impl FnOnce() -> u32) -> bool {
        match self.count {
            0 => false,
            1 => true,
            count => hash() % count == self.index,
        }
    }
}

/// The hash that spreads a shared group's messages over the nodes holding it: CRC-32 of the
/// topic and then the payload, the same on every node for the same message.
pub fn spread_hash(topic: &str, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(topic.as_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// One group: a share name and a filter, and its members in join order.
struct Group {
    members: Vec<(ClientKey, SubscriptionOptions)>,
    /// Round robin position; moved by whichever worker picks (a race between two workers at
    /// most gives one member two messages in a row).
    next: AtomicUsize,
    name: (String, String),
    /// Which of the group's messages this node takes: a copy of its entry in
    /// `SharedGroups::shares`, so that routing need not look it up.
    share: Share,
}

/// All shared subscription groups.
#[derive(Default)]
pub(super) struct SharedGroups {
    trie: SubscriptionTrie<u32, ()>,
    groups: Vec<Option<Group>>,
    free: Vec<u32>,
    by_name: HashMap<(String, String), u32>,
    members: usize,
    /// Groups (share name, filter) spread over the nodes of a cluster, with this node's
    /// share, whether or not they have members here yet; any other is [`Share::ALL`].
    shares: HashMap<(String, String), Share>,
}

thread_local! {
    /// State of the random strategy (xorshift), one per thread that picks.
    static SEED: Cell<u64> = const { Cell::new(0) };
}

impl SharedGroups {
    /// Adds `key` to the group `name` on `filter` (or updates its options).
    pub fn join(&mut self, name: &str, filter: &str, key: ClientKey, options: SubscriptionOptions) {
        let full_name = (name.to_string(), filter.to_string());
        let id = match self.by_name.get(&full_name) {
            Some(&id) => id,
            None => {
                let group = Group {
                    members: Vec::new(),
                    next: AtomicUsize::new(0),
                    share: self.shares.get(&full_name).copied().unwrap_or(Share::ALL),
                    name: full_name.clone(),
                };
                let id = match self.free.pop() {
                    Some(id) => {
                        self.groups[id as usize] = Some(group);
                        id
                    }
                    None => {
                        self.groups.push(Some(group));
                        (self.groups.len() - 1) as u32
                    }
                };
                self.by_name.insert(full_name, id);
                self.trie.insert(filter, id, ());
                id
            }
        };
        let Some(group) = self.groups[id as usize].as_mut() else {
            return;
        };
        match group.members.iter_mut().find(|(k, _)| *k == key) {
            Some(member) => member.1 = options,
            None => {
                group.members.push((key, options));
                self.members += 1;
            }
        }
    }

    /// Removes `key` from the group; an empty group is forgotten. Returns whether it was a member.
    pub fn leave(&mut self, name: &str, filter: &str, key: ClientKey) -> bool {
        let Some(&id) = self.by_name.get(&(name.to_string(), filter.to_string())) else {
            return false;
        };
        let Some(group) = self.groups[id as usize].as_mut() else {
            return false;
        };
        let before = group.members.len();
        group.members.retain(|(k, _)| *k != key);
        let left = before != group.members.len();
        if left {
            self.members -= 1;
        }
        if group.members.is_empty() {
            let (name, filter) = group.name.clone();
            self.trie.remove(&filter, id);
            self.by_name.remove(&(name, filter));
            self.groups[id as usize] = None;
            self.free.push(id);
        }
        left
    }

    /// Sets which of group `name` on `filter`'s messages this node takes in the cluster.
    pub fn set_share(&mut self, name: &str, filter: &str, share: Share) {
        let key = (name.to_string(), filter.to_string());
        if let Some(group) = self
            .by_name
            .get(&key)
            .and_then(|&id| self.groups[id as usize].as_mut())
        {
            group.share = share;
        }
        if share == Share::ALL {
            self.shares.remove(&key);
        } else {
            self.shares.insert(key, share);
        }
    }

    /// Calls `visit` with every group whose filter matches the topic of `message`, but those
    /// whose share of the cluster's messages does not take it.
    pub fn for_each_match(&self, message: &Message, mut visit: impl FnMut(u32)) {
        let mut hash = None;
        self.trie.for_each_match(&message.topic, |id, ()| {
            let taken_here = self
                .groups
                .get(id as usize)
                .and_then(Option::as_ref)
                .is_some_and(|group| {
                    group.share.takes(|| {
                        *hash.get_or_insert_with(|| spread_hash(&message.topic, &message.payload))
                    })
                });
            if taken_here {
                visit(id);
            }
        });
    }

    /// Picks the member of group `id` that gets the next message: a connected one (by
    /// `strategy`), else, unless `online_only`, one whose session is stored, in turn. `exclude`
    /// is never picked (the member that is leaving), nor one for which `may_read` is false.
    pub fn pick(
        &self,
        id: u32,
        strategy: SharedStrategy,
        is_online: impl Fn(ClientKey) -> bool,
        may_read: impl Fn(ClientKey) -> bool,
        exclude: Option<ClientKey>,
        online_only: bool,
    ) -> Option<(ClientKey, SubscriptionOptions)> {
        let random = match strategy {
            SharedStrategy::Random => Some(next_random()),
            SharedStrategy::RoundRobin => None,
        };
        let group = self.groups.get(id as usize)?.as_ref()?;
        let n = group.members.len();
        if n == 0 {
            return None;
        }
        let start = random.map_or(group.next.load(Ordering::Relaxed) % n, |r| {
            (r % n as u64) as usize
        });
        let candidates = (0..n).map(|i| (start + i) % n);
        let eligible = |i: &usize| {
            let key = group.members[*i].0;
            Some(key) != exclude && may_read(key)
        };
        let chosen = candidates
            .clone()
            .find(|i| is_online(group.members[*i].0) && eligible(i))
            .or_else(|| {
                if online_only {
                    None
                } else {
                    candidates.clone().find(eligible)
                }
            })?;
        group.next.store((chosen + 1) % n, Ordering::Relaxed);
        Some(group.members[chosen])
    }

    /// Number of (group, member) pairs.
    pub fn len(&self) -> usize {
        self.members
    }
}

/// The next number of this thread's xorshift generator, seeded from the clock on first use.
fn next_random() -> u64 {
    SEED.with(|seed| {
        let mut x = seed.get();
        if x == 0 {
            x = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
                | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        seed.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::QoS;

    fn opts() -> SubscriptionOptions {
        SubscriptionOptions::qos(QoS::AtLeastOnce)
    }

    fn message(topic: &str, payload: &'static [u8]) -> Message {
        Message::new(
            topic,
            bytes::Bytes::from_static(payload),
            QoS::AtLeastOnce,
            false,
        )
    }

    /// Members 0, 1 and 2 in group `g` on `a/+`, and the id of that group.
    fn group_of_three() -> (SharedGroups, u32) {
        let mut groups = SharedGroups::default();
        for k in 0..3 {
            groups.join("g", "a/+", ClientKey(k), opts());
        }
        let mut ids = Vec::new();
        groups.for_each_match(&message("a/x", b"1"), |id| ids.push(id));
        assert_eq!(ids.len(), 1);
        (groups, ids[0])
    }

    /// Four picks in turn among the members `online` and allowed to `read`.
    fn four_picks(
        groups: &SharedGroups,
        id: u32,
        online: impl Fn(ClientKey) -> bool + Copy,
        read: impl Fn(ClientKey) -> bool + Copy,
    ) -> Vec<u32> {
        (0..4)
            .filter_map(|_| groups.pick(id, SharedStrategy::RoundRobin, online, read, None, false))
            .map(|(k, _)| k.0)
            .collect()
    }

    #[test]
    fn round_robin_skips_offline_and_excluded_members() {
        let (mut groups, id) = group_of_three();
        let online = |k: ClientKey| k != ClientKey(1);
        assert_eq!(four_picks(&groups, id, online, |_| true), vec![0, 2, 0, 2]);
        let pick = groups.pick(
            id,
            SharedStrategy::RoundRobin,
            |_| false,
            |_| true,
            Some(ClientKey(0)),
            true,
        );
        assert_eq!(pick, None, "nobody online but the excluded member");
        assert!(groups.leave("g", "a/+", ClientKey(0)));
        assert!(groups.leave("g", "a/+", ClientKey(1)));
        assert!(groups.leave("g", "a/+", ClientKey(2)));
        assert_eq!(groups.len(), 0);
        let mut after = 0;
        groups.for_each_match(&message("a/x", b"1"), |_| after += 1);
        assert_eq!(after, 0, "an empty group is forgotten");
    }

    #[test]
    fn a_member_that_may_not_read_the_message_is_passed_over() {
        let (groups, id) = group_of_three();
        let reads = |k: ClientKey| k != ClientKey(1);
        assert_eq!(four_picks(&groups, id, |_| true, reads), vec![0, 2, 0, 2]);
        // Nobody connected: a stored session that may read it, not one that may not.
        let offline = groups.pick(
            id,
            SharedStrategy::RoundRobin,
            |_| false,
            |k| k == ClientKey(1),
            None,
            false,
        );
        assert_eq!(offline.map(|(k, _)| k), Some(ClientKey(1)));
        let nobody = groups.pick(id, SharedStrategy::Random, |_| true, |_| false, None, false);
        assert_eq!(nobody, None, "no member may read it");
    }

    #[test]
    fn a_group_spread_over_nodes_takes_its_share_of_the_messages_here() {
        let mut groups = SharedGroups::default();
        // Set before it has members here, as when the other nodes' announcements come first.
        groups.set_share("g", "a/+", Share::NONE);
        groups.join("g", "a/+", ClientKey(1), opts());
        groups.join("h", "a/+", ClientKey(2), opts());
        let payloads: Vec<Vec<u8>> = (0..300u32).map(|n| n.to_be_bytes().to_vec()).collect();
        // How many of the messages each group takes here.
        let taken = |groups: &SharedGroups| {
            let mut counts = HashMap::new();
            for payload in &payloads {
                let m = Message::new(
                    "a/x",
                    bytes::Bytes::from(payload.clone()),
                    QoS::AtMostOnce,
                    false,
                );
                groups.for_each_match(&m, |id| *counts.entry(id).or_insert(0) += 1);
            }
            let mut counts: Vec<usize> = counts.into_values().collect();
            counts.sort_unstable();
            counts
        };
        assert_eq!(
            taken(&groups),
            [300],
            "only group h, which only this node holds"
        );
        // Three nodes hold g: each message goes to one of them, and each takes about a third.
        let mut per_node = 0;
        for index in 0..3 {
            groups.set_share("g", "a/+", Share { index, count: 3 });
            let counts = taken(&groups);
            assert_eq!(counts.len(), 2);
            assert!((70..=130).contains(&counts[0]), "{counts:?}");
            per_node += counts[0];
        }
        assert_eq!(per_node, 300, "every message to exactly one node");
        groups.set_share("g", "a/+", Share::ALL);
        assert_eq!(taken(&groups), [300, 300]);
        // The topic counts as well as the payload.
        assert_ne!(spread_hash("a/x", b"closed"), spread_hash("a/y", b"closed"));
    }
}
