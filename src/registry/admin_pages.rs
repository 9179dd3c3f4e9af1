//! The admin API's pages of clients and of subscriptions, both in client id order, read from
//! the Registry's index of client ids in that order (`Registry::by_order`): a page costs its
//! own entries, and a search one pass over the ids (and, for subscriptions, their filters)
//! that allocates nothing for ASCII text. Copying and sorting the whole table for each page,
//! as before, held the Registry's thread for tens of milliseconds per page with 100,000
//! clients, and an open dashboard asks for both pages after every lifecycle event
//! (docs/benchmarks.md, "The admin API's pages with 100,000 clients").

use actix::prelude::*;

use super::admin::{ClientSummary, ListClients, ListSubscriptions, Page, SubscriptionSummary};
use super::client::Client;
use super::Registry;
use crate::message::SubscriptionOptions;

impl Handler<ListClients> for Registry {
    type Result = Page<ClientSummary>;

    fn handle(&mut self, msg: ListClients, _: &mut Context<Self>) -> Page<ClientSummary> {
        let end = msg.offset.saturating_add(msg.limit);
        let (total, keys) = match msg.search.map(|s| s.to_lowercase()) {
            None => {
                let keys = self.by_order.values().skip(msg.offset).take(msg.limit);
                (self.by_order.len(), keys.copied().collect::<Vec<_>>())
            }
            Some(needle) => {
                let mut total = 0;
                let mut keys = Vec::new();
                for (id, key) in &self.by_order {
                    if contains_folded(id, &needle) {
                        if (msg.offset..end).contains(&total) {
                            keys.push(*key);
                        }
                        total += 1;
                    }
                }
                (total, keys)
            }
        };
        let items = keys
            .into_iter()
            .filter_map(|key| self.summary(key))
            .collect();
        Page { total, items }
    }
}

impl Handler<ListSubscriptions> for Registry {
    type Result = Page<SubscriptionSummary>;

    fn handle(
        &mut self,
        msg: ListSubscriptions,
        _: &mut Context<Self>,
    ) -> Page<SubscriptionSummary> {
        let needle = msg.search.map(|s| s.to_lowercase());
        let end = msg.offset.saturating_add(msg.limit);
        let mut items = Vec::new();
        // Subscriptions passed so far, matching the search if there is one.
        let mut seen = 0;
        for key in self.by_order.values() {
            if needle.is_none() && seen >= end {
                break; // without a search the total is the route table's count
            }
            let Some(client) = self.clients.get(key.0 as usize).and_then(|c| c.as_deref()) else {
                continue;
            };
            // With a search, a client whose id matches shows every filter; another, those that
            // match.
            let all = needle
                .as_deref()
                .is_none_or(|needle| contains_folded(&client.id, needle));
            let wanted = |filter: &str| {
                all || needle
                    .as_deref()
                    .is_some_and(|needle| contains_folded(filter, needle))
            };
            let matching = if all {
                client.subscriptions.len()
            } else {
                client.subscriptions.keys().filter(|f| wanted(f)).count()
            };
            if seen < end && seen + matching > msg.offset {
                let mut filters: Vec<(&String, &SubscriptionOptions)> = client
                    .subscriptions
                    .iter()
                    .filter(|(filter, _)| wanted(filter))
                    .collect();
                filters.sort_unstable_by(|a, b| a.0.cmp(b.0));
                let from = msg.offset.saturating_sub(seen);
                let to = (end - seen).min(filters.len());
                items.extend(
                    filters[from..to]
                        .iter()
                        .map(|(filter, options)| summary_of(client, filter, **options)),
                );
            }
            seen += matching;
        }
        let total = match needle {
            Some(_) => seen,
            None => self.subscription_count(),
        };
        Page { total, items }
    }
}

impl Registry {
    /// How many subscriptions the clients hold: the route table's count (debug builds check it
    /// against a walk of the clients).
    fn subscription_count(&self) -> usize {
        let counted = self.routes.read().subscriptions();
        #[cfg(debug_assertions)]
        {
            let walked: usize = self
                .clients
                .iter()
                .flatten()
                .map(|client| client.subscriptions.len())
                .sum();
            debug_assert_eq!(counted, walked, "the route table's subscription count");
        }
        counted
    }
}

/// One of `client`'s subscriptions as the admin API shows it.
fn summary_of(client: &Client, filter: &str, options: SubscriptionOptions) -> SubscriptionSummary {
    SubscriptionSummary {
        client_id: client.id.to_string(),
        filter: filter.to_string(),
        options,
        connected: client.attached.as_ref().is_some_and(|a| !a.detaching),
    }
}

/// Whether `text`, lowercased, contains `needle` (lowercased already). ASCII text (client ids
/// and filters nearly always are) is compared in place, without a lowercased copy.
fn contains_folded(text: &str, needle: &str) -> bool {
    if !text.is_ascii() {
        return text.to_lowercase().contains(needle);
    }
    let (text, needle) = (text.as_bytes(), needle.as_bytes());
    needle.is_empty()
        || text.windows(needle.len()).any(|window| {
            window
                .iter()
                .zip(needle)
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
        })
}

#[cfg(test)]
mod tests {
    use super::contains_folded;

    #[test]
    fn searches_fold_case_with_or_without_a_copy() {
        assert!(contains_folded("Gate-1AB", "gate"));
        assert!(contains_folded("detrd/status/REQUEST/+", "request/"));
        assert!(contains_folded("anything", ""));
        assert!(!contains_folded("gat", "gate"));
        assert!(!contains_folded("radar", "gate"));
        // Not ASCII: lowercased as a copy, as before.
        assert!(contains_folded("Schranke-ÄÖ", "äö"));
        assert!(
            !contains_folded("gate", "äö"),
            "ASCII text never holds other letters"
        );
    }
}
