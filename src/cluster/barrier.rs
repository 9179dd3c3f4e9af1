//! The bookkeeping of the subscribe barrier (`cluster.subscribe_wait`): a SUBACK goes out once
//! every other node forwards the SUBSCRIBE's filters to this one.
//!
//! - [`Asks`], on the subscribing node: a filter new to this node is announced, then *asked*
//!   for: each other node answers once its local subscription to it is in place. The SUBACK
//!   waits for every answer, or for the wait to run out; a node that let a wait run out is not
//!   waited for again until it is heard from (a crashed node does not slow every SUBSCRIBE).
//! - [`Answers`], on the other nodes: an ask is answered once a SUBACK for each of its filters
//!   came back to the link's local client after the ask arrived.
//!
//! A node handles one node's asks in the order they were sent, and its local client's SUBACKs
//! come in order, so an answer to an ask also answers every earlier ask of the same node.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use tokio::sync::oneshot;

/// What a SUBSCRIBE waits for.
#[derive(Debug)]
pub enum AskOutcome {
    /// Nothing: every other node forwards its filters already, or there is no other node.
    Ready,
    /// The answers to an ask: `ask` is the ask to send (its id and filters), if a new one.
    Wait {
        /// Told when the SUBSCRIBE may be taken.
        done: oneshot::Receiver<()>,
        /// The ask to send, for filters new to this node.
        ask: Option<(u64, Vec<String>)>,
    },
}

/// An ask not yet answered by every node.
#[derive(Debug, Default)]
struct OpenAsk {
    /// The nodes that have not answered.
    nodes: BTreeSet<String>,
    /// Its filters.
    filters: Vec<String>,
    /// The SUBSCRIBEs waiting for it.
    waiters: Vec<oneshot::Sender<()>>,
}

/// This node's asks.
#[derive(Debug, Default)]
pub struct Asks {
    next_id: u64,
    open: BTreeMap<u64, OpenAsk>,
    /// By filter: the latest open ask for it.
    pending: HashMap<String, u64>,
    /// Nodes that let an ask's wait run out, until they are heard from.
    silent: BTreeSet<String>,
}

impl Asks {
    /// No asks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A SUBSCRIBE of `filters` (all of them, as this node holds them), of which `new` were not
    /// held here before; `nodes` are the other nodes known.
    pub fn ask(
        &mut self,
        filters: &[String],
        new: Vec<String>,
        nodes: impl IntoIterator<Item = String>,
    ) -> AskOutcome {
        let nodes: BTreeSet<String> = nodes
            .into_iter()
            .filter(|node| !self.silent.contains(node))
            .collect();
        if !new.is_empty() && !nodes.is_empty() {
            self.next_id += 1;
            let id = self.next_id;
            let (tell, done) = oneshot::channel();
            for filter in &new {
                self.pending.insert(filter.clone(), id);
            }
            self.open.insert(
                id,
                OpenAsk {
                    nodes,
                    filters: new.clone(),
                    waiters: vec![tell],
                },
            );
            return AskOutcome::Wait {
                done,
                ask: Some((id, new)),
            };
        }
        // A filter asked for by an earlier SUBSCRIBE: the latest such ask covers the others.
        let latest = filters.iter().filter_map(|f| self.pending.get(f)).max();
        match latest.and_then(|id| self.open.get_mut(id)) {
            Some(open) => {
                let (tell, done) = oneshot::channel();
                open.waiters.push(tell);
                AskOutcome::Wait { done, ask: None }
            }
            None => AskOutcome::Ready,
        }
    }

    /// `node` answered ask `id`, and so every earlier one.
    pub fn answered(&mut self, node: &str, id: u64) {
        self.heard_from(node);
        let ids: Vec<u64> = self.open.range(..=id).map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(open) = self.open.get_mut(&id) {
                open.nodes.remove(node);
            }
            self.resolve_if_answered(id);
        }
    }

    /// `node` spoke: it is waited for again.
    pub fn heard_from(&mut self, node: &str) {
        self.silent.remove(node);
    }

    /// `node` left the cluster: no ask waits for it.
    pub fn gone(&mut self, node: &str) {
        self.silent.remove(node);
        let ids: Vec<u64> = self.open.keys().copied().collect();
        for id in ids {
            if let Some(open) = self.open.get_mut(&id) {
                open.nodes.remove(node);
            }
            self.resolve_if_answered(id);
        }
    }

    /// Ask `id`'s wait ran out: its SUBSCRIBEs go on, and the nodes that did not answer (which
    /// it returns) are not waited for until they are heard from.
    pub fn expire(&mut self, id: u64) -> Vec<String> {
        let Some(open) = self.open.get_mut(&id) else {
            return Vec::new();
        };
        let late: Vec<String> = std::mem::take(&mut open.nodes).into_iter().collect();
        self.silent.extend(late.iter().cloned());
        self.resolve_if_answered(id);
        late
    }

    /// No node can answer (NATS is down, or the link stops): every SUBSCRIBE goes on.
    pub fn release_all(&mut self) {
        let ids: Vec<u64> = self.open.keys().copied().collect();
        for id in ids {
            if let Some(open) = self.open.get_mut(&id) {
                open.nodes.clear();
            }
            self.resolve_if_answered(id);
        }
    }

    /// The filters of the asks not yet answered.
    #[cfg(test)]
    fn pending_filters(&self) -> impl Iterator<Item = &String> {
        self.pending.keys()
    }

    fn resolve_if_answered(&mut self, id: u64) {
        if !self.open.get(&id).is_some_and(|open| open.nodes.is_empty()) {
            return;
        }
        let Some(open) = self.open.remove(&id) else {
            return;
        };
        for filter in &open.filters {
            if self.pending.get(filter) == Some(&id) {
                self.pending.remove(filter);
            }
        }
        for waiter in open.waiters {
            let _ = waiter.send(());
        }
    }
}

