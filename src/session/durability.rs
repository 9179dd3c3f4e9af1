//! What a Session does when `[persistence]` is on: its acknowledgements (kept in order by
//! [`super::acks`]) wait for what they acknowledge to be durable, and it holds deliveries and
//! SUBACK/UNSUBACKs that may reach the client only once a change is durable. What it records of the deliveries kept on disk for its client is in
//! [`super::delivery_records`].

use std::collections::VecDeque;

use actix::prelude::*;

use super::acks::HeldAcks;
use super::{Phase, Session};
use crate::codec::Ack;
use crate::persistence::{Durable, DurableTo, Record, Store};
use crate::routing::Deliver;
use crate::session::state::DurableChange;

/// A SUBACK or UNSUBACK that waits for the subscription change it acknowledges.
pub(super) enum Reply {
    /// SUBACK of SUBSCRIBE `pid`.
    SubAck {
        /// Packet identifier.
        pid: u16,
        /// Return / reason codes.
        codes: Vec<u8>,
    },
    /// UNSUBACK of UNSUBSCRIBE `pid`.
    UnsubAck {
        /// Packet identifier.
        pid: u16,
        /// Reason codes (MQTT 5).
        codes: Vec<u8>,
    },
}

/// A delivery or a SUBACK/UNSUBACK that waits for a store change before it reaches the client.
pub(super) enum Held {
    /// Deliveries ([`Deliver::after`] is the change).
    Deliver(Deliver),
    /// A SUBACK or UNSUBACK and the change it waits for.
    Reply(u64, Reply),
}

impl Held {
    /// The store change this waits for.
    fn after(&self) -> u64 {
        match self {
            Held::Deliver(deliver) => deliver.after,
            Held::Reply(after, _) => *after,
        }
    }
}

/// What a Session holds back until a store change is durable: its acknowledgements (in the
/// order the packets came `[MQTT-4.6.0-2]`), deliveries and SUBACK/UNSUBACKs; and what it has
/// to submit with its next burst. Also made, without a store, for an MQTT 5 publisher, whose
/// acknowledgements wait for their burst to be routed (`acks.rs`).
#[derive(Default)]
pub(super) struct DeferredAcks {
    /// The acknowledgements held, in packet order.
    pub(super) acks: HeldAcks,
    /// The last store change known durable.
    pub(super) durable: u64,
    /// Inbound QoS 2 ids taken since the last burst was routed, to record with it.
    pub(super) inbound_qos2: Vec<u16>,
    /// Deliveries and SUBACK/UNSUBACKs that wait for a store change, in the order they came:
    /// each goes out only after those before it. A subscription's retained messages wait for
    /// the same change as its SUBACK, and messages matched under the old table come before
    /// it; two queues let one overtake the other when the change became durable between the
    /// Session's turns.
    held: VecDeque<Held>,
    /// The Session's own record that its output waits for to be durable (a QoS 2 sending, or
    /// the last of too many not yet durable where written is durable).
    pub(super) output_after: u64,
    /// With `fsync = "always"`: the Session's own record its output waits for to be written
    /// (the last of too many not yet written: the duplicate bound).
    pub(super) bound_after: u64,
    /// The last change the writer was asked to report written for the output.
    pub(super) bound_notified: u64,
    /// The Session's own submissions not yet known durable: (change number, `Done` records).
    pub(super) unconfirmed: VecDeque<(u64, usize)>,
    /// The `Done` records in `unconfirmed`: messages the client has acknowledged that a
    /// crash now would send again.
    pub(super) unconfirmed_done: usize,
    /// The last change the writer was asked to report for the output.
    pub(super) output_notified: u64,
    /// Scratch list of what happened to the deliveries kept on disk, between taking them from
    /// the outbound flow and submitting them.
    pub(super) changes: Vec<DurableChange>,
    /// This Session as the store's writer tells it, made at its first wait.
    durable_to: Option<DurableTo>,
    /// Its part in settlements (`fsync = "always"`), as publisher and as subscriber.
    pub(super) settling: super::settlement::Settling,
    /// The change of a wait the store has not answered yet (0: none known). A later change
    /// waits behind it without a wait of its own: the [`Durable`] that answers it carries
    /// everything durable by then, and the Session then waits for what is still open
    /// ([`Session::wait_for_open`]). So a Session that hands over many bursts within one commit
    /// has one wait, and one [`Durable`] to handle, not one per burst.
    waiting_for: u64,
    /// Whether that wait is firm: not one a settlement may end first (then a firm change
    /// behind it needs a wait of its own, or the syncing thread could hold its sync back for
    /// it).
    waiting_firm: bool,
}

