//! What the other nodes' clients are subscribed to, as they announce it: the filters this node's
//! link subscribes to locally, so that it reads only the messages some other node wants.
//!
//! Each node announces its own filters as they come and go, and all of them when it (re)joins
//! ([`RemoteInterest::begin`] ... [`RemoteInterest::end`]): a filter the node no longer
//! announces then goes, without a moment in which one it still holds is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use super::interest::plain_filter;
use super::liveness::filter_hash;
use crate::topic::parse_shared;

/// What a shared subscription's filter starts with (MQTT 5 section 4.8.2).
const SHARED_PREFIX: &str = "$share/";

/// A change of the link's local subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalChange {
    /// Some node now wants this filter: subscribe.
    Subscribe(String),
    /// No node wants it any more: unsubscribe.
    Unsubscribe(String),
}

/// One other node's filters.
#[derive(Debug, Default)]
struct NodeFilters {
    /// Its filters, each with the renewal it was last announced in.
    filters: BTreeMap<String, u64>,
    /// How many times it has begun announcing all its filters again (its Hellos): the renewal
    /// an announcement of a filter now marks it with.
    renewal: u64,
    /// Between its Hello and its InterestEnd.
    renewing: bool,
    /// The digest of its filters (`liveness::digest`), kept as they change.
    digest: u64,
}

/// The filters of every other node.
#[derive(Debug, Default)]
pub struct RemoteInterest {
    /// By node: its filters.
    nodes: BTreeMap<String, NodeFilters>,
    /// By filter: how many nodes want it.
    wanted: BTreeMap<String, usize>,
}

impl RemoteInterest {
    /// No node known.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many distinct filters the other nodes want.
    pub fn len(&self) -> usize {
        self.wanted.len()
    }

    /// Each node heard of (until it says Bye), and how many filters it holds.
    pub fn nodes(&self) -> Vec<(String, usize)> {
        self.nodes
            .iter()
            .map(|(node, held)| (node.clone(), held.filters.len()))
            .collect()
    }

    /// How many filters `node` holds as this node knows them, and their digest
    /// (`liveness::digest`); `None` for a node not known, or one announcing all of them again.
    pub fn picture_of(&self, node: &str) -> Option<(u64, u64)> {
        let held = self.nodes.get(node).filter(|held| !held.renewing)?;
        debug_assert_eq!(
            held.digest,
            super::liveness::digest(held.filters.keys()),
            "{node}'s running digest"
        );
        Some((held.filters.len() as u64, held.digest))
    }

    /// `node` announces all its filters again from now on (it (re)joined): each announced
    /// from now on is marked with a new renewal.
    pub fn begin(&mut self, node: &str) {
        let held = self.nodes.entry(node.to_string()).or_default();
        held.renewal += 1;
        held.renewing = true;
    }

    /// `node` has announced all its filters: those it did not announce again (marked with an
    /// older renewal) go. One pass over its filters, none copied but those that go.
    pub fn end(&mut self, node: &str) -> Vec<LocalChange> {
        let Some(held) = self.nodes.get_mut(node).filter(|held| held.renewing) else {
            return Vec::new();
        };
        held.renewing = false;
        let renewal = held.renewal;
        let gone: Vec<String> = held
            .filters
            .iter()
            .filter(|(_, &marked)| marked < renewal)
            .map(|(filter, _)| filter.clone())
            .collect();
        self.apply(node, &[], &gone)
    }

    /// `node` is gone (it said so): all its filters go, and the node with them.
    pub fn forget(&mut self, node: &str) -> Vec<LocalChange> {
        let held: Vec<String> = self
            .nodes
            .get(node)
            .map(|held| held.filters.keys().cloned().collect())
            .unwrap_or_default();
        let changes = self.apply(node, &[], &held);
        self.nodes.remove(node);
        changes
    }

    /// `node` added and removed these filters.
    pub fn apply(&mut self, node: &str, added: &[String], removed: &[String]) -> Vec<LocalChange> {
        let mut changes = Vec::new();
        if !self.nodes.contains_key(node) {
            self.nodes.insert(node.to_string(), NodeFilters::default());
        }
        let Some(held) = self.nodes.get_mut(node) else {
            return changes;
        };
        let renewal = held.renewal;
        // The link subscribes to a shared group's plain filter: it forwards what matches, and
        // never joins the group.
        for filter in added {
            if let Some(marked) = held.filters.get_mut(filter.as_str()) {
                *marked = renewal; // announced again: no copy, no insertion
                continue;
            }
            held.filters.insert(filter.clone(), renewal);
            held.digest = held.digest.wrapping_add(filter_hash(filter));
            let plain = plain_filter(filter);
            let count = self.wanted.entry(plain.to_string()).or_default();
            *count += 1;
            if *count == 1 {
                changes.push(LocalChange::Subscribe(plain.to_string()));
            }
        }
        for filter in removed {
            if held.filters.remove(filter.as_str()).is_some() {
                held.digest = held.digest.wrapping_sub(filter_hash(filter));
                let plain = plain_filter(filter);
                if let Some(count) = self.wanted.get_mut(plain) {
                    *count -= 1;
                    if *count == 0 {
                        self.wanted.remove(plain);
                        changes.push(LocalChange::Unsubscribe(plain.to_string()));
                    }
                }
            }
        }
        changes
    }

