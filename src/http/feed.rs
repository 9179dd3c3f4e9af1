//! The dashboard's live feed: an actor that receives the Registry's lifecycle events (as a hook,
//! installed when the first page subscribes, so a broker nobody watches pays nothing) and, from
//! then on, a once-a-second summary of the counters (with `[persistence]`, the log's too), and
//! broadcasts both as JSON to every open page (`GET /api/v1/events`, server-sent events).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::json;
use tokio::sync::broadcast;

use crate::hooks::{
    ClientConnected, ClientDisconnected, ClientSubscribed, ClientUnsubscribed, LifecycleHooks,
};
use crate::metrics::Metrics;
use crate::persistence::unix_ms_now;
use crate::registry::{AddHooks, GetStats, Registry};

/// Lifecycle events kept for a page that opens later.
const RECENT: usize = 100;
/// Lifecycle events sent per second at most; beyond, they are counted (a reconnect storm of
/// thousands of devices must not flood every open page).
const EVENTS_PER_SECOND: u32 = 100;
/// How often the counters go out.
const TICK: Duration = Duration::from_secs(1);

/// At most [`EVENTS_PER_SECOND`] lifecycle events a second; the rest are counted.
#[derive(Debug)]
struct EventBudget {
    /// When the current second began.
    since: Instant,
    /// Events let through in it.
    sent: u32,
    /// Events refused since the last [`EventBudget::take_suppressed`].
    suppressed: u64,
}

impl EventBudget {
    fn new(now: Instant) -> Self {
        EventBudget {
            since: now,
            sent: 0,
            suppressed: 0,
        }
    }

    /// Whether one more event goes out at `now`; counts it as suppressed if not.
    fn admit(&mut self, now: Instant) -> bool {
        if now.duration_since(self.since) >= Duration::from_secs(1) {
            self.since = now;
            self.sent = 0;
        }
        if self.sent >= EVENTS_PER_SECOND {
            self.suppressed += 1;
            return false;
        }
        self.sent += 1;
        true
    }

    /// The events refused since the last call.
    fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// The feed actor. Started by the HTTP server on the broker's System.
pub struct Feed {
    registry: Addr<Registry>,
    metrics: Arc<Metrics>,
    sender: broadcast::Sender<Arc<str>>,
    recent: VecDeque<Arc<str>>,
    hooked: bool,
    budget: EventBudget,
    /// Counters at the last tick, for rates.
    last: Option<(Instant, u64, u64, u64)>,
}

impl Feed {
    /// A feed reading these actors and counters.
    pub fn new(registry: Addr<Registry>, metrics: Arc<Metrics>) -> Self {
        Feed {
            registry,
            metrics,
            sender: broadcast::channel(1024).0,
            recent: VecDeque::with_capacity(RECENT),
            hooked: false,
            budget: EventBudget::new(Instant::now()),
            last: None,
        }
    }

    /// Whether one more lifecycle event goes out this second.
    fn admit(&mut self) -> bool {
        self.budget.admit(Instant::now())
    }

    /// Keeps and broadcasts one admitted lifecycle event.
    fn event(&mut self, event: serde_json::Value) {
        let text: Arc<str> = Arc::from(event.to_string());
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(text.clone());
        let _ = self.sender.send(text);
    }

    /// Sends the counters, if anyone listens.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        let metrics = self.metrics.snapshot();
        let traffic = self.metrics.traffic.totals();
        let dropped = metrics.messages_dropped();
        let (received, sent) = (
            traffic.publishes_received_total(),
            traffic.publishes_sent_total(),
        );
        let now = Instant::now();
        let rate = |then: u64, now_value: u64, seconds: f64| {
            (now_value.saturating_sub(then) as f64 / seconds).round()
        };
        let rates = match self.last {
            Some((at, r, s, d)) => {
                let seconds = now.duration_since(at).as_secs_f64().max(0.001);
                (
                    rate(r, received, seconds),
                    rate(s, sent, seconds),
                    rate(d, dropped, seconds),
                )
            }
            None => (0.0, 0.0, 0.0),
        };
        self.last = Some((now, received, sent, dropped));
        let suppressed = self.budget.take_suppressed();
        let connections = metrics.connections_current;
        let online = (traffic.held_for_connected, traffic.held_bytes_for_connected);
        let persistence = self
            .metrics
            .persistence
            .snapshot()
            .map(|p| super::persistence::summary(&p));
        self.registry
            .send(GetStats)
            .into_actor(self)
            .map(move |stats, act, _| {
                let stats = stats.unwrap_or_default();
                let text: Arc<str> = Arc::from(
                    json!({
                        "type": "stats",
                        "time_ms": unix_ms_now(),
                        "connections": connections,
                        "clients": stats.clients_online,
                        "sessions_offline": stats.sessions_offline,
                        "offline_messages": stats.offline_messages,
                        "offline_bytes": stats.offline_bytes,
                        "online_messages": online.0,
                        "online_bytes": online.1,
                        "subscriptions": stats.subscriptions,
                        "retained": stats.retained,
                        "retained_bytes": stats.retained_bytes,
                        "received_per_s": rates.0,
                        "sent_per_s": rates.1,
                        "dropped_per_s": rates.2,
                        "events_suppressed": suppressed,
                        "persistence": persistence,
                    })
                    .to_string(),
                );
                let _ = act.sender.send(text);
            })
            .spawn(ctx);
    }
}

