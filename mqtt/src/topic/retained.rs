//! The retained-message store: one message per topic name, looked up by topic filter through a
//! trie of topic levels (a subscription walks only the branches its filter can match).
//!
//! Nothing here recurses over the levels of a topic: a topic name may have 32,768 levels (65,535
//! bytes of `a/a/...`), and a walk, removal or drop a frame per level would overflow a thread's
//! stack, so each keeps the levels still to see in a list of its own.
//!
//! A level's children are [`Levels`]: a million retained messages on `site/{n}/gate/{id}/state`
//! make a million levels with one child each, and one such child costs one small box, not a
//! hash map (which took 438 of the bytes each such message cost; `docs/benchmarks.md`, series
//! 7 of the recovery time).

use super::levels::Levels;

#[derive(Debug)]
struct Node<T> {
    children: Levels<Node<T>>,
    value: Option<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: Levels::default(),
            value: None,
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.value.is_none()
    }

    /// Whether the node holds nothing but one child (it goes when that child goes).
    fn holds_one_child_only(&self) -> bool {
        self.value.is_none() && self.children.len() == 1
    }

    /// Every value at this node and below it; with `skip_dollar`, not below children whose level
    /// starts with `$`.
    fn visit_all(&self, skip_dollar: bool, visit: &mut impl FnMut(&T)) {
        let mut pending = vec![(self, skip_dollar)];
        while let Some((node, skip_dollar)) = pending.pop() {
            if let Some(v) = &node.value {
                visit(v);
            }
            for (level, child) in node.children.iter() {
                if !(skip_dollar && level.starts_with('$')) {
                    pending.push((child, false));
                }
            }
        }
    }
}

impl<T> Drop for Node<T> {
    /// Frees the levels below one by one: dropping a deep topic's chain of levels recursively
    /// would overflow the stack.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut below = Vec::new();
        self.children.take_all(&mut below);
        while let Some(mut node) = below.pop() {
            node.children.take_all(&mut below);
        }
    }
}