/// What a Session does, after a [`Durable`], for what it still holds
/// ([`DeferredAcks::next_step`]).
#[derive(Debug, PartialEq, Eq)]
enum NextStep {
    /// Release what is durable by now: handle a [`Durable`] again.
    Release,
    /// Wait for this change, the lowest still open.
    WaitFor(u64),
    /// Nothing: nothing is held.
    Nothing,
}

/// What a change a Session must wait for needs ([`DeferredAcks::wait_needed`]).
#[derive(Debug, PartialEq, Eq)]
enum WaitNeeded {
    /// Nothing: it is durable.
    Durable,
    /// Nothing more: a wait for an earlier change is out, and what answers it answers this.
    Behind,
    /// A wait of its own.
    Own,
}

impl DeferredAcks {
    /// Makes sure this Session hears once change `seq` is durable; true if it already is
    /// (then [`DeferredAcks::durable`] says so).
    pub(super) fn wait_for(&mut self, store: &Store, seq: u64, ctx: &Context<Session>) -> bool {
        self.wait_for_as(store, seq, ctx, true)
    }

    /// [`DeferredAcks::wait_for`] for a publisher's acknowledgements that its subscribers may
    /// settle first ([`Store::notify_when_durable_unless_settled`]).
    pub(super) fn wait_for_unless_settled(
        &mut self,
        store: &Store,
        seq: u64,
        ctx: &Context<Session>,
    ) -> bool {
        self.wait_for_as(store, seq, ctx, false)
    }

    fn wait_for_as(&mut self, store: &Store, seq: u64, ctx: &Context<Session>, firm: bool) -> bool {
        match self.wait_needed(store.durable(), seq, firm) {
            WaitNeeded::Durable => return true,
            WaitNeeded::Behind => return false,
            WaitNeeded::Own => {}
        }
        let to = self.durable_to(ctx);
        let durable = if firm {
            store.notify_when_durable(seq, to)
        } else {
            store.notify_when_durable_unless_settled(seq, to)
        };
        if durable {
            self.durable = self.durable.max(seq);
            return true;
        }
        // A wait for a later change may still be out: it is answered too, and does no harm.
        self.waiting_for = seq;
        self.waiting_firm = firm;
        false
    }

    /// Makes sure this Session hears (a [`Durable`]) once change `seq` is written to the log;
    /// true if it already is. For the duplicate bound with `fsync = "always"`.
    pub(super) fn wait_until_written(
        &mut self,
        store: &Store,
        seq: u64,
        ctx: &Context<Session>,
    ) -> bool {
        store.notify_when_written(seq, self.durable_to(ctx))
    }

    /// This Session as the store's writer tells it.
    fn durable_to(&mut self, ctx: &Context<Session>) -> &DurableTo {
        self.durable_to
            .get_or_insert_with(|| DurableTo::new(ctx.address().recipient()))
    }

    /// Whether change `seq` needs a wait of its own, given what the store says is durable; a
    /// `firm` one (that no settlement may end) does behind a wait that is not.
    fn wait_needed(&mut self, store_durable: u64, seq: u64, firm: bool) -> WaitNeeded {
        self.durable = self.durable.max(store_durable);
        if seq <= self.durable {
            WaitNeeded::Durable
        } else if self.waiting_for != 0
            && self.waiting_for <= seq
            // Behind a wait a settlement may end, a firm change waits on its own.
            && (self.waiting_firm || !firm)
        {
            WaitNeeded::Behind
        } else {
            WaitNeeded::Own
        }
    }

    /// A [`Durable`] came: everything up to `durable` is; the wait it answers is over.
    fn answered(&mut self, durable: u64) {
        self.durable = self.durable.max(durable);
        if self.waiting_for <= self.durable {
            self.waiting_for = 0;
        }
    }

