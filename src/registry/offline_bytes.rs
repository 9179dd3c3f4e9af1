//! What the clients that are not connected hold, counted as it changes: the figures of `$SYS`,
//! `/metrics` and the dashboard, and `sessions.max_offline_queued_bytes`, one bound on the QoS
//! 1/2 messages held for all of them together.
//!
//! Each client's queue has bounds of its own (`max_queued_messages`, `max_queued_bytes`), but a
//! fleet of persistent devices that all go offline (a site's network down for a night) could
//! still hold clients x `max_queued_bytes`. At this bound a new message for a client that is not
//! connected is not kept: it is dropped, counted (`offline_total_dropped`; on `/metrics` the
//! reason `offline_total_full`) and warned of at most once per 10 s, whatever `queue_overflow`
//! says. What is held stays, and connected clients are not affected. 0, the default: no bound.
//!
//! What it counts: the topic, payload and properties of each message queued or in flight in a
//! stored session (as `max_queued_bytes` does), exactly, as the Registry changes them: a
//! session stored (gone offline, or read back at start) adds what it holds; one taken back (its
//! client resumed) or dropped (a clean start, its expiry, the admin API) takes it off; a message
//! queued into one adds the change in its queue, after that queue's own bound. Nothing else
//! changes a stored session: its in-flight messages wait for its client, and its queue is not
//! pruned while it waits. Reading the figures costs nothing; with 100,000 stored sessions
//! holding messages, a walk over them at every `$SYS` update, scrape and dashboard tick held
//! the Registry's thread for 100-250 ms (docs/benchmarks.md, "What offline sessions hold,
//! counted instead of walked"). A message for a client whose connection is ending is checked against the
//! bound as it comes and counted when the session is stored with what it was held.

use std::time::Instant;

use tracing::warn;

use super::client::Client;
use super::{ClientKey, Registry};
use crate::drops::WARNING_INTERVAL;
use crate::log_gate::LogGate;
use crate::message::Delivery;
use crate::session_state::SessionState;

/// The messages the stored sessions hold and their bytes, and the bound on those bytes.
#[derive(Debug)]
pub(super) struct OfflineBytes {
    /// `sessions.max_offline_queued_bytes`; 0: no bound.
    max: usize,
    /// Messages queued or in flight in the stored sessions.
    messages: usize,
    /// Their bytes: topic, payload and properties.
    bytes: usize,
    /// Drops, warned of at most once per [`WARNING_INTERVAL`].
    drops: LogGate,
}

impl OfflineBytes {
    /// Nothing held yet; `max` 0 is no bound.
    pub(super) fn new(max: usize) -> Self {
        OfflineBytes {
            max,
            messages: 0,
            bytes: 0,
            drops: LogGate::new(WARNING_INTERVAL),
        }
    }

    /// Whether there is a bound at all.
    fn bounded(&self) -> bool {
        self.max != 0
    }

    /// Whether `bytes` more fit under the bound.
    fn fits(&self, bytes: usize) -> bool {
        self.bytes.saturating_add(bytes) <= self.max
    }

    /// Stores `state` as `client`'s session (gone offline, or read back at start), counting
    /// what it holds (and taking off what a session it replaces held).
    pub(super) fn store(&mut self, client: &mut Client, state: SessionState) {
        self.take(client);
        let (messages, bytes) = held(&state);
        self.messages = self.messages.saturating_add(messages);
        self.bytes = self.bytes.saturating_add(bytes);
        client.stored = Some(Box::new(state));
    }

    /// Takes `client`'s stored session out (it resumes, or its session ends), taking off what
    /// it holds.
    pub(super) fn take(&mut self, client: &mut Client) -> Option<SessionState> {
        let state = *client.stored.take()?;
        self.forget(&state);
        Some(state)
    }

    /// Takes off what `state`, a stored session leaving the table with its client, holds.
    pub(super) fn forget(&mut self, state: &SessionState) {
        let (messages, bytes) = held(state);
        self.messages = self.messages.saturating_sub(messages);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Counts the change in a stored session's queue from `before` to `after` (messages and
    /// bytes, [`queue_size`]): a message queued, and what the queue's own bound dropped.
    pub(super) fn queue_changed(&mut self, before: (usize, usize), after: (usize, usize)) {
        self.messages = self
            .messages
            .saturating_add(after.0)
            .saturating_sub(before.0);
        self.bytes = self.bytes.saturating_add(after.1).saturating_sub(before.1);
    }
}

/// The messages and bytes of a stored session's queue.
pub(super) fn queue_size(state: &SessionState) -> (usize, usize) {
    (state.queue.len(), state.queue.bytes())
}

/// The messages `state` holds, queued and in flight, and their bytes.
fn held(state: &SessionState) -> (usize, usize) {
    let inflight: usize = state
        .inflight
        .iter()
        .map(|entry| entry.delivery.message.size())
        .sum();
    (
        state.queue.len() + state.inflight.len(),
        state.queue.bytes() + inflight,
    )
}

impl Registry {
    /// The messages held in the stored sessions of the clients that are not connected, and
    /// their bytes: counted as they change, not walked. Debug builds check them against a walk
    /// of the whole client table.
    pub(super) fn held_offline(&self) -> (usize, usize) {
        let counted = (self.offline_bytes.messages, self.offline_bytes.bytes);
        #[cfg(debug_assertions)]
        {
            let walked = self
                .clients
                .iter()
                .flatten()
                .filter_map(|client| client.stored.as_deref())
                .map(held)
                .fold((0, 0), |sum, (m, b)| (sum.0 + m, sum.1 + b));
            debug_assert_eq!(
                counted, walked,
                "offline sessions' held messages miscounted"
            );
        }
        counted
    }

