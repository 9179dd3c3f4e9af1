//! The other nodes' liveness, on the link (`cluster::liveness` keeps the books): this node says
//! it is alive, forgets a node silent for `cluster.node_timeout`, and asks a node whose filters
//! it pictures differently to announce them all again.

use std::time::Instant;

use actix::prelude::*;
use tracing::{info, warn};

use super::ClusterLink;
use crate::cluster::envelope::Envelope;

impl ClusterLink {
    /// Starts saying this node is alive, and watching the others.
    pub(super) fn watch_liveness(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.liveness.interval(), |act, ctx| act.liveness_tick(ctx));
    }

    fn liveness_tick(&mut self, ctx: &mut Context<Self>) {
        self.stop_waiting_for_dropped(Instant::now());
        if !self.status().is_connected() {
            // Nothing is heard while NATS is down: the others are judged once it is back.
            return;
        }
        // While all this node's filters are announced again, the others picture a part of
        // them until the last slice: a count and digest of all of them now would have them
        // ask for everything again.
        if self.announcing.is_none() {
            debug_assert_eq!(
                self.interest.digest(),
                crate::cluster::liveness::digest(self.interest.filters()),
                "the running digest of this node's filters"
            );
            let alive = Envelope::Alive {
                node: self.env.node.clone(),
                filters: self.interest.len() as u64,
                digest: self.interest.digest(),
            };
            self.queue_envelope(self.env.subjects.interest(), alive, ctx);
        }
        self.judge_silent();
    }

    /// Forgets the nodes not heard from within `cluster.node_timeout`.
    fn judge_silent(&mut self) {
        for node in self.liveness.silent(Instant::now()) {
            self.env.metrics.cluster.add_node_timed_out();
            warn!(%node, timeout = ?self.env.node_timeout, "cluster: a node was not heard from within cluster.node_timeout; its filters are dropped until it speaks again");
            self.forget_node(&node);
        }
    }

    /// `node` spoke: it is alive.
    pub(super) fn heard(&mut self, node: &str) {
        self.asks.heard_from(node);
        self.liveness.heard(node, Instant::now());
    }

    /// `node` left (its goodbye, or silence): its filters go, and nothing waits for it.
    pub(super) fn forget_node(&mut self, node: &str) {
        self.liveness.gone(node);
        self.asks.gone(node);
        let changes = self.remote.forget(node);
        self.change_local(changes);
    }

    /// NATS is back: every node known gets a whole timeout to be heard from again.
    pub(super) fn hear_all_again(&mut self) {
        let now = Instant::now();
        for (node, _) in self.remote.nodes() {
            self.liveness.heard(&node, now);
        }
    }

    /// `node` says it holds `filters` filters of digest `digest`: if this node pictures them
    /// otherwise (an announcement was lost, or the node had been forgotten), it asks for all
    /// of them again.
    pub(super) fn check_picture(&mut self, node: String, filters: u64, digest: u64) {
        if self.remote.picture_of(&node) == Some((filters, digest)) {
            return;
        }
        info!(%node, filters, "cluster: this node's picture of a node's filters differs from its own; asking it for all of them");
        let resync = Envelope::Resync {
            node: self.env.node.clone(),
        };
        self.publish_now(self.env.subjects.inbox_of(&node), &resync);
    }

    /// `node` asks this one to announce all its filters again (at most once per timeout).
    pub(super) fn on_resync(&mut self, node: &str, ctx: &mut Context<Self>) {
        if self.liveness.resync_due(Instant::now()) {
            info!(from = %node, "cluster: announcing all filters again");
            self.join(ctx);
        }
    }
}
