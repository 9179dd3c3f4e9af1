//! Routing one burst of messages on the worker that read it: match against the route table,
//! then one [`Deliver`] per connected subscriber and one [`Stored`] to the Registry for the
//! clients that are not connected, all sent before the read lock is released.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use actix::dev::SendError;
use actix::prelude::*;

use super::{ClientKey, Deliver, Routes, Settlement, Target};
use crate::message::{Delivery, Message, QoS, SubscriptionOptions};
use crate::persistence::{Record, RecordRef, Store};

/// A QoS 1/2 delivery for a client that is not connected (or is detaching), as a worker matched
/// it.
pub struct StoredDelivery {
    /// The client's slot.
    pub key: ClientKey,
    /// The slot's generation when matched: a delivery for an earlier client in the slot is
    /// dropped.
    pub generation: u32,
    /// The delivery.
    pub delivery: Delivery,
}

/// Sent by a Session (routing a burst on its worker) to the Registry: deliveries for clients
/// that are not connected, which the Registry stores in their offline session or holds while
/// they detach. In the order matched.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stored(pub Vec<StoredDelivery>);

/// What [`route_burst`] found about the Registry's mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryRoom {
    /// Nothing was sent to it, or there was room.
    Room,
    /// Its mailbox was over capacity: the deliveries went anyway (order first), and the caller
    /// should stop reading until the Registry catches up.
    Full,
    /// The Registry has stopped.
    Closed,
}

/// Per-worker scratch space, reused by every burst.
#[derive(Default)]
struct Scratch {
    /// One message's matches.
    matches: Vec<(ClientKey, SubscriptionOptions)>,
    /// One burst's deliveries, by client in the order each first appeared.
    batches: Vec<(ClientKey, Vec<Delivery>)>,
    /// Client -> position in `batches`, once there are more than [`LINEAR`] of them.
    index: HashMap<ClientKey, usize>,
}

/// Up to this many clients per burst, a client's batch is found by a scan.
const LINEAR: usize = 16;

/// The most deliveries a client's batch has room for when it is made. A client gets at most
/// one delivery per message of the burst, so a batch starts with room for the messages left:
/// a pipelined publisher's burst to one subscriber, or to each of a fan-out's subscribers,
/// then allocates once per client, not at every doubling. A Session hands over at most 64
/// messages per burst (`PUBLISH_BATCH`), so a burst whose every message goes to a new client
/// reserves at most 64 * 65 / 2 deliveries (about 50 KB), until its batches are handed on.
const BATCH_ROOM: usize = 64;

/// Entries each part of the scratch space keeps room for when it gives room back.
const KEPT_SCRATCH: usize = 1024;

/// Room, in entries, above which a part of the scratch space gives room back: a burst to more
/// clients (one message to a fleet) gets what it needs, and gives it back at the next
/// ordinary burst ([`Scratch::give_back_room`]). Four times [`KEPT_SCRATCH`], so that a part
/// cut back (a map rounds its room up) is not cut again at every burst.
const SCRATCH_GIVEN_BACK_ABOVE: usize = 4 * KEPT_SCRATCH;

impl Scratch {
    /// Called after a burst that matched at most `matches_used` subscriptions per message and
    /// reached `batches_used` clients: a part with room for more than
    /// [`SCRATCH_GIVEN_BACK_ABOVE`] entries that this burst filled to a quarter or less is cut
    /// back to [`KEPT_SCRATCH`], so that a worker keeps the room of its largest fan-out only
    /// until an ordinary burst follows it.
    fn give_back_room(&mut self, matches_used: usize, batches_used: usize) {
        if self.matches.capacity() <= SCRATCH_GIVEN_BACK_ABOVE
            && self.batches.capacity() <= SCRATCH_GIVEN_BACK_ABOVE
            && self.index.capacity() <= SCRATCH_GIVEN_BACK_ABOVE
        {
            return;
        }
        self.cut_back(matches_used, batches_used);
    }

    /// [`Scratch::give_back_room`] where some part has the room of a fan-out: out of the
    /// routing path's own code, which every burst runs.
    #[cold]
    #[inline(never)]
    fn cut_back(&mut self, matches_used: usize, batches_used: usize) {
        let spare = |room: usize, used: usize| room > SCRATCH_GIVEN_BACK_ABOVE && used <= room / 4;
        if spare(self.matches.capacity(), matches_used) {
            self.matches.clear();
            self.matches.shrink_to(KEPT_SCRATCH);
        }
        if spare(self.batches.capacity(), batches_used) {
            self.batches.clear();
            self.batches.shrink_to(KEPT_SCRATCH);
        }
        if spare(self.index.capacity(), batches_used) {
            self.index.clear();
            self.index.shrink_to(KEPT_SCRATCH);
        }
    }

