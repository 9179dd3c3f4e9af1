//! The log lines about what a client may send again and again and the broker refuses: at most
//! one line a second for each kind over all Sessions, each with the count since the line before.
//! A device stuck publishing to a topic the ACL denies, or subscribing past a limit in a loop,
//! would otherwise write a line per message (`docs/security.md`, "Threat model"); the metrics
//! (`acl_denied`, `limits_hit`) count every one.

use std::sync::Mutex;
use std::time::Duration;

use tracing::info;

use crate::log_gate::{shared_events, LogGate};

/// How often a line about one kind of refusal may go out.
const EVERY: Duration = Duration::from_secs(1);

/// A kind of refusal, with a gate of its own in [`RefusalLines`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
    /// MQTT 3.1.1 publishes acknowledged and dropped (over a limit): the client cannot tell.
    Dropped,
    /// Publishes the ACL denies.
    Denied,
    /// (5.0) Publishes refused for a topic over the limits (0x90).
    Topic,
    /// (5.0) Publishes refused for a payload that is not the UTF-8 it claims (0x99).
    Payload,
    /// Filters of a SUBSCRIBE refused by the Session (the ACL, the filter limits, an
    /// interceptor's rewrite).
    Subscriptions,
}

impl Refusal {
    /// How many kinds there are.
    const KINDS: usize = Refusal::Subscriptions as usize + 1;
}

/// One gate per kind of refusal, so that a flood of one kind does not hide the first line of
/// another; indexed by [`Refusal`].
#[derive(Debug)]
pub(crate) struct RefusalLines([Mutex<LogGate>; Refusal::KINDS]);

impl RefusalLines {
    /// No line out yet.
    pub(crate) fn new() -> Self {
        RefusalLines(std::array::from_fn(|_| Mutex::new(LogGate::new(EVERY))))
    }

    /// Counts `n` refusals of `kind`; when a line about them is due, returns how many it
    /// reports (these and those held back since the last line).
    pub(crate) fn count(&self, kind: Refusal, n: u64) -> Option<u64> {
        shared_events(&self.0[kind as usize], n)
    }
}

/// The filters of one SUBSCRIBE that the Session refused: one line for the packet (the first
/// filter and why, how many the packet had refused), when [`Refusal::Subscriptions`] lets one
/// out, instead of a line per filter.
#[derive(Debug, Default)]
pub(super) struct RefusedFilters {
    first: Option<(String, String)>,
    count: u64,
}

impl RefusedFilters {
    /// Notes a refused filter and why.
    pub(super) fn note(&mut self, filter: String, why: String) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some((filter, why));
        }
    }

    /// Logs the packet's refusals as `what` (if any, and if a line is due).
    pub(super) fn log(self, lines: &RefusalLines, client_id: &str, what: &'static str) {
        let Some((filter, why)) = self.first else {
            return;
        };
        if let Some(refused) = lines.count(Refusal::Subscriptions, self.count) {
            // Its first 200 characters: a filter may be 65,535 bytes long.
            let filter: String = filter.chars().take(200).collect();
            info!(client_id = %client_id, filter = %filter, why = %why, in_packet = self.count, refused, "{what}");
        }
    }
}
