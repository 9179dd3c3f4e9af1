//! Which topic subjects a node subscribes to on NATS: those of the filters its clients hold.
//! Two filters may need the same subject (`a/#` and `a` both need `<name>.m.a`), so each
//! subject counts the filters that need it and is unsubscribed with the last.

use std::collections::{BTreeMap, BTreeSet};

use super::liveness::filter_hash;
use super::subjects::Subjects;
use crate::topic::parse_shared;

/// What the NATS connection must do after a change of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterestChange {
    /// Subscribe `sid` to this subject.
    Subscribe(u64, String),
    /// End subscription `sid`.
    Unsubscribe(u64),
    /// This node now holds the filter: the other nodes are told.
    Holds(String),
    /// This node no longer holds the filter.
    Drops(String),
}

/// The filters of this node's clients and the NATS subscriptions they need.
#[derive(Debug)]
pub struct Interest {
    /// By filter, as the clients hold it (a shared group's with its `$share/{group}/`, so that
    /// the other nodes know the group is here): its subjects.
    filters: BTreeMap<String, Vec<String>>,
    /// By subject: its subscription id, and how many filters need it.
    subjects: BTreeMap<String, (u64, usize)>,
    next_sid: u64,
    /// The [`digest`](super::liveness::digest) of `filters`' keys, kept as they change.
    digest: u64,
}

impl Interest {
    /// No filters yet; subscription ids are taken from `first_sid` on.
    pub fn new(first_sid: u64) -> Self {
        Interest {
            filters: BTreeMap::new(),
            subjects: BTreeMap::new(),
            next_sid: first_sid,
            digest: 0,
        }
    }

    /// How many distinct filters are held.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// The digest of the filters held (`liveness::digest`), without a walk.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Every filter held.
    pub fn filters(&self) -> impl Iterator<Item = &String> {
        self.filters.keys()
    }

    /// The filters held after `after` (all of them for `None`), in order.
    pub fn filters_after(&self, after: Option<&str>) -> impl Iterator<Item = &String> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.filters
            .range::<str, _>((from, Bound::Unbounded))
            .map(|(filter, _)| filter)
    }

    /// The shared groups' filters held (`$share/{group}/{filter}`), without looking at the
    /// others.
    pub fn shared_filters(&self) -> impl Iterator<Item = &String> {
        use std::ops::Bound;
        self.filters
            .range::<str, _>((Bound::Included("$share/"), Bound::Unbounded))
            .map(|(filter, _)| filter)
            .take_while(|filter| filter.starts_with("$share/"))
    }

    /// A client here subscribed to `filter`.
    pub fn add(&mut self, filter: &str, subjects: &Subjects) -> Vec<InterestChange> {
        let plain = plain_filter(filter);
        if plain.starts_with('$') || self.filters.contains_key(filter) {
            return Vec::new(); // `$SYS` and the like stay on each node
        }
        let wanted = subjects.for_filter(plain);
        let mut changes = vec![InterestChange::Holds(filter.to_string())];
        for subject in &wanted {
            let (_, filters) = self.subjects.entry(subject.clone()).or_insert_with(|| {
                let sid = self.next_sid;
                self.next_sid += 1;
                changes.push(InterestChange::Subscribe(sid, subject.clone()));
                (sid, 0)
            });
            *filters += 1;
        }
        self.filters.insert(filter.to_string(), wanted);
        self.digest = self.digest.wrapping_add(filter_hash(filter));
        changes
    }

    /// No client here holds `filter` any more.
    pub fn remove(&mut self, filter: &str) -> Vec<InterestChange> {
        let Some(subjects) = self.filters.remove(filter) else {
            return Vec::new();
        };
        self.digest = self.digest.wrapping_sub(filter_hash(filter));
        let mut changes = vec![InterestChange::Drops(filter.to_string())];
        for subject in subjects {
            if let Some((sid, filters)) = self.subjects.get_mut(&subject) {
                *filters -= 1;
                if *filters == 0 {
                    changes.push(InterestChange::Unsubscribe(*sid));
                    self.subjects.remove(&subject);
                }
            }
        }
        changes
    }

    /// Makes the held filters exactly `current` (the Registry's list, shared prefixes and
    /// all).
    pub fn reconcile(
        &mut self,
        current: &BTreeSet<String>,
        subjects: &Subjects,
    ) -> Vec<InterestChange> {
        let wanted: BTreeSet<&str> = current.iter().map(String::as_str).collect();
        let stale: Vec<String> = self
            .filters
            .keys()
            .filter(|f| !wanted.contains(f.as_str()))
            .cloned()
            .collect();
        let mut changes = Vec::new();
        for filter in &stale {
            changes.extend(self.remove(filter));
        }
        for filter in wanted {
            changes.extend(self.add(filter, subjects));
        }
        changes
    }
}

/// The filter a subscription matches topics with: `$share/{group}/` taken off.
pub fn plain_filter(filter: &str) -> &str {
    match parse_shared(filter) {
        Some(Ok(shared)) => shared.filter,
        _ => filter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(filters: &[&str]) -> BTreeSet<String> {
        filters.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn a_subject_two_filters_need_goes_with_the_last_of_them() {
        let subjects = Subjects::new("sb", "n1");
        let mut interest = Interest::new(100);
        assert_eq!(
            interest.add("a/#", &subjects),
            [
                InterestChange::Holds("a/#".into()),
                InterestChange::Subscribe(100, "sb.m.a.>".into()),
                InterestChange::Subscribe(101, "sb.m.a".into()),
            ]
        );
        // `a` needs a subject already held; a shared group needs its plain filter's subjects,
        // and is held (and announced) as the group.
        assert_eq!(
            interest.add("a", &subjects),
            [InterestChange::Holds("a".into())]
        );
        assert_eq!(
            interest.add("$share/g/a/#", &subjects),
            [InterestChange::Holds("$share/g/a/#".into())]
        );
        assert_eq!(interest.add("$SYS/#", &subjects), []);
        assert_eq!(interest.add("$share/g/$SYS/#", &subjects), []);
        assert_eq!(interest.len(), 3);
        assert_eq!(
            interest.digest(),
            super::super::liveness::digest(interest.filters())
        );
        assert_eq!(interest.shared_filters().count(), 1);
        assert_eq!(
            interest.reconcile(&set(&["a"]), &subjects),
            [
                InterestChange::Drops("$share/g/a/#".into()),
                InterestChange::Drops("a/#".into()),
                InterestChange::Unsubscribe(100)
            ]
        );
        assert_eq!(
            interest.reconcile(&set(&[]), &subjects),
            [
                InterestChange::Drops("a".into()),
                InterestChange::Unsubscribe(101)
            ]
        );
        assert_eq!(interest.len(), 0);
        assert_eq!(interest.digest(), 0);
        assert_eq!(interest.shared_filters().count(), 0);
        assert_eq!(
            interest.reconcile(&set(&["$share/g/b/+"]), &subjects),
            [
                InterestChange::Holds("$share/g/b/+".into()),
                InterestChange::Subscribe(102, "sb.m.b.*".into())
            ]
        );
    }
}
