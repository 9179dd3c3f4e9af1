//! What other actors ask of the connection: enqueue a publish, subscribe, unsubscribe, listen to
//! its events, report its pending count and subscriptions, stop.

use actix::prelude::*;
use mqttbytes::v4;
use tokio::sync::oneshot;
use tracing::warn;

use super::messages::{
    Acknowledge, AddListener, Enqueue, GetSubscriptions, PendingCount, Stop, StopReport, Subscribe,
    Unsubscribe,
};
use super::{Link, ManagedConnection, SubscriptionState};
use crate::codec::write_unsubscribe_v5;
use crate::events::{ConnectionEvent, DropReason, EnqueueError, MessageId};
use crate::queue::{Outgoing, PushOutcome};
use switchboard_mqtt::codec::{write_ack, Ack};
use switchboard_mqtt::QoS;

impl Handler<Enqueue> for ManagedConnection {
    type Result = Result<MessageId, EnqueueError>;

    fn handle(&mut self, msg: Enqueue, ctx: &mut Context<Self>) -> Self::Result {
        if self.stopping.is_some() {
            return Err(EnqueueError::Stopping);
        }
        if switchboard_mqtt::topic::validate_topic_name(&msg.topic).is_err() {
            return Err(EnqueueError::InvalidTopic);
        }
        let id = self.next_id;
        self.next_id += 1;
        let message = Outgoing {
            id,
            topic: msg.topic,
            payload: msg.payload,
            qos: msg.qos,
            retain: msg.retain,
            properties: msg.properties,
            expires_at: msg
                .expiry
                .map(|s| std::time::Instant::now() + std::time::Duration::from_secs(u64::from(s))),
        };
        let durable_copy = self.durable.is_some().then(|| message.clone());
        let result = match self.queue.push(message) {
            PushOutcome::Queued => Ok(id),
            PushOutcome::QueuedDropping(oldest) => {
                self.dropped(oldest.id, DropReason::QueueOverflow);
                Ok(id)
            }
            PushOutcome::Dropped(newest) => {
                self.emit(ConnectionEvent::MessageDropped(
                    newest.id,
                    DropReason::QueueOverflow,
                ));
                return Ok(id);
            }
            PushOutcome::Refused(_) => return Err(EnqueueError::QueueFull),
        };
        if let (Some(log), Some(message)) = (&mut self.durable, durable_copy) {
            if let Err(e) = log.add(&message) {
                warn!(error = %e, "cannot write the durable queue; the message is kept in memory only");
            }
        }
        self.pump();
        self.flush(ctx);
        result
    }
}

impl Handler<Acknowledge> for ManagedConnection {
    type Result = ();

    fn handle(&mut self, Acknowledge(token): Acknowledge, ctx: &mut Context<Self>) {
        if token.generation != self.generation || self.link != Link::Up {
            return; // that link is gone: the broker sends the message again
        }
        let ack = match token.qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Ack::PubAck,
            QoS::ExactlyOnce => Ack::PubRec,
        };
        write_ack(&mut self.out, ack, token.pid);
        self.flush(ctx);
    }
}

impl Handler<PendingCount> for ManagedConnection {
    type Result = usize;

    fn handle(&mut self, _: PendingCount, _: &mut Context<Self>) -> usize {
        self.pending()
    }
}

impl Handler<Subscribe> for ManagedConnection {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) {
        if switchboard_mqtt::topic::validate_filter(&msg.filter).is_err() {
            warn!(filter = %msg.filter, "invalid topic filter; not subscribed");
            return;
        }
        self.subscriptions.insert(
            msg.filter.clone(),
            SubscriptionState {
                requested: msg.qos,
                granted: None,
            },
        );
        self.send_subscribe(vec![(msg.filter, msg.qos)]);
        self.flush(ctx);
    }
}

impl Handler<Unsubscribe> for ManagedConnection {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Context<Self>) {
        if self.subscriptions.remove(&msg.filter).is_none() || self.link != Link::Up {
            return;
        }
        let pid = self.allocate_pid();
        if self.options.protocol.is_v5() {
            write_unsubscribe_v5(&mut self.out, pid, &[msg.filter]);
            return self.flush(ctx);
        }
        let unsubscribe = v4::Unsubscribe {
            pkid: pid,
            topics: vec![msg.filter],
        };
        if let Err(e) = unsubscribe.write(&mut self.out) {
            warn!(error = ?e, "cannot encode UNSUBSCRIBE");
        }
        self.flush(ctx);
    }
}

impl Handler<GetSubscriptions> for ManagedConnection {
    type Result = MessageResult<GetSubscriptions>;

    fn handle(&mut self, _: GetSubscriptions, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.subscriptions.clone())
    }
}

impl Handler<AddListener> for ManagedConnection {
    type Result = ();

    fn handle(&mut self, msg: AddListener, _: &mut Context<Self>) {
        if self.link == Link::Up {
            // A late listener learns the current state.
            msg.0.do_send(ConnectionEvent::Connected {
                session_present: self.session_present,
                broker: self.attempt_broker.clone(),
            });
        }
        self.listeners.push(msg.0);
    }
}

impl Handler<Stop> for ManagedConnection {
    type Result = ResponseFuture<StopReport>;

    fn handle(&mut self, msg: Stop, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        if self.stopping.is_none() {
            self.stopping = Some(reply);
            ctx.run_later(msg.deadline, |act, ctx| act.finish_stop(ctx));
            self.check_stop(ctx);
        }
        Box::pin(async move { answer.await.unwrap_or_default() })
    }
}
