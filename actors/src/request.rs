//! Request/response over MQTT 3.1.1: the request's JSON payload carries a correlation id, the
//! responder copies it into its answer, and a request with no answer within the timeout is
//! reported as timed out.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use switchboard::topic::SubscriptionTrie;
use switchboard::QoS;
use thiserror::Error;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::connection::{AddListener, Enqueue, ManagedConnection, Subscribe};
use crate::events::{ConnectionEvent, EnqueueError};

/// The JSON payload of requests and responses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Copied from request to response; `None` on a request that did not carry one.
    pub correlation_id: Option<String>,
    /// The request or response itself.
    pub body: serde_json::Value,
}

/// Why a [`Request`] got no answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    /// No response within the timeout.
    #[error("no response on {topic} within {after:?}")]
    Timeout {
        /// Request topic.
        topic: String,
        /// The timeout.
        after: Duration,
    },
    /// The connection did not take the request.
    #[error("request not sent: {0}")]
    Rejected(EnqueueError),
    /// The Requester or its connection stopped.
    #[error("requester stopped")]
    Stopped,
}

/// Sent by the application to a [`Requester`]: publish `body` to `topic` and answer the response's
/// body.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<serde_json::Value, RequestError>")]
pub struct Request {
    /// Request topic, e.g. `detrd/status/request/1AB.ENTER.DETRD`.
    pub topic: String,
    /// Request body.
    pub body: serde_json::Value,
}

/// Sends requests and matches responses by correlation id.
pub struct Requester {
    connection: Addr<ManagedConnection>,
    response_filter: String,
    matcher: SubscriptionTrie<u8, ()>,
    timeout: Duration,
    prefix: String,
    next: u64,
    waiting: HashMap<String, oneshot::Sender<serde_json::Value>>,
}

impl Requester {
    /// A Requester that listens for responses on `response_filter` (e.g.
    /// `detrd/status/response/+`) and waits `timeout` for each.
    pub fn new(
        connection: Addr<ManagedConnection>,
        response_filter: &str,
        timeout: Duration,
    ) -> Self {
        let mut matcher = SubscriptionTrie::new();
        if switchboard::topic::validate_filter(response_filter).is_ok() {
            matcher.insert(response_filter, 0, ());
        }
        Requester {
            connection,
            response_filter: response_filter.to_string(),
            matcher,
            timeout,
            prefix: format!("{:08x}", fastrand::u32(..)),
            next: 0,
            waiting: HashMap::new(),
        }
    }
}

impl Actor for Requester {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.connection
            .do_send(AddListener(ctx.address().recipient()));
        self.connection.do_send(Subscribe {
            filter: self.response_filter.clone(),
            qos: QoS::AtLeastOnce,
        });
    }
}

impl Handler<Request> for Requester {
    type Result = ResponseActFuture<Self, Result<serde_json::Value, RequestError>>;

    fn handle(&mut self, msg: Request, _: &mut Context<Self>) -> Self::Result {
        self.next += 1;
        let id = format!("{}-{}", self.prefix, self.next);
        let envelope = Envelope {
            correlation_id: Some(id.clone()),
            body: msg.body,
        };
        let payload = serde_json::to_vec(&envelope).unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(id.clone(), tx);
        let send = self
            .connection
            .send(Enqueue::new(msg.topic.clone(), payload, QoS::AtLeastOnce));
        let (timeout, topic) = (self.timeout, msg.topic);
        let wait = async move {
            match send.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(RequestError::Rejected(e)),
                Err(_) => return Err(RequestError::Stopped),
            }
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(body)) => Ok(body),
                Ok(Err(_)) => Err(RequestError::Stopped),
                Err(_) => Err(RequestError::Timeout {
                    topic,
                    after: timeout,
                }),
            }
        };
        Box::pin(wait.into_actor(self).map(move |result, act, _| {
            act.waiting.remove(&id);
            if let Err(e) = &result {
                warn!(correlation_id = %id, error = %e, "request failed");
            }
            result
        }))
    }
}

impl Handler<ConnectionEvent> for Requester {
    type Result = ();

    fn handle(&mut self, event: ConnectionEvent, _: &mut Context<Self>) {
        let ConnectionEvent::MessageReceived(received) = event else {
            return;
        };
        let mut matched = false;
        self.matcher
            .for_each_match(&received.topic, |_, _| matched = true);
        if !matched {
            return;
        }
        let Ok(envelope) = serde_json::from_slice::<Envelope>(&received.payload) else {
            debug!(topic = %received.topic, "response is not a JSON envelope; ignored");
            return;
        };
        let waiter = envelope
            .correlation_id
            .as_ref()
            .and_then(|id| self.waiting.remove(id));
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(envelope.body);
            }
            None => {
                debug!(topic = %received.topic, "response to no pending request (late or foreign)")
            }
        }
    }
}