    /// The shared groups (share name, filter) the other nodes hold, each with the nodes that
    /// hold it: they spread its messages among them (each message of a group goes to one
    /// member in the whole cluster, MQTT 5 section 4.8.2). Asked at every announcement heard,
    /// it reads only each node's `$share/` filters (a range of its ordered map), not the
    /// fleet's others.
    pub fn shared_groups(&self) -> BTreeMap<(String, String), BTreeSet<String>> {
        let mut groups: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for (node, held) in &self.nodes {
            let shared = held
                .filters
                .range::<str, _>((Bound::Included(SHARED_PREFIX), Bound::Unbounded))
                .map(|(filter, _)| filter)
                .take_while(|filter| filter.starts_with(SHARED_PREFIX));
            for filter in shared {
                if let Some(Ok(shared)) = parse_shared(filter) {
                    groups
                        .entry((shared.group.to_string(), shared.filter.to_string()))
                        .or_default()
                        .insert(node.clone());
                }
            }
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(filters: &[&str]) -> Vec<String> {
        filters.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn a_filter_is_subscribed_with_its_first_node_and_goes_with_its_last() {
        let mut remote = RemoteInterest::new();
        assert_eq!(
            remote.apply("b", &strings(&["gate/#", "a"]), &[]),
            [
                LocalChange::Subscribe("gate/#".into()),
                LocalChange::Subscribe("a".into())
            ]
        );
        assert_eq!(remote.apply("c", &strings(&["gate/#"]), &[]), []);
        assert_eq!(remote.apply("b", &[], &strings(&["gate/#"])), []);
        assert_eq!(
            remote.forget("c"),
            [LocalChange::Unsubscribe("gate/#".into())]
        );
        assert_eq!(remote.len(), 1);
        // Announced twice, removed once: a node's set, not a count.
        assert_eq!(remote.apply("b", &strings(&["a"]), &[]), []);
        assert_eq!(
            remote.apply("b", &[], &strings(&["a"])),
            [LocalChange::Unsubscribe("a".into())]
        );
        assert_eq!(remote.len(), 0);
    }

    #[test]
    fn a_shared_group_is_forwarded_by_its_plain_filter_and_known_with_the_nodes_holding_it() {
        let mut remote = RemoteInterest::new();
        assert_eq!(
            remote.apply("b", &strings(&["$share/app/detrd/#", "detrd/#"]), &[]),
            [LocalChange::Subscribe("detrd/#".into())]
        );
        remote.apply("d", &strings(&["$share/app/detrd/#", "$share/ops/x"]), &[]);
        let group = |name: &str, filter: &str, nodes: &[&str]| {
            (
                (name.to_string(), filter.to_string()),
                nodes.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>(),
            )
        };
        assert_eq!(
            remote.shared_groups(),
            [
                group("app", "detrd/#", &["b", "d"]),
                group("ops", "x", &["d"])
            ]
            .into()
        );
        assert_eq!(
            remote.apply("b", &[], &strings(&["$share/app/detrd/#"])),
            [],
            "detrd/# is still wanted by b itself"
        );
        assert_eq!(
            remote.shared_groups(),
            [group("app", "detrd/#", &["d"]), group("ops", "x", &["d"])].into()
        );
        assert_eq!(
            remote.apply("b", &[], &strings(&["detrd/#"])),
            [],
            "and by d's group"
        );
        assert_eq!(
            remote.forget("d"),
            [
                LocalChange::Unsubscribe("detrd/#".into()),
                LocalChange::Unsubscribe("x".into())
            ]
        );
    }

    #[test]
    fn a_node_announcing_all_again_drops_only_what_it_left_out() {
        let mut remote = RemoteInterest::new();
        remote.apply("b", &strings(&["x", "y"]), &[]);
        remote.begin("b");
        // Nothing goes while it announces: `y` stays subscribed throughout.
        assert_eq!(
            remote.apply("b", &strings(&["y", "z"]), &[]),
            [LocalChange::Subscribe("z".into())]
        );
        assert_eq!(remote.end("b"), [LocalChange::Unsubscribe("x".into())]);
        assert_eq!(remote.end("b"), []);
        assert_eq!(remote.len(), 2);
        let walked = crate::cluster::liveness::digest(&strings(&["y", "z"]));
        assert_eq!(remote.picture_of("b"), Some((2, walked)));
        remote.forget("b");
        assert_eq!(remote.picture_of("b"), None);
        remote.apply("b", &strings(&["y", "z"]), &[]);
        assert_eq!(remote.picture_of("b"), Some((2, walked)), "as after a walk");
    }

    #[test]
    fn only_the_latest_renewal_counts_and_removals_during_it_go_at_once() {
        let mut remote = RemoteInterest::new();
        remote.apply("b", &strings(&["x", "y", "w"]), &[]);
        remote.begin("b");
        remote.apply("b", &strings(&["x"]), &[]);
        // b said Hello again before its InterestEnd: what it announced before is not enough.
        remote.begin("b");
        assert_eq!(
            remote.apply("b", &strings(&["y"]), &strings(&["w"])),
            [LocalChange::Unsubscribe("w".into())]
        );
        assert_eq!(remote.picture_of("b"), None, "renewing");
        assert_eq!(remote.end("b"), [LocalChange::Unsubscribe("x".into())]);
        assert_eq!(remote.nodes(), [("b".to_string(), 1)]);
        let walked = crate::cluster::liveness::digest(&strings(&["y"]));
        assert_eq!(remote.picture_of("b"), Some((1, walked)));
        // An InterestEnd of a node that never said Hello changes nothing.
        remote.apply("c", &strings(&["y"]), &[]);
        assert_eq!(remote.end("c"), []);
        assert_eq!(remote.nodes().len(), 2);
    }
}
