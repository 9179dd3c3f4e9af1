//! Subscribing and unsubscribing: the client's filters, the route table, retained messages for
//! a new subscription, and the acknowledgement through the Session's mailbox.

use std::time::Instant;

use actix::prelude::*;
use tracing::{info, warn};

use super::persisting::queued_record;
use super::{Deliver, Registry, Subscribe, Subscribed, ToSession, Unsubscribe, Unsubscribed};
use crate::hooks::{ClientSubscribed, ClientUnsubscribed};
use crate::message::Delivery;
use crate::persistence::Record;
use crate::topic::parse_shared;

impl Registry {
    /// Takes a SUBSCRIBE (once the cluster took its filters, `subscribe_barrier.rs`).
    pub(super) fn subscribe_now(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        let (max_subscriptions, metrics) = (self.max_subscriptions, self.metrics.clone());
        // Deliveries routed before the subscription took effect go before the SUBACK, and so
        // does the answer to a burst the client handed over before it (`Routed`, which lets
        // its acknowledgements out).
        self.flush_all();
        let Some(client) = self.attached_client(msg.key, msg.conn) else {
            return;
        };
        let client_id = client.id.clone();
        let mut codes = msg.codes;
        let mut granted = Vec::with_capacity(msg.filters.len());
        // The cluster link holds every filter the other nodes' clients hold.
        let bounded = &*client_id != super::CLUSTER_CLIENT_ID;
        // Over the limit: one line for the packet (its first refused filter, how many), at most
        // one a second (`limit_refusals`), not one per filter.
        let mut over_limit: Option<(String, u64)> = None;
        for (position, filter, options) in msg.filters {
            let existed = client.subscriptions.contains_key(&filter);
            if !existed && client.subscriptions.len() >= max_subscriptions && bounded {
                metrics.add_limits_hit(1);
                if let Some(code) = codes.get_mut(position) {
                    *code = msg.quota_code;
                }
                match &mut over_limit {
                    Some((_, count)) => *count += 1,
                    None => over_limit = Some((filter, 1)),
                }
                continue;
            }
            client.subscriptions.insert(filter.clone(), options);
            granted.push((filter, options, existed));
        }
        let session = client
            .attached
            .as_ref()
            .filter(|a| !a.detaching)
            .map(|a| a.session.clone());
        let now = Instant::now();
        if let Some((filter, in_packet)) = over_limit {
            if let Some(refused) = self.limit_refusals.events(in_packet, now) {
                // Its first 200 characters: a filter may be 65,535 bytes long.
                let filter: String = filter.chars().take(200).collect();
                warn!(client_id = %client_id, filter = %filter, in_packet, refused, limit = max_subscriptions, "subscription refused: limit of subscriptions per client");
            }
        }
        let mut retained = Vec::new();
        let mut expired = Vec::new();
        for (filter, options, existed) in &granted {
            // Retained messages are not sent for shared subscriptions (section 4.8.2).
            if matches!(parse_shared(filter), Some(Ok(_))) {
                continue;
            }
            // [MQTT-3.8.4-3] (3.1.1) retained messages are sent for every subscription;
            // (5.0) per Retain Handling [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11].
            let send = match options.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            if send {
                self.retained.for_each_match(filter, |m| {
                    if m.is_expired(now) {
                        // [MQTT-3.3.2-5] an expired retained message is not sent, and goes.
                        expired.push(m.topic.clone());
                        return;
                    }
                    // [MQTT-3.3.1-8] RETAIN 1 for a message sent because of a subscription.
                    retained.push(
                        Delivery::new(m.clone(), m.qos.min(options.qos), true)
                            .with_extras(options.id.into_iter().collect(), None),
                    );
                });
            }
        }
        for topic in expired {
            self.remove_retained(&topic);
        }
        // Under the write lock, in this order: (1) taking it means whatever the workers matched
        // for this client under the old table is in its mailbox, ahead of the SUBACK; (2) the
        // SUBACK; (3) the retained messages; (4) the new subscriptions, so that a live message
        // they match comes after the retained ones it replaces.
        // A kept session's subscriptions are durable before the SUBACK acknowledges them, and
        // so are its QoS 1/2 retained messages (a `Queued` record each, as for any delivery to
        // it) before they go out: one in flight when the broker dies is sent again
        // [MQTT-4.4.0-1].
        let persisted = self.client(msg.key).is_some_and(|c| c.persisted);
        let after = match (&self.store, persisted) {
            (Some(store), true) if !granted.is_empty() => {
                let subscriptions = granted
                    .iter()
                    .map(|(filter, options, _)| Record::Subscribe {
                        client_id: client_id.to_string(),
                        filter: filter.clone(),
                        options: *options,
                    });
                let queued: Vec<Record> = retained
                    .iter_mut()
                    .filter_map(|delivery| queued_record(store, &client_id, delivery))
                    .collect();
                store.submit_all(subscriptions.chain(queued))
            }
            _ => 0,
        };
        let mut table = self.routes.write();
        if let Some(session) = &session {
            session.send(ToSession::Subscribed(Subscribed {
                pid: msg.pid,
                codes,
                after,
            }));
            if !retained.is_empty() {
                session.send(ToSession::Deliver(Deliver {
                    deliveries: std::mem::take(&mut retained),
                    after,
                    retained: true,
                    settlement: None,
                }));
            }
        }
        for (filter, options, _) in &granted {
            table.subscribe(filter, msg.key, *options);
        }
        drop(table);
        // Not connected any more (detaching): its retained messages are held like any delivery.
        for delivery in retained {
            self.deliver(msg.key, delivery, ctx);
        }
        for (filter, options, existed) in granted {
            self.filter_watch.held(&client_id, &filter, !existed);
            info!(client_id = %client_id, filter = %filter, qos = options.qos as u8, "client subscribed");
            let event = ClientSubscribed {
                client_id: client_id.clone(),
                filter,
                qos: options.qos,
            };
            for hook in &self.hooks.subscribed {
                hook.do_send(event.clone());
            }
        }
        self.filter_watch.flush();
    }
}

