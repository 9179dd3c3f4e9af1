//! The subscription trie: topic filters, level by level, to the subscribers that hold them.
//!
//! Matching a topic name walks only the branches that can match (the literal level, `+` and `#`),
//! so its cost depends on the depth of the topic and the number of matching filters, not on the
//! number of subscriptions. Nothing recurses over levels: a filter or topic may have 32,768 of
//! them, and a frame per level would overflow a thread's stack.

use std::collections::HashMap;
use std::hash::Hash;

use smallvec::SmallVec;

use super::subscribers::Subscribers;

/// The trie's maps: foldhash, seeded per map, instead of SipHash. Matching hashes each level of
/// every routed topic.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A node's children by literal level text.
type Children<K, V> = Map<Box<str>, Node<K, V>>;

/// A branch of a topic's match still to walk: a node, and the part of the topic below it
/// (`None` once every level is matched).
type Pending<'t, 'n, K, V> = (&'n Node<K, V>, Option<&'t str>);

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

    /// Whether the node holds nothing but one child (it goes when that child goes).
    fn holds_one_child_only(&self) -> bool {
        let children = self.children.as_ref().map_or(0, |c| c.len());
        self.multi.is_empty()
            && self.exact.is_empty()
            && children + self.plus.is_some() as usize == 1
    }

    /// Moves every child into `into`, leaving none.
    fn take_children(&mut self, into: &mut Vec<Node<K, V>>) {
        if let Some(children) = self.children.take() {
            into.extend(children.into_values());
        }
        if let Some(plus) = self.plus.take() {
            into.push(*plus);
        }
    }
}

impl<K, V> Drop for Node<K, V> {
    /// Frees the levels below one by one: dropping a deep filter's chain of levels recursively
    /// would overflow the stack.
    fn drop(&mut self) {
        if self.children.is_none() && self.plus.is_none() {
            return;
        }
        let mut below = Vec::new();
        self.take_children(&mut below);
        while let Some(mut node) = below.pop() {
            node.take_children(&mut below);
        }
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
        let (path, multi) = match levels.split_last() {
            Some((&"#", above)) => (above, true),
            _ => (&levels[..], false),
        };
        let take = |node: &mut Node<K, V>| {
            if multi {
                node.multi.remove(&key)
            } else {
                node.exact.remove(&key)
            }
        };
        if path.is_empty() {
            let removed = take(&mut self.root)?;
            self.len -= 1;
            return Some(removed);
        }
        // If the filter's level is left empty, it goes with the levels above it that hold
        // nothing but the way to it: from the shallowest level below the root where a run of
        // levels holding one child only starts, found first without changing anything.
        let mut node = &self.root;
        let mut run_from = None;
        for (depth, &level) in path.iter().enumerate() {
            if depth > 0 && node.holds_one_child_only() {
                run_from.get_or_insert(depth);
            } else {
                run_from = None;
            }
            node = Self::child(node, level)?;
        }
        let cut = run_from.unwrap_or(path.len());
        let parent = Self::descend_mut(&mut self.root, &path[..cut - 1])?;
        let (removed, emptied) = {
            let top = Self::child_mut(&mut *parent, path[cut - 1])?;
            let node = Self::descend_mut(top, &path[cut..])?;
            (take(node)?, node.is_empty())
        };
        self.len -= 1;
        if emptied {
            match path[cut - 1] {
                "+" => parent.plus = None,
                level => {
                    if let Some(children) = parent.children.as_deref_mut() {
                        children.remove(level);
                        if children.is_empty() {
                            parent.children = None;
                        }
                    }
                }
            }
        }
        Some(removed)
    }

    /// The child of `node` at filter level `level`.
    fn child<'n>(node: &'n Node<K, V>, level: &str) -> Option<&'n Node<K, V>> {
        match level {
            "+" => node.plus.as_deref(),
            _ => node.children.as_ref()?.get(level),
        }
    }

    /// The child of `node` at filter level `level`, to change.
    fn child_mut<'n>(node: &'n mut Node<K, V>, level: &str) -> Option<&'n mut Node<K, V>> {
        match level {
            "+" => node.plus.as_deref_mut(),
            _ => node.children.as_deref_mut()?.get_mut(level),
        }
    }

    /// The node at filter levels `levels` below `node`, if there is one.
    fn descend_mut<'n>(
        mut node: &'n mut Node<K, V>,
        levels: &[&str],
    ) -> Option<&'n mut Node<K, V>> {
        for &level in levels {
            node = Self::child_mut(node, level)?;
        }
        Some(node)
    }

    /// Calls `visit` for every subscription whose filter matches `topic`, a topic name. A subscriber
    /// with several matching filters is visited once per filter. Topics starting with `$` are not
    /// matched by a filter starting with a wildcard `[MQTT-4.7.2-1]`.
    ///
    /// Depth first, the literal level's branch before the `+` branch: each entry of `pending` is
    /// a node and the part of the topic below it (`None` once every level is matched).
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(K, &V)) {
        let dollar = topic.starts_with('$');
        let mut pending: SmallVec<[Pending<'_, '_, K, V>; 16]> = SmallVec::new();
        pending.push((&self.root, Some(topic)));
        let mut at_root = true;
        while let Some((node, rest)) = pending.pop() {
            let wildcards_allowed = !(at_root && dollar);
            at_root = false;
            if wildcards_allowed {
                // `a/#` matches `a` itself as well as everything below it [MQTT-4.7.1-2].
                node.multi.for_each(&mut visit);
            }
            let Some(rest) = rest else {
                node.exact.for_each(&mut visit);
                continue;
            };
            let (level, below) = match rest.split_once('/') {
                Some((level, below)) => (level, Some(below)),
                None => (rest, None),
            };
            if wildcards_allowed {
                if let Some(child) = node.plus.as_deref() {
                    pending.push((child, below));
                }
            }
            if let Some(child) = node.children.as_ref().and_then(|c| c.get(level)) {
                pending.push((child, below));
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

    /// Filters of 32,768 levels (the 65,535 bytes a filter may take) are held, matched, removed
    /// and dropped on a thread with a 256 KiB stack: nothing recurses per level (a topic that
    /// deep overflowed the 2 MiB stack of a broker's worker before 2026-12-05).
    #[test]
    fn filters_of_the_most_levels_need_no_stack_per_level() {
        crate::topic::on_a_small_stack(|| {
            let deep = vec!["a"; 32_768].join("/");
            assert_eq!(deep.len(), 65_535);
            let all_plus = vec!["+"; 32_768].join("/");
            let most_then_hash = format!("{}/#", &deep[..deep.len() - 2]);
            let mut t: SubscriptionTrie<u32, u8> = SubscriptionTrie::new();
            t.insert(&deep, 1, 0);
            t.insert(&all_plus, 2, 0);
            t.insert(&most_then_hash, 3, 0);
            t.insert("a/#", 4, 0);
            assert_eq!(matches(&t, &deep), vec![1, 2, 3, 4]);
            assert_eq!(matches(&t, &format!("{deep}/a")), vec![3, 4]);
            assert_eq!(t.remove(&all_plus, 2), Some(0));
            assert_eq!(t.remove(&deep, 1), Some(0));
            assert_eq!(matches(&t, &deep), vec![3, 4]);
            assert_eq!(t.remove(&most_then_hash, 3), Some(0));
            assert_eq!(t.remove("a/#", 4), Some(0));
            assert!(t.root.is_empty(), "empty levels are pruned");
            t.insert(&deep, 1, 0);
            t.insert(&all_plus, 2, 0);
            drop(t);
        });
    }
}
