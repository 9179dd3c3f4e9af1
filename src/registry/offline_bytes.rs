//! `sessions.max_offline_queued_bytes`: one bound on the QoS 1/2 messages held for all the
//! clients that are not connected, together.
//!
//! Each client's queue has bounds of its own (`max_queued_messages`, `max_queued_bytes`), but a
//! fleet of persistent devices that all go offline (a site's network down for a night) could
//! still hold clients x `max_queued_bytes`. At this bound a new message for a client that is not
//! connected is not kept: it is dropped, counted (`offline_total_dropped`; on `/metrics` the
//! reason `offline_total_full`) and warned of at most once per 10 s, whatever `queue_overflow`
//! says. What is held stays, and connected clients are not affected. 0, the default: no bound.
//!
//! What it counts: the topic, payload and properties of each message queued or in flight in an
//! offline session (as `max_queued_bytes` does). The Registry keeps an estimate that is never
//! below the true total: the total as last recounted over the stored sessions, plus every
//! message queued for an offline client since and every session that went offline since, with
//! what it held, less every session resumed since, with what it held then (at most what was
//! counted for it: an offline session only loses messages). A message for a client whose
//! connection is ending is checked and counted as it comes, and once more with the rest of the
//! session as it goes offline: counted twice until the next recount, never missed. Other
//! removals (a queue's own bound, an expired session, an admin's clear) only lower the true
//! total and are left to the next recount. The total is recounted (a walk over the clients that
//! may hold messages, at most once per [`RECOUNT_EVERY`]) only when a message would take the
//! estimate over the bound: far from it the check is one addition per message.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tracing::warn;

use super::client::Client;
use super::{ClientKey, Registry};
use crate::drops::WARNING_INTERVAL;
use crate::log_gate::LogGate;
use crate::message::Delivery;
use crate::session_state::SessionState;

/// The least time between two recounts while messages arrive at the bound: a recount walks
/// every client, and a burst at the bound would otherwise walk them per message. A message
/// dropped within this of a recount may have fitted after something left (a client resumed).
const RECOUNT_EVERY: Duration = Duration::from_millis(100);

/// The bound and the estimate the Registry checks it against.
#[derive(Debug)]
pub(super) struct OfflineBytes {
    /// `sessions.max_offline_queued_bytes`; 0: no bound.
    max: usize,
    /// Never below the bytes all offline sessions hold.
    estimate: usize,
    /// When the last recount was made.
    recounted_at: Option<Instant>,
    /// Drops, warned of at most once per [`WARNING_INTERVAL`].
    drops: LogGate,
    /// The clients whose stored session may hold messages: each given a stored session that
    /// holds some, or a message queued into one, since a walk last found it holding none (a
    /// superset). The walks for the figures ([`Registry::held_offline`]) and for the bound's
    /// recount visit these alone: with 100,000 stored sessions a walk of the whole client
    /// table, at every `$SYS` update and every scrape, held the Registry's thread so long that
    /// the round trips of the clients on it waited up to 81-101 ms (docs/benchmarks.md,
    /// "100,000 stored sessions: a compaction's listing and the `$SYS` update"). Slots are the
    /// broker's own numbers: a fixed hash.
    holding: HashSet<ClientKey, foldhash::fast::FixedState>,
}

impl OfflineBytes {
    /// Nothing counted yet; `max` 0 is no bound.
    pub(super) fn new(max: usize) -> Self {
        OfflineBytes {
            max,
            estimate: 0,
            recounted_at: None,
            drops: LogGate::new(WARNING_INTERVAL),
            holding: HashSet::default(),
        }
    }

    /// Whether there is a bound at all.
    fn bounded(&self) -> bool {
        self.max != 0
    }

    /// Whether `bytes` more fit under the bound by the estimate.
    fn fits(&self, bytes: usize) -> bool {
        self.estimate.saturating_add(bytes) <= self.max
    }

    /// Counts `bytes` more held offline.
    fn add(&mut self, bytes: usize) {
        if self.bounded() {
            self.estimate = self.estimate.saturating_add(bytes);
        }
    }