impl Actor for Feed {
    type Context = Context<Self>;
}

/// Sent by the HTTP server to the [`Feed`] for each page that opens the event stream: the
/// recent lifecycle events and a receiver of what follows.
#[derive(Message)]
#[rtype(result = "(Vec<Arc<str>>, broadcast::Receiver<Arc<str>>)")]
pub struct Subscribe;

impl Handler<Subscribe> for Feed {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, _: Subscribe, ctx: &mut Context<Self>) -> Self::Result {
        if !self.hooked {
            // The hook and the ticker come with the first page: until then the feed costs
            // nothing, and a broker whose start fails (its HTTP port taken) stops with no timer
            // of it to tear down.
            self.hooked = true;
            self.registry
                .do_send(AddHooks(LifecycleHooks::all(&ctx.address())));
            ctx.run_interval(TICK, |act, ctx| act.tick(ctx));
        }
        MessageResult((
            self.recent.iter().cloned().collect(),
            self.sender.subscribe(),
        ))
    }
}

impl Handler<ClientConnected> for Feed {
    type Result = ();

    /// From the Registry (a hook).
    fn handle(&mut self, msg: ClientConnected, _: &mut Context<Self>) {
        if !self.admit() {
            return;
        }
        self.event(json!({
            "type": "connected", "time_ms": unix_ms_now(), "client_id": &*msg.client_id,
            "address": msg.peer.to_string(), "protocol": msg.protocol.to_string(),
        }));
    }
}

impl Handler<ClientDisconnected> for Feed {
    type Result = ();

    /// From the Registry (a hook).
    fn handle(&mut self, msg: ClientDisconnected, _: &mut Context<Self>) {
        if !self.admit() {
            return;
        }
        self.event(json!({
            "type": "disconnected", "time_ms": unix_ms_now(), "client_id": &*msg.client_id,
            "address": msg.peer.to_string(), "reason": msg.reason.to_string(),
        }));
    }
}

impl Handler<ClientSubscribed> for Feed {
    type Result = ();

    /// From the Registry (a hook).
    fn handle(&mut self, msg: ClientSubscribed, _: &mut Context<Self>) {
        if !self.admit() {
            return;
        }
        self.event(json!({
            "type": "subscribed", "time_ms": unix_ms_now(), "client_id": &*msg.client_id,
            "filter": msg.filter, "qos": msg.qos as u8,
        }));
    }
}

impl Handler<ClientUnsubscribed> for Feed {
    type Result = ();

    /// From the Registry (a hook).
    fn handle(&mut self, msg: ClientUnsubscribed, _: &mut Context<Self>) {
        if !self.admit() {
            return;
        }
        self.event(json!({
            "type": "unsubscribed", "time_ms": unix_ms_now(), "client_id": &*msg.client_id,
            "filter": msg.filter,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_beyond_the_budget_is_counted_and_the_next_second_starts_afresh() {
        let start = Instant::now();
        let mut budget = EventBudget::new(start);
        let admitted = (0..250).filter(|_| budget.admit(start)).count();
        assert_eq!(admitted, EVENTS_PER_SECOND as usize);
        assert_eq!(budget.take_suppressed(), 150);
        assert_eq!(budget.take_suppressed(), 0, "taken once");
        let later = start + Duration::from_millis(999);
        assert!(!budget.admit(later), "still the same second");
        let next = start + Duration::from_secs(1);
        assert!(budget.admit(next), "a new second");
        assert_eq!(budget.take_suppressed(), 1);
    }
}
