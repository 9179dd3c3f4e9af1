//! The pure part of a Session: the outbound QoS 1/2 window and queue, and packet identifier
//! allocation. No I/O here, so it is unit-tested alone.

use std::collections::VecDeque;
use std::time::Instant;

use crate::message::{Delivery, QoS};
use crate::queue::{DeliveryQueue, Pushed, QueueLimits};
use crate::session_state::{InflightEntry, InflightStage};

/// What an acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckResult {
    /// The message is done; its slot in the window is free.
    Completed,
    /// PUBREC accepted: send PUBREL.
    SendPubRel,
    /// No message in the matching stage has this identifier.
    Unknown,
}

/// What happened to a delivery kept on disk ([`Delivery::durable_id`]), for the Session to
/// record in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurableChange {
    /// Sent with this packet identifier, at this QoS.
    Sent(u64, u16, QoS),
    /// PUBREC came; PUBREL is what is left.
    Released(u64),
    /// Acknowledged, dropped or expired.
    Done(u64),
}

/// The outbound QoS 1/2 flow of one client: a window of `max_inflight` messages with packet
/// identifiers, and a FIFO of messages waiting for a slot. Delivery order is queue order.
///
/// The window and the queue are allocated with the first QoS 1/2 message: a connection that
/// never receives one (most of an idle fleet) keeps 16 bytes here instead of 150.
#[derive(Debug)]
pub struct Outbound {
    /// The window, the queue and the journal, once there has been a message.
    flow: Option<Box<Flow>>,
    /// The window's size, for when the flow is allocated.
    max_inflight: u16,
}

impl Outbound {
    /// An empty flow with a window of `max_inflight` (at least 1).
    pub fn new(max_inflight: u16) -> Self {
        Outbound {
            flow: None,
            max_inflight: max_inflight.max(1),
        }
    }

    /// How many more messages and bytes (or, negative, fewer) the window and the queue hold
    /// than when this was last called: what the broker's gauge of messages held for connected
    /// clients ([`crate::traffic::Traffic::held_changed`]) is to add for this client.
    pub fn take_held_change(&mut self) -> (i64, i64) {
        // Without a flow nothing was ever held, nor counted.
        let Some(flow) = self.flow.as_deref_mut() else {
            return (0, 0);
        };
        let held = (
            flow.inflight.len() + flow.queue.len(),
            flow.inflight_bytes + flow.queue.bytes(),
        );
        // Counts and bytes of what is in memory: far below 2^63, so the casts keep them.
        let change = (
            held.0 as i64 - flow.counted.0 as i64,
            held.1 as i64 - flow.counted.1 as i64,
        );
        flow.counted = held;
        change
    }

    /// Takes back from the gauge all this flow counted in it (the Session is ending, and what
    /// it holds goes to the Registry or is dropped): the change to apply, zero or negative.
    pub fn uncount_held(&mut self) -> (i64, i64) {
        let Some(flow) = self.flow.as_deref_mut() else {
            return (0, 0);
        };
        let (messages, bytes) = std::mem::take(&mut flow.counted);
        (-(messages as i64), -(bytes as i64))
    }

    fn flow_mut(&mut self) -> &mut Flow {
        let max_inflight = self.max_inflight;
        self.flow
            .get_or_insert_with(|| Box::new(Flow::new(max_inflight)))
    }

    /// The most messages in flight at once.
    pub fn max_inflight(&self) -> usize {
        usize::from(self.max_inflight)
    }

    /// Appends to `into` what happened to deliveries kept on disk since the last call, in
    /// order.
    pub fn take_durable_changes(&mut self, into: &mut Vec<DurableChange>) {
        if let Some(flow) = self.flow.as_deref_mut() {
            flow.take_durable_changes(into);
        }
    }

    /// Appends a delivery regardless of the bounds (what a Session held when its connection
    /// ended goes to its stored session).
    pub fn push_unbounded(&mut self, delivery: Delivery) {
        self.flow_mut().queue.push_back(delivery);
    }