    /// Counts what a session that has just gone offline holds.
    pub(super) fn note_gone_offline(&mut self, state: &SessionState) {
        if self.bounded() {
            self.add(held_bytes(state));
        }
    }

    /// Notes that client `key` was given the stored session `state` (gone offline, or read
    /// back at start): a walk visits it if it holds messages.
    pub(super) fn note_stored(&mut self, key: ClientKey, state: &SessionState) {
        if state.queue.len() + state.inflight.len() > 0 {
            self.holding.insert(key);
        }
    }

    /// Notes that a message was queued in client `key`'s stored session.
    pub(super) fn note_queued(&mut self, key: ClientKey) {
        self.holding.insert(key);
    }

    /// Takes off what a session that has just resumed held offline.
    pub(super) fn note_resumed(&mut self, state: &SessionState) {
        if self.bounded() {
            self.estimate = self.estimate.saturating_sub(held_bytes(state));
        }
    }
}

/// Visits the stored sessions of the clients in `holding` that hold messages (`visit` gets the
/// client and its session), and forgets the others: gone, or holding nothing now (a message
/// queued for one later notes it again).
fn walk_holding<'a>(
    holding: &mut HashSet<ClientKey, foldhash::fast::FixedState>,
    clients: &'a [Option<Box<Client>>],
    mut visit: impl FnMut(&'a Client, &'a SessionState),
) {
    holding.retain(|key| {
        let Some(client) = clients.get(key.0 as usize).and_then(Option::as_deref) else {
            return false;
        };
        match client.stored.as_deref() {
            Some(state) if state.queue.len() + state.inflight.len() > 0 => {
                visit(client, state);
                true
            }
            _ => false,
        }
    });
}

/// Bytes of the messages `state` holds: queued and in flight.
fn held_bytes(state: &SessionState) -> usize {
    let inflight: usize = state
        .inflight
        .iter()
        .map(|entry| entry.delivery.message.size())
        .sum();
    state.queue.bytes() + inflight
}

impl Registry {
    /// The messages held in the stored sessions of the clients that are not connected, and
    /// their bytes: a walk over those that may hold some, not over every client.
    pub(super) fn held_offline(&mut self) -> (usize, usize) {
        let (mut messages, mut bytes) = (0, 0);
        walk_holding(
            &mut self.offline_bytes.holding,
            &self.clients,
            |client, state| {
                if client.attached.is_none() {
                    messages += state.queue.len() + state.inflight.len();
                    bytes += held_bytes(state);
                }
            },
        );
        (messages, bytes)
    }

