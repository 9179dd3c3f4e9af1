//! Which broker a [`ManagedConnection`](super::ManagedConnection) tries next: the one of
//! [`ConnectionOptions::host`](crate::ConnectionOptions) and `port`, then those of `failover`.
//!
//! A round of attempts starts at the broker last reached (the first one before any) and goes
//! through every broker once, wrapping around; only a round that failed as a whole waits out
//! the backoff. So a connection stays where it works, and moves on at once when that broker
//! is gone.
//!
//! An MQTT 5 broker may send the connection elsewhere (section 4.11, Server redirection): with
//! 0x9C Use another server, the next attempt goes to the server it names, once (a detour); with
//! 0x9D Server moved, that server takes the broker's place in the list. Either way at once, and
//! at most [`MAX_REDIRECTS`] times before a broker is reached, so two brokers that send the
//! connection to each other cannot keep it from backing off.

use crate::options::{BrokerAddress, ConnectionOptions};

/// Redirects followed in a row without reaching a broker.
pub(super) const MAX_REDIRECTS: usize = 4;

/// The brokers of one connection and where its attempts stand.
#[derive(Debug)]
pub(super) struct BrokerRotation {
    brokers: Vec<BrokerAddress>,
    /// The broker of the attempt under way (or the next one).
    current: usize,
    /// Attempts of the round under way that failed.
    failed_in_round: usize,
    /// Where a broker sent the connection with 0x9C: the next attempt's broker, instead of
    /// `current`'s (and the broker in use while connected there).
    detour: Option<BrokerAddress>,
    /// Redirects followed since a broker was last reached.
    redirects: usize,
    /// The attempt that just ended was redirected: the next one goes at once, uncounted.
    redirected: bool,
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
            detour: None,
            redirects: 0,
            redirected: false,
        }
    }

    /// The broker to connect to now.
    pub(super) fn current(&self) -> &BrokerAddress {
        self.detour.as_ref().unwrap_or(&self.brokers[self.current])
    }

    /// The broker in use sends the connection to `to` (`permanent`: 0x9D Server moved, else
    /// 0x9C Use another server). Returns whether it is followed: not beyond [`MAX_REDIRECTS`]
    /// in a row.
    pub(super) fn redirect(&mut self, to: BrokerAddress, permanent: bool) -> bool {
        if self.redirects >= MAX_REDIRECTS {
            return false;
        }
        self.redirects += 1;
        if permanent {
            self.detour = None;
            self.brokers[self.current] = to;
        } else {
            self.detour = Some(to);
        }
        self.redirected = true;
        true
    }

    /// Whether the attempt that just ended was redirected (and forgets it): the next attempt
    /// then goes at once, and the redirect counts as no failure.
    pub(super) fn take_redirected(&mut self) -> bool {
        std::mem::take(&mut self.redirected)
    }

    /// The attempt at [`BrokerRotation::current`] failed: moves on to the next broker, and
    /// says whether the round goes on or is over.
    pub(super) fn failed(&mut self) -> AfterFailure {
        // A detour that failed counts as a failure of the broker that sent the connection there.
        self.detour = None;
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
        self.redirects = 0;
    }

    /// The connection's own broker, the first of the list.
    pub(super) fn first(&self) -> &BrokerAddress {
        &self.brokers[0]
    }

    /// Whether the broker in use (or tried) is the first.
    pub(super) fn on_first(&self) -> bool {
        self.detour.is_none() && self.current == 0
    }

    /// Whether the broker in use is one a broker sent the connection to (0x9C).
    pub(super) fn on_detour(&self) -> bool {
        self.detour.is_some()
    }

    /// The next attempt goes to the first broker, in a fresh round.
    pub(super) fn go_to_first(&mut self) {
        self.detour = None;
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
    fn a_detour_is_taken_once_and_a_move_replaces_the_broker() {
        let mut brokers = rotation(&[2]);
        assert!(brokers.redirect(BrokerAddress::new("c", 3), false));
        assert!(brokers.take_redirected());
        assert!(!brokers.take_redirected(), "told once");
        assert_eq!(brokers.current().to_string(), "c:3");
        assert!(!brokers.on_first() && brokers.on_detour());
        // The detour fails: a failure of a:1, which sent it there.
        assert_eq!(brokers.failed(), AfterFailure::TryNext);
        assert_eq!(brokers.current().to_string(), "b:2");
        // b:2 moved for good to d:4: it is d:4 from now on.
        assert!(brokers.redirect(BrokerAddress::new("d", 4), true));
        assert_eq!(brokers.current().to_string(), "d:4");
        brokers.reached();
        assert_eq!(brokers.failed(), AfterFailure::TryNext);
        assert_eq!(brokers.current().to_string(), "a:1");
        assert_eq!(brokers.failed(), AfterFailure::BackOff);
        assert_eq!(brokers.current().to_string(), "d:4");
    }

    #[test]
    fn redirects_in_a_row_are_bounded_until_a_broker_is_reached() {
        let mut brokers = rotation(&[]);
        for n in 0..MAX_REDIRECTS {
            assert!(brokers.redirect(BrokerAddress::new("c", n as u16 + 2), false));
        }
        assert!(!brokers.redirect(BrokerAddress::new("c", 99), false));
        brokers.reached();
        assert!(brokers.redirect(BrokerAddress::new("c", 99), false));
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
