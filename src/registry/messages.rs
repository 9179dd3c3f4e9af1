//! Every message between Sessions and the Registry. Each says who sends it and who handles it.

use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::hooks::{DisconnectReason, LifecycleHooks};
use crate::message::{LastWill, Message, ProtocolVersion, SubscriptionOptions};
use crate::routing::ChangeOnItsWay;
use crate::session_state::SessionState;

/// Identifies one TCP connection for the life of the broker (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

pub use crate::routing::{ClientKey, Deliver, Stored};

/// Sent by the Registry to a connected Session (one message type, so that the Registry needs no
/// handle on the Session type itself): the Session handles each as the message inside.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ToSession {
    /// Deliveries the Registry routed (retained, stored, wills, redistribution).
    Deliver(Deliver),
    /// See [`Routed`].
    Routed(Routed),
    /// See [`Detached`].
    Detached,
    /// See [`Takeover`].
    Takeover,
    /// See [`ServerClosing`].
    ServerClosing,
    /// See [`Subscribed`].
    Subscribed(Subscribed),
    /// See [`Unsubscribed`].
    Unsubscribed(Unsubscribed),
    /// The admin API disconnects the client: the Session closes with
    /// [`DisconnectReason::Kicked`] (MQTT 5: DISCONNECT 0x98 Administrative action).
    Kick,
    /// The admin API asks for the Session's QoS 1/2 counts, answered on the channel.
    Report(oneshot::Sender<super::SessionReport>),
    /// The admin API asks for a page of the Session's messages in flight and queued, and its
    /// inbound QoS 2 ids awaiting PUBREL, answered on `reply`.
    Messages {
        /// Messages skipped.
        offset: usize,
        /// Messages at most.
        limit: usize,
        /// Where the page goes.
        reply: oneshot::Sender<crate::session_state::HeldMessages>,
    },
}

/// Sent by a Session to the Registry once its CONNECT passed validation and the connect
/// interceptor. The Registry answers on `reply`, possibly later (after taking over an older
/// connection with the same client id).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    /// The connection.
    pub conn: ConnId,
    /// Where the Registry sends the Session what it has for it; shared with the route table,
    /// through which the workers send it its deliveries.
    pub session: Arc<dyn SessionHandle>,
    /// Remote address.
    pub peer: SocketAddr,
    /// Protocol spoken.
    pub protocol: ProtocolVersion,
    /// Client id as sent; empty means "assign one".
    pub client_id: String,
    /// The user name the client connected with; sent only when the broker has an ACL (the
    /// route table passes over a shared group's member that may not read a message).
    pub username: Option<Arc<str>>,
    /// Clean session (3.1.1) or Clean Start (5.0) flag: discard any stored session.
    pub clean_session: bool,
    /// How long the session outlives the connection, in seconds (0: not at all, `u32::MAX`:
    /// forever). MQTT 3.1.1 clean sessions are 0, persistent ones `u32::MAX` (or the
    /// configured maximum).
    pub session_expiry: u32,
    /// The will, published if the connection ends without DISCONNECT.
    pub will: Option<LastWill>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<ConnectOutcome>,
}

/// The Registry's answer to [`Connect`], sent over the oneshot channel in it: the client is
/// attached, and the Session writes CONNACK 0 and re-sends `state`. The Registry refuses nothing;
/// a reply dropped unsent means a newer CONNECT with the same id won first.
#[derive(Debug)]
pub struct ConnectOutcome {
    /// The client's slot.
    pub key: ClientKey,
    /// The client id (assigned if the client sent none).
    pub client_id: Arc<str>,
    /// Whether a stored session was resumed.
    pub session_present: bool,
    /// The resumed session (empty when none).
    pub state: SessionState,
}

