//! The Registry's writes to the retained store: setting and clearing a topic's retained message,
//! and `limits.max_retained_messages`, which bounds how many topics may hold one.
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
    /// Refusals, warned of at most once per [`WARNING_INTERVAL`].
    refusals: LogGate,
}

impl RetainedLimit {
    /// No topic stored yet; `max` 0 is no limit.
    pub(super) fn new(max: usize) -> Self {
        RetainedLimit {
            max,
            stored: 0,
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
        if self
            .retained
            .insert(&message.topic, message.clone())
            .is_none()
            && !own
        {
            self.retained_limit.stored += 1;
        }
        // The broker's own `$SYS` messages are made afresh after a restart.
        if !own {
            self.persist(Record::RetainSet(message.clone()));
        }
    }

    /// Stores a retained message read back from disk at start: all of them, even past a limit
    /// lowered since (it is warned of once, after).
    pub(super) fn recover_retained(&mut self, message: Arc<Message>) {
        let own = reserved_for_broker(&message.topic);
        let topic = Arc::clone(&message);
        if self.retained.insert(&topic.topic, message).is_none() && !own {
            self.retained_limit.stored += 1;
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
        if self.retained.remove(topic).is_some() && !reserved_for_broker(topic) {
            self.retained_limit.stored = self.retained_limit.stored.saturating_sub(1);
        }
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
