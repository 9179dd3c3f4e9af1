//! Interest between the nodes. This node subscribes on NATS to the subjects of its clients'
//! filters (so NATS brings it what they want) and announces those filters on the interest
//! subject; from the other nodes' announcements the link subscribes locally to what they want
//! (so it reads only the messages some other node takes). A node that (re)connects to NATS says
//! Hello, announces all its filters and then InterestEnd; the others answer with all of theirs.

use std::collections::BTreeMap;
use std::time::Instant;

use actix::prelude::*;
use switchboard_actors::{QoS, Subscribe, Unsubscribe};
use tracing::debug;

use super::ClusterLink;
use crate::cluster::envelope::Envelope;
use crate::cluster::full_announcement::FullAnnouncement;
use crate::cluster::interest::InterestChange;
use crate::cluster::remote::LocalChange;
use crate::registry::{FilterChange, FiltersChanged, ReleaseUnheld, SharedShare, WatchFilters};
use crate::routing::Share;
use crate::topic::parse_shared;

/// Bytes of filters at most in one announcement.
const ANNOUNCEMENT_BYTES: usize = 64 * 1024;

impl ClusterLink {
    /// Applies changes of this node's interest: NATS subscriptions, and an announcement.
    pub(super) fn apply(&mut self, changes: Vec<InterestChange>, ctx: &mut Context<Self>) {
        let filters = self.interest.len();
        self.env
            .metrics
            .cluster
            .change_view(|view| view.filters = filters);
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for change in changes {
            match change {
                InterestChange::Subscribe(sid, subject) => {
                    if let Some(nats) = &self.nats {
                        debug!(%subject, "cluster: this node now takes");
                        nats.subscribe(sid, subject, Some(self.env.subjects.node_group()));
                    }
                }
                InterestChange::Unsubscribe(sid) => {
                    if let Some(nats) = &self.nats {
                        nats.unsubscribe(sid);
                    }
                }
                InterestChange::Holds(filter) => added.push(filter),
                InterestChange::Drops(filter) => removed.push(filter),
            }
        }
        let groups_changed = added
            .iter()
            .chain(&removed)
            .any(|filter| filter.starts_with("$share/"));
        if !added.is_empty() || !removed.is_empty() {
            self.announce(added, removed, ctx);
        }
        if groups_changed {
            self.spread_shared_groups();
        }
    }

    /// Tells the other nodes, in announcements of bounded size.
    fn announce(&mut self, added: Vec<String>, removed: Vec<String>, ctx: &mut Context<Self>) {
        let subject = self.env.subjects.interest();
        let mut part = (Vec::new(), Vec::new(), 0);
        let all = added
            .into_iter()
            .map(|f| (true, f))
            .chain(removed.into_iter().map(|f| (false, f)));
        for (adds, filter) in all {
            part.2 += filter.len() + 4;
            if adds {
                part.0.push(filter);
            } else {
                part.1.push(filter);
            }
            if part.2 >= ANNOUNCEMENT_BYTES {
                let (added, removed, _) = std::mem::take(&mut part);
                self.queue_interest(&subject, added, removed, ctx);
            }
        }
        if part.2 > 0 {
            self.queue_interest(&subject, part.0, part.1, ctx);
        }
    }

    fn queue_interest(
        &mut self,
        subject: &str,
        added: Vec<String>,
        removed: Vec<String>,
        ctx: &mut Context<Self>,
    ) {
        let envelope = Envelope::Interest {
            node: self.env.node.clone(),
            added,
            removed,
        };
        self.queue_envelope(subject.to_string(), envelope, ctx);
    }

    /// Announces every filter this node holds, a slice per turn of the link
    /// ([`ClusterLink::announce_slice`]); from the first again when an announcement of all of
    /// them is under way. With `ends`, InterestEnd follows the last slice.
    pub(super) fn announce_all(&mut self, ends: bool, ctx: &mut Context<Self>) {
        match &mut self.announcing {
            Some(under_way) => under_way.restart(ends),
            None => {
                self.announcing = Some(FullAnnouncement::new(ends));
                self.announce_slice(ctx);
            }
        }
    }

