//! The subscribe barrier, on the link (`cluster::barrier` keeps the books): this node's
//! SUBSCRIBEs wait for the other nodes' answers ([`AwaitInterest`] from the Registry), and this
//! node answers the other nodes' asks once its local client's SUBACKs came back.

use std::time::{Duration, Instant};

use actix::prelude::*;
use switchboard_actors::{QoS, Subscribe};
use tracing::warn;

use super::ClusterLink;
use crate::cluster::barrier::AskOutcome;
use crate::cluster::envelope::Envelope;
use crate::cluster::interest::{plain_filter, InterestChange};
use crate::registry::AwaitInterest;

/// How long past its wait a filter asked for is kept if the Registry does not take its
/// SUBSCRIBE (it was dropped with its connection, or the Registry is slow to take it).
const KEEP_ASKED: Duration = Duration::from_secs(10);

impl Handler<AwaitInterest> for ClusterLink {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: AwaitInterest, ctx: &mut Context<Self>) -> Self::Result {
        // Held (and announced) as subscribed, a shared group with its `$share/{group}/`; asked
        // for by the plain filter, which the other nodes forward.
        let mut changes = Vec::new();
        let kept_until = Instant::now() + self.env.subscribe_wait + KEEP_ASKED;
        let mut filters: Vec<String> = Vec::new();
        for filter in &msg.filters {
            let plain = plain_filter(filter);
            if plain.starts_with('$') {
                continue; // `$SYS` and the like stay on each node
            }
            changes.extend(self.interest.add(filter, &self.env.subjects));
            self.asked_recently.ask(filter, kept_until);
            if !filters.iter().any(|f| f == plain) {
                filters.push(plain.to_string());
            }
        }
        let mut new: Vec<String> = Vec::new();
        for change in &changes {
            if let InterestChange::Holds(filter) = change {
                let plain = plain_filter(filter);
                if !new.iter().any(|f| f == plain) {
                    new.push(plain.to_string());
                }
            }
        }
        // Announced first: the other nodes subscribe to what they hear of before the ask.
        self.apply(changes, ctx);
        if !self.status().is_connected() {
            // Nobody would answer; what the other nodes publish meanwhile is not forwarded.
            return Box::pin(async {});
        }
        let nodes = self.remote.nodes().into_iter().map(|(node, _)| node);
        match self.asks.ask(&filters, new, nodes) {
            AskOutcome::Ready => Box::pin(async {}),
            AskOutcome::Wait { done, ask } => {
                self.env.metrics.cluster.add_subscribe_wait();
                if let Some((id, filters)) = ask {
                    let envelope = Envelope::InterestAsk {
                        node: self.env.node.clone(),
                        id,
                        filters,
                    };
                    self.queue_envelope(self.env.subjects.interest(), envelope, ctx);
                    ctx.run_later(self.env.subscribe_wait, move |act, _| act.expire_ask(id));
                }
                Box::pin(async move {
                    let _ = done.await;
                })
            }
        }
    }
}

impl ClusterLink {
    /// Another node asks: subscribe locally to its filters (again: the SUBACK of this one says
    /// every earlier subscription is in place too), and answer once they are acknowledged.
    pub(super) fn on_ask(&mut self, node: String, id: u64, filters: Vec<String>) {
        self.asks.heard_from(&node);
        if self.answers.take(node.clone(), id, &filters) {
            self.answer(node, id);
            return;
        }
        let Some(local) = &self.local else { return };
        for filter in filters {
            local.do_send(Subscribe {
                filter,
                qos: QoS::ExactlyOnce,
            });
        }
    }

    /// A SUBACK for the link's local subscription to `filter`: answers the asks it completes.
    pub(super) fn on_granted(&mut self, filter: &str) {
        for (node, id) in self.answers.granted(filter) {
            self.answer(node, id);
        }
    }

    fn answer(&mut self, node: String, id: u64) {
        let ready = Envelope::InterestReady {
            node: self.env.node.clone(),
            id,
        };
        self.publish_now(self.env.subjects.inbox_of(&node), &ready);
    }

    fn expire_ask(&mut self, id: u64) {
        let late = self.asks.expire(id);
        if !late.is_empty() {
            self.env.metrics.cluster.add_subscribe_wait_timeout();
            warn!(nodes = ?late, wait = ?self.env.subscribe_wait, "cluster: nodes did not confirm a new subscription in time; its SUBACK went out without them, and they are not waited for until heard from again");
        }
    }
}
