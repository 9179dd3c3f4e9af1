//! What the Registry records in the store (sessions, their dropped deliveries, any change of
//! durable state it makes), and what it hears back from the store's writer thread.

use actix::prelude::*;
use tracing::warn;

use super::{client_in, ClientKey, FlushStore, Registry};
use crate::message::{Delivery, QoS};
use crate::persistence::{unix_ms_now, Durable, Record, SessionUser, Store};

/// For a QoS 1/2 `delivery` that the Registry hands to a persistent session and that is not on
/// disk yet (what a worker routed is): gives it a durable id and returns its `Queued` record, for
/// the caller to submit, so that it is kept until acknowledged.
pub(super) fn queued_record(
    store: &Store,
    client_id: &str,
    delivery: &mut Delivery,
) -> Option<Record> {
    if delivery.qos == QoS::AtMostOnce || delivery.durable_id().is_some() {
        return None;
    }
    let id = store.next_id();
    delivery.set_durable_id(Some(id));
    Some(Record::queued(client_id.to_string(), id, delivery))
}

impl Registry {
    /// Submits a change of durable state, if there is a store.
    pub(super) fn persist(&mut self, record: Record) {
        if let Some(store) = self.store.as_ref() {
            store.submit(record);
        }
    }

    /// With persistence, when the store's writer is far behind: handles nothing more until it
    /// caught up. The mailbox fills, and the Sessions that send to it stop reading, as with
    /// any full Registry mailbox.
    pub(super) fn wait_for_writer(&mut self, ctx: &mut Context<Self>) {
        if let Some(store) = self.store.as_ref().filter(|s| s.is_behind()) {
            warn!("persistence writer behind: the Registry waits for it");
            ctx.wait(store.room().into_actor(self));
        }
    }

    /// Records that the durable deliveries `ids` of `key`'s session are done (dropped).
    pub(super) fn persist_done(&mut self, key: ClientKey, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        let (Some(store), Some(client)) = (
            self.store.as_ref(),
            self.clients.get(key.0 as usize).and_then(Option::as_deref),
        ) else {
            return;
        };
        let records: Vec<Record> = ids
            .into_iter()
            .map(|id| Record::Done {
                client_id: client.id.to_string(),
                id,
            })
            .collect();
        store.submit_all(records);
    }

    /// Records `key`'s session as it now is: kept (expiry above 0; `offline` when its
    /// connection has ended) or gone.
    pub(super) fn persist_session(&mut self, key: ClientKey, offline: bool) {
        if self.store.is_none() {
            return;
        }
        let Some(client) = client_in(&mut self.clients, key) else {
            return;
        };
        let was_persisted = client.persisted;
        let record = if client.session_expiry > 0 {
            client.persisted = true;
            if !was_persisted {
                // From now on the workers keep its QoS 1/2 deliveries on disk.
                let id = client.id.clone();
                self.routes.write().set_durable(key, Some(id));
            }
            Record::SessionSet {
                client_id: client.id.to_string(),
                expiry: client.session_expiry,
                offline_since: if offline { unix_ms_now().max(1) } else { 0 },
                // Kept only with an ACL (the route table's readers), which is what needs it.
                user: if self.keeps_readers {
                    let table = self.routes.read();
                    let reader = table.reader(key);
                    reader.map(|r| SessionUser::from_username(r.username.as_deref()))
                } else {
                    None
                },
            }
        } else if client.persisted {
            client.persisted = false;
            let gone = Record::SessionGone(client.id.to_string());
            self.routes.write().set_durable(key, None);
            gone
        } else {
            return;
        };
        self.persist(record);
    }
}

impl Handler<Durable> for Registry {
    type Result = ();

    /// From the store's writer thread (or the Registry itself): bursts waiting for what they
    /// changed to be durable get `Routed`.
    fn handle(&mut self, msg: Durable, _: &mut Context<Self>) {
        self.durable = self.durable.max(msg.0);
        while let Some(&(seq, key, conn, routed)) = self.awaiting_durable.front() {
            if seq > self.durable {
                break;
            }
            self.awaiting_durable.pop_front();
            self.routed.push((key, conn, routed));
        }
        // The deliveries of those bursts go first, then `Routed` (which releases the acks).
        self.flush_all();
    }
}

impl Handler<FlushStore> for Registry {
    type Result = ();

    fn handle(&mut self, _: FlushStore, _: &mut Context<Self>) {
        if let Some(store) = &self.store {
            store.flush();
        }
    }
}
