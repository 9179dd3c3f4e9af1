//! The filters the link announced for SUBSCRIBEs still at the subscribe barrier: held by this
//! node before the Registry takes them, so that the other nodes forward them by the SUBACK.
//! Each one counts the SUBSCRIBEs waiting for it (two clients may ask for the same new filter
//! at once), so that the first one taken, or another client letting go of the filter, does not
//! drop what a later one still waits for. One whose connection ended before the Registry took
//! it is never taken: it goes once its wait is over.

use std::collections::HashMap;
use std::time::Instant;

/// One filter's waiting SUBSCRIBEs.
#[derive(Debug)]
struct Asked {
    /// Kept at least until then (the last ask's wait, and some time more).
    until: Instant,
    /// SUBSCRIBEs asked for and not yet taken by the Registry.
    waiting: u32,
}

/// The filters asked for whose SUBSCRIBE the Registry may not have taken yet.
#[derive(Debug, Default)]
pub struct AskedFilters {
    asked: HashMap<String, Asked>,
}

impl AskedFilters {
    /// A SUBSCRIBE with `filter` waits at the barrier; kept at least until `until`.
    pub fn ask(&mut self, filter: &str, until: Instant) {
        match self.asked.get_mut(filter) {
            Some(asked) => {
                asked.waiting += 1;
                asked.until = asked.until.max(until);
            }
            None => {
                self.asked
                    .insert(filter.to_string(), Asked { until, waiting: 1 });
            }
        }
    }

    /// The Registry took a SUBSCRIBE with `filter`: one fewer waits for it.
    pub fn taken(&mut self, filter: &str) {
        if let Some(asked) = self.asked.get_mut(filter) {
            asked.waiting = asked.waiting.saturating_sub(1);
            if asked.waiting == 0 {
                self.asked.remove(filter);
            }
        }
    }

    /// Whether a SUBSCRIBE may still come for `filter`.
    pub fn waits_for(&self, filter: &str) -> bool {
        self.asked.contains_key(filter)
    }

    /// Every filter a SUBSCRIBE may still come for.
    pub fn filters(&self) -> impl Iterator<Item = &String> {
        self.asked.keys()
    }

    /// The filters whose wait is over at `now`, no longer kept: the SUBSCRIBEs still counted
    /// for them were dropped with their connections.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut expired = Vec::new();
        self.asked.retain(|filter, asked| {
            let keep = asked.until > now;
            if !keep {
                expired.push(filter.clone());
            }
            keep
        });
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_filter_stays_while_any_subscribe_for_it_waits_and_goes_when_its_wait_is_over() {
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let mut asked = AskedFilters::default();
        asked.ask("gate/#", now + Duration::from_secs(5));
        asked.ask("gate/#", later);
        asked.ask("radar/#", later);
        asked.taken("gate/#");
        assert!(
            asked.waits_for("gate/#"),
            "the second SUBSCRIBE still waits"
        );
        asked.taken("gate/#");
        assert!(!asked.waits_for("gate/#"));
        asked.taken("gate/#");
        assert!(
            !asked.waits_for("gate/#"),
            "a SUBSCRIBE not asked for counts nothing"
        );
        assert_eq!(
            asked.expire(now + Duration::from_secs(5)),
            Vec::<String>::new()
        );
        assert_eq!(asked.filters().collect::<Vec<_>>(), ["radar/#"]);
        assert_eq!(asked.expire(later), ["radar/#"]);
        assert!(!asked.waits_for("radar/#"));
    }
}
