//! Who waits for a change to be durable (or, for a Session at its duplicate bound with
//! `fsync = "always"`, written), kept by the thread they run on.
//!
//! A Session (or the Registry) on an actix thread that must wait for a change is listed in that
//! thread's own list, and the thread's entry in the store says the lowest change any of them
//! waits for. After each commit the writer looks at those entries only: a thread with a waiter
//! due gets one task through its Arbiter, which tells its due waiters there, on their own
//! thread. A drain that makes ten Sessions of one worker ready then costs the writer one
//! cross-thread wake-up instead of ten (each a locked push and an `eventfd` write), and the
//! worker one wake instead of ten. Waiters on other threads (no Arbiter) are told by the writer
//! directly.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use actix::Recipient;
use actix_rt::{Arbiter, ArbiterHandle};

use super::store::StoreShared;
use super::Durable;

/// No change waited for.
const NONE: u64 = u64::MAX;

/// One actix thread's entry in a store: the lowest change one of its waiters waits for
/// ([`NONE`] for none), and where to send the task that tells them.
pub(super) struct ThreadWaiters {
    /// What the writer looks at to tell the thread: it takes it ([`NONE`]) when it sends the
    /// task, which puts back what is still waited for.
    wants: AtomicU64,
    /// The lowest change a waiter listed on the thread waits for, kept by the thread alone
    /// (the writer never takes it): what [`Waiters::any_waiting_upto`] reads, so that a sync
    /// is never skipped while the writer holds `wants`.
    listed: AtomicU64,
    /// The same for the waits no settlement may end (all but a publisher's wait for a burst
    /// its subscribers may settle first): [`Waiters::any_firm_waiting_upto`] reads it.
    firm: AtomicU64,
    /// [`Durable`]s sent to waiters of the thread and not yet handled (or dropped): a waiter
    /// told is off the list, and lists its next change as it handles what it was told, so
    /// until then it counts as waiting.
    told: AtomicU64,
    arbiter: ArbiterHandle,
}

/// Carried by a [`Durable`] told to a waiter on an actix thread: counted in its thread's
/// [`ThreadWaiters::told`] until the message is handled or dropped.
pub(crate) struct Told(Arc<ThreadWaiters>);

impl Told {
    fn new(thread: &Arc<ThreadWaiters>) -> Self {
        thread.told.fetch_add(1, Ordering::SeqCst);
        Told(thread.clone())
    }
}

impl Drop for Told {
    fn drop(&mut self) {
        self.0.told.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Told {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Told")
    }
}

/// Which of the writer's reports a list of waiters waits for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Watch {
    /// A change durable by the `fsync` policy ([`StoreShared::durable`]).
    Durable,
    /// A change written to the log, synced or not ([`StoreShared::written`]): what survives
    /// `kill -9`. Only `fsync = "always"` tells it apart from durable.
    Written,
}

/// A store's waiters for one [`Watch`]: by actix thread, and those on other threads. Either
/// way they are told with a [`Durable`] carrying what is durable then.
pub(super) struct Waiters {
    watch: Watch,
    threads: Mutex<Vec<Arc<ThreadWaiters>>>,
    others: Mutex<Vec<(u64, Recipient<Durable>)>>,
}

/// Who to tell that a change is durable: a Session or the Registry, which makes it once and
/// lends it to every wait (a wait then allocates nothing). Not `Send`: it stays on the thread
/// of the actor it names.
#[derive(Clone)]
pub struct DurableTo(Rc<Recipient<Durable>>);

impl DurableTo {
    /// Tells `to`.
    pub fn new(to: Recipient<Durable>) -> Self {
        DurableTo(Rc::new(to))
    }
}

impl LocalWaiters {
    /// Sets the thread's [`ThreadWaiters::listed`] and [`ThreadWaiters::firm`] to what its
    /// list now holds.
    fn relist(&self) {
        let (mut lowest, mut firm) = (NONE, NONE);
        for wait in &self.waiting {
            lowest = lowest.min(wait.wanted);
            if wait.firm {
                firm = firm.min(wait.wanted);
            }
        }
        self.thread.listed.store(lowest, Ordering::SeqCst);
        self.thread.firm.store(firm, Ordering::SeqCst);
    }
}

/// A thread's own list of waiters for one store and [`Watch`].
struct LocalWaiters {
    /// The store's [`StoreShared::id`].
    store: u64,
    /// What they wait for.
    watch: Watch,
    /// This thread's entry in the store.
    thread: Arc<ThreadWaiters>,
    /// Who waits, for what.
    waiting: Vec<Wait>,
}

/// One waiter's wait in its thread's list.
struct Wait {
    /// The change waited for.
    wanted: u64,
    /// Who to tell.
    to: DurableTo,
    /// Whether no settlement may end it first.
    firm: bool,
}