    /// Whether `delivery`, for the offline client `key`, may be kept within the bound (it is
    /// counted once it is in the client's stored session). If not, it is dropped here: counted,
    /// warned of, and (kept on disk by the worker that matched it) recorded done.
    pub(super) fn offline_room_for(&mut self, key: ClientKey, delivery: &Delivery) -> bool {
        let bytes = &self.offline_bytes;
        if !bytes.bounded() || bytes.fits(delivery.message.size()) {
            return true;
        }
        self.metrics.add_offline_total_dropped(1);
        self.persist_done(key, delivery.durable_id().into_iter().collect());
        if let Some(dropped) = self.offline_bytes.drops.event(Instant::now()) {
            let client_id = self
                .client(key)
                .map(|client| client.id.to_string())
                .unwrap_or_default();
            warn!(
                client_id,
                dropped,
                held = self.offline_bytes.bytes,
                max = self.offline_bytes.max,
                "message for a client that is not connected dropped: sessions.max_offline_queued_bytes reached (counts since the last warning; at most one warning per 10 s)"
            );
        }
        false
    }

    /// After recovery: warns if what the offline sessions read back hold is over the bound
    /// (lowered since, or set for the first time): all of it is kept, and new messages for
    /// clients that are not connected are dropped until it is under.
    pub(super) fn warn_if_recovered_over_offline_bound(&self) {
        let bytes = &self.offline_bytes;
        if bytes.bounded() && bytes.bytes > bytes.max {
            warn!(
                held = bytes.bytes,
                max = bytes.max,
                "the offline sessions read back hold more than sessions.max_offline_queued_bytes: all kept; new messages for clients that are not connected are dropped until under"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored session holding one QoS 1 message of `payload` bytes on topic `t`, queued or
    /// (`in_flight`) sent.
    fn holding_one(payload: usize, in_flight: bool) -> SessionState {
        let mut state = SessionState::default();
        let qos = crate::message::QoS::AtLeastOnce;
        let message = crate::message::Message::new("t", vec![0; payload].into(), qos, false);
        let delivery = Delivery::new(std::sync::Arc::new(message), qos, false);
        if in_flight {
            state
                .inflight
                .push_back(crate::session_state::InflightEntry {
                    pid: 1,
                    delivery,
                    stage: crate::session_state::InflightStage::AwaitingPubAck,
                });
        } else {
            state.queue.push_back(delivery);
        }
        state
    }

    #[test]
    fn stored_sessions_are_counted_as_they_are_stored_queued_into_and_taken() {
        let mut bytes = OfflineBytes::new(0);
        let mut a = Client::new("a".into(), 0);
        let mut b = Client::new("b".into(), 0);
        bytes.store(&mut a, holding_one(10, true));
        bytes.store(&mut b, holding_one(20, false));
        assert_eq!((bytes.messages, bytes.bytes), (2, 11 + 21));
        // A message queued into b's session.
        let stored = b.stored.as_deref_mut().expect("stored");
        let before = queue_size(stored);
        stored
            .queue
            .push_back(holding_one(5, false).queue.pop_front().expect("one"));
        bytes.queue_changed(before, queue_size(stored));
        assert_eq!((bytes.messages, bytes.bytes), (3, 11 + 21 + 6));
        // Storing again replaces, and does not count twice.
        bytes.store(&mut a, holding_one(30, false));
        assert_eq!((bytes.messages, bytes.bytes), (3, 31 + 21 + 6));
        let resumed = bytes.take(&mut b).expect("b was stored");
        assert_eq!(resumed.queue.len(), 2);
        assert_eq!(bytes.take(&mut b).map(|_| ()), None, "taken once");
        assert_eq!((bytes.messages, bytes.bytes), (1, 31));
        bytes.forget(a.stored.as_deref().expect("stored"));
        assert_eq!((bytes.messages, bytes.bytes), (0, 0));
    }

    #[test]
    fn the_bound_saturates_and_never_wraps() {
        let mut bytes = OfflineBytes::new(1000);
        bytes.bytes = 600;
        assert!(bytes.fits(400) && !bytes.fits(401));
        bytes.bytes = usize::MAX;
        assert!(!bytes.fits(1));
        assert!(!OfflineBytes::new(0).bounded());
    }
}
