//! Request/response. The request's JSON payload carries a correlation id that the responder
//! copies into its answer (all MQTT 3.1.1 has); on an MQTT 5 connection the request also
//! carries it as Correlation Data with a Response Topic, which MQTT 5 responders answer with.
//! Responses are matched by Correlation Data first, then by the id in the payload, so MQTT 5
//! apps and MQTT 3.1.1 devices (or the reverse) work together. A request with no answer within
//! the timeout is reported as timed out.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use switchboard_mqtt::topic::SubscriptionTrie;
use switchboard_mqtt::{MessageProperties, QoS};
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
    /// Where the responder should answer (sent as the MQTT 5 Response Topic; it should match
    /// the Requester's response filter). `None`: the responder's own convention.
    pub response_topic: Option<String>,
}

impl Request {
    /// A request without a Response Topic.
    pub fn new(topic: impl Into<String>, body: serde_json::Value) -> Self {
        Request {
            topic: topic.into(),
            body,
            response_topic: None,
        }
    }

    /// The same request, asking for the answer on `topic` (MQTT 5 Response Topic).
    pub fn answer_on(mut self, topic: impl Into<String>) -> Self {
        self.response_topic = Some(topic.into());
        self
    }
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
        if switchboard_mqtt::topic::validate_filter(response_filter).is_ok() {
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
        let connection = self.connection.clone();
        let mut enqueue = Enqueue::new(msg.topic.clone(), payload, QoS::AtLeastOnce);
        // The id also goes as Correlation Data, with the Response Topic; the connection sends
        // properties on MQTT 5 only.
        enqueue.properties = Some(Box::new(MessageProperties {
            payload_format: Some(1),
            content_type: Some("application/json".into()),
            response_topic: msg.response_topic,
            correlation_data: Some(id.clone().into_bytes().into()),
            user_properties: Vec::new(),
        }));
        let (timeout, topic) = (self.timeout, msg.topic);
        let wait = async move {
            match connection.send(enqueue).await {
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
        // MQTT 5 Correlation Data first; the body is the envelope's, or the whole JSON payload
        // of a responder that does not wrap it.
        let correlation = received
            .properties
            .as_ref()
            .and_then(|p| p.correlation_data.as_ref())
            .and_then(|data| std::str::from_utf8(data).ok())
            .map(str::to_string);
        let envelope = serde_json::from_slice::<Envelope>(&received.payload).ok();
        let (id, body) = match (correlation, envelope) {
            (Some(id), Some(envelope)) => (Some(id), envelope.body),
            (Some(id), None) => match serde_json::from_slice(&received.payload) {
                Ok(body) => (Some(id), body),
                Err(_) => {
                    debug!(topic = %received.topic, "response is not JSON; ignored");
                    return;
                }
            },
            (None, Some(envelope)) => (envelope.correlation_id, envelope.body),
            (None, None) => {
                debug!(topic = %received.topic, "response is not a JSON envelope; ignored");
                return;
            }
        };
        let waiter = id.as_ref().and_then(|id| self.waiting.remove(id));
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(body);
            }
            None => {
                debug!(topic = %received.topic, "response to no pending request (late or foreign)")
            }
        }
    }
}
