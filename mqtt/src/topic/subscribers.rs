//! The subscribers of one filter in the subscription trie. Most filters of a device fleet have
//! one subscriber (`detrd/status/request/{id}`), so one is held inline and a map is allocated
//! only when a second subscriber arrives.

use std::collections::HashMap;
use std::hash::Hash;

/// The map a filter's subscribers move to from the second one on.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Subscribers (`K`) of one filter, each with its value (`V`).
#[derive(Debug, Default)]
pub(super) enum Subscribers<K, V> {
    /// Nobody.
    #[default]
    Empty,
    /// One subscriber, held inline.
    One(K, V),
    /// Two or more (boxed: every trie level pays for this enum's width).
    Many(Box<Map<K, V>>),
}

impl<K, V> Subscribers<K, V> {
    /// True when nobody subscribes.
    pub(super) fn is_empty(&self) -> bool {
        matches!(self, Subscribers::Empty)
    }
}

impl<K: Copy + Eq + Hash, V> Subscribers<K, V> {
    /// Adds `key` with `value`, or replaces its value. Returns the value it replaced, if any.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            Subscribers::Empty => {
                *self = Subscribers::One(key, value);
                None
            }
            Subscribers::One(held, old) if *held == key => Some(std::mem::replace(old, value)),
            Subscribers::One(..) => {
                if let Subscribers::One(held, old) = std::mem::take(self) {
                    let mut map = Map::default();
                    map.insert(held, old);
                    map.insert(key, value);
                    *self = Subscribers::Many(Box::new(map));
                }
                None
            }
            Subscribers::Many(map) => map.insert(key, value),
        }
    }

    /// Removes `key`. Returns its value, if it was there. A map left with one subscriber goes
    /// back to holding it inline.
    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        match self {
            Subscribers::Empty => None,
            Subscribers::One(held, _) if held == key => match std::mem::take(self) {
                Subscribers::One(_, value) => Some(value),
                _ => None,
            },
            Subscribers::One(..) => None,
            Subscribers::Many(map) => {
                let removed = map.remove(key);
                if map.len() <= 1 {
                    let last = map.drain().next();
                    *self = match last {
                        Some((held, value)) => Subscribers::One(held, value),
                        None => Subscribers::Empty,
                    };
                }
                removed
            }
        }
    }

    /// Calls `visit` for each subscriber.
    pub(super) fn for_each(&self, visit: &mut impl FnMut(K, &V)) {
        match self {
            Subscribers::Empty => {}
            Subscribers::One(key, value) => visit(*key, value),
            Subscribers::Many(map) => {
                for (key, value) in map.iter() {
                    visit(*key, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(set: &Subscribers<u32, u8>) -> Vec<(u32, u8)> {
        let mut out = Vec::new();
        set.for_each(&mut |k, v| out.push((k, *v)));
        out.sort();
        out
    }

    #[test]
    fn grows_to_a_map_and_back_inline() {
        let mut set = Subscribers::default();
        assert!(set.is_empty());
        assert_eq!(set.insert(1u32, 0u8), None);
        assert!(matches!(set, Subscribers::One(1, 0)));
        assert_eq!(set.insert(1, 2), Some(0), "same key replaces");
        assert_eq!(set.insert(2, 1), None);
        assert_eq!(set.insert(3, 1), None);
        assert!(matches!(set, Subscribers::Many(_)));
        assert_eq!(keys(&set), vec![(1, 2), (2, 1), (3, 1)]);
        assert_eq!(set.remove(&9), None);
        assert_eq!(set.remove(&1), Some(2));
        assert!(matches!(set, Subscribers::Many(_)));
        assert_eq!(set.remove(&3), Some(1));
        assert!(
            matches!(set, Subscribers::One(2, 1)),
            "one left: inline again"
        );
        assert_eq!(set.remove(&3), None);
        assert_eq!(set.remove(&2), Some(1));
        assert!(set.is_empty());
        assert_eq!(keys(&set), vec![]);
    }
}