    /// Whether `delivery`, for the offline client `key`, may be kept within the bound; counts
    /// it if so. If not, it is dropped here: counted, warned of, and (kept on disk by the
    /// worker that matched it) recorded done.
    pub(super) fn offline_room_for(&mut self, key: ClientKey, delivery: &Delivery) -> bool {
        if !self.offline_bytes.bounded() {
            return true;
        }
        let size = delivery.message.size();
        if !self.offline_bytes.fits(size) {
            let now = Instant::now();
            let due = self
                .offline_bytes
                .recounted_at
                .is_none_or(|at| now.duration_since(at) >= RECOUNT_EVERY);
            if due {
                self.recount_offline_bytes(now);
            }
        }
        if self.offline_bytes.fits(size) {
            self.offline_bytes.add(size);
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
                held = self.offline_bytes.estimate,
                max = self.offline_bytes.max,
                "message for a client that is not connected dropped: sessions.max_offline_queued_bytes reached (counts since the last warning; at most one warning per 10 s)"
            );
        }
        false
    }

    /// After recovery: counts what the offline sessions read back hold, and warns if that is
    /// over the bound (lowered since, or set for the first time): all of it is kept, and new
    /// messages for clients that are not connected are dropped until it is under.
    pub(super) fn count_recovered_offline_bytes(&mut self) {
        self.recount_offline_bytes(Instant::now());
        let bytes = &self.offline_bytes;
        if bytes.bounded() && bytes.estimate > bytes.max {
            warn!(
                held = bytes.estimate,
                max = bytes.max,
                "the offline sessions read back hold more than sessions.max_offline_queued_bytes: all kept; new messages for clients that are not connected are dropped until under"
            );
        }
    }

    /// Recounts the bytes every offline session holds (after recovery, and at the bound).
    fn recount_offline_bytes(&mut self, now: Instant) {
        if !self.offline_bytes.bounded() {
            return;
        }
        let mut total = 0;
        walk_holding(
            &mut self.offline_bytes.holding,
            &self.clients,
            |_, state| total += held_bytes(state),
        );
        self.offline_bytes.estimate = total;
        self.offline_bytes.recounted_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bound_counts_nothing() {
        let mut bytes = OfflineBytes::new(0);
        bytes.add(1 << 40);
        assert_eq!(bytes.estimate, 0);
        assert!(!bytes.bounded());
    }

    /// A stored session holding one QoS 1 message of `payload` bytes on topic `t`.
    fn holding_one(payload: usize) -> SessionState {
        let mut state = SessionState::default();
        let qos = crate::message::QoS::AtLeastOnce;
        let message = crate::message::Message::new("t", vec![0; payload].into(), qos, false);
        state
            .queue
            .push_back(Delivery::new(std::sync::Arc::new(message), qos, false));
        state
    }

    #[test]
    fn the_walk_visits_the_clients_noted_and_forgets_those_that_hold_nothing() {
        let mut bytes = OfflineBytes::new(0);
        let mut clients: Vec<Option<Box<Client>>> = (0..5)
            .map(|n| Some(Box::new(Client::new(format!("c{n}").into(), 0))))
            .collect();
        let mut give = |clients: &mut Vec<Option<Box<Client>>>, n: usize, state: SessionState| {
            bytes.note_stored(ClientKey(n as u32), &state);
            if let Some(client) = clients[n].as_deref_mut() {
                client.stored = Some(Box::new(state));
            }
        };
        // Two holding messages, one stored session holding none, two clients never offline.
        give(&mut clients, 0, holding_one(10));
        give(&mut clients, 1, SessionState::default());
        give(&mut clients, 3, holding_one(20));
        assert_eq!(
            bytes.holding.len(),
            2,
            "a session holding nothing is not noted"
        );
        let walk = |bytes: &mut OfflineBytes, clients: &[Option<Box<Client>>]| {
            let mut seen = Vec::new();
            walk_holding(&mut bytes.holding, clients, |client, state| {
                seen.push((client.id.to_string(), held_bytes(state)));
            });
            seen.sort();
            seen
        };
        assert_eq!(
            walk(&mut bytes, &clients),
            [("c0".to_string(), 11), ("c3".to_string(), 21)]
        );
        // c0 is emptied (resumed and acknowledged), c3 forgotten by the table: both go.
        if let Some(c0) = clients[0].as_deref_mut() {
            c0.stored = Some(Box::default());
        }
        clients[3] = None;
        assert_eq!(walk(&mut bytes, &clients), []);
        assert!(bytes.holding.is_empty());
        // A message queued for c1 later notes it again.
        if let Some(c1) = clients[1].as_deref_mut() {
            c1.stored = Some(Box::new(holding_one(5)));
        }
        bytes.note_queued(ClientKey(1));
        assert_eq!(walk(&mut bytes, &clients), [("c1".to_string(), 6)]);
    }

    #[test]
    fn the_estimate_saturates_and_never_wraps() {
        let mut bytes = OfflineBytes::new(1000);
        bytes.add(600);
        assert!(bytes.fits(400) && !bytes.fits(401));
        bytes.add(usize::MAX);
        assert_eq!(bytes.estimate, usize::MAX);
        assert!(!bytes.fits(1));
        let resumed = holding_one(10);
        bytes.estimate = 5;
        bytes.note_resumed(&resumed);
        assert_eq!(bytes.estimate, 0, "never below zero");
    }
}
