//! At most one log line per interval about an event that can come in floods (failed accepts,
//! connections over the per-address rate, refused retained messages), each line with the count
//! of events since the one before.

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
        self.since_line += 1;
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
}
