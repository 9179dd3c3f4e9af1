//! The filters this node's clients hold, counted for the cluster link: the link subscribes on
//! NATS to what they need and announces them to the other nodes, so it must hear when a filter
//! gets its first holder and when its last one lets go. The Registry counts the holders of each
//! distinct filter where a client's subscriptions change and tells the link of each new holder
//! and of a filter's last holder leaving, in the order they happen; the link never asks for the
//! whole list again (with a
//! fleet's 100,000 devices each on its own filter, that list was a walk of every client on the
//! Registry's thread: a 235 ms stall every 30 s, docs/benchmarks.md "The cluster link's filters
//! at 100,000 devices"). Without a watcher nothing is counted.

use std::collections::{BTreeSet, HashMap};

use actix::prelude::*;

use super::{Registry, CLUSTER_CLIENT_ID};

/// A change of the filters this node's clients hold, as [`FiltersChanged`] carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterChange {
    /// A client subscribed to the filter (a shared group's with its `$share/{group}/`): its
    /// first holder, or another one, whose SUBSCRIBE the link may have been asked about
    /// ([`AwaitInterest`](super::AwaitInterest)) and now knows taken.
    Held(String),
    /// The filter's last holder let go: unsubscribed, ended its session, or was removed; or the
    /// link asked about it ([`ReleaseUnheld`]) and no client holds it.
    Released(String),
}

/// Sent by the Registry to the cluster link after it is watching ([`WatchFilters`]): the
/// changes of the node's filters since the last one, in the order they happened.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct FiltersChanged(pub Vec<FilterChange>);

/// Sent by the cluster link to the Registry at start: every distinct filter this node's
/// clients hold now (bridges' local clients included, the link's own not), and
/// [`FiltersChanged`] to `0` at each change from then on.
#[derive(Message)]
#[rtype(result = "BTreeSet<String>")]
pub struct WatchFilters(pub Recipient<FiltersChanged>);

/// Sent by the cluster link to the Registry with filters it took an interest in for a SUBSCRIBE
/// the Registry has not (yet) taken, once it stops waiting for it: the Registry answers with
/// [`FilterChange::Released`], through [`FiltersChanged`] and so in order with the other
/// changes, for each one no client holds.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReleaseUnheld(pub Vec<String>);

/// How many clients hold each filter, while the cluster link watches.
#[derive(Default)]
pub(super) struct FilterWatch {
    watcher: Option<Recipient<FiltersChanged>>,
    /// Holders of each distinct filter (none at 0: the entry goes).
    holders: HashMap<Box<str>, u32>,
    /// Changes not sent yet (sent by [`FilterWatch::flush`]).
    pending: Vec<FilterChange>,
}

impl FilterWatch {
    /// Client `client_id` subscribed to `filter`; `new`: it did not hold it before (a SUBSCRIBE
    /// that replaces a subscription's options counts no new holder, but the link hears of it).
    pub fn held(&mut self, client_id: &str, filter: &str, new: bool) {
        if self.watcher.is_none() || client_id == CLUSTER_CLIENT_ID {
            return;
        }
        if new {
            add_holder(&mut self.holders, filter);
        }
        self.pending.push(FilterChange::Held(filter.to_string()));
    }

    /// Client `client_id` no longer holds `filter`, which it held.
    pub fn released(&mut self, client_id: &str, filter: &str) {
        if self.watcher.is_none() || client_id == CLUSTER_CLIENT_ID {
            return;
        }
        if let Some(count) = self.holders.get_mut(filter) {
            *count -= 1;
            if *count == 0 {
                self.holders.remove(filter);
                self.pending
                    .push(FilterChange::Released(filter.to_string()));
            }
        }
    }

    /// Sends the changes made since the last call, if any.
    pub fn flush(&mut self) {
        if let Some(watcher) = &self.watcher {
            if !self.pending.is_empty() {
                watcher.do_send(FiltersChanged(std::mem::take(&mut self.pending)));
            }
        }
    }

    /// Whether the counts are those of `clients` (a walk of them all: debug builds' check).
    pub fn counts_agree<'a>(&self, clients: impl Iterator<Item = &'a super::Client>) -> bool {
        match self.watcher {
            None => self.holders.is_empty(),
            Some(_) => self.holders == holders_of(clients),
        }
    }
}

/// How many of `clients` (the cluster link's own left out) hold each filter, by a walk.
fn holders_of<'a>(clients: impl Iterator<Item = &'a super::Client>) -> HashMap<Box<str>, u32> {
    let mut holders: HashMap<Box<str>, u32> = HashMap::new();
    for client in clients.filter(|client| &*client.id != CLUSTER_CLIENT_ID) {
        for filter in client.subscriptions.keys() {
            add_holder(&mut holders, filter);
        }
    }
    holders
}

/// One more holder of `filter` (its key made only for the first).
fn add_holder(holders: &mut HashMap<Box<str>, u32>, filter: &str) {
    match holders.get_mut(filter) {
        Some(count) => *count += 1,
        None => {
            holders.insert(filter.into(), 1);
        }
    }
}

impl Handler<WatchFilters> for Registry {
    type Result = MessageResult<WatchFilters>;

    fn handle(&mut self, msg: WatchFilters, _: &mut Context<Self>) -> Self::Result {
        let watch = &mut self.filter_watch;
        watch.watcher = Some(msg.0);
        watch.pending.clear();
        watch.holders = holders_of(self.clients.iter().flatten().map(|c| &**c));
        MessageResult(watch.holders.keys().map(|f| f.to_string()).collect())
    }
}

impl Handler<ReleaseUnheld> for Registry {
    type Result = ();

    fn handle(&mut self, msg: ReleaseUnheld, _: &mut Context<Self>) {
        let watch = &mut self.filter_watch;
        for filter in msg.0 {
            if !watch.holders.contains_key(filter.as_str()) {
                watch.pending.push(FilterChange::Released(filter));
            }
        }
        watch.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Vec<FilterChange>);
    impl Actor for Collect {
        type Context = Context<Self>;
    }
    impl Handler<FiltersChanged> for Collect {
        type Result = ();
        fn handle(&mut self, msg: FiltersChanged, _: &mut Context<Self>) {
            self.0.extend(msg.0);
        }
    }

    #[actix_rt::test]
    async fn every_holder_is_told_and_only_the_last_one_leaving() {
        let mut watch = FilterWatch::default();
        watch.held("a", "x/#", true);
        assert!(
            watch.pending.is_empty(),
            "nothing is counted without a watcher"
        );
        watch.watcher = Some(Collect(Vec::new()).start().recipient());
        watch.held("a", "x/#", true);
        watch.held("b", "x/#", true);
        watch.held(CLUSTER_CLIENT_ID, "y", true);
        watch.released("a", "x/#");
        let held = || FilterChange::Held("x/#".into());
        assert_eq!(watch.pending, vec![held(), held()]);
        watch.held("c", "x/#", true);
        watch.held("c", "x/#", false);
        watch.released("b", "x/#");
        watch.released(CLUSTER_CLIENT_ID, "y");
        watch.released("c", "x/#");
        watch.held("d", "x/#", true);
        assert_eq!(
            watch.pending,
            vec![
                held(),
                held(),
                held(),
                held(),
                FilterChange::Released("x/#".into()),
                held()
            ]
        );
        assert_eq!(watch.holders.len(), 1);
        watch.flush();
        assert!(watch.pending.is_empty());
    }
}