    /// Narrows the window to the client's Receive Maximum (MQTT 5) `[MQTT-3.3.4-7]`.
    pub fn limit_window(&mut self, receive_maximum: u16) {
        self.max_inflight = self.max_inflight.min(receive_maximum.max(1));
        if let Some(flow) = self.flow.as_deref_mut() {
            flow.max_inflight = usize::from(self.max_inflight);
        }
    }

    /// Removes a message from the window without an acknowledgement (too large for the client,
    /// refused by it with an error PUBREC, or one it may not read after a resume).
    pub fn discard(&mut self, pid: u16) -> bool {
        self.flow.as_deref_mut().is_some_and(|f| f.discard(pid))
    }

    /// Number of queued messages dropped on expiry since the last call.
    pub fn take_expired(&mut self) -> u64 {
        self.flow
            .as_deref_mut()
            .map_or(0, |f| std::mem::take(&mut f.expired))
    }

    /// Decides which of a resumed session's unacknowledged PUBLISH packets go again now: as
    /// many as the window has room for, in order; the rest are held until acknowledgements
    /// make room ([`Outbound::next_to_resend`]). The last connection's window may have been
    /// wider than this one's Receive Maximum, which holds for them too `[MQTT-3.3.4-9]`. A
    /// PUBREL always goes `[MQTT-4.4.0-1]`; its message still counts against the window.
    pub fn hold_beyond_window(&mut self) {
        if let Some(flow) = self.flow.as_deref_mut() {
            flow.hold_beyond_window();
        }
    }

    /// Whether the unacknowledged PUBLISH with packet id `pid` waits for room to go again.
    pub fn is_held(&self, pid: u16) -> bool {
        self.flow
            .as_deref()
            .is_some_and(|f| f.unsent.contains(&pid))
    }

    /// The next held PUBLISH (see [`Outbound::hold_beyond_window`]) the window has room for,
    /// to be sent again with DUP.
    pub fn next_to_resend(&mut self) -> Option<&InflightEntry> {
        self.flow.as_deref_mut()?.next_to_resend()
    }

    /// Takes over a stored session's messages. Re-send [`Outbound::inflight`] afterwards.
    pub fn restore(&mut self, inflight: VecDeque<InflightEntry>, queue: DeliveryQueue) {
        if inflight.is_empty() && queue.holds_nothing() && self.flow.is_none() {
            return;
        }
        let flow = self.flow_mut();
        flow.last_pid = inflight.back().map_or(0, |e| e.pid);
        flow.inflight_bytes = inflight.iter().map(|e| e.delivery.message.size()).sum();
        flow.inflight = inflight;
        flow.queue = queue;
    }

    /// Gives up the messages, for the Registry to keep.
    pub fn take(&mut self) -> (VecDeque<InflightEntry>, DeliveryQueue) {
        match self.flow.as_deref_mut() {
            Some(flow) => {
                // The next connection decides again what its window holds back.
                flow.unsent.clear();
                flow.inflight_bytes = 0;
                (
                    std::mem::take(&mut flow.inflight),
                    std::mem::take(&mut flow.queue),
                )
            }
            None => Default::default(),
        }
    }

    /// Messages sent and unacknowledged, oldest first.
    pub fn inflight(&self) -> impl Iterator<Item = &InflightEntry> {
        self.flow.iter().flat_map(|f| f.inflight.iter())
    }

    /// Messages waiting for a window slot, in order.
    pub fn queue(&self) -> impl Iterator<Item = &Delivery> {
        self.flow.iter().flat_map(|f| f.queue.iter())
    }

    /// Number of messages waiting for a window slot.
    pub fn queued(&self) -> usize {
        self.flow.as_deref().map_or(0, |f| f.queue.len())
    }

    /// Number of messages in the window.
    pub fn inflight_len(&self) -> usize {
        self.flow.as_deref().map_or(0, |f| f.inflight.len())
    }