    /// What the Session does next for what it holds, once it has released what a [`Durable`]
    /// made ready. What it released may have let it learn of later changes from the store
    /// (its output reads what is durable when it is flushed): what waits for those is ready
    /// too, and no answer is out that would release it, so it is released now. Otherwise the
    /// Session waits for the lowest change still open.
    fn next_step(&self) -> NextStep {
        let durable = self.durable;
        let ready =
            self.acks.has_ready(durable) || self.held.front().is_some_and(|h| h.after() <= durable);
        if ready {
            return NextStep::Release;
        }
        self.lowest_open()
            .map_or(NextStep::Nothing, NextStep::WaitFor)
    }

    /// Whether what waits for change `seq` may all be ended by settlements: only batches of
    /// acknowledgements with one (no delivery, reply or output of this Session waits for it).
    /// Its wait is then one a settlement may end, as when those batches were handed over.
    fn open_wait_settles(&self, seq: u64) -> bool {
        self.acks.only_settling_wait_for(seq)
            && self.held.front().is_none_or(|h| h.after() != seq)
            && self.output_after != seq
    }

    /// The lowest change something here still waits for, if any is not durable.
    fn lowest_open(&self) -> Option<u64> {
        let durable = self.durable;
        self.acks
            .awaited()
            .chain(self.held.front().map(Held::after))
            .chain([self.output_after])
            .filter(|&seq| seq > durable)
            .min()
    }
}

impl Session {
    /// The client id, if its session is kept on disk (persistence on, expiry above 0).
    pub(super) fn durable_client(&self) -> Option<&str> {
        self.shared.store.as_ref()?;
        match &self.phase {
            Phase::Connected { client_id, .. } if self.peer_options.session_expiry > 0 => {
                Some(client_id)
            }
            _ => None,
        }
    }

    /// Records an inbound QoS 2 id taken from a client whose session is on disk, with the
    /// burst it came in.
    pub(super) fn note_inbound_qos2(&mut self, pid: u16) {
        if self.durable_client().is_none() {
            return;
        }
        if let Some(acks) = self.deferred_acks.as_deref_mut() {
            acks.inbound_qos2.push(pid);
        }
    }

