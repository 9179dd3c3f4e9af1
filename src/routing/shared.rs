//! Shared subscription groups: `$share/{name}/{filter}` subscribers, of which each matching
//! message goes to one (MQTT 5 section 4.8.2). Part of the route table: the Registry changes
//! the members, every worker picks among them.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::ClientKey;
use crate::config::SharedStrategy;
use crate::message::SubscriptionOptions;
use crate::topic::SubscriptionTrie;

/// One group: a share name and a filter, and its members in join order.
struct Group {
    members: Vec<(ClientKey, SubscriptionOptions)>,
    /// Round robin position; moved by whichever worker picks (a race between two workers at
    /// most gives one member two messages in a row).
    next: AtomicUsize,
    name: (String, String),
    /// Another node of the cluster serves this group: no member here is picked. A copy of
    /// whether `SharedGroups::standby` holds its name, so that routing need not look it up.
    standby: bool,
}

/// All shared subscription groups.
#[derive(Default)]
pub(super) struct SharedGroups {
    trie: SubscriptionTrie<u32, ()>,
    groups: Vec<Option<Group>>,
    free: Vec<u32>,
    by_name: HashMap<(String, String), u32>,
    members: usize,
    /// Groups (share name, filter) another node of the cluster serves, whether or not they
    /// have members here yet.
    standby: HashSet<(String, String)>,
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
                    standby: self.standby.contains(&full_name),
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

    /// Marks group `name` on `filter` as served by another node of the cluster (`standby`),
    /// or by this one again.
    pub fn set_standby(&mut self, name: &str, filter: &str, standby: bool) {
        let key = (name.to_string(), filter.to_string());
        if let Some(group) = self
            .by_name
            .get(&key)
            .and_then(|&id| self.groups[id as usize].as_mut())
        {
            group.standby = standby;
        }
        if standby {
            self.standby.insert(key);
        } else {
            self.standby.remove(&key);
        }
    }

    /// Calls `visit` with every group whose filter matches `topic`, but those another node
    /// serves.
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(u32)) {
        self.trie.for_each_match(topic, |id, ()| {
            let served_here = self
                .groups
                .get(id as usize)
                .and_then(Option::as_ref)
                .is_some_and(|group| !group.standby);
            if served_here {
                visit(id);
            }
        });
    }

    /// Picks the member of group `id` that gets the next message: a connected one (by
    /// `strategy`), else, unless `online_only`, one whose session is stored, in turn. `exclude`
    /// is never picked (the member that is leaving).
    pub fn pick(
        &self,
        id: u32,
        strategy: SharedStrategy,
        is_online: impl Fn(ClientKey) -> bool,
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
        let eligible = |i: &usize| Some(group.members[*i].0) != exclude;
        let chosen = candidates
            .clone()
            .filter(eligible)
            .find(|&i| is_online(group.members[i].0))
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

    #[test]
    fn round_robin_skips_offline_and_excluded_members() {
        let mut groups = SharedGroups::default();
        for k in 0..3 {
            groups.join("g", "a/+", ClientKey(k), opts());
        }
        let mut ids = Vec::new();
        groups.for_each_match("a/x", |id| ids.push(id));
        assert_eq!(ids.len(), 1);
        let online = |k: ClientKey| k != ClientKey(1);
        let picks: Vec<u32> = (0..4)
            .filter_map(|_| groups.pick(ids[0], SharedStrategy::RoundRobin, online, None, false))
            .map(|(k, _)| k.0)
            .collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
        let pick = groups.pick(
            ids[0],
            SharedStrategy::RoundRobin,
            |_| false,
            Some(ClientKey(0)),
            true,
        );
        assert_eq!(pick, None, "nobody online but the excluded member");
        assert!(groups.leave("g", "a/+", ClientKey(0)));
        assert!(groups.leave("g", "a/+", ClientKey(1)));
        assert!(groups.leave("g", "a/+", ClientKey(2)));
        assert_eq!(groups.len(), 0);
        let mut after = 0;
        groups.for_each_match("a/x", |_| after += 1);
        assert_eq!(after, 0, "an empty group is forgotten");
    }

    #[test]
    fn a_group_another_node_serves_is_not_matched_here_until_it_is_ours_again() {
        let mut groups = SharedGroups::default();
        // Marked before it has members here, as when the other node's announcement comes first.
        groups.set_standby("g", "a/+", true);
        groups.join("g", "a/+", ClientKey(1), opts());
        groups.join("h", "a/+", ClientKey(2), opts());
        let matched = |groups: &SharedGroups| {
            let mut ids = Vec::new();
            groups.for_each_match("a/x", |id| ids.push(id));
            ids.len()
        };
        assert_eq!(matched(&groups), 1, "only group h is served here");
        groups.set_standby("g", "a/+", false);
        assert_eq!(matched(&groups), 2);
        groups.set_standby("h", "a/+", true);
        assert_eq!(matched(&groups), 1);
    }
}
