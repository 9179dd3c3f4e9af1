//! The Consumer actor: subscribes through a managed connection and forwards each message of its
//! filters to a `Recipient`.

use actix::prelude::*;
use switchboard_mqtt::topic::SubscriptionTrie;
use switchboard_mqtt::QoS;

use crate::connection::{AddListener, ManagedConnection, Subscribe};
use crate::events::{ConnectionEvent, Received};

/// Forwards the messages matching its filters to `sink`.
pub struct Consumer {
    connection: Addr<ManagedConnection>,
    filters: Vec<(String, QoS)>,
    matcher: SubscriptionTrie<u8, ()>,
    sink: Recipient<Received>,
}

impl Consumer {
    /// A Consumer of `filters` on this connection, forwarding to `sink`.
    pub fn new(
        connection: Addr<ManagedConnection>,
        filters: Vec<(String, QoS)>,
        sink: Recipient<Received>,
    ) -> Self {
        let mut matcher = SubscriptionTrie::new();
        for (filter, _) in &filters {
            if switchboard_mqtt::topic::validate_filter(filter).is_ok() {
                matcher.insert(filter, 0, ());
            }
        }
        Consumer {
            connection,
            filters,
            matcher,
            sink,
        }
    }
}

impl Actor for Consumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.connection
            .do_send(AddListener(ctx.address().recipient()));
        for (filter, qos) in &self.filters {
            self.connection.do_send(Subscribe {
                filter: filter.clone(),
                qos: *qos,
            });
        }
    }
}

impl Handler<ConnectionEvent> for Consumer {
    type Result = ();

    fn handle(&mut self, event: ConnectionEvent, _: &mut Context<Self>) {
        if let ConnectionEvent::MessageReceived(received) = event {
            let mut matched = false;
            self.matcher
                .for_each_match(&received.topic, |_, _| matched = true);
            if matched {
                self.sink.do_send(received);
            }
        }
    }
}
