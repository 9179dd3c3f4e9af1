//! What the admin API (`src/http/api.rs`) asks of the Registry: pages of clients,
//! subscriptions and retained messages, a client's held messages, disconnecting a client (and
//! removing its session), and publishing. Each message is sent by the HTTP server and handled
//! by the Registry.

use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use tracing::info;

use super::{client_in, Registry, SessionHandle, ToSession};
use crate::message::{LastWill, Message, ProtocolVersion, SubscriptionOptions};
use crate::session_state::HeldMessages;

/// One client as the admin API shows it.
#[derive(Debug, Clone)]
pub struct ClientSummary {
    /// Client identifier.
    pub client_id: String,
    /// Whether a connection is attached.
    pub connected: bool,
    /// Remote address of the connection, while connected.
    pub address: Option<SocketAddr>,
    /// Protocol of the connection, while connected.
    pub protocol: Option<ProtocolVersion>,
    /// When the connection was accepted (Unix milliseconds), while connected.
    pub connected_since_ms: Option<u64>,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub session_expiry: u32,
    /// Filters with their options, sorted by filter.
    pub subscriptions: Vec<(String, SubscriptionOptions)>,
    /// QoS 1/2 messages in flight and queued, for an offline session (a connected one's come
    /// from its Session: see [`ToSession::Report`]).
    pub stored_inflight: usize,
    /// See `stored_inflight`.
    pub stored_queued: usize,
    /// Where to ask a connected client's Session for its counts.
    pub session: Option<Arc<dyn SessionHandle>>,
    /// The will: a connected client's, or an offline session's waiting for its Will Delay
    /// Interval, with when it is due.
    pub will: Option<WillSummary>,
}

/// A client's will as the admin API shows it.
#[derive(Debug, Clone)]
pub struct WillSummary {
    /// The will.
    pub will: LastWill,
    /// When it goes out, Unix milliseconds: set for an offline session's delayed will, none
    /// while its client is connected.
    pub due_ms: Option<u64>,
}

/// Sent by the HTTP server to the Registry: a page of a client's messages in flight and
/// queued, and its inbound QoS 2 ids awaiting PUBREL. `None` when no such client is known.
#[derive(Message)]
#[rtype(result = "Option<ClientMessages>")]
pub struct GetClientMessages {
    /// The client.
    pub client_id: String,
    /// Messages skipped.
    pub offset: usize,
    /// Messages at most.
    pub limit: usize,
}

/// The Registry's answer to [`GetClientMessages`].
pub enum ClientMessages {
    /// An offline session's page, from what the Registry stores.
    Stored(HeldMessages),
    /// A connected client: its Session holds them ([`ToSession::Messages`]).
    Connected(Arc<dyn SessionHandle>),
}

/// A page of a sorted list, and how many entries the whole list has.
#[derive(Debug, Clone, MessageResponse)]
pub struct Page<T: 'static> {
    /// Entries matching the query, before paging.
    pub total: usize,
    /// The entries of this page.
    pub items: Vec<T>,
}

/// Sent by the HTTP server to the Registry: clients sorted by id, those whose id contains
/// `search` (case-insensitively) if given, `limit` of them from `offset`.
#[derive(Message)]
#[rtype(result = "Page<ClientSummary>")]
pub struct ListClients {
    /// Entries skipped.
    pub offset: usize,
    /// Entries at most.
    pub limit: usize,
    /// Part of the client id to look for.
    pub search: Option<String>,
}

/// Sent by the HTTP server to the Registry: one client by id, if known.
#[derive(Message)]
#[rtype(result = "Option<ClientSummary>")]
pub struct GetClient(pub String);

/// One subscription as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSummary {
    /// The subscribing client.
    pub client_id: String,
    /// Its filter (with the `$share/{group}/` prefix for a shared subscription).
    pub filter: String,
    /// Its options (maximum QoS, and for MQTT 5 No Local, Retain As Published, Retain
    /// Handling and the Subscription Identifier).
    pub options: SubscriptionOptions,
    /// Whether its client is connected.
    pub connected: bool,
}

/// Sent by the HTTP server to the Registry: subscriptions sorted by client id then filter,
/// those whose filter or client id contains `search` if given, paged.
#[derive(Message)]
#[rtype(result = "Page<SubscriptionSummary>")]
pub struct ListSubscriptions {
    /// Entries skipped.
    pub offset: usize,
    /// Entries at most.
    pub limit: usize,
    /// Part of the filter or client id to look for.
    pub search: Option<String>,
}

/// Sent by the HTTP server to the Registry: retained messages whose topic matches `filter` (a
/// valid topic filter), sorted by topic, paged.
#[derive(Message)]
#[rtype(result = "Page<Arc<Message>>")]
pub struct ListRetained {
    /// A validated topic filter.
    pub filter: String,
    /// Entries skipped.
    pub offset: usize,
    /// Entries at most.
    pub limit: usize,
}

/// What [`Kick`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct Kicked {
    /// A connected client was told to close (MQTT 5: DISCONNECT 0x98).
    pub disconnected: bool,
    /// Its session is (or will be, once the connection is closed) removed.
    pub session_removed: bool,
}

