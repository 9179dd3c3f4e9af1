//! The children of one level of a topic tree, by the text of the next level, sized to what a
//! fleet's topics look like: most levels have no child or one (`gate/{id}/state`), a few have
//! thousands (`gate/{id}`). No child costs nothing; one child is one small box with its key;
//! from the second on, a hash map. The map goes back to one box when one child is left.

/// The map of a level with two children or more: foldhash, seeded per map, instead of SipHash.
type Map<N> = hashbrown::HashMap<Box<str>, N, foldhash::fast::RandomState>;

/// A level's children: node `N` by the next level's text; `None` while there are none.
#[derive(Debug)]
pub(super) struct Levels<N>(Option<Children<N>>);

/// The children of a level that has some.
#[derive(Debug)]
enum Children<N> {
    /// One child, with its level text.
    One(Box<(Box<str>, N)>),
    /// Two children or more.
    Many(Box<Map<N>>),
}

impl<N> Default for Levels<N> {
    fn default() -> Self {
        Levels(None)
    }
}

impl<N> Levels<N> {
    /// Whether there is no child.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The child at `level`.
    pub(super) fn get(&self, level: &str) -> Option<&N> {
        match self.0.as_ref()? {
            Children::One(one) => (*one.0 == *level).then_some(&one.1),
            Children::Many(map) => map.get(level),
        }
    }

    /// The child at `level`, to change.
    pub(super) fn get_mut(&mut self, level: &str) -> Option<&mut N> {
        match self.0.as_mut()? {
            Children::One(one) => (*one.0 == *level).then_some(&mut one.1),
            Children::Many(map) => map.get_mut(level),
        }
    }

    /// The child at `level`, a default one made first if there is none. The level's text is
    /// copied only when a child is made.
    pub(super) fn get_or_insert(&mut self, level: &str) -> &mut N
    where
        N: Default,
    {
        let another = matches!(&self.0, Some(Children::One(one)) if *one.0 != *level);
        if another {
            // The second child: the one in its box moves into a map.
            if let Some(Children::One(one)) = self.0.take() {
                let (key, node) = *one;
                let mut map = Map::with_capacity_and_hasher(2, Default::default());
                map.insert(key, node);
                self.0 = Some(Children::Many(Box::new(map)));
            }
        }
        let children = self
            .0
            .get_or_insert_with(|| Children::One(Box::new((level.into(), N::default()))));
        match children {
            // Its text is `level`: just made, or it was and nothing moved.
            Children::One(one) => &mut one.1,
            Children::Many(map) => {
                let (_, node) = map
                    .raw_entry_mut()
                    .from_key(level)
                    .or_insert_with(|| (level.into(), N::default()));
                node
            }
        }
    }

    /// Takes the child at `level` out; a map left with one child goes back to one box.
    pub(super) fn remove(&mut self, level: &str) -> Option<N> {
        match self.0.take()? {
            Children::One(one) if *one.0 == *level => Some(one.1),
            other @ Children::One(_) => {
                self.0 = Some(other);
                None
            }
            Children::Many(mut map) => {
                let removed = map.remove(level);
                self.0 = if map.len() <= 1 {
                    let last = map.drain().next();
                    last.map(|(key, node)| Children::One(Box::new((key, node))))
                } else {
                    Some(Children::Many(map))
                };
                removed
            }
        }
    }

    /// Every child with its level text, in no particular order.
    pub(super) fn iter(&self) -> Iter<'_, N> {
        match &self.0 {
            None => Iter::One(None),
            Some(Children::One(one)) => Iter::One(Some((&one.0, &one.1))),
            Some(Children::Many(map)) => Iter::Many(map.iter()),
        }
    }

    /// Moves every child into `into`, leaving none.
    pub(super) fn take_all(&mut self, into: &mut Vec<N>) {
        match self.0.take() {
            None => {}
            Some(Children::One(one)) => into.push(one.1),
            Some(Children::Many(map)) => into.extend(map.into_values()),
        }
    }

    /// How many children there are.
    pub(super) fn len(&self) -> usize {
        match &self.0 {
            None => 0,
            Some(Children::One(_)) => 1,
            Some(Children::Many(map)) => map.len(),
        }
    }

    /// Whether the children are held in a map.
    #[cfg(test)]
    fn is_map(&self) -> bool {
        matches!(self.0, Some(Children::Many(_)))
    }
}

/// The children of [`Levels::iter`].
pub(super) enum Iter<'a, N> {
    One(Option<(&'a str, &'a N)>),
    Many(hashbrown::hash_map::Iter<'a, Box<str>, N>),
}

impl<'a, N> Iterator for Iter<'a, N> {
    type Item = (&'a str, &'a N);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::One(one) => one.take(),
            Iter::Many(iter) => iter.next().map(|(key, node)| (&**key, node)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_child_inline_a_map_from_the_second_and_back() {
        let mut levels: Levels<u32> = Levels::default();
        assert!(levels.is_empty());
        *levels.get_or_insert("a") = 1;
        assert!(!levels.is_map());
        assert_eq!(levels.get("a"), Some(&1));
        assert_eq!(levels.get("b"), None);
        *levels.get_or_insert("b") = 2;
        assert!(levels.is_map());
        assert_eq!(levels.len(), 2);
        assert_eq!(*levels.get_or_insert("a"), 1, "an existing child is kept");
        assert_eq!(levels.remove("a"), Some(1));
        assert!(!levels.is_map(), "back to one box");
        assert_eq!(levels.len(), 1);
        assert_eq!(levels.get("b"), Some(&2));
        assert_eq!(levels.remove("a"), None);
        assert_eq!(levels.remove("b"), Some(2));
        assert!(levels.is_empty());
    }

    #[test]
    fn iterates_every_child_once() {
        let mut levels: Levels<u32> = Levels::default();
        assert_eq!(levels.iter().count(), 0);
        for (i, level) in ["x", "y", "z"].into_iter().enumerate() {
            *levels.get_or_insert(level) = i as u32;
        }
        let mut seen: Vec<(&str, u32)> = levels.iter().map(|(k, v)| (k, *v)).collect();
        seen.sort();
        assert_eq!(seen, vec![("x", 0), ("y", 1), ("z", 2)]);
        if let Some(y) = levels.get_mut("y") {
            *y = 7;
        }
        assert_eq!(levels.get("y"), Some(&7));
    }
}
