//! At most one log line per interval about an event that can come in floods (failed accepts,
//! connections over the per-address rate, refused retained messages, publishes and
//! subscriptions a client may send again and again), each line with the count of events since
//! the one before.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When the next line about one kind of event may go out, and how many events it will report.
#[derive(Debug)]
pub(crate) struct LogGate {
    every: Duration,
    last_line: Option<Instant>,
    since_line: u64,
}

impl LogGate {
    /// Lines at most once per `every`.
    pub(crate) const fn new(every: Duration) -> Self {
        LogGate {
            every,
            last_line: None,
            since_line: 0,
        }
    }

    /// Counts one event at `now`. When a line is due, returns how many events it reports (this
    /// one and those held back since the last line).
    pub(crate) fn event(&mut self, now: Instant) -> Option<u64> {
        self.events(1, now)
    }

    /// Counts `n` events at `now` (a packet's refused filters, say) as [`LogGate::event`] counts
    /// one.
    pub(crate) fn events(&mut self, n: u64, now: Instant) -> Option<u64> {
        self.since_line += n;
        if self
            .last_line
            .is_some_and(|at| now.duration_since(at) < self.every)
        {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.since_line))
    }

    /// Forgets the last line and what was held back; returns whether a line had gone out (for
    /// an "all well again" line).
    pub(crate) fn reset(&mut self) -> bool {
        self.since_line = 0;
        self.last_line.take().is_some()
    }
}

/// [`LogGate::events`] on a gate that Sessions on several threads share. A poisoned lock only
/// means a logging call panicked; the gate is still usable.
pub(crate) fn shared_events(gate: &Mutex<LogGate>, n: u64) -> Option<u64> {
    gate.lock()
        .unwrap_or_else(|e| e.into_inner())
        .events(n, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_events_held_back() {
        let mut gate = LogGate::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(gate.event(t0), Some(1), "the first event is logged at once");
        assert_eq!(gate.event(t0 + Duration::from_secs(1)), None);
        assert_eq!(gate.event(t0 + Duration::from_secs(9)), None);
        assert_eq!(gate.event(t0 + Duration::from_secs(10)), Some(3));
        assert!(gate.reset());
        assert!(!gate.reset(), "nothing logged since");
        assert_eq!(gate.event(t0 + Duration::from_secs(11)), Some(1));
    }

    #[test]
    fn a_batch_of_events_counts_as_that_many() {
        let gate = Mutex::new(LogGate::new(Duration::from_secs(3600)));
        assert_eq!(
            shared_events(&gate, 195),
            Some(195),
            "the first batch is logged whole"
        );
        assert_eq!(shared_events(&gate, 100), None);
        assert_eq!(shared_events(&gate, 5), None);
        let mut gate = gate.into_inner().expect("not poisoned");
        let later = Instant::now() + Duration::from_secs(3600);
        assert_eq!(
            gate.events(1, later),
            Some(106),
            "held back, then reported together"
        );
    }
}
