//! The cluster's retained messages on a node that starts, or comes back to NATS after losing
//! it: it asks one running node (the sync subject's queue group) for all of them, and that node
//! sends them to its inbox, then the count. What came live meanwhile, and what this node set
//! itself while cut off from NATS, is newer than the answer and stays.

use std::collections::HashSet;

use actix::prelude::*;
use tracing::info;

use super::{ClusterLink, SYNC_WAIT};
use crate::cluster::envelope::{ClusterMessage, Envelope};
use crate::registry::ListRetained;

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
        let answer = async move {
            let Ok(page) = registry.send(list).await else {
                return;
            };
            let mut count = 0u64;
            let now = std::time::Instant::now();
            for message in page.items.into_iter().filter(|m| !m.is_expired(now)) {
                let envelope = Envelope::Message(ClusterMessage::retained(&message, now)).encode();
                if envelope.len() <= max_payload && nats.publish(inbox.clone(), envelope).await {
                    count += 1;
                }
            }
            let end = Envelope::SyncEnd { node: me, count }.encode();
            nats.publish(inbox, end).await;
            info!(to = %node, retained = count, "cluster: sent this node's retained messages to a node that asked (starting, or back on NATS)");
        };
        ctx.spawn(answer.into_actor(self));
    }
}
