//! The Registry's writes to the retained store: setting and clearing a topic's retained message,
//! `limits.max_retained_messages`, which bounds how many topics may hold one, and the bytes they
//! hold (for `/metrics` and `$SYS`).
//!
//! At the limit, a retained message for a topic that has none yet is delivered to the current
//! subscribers but not stored, against `[MQTT-3.3.1-5]`: the limit is off unless configured. A
//! topic that already holds one may always be updated or cleared, and the broker's own `$SYS`
//! topics neither count nor are refused.

use std::sync::Arc;
use std::time::Instant;

use tracing::warn;

use super::{client_in, ClientKey, Registry};
use crate::drops::WARNING_INTERVAL;
use crate::log_gate::LogGate;
use crate::message::Message;
use crate::persistence::Record;
use crate::topic::reserved_for_broker;

/// `limits.max_retained_messages` and what it counts.
#[derive(Debug)]
pub(super) struct RetainedLimit {
    /// The most topics (not the broker's own) with a retained message; 0: no limit.
    max: usize,
    /// Topics with a retained message now, the broker's own not counted.
    stored: usize,
    /// The bytes (topic, payload, properties: [`Message::size`]) of every retained message
    /// now, the broker's own included.
    pub(super) bytes: usize,
    /// Refusals, warned of at most once per [`WARNING_INTERVAL`].
    refusals: LogGate,
}

impl RetainedLimit {
    /// No topic stored yet; `max` 0 is no limit.
    pub(super) fn new(max: usize) -> Self {
        RetainedLimit {
            max,
            stored: 0,
            bytes: 0,
            refusals: LogGate::new(WARNING_INTERVAL),
        }
    }

    fn full(&self) -> bool {
        self.max != 0 && self.stored >= self.max
    }
}

impl Registry {
    /// Stores `message` (retained, with a payload) as its topic's retained message, unless that
    /// topic has none and the limit is reached; `from` published it.
    pub(super) fn set_retained(&mut self, message: &Arc<Message>, from: Option<ClientKey>) {
        let own = reserved_for_broker(&message.topic);
        if !own && self.retained_limit.full() && !self.retained.contains(&message.topic) {
            return self.refuse_retained(&message.topic, from);
        }
        let replaced = self.retained.insert(&message.topic, message.clone());
        self.count_retained(Some(message), replaced.as_ref(), own);
        // The broker's own `$SYS` messages are made afresh after a restart.
        if !own {
            self.persist(Record::RetainSet(message.clone()));
        }
    }

    /// Stores a retained message read back from disk at start: all of them, even past a limit
    /// lowered since (it is warned of once, after).
    pub(super) fn recover_retained(&mut self, message: Arc<Message>) {
        let own = reserved_for_broker(&message.topic);
        let replaced = self.retained.insert(&message.topic, Arc::clone(&message));
        self.count_retained(Some(&message), replaced.as_ref(), own);
    }

    /// Counts `added` in place of `replaced` (either may be none) in the retained store's
    /// figures; `own`: a topic of the broker's own, which the limit does not count.
    fn count_retained(
        &mut self,
        added: Option<&Arc<Message>>,
        replaced: Option<&Arc<Message>>,
        own: bool,
    ) {
        let counts = &mut self.retained_limit;
        counts.bytes = (counts.bytes + added.map_or(0, |m| m.size()))
            .saturating_sub(replaced.map_or(0, |m| m.size()));
        if !own {
            match (added.is_some(), replaced.is_some()) {
                (true, false) => counts.stored += 1,
                (false, true) => counts.stored = counts.stored.saturating_sub(1),
                _ => {}
            }
        }
    }

    /// Warns if more topics hold a retained message than the limit allows (a lowered limit):
    /// they are kept, and new topics are refused until fewer.
    pub(super) fn warn_if_over_retained_limit(&self) {
        let limit = &self.retained_limit;
        if limit.max != 0 && limit.stored > limit.max {
            warn!(
                retained = limit.stored,
                max = limit.max,
                "more retained messages than limits.max_retained_messages: all kept; new topics are not retained until fewer"
            );
        }
    }

    /// Clears `topic`'s retained message (an empty retained PUBLISH, or its expiry).
    pub(super) fn remove_retained(&mut self, topic: &str) {
        let removed = self.retained.remove(topic);
        self.count_retained(None, removed.as_ref(), reserved_for_broker(topic));
        self.persist(Record::RetainClear(topic.to_string()));
    }

    /// Counts a retained message not stored for the limit, and warns at most once per
    /// [`WARNING_INTERVAL`], with how many since the last warning.
    fn refuse_retained(&mut self, topic: &str, from: Option<ClientKey>) {
        self.metrics.add_limits_hit(1);
        let Some(refused) = self.retained_limit.refusals.event(Instant::now()) else {
            return;
        };
        let max = self.retained_limit.max;
        let client_id = from
            .and_then(|key| client_in(&mut self.clients, key))
            .map(|client| client.id.to_string())
            .unwrap_or_default();
        warn!(topic, client_id, refused, max, "retained message not stored: limits.max_retained_messages reached (delivered to the current subscribers only)");
    }
}
