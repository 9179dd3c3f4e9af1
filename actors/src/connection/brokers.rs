//! Which broker a [`ManagedConnection`](super::ManagedConnection) tries next: the one of
//! [`ConnectionOptions::host`](crate::ConnectionOptions) and `port`, then those of `failover`.
//!
//! A round of attempts starts at the broker last reached (the first one before any) and goes
//! through every broker once, wrapping around; only a round that failed as a whole waits out
//! the backoff. So a connection stays where it works, and moves on at once when that broker
//! is gone.

use crate::options::{BrokerAddress, ConnectionOptions};

/// The brokers of one connection and where its attempts stand.
#[derive(Debug)]
pub(super) struct BrokerRotation {
    brokers: Vec<BrokerAddress>,
    /// The broker of the attempt under way (or the next one).
    current: usize,
    /// Attempts of the round under way that failed.
    failed_in_round: usize,
}

/// What follows a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AfterFailure {
    /// Try the next broker of the round now.
    TryNext,
    /// Every broker of the round failed: back off, then start a round at the same place.
    BackOff,
}

impl BrokerRotation {
    /// The brokers of `options`: its own first, then its failover list.
    pub(super) fn new(options: &ConnectionOptions) -> Self {
        let mut brokers = vec![BrokerAddress::new(options.host.clone(), options.port)];
        brokers.extend(options.failover.iter().cloned());
        BrokerRotation {
            brokers,
            current: 0,
            failed_in_round: 0,
        }
    }

    /// The broker to connect to now.
    pub(super) fn current(&self) -> &BrokerAddress {
        &self.brokers[self.current]
    }

    /// The attempt at [`BrokerRotation::current`] failed: moves on to the next broker, and
    /// says whether the round goes on or is over.
    pub(super) fn failed(&mut self) -> AfterFailure {
        self.failed_in_round += 1;
        self.current = (self.current + 1) % self.brokers.len();
        if self.failed_in_round < self.brokers.len() {
            AfterFailure::TryNext
        } else {
            // Back at the broker the round started with.
            self.failed_in_round = 0;
            AfterFailure::BackOff
        }
    }

    /// The attempt reached its broker: the next round (after this link is lost) starts there.
    pub(super) fn reached(&mut self) {
        self.failed_in_round = 0;
    }

    /// The connection's own broker, the first of the list.
    pub(super) fn first(&self) -> &BrokerAddress {
        &self.brokers[0]
    }

    /// Whether the broker in use (or tried) is the first.
    pub(super) fn on_first(&self) -> bool {
        self.current == 0
    }

    /// The next attempt goes to the first broker, in a fresh round.
    pub(super) fn go_to_first(&mut self) {
        self.current = 0;
        self.failed_in_round = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(failover: &[u16]) -> BrokerRotation {
        let mut options = ConnectionOptions::new("a", 1, "c");
        options.failover = failover
            .iter()
            .map(|&port| BrokerAddress::new("b", port))
            .collect();
        BrokerRotation::new(&options)
    }

    #[test]
    fn one_broker_backs_off_after_each_failure() {
        let mut brokers = rotation(&[]);
        assert_eq!(brokers.current().to_string(), "a:1");
        assert_eq!(brokers.failed(), AfterFailure::BackOff);
        assert_eq!(brokers.current().to_string(), "a:1");
        assert_eq!(brokers.failed(), AfterFailure::BackOff);
    }

    #[test]
    fn a_round_tries_each_broker_once_then_backs_off() {
        let mut brokers = rotation(&[2, 3]);
        assert_eq!(brokers.failed(), AfterFailure::TryNext);
        assert_eq!(brokers.current().to_string(), "b:2");
        assert_eq!(brokers.failed(), AfterFailure::TryNext);
        assert_eq!(brokers.current().to_string(), "b:3");
        assert_eq!(brokers.failed(), AfterFailure::BackOff);
        assert_eq!(
            brokers.current().to_string(),
            "a:1",
            "the next round starts over"
        );
    }

    #[test]
    fn a_connection_stays_on_the_broker_it_reached_and_wraps_around_from_it() {
        let mut brokers = rotation(&[2, 3]);
        assert_eq!(brokers.failed(), AfterFailure::TryNext);
        brokers.reached();
        assert_eq!(brokers.current().to_string(), "b:2");
        // That link is lost: b:2 first, then b:3, then a:1, then a back-off.
        assert_eq!(brokers.failed(), AfterFailure::TryNext);
        assert_eq!(brokers.current().to_string(), "b:3");
        assert_eq!(brokers.failed(), AfterFailure::TryNext);
        assert_eq!(brokers.current().to_string(), "a:1");
        assert_eq!(brokers.failed(), AfterFailure::BackOff);
        assert_eq!(brokers.current().to_string(), "b:2");
        // A failure in the middle of a round that then reaches a broker starts afresh.
        assert_eq!(brokers.failed(), AfterFailure::TryNext);
        brokers.reached();
        assert_eq!(brokers.current().to_string(), "b:3");
        assert_eq!(brokers.failed(), AfterFailure::TryNext);
        assert_eq!(brokers.failed(), AfterFailure::TryNext);
        assert_eq!(brokers.failed(), AfterFailure::BackOff);
        assert_eq!(brokers.current().to_string(), "b:3");
    }
}
