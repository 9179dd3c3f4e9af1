//! The cluster's retained messages on a node that starts, or comes back to NATS after losing
//! it: it asks one running node (the sync subject's queue group) for all of them, and that node
//! sends them to its inbox, then the topics whose retained message it last saw cleared
//! (`cluster::cleared`), then the count. What came live meanwhile, and what this node set or
//! cleared itself while cut off from NATS, is newer than the answer and stays.

use std::collections::HashSet;

use actix::prelude::*;
use bytes::Bytes;
use switchboard_actors::{Enqueue, QoS};
use tracing::info;

use super::{ClusterLink, SYNC_WAIT};
use crate::cluster::envelope::{ClusterMessage, Envelope};
use crate::registry::{ListRetained, RetainedAmong};

/// The bytes of topics one [`Envelope::RetainCleared`] carries at most, below any NATS
/// server's `max_payload` (1 MB by default).
const CLEARED_CHUNK: usize = 64 * 1024;

impl ClusterLink {
    /// Asks one running node for the cluster's retained messages; the topics in `newer` (set
    /// here while cut off) are not taken from the answer.
    pub(super) fn request_sync(&mut self, newer: HashSet<String>, ctx: &mut Context<Self>) {
        if self.nats.is_none() {
            return;
        }
        self.syncing = Some(newer);
        self.sync_round += 1;
        let round = self.sync_round;
        // No node may be running: stop guarding after a while.
        ctx.run_later(SYNC_WAIT, move |act, _| {
            if act.sync_round == round {
                act.syncing = None;
            }
        });
        let request = Envelope::SyncRequest {
            node: self.env.node.clone(),
        };
        self.publish_now(self.env.subjects.sync(), &request);
    }

    /// Another node asks for the retained messages: sent to its inbox, then the count.
    pub(super) fn answer_sync(&mut self, node: String, ctx: &mut Context<Self>) {
        let Some(nats) = self.nats.clone() else {
            return;
        };
        let me = self.env.node.clone();
        let inbox = self.env.subjects.inbox_of(&node);
        let list = ListRetained {
            filter: "#".to_string(),
            offset: 0,
            limit: usize::MAX,
        };
        let registry = self.env.registry.clone();
        let max_payload = self.max_payload;
        let mut cleared: HashSet<String> = self.cleared.topics().map(str::to_string).collect();
        let answer = async move {
            let Ok(page) = registry.send(list).await else {
                return;
            };
            let mut count = 0u64;
            let now = std::time::Instant::now();
            for message in page.items.into_iter().filter(|m| !m.is_expired(now)) {
                // Set again since the list of cleared topics was taken: not cleared.
                cleared.remove(&message.topic);
                let envelope = Envelope::Message(ClusterMessage::retained(&message, now)).encode();
                if envelope.len() <= max_payload && nats.publish(inbox.clone(), envelope).await {
                    count += 1;
                }
            }
            let cleared_count = cleared.len();
            for topics in cleared_chunks(cleared.into_iter(), CLEARED_CHUNK.min(max_payload / 2)) {
                let envelope = Envelope::RetainCleared {
                    node: me.clone(),
                    topics,
                };
                nats.publish(inbox.clone(), envelope.encode()).await;
            }
            let end = Envelope::SyncEnd { node: me, count }.encode();
            nats.publish(inbox, end).await;
            info!(to = %node, retained = count, cleared = cleared_count, "cluster: sent this node's retained messages to a node that asked (starting, or back on NATS)");
        };
        ctx.spawn(answer.into_actor(self));
    }

    /// Part of an answer to this node's sync request: `topics` whose retained message `node`
    /// last saw cleared. Those set or cleared here since this node lost NATS, or that came
    /// live meanwhile, are newer and stay; the others are cleared here too where this node
    /// holds a retained message for them, as a publisher's empty retained message would
    /// [MQTT-3.3.1-10], through the link's local client (in order with what it publishes
    /// from the other nodes). Nothing outside a sync this node asked for.
    pub(super) fn take_cleared(
        &mut self,
        node: &str,
        topics: Vec<String>,
        ctx: &mut Context<Self>,
    ) {
        let Some(newer) = &self.syncing else {
            return;
        };
        let topics: Vec<String> = topics
            .into_iter()
            .filter(|topic| !newer.contains(topic))
            .collect();
        for topic in &topics {
            self.cleared.note(topic, true);
        }
        let from = node.to_string();
        self.env
            .registry
            .send(RetainedAmong(topics))
            .into_actor(self)
            .map(move |held, act, _| {
                let (Ok(held), Some(local)) = (held, &act.local) else {
                    return;
                };
                let mut count = 0usize;
                // Set here or from another node since the answer came: not cleared any more.
                for topic in held.into_iter().filter(|t| act.cleared.contains(t)) {
                    count += 1;
                    local.do_send(Enqueue {
                        topic,
                        payload: Bytes::new(),
                        qos: QoS::AtMostOnce,
                        retain: true,
                        properties: None,
                        expiry: None,
                    });
                }
                if count > 0 {
                    info!(from = %from, retained_cleared = count, "cluster: cleared the retained messages the cluster cleared while this node was away");
                }
            })
            .spawn(ctx);
    }
}

/// `topics` in lists of at most `bytes` bytes of topic (one topic per list at least).
fn cleared_chunks(topics: impl Iterator<Item = String>, bytes: usize) -> Vec<Vec<String>> {
    let mut chunks = Vec::new();
    let (mut chunk, mut size) = (Vec::new(), 0);
    for topic in topics {
        // Each topic also takes its 4-byte length.
        let cost = topic.len() + 4;
        if !chunk.is_empty() && size + cost > bytes {
            chunks.push(std::mem::take(&mut chunk));
            size = 0;
        }
        size += cost;
        chunk.push(topic);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::cleared_chunks;

    #[test]
    fn cleared_topics_go_in_chunks_of_at_most_the_bytes_given() {
        let topics: Vec<String> = (0..100).map(|n| format!("gate/{n:03}/state")).collect();
        // 14 bytes a topic, 18 with its length: 5 a chunk in 100 bytes.
        let chunks = cleared_chunks(topics.clone().into_iter(), 100);
        assert_eq!(chunks.len(), 20);
        assert!(chunks.iter().all(|c| c.len() == 5));
        assert_eq!(chunks.concat(), topics);
        // A topic larger than a chunk still goes, alone.
        let big = "t/".repeat(100);
        let chunks = cleared_chunks([big.clone(), "a".into()].into_iter(), 50);
        assert_eq!(chunks, vec![vec![big], vec!["a".to_string()]]);
        assert!(cleared_chunks(std::iter::empty(), 50).is_empty());
    }
}