impl Registry {
    /// Takes an UNSUBSCRIBE (after any SUBSCRIBE of the client's that waits for the cluster).
    pub(super) fn unsubscribe_now(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        // As for a SUBSCRIBE: what was routed, and the answers to bursts, before the UNSUBACK.
        self.flush_all();
        let Some(client) = self.attached_client(msg.key, msg.conn) else {
            return;
        };
        let client_id = client.id.clone();
        let mut codes = Vec::with_capacity(msg.filters.len());
        let mut removed = Vec::new();
        for filter in msg.filters {
            if client.subscriptions.remove(&filter).is_some() {
                codes.push(0x00);
                removed.push(filter);
            } else {
                codes.push(0x11); // No subscription existed
            }
        }
        let session = client.attached.as_ref().map(|a| a.session.clone());
        // Out of the route table first: nothing matched by a removed filter follows the UNSUBACK.
        let mut table = self.routes.write();
        for filter in &removed {
            table.unsubscribe(filter, msg.key);
        }
        drop(table);
        let persisted = self.client(msg.key).is_some_and(|c| c.persisted);
        let after = match (&self.store, persisted) {
            (Some(store), true) if !removed.is_empty() => {
                store.submit_all(removed.iter().map(|filter| Record::Unsubscribe {
                    client_id: client_id.to_string(),
                    filter: filter.clone(),
                }))
            }
            _ => 0,
        };
        if let Some(session) = session {
            session.send(ToSession::Unsubscribed(Unsubscribed {
                pid: msg.pid,
                codes,
                after,
            }));
        }
        for filter in &removed {
            self.filter_watch.released(&client_id, filter);
        }
        self.filter_watch.flush();
        for filter in removed {
            info!(client_id = %client_id, filter = %filter, "client unsubscribed");
            let event = ClientUnsubscribed {
                client_id: client_id.clone(),
                filter,
            };
            for hook in &self.hooks.unsubscribed {
                hook.do_send(event.clone());
            }
        }
    }
}