    /// The next slice of the announcement of all filters under way, and, unless that was the
    /// last, the next one after the thread has run its other tasks (the Sessions beside the
    /// link wait a slice, not a fleet).
    fn announce_slice(&mut self, ctx: &mut Context<Self>) {
        let Some(under_way) = self.announcing.as_mut() else {
            return;
        };
        let slice = under_way.next_slice(&self.interest, ANNOUNCEMENT_BYTES);
        let (done, ends) = (under_way.done(), under_way.ends());
        let subject = self.env.subjects.interest();
        if let Some(filters) = slice {
            self.queue_interest(&subject, filters, Vec::new(), ctx);
        }
        if done {
            self.announcing = None;
            if ends {
                let node = self.env.node.clone();
                self.queue_envelope(subject, Envelope::InterestEnd { node }, ctx);
            }
            return;
        }
        tokio::task::yield_now()
            .into_actor(self)
            .map(|(), act, ctx| act.announce_slice(ctx))
            .spawn(ctx);
    }

    /// This node is connected to NATS (again): Hello, all its filters, InterestEnd.
    pub(super) fn join(&mut self, ctx: &mut Context<Self>) {
        let subject = self.env.subjects.interest();
        let node = self.env.node.clone();
        self.queue_envelope(subject, Envelope::Hello { node }, ctx);
        self.announce_all(true, ctx);
    }

    /// An announcement of another node's.
    pub(super) fn on_interest(&mut self, envelope: Envelope, ctx: &mut Context<Self>) {
        let changes = match envelope {
            Envelope::Hello { node } if node != self.env.node => {
                self.heard(&node);
                self.remote.begin(&node);
                // The new node learns what this one holds.
                self.announce_all(false, ctx);
                return;
            }
            Envelope::Interest {
                node,
                added,
                removed,
            } if node != self.env.node => {
                self.heard(&node);
                self.remote.apply(&node, &added, &removed)
            }
            Envelope::InterestEnd { node } if node != self.env.node => {
                self.heard(&node);
                self.remote.end(&node)
            }
            Envelope::Bye { node } if node != self.env.node => {
                self.forget_node(&node);
                return;
            }
            Envelope::InterestAsk { node, id, filters } if node != self.env.node => {
                self.heard(&node);
                self.on_ask(node, id, filters);
                return;
            }
            Envelope::Alive {
                node,
                filters,
                digest,
            } if node != self.env.node => {
                self.heard(&node);
                self.check_picture(node, filters, digest);
                return;
            }
            _ => return,
        };
        self.change_local(changes);
    }

    /// Spreads each shared group that other nodes hold over the nodes holding it, this one
    /// included where its clients hold it: by node name, this node takes the messages whose
    /// spread hash falls to its place ([`Share`]), none while it holds no member, all when no
    /// other node holds the group. Tells the Registry of each share that changed.
    pub(super) fn spread_shared_groups(&mut self) {
        let mut holders = self.remote.shared_groups();
        // Only the groups other nodes hold: this node joins their holders where it holds them.
        for filter in self.interest.shared_filters() {
            if let Some(Ok(shared)) = parse_shared(filter) {
                let group = (shared.group.to_string(), shared.filter.to_string());
                if let Some(nodes) = holders.get_mut(&group) {
                    nodes.insert(self.env.node.clone());
                }
            }
        }
        let shares: BTreeMap<(String, String), Share> = holders
            .iter()
            .map(|(group, nodes)| {
                let share = match nodes.iter().position(|node| *node == self.env.node) {
                    Some(index) => Share {
                        index: index as u32,
                        count: nodes.len() as u32,
                    },
                    None => Share::NONE,
                };
                (group.clone(), share)
            })
            .collect();
        let gone = self
            .shares
            .keys()
            .filter(|group| !shares.contains_key(*group))
            .map(|group| (group.clone(), Share::ALL));
        let changed = shares
            .iter()
            .filter(|(group, share)| self.shares.get(*group) != Some(*share))
            .map(|(group, share)| (group.clone(), *share));
        for ((name, filter), share) in gone.chain(changed).collect::<Vec<_>>() {
            self.env.registry.do_send(SharedShare {
                name,
                filter,
                share,
            });
        }
        self.shares = shares;
        let shared: Vec<(String, String, Vec<String>)> = holders
            .into_iter()
            .map(|((group, filter), nodes)| (group, filter, nodes.into_iter().collect()))
            .collect();
        self.env
            .metrics
            .cluster
            .change_view(|view| view.shared = shared);
    }

