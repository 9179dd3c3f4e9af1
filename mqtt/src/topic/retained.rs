//! The retained-message store: one message per topic name, looked up by topic filter through a
//! trie of topic levels (a subscription walks only the branches its filter can match).

use std::collections::HashMap;

#[derive(Debug)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    value: Option<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            value: None,
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.value.is_none()
    }

    fn visit_all(&self, skip_dollar: bool, visit: &mut impl FnMut(&T)) {
        if let Some(v) = &self.value {
            visit(v);
        }
        for (level, child) in &self.children {
            if skip_dollar && level.starts_with('$') {
                continue;
            }
            child.visit_all(false, visit);
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
            node = node.children.entry(level.into()).or_default();
        }
        let old = node.value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the retained message of `topic` `[MQTT-3.3.1-10]`, pruning empty levels.
    pub fn remove(&mut self, topic: &str) -> Option<T> {
        let levels: Vec<&str> = topic.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<T>, levels: &[&str]) -> Option<T> {
        let Some((&level, rest)) = levels.split_first() else {
            return node.value.take();
        };
        let child = node.children.get_mut(level)?;
        let removed = Self::remove_at(child, rest);
        if child.is_empty() {
            node.children.remove(level);
        }
        removed
    }

    /// Calls `visit` for every retained message whose topic matches `filter` (a validated topic
    /// filter). Wildcards in the first level do not match topics starting with `$` `[MQTT-4.7.2-1]`.
    pub fn for_each_match(&self, filter: &str, mut visit: impl FnMut(&T)) {
        let levels: Vec<&str> = filter.split('/').collect();
        Self::walk(&self.root, &levels, true, &mut visit);
    }

    fn walk(node: &Node<T>, levels: &[&str], at_root: bool, visit: &mut impl FnMut(&T)) {
        let Some((&level, rest)) = levels.split_first() else {
            if let Some(v) = &node.value {
                visit(v);
            }
            return;
        };
        match level {
            "#" => node.visit_all(at_root, visit),
            "+" => {
                for (name, child) in &node.children {
                    if at_root && name.starts_with('$') {
                        continue;
                    }
                    Self::walk(child, rest, false, visit);
                }
            }
            literal => {
                if let Some(child) = node.children.get(literal) {
                    Self::walk(child, rest, false, visit);
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
        assert_eq!(s.remove("a/b"), Some("two"));
        assert_eq!(s.remove("a/b"), None);
        assert!(s.is_empty());
        assert!(s.root.is_empty());
    }
}