thread_local! {
    /// This thread's waiters, per store it has waited on.
    static LOCAL: RefCell<Vec<LocalWaiters>> = const { RefCell::new(Vec::new()) };
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Watch {
    /// The last change `shared`'s writer reported this far.
    fn reached(self, shared: &StoreShared) -> u64 {
        match self {
            Watch::Durable => shared.durable(),
            Watch::Written => shared.written(),
        }
    }
}

impl Waiters {
    /// No waiters yet, for `watch`.
    pub(super) fn new(watch: Watch) -> Self {
        Waiters {
            watch,
            threads: Mutex::default(),
            others: Mutex::default(),
        }
    }

    /// Lists `to` as waiting for change `seq` of `shared` to reach this list's [`Watch`],
    /// unless it has by then; returns whether it has. A wait that is not `firm` may be ended
    /// first by a settlement (and then withdrawn).
    pub(super) fn wait(&self, shared: &StoreShared, seq: u64, to: &DurableTo, firm: bool) -> bool {
        let watch = self.watch;
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            // Only an actix thread has a list: found, it needs no look at the current Arbiter
            // (which clones a handle, an atomic increment and decrement per wait).
            let found = local
                .iter()
                .position(|l| l.store == shared.id && l.watch == watch);
            let at = match found {
                Some(at) => at,
                None => {
                    let Some(arbiter) = Arbiter::try_current() else {
                        return self.wait_elsewhere(shared, seq, to);
                    };
                    let thread = Arc::new(ThreadWaiters {
                        wants: AtomicU64::new(NONE),
                        listed: AtomicU64::new(NONE),
                        firm: AtomicU64::new(NONE),
                        told: AtomicU64::new(0),
                        arbiter,
                    });
                    lock(&self.threads).push(thread.clone());
                    local.push(LocalWaiters {
                        store: shared.id,
                        watch,
                        thread,
                        waiting: Vec::new(),
                    });
                    local.len() - 1
                }
            };
            let entry = &mut local[at];
            entry.waiting.push(Wait {
                wanted: seq,
                to: to.clone(),
                firm,
            });
            entry.thread.listed.fetch_min(seq, Ordering::SeqCst);
            if firm {
                entry.thread.firm.fetch_min(seq, Ordering::SeqCst);
            }
            entry.thread.wants.fetch_min(seq, Ordering::SeqCst);
            // After the store to `wants` (both sequentially consistent): either this sees the
            // writer's new report, or the writer sees what this thread wants.
            if watch.reached(shared) >= seq {
                entry.waiting.pop();
                entry.relist();
                return true;
            }
            false
        })
    }

    /// Whether a waiter is listed for a change up to `seq`. For the syncing thread, which
    /// skips a sync nobody waits for: a waiter listed after this looked then sees the skip
    /// ([`StoreShared::note_skipped`]) and asks for the sync.
    pub(super) fn any_waiting_upto(&self, seq: u64) -> bool {
        // `told` first: a waiter lists its next change before its `Durable` is dropped.
        lock(&self.threads).iter().any(|thread| {
            thread.told.load(Ordering::SeqCst) > 0 || thread.listed.load(Ordering::SeqCst) <= seq
        }) || lock(&self.others).iter().any(|(wanted, _)| *wanted <= seq)
    }

    /// Whether a waiter no settlement may end is listed for a change up to `seq` (a waiter on
    /// a thread without an Arbiter always counts). For the writer, which syncs a lone commit
    /// itself only for such a waiter, and the syncing thread, which gives the others a moment
    /// to be settled before it syncs.
    pub(super) fn any_firm_waiting_upto(&self, seq: u64) -> bool {
        lock(&self.threads)
            .iter()
            .any(|thread| thread.firm.load(Ordering::SeqCst) <= seq)
            || lock(&self.others).iter().any(|(wanted, _)| *wanted <= seq)
    }

    /// Takes `to`'s waits on this thread off the list: what it waited for no longer matters
    /// to it (a publisher whose acknowledgements its subscribers settled).
    pub(super) fn withdraw(&self, shared: &StoreShared, to: &DurableTo) {
        with_local(shared, self.watch, |entry| {
            entry.waiting.retain(|wait| !Rc::ptr_eq(&wait.to.0, &to.0));
            // `wants` may stay lower: the writer then sends a task that tells nobody.
            entry.relist();
        });
    }

    /// [`Waiters::wait`] on a thread without an Arbiter: the writer tells `to` itself.
    fn wait_elsewhere(&self, shared: &StoreShared, seq: u64, to: &DurableTo) -> bool {
        let mut others = lock(&self.others);
        // Read under the lock the writer takes after storing its report: either this sees the
        // new value, or the writer sees this waiter.
        if self.watch.reached(shared) >= seq {
            return true;
        }
        others.push((seq, (*to.0).clone()));
        false
    }

    /// Called by the writer once every change up to `seq` has reached this list's [`Watch`]
    /// (stored in `shared` before): sends one task to each thread with a waiter due, and tells
    /// due waiters on other threads (`ready` is the writer's scratch list).
    pub(super) fn report(
        &self,
        shared: &Arc<StoreShared>,
        seq: u64,
        ready: &mut Vec<Recipient<Durable>>,
    ) {
        for thread in lock(&self.threads).iter() {
            let wants = thread.wants.swap(NONE, Ordering::SeqCst);
            if wants <= seq {
                let shared = shared.clone();
                let watch = self.watch;
                // False if the thread's Arbiter is gone, and its waiters with it.
                let _ = thread
                    .arbiter
                    .spawn(async move { tell_local(&shared, watch) });
            } else if wants != NONE {
                // Put back; merged with whatever the thread asked for meanwhile.
                thread.wants.fetch_min(wants, Ordering::SeqCst);
            }
        }
        {
            let mut others = lock(&self.others);
            let due = others.extract_if(.., |(wanted, _)| *wanted <= seq);
            ready.extend(due.map(|(_, to)| to));
        }
        // What is durable, which for waiters on what is written may be less than `seq`.
        let durable = shared.durable();
        for to in ready.drain(..) {
            to.do_send(Durable(durable, None));
        }
    }
}