/// Sent by a Session to the Registry with the application messages (any QoS) it read in one
/// burst, in order, when they are not routed on the Session's worker: a burst with a retained
/// message (the Registry stores it and routes the burst), and every burst after it until the
/// Registry answers [`Routed`]. Sent with `try_send`: when the Registry's mailbox is full the
/// Session waits, and stops reading its socket meanwhile.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    /// The publishing client, for No Local subscriptions `[MQTT-3.8.3-3]`.
    pub from: ClientKey,
    /// The publishing connection, which gets [`Routed`].
    pub conn: ConnId,
    /// The messages, each shared by all its deliveries.
    pub messages: Vec<Arc<Message>>,
    /// With persistence: the Session submitted the inbound QoS 2 ids of this burst just
    /// before; its deliveries reach no client before they are durable (exactly once across a
    /// crash).
    pub hold: bool,
}

/// Sent by the Registry to the Session of a [`Publish`] once every delivery of it is in its
/// subscribers' mailboxes (and, with persistence, what it changed is durable): the Session may
/// route its next bursts on its own worker again without overtaking them, and with persistence
/// writes the burst's PUBACK/PUBREC (and an MQTT 5 publisher's, in memory too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct Routed {
    /// Bit `i` set: message `i` of the burst (of the first 64) reached no subscriber, so an
    /// MQTT 5 publisher's acknowledgement of it carries 0x10 No matching subscribers.
    pub unmatched: u64,
}

/// Sent by [`RunningBroker::shutdown`](crate::RunningBroker::shutdown) to the Registry: sync the
/// persistence log, and answer when done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushStore;

/// Sent by a Session to the Registry after a [`Stored`] found the Registry's mailbox full; the
/// Session waits for the answer, reading nothing, so TCP slows its publisher down.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WaitForRoom;

/// Sent by the Registry to itself to attach a connection to a client whose deliveries went
/// through it until now, once every [`Stored`] matched before is handled (see
/// `Registry::begin_connect`).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct FinishConnect(pub ClientKey);

/// Sent by a Session to the Registry for the accepted filters of a SUBSCRIBE. The Registry sends
/// what it already routed to the client, then answers [`Subscribed`], then the matching retained
/// messages, all through the Session's mailbox, so they arrive in that order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    /// The client.
    pub key: ClientKey,
    /// The connection.
    pub conn: ConnId,
    /// Packet identifier of the SUBSCRIBE.
    pub pid: u16,
    /// Validated filters with the options to grant, each with its position in `codes`.
    pub filters: Vec<(usize, String, SubscriptionOptions)>,
    /// The SUBACK return codes, one per requested filter (failure codes for the refused ones).
    /// The Registry sets `quota_code` for filters over the client's subscription limit.
    pub codes: Vec<u8>,
    /// Code for a filter over the subscription limit: 0x80 (3.1.1) or 0x97 Quota exceeded (5.0).
    pub quota_code: u8,
    /// Counts this change as on its way until the Registry has put it in the route table (or
    /// held it for the cluster).
    pub on_its_way: Option<ChangeOnItsWay>,
}

/// Sent by the Registry to a Session once a [`Subscribe`] took effect: the Session writes SUBACK.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribed {
    /// Packet identifier of the SUBSCRIBE.
    pub pid: u16,
    /// The SUBACK return codes.
    pub codes: Vec<u8>,
    /// With persistence: the store change (the session's new subscriptions) that must be
    /// durable before the SUBACK goes out; 0 for none.
    pub after: u64,
}

/// Sent by a Session to the Registry for an UNSUBSCRIBE; the Registry answers [`Unsubscribed`]
/// once it took effect `[MQTT-3.10.4-2]`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    /// The client.
    pub key: ClientKey,
    /// The connection.
    pub conn: ConnId,
    /// Packet identifier of the UNSUBSCRIBE.
    pub pid: u16,
    /// Filters to remove.
    pub filters: Vec<String>,
    /// Counts this change as on its way until the Registry has taken it out of the route
    /// table.
    pub on_its_way: Option<ChangeOnItsWay>,
}

/// Sent by the Registry to a Session once an [`Unsubscribe`] took effect: the Session writes
/// UNSUBACK.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribed {
    /// Packet identifier of the UNSUBSCRIBE.
    pub pid: u16,
    /// One MQTT 5 reason code per filter: 0x00 removed, 0x11 No subscription existed.
    pub codes: Vec<u8>,
    /// With persistence: the store change that must be durable before the UNSUBACK goes out;
    /// 0 for none.
    pub after: u64,
}

