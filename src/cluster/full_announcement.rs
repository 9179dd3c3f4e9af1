//! All of this node's filters announced again (when it joins, and to a node that says Hello),
//! a slice per turn of the link instead of all at once: a node holding a fleet's 100,000
//! filters would otherwise copy and encode them all in one turn of the thread its clients'
//! Sessions share.
//!
//! The slices walk the filters in order from a cursor over the live set, so a filter added
//! or dropped meanwhile needs nothing more: its own announcement (sent as it changes, in order
//! with the slices) says so, and the walk finds the set as it is when it gets there.

use super::interest::Interest;

/// Where an announcement of all this node's filters stands.
#[derive(Debug)]
pub struct FullAnnouncement {
    /// The last filter announced so far; `None` before the first slice.
    after: Option<String>,
    /// An InterestEnd follows the last slice: this node (re)joined, and the others renew
    /// their picture of it (a filter not announced again goes).
    ends: bool,
    /// No slice given yet: the first is announced even when empty, so that the others know
    /// of this node.
    first: bool,
    /// The walk has reached the last filter.
    done: bool,
}

impl FullAnnouncement {
    /// From the first filter; with `ends`, InterestEnd after the last.
    pub fn new(ends: bool) -> Self {
        FullAnnouncement {
            after: None,
            ends,
            first: true,
            done: false,
        }
    }

    /// From the first filter again (another node said Hello, and needs all of them from now
    /// on); an InterestEnd owed stays owed.
    pub fn restart(&mut self, ends: bool) {
        *self = FullAnnouncement::new(self.ends || ends);
    }

    /// The next filters to announce, about `bytes` of them (each counted with 4 bytes of
    /// framing, as the envelope carries it), after the last one given; `None` when there is
    /// nothing to announce.
    pub fn next_slice(&mut self, interest: &Interest, bytes: usize) -> Option<Vec<String>> {
        let (slice, done) = take_slice(interest.filters_after(self.after.as_deref()), bytes);
        self.done = done;
        if let Some(last) = slice.last() {
            self.after = Some(last.clone());
        }
        let announce = !slice.is_empty() || self.first;
        self.first = false;
        announce.then_some(slice)
    }

    /// Every filter has been given.
    pub fn done(&self) -> bool {
        self.done
    }

    /// An InterestEnd follows the last slice.
    pub fn ends(&self) -> bool {
        self.ends
    }
}

/// Takes filters from `filters` until they make `bytes` (framing counted); answers them and
/// whether `filters` ran out.
fn take_slice<'a>(
    mut filters: impl Iterator<Item = &'a String>,
    bytes: usize,
) -> (Vec<String>, bool) {
    let (mut slice, mut size) = (Vec::new(), 0);
    while size < bytes {
        let Some(filter) = filters.next() else {
            return (slice, true);
        };
        size += filter.len() + 4;
        slice.push(filter.clone());
    }
    (slice, false)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::cluster::interest::InterestChange;
    use crate::cluster::subjects::Subjects;

    /// What the other nodes picture of this one's filters as they take the announcements
    /// (added, removed) in order.
    fn picture(announcements: &[(Vec<String>, Vec<String>)]) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        for (added, removed) in announcements {
            seen.extend(added.iter().cloned());
            for filter in removed {
                seen.remove(filter);
            }
        }
        seen
    }

    /// What the link sends for a change of interest: the filters added and removed.
    fn announced(changes: Vec<InterestChange>) -> (Vec<String>, Vec<String>) {
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for change in changes {
            match change {
                InterestChange::Holds(filter) => added.push(filter),
                InterestChange::Drops(filter) => removed.push(filter),
                _ => {}
            }
        }
        (added, removed)
    }

    #[test]
    fn slices_walk_the_filters_once_in_order_and_the_first_goes_even_empty() {
        let subjects = Subjects::new("sb", "n1");
        let mut interest = Interest::new(100);
        let mut empty = FullAnnouncement::new(true);
        assert_eq!(empty.next_slice(&interest, 64), Some(Vec::new()));
        assert!(empty.done() && empty.ends());

        for i in 0..100 {
            interest.add(&format!("dev/{i:03}/cmd"), &subjects);
        }
        // 15 bytes a filter with its framing: 5 filters reach 64 bytes. The walk learns it
        // has run out one call after the last slice, which announces nothing.
        let mut all = FullAnnouncement::new(false);
        let mut slices = Vec::new();
        while !all.done() {
            slices.extend(all.next_slice(&interest, 64));
        }
        assert_eq!(slices.len(), 20);
        assert!(slices.iter().all(|slice| slice.len() == 5));
        let walked: Vec<String> = slices.concat();
        let held: Vec<String> = interest.filters().cloned().collect();
        assert_eq!(walked, held);
        assert!(!all.ends());
        // Walked to the end: nothing more, and nothing empty sent again.
        assert_eq!(all.next_slice(&interest, 64), None);
    }

    #[test]
    fn filters_that_change_during_the_walk_end_up_as_they_are() {
        let subjects = Subjects::new("sb", "n1");
        let mut interest = Interest::new(100);
        for i in (0..200).step_by(2) {
            interest.add(&format!("dev/{i:03}"), &subjects);
        }
        // The other node's picture before: stale (it missed changes while cut off).
        let mut sent = vec![(vec!["dev/999".to_string()], Vec::new())];
        let mut walk = FullAnnouncement::new(true);
        let mut round = 0;
        while !walk.done() {
            if let Some(slice) = walk.next_slice(&interest, 40) {
                sent.push((slice, Vec::new()));
            }
            // Between slices, clients come and go on both sides of the cursor; each change
            // is announced as it happens, in order with the slices.
            round += 1;
            let behind = format!("dev/{:03}", (round * 7) % 200);
            let ahead = format!("dev/{:03}", 199 - (round * 5) % 200);
            for filter in [behind, ahead] {
                let change = if round % 3 == 0 {
                    interest.remove(&filter)
                } else {
                    interest.add(&filter, &subjects)
                };
                sent.push(announced(change));
            }
        }
        assert!(round > 10, "several slices: {round}");
        // What InterestEnd makes of the renewal: only what was announced since the Hello.
        let renewed = picture(&sent[1..]);
        let held: BTreeSet<String> = interest.filters().cloned().collect();
        assert_eq!(renewed, held);
    }

    #[test]
    fn a_hello_during_the_walk_starts_it_again_and_keeps_the_end_owed() {
        let subjects = Subjects::new("sb", "n1");
        let mut interest = Interest::new(100);
        for i in 0..30 {
            interest.add(&format!("f/{i:02}"), &subjects);
        }
        let mut walk = FullAnnouncement::new(true);
        let first = walk.next_slice(&interest, 20).expect("a slice");
        assert_eq!(first, ["f/00", "f/01", "f/02"]);
        walk.restart(false);
        assert!(walk.ends(), "the join's InterestEnd is still owed");
        let mut again = Vec::new();
        while !walk.done() {
            again.extend(walk.next_slice(&interest, 20).unwrap_or_default());
        }
        assert_eq!(again.len(), 30, "all of them for the node that said Hello");
        let mut answer = FullAnnouncement::new(false);
        answer.restart(false);
        assert!(!answer.ends());
    }
}
