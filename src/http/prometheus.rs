//! `/metrics`: the broker's counters in the Prometheus text exposition format (OpenMetrics 1.0),
//! encoded by the `prometheus-client` crate from one snapshot taken per scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::metrics::{DisconnectKind, MetricsSnapshot};
use crate::persistence::{PersistenceSnapshot, SYNC_BOUNDS};
use crate::registry::RegistryStats;
use crate::traffic::{TrafficTotals, LATENCY_BOUNDS};

/// The content type of what [`render`] writes: OpenMetrics, which Prometheus asks for.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of [`to_text_format`]: Prometheus' classic text format, for scrapers that
/// do not ask for OpenMetrics.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites OpenMetrics text as the classic text exposition format (0.0.4): a counter family is
/// named after its `_total` samples, and there is no `# EOF`.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            counters.insert(name.to_string());
        }
    }
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

/// Everything one scrape shows, read once.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The Registry's tables.
    pub stats: RegistryStats,
    /// The broker-wide counters.
    pub metrics: MetricsSnapshot,
    /// The per-worker traffic counters, summed.
    pub traffic: TrafficTotals,
    /// Each bridge's state (`[[bridge]]`).
    pub bridges: Vec<crate::bridge::BridgeSnapshot>,
    /// When the TLS server certificate expires (Unix seconds), with TLS.
    pub tls_certificate_expiry: Option<i64>,
    /// The cluster link's state, with `[cluster]`.
    pub cluster: Option<crate::cluster::ClusterSnapshot>,
    /// The persistence writer's counters, with `[persistence]`.
    pub persistence: Option<PersistenceSnapshot>,
    /// Log lines dropped because standard error was not read fast enough
    /// ([`crate::log_lines_dropped`]); `None` when the program did not set up its log so.
    pub log_lines_dropped: Option<u64>,
}

const QOS_LABELS: [&str; 3] = ["0", "1", "2"];

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let value = i64::try_from(value).unwrap_or(i64::MAX);
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A counter or gauge with one label, one sample per `(label value, value)`.
fn labelled<'a>(
    encoder: &mut DescriptorEncoder,
    kind: MetricType,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (value, sample) in values {
        let labels = [(label, value)];
        let into = family.encode_family(&labels)?;
        match kind {
            MetricType::Gauge => {
                ConstGauge::new(i64::try_from(sample).unwrap_or(i64::MAX)).encode(into)?
            }
            _ => ConstCounter::new(sample).encode(into)?,
        }
    }
    Ok(())
}

/// The persistence writer's metrics (`[persistence]` only).
fn persistence(e: &mut DescriptorEncoder, p: &PersistenceSnapshot) -> std::fmt::Result {
    counter(
        e,
        "switchboard_persistence_commits",
        "Commits that appended records to the persistence log (one per drain of the writer's queue)",
        p.commits,
    )?;
    counter(
        e,
        "switchboard_persistence_appended_bytes",
        "Bytes appended to the persistence log by commits",
        p.appended_bytes,
    )?;
    counter(
        e,
        "switchboard_persistence_write_failures",
        "Appends to the persistence log that failed (retried each second; nothing more is acknowledged meanwhile)",
        p.write_failures,
    )?;
    counter(
        e,
        "switchboard_persistence_sync_failures",
        "fdatasyncs of the persistence log that failed (retried each second, except with fsync = \"always\": see durability_lost)",
        p.sync_failures,
    )?;
    counter(
        e,
        "switchboard_persistence_compactions",
        "Compactions of the persistence log finished",
        p.compactions,
    )?;
    gauge(
        e,
        "switchboard_persistence_log_bytes",
        "Bytes of records in the persistence log's segments (the segment written to runs up to 1 MiB of zeros ahead)",
        p.log_bytes,
    )?;
    gauge(
        e,
        "switchboard_persistence_live_bytes",
        "Bytes of the persistence log's records still live (what a compaction keeps)",
        p.live_bytes,
    )?;
    gauge(
        e,
        "switchboard_persistence_durability_lost",
        "1 once a sync failed with fsync = \"always\": nothing that waits for the disk is acknowledged until a restart",
        u64::from(p.durability_lost),
    )?;
    gauge(
        e,
        "switchboard_persistence_writes_failing",
        "1 while the last append to the persistence log failed (a full disk): nothing more is acknowledged until one succeeds",
        u64::from(p.writes_failing),
    )?;
    gauge(
        e,
        "switchboard_persistence_syncs_failing",
        "1 while the last fdatasync of the persistence log failed (retried each second): nothing more that waits for the disk is acknowledged until one succeeds",
        u64::from(p.syncs_failing),
    )?;
    histogram(
        e,
        "switchboard_persistence_sync_duration_seconds",
        "Time each fdatasync of the persistence log took (retries included)",
        (&SYNC_BOUNDS, &p.sync_buckets),
        p.sync_seconds,
    )
}

