//! What the Registry does for the cluster link (`src/cluster/`): end the connection of a client
//! that connected on another node, and tell the link of every retained message published here.

use std::sync::Arc;

use actix::prelude::*;
use tracing::info;

use super::{client_in, ClientKey, Registry, ToSession};
use crate::message::Message;
use crate::routing::Share;
use crate::topic::reserved_for_broker;

/// Client ids that start with this belong to broker-internal clients (the local side of each
/// bridge, `$bridge.<name>`, and the cluster link's); a client from the network that asks for
/// one is refused.
pub const INTERNAL_CLIENT_PREFIX: &str = "$bridge.";

/// The client id of the cluster link's local client: internal (the bridges' prefix; a bridge
/// name cannot hold `$`), exempt from the ACL and from `limits.max_subscriptions_per_client`.
pub const CLUSTER_CLIENT_ID: &str = "$bridge.$cluster";

/// Whether the ACL does not apply to the client `client_id`: the cluster link's, which carries
/// what other nodes' clients published, checked there, to subscribers checked here. (Only the
/// broker's own link can have that id: a network client asking for it is refused.)
pub fn exempt_from_acl(client_id: &str) -> bool {
    client_id == CLUSTER_CLIENT_ID
}

/// Sent by the Registry to the cluster link (see [`WatchRetained`]): a retained message (or,
/// with an empty payload, the clearing of one) that a client of this node, a bridge, a will or
/// the admin API published, in the order the Registry routed them. The other nodes keep it too.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RetainedPublished(pub Arc<Message>);

/// Sent by the cluster link to the Registry at start: send me every retained message published
/// here from now on, but those the link itself published ([`RetainedPublished`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchRetained(pub Recipient<RetainedPublished>);

impl Handler<WatchRetained> for Registry {
    type Result = ();

    fn handle(&mut self, msg: WatchRetained, _: &mut Context<Self>) {
        self.retained_watcher = Some(msg.0);
    }
}

impl Registry {
    /// Tells the cluster link of `message` (retained) unless it came from the link or is one
    /// of the broker's own topics.
    pub(super) fn tell_retained_watcher(
        &mut self,
        message: &Arc<Message>,
        from: Option<ClientKey>,
    ) {
        let Some(watcher) = &self.retained_watcher else {
            return;
        };
        let from_link = from
            .and_then(|key| client_in(&mut self.clients, key))
            .is_some_and(|client| &*client.id == CLUSTER_CLIENT_ID);
        if !from_link && !reserved_for_broker(&message.topic) {
            watcher.do_send(RetainedPublished(message.clone()));
        }
    }
}

/// Sent by the cluster link to the Registry with the topics another node's answer to a sync
/// request says were cleared while this node was away: answers those of them that hold a
/// retained message here, which the link then clears as a publisher would.
#[derive(Debug, Message)]
#[rtype(result = "Vec<String>")]
pub struct RetainedAmong(pub Vec<String>);

impl Handler<RetainedAmong> for Registry {
    type Result = Vec<String>;

    fn handle(
        &mut self,
        RetainedAmong(topics): RetainedAmong,
        _: &mut Context<Self>,
    ) -> Vec<String> {
        topics
            .into_iter()
            .filter(|topic| self.retained.contains(topic))
            .collect()
    }
}

/// Sent by the cluster link to the Registry: which of shared group `name` on `filter`'s
/// messages this node's members take, the nodes holding the group spreading them among
/// themselves, so that each message goes to one member in the whole cluster (MQTT 5 section
/// 4.8.2).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SharedShare {
    /// The share name.
    pub name: String,
    /// The group's filter.
    pub filter: String,
    /// This node's share.
    pub share: Share,
}

impl Handler<SharedShare> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SharedShare, _: &mut Context<Self>) {
        let takes = match msg.share.count {
            0 => "none of its messages (other nodes hold it, this one no member)".to_string(),
            1 => "all of its messages".to_string(),
            n => format!("share {} of {n}", msg.share.index + 1),
        };
        info!(group = %msg.name, filter = %msg.filter, %takes, "cluster: shared subscription group spread over the nodes holding it");
        self.routes
            .write()
            .set_shared_share(&msg.name, &msg.filter, msg.share);
    }
}

/// Sent by the cluster link to the Registry: `client_id` connected on node `node` at `at_ms`
/// (Unix milliseconds). A connection of it here since no later than that ends as taken over
/// [MQTT-3.1.4-2] (MQTT 5: DISCONNECT 0x8E). With `clean_start` its session here ends as well,
/// connected or stored [MQTT-3.1.2-6]; without, a persistent session stays (what is queued in
/// it is there if the client comes back, at the cost of copies it also gets on the other node
/// meanwhile: QoS 1 allows duplicates, not losses) until it expires. Answers whether anything
/// ended.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct ConnectedElsewhere {
    /// The client id.
    pub client_id: String,
    /// The node it connected to.
    pub node: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The CONNECT's Clean Session (3.1.1) or Clean Start (5) flag.
    pub clean_start: bool,
    /// Whether that connection stays when both connected in the same millisecond (so that
    /// exactly one of two nodes gives way: the cluster link decides by node name).
    pub wins_ties: bool,
}

impl Handler<ConnectedElsewhere> for Registry {
    type Result = bool;

    fn handle(&mut self, msg: ConnectedElsewhere, ctx: &mut Context<Self>) -> bool {
        let Some(&key) = self.by_id.get(msg.client_id.as_str()) else {
            return false;
        };
        let Some(client) = client_in(&mut self.clients, key) else {
            return false;
        };
        if let Some(attached) = client.attached.as_ref().filter(|a| !a.detaching) {
            let newer_here =
                attached.since_ms > msg.at_ms || (attached.since_ms == msg.at_ms && !msg.wins_ties);
            if newer_here {
                return false; // the other node ends its connection
            }
            info!(client_id = %msg.client_id, node = %msg.node, session_ends = msg.clean_start, "the client connected on another node of the cluster; its connection here ends");
            if msg.clean_start {
                client.session_expiry = 0;
            }
            attached.session.send(ToSession::Takeover);
            return true;
        }
        if msg.clean_start && !client.connect_in_progress() && client.attached.is_none() {
            info!(client_id = %msg.client_id, node = %msg.node, "the client connected on another node of the cluster; its stored session here ends");
            let token = client.timer_token;
            self.expire(key, token, ctx);
            return true;
        }
        false
    }
}
