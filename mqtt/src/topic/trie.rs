//! The subscription trie: topic filters, level by level, to the subscribers that hold them.
//!
//! Matching a topic name walks only the branches that can match (the literal level, `+` and `#`),
//! so its cost depends on the depth of the topic and the number of matching filters, not on the
//! number of subscriptions.

use std::collections::HashMap;
use std::hash::Hash;

use super::subscribers::Subscribers;

/// The trie's maps: foldhash, seeded per map, instead of SipHash. Matching hashes each level of
/// every routed topic.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A node's children by literal level text.
type Children<K, V> = Map<Box<str>, Node<K, V>>;

/// One level of the trie. A fleet's filters end in a level of their own per device
/// (`detrd/status/request/{id}`), so most nodes are leaves with one subscriber: a node is 48
/// bytes (with the broker's 4-byte keys and 12-byte options), its children map is allocated
/// only for its first child, and one subscriber is held inline. The parent's map holds its children inline, so every byte of
/// a node is paid once per slot of that map, empty slots included.
#[derive(Debug)]
struct Node<K, V> {
    /// Children by literal level text; `None` while there are none.
    children: Option<Box<Children<K, V>>>,
    /// The `+` child.
    plus: Option<Box<Node<K, V>>>,
    /// Subscribers whose filter ends in `#` at this level.
    multi: Subscribers<K, V>,
    /// Subscribers whose filter ends exactly at this level.
    exact: Subscribers<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: None,
            plus: None,
            multi: Subscribers::Empty,
            exact: Subscribers::Empty,
        }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_none()
            && self.plus.is_none()
            && self.multi.is_empty()
            && self.exact.is_empty()
    }
}

/// Maps topic filters to subscribers (`K`, e.g. a client key) with a value each (`V`, e.g. the
/// granted QoS). A subscriber holds at most one value per filter: inserting again replaces it.
///
/// Filters must have been validated with [`validate_filter`](super::validate_filter).
#[derive(Debug)]
pub struct SubscriptionTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