    /// Bytes of the messages waiting for a window slot.
    pub fn queued_bytes(&self) -> usize {
        self.flow.as_deref().map_or(0, |f| f.queue.bytes())
    }

    /// Appends a QoS 1/2 delivery within `limits` (see [`DeliveryQueue::push_bounded`]).
    /// A message the window can take at once is not held to the bounds: they are for what waits.
    pub fn push(&mut self, delivery: Delivery, limits: &QueueLimits) -> Pushed {
        self.flow_mut().push(delivery, limits)
    }

    /// Moves the next queued message into the window, if there is room, and returns it with its
    /// new packet identifier. Messages that expired while queued `[MQTT-3.3.2-5]`, and those
    /// `allowed` refuses (the client may not read them), are dropped on the way.
    pub fn next_to_send(
        &mut self,
        now: Instant,
        allowed: impl Fn(&Delivery) -> bool,
    ) -> Option<&InflightEntry> {
        self.flow.as_deref_mut()?.next_to_send(now, allowed)
    }

    /// Number of queued messages dropped because `next_to_send`'s `allowed` refused them,
    /// since the last call.
    pub fn take_refused(&mut self) -> u64 {
        self.flow
            .as_deref_mut()
            .map_or(0, |f| std::mem::take(&mut f.refused))
    }

    /// Holds a QoS 0 delivery until the output has room ([`Outbound::next_paced`]).
    pub fn pace(&mut self, delivery: Delivery) {
        let flow = self.flow_mut();
        flow.paced_bytes += delivery.message.size();
        flow.paced.push_back(delivery);
    }

    /// Whether QoS 0 deliveries wait for room in the output: the ones after them wait too.
    pub fn paces_output(&self) -> bool {
        self.flow.as_deref().is_some_and(|f| !f.paced.is_empty())
    }

    /// The message bytes of the QoS 0 deliveries waiting for room in the output.
    pub fn paced_bytes(&self) -> usize {
        self.flow.as_deref().map_or(0, |f| f.paced_bytes)
    }

    /// The oldest QoS 0 delivery waiting for room in the output.
    pub fn next_paced(&mut self) -> Option<Delivery> {
        let flow = self.flow.as_deref_mut()?;
        let delivery = flow.paced.pop_front()?;
        flow.paced_bytes -= delivery.message.size();
        if flow.paced.is_empty() {
            // A subscription to many retained messages leaves no large ring behind.
            flow.paced = VecDeque::new();
        }
        Some(delivery)
    }

    /// PUBACK received: what it did, and the durable id of the delivery it completed, if that
    /// one was kept on disk ([`Delivery::durable_id`]).
    pub fn puback_kept(&mut self, pid: u16) -> (AckResult, Option<u64>) {
        self.flow
            .as_deref_mut()
            .map_or((AckResult::Unknown, None), |f| f.puback(pid))
    }

    /// PUBREC received: the message is now owned by the receiver `[MQTT-4.3.3-1]`.
    pub fn pubrec(&mut self, pid: u16) -> AckResult {
        self.flow
            .as_deref_mut()
            .map_or(AckResult::Unknown, |f| f.pubrec(pid))
    }

    /// PUBCOMP received.
    pub fn pubcomp(&mut self, pid: u16) -> AckResult {
        self.flow
            .as_deref_mut()
            .map_or(AckResult::Unknown, |f| f.pubcomp(pid))
    }
}

