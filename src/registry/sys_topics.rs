//! The `$SYS` topics: every `sys.interval` the Registry publishes the broker's statistics as
//! retained QoS 0 messages under Mosquitto's topic names, so that tools and dashboards written
//! for Mosquitto read them unchanged. A value is published again only when it changed (the
//! uptime every time). They are not persisted: the broker makes them afresh after a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::Registry;
use crate::message::{Message, QoS};
use crate::traffic::TrafficTotals;

/// The averaging windows of the `load` topics, with their names.
const WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// The counters with load averages (`$SYS/broker/load/{name}/{window}`), as Mosquitto names
/// them.
const LOADS: [&str; 7] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "bytes/received",
    "bytes/sent",
    "connections",
];

/// One counter's rate per minute, averaged over 1, 5 and 15 minutes the way Mosquitto does
/// (an exponentially weighted moving average, updated at each publication).
#[derive(Debug, Default, Clone, Copy)]
struct LoadAverage {
    previous: u64,
    averages: [f64; 3],
}

impl LoadAverage {
    /// Takes the counter's value `now`, `elapsed` after the last update.
    fn update(&mut self, now: u64, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if seconds <= 0.0 {
            return;
        }
        let per_minute = now.saturating_sub(self.previous) as f64 * 60.0 / seconds;
        self.previous = now;
        for (average, (_, window)) in self.averages.iter_mut().zip(WINDOWS) {
            let keep = (-seconds / window).exp();
            *average = *average * keep + per_minute * (1.0 - keep);
        }
    }
}

/// What the Registry keeps for the `$SYS` topics between publications.
#[derive(Debug)]
pub(super) struct SysTopics {
    started: Instant,
    last_update: Instant,
    /// The payload last published per topic, to publish only changes.
    published: HashMap<String, String>,
    /// Load averages of the counters named in [`LOADS`], in that order.
    loads: [LoadAverage; LOADS.len()],
    /// The most clients connected at once.
    clients_maximum: usize,
}

impl SysTopics {
    pub(super) fn new() -> Self {
        let now = Instant::now();
        SysTopics {
            started: now,
            last_update: now,
            published: HashMap::new(),
            loads: Default::default(),
            clients_maximum: 0,
        }
    }
}

/// Every value the `$SYS` tree shows at one moment.
struct Figures {
    uptime: Duration,
    clients_connected: usize,
    clients_disconnected: usize,
    connections_total: u64,
    connections_current: u64,
    subscriptions: usize,
    retained: usize,
    /// Messages held: retained ones, and the QoS 1/2 ones queued or in flight for clients,
    /// connected or not (Mosquitto's "message store").
    stored_messages: usize,
    /// Their bytes: topic, payload and properties.
    stored_bytes: usize,
    sessions_expired: u64,
    dropped: u64,
    traffic: TrafficTotals,
}

impl Registry {
    /// Starts publishing the `$SYS` topics every `interval` (unless it is zero), the first time
    /// at once.
    pub(super) fn start_sys_topics(&mut self, interval: Duration, ctx: &mut Context<Self>) {
        if interval.is_zero() {
            return;
        }
        self.publish_sys_topics(ctx);
        ctx.run_interval(interval, |act, ctx| act.publish_sys_topics(ctx));
    }

    fn sys_figures(&mut self) -> Figures {
        let metrics = self.metrics.snapshot();
        let (offline_messages, offline_bytes) = self.held_offline();
        let traffic = self.metrics.traffic.totals();
        // Retained messages, and the QoS 1/2 messages held for clients, connected or not.
        let held = offline_messages + usize::try_from(traffic.held_for_connected).unwrap_or(0);
        let held_bytes =
            offline_bytes + usize::try_from(traffic.held_bytes_for_connected).unwrap_or(0);
        Figures {
            uptime: self.sys.started.elapsed(),
            clients_connected: self.online,
            clients_disconnected: self.by_id.len() - self.online,
            connections_total: metrics.connections_total,
            connections_current: metrics.connections_current,
            subscriptions: self.routes.read().subscriptions(),
            retained: self.retained.len(),
            stored_messages: self.retained.len() + held,
            stored_bytes: self.retained_limit.bytes + held_bytes,
            sessions_expired: metrics.sessions_expired,
            dropped: metrics.messages_dropped(),
            traffic,
        }
    }

