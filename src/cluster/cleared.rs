//! The topics whose retained message a node last saw cleared: what its answer to a sync request
//! adds after the retained messages, so that a node that was cut off from NATS (or down, with
//! `[persistence]`) when they were cleared clears them too.
//!
//! A topic is here while the last change this node saw to its retained message is a clear;
//! setting it again takes it out. Every node sees every retained change while it is connected
//! (they go to all nodes), so the answering node's list is the cluster's as far as it saw it.
//! At most [`CLEARED_KEPT`] topics and [`CLEARED_BYTES`] bytes of them are kept (a client may
//! clear topics it never set, as many and as long as it likes), the oldest clears forgotten
//! first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The most cleared topics a node remembers for the nodes that come back.
pub const CLEARED_KEPT: usize = 65_536;

/// The most bytes of cleared topics a node remembers.
pub const CLEARED_BYTES: usize = 8 << 20;

/// The cleared topics, oldest clear first.
#[derive(Debug)]
pub struct ClearedTopics {
    /// Each topic with the number of its latest clear.
    latest: HashMap<Arc<str>, u64>,
    /// Clears in order, with their numbers; an entry whose number is no longer its topic's
    /// latest (set again, or cleared again later) is skipped.
    order: VecDeque<(Arc<str>, u64)>,
    /// The number of the next clear.
    next: u64,
    /// The most topics kept.
    kept: usize,
    /// The bytes of the topics in `latest`.
    bytes: usize,
    /// The most bytes kept.
    max_bytes: usize,
}

impl Default for ClearedTopics {
    fn default() -> Self {
        ClearedTopics::with_room(CLEARED_KEPT, CLEARED_BYTES)
    }
}

impl ClearedTopics {
    /// An empty list that keeps at most `kept` topics and `max_bytes` bytes of them.
    pub fn with_room(kept: usize, max_bytes: usize) -> Self {
        ClearedTopics {
            latest: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            kept: kept.max(1),
            bytes: 0,
            max_bytes,
        }
    }

    /// The retained message of `topic` was set (`cleared` false) or cleared.
    pub fn note(&mut self, topic: &str, cleared: bool) {
        if !cleared {
            if self.latest.remove(topic).is_some() {
                self.bytes -= topic.len();
            }
            self.trim_order();
            return;
        }
        let number = self.next;
        self.next += 1;
        let topic: Arc<str> = Arc::from(topic);
        if self.latest.insert(topic.clone(), number).is_none() {
            self.bytes += topic.len();
        }
        self.order.push_back((topic, number));
        while self.latest.len() > self.kept || self.bytes > self.max_bytes {
            let Some((oldest, number)) = self.order.pop_front() else {
                break;
            };
            if self.latest.get(&oldest) == Some(&number) {
                self.latest.remove(&oldest);
                self.bytes -= oldest.len();
            }
        }
        self.trim_order();
    }

    /// Drops stale entries from the front of the order, and rebuilds it once stale entries
    /// make up most of it: it stays within twice the topics kept.
    fn trim_order(&mut self) {
        while let Some((topic, number)) = self.order.front() {
            if self.latest.get(topic) == Some(number) {
                break;
            }
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.latest.len() + 64 {
            let latest = &self.latest;
            self.order
                .retain(|(topic, number)| latest.get(topic) == Some(number));
        }
    }

    /// Whether the last change seen to `topic`'s retained message is a clear.
    pub fn contains(&self, topic: &str) -> bool {
        self.latest.contains_key(topic)
    }

    /// How many topics are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.latest.len()
    }

    /// The topics, oldest clear first.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.order
            .iter()
            .filter(|(topic, number)| self.latest.get(topic) == Some(number))
            .map(|(topic, _)| &**topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(cleared: &ClearedTopics) -> Vec<&str> {
        cleared.topics().collect()
    }

    #[test]
    fn a_topic_is_listed_while_its_last_change_is_a_clear() {
        let mut cleared = ClearedTopics::default();
        cleared.note("gate/1/state", true);
        cleared.note("gate/2/state", true);
        assert_eq!(topics(&cleared), ["gate/1/state", "gate/2/state"]);
        // Set again: no longer cleared.
        cleared.note("gate/1/state", false);
        assert_eq!(topics(&cleared), ["gate/2/state"]);
        assert!(!cleared.contains("gate/1/state"));
        // Cleared again: listed once, as the newest.
        cleared.note("gate/1/state", true);
        cleared.note("gate/2/state", true);
        assert_eq!(topics(&cleared), ["gate/1/state", "gate/2/state"]);
        assert_eq!(cleared.len(), 2);
        // A set of a topic never cleared changes nothing.
        cleared.note("radar/1/speed", false);
        assert_eq!(cleared.len(), 2);
    }

    #[test]
    fn the_oldest_clears_are_forgotten_beyond_the_room() {
        let mut cleared = ClearedTopics::with_room(3, 1 << 20);
        for n in 0..5 {
            cleared.note(&format!("t/{n}"), true);
        }
        assert_eq!(topics(&cleared), ["t/2", "t/3", "t/4"]);
        // Cleared again, a topic counts as new: the oldest other one goes.
        cleared.note("t/2", true);
        cleared.note("t/5", true);
        assert_eq!(topics(&cleared), ["t/4", "t/2", "t/5"]);
    }

    #[test]
    fn long_topics_are_bounded_by_their_bytes() {
        let mut cleared = ClearedTopics::with_room(1_000, 100);
        for n in 0..10 {
            cleared.note(&format!("{n}/{}", "x".repeat(38)), true);
        }
        // 40 bytes each: two fit in 100.
        assert_eq!(cleared.len(), 2);
        assert_eq!(cleared.bytes, 80);
        cleared.note(&format!("9/{}", "x".repeat(38)), false);
        assert_eq!((cleared.len(), cleared.bytes), (1, 40));
    }

    #[test]
    fn churn_on_few_topics_keeps_the_order_small() {
        let mut cleared = ClearedTopics::with_room(1_000, 1 << 20);
        for n in 0..100_000u32 {
            let topic = format!("t/{}", n % 10);
            cleared.note(&topic, n % 3 != 0);
        }
        assert!(cleared.len() <= 10);
        assert!(
            cleared.order.len() <= 2 * cleared.len() + 64,
            "{} entries for {} topics",
            cleared.order.len(),
            cleared.len()
        );
    }
}
