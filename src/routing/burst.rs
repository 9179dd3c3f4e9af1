//! Routing one burst of messages on the worker that read it: match against the route table,
//! then one [`Deliver`] per connected subscriber and one [`Stored`] to the Registry for the
//! clients that are not connected, all sent before the read lock is released.

use std::cell::RefCell;
use std::sync::Arc;

use actix::dev::SendError;
use actix::prelude::*;

use super::{ClientKey, Deliver, Routes, Target};
use crate::message::{Delivery, Message, QoS, SubscriptionOptions};

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
    /// One burst's deliveries.
    out: Vec<(ClientKey, Delivery)>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Routes `messages`, published by `from`, in order: every connected subscriber gets one
/// [`Deliver`] with its deliveries from this burst, and the QoS 1/2 deliveries for clients that
/// are not connected go to `registry` as one [`Stored`]. QoS 0 is not kept for them.
pub fn route_burst(
    routes: &Routes,
    registry: &Recipient<Stored>,
    from: ClientKey,
    messages: &[Arc<Message>],
) -> RegistryRoom {
    SCRATCH.with(|scratch| {
        let Ok(mut scratch) = scratch.try_borrow_mut() else {
            // Not reentrant in practice; routing without the scratch space is still correct.
            return route_with(
                routes,
                registry,
                from,
                messages,
                &mut Vec::new(),
                &mut Vec::new(),
            );
        };
        let Scratch { matches, out } = &mut *scratch;
        route_with(routes, registry, from, messages, matches, out)
    })
}

fn route_with(
    routes: &Routes,
    registry: &Recipient<Stored>,
    from: ClientKey,
    messages: &[Arc<Message>],
    matches: &mut Vec<(ClientKey, SubscriptionOptions)>,
    out: &mut Vec<(ClientKey, Delivery)>,
) -> RegistryRoom {
    out.clear();
    let table = routes.read();
    for message in messages {
        table.route(message, Some(from), matches, |key, delivery| {
            out.push((key, delivery))
        });
    }
    if out.len() > 1 {
        // Stable: each client's deliveries keep the order of the burst.
        out.sort_by_key(|(key, _)| *key);
    }
    let mut stored = Vec::new();
    let mut deliveries = out.drain(..).peekable();
    while let Some((key, delivery)) = deliveries.next() {
        match table.target(key) {
            Some(Target::Online(session)) => {
                let mut batch = vec![delivery];
                while let Some((_, next)) = deliveries.next_if(|(k, _)| *k == key) {
                    batch.push(next);
                }
                session.do_send(Deliver(batch));
            }
            Some(Target::Registry { generation }) => {
                let generation = *generation;
                let kept = std::iter::once(delivery)
                    .chain(std::iter::from_fn(|| {
                        deliveries.next_if(|(k, _)| *k == key).map(|(_, d)| d)
                    }))
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
    drop(deliveries);
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
    room
}