/// A histogram of `counts` per bucket (not cumulative: the encoder adds them up) under the
/// upper `bounds`, the last count for `+Inf`, whose values add up to `sum`.
fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    (bounds, counts): (&[f64], &[u64]),
    sum: f64,
) -> std::fmt::Result {
    let buckets: Vec<(f64, u64)> = bounds
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .zip(counts.iter().copied())
        .collect();
    let count = counts.iter().sum();
    let mut family = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    family.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

/// The bridges' metrics, labelled `bridge="<name>"` (none without bridges).
fn bridges(
    e: &mut DescriptorEncoder,
    bridges: &[crate::bridge::BridgeSnapshot],
) -> std::fmt::Result {
    if bridges.is_empty() {
        return Ok(());
    }
    let each = |value: fn(&crate::bridge::BridgeSnapshot) -> u64| {
        bridges.iter().map(move |b| (b.name.as_str(), value(b)))
    };
    labelled(
        e,
        MetricType::Gauge,
        "switchboard_bridge_connected",
        "1 while the bridge's link to the remote broker is up",
        "bridge",
        each(|b| u64::from(b.connected)),
    )?;
    remotes(e, bridges)?;
    labelled(
        e,
        MetricType::Gauge,
        "switchboard_bridge_queued_messages",
        "Messages for the remote broker queued or in flight",
        "bridge",
        each(|b| b.queued),
    )?;
    labelled(
        e,
        MetricType::Counter,
        "switchboard_bridge_messages_sent",
        "Messages the remote broker accepted from the bridge",
        "bridge",
        each(|b| b.sent),
    )?;
    labelled(
        e,
        MetricType::Counter,
        "switchboard_bridge_messages_received",
        "Messages received from the remote broker and published here",
        "bridge",
        each(|b| b.received),
    )?;
    labelled(
        e,
        MetricType::Counter,
        "switchboard_bridge_messages_dropped",
        "Messages the bridge dropped (QoS 0 while down, queue overflow, refused)",
        "bridge",
        each(|b| b.dropped),
    )
}

/// `switchboard_bridge_remote{bridge, address} 1` for each bridge whose link is up: which of its
/// `address`es it is on (a standby, when the main broker is down).
fn remotes(
    e: &mut DescriptorEncoder,
    bridges: &[crate::bridge::BridgeSnapshot],
) -> std::fmt::Result {
    let mut family = e.encode_descriptor(
        "switchboard_bridge_remote",
        "1 for the remote broker (one of the bridge's addresses) its link is up to",
        None,
        MetricType::Gauge,
    )?;
    for bridge in bridges {
        if let Some(remote) = &bridge.connected_to {
            let labels = [
                ("bridge", bridge.name.as_str()),
                ("address", remote.as_str()),
            ];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let (s, m, t) = (&self.stats, &self.metrics, &self.traffic);
        let e = &mut encoder;
        gauge(
            e,
            "switchboard_connections",
            "TCP connections open now (MQTT and MQTT over TLS)",
            m.connections_current,
        )?;
        gauge(
            e,
            "switchboard_clients_connected",
            "MQTT clients connected now",
            s.clients_online as u64,
        )?;
        gauge(
            e,
            "switchboard_sessions_offline",
            "Persistent sessions whose client is not connected",
            s.sessions_offline as u64,
        )?;
        gauge(
            e,
            "switchboard_subscriptions",
            "Subscriptions (filter, client), offline sessions' included",
            s.subscriptions as u64,
        )?;
        gauge(
            e,
            "switchboard_retained_messages",
            "Retained messages",
            s.retained as u64,
        )?;
        gauge(
            e,
            "switchboard_retained_bytes",
            "Bytes (topic, payload, properties) of the retained messages",
            s.retained_bytes as u64,
        )?;
        gauge(
            e,
            "switchboard_offline_queued_messages",
            "QoS 1/2 messages queued or in flight for persistent sessions whose client is not connected",
            s.offline_messages as u64,
        )?;
        gauge(
            e,
            "switchboard_offline_queued_bytes",
            "Bytes (topic, payload, properties) of the messages held for clients that are not connected",
            s.offline_bytes as u64,
        )?;
        gauge(
            e,
            "switchboard_online_queued_messages",
            "QoS 1/2 messages queued or in flight for connected clients",
            t.held_for_connected,
        )?;
        gauge(
            e,
            "switchboard_online_queued_bytes",
            "Bytes (topic, payload, properties) of the messages held for connected clients",
            t.held_bytes_for_connected,
        )?;
        if let Some(p) = &self.persistence {
            persistence(e, p)?;
        }
        labelled(
            e,
            MetricType::Counter,
            "switchboard_messages_received",
            "PUBLISH packets received from clients, by QoS",
            "qos",
            QOS_LABELS.into_iter().zip(t.publishes_received),
        )?;
        labelled(
            e,
            MetricType::Counter,
            "switchboard_messages_sent",
            "PUBLISH packets written to clients, by the QoS they were sent with",
            "qos",
            QOS_LABELS.into_iter().zip(t.publishes_sent),
        )?;
        labelled(
            e,
            MetricType::Counter,
            "switchboard_messages_dropped",
            "Messages not delivered, by reason",
            "reason",
            [
                ("output_buffer_full", m.qos0_dropped_slow_consumer),
                ("queue_full", m.online_queue_dropped),
                ("offline_queue_full", m.offline_queue_dropped),
                ("offline_total_full", m.offline_total_dropped),
                ("expired", m.expired_dropped),
                ("too_large", m.too_large_dropped),
                ("not_authorized", m.acl_denied),
            ],
        )?;
        counter(
            e,
            "switchboard_packets_received",
            "MQTT packets of any type received from clients",
            t.packets_received,
        )?;
        counter(
            e,
            "switchboard_packets_sent",
            "MQTT packets of any type written to clients",
            t.packets_sent,
        )?;
        counter(
            e,
            "switchboard_bytes_received",
            "Bytes read from client sockets",
            t.bytes_received,
        )?;
        counter(
            e,
            "switchboard_bytes_sent",
            "Bytes written to client sockets",
            t.bytes_sent,
        )?;
        counter(
            e,
            "switchboard_connects",
            "CONNECTs accepted (CONNACK 0)",
            m.connects,
        )?;
        labelled(
            e,
            MetricType::Counter,
            "switchboard_disconnects",
            "Ends of accepted MQTT connections, by reason",
            "reason",
            DisconnectKind::ALL
                .iter()
                .map(|kind| kind.label())
                .zip(m.disconnects),
        )?;
        counter(
            e,
            "switchboard_auth_failures",
            "CONNECTs refused for their credentials",
            m.auth_failures,
        )?;
        counter(
            e,
            "switchboard_sessions_expired",
            "Persistent sessions ended because their expiry interval passed while their client was away",
            m.sessions_expired,
        )?;
        counter(
            e,
            "switchboard_protocol_errors",
            "Connections closed for malformed packets or protocol violations",
            m.protocol_errors,
        )?;
        counter(
            e,
            "switchboard_limits_hit",
            "Times a client hit a configured limit ([limits])",
            m.limits_hit,
        )?;
        bridges(e, &self.bridges)?;
        if let Some(cluster) = self.cluster {
            gauge(
                e,
                "switchboard_cluster_nats_connected",
                "1 while the cluster link's NATS connection is up",
                u64::from(cluster.connected),
            )?;
            counter(
                e,
                "switchboard_cluster_messages_sent",
                "Messages published here and handed to NATS for the other nodes",
                cluster.sent,
            )?;
            counter(
                e,
                "switchboard_cluster_messages_received",
                "Messages from the other nodes published here",
                cluster.received,
            )?;
            counter(
                e,
                "switchboard_cluster_messages_dropped",
                "Messages not sent to the other nodes or not published here",
                cluster.dropped,
            )?;
            gauge(
                e,
                "switchboard_cluster_nodes",
                "The other nodes of the cluster this node knows of",
                cluster.nodes,
            )?;
            counter(
                e,
                "switchboard_cluster_subscribe_waits",
                "SUBSCRIBEs that waited for the other nodes to forward their new filters",
                cluster.subscribe_waits,
            )?;
            counter(
                e,
                "switchboard_cluster_subscribe_wait_timeouts",
                "Asks for new filters that ran out of cluster.subscribe_wait before every other node answered",
                cluster.subscribe_wait_timeouts,
            )?;
            counter(
                e,
                "switchboard_cluster_nodes_timed_out",
                "Nodes forgotten for not being heard from within cluster.node_timeout",
                cluster.nodes_timed_out,
            )?;
        }
        if let Some(dropped) = self.log_lines_dropped {
            counter(
                e,
                "switchboard_log_lines_dropped",
                "Log lines dropped because standard error was not read as fast as the broker logged (log.buffer_lines)",
                dropped,
            )?;
        }
        if let Some(expiry) = self.tls_certificate_expiry {
            let metric = ConstGauge::new(expiry);
            metric.encode(e.encode_descriptor(
                "switchboard_tls_certificate_expiry_timestamp_seconds",
                "When the TLS listeners' server certificate expires (notAfter), in Unix seconds",
                None,
                metric.metric_type(),
            )?)?;
        }
        histogram(
            e,
            "switchboard_delivery_latency_seconds",
            "Time from reading a PUBLISH to encoding it for a subscriber (live deliveries: not re-sends, nor retained messages sent on subscribing)",
            (&LATENCY_BOUNDS, &t.latency_buckets),
            t.latency_sum_seconds,
        )
    }
}

/// The text of one scrape.
pub fn render(scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counters_by_their_samples() {
        let openmetrics = "# HELP a_messages Messages.\n# TYPE a_messages counter\n\
                           a_messages_total{qos=\"0\"} 3\n# HELP b Open.\n# TYPE b gauge\nb 1\n# EOF\n";
        assert_eq!(
            to_text_format(openmetrics),
            "# HELP a_messages_total Messages.\n# TYPE a_messages_total counter\n\
             a_messages_total{qos=\"0\"} 3\n# HELP b Open.\n# TYPE b gauge\nb 1\n"
        );
    }
}