    /// Makes the link's local subscriptions follow the other nodes' filters, and this node
    /// take its share of the shared groups several nodes hold.
    pub(super) fn change_local(&mut self, changes: Vec<LocalChange>) {
        self.spread_shared_groups();
        let nodes = self.remote.nodes();
        self.env
            .metrics
            .cluster
            .change_view(|view| view.nodes = nodes);
        let Some(local) = &self.local else { return };
        for change in changes {
            match change {
                LocalChange::Subscribe(filter) => local.do_send(Subscribe {
                    filter,
                    qos: QoS::ExactlyOnce,
                }),
                LocalChange::Unsubscribe(filter) => local.do_send(Unsubscribe { filter }),
            }
        }
    }

    /// Watches the Registry's filters: takes the list they make now (with those asked for
    /// whose SUBSCRIBE the Registry may not have taken yet), and each change after it
    /// ([`FiltersChanged`]), which waits in the mailbox until this list is applied.
    pub(super) fn watch_filters(&mut self, ctx: &mut Context<Self>) {
        self.env
            .registry
            .send(WatchFilters(ctx.address().recipient()))
            .into_actor(self)
            .map(|filters, act, ctx| {
                if let Ok(mut filters) = filters {
                    filters.extend(act.asked_recently.filters().cloned());
                    let changes = act.interest.reconcile(&filters, &act.env.subjects);
                    act.apply(changes, ctx);
                }
            })
            .wait(ctx);
    }

    /// Filters asked for whose wait is over at `now` are no longer kept for their SUBSCRIBE
    /// (its connection ended before the Registry took it): those no client holds go, by the
    /// Registry's answer in order with its other changes ([`ReleaseUnheld`]). Called with the
    /// liveness tick: only SUBSCRIBEs in flight or dropped are counted there, since each one
    /// the Registry takes is counted off at its [`FilterChange::Held`].
    pub(super) fn stop_waiting_for_dropped(&mut self, now: Instant) {
        let expired = self.asked_recently.expire(now);
        if !expired.is_empty() {
            self.env.registry.do_send(ReleaseUnheld(expired));
        }
    }
}

impl Handler<FiltersChanged> for ClusterLink {
    type Result = ();

    /// A client here took a filter, or a filter's last holder here let go: NATS subscriptions
    /// and an announcement where the interest changed. A filter asked for whose SUBSCRIBE is
    /// still on its way stays held.
    fn handle(&mut self, FiltersChanged(changes): FiltersChanged, ctx: &mut Context<Self>) {
        let mut interest = Vec::new();
        for change in changes {
            match change {
                FilterChange::Held(filter) => {
                    self.asked_recently.taken(&filter);
                    interest.extend(self.interest.add(&filter, &self.env.subjects));
                }
                FilterChange::Released(filter) => {
                    if !self.asked_recently.waits_for(&filter) {
                        interest.extend(self.interest.remove(&filter));
                    }
                }
            }
        }
        self.apply(interest, ctx);
    }
}
