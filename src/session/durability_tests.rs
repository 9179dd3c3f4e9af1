//! Unit tests of a Session's waits for the disk (`durability.rs`).

use super::*;

use crate::session::acks::AckWait;

fn ready(acks: &mut DeferredAcks) -> Vec<(Ack, u16)> {
    let mut ready = Vec::new();
    let durable = acks.durable;
    acks.acks
        .take_ready(durable, |ack, pid, _| ready.push((ack, pid)));
    ready
}

#[test]
fn later_changes_wait_behind_the_wait_that_is_out() {
    let mut acks = DeferredAcks::default();
    assert_eq!(acks.wait_needed(0, 5, true), WaitNeeded::Own);
    acks.waiting_for = 5;
    acks.waiting_firm = true;
    assert_eq!(acks.wait_needed(0, 7, true), WaitNeeded::Behind);
    assert_eq!(acks.wait_needed(0, 5, true), WaitNeeded::Behind);
    assert_eq!(
        acks.wait_needed(0, 3, true),
        WaitNeeded::Own,
        "an earlier change would wait too long behind a later one"
    );
    assert_eq!(acks.wait_needed(7, 7, true), WaitNeeded::Durable);
    assert_eq!(acks.durable, 7, "what the store said is kept");
}

#[actix_rt::test]
async fn a_wait_left_to_settling_bursts_alone_stays_one_a_settlement_may_end() {
    // After a Durable, the lowest change still open is waited for again: if only bursts
    // their subscribers may settle wait for it, that wait must not be firm, or the syncing
    // thread would sync at once for a publisher its subscribers were about to settle.
    let (settlement, _publisher) = crate::routing::settlement_tests::settlement();
    // One delivery not acknowledged yet (a settlement never armed counts as settled).
    settlement.arm(1);
    let mut acks = DeferredAcks::default();
    acks.acks.push(Ack::PubAck, 1, 0);
    acks.acks
        .hand_over_settled(AckWait::Durable(9), Some(settlement.clone()));
    assert_eq!(acks.next_step(), NextStep::WaitFor(9));
    assert!(acks.open_wait_settles(9));
    assert!(!acks.open_wait_settles(10), "nothing waits for 10");
    // A firm batch for the same change (a PUBREL's record, a burst without settlement).
    acks.acks.push(Ack::PubAck, 2, 0);
    acks.acks.hand_over_settled(AckWait::Durable(9), None);
    assert!(!acks.open_wait_settles(9), "a firm batch waits for 9 too");

    let mut acks = DeferredAcks::default();
    acks.acks.push(Ack::PubAck, 3, 0);
    acks.acks
        .hand_over_settled(AckWait::Durable(9), Some(settlement.clone()));
    acks.output_after = 9;
    assert!(!acks.open_wait_settles(9), "the output waits for 9");
    acks.output_after = 0;
    acks.held.push_back(Held::Reply(
        9,
        Reply::SubAck {
            pid: 4,
            codes: vec![1],
        },
    ));
    assert!(!acks.open_wait_settles(9), "a SUBACK waits for 9");
}

#[test]
fn a_firm_change_does_not_wait_behind_a_wait_a_settlement_may_end() {
    // A publisher's PUBACKs its subscribers may settle (the syncing thread may hold that
    // sync back a moment for them) are out; a QoS 2 sending behind them must not wait too.
    let mut acks = DeferredAcks {
        waiting_for: 5,
        waiting_firm: false,
        ..DeferredAcks::default()
    };
    assert_eq!(acks.wait_needed(0, 7, false), WaitNeeded::Behind);
    assert_eq!(acks.wait_needed(0, 7, true), WaitNeeded::Own);
    acks.waiting_firm = true;
    assert_eq!(
        acks.wait_needed(0, 9, false),
        WaitNeeded::Behind,
        "behind a firm one"
    );
}

#[test]
fn what_became_durable_after_an_answer_is_released_not_left_waiting() {
    // A delivery held for change 701 while the wait for 700 is out; the answer says 700,
    // and flushing the output after it reads 701 from the store: no answer is out for
    // 701, so the Session must release the delivery itself (seen as a device's stream
    // stopping for good in tests/mqttjs_durable.rs).
    let mut acks = DeferredAcks {
        waiting_for: 700,
        ..DeferredAcks::default()
    };
    acks.held.push_back(Held::Deliver(Deliver {
        deliveries: Vec::new(),
        after: 701,
        retained: false,
        settlement: None,
    }));
    acks.answered(700);
    assert_eq!(acks.next_step(), NextStep::WaitFor(701), "not durable yet");
    acks.durable = 701;
    assert_eq!(acks.next_step(), NextStep::Release);
    acks.held.clear();

    // The same for PUBRELs waiting for their records, and for a SUBACK.
    acks.acks.push(Ack::PubRel, 1, 0);
    acks.acks.hand_over(AckWait::Durable(702));
    assert_eq!(acks.next_step(), NextStep::WaitFor(702));
    acks.durable = 703;
    assert_eq!(acks.next_step(), NextStep::Release);
    assert_eq!(ready(&mut acks), vec![(Ack::PubRel, 1)]);
    acks.held.push_back(Held::Reply(
        704,
        Reply::SubAck {
            pid: 2,
            codes: vec![1],
        },
    ));
    assert_eq!(acks.next_step(), NextStep::WaitFor(704));
    acks.durable = 704;
    assert_eq!(acks.next_step(), NextStep::Release);
    acks.held.clear();

    // Only the output's own change is left, durable: nothing to do.
    acks.output_after = 704;
    assert_eq!(acks.next_step(), NextStep::Nothing);
}

#[test]
fn a_delivery_behind_a_held_suback_waits_for_it() {
    // A message matched under the new table needs no change of its own, but it came
    // behind the SUBACK that waits for the subscription's record: it goes after it.
    let mut acks = DeferredAcks {
        waiting_for: 100,
        ..DeferredAcks::default()
    };
    acks.held.push_back(Held::Reply(
        100,
        Reply::SubAck {
            pid: 1,
            codes: vec![1],
        },
    ));
    acks.held.push_back(Held::Deliver(Deliver {
        deliveries: Vec::new(),
        after: 0,
        retained: false,
        settlement: None,
    }));
    acks.answered(90);
    assert_eq!(acks.next_step(), NextStep::WaitFor(100));
    acks.answered(100);
    assert_eq!(acks.next_step(), NextStep::Release);
}

#[test]
fn an_answer_ends_the_wait_it_covers_and_leaves_what_is_still_open() {
    let mut acks = DeferredAcks {
        waiting_for: 5,
        output_after: 8,
        ..DeferredAcks::default()
    };
    acks.acks.push(Ack::PubAck, 1, 0);
    acks.acks.hand_over(AckWait::Durable(5));
    acks.acks.push(Ack::PubAck, 2, 0);
    acks.acks.hand_over(AckWait::Durable(9));
    acks.answered(4);
    assert_eq!(acks.waiting_for, 5, "not answered yet: still out");
    assert_eq!(acks.lowest_open(), Some(5));
    acks.answered(6);
    assert_eq!(acks.waiting_for, 0, "answered");
    assert_eq!(ready(&mut acks), vec![(Ack::PubAck, 1)]);
    assert_eq!(
        acks.lowest_open(),
        Some(8),
        "the output's change comes before the second batch's"
    );
    acks.answered(9);
    assert_eq!(acks.lowest_open(), None);
    assert_eq!(ready(&mut acks), vec![(Ack::PubAck, 2)]);
}