    /// Publishes what changed since the last time, and the uptime.
    fn publish_sys_topics(&mut self, ctx: &mut Context<Self>) {
        let figures = self.sys_figures();
        let now = Instant::now();
        let elapsed = now.duration_since(self.sys.last_update);
        self.sys.last_update = now;
        self.sys.clients_maximum = self.sys.clients_maximum.max(figures.clients_connected);
        let t = &figures.traffic;
        let mut values: Vec<(String, String)> = vec![
            (
                "version".into(),
                format!("switchboard version {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "uptime".into(),
                format!("{} seconds", figures.uptime.as_secs()),
            ),
            (
                "clients/connected".into(),
                figures.clients_connected.to_string(),
            ),
            (
                "clients/disconnected".into(),
                figures.clients_disconnected.to_string(),
            ),
            (
                "clients/total".into(),
                (figures.clients_connected + figures.clients_disconnected).to_string(),
            ),
            (
                "clients/maximum".into(),
                self.sys.clients_maximum.to_string(),
            ),
            (
                "clients/expired".into(),
                figures.sessions_expired.to_string(),
            ),
            (
                "store/messages/count".into(),
                figures.stored_messages.to_string(),
            ),
            (
                "store/messages/bytes".into(),
                figures.stored_bytes.to_string(),
            ),
            ("messages/received".into(), t.packets_received.to_string()),
            ("messages/sent".into(), t.packets_sent.to_string()),
            (
                "publish/messages/received".into(),
                t.publishes_received_total().to_string(),
            ),
            (
                "publish/messages/sent".into(),
                t.publishes_sent_total().to_string(),
            ),
            (
                "publish/messages/dropped".into(),
                figures.dropped.to_string(),
            ),
            ("bytes/received".into(), t.bytes_received.to_string()),
            ("bytes/sent".into(), t.bytes_sent.to_string()),
            (
                "subscriptions/count".into(),
                figures.subscriptions.to_string(),
            ),
            (
                "retained messages/count".into(),
                figures.retained.to_string(),
            ),
            (
                "load/sockets".into(),
                figures.connections_current.to_string(),
            ),
        ];
        let counters = [
            t.packets_received,
            t.packets_sent,
            t.publishes_received_total(),
            t.publishes_sent_total(),
            t.bytes_received,
            t.bytes_sent,
            figures.connections_total,
        ];
        for ((name, load), value) in LOADS.iter().zip(&mut self.sys.loads).zip(counters) {
            load.update(value, elapsed);
            for (average, (window, _)) in load.averages.iter().zip(WINDOWS) {
                values.push((format!("load/{name}/{window}"), format!("{average:.2}")));
            }
        }
        for bridge in self.metrics.bridges.snapshots() {
            let name = &bridge.name;
            let figures = [
                ("connected", u64::from(bridge.connected)),
                ("queued", bridge.queued),
                ("sent", bridge.sent),
                ("received", bridge.received),
                ("dropped", bridge.dropped),
            ];
            for (what, value) in figures {
                values.push((format!("bridges/{name}/{what}"), value.to_string()));
            }
        }
        for (topic, payload) in values {
            let changed = self.sys.published.get(&topic) != Some(&payload);
            if changed || topic == "uptime" {
                let message = Message::new(
                    format!("$SYS/broker/{topic}"),
                    bytes::Bytes::from(payload.clone().into_bytes()),
                    QoS::AtMostOnce,
                    true,
                );
                self.sys.published.insert(topic, payload);
                self.route(Arc::new(message), None, ctx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_average_converges_on_the_rate_per_minute() {
        let mut load = LoadAverage::default();
        // 100 messages a second for 10 minutes, updated every 10 s.
        for step in 1..=60u64 {
            load.update(step * 1000, Duration::from_secs(10));
        }
        let [one, five, fifteen] = load.averages;
        assert!((one - 6000.0).abs() < 1.0, "1 min: {one}");
        // 10 minutes of a 5-minute average: 1 - e^-2 of the way there.
        assert!(
            (five - 6000.0 * (1.0 - (-2.0f64).exp())).abs() < 1.0,
            "5 min: {five}"
        );
        assert!(fifteen < five, "15 min lags: {fifteen}");
        // The counter stops: the averages decay.
        load.update(60_000, Duration::from_secs(60));
        assert!(load.averages[0] < one * 0.4);
    }
}
