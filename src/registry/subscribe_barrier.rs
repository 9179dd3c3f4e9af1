//! Holding a SUBSCRIBE until the cluster takes its filters (`[cluster]`, `subscribe_wait`).
//!
//! On one broker, a message published after a SUBACK reaches the new subscription. In a cluster
//! the other nodes forward only what some node's clients hold, and they learn of a new filter
//! over NATS. So the Registry asks the cluster link ([`AwaitInterest`]) before it takes a
//! SUBSCRIBE, and takes it (the route table, the SUBACK, the retained messages, in their usual
//! order) once the link answers: every other node forwards the filters by then, or did not
//! answer within the wait. The client's later SUBSCRIBEs, UNSUBSCRIBEs and PUBLISHes (its
//! Session hands its bursts to the Registry while a SUBSCRIBE waits) wait behind it, so they
//! still take effect in the order the client sent them.

use std::collections::VecDeque;

use actix::prelude::*;

use super::{Publish, Registry, Subscribe, Unsubscribe, CLUSTER_CLIENT_ID};

/// Sent by the Registry to the cluster link for each SUBSCRIBE of a client other than the
/// link's own local client; the link answers once every other node it knows of forwards
/// `filters` to this one, or once `cluster.subscribe_wait` ran out.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AwaitInterest {
    /// The SUBSCRIBE's accepted filters, as the client sent them.
    pub filters: Vec<String>,
}

/// Sent by the cluster link to the Registry at start (unless `cluster.subscribe_wait` is 0):
/// take each SUBSCRIBE only once the link answered its [`AwaitInterest`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct HoldSubscribes(pub Recipient<AwaitInterest>);

/// A client's request waiting behind its earlier SUBSCRIBE's [`AwaitInterest`].
pub(super) enum Held {
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    /// A burst its Session handed over while the SUBSCRIBE waited: routed after it.
    Publish(Publish),
}

impl Handler<HoldSubscribes> for Registry {
    type Result = ();

    fn handle(&mut self, msg: HoldSubscribes, _: &mut Context<Self>) {
        self.subscribe_barrier = Some(msg.0);
    }
}

impl Handler<Subscribe> for Registry {
    type Result = ();

    fn handle(&mut self, mut msg: Subscribe, ctx: &mut Context<Self>) {
        // Counted until the change is in the table, or held for the cluster (bursts of other
        // clients are not held behind it: they need not wait).
        let _on_its_way = msg.on_its_way.take();
        if let Some(waiting) = self.behind_barrier.get_mut(&msg.key) {
            waiting.push_back(Held::Subscribe(msg));
            return;
        }
        if let Some(msg) = self.await_interest(msg, ctx) {
            self.subscribe_now(msg, ctx);
        }
    }
}

impl Handler<Unsubscribe> for Registry {
    type Result = ();

    fn handle(&mut self, mut msg: Unsubscribe, ctx: &mut Context<Self>) {
        let _on_its_way = msg.on_its_way.take();
        match self.behind_barrier.get_mut(&msg.key) {
            Some(waiting) => waiting.push_back(Held::Unsubscribe(msg)),
            None => self.unsubscribe_now(msg, ctx),
        }
    }
}

impl Registry {
    /// Asks the cluster link for `msg`'s filters and takes it once answered; or hands it back
    /// to be taken now (no cluster, the link's own client, or a connection that is gone, which
    /// [`Registry::subscribe_now`] ignores).
    fn await_interest(&mut self, msg: Subscribe, ctx: &mut Context<Self>) -> Option<Subscribe> {
        let Some(barrier) = self.subscribe_barrier.clone() else {
            return Some(msg);
        };
        let from_link = match self.attached_client(msg.key, msg.conn) {
            Some(client) => &*client.id == CLUSTER_CLIENT_ID,
            None => return Some(msg),
        };
        if from_link || msg.filters.is_empty() {
            return Some(msg);
        }
        let key = msg.key;
        self.behind_barrier.insert(key, VecDeque::new());
        let filters = msg.filters.iter().map(|(_, f, _)| f.clone()).collect();
        ctx.spawn(
            barrier
                .send(AwaitInterest { filters })
                .into_actor(self)
                // Answered, or the link is gone (shutting down): either way it goes on.
                .map(move |_, act, ctx| {
                    act.subscribe_now(msg, ctx);
                    act.release_held(key, ctx);
                }),
        );
        None
    }

    /// Takes what `key`'s client sent after a SUBSCRIBE that waited, up to the next SUBSCRIBE
    /// that waits in turn.
    fn release_held(&mut self, key: crate::routing::ClientKey, ctx: &mut Context<Self>) {
        loop {
            let Some(next) = self.behind_barrier.get_mut(&key).map(VecDeque::pop_front) else {
                return;
            };
            match next {
                None => {
                    self.behind_barrier.remove(&key);
                    return;
                }
                Some(Held::Unsubscribe(msg)) => self.unsubscribe_now(msg, ctx),
                Some(Held::Publish(msg)) => self.publish_now(msg, ctx),
                Some(Held::Subscribe(msg)) => {
                    // Its own wait keeps the rest behind it.
                    let waiting = self.behind_barrier.remove(&key).unwrap_or_default();
                    match self.await_interest(msg, ctx) {
                        Some(msg) => {
                            self.behind_barrier.insert(key, waiting);
                            self.subscribe_now(msg, ctx);
                        }
                        None => {
                            if let Some(queue) = self.behind_barrier.get_mut(&key) {
                                queue.extend(waiting);
                            }
                            return;
                        }
                    }
                }
            }
        }
    }
}
