//! What a Session records of the deliveries kept on disk for its client (sent, released, done),
//! and the duplicate bound: how far its output may run ahead of those records being durable.

use actix::prelude::*;

use super::{Phase, Session};
use crate::config::FsyncPolicy;
use crate::message::QoS;
use crate::persistence::RecordRef;
use crate::session::state::DurableChange;

/// The Session's records submitted in one go.
pub(super) struct Submitted {
    /// Their change number.
    pub(super) seq: u64,
    /// How many of them are `Done`.
    pub(super) done: usize,
    /// Whether one records the sending of a QoS 2 message.
    pub(super) exactly_once: bool,
}

impl Session {
    /// Submits the Session's records and tells whether its output must wait for them.
    ///
    /// A QoS 2 PUBLISH reaches the client only once the record of its sending is durable: a
    /// client that got it must get it again after a crash with the same packet identifier, or
    /// it would take the message twice. QoS 1 output does not wait (a duplicate is within its
    /// contract) unless the messages in flight and those acknowledged but not yet recorded done
    /// exceed the inflight window: `kill -9` then delivers at most a window of messages again.
    /// That bound counts a `Done` record as kept once it is written (with `fsync = "always"`,
    /// before its sync): the output does not wait for syncs, and a power cut, which takes the
    /// commits written since the last sync, also delivers again the newest messages whose
    /// completion was there.
    pub(super) fn output_waits(&mut self, ctx: &mut Context<Self>) -> bool {
        let window = self.outbound.max_inflight();
        let inflight = self.outbound.inflight_len();
        // Near the duplicate bound, the records of what the client acknowledged go to the
        // writer with this turn, so that the output seldom has to stop for them. Not with
        // `fsync = "always"`: each wake-up there costs a sync, and the writer busy syncing
        // gathers them anyway (5% less pipelined traffic when woken).
        let near_bound = self.shared.config.persistence.fsync != FsyncPolicy::Always
            && self
                .deferred_acks
                .as_deref()
                .is_some_and(|acks| 2 * (inflight + acks.unconfirmed_done) >= window);
        let submitted = self.submit_changes(near_bound);
        self.note_submitted(submitted);
        let (Some(store), Some(acks)) = (
            self.shared.store.as_ref(),
            self.deferred_acks.as_deref_mut(),
        ) else {
            return false;
        };
        let durable = acks.durable.max(store.durable());
        acks.durable = durable;
        // What survives `kill -9`: written is durable but with `fsync = "always"`.
        let written_apart = store.syncs_each_commit();
        let kept = if written_apart {
            store.written().max(durable)
        } else {
            durable
        };
        while let Some(&(seq, done)) = acks.unconfirmed.front() {
            if seq > kept {
                break;
            }
            acks.unconfirmed.pop_front();
            acks.unconfirmed_done -= done;
        }
        // Over the bound: wait for the oldest submissions that bring it back under, not for
        // the newest (which the writer may not have taken yet).
        let mut over = (inflight + acks.unconfirmed_done).saturating_sub(window);
        let mut bound = 0;
        for &(seq, done) in &acks.unconfirmed {
            if over == 0 {
                break;
            }
            bound = seq;
            over = over.saturating_sub(done);
        }
        if written_apart {
            acks.bound_after = acks.bound_after.max(bound);
        } else {
            acks.output_after = acks.output_after.max(bound);
        }
        if acks.output_after > acks.durable {
            if acks.output_after <= acks.output_notified {
                return true;
            }
            acks.output_notified = acks.output_after;
            if !acks.wait_for(store, acks.output_after, ctx) {
                return true;
            }
        }
        if acks.bound_after <= kept {
            return false;
        }
        if acks.bound_after > acks.bound_notified {
            acks.bound_notified = acks.bound_after;
            if acks.wait_until_written(store, acks.bound_after, ctx) {
                return false;
            }
        }
        true
    }

    /// Counts `submitted` as not yet durable; the output waits for it if it holds a QoS 2
    /// sending.
    pub(super) fn note_submitted(&mut self, submitted: Option<Submitted>) {
        let (Some(submitted), Some(acks)) = (submitted, self.deferred_acks.as_deref_mut()) else {
            return;
        };
        if submitted.done > 0 {
            acks.unconfirmed.push_back((submitted.seq, submitted.done));
            acks.unconfirmed_done += submitted.done;
        }
        if submitted.exactly_once {
            acks.output_after = acks.output_after.max(submitted.seq);
        }
    }

    /// Submits what happened to the deliveries kept on disk for this client, if anything did.
    pub(super) fn submit_durable_changes(&mut self) -> Option<Submitted> {
        self.submit_changes(false)
    }

    /// [`Session::submit_durable_changes`]; with `soon`, the writer is woken for them at the
    /// end of this thread's turn instead of taking them when its nap ends: the output is near
    /// its duplicate bound and will wait for them.
    fn submit_changes(&mut self, soon: bool) -> Option<Submitted> {
        let (Some(store), Phase::Connected { client_id, .. }, Some(acks)) = (
            &self.shared.store,
            &self.phase,
            self.deferred_acks.as_deref_mut(),
        ) else {
            return None;
        };
        // Into the Session's own scratch list, which keeps its capacity between calls.
        let changes = &mut acks.changes;
        self.outbound.take_durable_changes(changes);
        if changes.is_empty() {
            return None;
        }
        let mut exactly_once = false;
        let mut done = 0;
        let records = changes.drain(..).map(|change| match change {
            DurableChange::Sent(id, pid, qos) => {
                exactly_once |= qos == QoS::ExactlyOnce;
                RecordRef::Sent { client_id, id, pid }
            }
            DurableChange::Released(id) => RecordRef::Released { client_id, id },
            DurableChange::Done(id) => {
                done += 1;
                RecordRef::Done { client_id, id }
            }
        });
        let seq = if soon {
            store.submit_all(records)
        } else {
            store.submit_quietly(records)
        };
        Some(Submitted {
            seq,
            done,
            exactly_once,
        })
    }
}