/// Sent by a connected Session to the Registry when its connection ends. The Registry publishes
/// the will if the reason calls for it, stops routing to the Session and answers [`Detached`];
/// with `ends_session`, it ends the session at once instead and answers nothing.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach {
    /// The client.
    pub key: ClientKey,
    /// The connection.
    pub conn: ConnId,
    /// Why it ended.
    pub reason: DisconnectReason,
    /// A Session Expiry Interval the client's MQTT 5 DISCONNECT set, replacing the CONNECT's.
    pub session_expiry: Option<u32>,
    /// The session ends with the connection and nothing of it goes anywhere else: its expiry is
    /// 0, it was new on this connection, and it has no shared subscription (whose unacknowledged
    /// messages would go to another member). The Session stops without waiting for
    /// [`Detached`] and sends no [`SessionEnded`]; what is on its way to it is dropped, as the
    /// end of such a session drops it anyway `[MQTT-3.1.2-6]`.
    pub ends_session: bool,
}

/// Sent by the Registry to a Session after its [`Detach`]: no [`Deliver`] will follow, so the
/// Session's state is complete and it answers with [`SessionEnded`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct Detached;

/// Sent by a Session to the Registry, last, with everything it still holds for the client; the
/// Registry keeps it for a persistent session and drops it for a clean one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionEnded {
    /// The client.
    pub key: ClientKey,
    /// The connection.
    pub conn: ConnId,
    /// Unacknowledged and queued messages, and inbound QoS 2 ids.
    pub state: SessionState,
}

/// Sent by the Registry to a Session whose client id another connection has just claimed
/// `[MQTT-3.1.4-2]`; the Session closes and detaches.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Takeover;

/// Sent by [`RunningBroker::shutdown`](crate::RunningBroker::shutdown) to the Registry: every
/// connected client's Session gets [`ServerClosing`]. Answers how many were told.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAll;

/// Sent by the Registry to a Session when the broker shuts down: the Session closes (an MQTT 5
/// client first gets DISCONNECT 0x8B Server shutting down) and detaches as usual.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ServerClosing;

/// Sent by the embedding application to the Registry to add lifecycle hooks at run time.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddHooks(pub LifecycleHooks);

/// Sent by anyone to the Registry to read its table sizes.
#[derive(Message)]
#[rtype(result = "RegistryStats")]
pub struct GetStats;

/// The Registry's answer to [`GetStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, MessageResponse)]
pub struct RegistryStats {
    /// Clients with a live connection.
    pub clients_online: usize,
    /// Persistent sessions of clients that are not connected.
    pub sessions_offline: usize,
    /// (filter, client) pairs in the trie, shared group memberships included.
    pub subscriptions: usize,
    /// Retained messages.
    pub retained: usize,
    /// Their bytes (topic, payload and properties), the `$SYS` ones included.
    pub retained_bytes: usize,
    /// QoS 1/2 messages queued or in flight in the sessions of clients that are not connected.
    pub offline_messages: usize,
    /// Their bytes (topic, payload and properties, as `sessions.max_queued_bytes` counts).
    pub offline_bytes: usize,
}

/// Diagnostics for tests: sent by a test to the Registry, it blocks the Registry's thread until
/// the sender side of the channel sends or is dropped (at most 60 s), simulating a saturated
/// Registry.
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct Freeze(pub std::sync::mpsc::Receiver<()>);

/// A connected Session as the Registry reaches it: the one handle a Session gives the Registry
/// (in [`Connect`]), which the Registry shares with the route table as its
/// [`SessionInbox`](crate::routing::SessionInbox). The Session implements it on its own actix
/// address, so the Registry names no Session type, and a connection costs one address and one
/// `Arc` (no boxed `Recipient` around the address).
pub trait SessionHandle: crate::routing::SessionInbox {
    /// Sends the Session `msg`; never waits (a full mailbox grows). Lost if the Session has
    /// stopped, as a message to any stopped actor is.
    fn send(&self, msg: ToSession);
}

impl std::fmt::Debug for dyn SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionHandle")
    }
}