/// Retained messages by topic name.
#[derive(Debug)]
pub struct RetainedStore<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for RetainedStore<T> {
    fn default() -> Self {
        RetainedStore {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T> RetainedStore<T> {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` as the retained message of `topic`, replacing any earlier one
    /// `[MQTT-3.3.1-5]`. Returns the replaced message.
    pub fn insert(&mut self, topic: &str, value: T) -> Option<T> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.get_or_insert(level);
        }
        let old = node.value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Whether `topic` has a retained message.
    pub fn contains(&self, topic: &str) -> bool {
        let mut node = &self.root;
        for level in topic.split('/') {
            match node.children.get(level) {
                Some(child) => node = child,
                None => return false,
            }
        }
        node.value.is_some()
    }

    /// Removes the retained message of `topic` `[MQTT-3.3.1-10]`, pruning empty levels.
    pub fn remove(&mut self, topic: &str) -> Option<T> {
        let levels: Vec<&str> = topic.split('/').collect();
        // If the topic's level is left empty, it goes with the levels above it that hold
        // nothing but the way to it: from the shallowest level below the root where a run of
        // levels holding one child only starts, found first without changing anything.
        let mut node = &self.root;
        let mut run_from = None;
        for (depth, level) in levels.iter().enumerate() {
            if depth > 0 && node.holds_one_child_only() {
                run_from.get_or_insert(depth);
            } else {
                run_from = None;
            }
            node = node.children.get(level)?;
        }
        let cut = run_from.unwrap_or(levels.len());
        let parent = Self::descend_mut(&mut self.root, &levels[..cut - 1])?;
        let (removed, emptied) = {
            let top = parent.children.get_mut(levels[cut - 1])?;
            let node = Self::descend_mut(top, &levels[cut..])?;
            (node.value.take()?, node.is_empty())
        };
        self.len -= 1;
        if emptied {
            parent.children.remove(levels[cut - 1]);
        }
        Some(removed)
    }

    /// The node at `levels` below `node`, if there is one.
    fn descend_mut<'n>(mut node: &'n mut Node<T>, levels: &[&str]) -> Option<&'n mut Node<T>> {
        for level in levels {
            node = node.children.get_mut(level)?;
        }
        Some(node)
    }

    /// Calls `visit` for every retained message whose topic matches `filter` (a validated topic
    /// filter). Wildcards in the first level do not match topics starting with `$` `[MQTT-4.7.2-1]`.
    pub fn for_each_match(&self, filter: &str, mut visit: impl FnMut(&T)) {
        let levels: Vec<&str> = filter.split('/').collect();
        // Each entry: a node, and how many of the filter's levels it matched.
        let mut pending = vec![(&self.root, 0)];
        while let Some((node, matched)) = pending.pop() {
            let at_root = matched == 0;
            let Some(&level) = levels.get(matched) else {
                if let Some(v) = &node.value {
                    visit(v);
                }
                continue;
            };
            match level {
                "#" => node.visit_all(at_root, &mut visit),
                "+" => {
                    for (name, child) in node.children.iter() {
                        if !(at_root && name.starts_with('$')) {
                            pending.push((child, matched + 1));
                        }
                    }
                }
                literal => {
                    if let Some(child) = node.children.get(literal) {
                        pending.push((child, matched + 1));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(store: &RetainedStore<&'static str>, filter: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        store.for_each_match(filter, |v| out.push(*v));
        out.sort();
        out
    }

    #[test]
    fn wildcard_lookup() {
        let mut s = RetainedStore::new();
        for t in ["a", "a/b", "a/b/c", "a/x/c", "$SYS/load", "/lead"] {
            s.insert(t, t);
        }
        assert_eq!(found(&s, "a/#"), vec!["a", "a/b", "a/b/c", "a/x/c"]);
        assert_eq!(found(&s, "a/+/c"), vec!["a/b/c", "a/x/c"]);
        assert_eq!(found(&s, "a/+"), vec!["a/b"]);
        assert_eq!(found(&s, "#"), vec!["/lead", "a", "a/b", "a/b/c", "a/x/c"]);
        assert_eq!(found(&s, "+/load"), Vec::<&str>::new());
        assert_eq!(found(&s, "$SYS/#"), vec!["$SYS/load"]);
        assert_eq!(found(&s, "+/lead"), vec!["/lead"]);
    }

    #[test]
    fn replace_and_remove() {
        let mut s = RetainedStore::new();
        assert_eq!(s.insert("a/b", "one"), None);
        assert_eq!(s.insert("a/b", "two"), Some("one"));
        assert_eq!(s.len(), 1);
        assert!(s.contains("a/b"));
        assert!(!s.contains("a"), "a level on the way is not a topic");
        assert!(!s.contains("a/b/c"));
        assert_eq!(s.remove("a/b"), Some("two"));
        assert_eq!(s.remove("a/b"), None);
        assert!(!s.contains("a/b"));
        assert!(s.is_empty());
        assert!(s.root.is_empty());
    }

    /// Inserts and removes at random over topics whose levels have one child, several, or
    /// none (so levels go from none to one box, to a map and back), and checks every filter's
    /// matches against the one-off matcher and every removal against what was stored.
    #[test]
    fn agrees_with_filter_matches_through_inserts_and_removes() {
        use std::collections::BTreeMap;
        let topics = [
            "a", "a/b", "a/b/c", "a/x/c", "a/y", "b/b/c", "$SYS/x", "/lead", "a//c",
        ];
        let filters = [
            "#", "a/#", "a/+", "+/b/c", "a/+/c", "+/+/+", "$SYS/#", "+/x", "a/b/c", "+", "+/+",
        ];
        let mut store = RetainedStore::new();
        let mut model: BTreeMap<usize, u32> = BTreeMap::new();
        let mut next = crate::topic::test_random(0x2545_f491_4f6c_dd1d);
        for step in 0..20_000u32 {
            let t = next(topics.len() as u64) as usize;
            if next(3) == 0 {
                assert_eq!(store.remove(topics[t]), model.remove(&t));
            } else {
                assert_eq!(store.insert(topics[t], step), model.insert(t, step));
            }
            assert_eq!(store.len(), model.len());
            for filter in filters {
                let mut got = Vec::new();
                store.for_each_match(filter, |v| got.push(*v));
                got.sort();
                let mut want: Vec<u32> = model
                    .iter()
                    .filter(|(t, _)| crate::topic::filter_matches(filter, topics[**t]))
                    .map(|(_, v)| *v)
                    .collect();
                want.sort();
                assert_eq!(got, want, "filter {filter} at step {step}");
            }
        }
        for (t, value) in std::mem::take(&mut model) {
            assert_eq!(store.remove(topics[t]), Some(value));
        }
        assert!(store.root.is_empty(), "empty levels are pruned");
    }

    /// A topic of 32,768 levels (the 65,535 bytes a topic may take) is stored, matched, removed
    /// and dropped on a thread with a 256 KiB stack: nothing recurses per level (it overflowed
    /// the 2 MiB stack of a broker's worker before 2026-12-05).
    #[test]
    fn a_topic_of_the_most_levels_needs_no_stack_per_level() {
        crate::topic::on_a_small_stack(|| {
            let deep = vec!["a"; 32_768].join("/");
            assert_eq!(deep.len(), 65_535);
            let beside = format!("{}/b", &deep[..deep.len() - 2]);
            let all_plus = vec!["+"; 32_768].join("/");
            let mut s = RetainedStore::new();
            s.insert(&deep, "deep");
            s.insert(&beside, "beside");
            s.insert("a", "top");
            assert_eq!(found(&s, "#"), vec!["beside", "deep", "top"]);
            assert_eq!(found(&s, &all_plus), vec!["beside", "deep"]);
            assert_eq!(found(&s, &deep), vec!["deep"]);
            assert_eq!(s.remove(&deep), Some("deep"));
            assert_eq!(found(&s, "#"), vec!["beside", "top"]);
            assert_eq!(s.remove(&beside), Some("beside"));
            assert_eq!(found(&s, "a/#"), vec!["top"]);
            assert!(
                s.root
                    .children
                    .get("a")
                    .is_some_and(|a| a.children.is_empty()),
                "the levels below `a` are pruned"
            );
            s.insert(&deep, "again");
            drop(s);
        });
    }
}