/// What [`Outbound`] allocates at its first message.
#[derive(Debug)]
struct Flow {
    inflight: VecDeque<InflightEntry>,
    /// The bytes (topic, payload, properties) of the messages in `inflight`.
    inflight_bytes: usize,
    /// Messages in the window and the queue, and their bytes, as last counted in the broker's
    /// gauge of messages held for connected clients ([`Outbound::take_held_change`]).
    counted: (usize, usize),
    queue: DeliveryQueue,
    max_inflight: usize,
    last_pid: u16,
    /// Queued messages that expired before they could be sent, not yet reported.
    expired: u64,
    /// Queued messages the client may not read, dropped and not yet reported.
    refused: u64,
    /// Changes to deliveries kept on disk, not yet taken ([`Outbound::take_durable_changes`]).
    journal: Vec<DurableChange>,
    /// QoS 0 deliveries waiting for room in the output ([`Outbound::pace`]), and their
    /// message bytes.
    paced: VecDeque<Delivery>,
    paced_bytes: usize,
    /// Packet ids of a resumed session's unacknowledged PUBLISH packets not sent again yet,
    /// in order ([`Outbound::hold_beyond_window`]); empty but after a resume.
    unsent: VecDeque<u16>,
}

impl Flow {
    fn new(max_inflight: u16) -> Self {
        Flow {
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            counted: (0, 0),
            queue: DeliveryQueue::default(),
            max_inflight: usize::from(max_inflight.max(1)),
            last_pid: 0,
            expired: 0,
            refused: 0,
            journal: Vec::new(),
            paced: VecDeque::new(),
            paced_bytes: 0,
            unsent: VecDeque::new(),
        }
    }

    /// See [`Outbound::hold_beyond_window`].
    fn hold_beyond_window(&mut self) {
        self.unsent.clear();
        // A message awaiting PUBCOMP is a PUBLISH not yet completed: it takes its room.
        let mut counted = self
            .inflight
            .iter()
            .filter(|e| e.stage == InflightStage::AwaitingPubComp)
            .count();
        for entry in &self.inflight {
            if entry.stage == InflightStage::AwaitingPubComp {
                continue;
            }
            // Once one waits, the later ones wait too: they go in order.
            if counted < self.max_inflight && self.unsent.is_empty() {
                counted += 1;
            } else {
                self.unsent.push_back(entry.pid);
            }
        }
    }

    /// See [`Outbound::next_to_resend`].
    fn next_to_resend(&mut self) -> Option<&InflightEntry> {
        while self.inflight.len().saturating_sub(self.unsent.len()) < self.max_inflight {
            let pid = self.unsent.pop_front()?;
            if let Some(i) = self.position(pid, InflightStage::AwaitingPubAck) {
                return self.inflight.get(i);
            }
            if let Some(i) = self.position(pid, InflightStage::AwaitingPubRec) {
                return self.inflight.get(i);
            }
        }
        None
    }

    /// Appends to `into` what happened to deliveries kept on disk since the last call, in
    /// order; the journal keeps its capacity.
    fn take_durable_changes(&mut self, into: &mut Vec<DurableChange>) {
        for id in self.queue.take_dropped_durable() {
            self.journal.push(DurableChange::Done(id));
        }
        into.append(&mut self.journal);
    }

    fn removed(&mut self, entry: &InflightEntry) {
        self.inflight_bytes = self
            .inflight_bytes
            .saturating_sub(entry.delivery.message.size());
        if let Some(id) = entry.delivery.durable_id() {
            self.journal.push(DurableChange::Done(id));
        }
        if !self.unsent.is_empty() {
            // Acknowledged before it was sent again (a PUBACK from the last connection).
            self.unsent.retain(|&pid| pid != entry.pid);
        }
    }

    /// Removes a message from the window without an acknowledgement (too large for the client,
    /// or refused by it with an error PUBREC).
    fn discard(&mut self, pid: u16) -> bool {
        match self.inflight.iter().position(|e| e.pid == pid) {
            Some(i) => {
                if let Some(entry) = self.inflight.remove(i) {
                    self.removed(&entry);
                }
                true
            }
            None => false,
        }
    }