    /// The records of the inbound QoS 2 ids noted since the last burst.
    pub(super) fn take_inbound_records(&mut self) -> Vec<Record> {
        let Some(client_id) = self.durable_client().map(str::to_string) else {
            return Vec::new();
        };
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return Vec::new();
        };
        acks.inbound_qos2
            .drain(..)
            .map(|pid| Record::InboundQos2 {
                client_id: client_id.clone(),
                pid,
            })
            .collect()
    }

    /// PUBCOMP for a PUBREL whose id the Session knew. With the session on disk the id's
    /// release is recorded first and PUBCOMP waits for it: after a crash, a new PUBLISH reusing
    /// the id must not look like a duplicate.
    pub(super) fn complete_inbound(&mut self, pid: u16, ctx: &mut Context<Self>) {
        let durable = self.durable_client().map(str::to_string);
        let seq = match (durable, self.shared.store.as_ref()) {
            (Some(client_id), Some(store)) => {
                store.submit(Record::InboundReleased { client_id, pid })
            }
            _ => 0,
        };
        self.ack_after(Ack::PubComp, pid, seq, ctx);
    }

    /// PUBREL for a PUBREC from the client. For a delivery kept on disk, its release is
    /// recorded first and PUBREL waits for it: after a crash the broker must re-send PUBREL,
    /// not the PUBLISH the client has already passed on.
    pub(super) fn release_outbound(&mut self, pid: u16, ctx: &mut Context<Self>) {
        let submitted = self.submit_durable_changes();
        let seq = submitted.as_ref().map_or(0, |s| s.seq);
        self.note_submitted(submitted);
        self.ack_after(Ack::PubRel, pid, seq, ctx);
    }

    /// `deliver` if it may reach the client now; else it is kept (behind any kept before it)
    /// until store change `deliver.after` is durable, and the writer asked to say when.
    pub(super) fn hold_delivery(
        &mut self,
        deliver: Deliver,
        ctx: &mut Context<Self>,
    ) -> Option<Deliver> {
        let (Some(store), Some(acks)) = (
            self.shared.store.as_ref(),
            self.deferred_acks.as_deref_mut(),
        ) else {
            return Some(deliver);
        };
        if acks.held.is_empty()
            && (deliver.after <= acks.durable || acks.wait_for(store, deliver.after, ctx))
        {
            return Some(deliver);
        }
        acks.held.push_back(Held::Deliver(deliver));
        None
    }

    /// `reply` if it may go out now; else it is kept (behind any kept before it) until store
    /// change `after` is durable, and the writer asked to say when.
    pub(super) fn hold_reply(
        &mut self,
        after: u64,
        reply: Reply,
        ctx: &mut Context<Self>,
    ) -> Option<Reply> {
        let (Some(store), Some(acks)) = (
            self.shared.store.as_ref(),
            self.deferred_acks.as_deref_mut(),
        ) else {
            return Some(reply);
        };
        if acks.held.is_empty() && (after <= acks.durable || acks.wait_for(store, after, ctx)) {
            return Some(reply);
        }
        acks.held.push_back(Held::Reply(after, reply));
        None
    }

    /// What is held and may go out now: up to the first whose store change is not durable.
    fn ready_held(&mut self) -> Vec<Held> {
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        while acks.held.front().is_some_and(|h| h.after() <= acks.durable) {
            ready.extend(acks.held.pop_front());
        }
        ready
    }

    /// The deliveries still held, for the stored session when the connection ends (a SUBACK
    /// or UNSUBACK still held has no connection left to go to).
    pub(super) fn take_held(&mut self) -> Vec<Deliver> {
        self.deferred_acks
            .as_deref_mut()
            .map(|acks| {
                acks.held
                    .drain(..)
                    .filter_map(|held| match held {
                        Held::Deliver(deliver) => Some(deliver),
                        Held::Reply(..) => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Nothing open any more (settled): the wait out is taken back, so that the sync is not
    /// made for nobody.
    pub(super) fn withdraw_settled_wait(&mut self) {
        let (Some(store), Some(acks)) = (
            self.shared.store.as_ref(),
            self.deferred_acks.as_deref_mut(),
        ) else {
            return;
        };
        if acks.waiting_for == 0 || acks.lowest_open().is_some() {
            return;
        }
        if let Some(to) = acks.durable_to.as_ref() {
            store.withdraw_durable_wait(to);
        }
        acks.waiting_for = 0;
    }
}

impl Handler<Durable> for Session {
    type Result = ();

    /// From the store's writer thread: the change this Session waited for is durable (or, for
    /// its duplicate bound with `fsync = "always"`, written).
    fn handle(&mut self, msg: Durable, ctx: &mut Context<Self>) {
        let Some(acks) = self.deferred_acks.as_deref_mut() else {
            return;
        };
        acks.answered(msg.0);
        self.release_acks();
        // In the order they came: a SUBACK before the retained messages of its subscriptions.
        for held in self.ready_held() {
            match held {
                Held::Reply(_, reply) => self.write_reply(reply),
                Held::Deliver(deliver) => {
                    self.take_deliveries(deliver.deliveries, deliver.retained, ctx);
                }
            }
        }
        // Also while closing: what waited for the disk is the last output.
        self.flush(ctx);
        self.wait_for_open(ctx);
    }
}

impl Session {
    /// After a [`Durable`]: releases what became durable meanwhile (this Session tells itself
    /// again), or waits for the lowest change still open, which may have waited behind the one
    /// just answered; if that is durable by now, this Session tells itself too. A wait that
    /// only settle-able batches need stays one a settlement may end: listed firm, a publisher's
    /// later bursts would have the syncing thread sync for them at once.
    fn wait_for_open(&mut self, ctx: &mut Context<Self>) {
        let (Some(store), Some(acks)) = (
            self.shared.store.as_ref(),
            self.deferred_acks.as_deref_mut(),
        ) else {
            return;
        };
        match acks.next_step() {
            NextStep::Nothing => {}
            NextStep::Release => ctx.notify(Durable::at(acks.durable)),
            NextStep::WaitFor(lowest) => {
                let durable = if acks.open_wait_settles(lowest) {
                    acks.wait_for_unless_settled(store, lowest, ctx)
                } else {
                    acks.wait_for(store, lowest, ctx)
                };
                if durable {
                    ctx.notify(Durable::at(acks.durable));
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "durability_tests.rs"]
mod tests;
