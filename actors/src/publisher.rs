//! The Publisher actor: publishes through a managed connection on demand or on an interval.

use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use switchboard_mqtt::QoS;
use tracing::warn;

use crate::connection::{Enqueue, ManagedConnection};
use crate::events::{EnqueueError, MessageId};

/// Sent by the application to a [`Publisher`]: publish one message. Answers its id once queued.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<MessageId, EnqueueError>")]
pub struct Publish {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
}

/// Sent by the application to a [`Publisher`]: publish what `make` returns every `interval`
/// (first after one interval), until the Publisher stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PublishEvery {
    /// Period.
    pub interval: Duration,
    /// Builds the next message.
    pub make: Box<dyn FnMut() -> Publish + Send>,
}

/// Publishes through a [`ManagedConnection`].
pub struct Publisher {
    connection: Addr<ManagedConnection>,
}

impl Publisher {
    /// A Publisher on this connection.
    pub fn new(connection: Addr<ManagedConnection>) -> Self {
        Publisher { connection }
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;
}

fn enqueue(p: Publish) -> Enqueue {
    Enqueue {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: None,
        expiry: None,
    }
}

impl Handler<Publish> for Publisher {
    type Result = ResponseFuture<Result<MessageId, EnqueueError>>;

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) -> Self::Result {
        let send = self.connection.send(enqueue(msg));
        Box::pin(async move { send.await.unwrap_or(Err(EnqueueError::Stopping)) })
    }
}

impl Handler<PublishEvery> for Publisher {
    type Result = ();

    fn handle(&mut self, mut msg: PublishEvery, ctx: &mut Context<Self>) {
        ctx.run_interval(msg.interval, move |act, _| {
            let next = enqueue((msg.make)());
            let send = act.connection.send(next);
            actix_rt::spawn(async move {
                if let Ok(Err(e)) = send.await {
                    warn!(error = %e, "periodic publish not queued");
                }
            });
        });
    }
}