    /// Appends a QoS 1/2 delivery within `limits` (see [`DeliveryQueue::push_bounded`]).
    /// A message the window can take at once is not held to the bounds: they are for what waits.
    fn push(&mut self, delivery: Delivery, limits: &QueueLimits) -> Pushed {
        debug_assert!(delivery.qos != QoS::AtMostOnce);
        if self.queue.is_empty() && self.inflight.len() < self.max_inflight {
            self.queue.push_back(delivery);
            return Pushed::Queued { dropped: 0 };
        }
        self.queue.push_bounded(delivery, limits)
    }

    /// Moves the next queued message into the window, if there is room, and returns it with its
    /// new packet identifier. Messages that expired while queued `[MQTT-3.3.2-5]`, and those
    /// `allowed` refuses, are dropped on the way.
    fn next_to_send(
        &mut self,
        now: Instant,
        allowed: impl Fn(&Delivery) -> bool,
    ) -> Option<&InflightEntry> {
        if self.inflight.len() >= self.max_inflight || !self.unsent.is_empty() {
            // Held messages go again first ([`Flow::next_to_resend`]).
            return None;
        }
        let delivery = loop {
            let delivery = self.queue.pop_front()?;
            if delivery.message.is_expired(now) {
                self.expired += 1;
            } else if allowed(&delivery) {
                break delivery;
            } else {
                self.refused += 1;
            }
            if let Some(id) = delivery.durable_id() {
                self.journal.push(DurableChange::Done(id));
            }
        };
        let pid = self.allocate_pid();
        let stage = if delivery.qos == QoS::ExactlyOnce {
            InflightStage::AwaitingPubRec
        } else {
            InflightStage::AwaitingPubAck
        };
        if let Some(id) = delivery.durable_id() {
            self.journal
                .push(DurableChange::Sent(id, pid, delivery.qos));
        }
        self.inflight_bytes += delivery.message.size();
        self.inflight.push_back(InflightEntry {
            pid,
            delivery,
            stage,
        });
        self.inflight.back()
    }

    /// A packet identifier not in use by the window `[MQTT-2.3.1-2]`, never 0.
    fn allocate_pid(&mut self) -> u16 {
        loop {
            self.last_pid = self.last_pid.wrapping_add(1);
            if self.last_pid != 0 && !self.inflight.iter().any(|e| e.pid == self.last_pid) {
                return self.last_pid;
            }
        }
    }

    fn position(&self, pid: u16, stage: InflightStage) -> Option<usize> {
        self.inflight
            .iter()
            .position(|e| e.pid == pid && e.stage == stage)
    }

    /// PUBACK received.
    fn puback(&mut self, pid: u16) -> (AckResult, Option<u64>) {
        match self.position(pid, InflightStage::AwaitingPubAck) {
            Some(i) => {
                let entry = self.inflight.remove(i);
                if let Some(entry) = &entry {
                    self.removed(entry);
                }
                let kept = entry.and_then(|e| e.delivery.durable_id());
                (AckResult::Completed, kept)
            }
            None => (AckResult::Unknown, None),
        }
    }

    /// PUBREC received: the message is now owned by the receiver `[MQTT-4.3.3-1]`.
    fn pubrec(&mut self, pid: u16) -> AckResult {
        if let Some(i) = self.position(pid, InflightStage::AwaitingPubRec) {
            self.inflight[i].stage = InflightStage::AwaitingPubComp;
            if let Some(id) = self.inflight[i].delivery.durable_id() {
                self.journal.push(DurableChange::Released(id));
            }
            return AckResult::SendPubRel;
        }
        if self.position(pid, InflightStage::AwaitingPubComp).is_some() {
            // A repeated PUBREC: answer with PUBREL again.
            return AckResult::SendPubRel;
        }
        AckResult::Unknown
    }

    /// PUBCOMP received.
    fn pubcomp(&mut self, pid: u16) -> AckResult {
        match self.position(pid, InflightStage::AwaitingPubComp) {
            Some(i) => {
                if let Some(entry) = self.inflight.remove(i) {
                    self.removed(&entry);
                }
                AckResult::Completed
            }
            None => AckResult::Unknown,
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