impl<K, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        SubscriptionTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<K: Copy + Eq + Hash, V> SubscriptionTrie<K, V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (filter, subscriber) pairs held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no subscription is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces `key`'s subscription to `filter`. Returns the value it replaced, if any.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                let old = node.multi.insert(key, value);
                if old.is_none() {
                    self.len += 1;
                }
                return old;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else {
                node.children
                    .get_or_insert_with(Box::default)
                    .entry(level.into())
                    .or_default()
            };
        }
        let old = node.exact.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`'s subscription to `filter`, pruning levels left empty. Returns its value.
    pub fn remove(&mut self, filter: &str, key: K) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<K, V>, levels: &[&str], key: K) -> Option<V> {
        let Some((&level, rest)) = levels.split_first() else {
            return node.exact.remove(&key);
        };
        if level == "#" && rest.is_empty() {
            return node.multi.remove(&key);
        }
        if level == "+" {
            let child = node.plus.as_deref_mut()?;
            let removed = Self::remove_at(child, rest, key);
            if child.is_empty() {
                node.plus = None;
            }
            removed
        } else {
            let children = node.children.as_deref_mut()?;
            let child = children.get_mut(level)?;
            let removed = Self::remove_at(child, rest, key);
            if child.is_empty() {
                children.remove(level);
                if children.is_empty() {
                    node.children = None;
                }
            }
            removed
        }
    }

    /// Calls `visit` for every subscription whose filter matches `topic`, a topic name. A subscriber
    /// with several matching filters is visited once per filter. Topics starting with `$` are not
    /// matched by a filter starting with a wildcard `[MQTT-4.7.2-1]`.
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(K, &V)) {
        let dollar = topic.starts_with('$');
        Self::walk(&self.root, topic.split('/'), true, dollar, &mut visit);
    }

    fn walk<'t>(
        node: &Node<K, V>,
        mut levels: std::str::Split<'t, char>,
        at_root: bool,
        dollar: bool,
        visit: &mut impl FnMut(K, &V),
    ) {
        let wildcards_allowed = !(at_root && dollar);
        if wildcards_allowed {
            // `a/#` matches `a` itself as well as everything below it [MQTT-4.7.1-2].
            node.multi.for_each(visit);
        }
        let Some(level) = levels.next() else {
            node.exact.for_each(visit);
            return;
        };
        if let Some(child) = node.children.as_ref().and_then(|c| c.get(level)) {
            Self::walk(child, levels.clone(), false, dollar, visit);
        }
        if wildcards_allowed {
            if let Some(child) = node.plus.as_deref() {
                Self::walk(child, levels, false, dollar, visit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(trie: &SubscriptionTrie<u32, u8>, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |k, _| out.push(k));
        out.sort();
        out
    }

    fn trie_of(filters: &[&str]) -> SubscriptionTrie<u32, u8> {
        let mut trie = SubscriptionTrie::new();
        for (i, f) in filters.iter().enumerate() {
            trie.insert(f, i as u32, 0);
        }
        trie
    }

    #[test]
    fn spec_examples_multi_level() {
        // [MQTT-4.7.1-2] examples: "sport/tennis/player1/#"
        let t = trie_of(&["sport/tennis/player1/#"]);
        assert_eq!(matches(&t, "sport/tennis/player1"), vec![0]);
        assert_eq!(matches(&t, "sport/tennis/player1/ranking"), vec![0]);
        assert_eq!(matches(&t, "sport/tennis/player1/score/wimbledon"), vec![0]);
        assert!(matches(&t, "sport/tennis/player2").is_empty());
        let t = trie_of(&["sport/#"]);
        assert_eq!(matches(&t, "sport"), vec![0]);
        let t = trie_of(&["#"]);
        assert_eq!(matches(&t, "anything/at/all"), vec![0]);
        assert_eq!(matches(&t, "/"), vec![0]);
    }

    #[test]
    fn spec_examples_single_level() {
        let t = trie_of(&["sport/tennis/+"]);
        assert_eq!(matches(&t, "sport/tennis/player1"), vec![0]);
        assert!(matches(&t, "sport/tennis/player1/ranking").is_empty());
        let t = trie_of(&["sport/+"]);
        assert!(matches(&t, "sport").is_empty());
        assert_eq!(matches(&t, "sport/"), vec![0]);
        let t = trie_of(&["+/+"]);
        assert_eq!(matches(&t, "/finance"), vec![0]);
        let t = trie_of(&["/+"]);
        assert_eq!(matches(&t, "/finance"), vec![0]);
        let t = trie_of(&["+"]);
        assert!(matches(&t, "/finance").is_empty());
        let t = trie_of(&["+/é/#"]);
        assert_eq!(matches(&t, "ü/é"), vec![0]);
    }

    #[test]
    fn dollar_topics_not_matched_by_leading_wildcards() {
        // [MQTT-4.7.2-1]
        let t = trie_of(&["#", "+/monitor/Clients", "$SYS/#", "$SYS/monitor/+"]);
        assert_eq!(matches(&t, "$SYS/monitor/Clients"), vec![2, 3]);
        assert_eq!(matches(&t, "SYS/monitor/Clients"), vec![0, 1]);
    }

    #[test]
    fn overlapping_filters_visit_each() {
        let mut t = SubscriptionTrie::new();
        t.insert("a/b", 7u32, 1u8);
        t.insert("a/+", 7, 2);
        t.insert("#", 7, 0);
        let mut seen = Vec::new();
        t.for_each_match("a/b", |k, v| seen.push((k, *v)));
        seen.sort();
        assert_eq!(seen, vec![(7, 0), (7, 1), (7, 2)]);
    }

    #[test]
    fn insert_replaces_and_remove_prunes() {
        let mut t = SubscriptionTrie::new();
        assert_eq!(t.insert("a/+/c", 1u32, 0u8), None);
        assert_eq!(t.insert("a/+/c", 1, 2), Some(0));
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove("a/+/c", 2), None);
        assert_eq!(t.remove("a/+/c", 1), Some(2));
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "empty levels are pruned");
        t.insert("x/#", 3, 1);
        assert_eq!(t.remove("x/#", 3), Some(1));
        assert!(t.root.is_empty());
    }

    /// Inserts and removes at random over a few filters and keys, several subscribers to a
    /// filter among them (the inline one and the map), and checks every match against the
    /// one-off matcher and every removal against what was inserted.
    #[test]
    fn agrees_with_filter_matches_through_inserts_and_removes() {
        use std::collections::BTreeMap;
        let filters = [
            "a/b", "a/+", "a/#", "#", "+/b", "a", "a/b/c", "$SYS/x", "+/+/c",
        ];
        let topics = ["a/b", "a", "a/c", "x/b", "a/b/c", "$SYS/x", "b/b/c"];
        let mut trie = SubscriptionTrie::new();
        let mut model: BTreeMap<(usize, u32), u8> = BTreeMap::new();
        let mut next = crate::topic::test_random(0x9e37_79b9_7f4a_7c15);
        for step in 0..20_000u32 {
            let f = next(filters.len() as u64) as usize;
            let key = next(4) as u32;
            if next(3) == 0 {
                assert_eq!(trie.remove(filters[f], key), model.remove(&(f, key)));
            } else {
                let value = (step % 3) as u8;
                assert_eq!(
                    trie.insert(filters[f], key, value),
                    model.insert((f, key), value)
                );
            }
            assert_eq!(trie.len(), model.len());
            for topic in topics {
                let mut got = Vec::new();
                trie.for_each_match(topic, |k, v| got.push((k, *v)));
                got.sort();
                let mut want: Vec<(u32, u8)> = model
                    .iter()
                    .filter(|((f, _), _)| crate::topic::filter_matches(filters[*f], topic))
                    .map(|((_, k), v)| (*k, *v))
                    .collect();
                want.sort();
                assert_eq!(got, want, "topic {topic} at step {step}");
            }
        }
        for ((f, key), value) in std::mem::take(&mut model) {
            assert_eq!(trie.remove(filters[f], key), Some(value));
        }
        assert!(trie.root.is_empty(), "empty levels are pruned");
    }
}