/// The most asks [`Answers`] keeps unanswered (its local client's SUBACKs not back, as while
/// that connection is down): past it the oldest is forgotten, and its node's wait runs out.
const MAX_UNANSWERED: usize = 10_000;

/// The other nodes' asks this node answers.
#[derive(Debug, Default)]
pub struct Answers {
    /// In arrival order: the asking node, its ask's id, and the filters not yet acknowledged
    /// by a SUBACK here.
    waiting: VecDeque<(String, u64, BTreeSet<String>)>,
}

impl Answers {
    /// Nothing to answer yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `node` asks (`id`) for `filters`; the link subscribes to each locally. Answers at once
    /// (returns true) for an ask without filters.
    pub fn take(&mut self, node: String, id: u64, filters: &[String]) -> bool {
        if filters.is_empty() {
            return true;
        }
        let filters = filters.iter().cloned().collect();
        if self.waiting.len() >= MAX_UNANSWERED {
            self.waiting.pop_front();
        }
        self.waiting.push_back((node, id, filters));
        false
    }

    /// A SUBACK came back for the link's subscription to `filter` (granted or not): the asks
    /// this completes, to answer, in order.
    pub fn granted(&mut self, filter: &str) -> Vec<(String, u64)> {
        for (_, _, filters) in &mut self.waiting {
            filters.remove(filter);
        }
        let mut done = Vec::new();
        self.waiting.retain(|(node, id, filters)| {
            let complete = filters.is_empty();
            if complete {
                done.push((node.clone(), *id));
            }
            !complete
        });
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn is_done(done: &mut oneshot::Receiver<()>) -> bool {
        done.try_recv().is_ok()
    }

    #[test]
    fn a_new_filter_waits_for_every_other_node_and_a_repeated_one_for_the_same_ask() {
        let mut asks = Asks::new();
        let AskOutcome::Wait {
            mut done,
            ask: Some((id, filters)),
        } = asks.ask(&strings(&["a/#"]), strings(&["a/#"]), strings(&["b", "c"]))
        else {
            panic!("a new filter with other nodes waits and asks");
        };
        assert_eq!(filters, ["a/#"]);
        // A second client subscribing to the same filter meanwhile waits for the same answers.
        let AskOutcome::Wait {
            done: mut second,
            ask: None,
        } = asks.ask(&strings(&["a/#"]), Vec::new(), strings(&["b", "c"]))
        else {
            panic!("a filter asked for already waits without a new ask");
        };
        asks.answered("b", id);
        assert!(!is_done(&mut done) && !is_done(&mut second));
        asks.answered("c", id);
        assert!(is_done(&mut done) && is_done(&mut second));
        // Answered: the filter is held everywhere now.
        assert!(matches!(
            asks.ask(&strings(&["a/#"]), Vec::new(), strings(&["b", "c"])),
            AskOutcome::Ready
        ));
        // Alone in the cluster, nothing waits.
        assert!(matches!(
            asks.ask(&strings(&["x"]), strings(&["x"]), Vec::new()),
            AskOutcome::Ready
        ));
    }

    #[test]
    fn an_answer_covers_earlier_asks_and_a_node_that_leaves_is_not_waited_for() {
        let mut asks = Asks::new();
        let mut outcome = |filter: &str| match asks.ask(
            &strings(&[filter]),
            strings(&[filter]),
            strings(&["b", "c"]),
        ) {
            AskOutcome::Wait {
                done,
                ask: Some((id, _)),
            } => (done, id),
            other => panic!("{other:?}"),
        };
        let (mut first, _) = outcome("one");
        let (mut second, second_id) = outcome("two");
        asks.answered("b", second_id);
        asks.gone("c");
        assert!(is_done(&mut first) && is_done(&mut second));
        assert_eq!(asks.pending_filters().count(), 0);
    }

    #[test]
    fn a_node_that_let_a_wait_run_out_is_not_waited_for_until_it_is_heard_from() {
        let mut asks = Asks::new();
        let AskOutcome::Wait {
            mut done,
            ask: Some((id, _)),
        } = asks.ask(&strings(&["a"]), strings(&["a"]), strings(&["b", "dead"]))
        else {
            panic!("waits");
        };
        asks.answered("b", id);
        assert_eq!(asks.expire(id), ["dead"]);
        assert!(is_done(&mut done));
        assert!(matches!(
            asks.ask(&strings(&["c"]), strings(&["c"]), strings(&["dead"])),
            AskOutcome::Ready
        ));
        asks.heard_from("dead");
        assert!(matches!(
            asks.ask(&strings(&["d"]), strings(&["d"]), strings(&["dead"])),
            AskOutcome::Wait { .. }
        ));
        asks.release_all();
        assert_eq!(asks.pending_filters().count(), 0);
    }

    #[test]
    fn an_ask_is_answered_once_each_of_its_filters_was_acknowledged() {
        let mut answers = Answers::new();
        assert!(answers.take("a".into(), 9, &[]));
        assert!(!answers.take("a".into(), 1, &strings(&["x", "y"])));
        assert!(!answers.take("b".into(), 4, &strings(&["y"])));
        assert_eq!(answers.granted("y"), [("b".to_string(), 4)]);
        assert!(answers.granted("z").is_empty());
        assert_eq!(answers.granted("x"), [("a".to_string(), 1)]);
    }
}