    /// Appends `delivery` to `key`'s batch, keeping the order of the burst; `messages_left` is
    /// how many messages of the burst are still to route, this one included.
    fn add(&mut self, key: ClientKey, delivery: Delivery, messages_left: usize) {
        let found = if self.batches.len() <= LINEAR {
            self.batches.iter().position(|(k, _)| *k == key)
        } else {
            for (i, (k, _)) in self.batches.iter().enumerate().skip(self.index.len()) {
                self.index.insert(*k, i);
            }
            self.index.get(&key).copied()
        };
        match found {
            Some(i) => self.batches[i].1.push(delivery),
            None => {
                let mut batch = Vec::with_capacity(messages_left.min(BATCH_ROOM));
                batch.push(delivery);
                self.batches.push((key, batch));
            }
        }
    }
}

/// With persistence: what a burst keeps on disk, and whether its deliveries wait for it.
pub struct BurstDurability<'a> {
    /// The store.
    pub store: &'a Store,
    /// The publisher's own changes for this burst (inbound QoS 2 ids), written with the
    /// [`Record::Queued`] of every QoS 1/2 delivery to a persistent session.
    pub records: Vec<Record>,
    /// Whether the deliveries may reach their clients only once all of it is durable.
    pub hold: bool,
    /// With `fsync = "always"`, the publisher's [`Settlement`] for this burst: armed when every
    /// delivery kept on disk is QoS 1 to a connected client and the burst has no records of
    /// its own, so that the acknowledgements may go out once those clients have acknowledged
    /// the deliveries, if that comes before the sync.
    pub settlement: Option<&'a Arc<Settlement>>,
}

/// What [`route_burst`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstRouted {
    /// The Registry's mailbox.
    pub room: RegistryRoom,
    /// The store change the burst's acknowledgements wait for, if it submitted any.
    pub durable_after: Option<u64>,
    /// The messages that reached no subscriber, connected or not: bit `i` for the burst's
    /// message `i` (of the first 64). An MQTT 5 publisher's acknowledgement of one carries
    /// 0x10 No matching subscribers.
    pub unmatched: u64,
    /// Whether the burst's [`BurstDurability::settlement`] was armed and handed to the
    /// subscribers: it then settles the acknowledgements too. Not armed, it may serve the next
    /// burst.
    pub settlement_armed: bool,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Routes `messages`, published by `from`, in order: every connected subscriber gets one
/// [`Deliver`] with its deliveries from this burst, and the QoS 1/2 deliveries for clients that
/// are not connected go to `registry` as one [`Stored`]. QoS 0 is not kept for them.
///
/// With `durability`, each QoS 1/2 delivery to a persistent session gets a durable id and a
/// [`Record::Queued`], submitted (with the caller's records) before anything is sent, so that
/// whatever its receiver records about it later comes after it in the log.
pub fn route_burst(
    routes: &Routes,
    registry: &Recipient<Stored>,
    from: ClientKey,
    messages: &[Arc<Message>],
    durability: Option<BurstDurability<'_>>,
) -> BurstRouted {
    SCRATCH.with(|scratch| {
        let Ok(mut scratch) = scratch.try_borrow_mut() else {
            // Not reentrant in practice; routing without the scratch space is still correct.
            let mut scratch = Scratch::default();
            return route_with(routes, registry, from, messages, durability, &mut scratch);
        };
        route_with(routes, registry, from, messages, durability, &mut scratch)
    })
}