/// Runs `f` on this thread's list of waiters on `watch` for `shared`'s store, if it has one.
fn with_local(shared: &StoreShared, watch: Watch, f: impl FnOnce(&mut LocalWaiters)) {
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        if let Some(entry) = local
            .iter_mut()
            .find(|l| l.store == shared.id && l.watch == watch)
        {
            f(entry);
        }
    });
}

/// On a thread the writer sent this to: tells this thread's waiters on `watch` whose change
/// has reached it, with what is durable.
fn tell_local(shared: &StoreShared, watch: Watch) {
    with_local(shared, watch, |entry| {
        loop {
            let reached = watch.reached(shared);
            let durable = shared.durable();
            let mut lowest = NONE;
            let thread = &entry.thread;
            entry.waiting.retain(|wait| {
                if wait.wanted <= reached {
                    wait.to.0.do_send(Durable(durable, Some(Told::new(thread))));
                    false
                } else {
                    lowest = lowest.min(wait.wanted);
                    true
                }
            });
            entry.relist();
            if lowest == NONE {
                return;
            }
            entry.thread.wants.fetch_min(lowest, Ordering::SeqCst);
            // As in `wait`: a commit the writer reported before seeing `wants` is seen here.
            if watch.reached(shared) < lowest {
                return;
            }
        }
    });
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::persistence::store::Store;
    use actix::prelude::*;
    use std::sync::mpsc;

    /// Passes on every [`Durable`] it gets.
    pub(in crate::persistence) struct Waiter(pub(in crate::persistence) mpsc::Sender<u64>);

    impl Actor for Waiter {
        type Context = Context<Self>;
    }

    impl Handler<Durable> for Waiter {
        type Result = ();
        fn handle(&mut self, msg: Durable, _: &mut Context<Self>) {
            let _ = self.0.send(msg.0);
        }
    }

    /// Reports `seq` durable from another thread, as the writer does.
    fn report_from_writer(shared: &Arc<StoreShared>, seq: u64) {
        let shared = shared.clone();
        std::thread::spawn(move || shared.report_durable(seq, &mut Vec::new()))
            .join()
            .expect("no panic");
    }

    /// Reports `seq` written (its sync to come) from another thread, as a writer that syncs
    /// each commit does.
    fn report_written_from_writer(shared: &Arc<StoreShared>, seq: u64) {
        let shared = shared.clone();
        std::thread::spawn(move || shared.report_written(seq, &mut Vec::new()))
            .join()
            .expect("no panic");
    }

    /// Asserts that the waiter is told nothing while this thread's tasks run a while.
    pub(in crate::persistence) async fn assert_not_told(heard: &mpsc::Receiver<u64>, why: &str) {
        for _ in 0..50 {
            actix_rt::task::yield_now().await;
        }
        assert!(heard.try_recv().is_err(), "{why}");
    }

    /// The next change the waiter was told of, after letting this thread's tasks run.
    pub(in crate::persistence) async fn next_told(heard: &mpsc::Receiver<u64>) -> u64 {
        for _ in 0..100_000 {
            if let Ok(seq) = heard.try_recv() {
                return seq;
            }
            actix_rt::task::yield_now().await;
        }
        panic!("the waiter was never told");
    }

    #[test]
    fn a_waiter_is_told_on_its_own_thread_once_its_change_is_durable() {
        let shared = Arc::new(StoreShared::new(1, true, Default::default()));
        let store = Store::new(shared.clone());
        let (told, heard) = mpsc::channel();
        actix_rt::System::new().block_on(async {
            let to = DurableTo::new(Waiter(told).start().recipient());
            assert!(!store.notify_when_durable(3, &to), "nothing durable yet");
            assert!(!store.notify_when_durable(5, &to));
            report_from_writer(&shared, 2);
            report_from_writer(&shared, 4);
            // The writer's task and the Durable it sends are handled on this thread.
            let first = next_told(&heard).await;
            assert_eq!(
                first, 4,
                "told once, for the wait that is due, with what is durable"
            );
            assert_not_told(&heard, "the wait for 5 is not due yet").await;
            report_from_writer(&shared, 5);
            let second = next_told(&heard).await;
            assert_eq!(second, 5);
            assert!(
                store.notify_when_durable(5, &to),
                "durable already: no wait"
            );
        });
    }

    #[test]
    fn a_wait_for_a_write_is_told_before_the_sync_with_what_is_durable_then() {
        let shared = Arc::new(StoreShared::new(1, true, Default::default()));
        let store = Store::new(shared.clone());
        let (told, heard) = mpsc::channel();
        actix_rt::System::new().block_on(async {
            let to = DurableTo::new(Waiter(told).start().recipient());
            assert!(!store.notify_when_written(3, &to), "nothing written yet");
            assert!(!store.notify_when_durable(3, &to));
            report_from_writer(&shared, 1);
            // Commit 3 written, its sync under way.
            report_written_from_writer(&shared, 3);
            assert_eq!((store.written(), store.durable()), (3, 1));
            let first = next_told(&heard).await;
            assert_eq!(
                first, 1,
                "the wait for the write is told, with what is durable: not 3"
            );
            assert_not_told(&heard, "the wait for 3 to be durable is not due").await;
            assert!(
                store.notify_when_written(3, &to),
                "written already: no wait"
            );
            report_from_writer(&shared, 3);
            assert_eq!(next_told(&heard).await, 3);
        });
    }

    #[test]
    fn a_withdrawn_wait_is_no_longer_listed_nor_told() {
        let shared = Arc::new(StoreShared::new(1, true, Default::default()));
        let store = Store::new(shared.clone());
        let (told, heard) = mpsc::channel();
        let (other_told, other_heard) = mpsc::channel();
        actix_rt::System::new().block_on(async {
            let to = DurableTo::new(Waiter(told).start().recipient());
            let other = DurableTo::new(Waiter(other_told).start().recipient());
            assert!(!shared.anyone_waits_upto(9), "nobody listed yet");
            assert!(!store.notify_when_durable(3, &to));
            assert!(!store.notify_when_durable(8, &other));
            assert!(shared.anyone_waits_upto(3));
            store.withdraw_durable_wait(&to);
            assert!(
                !shared.anyone_waits_upto(7),
                "the wait for 3 is gone; the one for 8 is later"
            );
            assert!(shared.anyone_waits_upto(8), "the other waiter's stays");
            report_from_writer(&shared, 5);
            assert_not_told(&heard, "a withdrawn wait is not told").await;
            report_from_writer(&shared, 8);
            assert_eq!(next_told(&other_heard).await, 8);
            assert!(
                !shared.anyone_waits_upto(u64::MAX - 1),
                "told: off the list"
            );
        });
    }

    #[test]
    fn a_wait_a_settlement_may_end_is_listed_but_not_firm() {
        let shared = Arc::new(StoreShared::new(1, true, Default::default()));
        let store = Store::new(shared.clone());
        let (told, heard) = mpsc::channel();
        let (firm_told, firm_heard) = mpsc::channel();
        actix_rt::System::new().block_on(async {
            let publisher = DurableTo::new(Waiter(told).start().recipient());
            let firm = DurableTo::new(Waiter(firm_told).start().recipient());
            assert!(!store.notify_when_durable_unless_settled(3, &publisher));
            assert!(shared.anyone_waits_upto(3), "listed: a sync is made for it");
            assert!(
                !shared.anyone_firm_waits_upto(u64::MAX - 1),
                "but the syncing thread may give its settlement a moment"
            );
            assert!(!store.notify_when_durable(6, &firm));
            assert!(!shared.anyone_firm_waits_upto(5));
            assert!(
                shared.anyone_firm_waits_upto(6),
                "a firm wait is not held back"
            );
            report_from_writer(&shared, 6);
            assert_eq!(next_told(&heard).await, 6);
            assert_eq!(next_told(&firm_heard).await, 6);
            assert!(
                !shared.anyone_firm_waits_upto(u64::MAX - 1),
                "told: off the list"
            );
        });
    }
}
