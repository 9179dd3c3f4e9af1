//! Tests of the store: submissions, waking the writer, waiting for room.

use super::*;
use crate::message::{Message, QoS};
use crate::persistence::wake::TO_WAKE;
use bytes::Bytes;

#[tokio::test]
async fn a_session_waits_for_room_while_the_writer_is_behind_and_not_after() {
    // No writer thread: the test drains the queue itself, as the writer would.
    let shared = Arc::new(StoreShared::new(1, true, Default::default()));
    let store = Store::new(shared.clone());
    assert!(!store.is_behind());
    let payload = Bytes::from(vec![1u8; 64 * 1024]);
    while !store.is_behind() {
        let message = Message::new("t", payload.clone(), QoS::AtLeastOnce, true);
        store.submit(Record::RetainSet(Arc::new(message)));
    }
    let room = tokio::spawn(store.room());
    tokio::task::yield_now().await;
    assert!(!room.is_finished(), "waits while the writer is behind");
    shared.lock_pending().frames.clear();
    shared.pending_bytes.store(0, Ordering::Relaxed);
    shared.caught_up.notify_waiters();
    tokio::time::timeout(std::time::Duration::from_secs(5), room)
        .await
        .expect("room once the writer drained")
        .expect("no panic");
}

#[test]
fn a_submitter_past_the_bound_waits_for_a_drain_and_is_woken_by_it() {
    // No writer thread: the test drains the queue as the writer does.
    let shared = Arc::new(StoreShared::new(1, true, Default::default()));
    let store = Store::new(shared.clone());
    let payload = Bytes::from(vec![1u8; 1 << 20]);
    let retained = |n: usize| {
        let topic = format!("t/{n}");
        Record::RetainSet(Arc::new(Message::new(
            &topic,
            payload.clone(),
            QoS::AtLeastOnce,
            true,
        )))
    };
    let mut n = 0;
    while shared.lock_pending().frames.len() < MAX_PENDING_BYTES {
        store.submit(retained(n));
        n += 1;
    }
    let (submitted, done) = std::sync::mpsc::channel();
    let submitter = {
        let store = store.clone();
        let record = retained(n);
        std::thread::spawn(move || {
            let seq = store.submit(record);
            let _ = submitted.send(seq);
        })
    };
    // It counts itself as waiting under the lock, then waits.
    let pending = loop {
        let pending = shared.lock_pending();
        if pending.waiting_for_room == 1 {
            break pending;
        }
        drop(pending);
        std::thread::yield_now();
    };
    let (mut frames, mut flushes) = (Vec::new(), Vec::new());
    let (seq, closed) = shared.take_drain(pending, &mut frames, &mut flushes, &mut Vec::new());
    assert_eq!((seq, closed), (Some(n as u64), false));
    let seq = done
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the submitter was woken by the drain");
    assert_eq!(seq, n as u64 + 1);
    submitter.join().expect("no panic");
    assert_eq!(shared.lock_pending().waiting_for_room, 0);
}

/// A store (waking its writer at once or not), and a thread that sleeps as its idle writer
/// does, until woken with changes pending (or for a minute), and then says so on the
/// channel returned.
fn store_with_sleeping_writer(
    wake_at_once: bool,
) -> (
    Store,
    std::thread::JoinHandle<()>,
    std::sync::mpsc::Receiver<()>,
) {
    let shared = Arc::new(StoreShared::new(1, !wake_at_once, Default::default()));
    shared.lock_pending().writer = WriterState::Asleep;
    let (woken, wake_seen) = std::sync::mpsc::channel();
    let store = Store::new(shared.clone());
    let sleeper = std::thread::spawn(move || {
        let mut pending = shared.lock_pending();
        while !pending.has_changes {
            let (p, timeout) = shared
                .wake_writer
                .wait_timeout(pending, std::time::Duration::from_secs(60))
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            pending = p;
            if timeout.timed_out() {
                return;
            }
        }
        let _ = woken.send(());
    });
    (store, sleeper, wake_seen)
}

/// Submits one retained message.
fn submit_retained(store: &Store) {
    let message = Message::new("t", Bytes::from_static(b"m"), QoS::AtLeastOnce, true);
    store.submit(Record::RetainSet(Arc::new(message)));
}

#[test]
fn a_submission_on_an_actix_thread_wakes_the_writer_at_once_when_commits_do_not_sync() {
    let (store, sleeper, wake_seen) = store_with_sleeping_writer(true);
    actix_rt::System::new().block_on(async {
        submit_retained(&store);
        assert_eq!(TO_WAKE.with(|to_wake| to_wake.borrow().len()), 0);
        // Without yielding: nothing else on this thread runs before the writer wakes.
        wake_seen
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the writer was woken before this thread's ready tasks ran");
    });
    sleeper.join().expect("no panic");
}

#[test]
fn a_submission_on_an_actix_thread_wakes_the_writer_once_the_ready_tasks_ran() {
    let (store, sleeper, wake_seen) = store_with_sleeping_writer(false);
    actix_rt::System::new().block_on(async {
        submit_retained(&store);
        let scheduled = TO_WAKE.with(|to_wake| to_wake.borrow().len());
        assert_eq!(
            scheduled, 1,
            "the wake waits for the tasks ready on this thread"
        );
        // The Arbiter takes the wake from its channel, then runs it: a few turns.
        for _ in 0..100 {
            if TO_WAKE.with(|to_wake| to_wake.borrow().is_empty()) {
                break;
            }
            tokio::task::yield_now().await;
        }
        let scheduled = TO_WAKE.with(|to_wake| to_wake.borrow().len());
        assert_eq!(scheduled, 0, "and then happens");
    });
    wake_seen
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the sleeping writer was woken");
    sleeper.join().expect("no panic");
}