fn route_with(
    routes: &Routes,
    registry: &Recipient<Stored>,
    from: ClientKey,
    messages: &[Arc<Message>],
    durability: Option<BurstDurability<'_>>,
    scratch: &mut Scratch,
) -> BurstRouted {
    scratch.batches.clear();
    if !scratch.index.is_empty() {
        // Clearing an empty map still sweeps its buckets: skip it on the common small burst.
        scratch.index.clear();
    }
    let table = routes.read();
    let mut matches = std::mem::take(&mut scratch.matches);
    let mut unmatched = 0u64;
    let mut most_matches = 0;
    for (routed, message) in messages.iter().enumerate() {
        let messages_left = messages.len() - routed;
        let mut reached = false;
        table.route(message, Some(from), &mut matches, |key, delivery| {
            reached = true;
            scratch.add(key, delivery, messages_left)
        });
        most_matches = most_matches.max(matches.len());
        if !reached && routed < 64 {
            unmatched |= 1 << routed;
        }
    }
    scratch.matches = matches;
    let mut durable_after = None;
    let mut after = 0;
    let mut settlement = None;
    if let Some(BurstDurability {
        store,
        records,
        hold,
        settlement: offered,
    }) = durability
    {
        let mut to_record = !records.is_empty();
        // Only deliveries whose clients' PUBACKs can settle them: QoS 1 to connected clients,
        // and no record of the publisher's own (an inbound QoS 2 id) that must be durable.
        let mut settles = offered.is_some() && records.is_empty() && !hold;
        let mut kept = 0;
        for (key, batch) in scratch.batches.iter_mut() {
            if table.durable(*key).is_none() {
                continue;
            }
            let online = table.is_online(*key);
            for delivery in batch.iter_mut().filter(|d| d.qos != QoS::AtMostOnce) {
                delivery.set_durable_id(Some(store.next_id()));
                to_record = true;
                settles &= online && delivery.qos == QoS::AtLeastOnce;
                kept += 1;
            }
        }
        if to_record {
            // Framed from the deliveries themselves: no owned record per delivery.
            let queued = scratch.batches.iter().flat_map(|(key, batch)| {
                let client_id = table.durable(*key).map(|id| &**id);
                batch.iter().filter_map(move |delivery| {
                    Some(RecordRef::Queued {
                        client_id: client_id?,
                        id: delivery.durable_id()?,
                        delivery,
                    })
                })
            });
            let records = records.iter().map(RecordRef::Record).chain(queued);
            // A burst its subscribers' PUBACKs will settle does not wake the writer: nobody
            // needs its records written before those PUBACKs come, and the writer's next nap's
            // end (or a firm wait) takes them; if the PUBACKs do not come in time, the
            // publisher's wait wakes a writer that sleeps.
            let seq = if settles && kept > 0 {
                store.submit_quietly(records)
            } else {
                store.submit_all(records)
            };
            durable_after = Some(seq);
            if hold {
                after = seq;
            }
        }
        if let (true, Some(offered)) = (settles && kept > 0, offered) {
            // Counted before any delivery is sent: a PUBACK may come back on another worker.
            offered.arm(kept);
            settlement = Some(offered);
        }
    }
    let mut stored = Vec::new();
    let batches_used = scratch.batches.len();
    for (key, batch) in scratch.batches.drain(..) {
        match table.target(key) {
            Some(Target::Online(session)) => {
                let settlement = settlement
                    .filter(|_| batch.iter().any(|d| d.durable_id().is_some()))
                    .cloned();
                session.deliver(Deliver {
                    deliveries: batch,
                    after,
                    retained: false,
                    settlement,
                })
            }
            Some(Target::Registry { generation }) => {
                let generation = *generation;
                let kept = batch
                    .into_iter()
                    .filter(|d| d.qos != QoS::AtMostOnce)
                    .map(|delivery| StoredDelivery {
                        key,
                        generation,
                        delivery,
                    });
                stored.extend(kept);
            }
            None => {}
        }
    }
    let room = if stored.is_empty() {
        RegistryRoom::Room
    } else {
        match registry.try_send(Stored(stored)) {
            Ok(()) => RegistryRoom::Room,
            Err(SendError::Full(stored)) => {
                // Sent over capacity rather than later: it must be in the mailbox before the
                // read lock goes.
                registry.do_send(stored);
                RegistryRoom::Full
            }
            Err(SendError::Closed(_)) => RegistryRoom::Closed,
        }
    };
    drop(table);
    scratch.give_back_room(most_matches, batches_used);
    BurstRouted {
        room,
        durable_after,
        unmatched,
        settlement_armed: settlement.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_scratch_gives_back_a_fan_outs_room_at_the_next_ordinary_burst() {
        let mut scratch = Scratch::default();
        scratch.matches.reserve(20_000);
        scratch.batches.reserve(20_000);
        scratch.index.reserve(20_000);
        // The fan-out itself: its room stays while it is in use.
        scratch.give_back_room(20_000, 20_000);
        assert!(scratch.matches.capacity() >= 20_000);
        assert!(scratch.batches.capacity() >= 20_000);
        assert!(scratch.index.capacity() >= 20_000);
        // A burst to one subscriber next.
        scratch.give_back_room(1, 1);
        for room in [
            scratch.matches.capacity(),
            scratch.batches.capacity(),
            scratch.index.capacity(),
        ] {
            assert!(room <= SCRATCH_GIVEN_BACK_ABOVE, "room kept: {room}");
        }
        // What is kept is not cut again at every burst.
        let (matches, batches) = (scratch.matches.as_ptr(), scratch.batches.as_ptr());
        let index = scratch.index.capacity();
        scratch.index.insert(ClientKey(7), 0);
        scratch.give_back_room(1, 1);
        assert_eq!(scratch.matches.as_ptr(), matches);
        assert_eq!(scratch.batches.as_ptr(), batches);
        assert_eq!(scratch.index.get(&ClientKey(7)), Some(&0), "not cleared");
        assert_eq!(scratch.index.capacity(), index);
    }
}