/// Sent by the HTTP server (and by a bridge being removed, for its local client) to the
/// Registry: disconnect a client, and with `remove_session` end
/// its session too (subscriptions, queued messages; a delayed will goes out). `None` when no
/// such client is known.
#[derive(Message)]
#[rtype(result = "Option<Kicked>")]
pub struct Kick {
    /// The client.
    pub client_id: String,
    /// End the session as well.
    pub remove_session: bool,
}

/// Sent by the HTTP server to the Registry: publish `message` as the broker (routed like a
/// client's publish; retained messages stored). Answers the number of matching subscriptions.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct AdminPublish(pub Message);

/// What a connected Session reports for the admin API ([`ToSession::Report`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionReport {
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// QoS 1/2 messages waiting for room in the window.
    pub queued: usize,
}

fn page<T>(items: Vec<T>, offset: usize, limit: usize) -> Page<T> {
    let total = items.len();
    Page {
        total,
        items: items.into_iter().skip(offset).take(limit).collect(),
    }
}

impl Registry {
    /// One client as the admin API shows it, if its slot holds one.
    pub(super) fn summary(&self, key: super::ClientKey) -> Option<ClientSummary> {
        let client = self.clients.get(key.0 as usize)?.as_deref()?;
        let mut subscriptions: Vec<(String, SubscriptionOptions)> = client
            .subscriptions
            .iter()
            .map(|(filter, options)| (filter.clone(), *options))
            .collect();
        subscriptions.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let attached = client.attached.as_ref().filter(|a| !a.detaching);
        let stored = client.stored.as_deref();
        Some(ClientSummary {
            client_id: client.id.to_string(),
            connected: attached.is_some(),
            address: attached.map(|a| a.peer),
            protocol: attached.map(|a| a.protocol),
            connected_since_ms: attached.map(|a| a.since_ms),
            session_expiry: client.session_expiry,
            subscriptions,
            stored_inflight: stored.map_or(0, |s| s.inflight.len()),
            stored_queued: stored.map_or(0, |s| s.queue.len()),
            session: attached.map(|a| a.session.clone()),
            will: match (attached, client.delayed_will.as_deref()) {
                (Some(attached), _) => attached.will.as_deref().map(|will| WillSummary {
                    will: will.clone(),
                    due_ms: None,
                }),
                (None, Some(delayed)) => Some(WillSummary {
                    will: delayed.will.clone(),
                    due_ms: Some(delayed.due_ms),
                }),
                (None, None) => None,
            },
        })
    }
}

impl Handler<GetClient> for Registry {
    type Result = Option<ClientSummary>;

    fn handle(&mut self, msg: GetClient, _: &mut Context<Self>) -> Option<ClientSummary> {
        let key = *self.by_id.get(msg.0.as_str())?;
        self.summary(key)
    }
}

impl Handler<GetClientMessages> for Registry {
    type Result = Option<ClientMessages>;

    fn handle(&mut self, msg: GetClientMessages, _: &mut Context<Self>) -> Self::Result {
        let key = *self.by_id.get(msg.client_id.as_str())?;
        let client = self.clients.get(key.0 as usize)?.as_deref()?;
        if let Some(attached) = client.attached.as_ref().filter(|a| !a.detaching) {
            return Some(ClientMessages::Connected(attached.session.clone()));
        }
        Some(ClientMessages::Stored(match client.stored.as_deref() {
            Some(stored) => HeldMessages::of_stored(stored, msg.offset, msg.limit),
            None => HeldMessages::default(),
        }))
    }
}

impl Handler<ListRetained> for Registry {
    type Result = Page<Arc<Message>>;

    fn handle(&mut self, msg: ListRetained, _: &mut Context<Self>) -> Page<Arc<Message>> {
        let mut found = Vec::new();
        self.retained
            .for_each_match(&msg.filter, |message| found.push(message.clone()));
        found.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
        page(found, msg.offset, msg.limit)
    }
}

impl Handler<Kick> for Registry {
    type Result = Option<Kicked>;

    fn handle(&mut self, msg: Kick, ctx: &mut Context<Self>) -> Option<Kicked> {
        let key = *self.by_id.get(msg.client_id.as_str())?;
        let client = client_in(&mut self.clients, key)?;
        let attached = client.attached.as_ref().filter(|a| !a.detaching);
        info!(client_id = %msg.client_id, remove_session = msg.remove_session, connected = attached.is_some(), "client kicked by the admin API");
        if let Some(attached) = attached {
            if msg.remove_session {
                // Ended with the connection, as a clean session is.
                client.session_expiry = 0;
            }
            attached.session.send(ToSession::Kick);
            return Some(Kicked {
                disconnected: true,
                session_removed: msg.remove_session,
            });
        }
        if msg.remove_session && !client.connect_in_progress() && client.attached.is_none() {
            let token = client.timer_token;
            self.expire(key, token, ctx);
            return Some(Kicked {
                disconnected: false,
                session_removed: true,
            });
        }
        Some(Kicked {
            disconnected: false,
            session_removed: false,
        })
    }
}

impl Handler<AdminPublish> for Registry {
    type Result = usize;

    fn handle(&mut self, msg: AdminPublish, ctx: &mut Context<Self>) -> usize {
        let mut message = msg.0;
        message.received_at = Some(std::time::Instant::now());
        self.route(Arc::new(message), None, ctx)
    }
}
