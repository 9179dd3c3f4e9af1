//! Messages a client did not get because it could not keep up: counted by reason in
//! [`Metrics`], and reported in a warning that names the client, at most once per
//! [`WARNING_INTERVAL`] per client, so a slow consumer under a flood costs one log line, not one
//! per message.

use std::time::{Duration, Instant};

use tracing::warn;

use crate::metrics::Metrics;

/// Shortest time between two drop warnings for one client.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Why a message meant for a client was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// QoS 1/2: the connected client's queue was full (`sessions.queue_overflow`).
    OnlineQueueFull,
    /// QoS 1/2: the offline session's queue was full.
    OfflineQueueFull,
    /// QoS 0: `sessions.max_outbound_bytes` were waiting for the client's socket.
    OutputFull,
}

/// Drops of one client not yet reported in a warning.
#[derive(Debug, Default)]
pub struct DropLog {
    last_warning: Option<Instant>,
    online_queue_full: u64,
    offline_queue_full: u64,
    output_full: u64,
}

impl DropLog {
    /// Counts `n` drops for `reason` in `metrics`, and warns naming `client_id` if no warning
    /// for this client went out in the last [`WARNING_INTERVAL`]. A `None` log is created on
    /// first use (most clients never drop anything, and pay one word for it).
    pub fn record(
        log: &mut Option<Box<DropLog>>,
        metrics: &Metrics,
        client_id: &str,
        reason: DropReason,
        n: u64,
    ) {
        if n == 0 {
            return;
        }
        match reason {
            DropReason::OnlineQueueFull => metrics.add_online_queue_dropped(n),
            DropReason::OfflineQueueFull => metrics.add_offline_queue_dropped(n),
            DropReason::OutputFull => metrics.add_qos0_dropped(n),
        }
        let log = log.get_or_insert_with(Default::default);
        match reason {
            DropReason::OnlineQueueFull => log.online_queue_full += n,
            DropReason::OfflineQueueFull => log.offline_queue_full += n,
            DropReason::OutputFull => log.output_full += n,
        }
        let now = Instant::now();
        if log
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= WARNING_INTERVAL)
        {
            log.last_warning = Some(now);
            log.warn(client_id);
        }
    }

    /// Warns about drops not reported yet (when the client's connection or session ends).
    pub fn flush(log: &mut Option<Box<DropLog>>, client_id: &str) {
        if let Some(log) = log {
            log.warn(client_id);
        }
    }

    fn warn(&mut self, client_id: &str) {
        let total = self.online_queue_full + self.offline_queue_full + self.output_full;
        if total == 0 {
            return;
        }
        warn!(
            client_id,
            queue_full = self.online_queue_full,
            offline_queue_full = self.offline_queue_full,
            qos0_output_full = self.output_full,
            "messages dropped for a client that cannot keep up (counts since the last warning; at most one warning per 10 s)"
        );
        self.online_queue_full = 0;
        self.offline_queue_full = 0;
        self.output_full = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_drop_and_warns_once_per_interval() {
        let metrics = Metrics::default();
        let mut log = None;
        DropLog::record(&mut log, &metrics, "c", DropReason::OnlineQueueFull, 3);
        let first = log.as_ref().and_then(|l| l.last_warning);
        assert!(first.is_some(), "the first drop warns at once");
        assert_eq!(log.as_ref().map(|l| l.online_queue_full), Some(0));
        DropLog::record(&mut log, &metrics, "c", DropReason::OutputFull, 2);
        DropLog::record(&mut log, &metrics, "c", DropReason::OfflineQueueFull, 1);
        let l = log.as_ref().expect("log");
        assert_eq!(
            l.last_warning, first,
            "no second warning within the interval"
        );
        assert_eq!(
            (l.output_full, l.offline_queue_full),
            (2, 1),
            "kept for the next warning"
        );
        let m = metrics.snapshot();
        assert_eq!(
            (
                m.online_queue_dropped,
                m.qos0_dropped_slow_consumer,
                m.offline_queue_dropped
            ),
            (3, 2, 1)
        );
        DropLog::flush(&mut log, "c");
        assert_eq!(log.as_ref().map(|l| l.output_full), Some(0));
    }
}
