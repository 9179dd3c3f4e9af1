//! The Registry's record of one client: its connection (if any), subscriptions, batch of pending
//! deliveries, and stored session.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use super::messages::{ConnId, Connect, SessionHandle};
use crate::drops::{DropLog, DropReason};
use crate::message::{Delivery, LastWill, ProtocolVersion};
use crate::metrics::Metrics;
use crate::session_state::SessionState;

/// A client's live connection.
pub(super) struct Attached {
    pub conn: ConnId,
    /// The Session's handle, shared with the route table's target for this client.
    pub session: Arc<dyn SessionHandle>,
    pub peer: SocketAddr,
    /// Protocol the connection speaks (for the admin API).
    pub protocol: ProtocolVersion,
    /// When the connection was attached, Unix milliseconds (for the admin API).
    pub since_ms: u64,
    /// The will of this connection (boxed: most devices set none).
    pub will: Option<Box<LastWill>>,
    /// Detach received: deliveries now go to `Client::held` until the Session hands its state
    /// (and the route table sends the workers' deliveries here).
    pub detaching: bool,
}

/// Deliveries the Registry has for a client and has not handed over yet (boxed in [`Client`]:
/// most clients have none at any moment, and every record pays for its width).
#[derive(Default)]
pub(super) struct Outgoing {
    /// Deliveries collected this turn, sent as one `Deliver`.
    pub batch: Vec<Delivery>,
    /// The store change `batch` must wait for before it reaches the client (0: none): the
    /// inbound QoS 2 id of a message in it ([`Deliver::after`](crate::routing::Deliver)).
    pub batch_after: u64,
    /// QoS 1/2 deliveries that arrived while detaching; appended after the Session's own queue.
    pub held: VecDeque<Delivery>,
}

/// A will waiting for its Will Delay Interval, and when it is due.
pub(super) struct DelayedWill {
    pub will: LastWill,
    /// When it goes out, Unix milliseconds (kept on disk as is: a restart resumes the delay).
    pub due_ms: u64,
}

/// One client id's entry.
pub(super) struct Client {
    pub id: Arc<str>,
    /// Tells this client from earlier ones in the same slot, and its session from the ones it
    /// ended (each clear takes a new one): a [`Stored`](crate::routing::Stored) delivery
    /// matched for an earlier one is dropped.
    pub generation: u32,
    /// Session Expiry Interval of the current (or last) connection, in seconds: 0 ends the
    /// session with the connection, `u32::MAX` never.
    pub session_expiry: u32,
    pub attached: Option<Attached>,
    /// Filter -> options; mirrors this client's entries in the trie (and shared groups, for
    /// `$share/` filters).
    pub subscriptions: super::filters::Filters,
    /// Deliveries on their way through the Registry, while there are any.
    pub outgoing: Option<Box<Outgoing>>,
    /// Stored session while offline; none while there is nothing in it (boxed: most clients
    /// never keep one, and every record pays for its width).
    pub stored: Option<Box<SessionState>>,
    /// A CONNECT with this id waiting for the current connection to finish detaching, or for
    /// the one in `finishing` to be attached (which it then takes over).
    pub pending: Option<Box<Connect>>,
    /// The CONNECT being attached: the route table already sends the workers' deliveries
    /// straight to its Session, which reads none of them before its answer, while the Registry
    /// takes in what was routed here before (see `Registry::begin_connect`).
    pub finishing: Option<Box<Connect>>,
    /// Identifies the timers (session expiry, will delay) allowed to act on this client; a new
    /// connection takes a new token, which cancels them.
    pub timer_token: u64,
    /// A will waiting for its Will Delay Interval `[MQTT-3.1.3-9]` (boxed: rare, and every
    /// client record pays for its width).
    pub delayed_will: Option<Box<DelayedWill>>,
    /// Messages dropped from the offline queue and not yet reported in a warning.
    pub drops: Option<Box<DropLog>>,
    /// Whether the store holds this session (its expiry interval was above 0).
    pub persisted: bool,
}

impl Client {
    /// The deliveries on their way to this client, allocated when the first one comes.
    pub fn outgoing_mut(&mut self) -> &mut Outgoing {
        self.outgoing.get_or_insert_with(Box::default)
    }

    /// Takes this turn's batch and the store change it waits for, if there is a batch.
    pub fn take_batch(&mut self) -> Option<(Vec<Delivery>, u64)> {
        let outgoing = self.outgoing.as_deref_mut()?;
        if outgoing.batch.is_empty() {
            return None;
        }
        let taken = (
            std::mem::take(&mut outgoing.batch),
            std::mem::take(&mut outgoing.batch_after),
        );
        self.release_outgoing();
        Some(taken)
    }

    /// Takes what arrived while the client was detaching.
    pub fn take_held(&mut self) -> VecDeque<Delivery> {
        let held = self
            .outgoing
            .as_deref_mut()
            .map(|o| std::mem::take(&mut o.held))
            .unwrap_or_default();
        self.release_outgoing();
        held
    }

    /// Gives the box back once nothing is in it.
    fn release_outgoing(&mut self) {
        if self
            .outgoing
            .as_deref()
            .is_some_and(|o| o.batch.is_empty() && o.held.is_empty())
        {
            self.outgoing = None;
        }
    }

    /// Whether a connection with this id is on its way in (waiting or being attached): its
    /// stored session must stay.
    pub fn connect_in_progress(&self) -> bool {
        self.pending.is_some() || self.finishing.is_some()
    }

    /// Counts `n` messages dropped from this client's offline queue, with a rate-limited
    /// warning naming it.
    pub fn offline_drops(&mut self, metrics: &Metrics, n: u64) {
        DropLog::record(
            &mut self.drops,
            metrics,
            &self.id,
            DropReason::OfflineQueueFull,
            n,
        );
    }

    pub fn new(id: Arc<str>, generation: u32) -> Self {
        Client {
            id,
            generation,
            session_expiry: 0,
            attached: None,
            subscriptions: Default::default(),
            outgoing: None,
            stored: None,
            pending: None,
            finishing: None,
            timer_token: 0,
            delayed_will: None,
            drops: None,
            persisted: false,
        }
    }
}
