//! Unit tests of the outbound window and queue (`state.rs`).

use super::*;
use crate::message::Message;
use bytes::Bytes;
use std::sync::Arc;

/// What `o` journaled since the last call.
fn taken(o: &mut Outbound) -> Vec<DurableChange> {
    let mut changes = Vec::new();
    o.take_durable_changes(&mut changes);
    changes
}

fn delivery(n: u8, qos: QoS) -> Delivery {
    Delivery::new(
        Arc::new(Message::new("t", Bytes::from(vec![n]), qos, false)),
        qos,
        false,
    )
}

const UNBOUNDED: QueueLimits = QueueLimits {
    max_messages: usize::MAX,
    max_bytes: usize::MAX,
    overflow: crate::config::QueueOverflow::DropOldest,
};

/// A resumed session's window: QoS 1 messages with these packet ids, awaiting PUBACK.
fn unacknowledged(pids: &[u16]) -> VecDeque<InflightEntry> {
    pids.iter()
        .map(|&pid| InflightEntry {
            pid,
            delivery: delivery(0, QoS::AtLeastOnce),
            stage: InflightStage::AwaitingPubAck,
        })
        .collect()
}

fn payload(e: &InflightEntry) -> u8 {
    e.delivery.message.payload[0]
}

#[test]
fn paced_output_keeps_its_order_and_counts_its_bytes() {
    let mut out = Outbound::new(4);
    assert!(!out.paces_output());
    for n in 1..=3 {
        out.pace(delivery(n, QoS::AtMostOnce));
    }
    // Topic "t" and a 1-byte payload, three times.
    assert_eq!(out.paced_bytes(), 3 * 2);
    let order: Vec<u8> = std::iter::from_fn(|| out.next_paced())
        .map(|d| d.message.payload[0])
        .collect();
    assert_eq!(order, [1, 2, 3]);
    assert_eq!(out.paced_bytes(), 0);
    assert!(!out.paces_output());
}

#[test]
fn window_limits_inflight_and_keeps_order() {
    let mut o = Outbound::new(2);
    for n in 0..5 {
        o.push(delivery(n, QoS::AtLeastOnce), &UNBOUNDED);
    }
    let a = o
        .next_to_send(Instant::now(), |_| true)
        .map(|e| (e.pid, payload(e)));
    let b = o
        .next_to_send(Instant::now(), |_| true)
        .map(|e| (e.pid, payload(e)));
    assert_eq!((a, b), (Some((1, 0)), Some((2, 1))));
    assert!(
        o.next_to_send(Instant::now(), |_| true).is_none(),
        "window of 2 is full"
    );
    assert_eq!(o.puback_kept(2).0, AckResult::Completed);
    assert_eq!(o.puback_kept(2).0, AckResult::Unknown);
    assert_eq!(
        o.next_to_send(Instant::now(), |_| true).map(payload),
        Some(2)
    );
    assert_eq!(o.queued(), 2);
    assert_eq!(o.inflight_len(), 2);
}

#[test]
fn qos2_handshake() {
    let mut o = Outbound::new(4);
    o.push(delivery(9, QoS::ExactlyOnce), &UNBOUNDED);
    let pid = o
        .next_to_send(Instant::now(), |_| true)
        .map(|e| e.pid)
        .expect("sent");
    assert_eq!(
        o.puback_kept(pid).0,
        AckResult::Unknown,
        "PUBACK does not finish QoS 2"
    );
    assert_eq!(o.pubcomp(pid), AckResult::Unknown, "PUBCOMP before PUBREC");
    assert_eq!(o.pubrec(pid), AckResult::SendPubRel);
    assert_eq!(o.pubrec(pid), AckResult::SendPubRel, "repeated PUBREC");
    assert_eq!(
        o.inflight().next().map(|e| e.stage),
        Some(InflightStage::AwaitingPubComp)
    );
    assert_eq!(o.pubcomp(pid), AckResult::Completed);
    assert_eq!(o.inflight_len(), 0);
}

#[test]
fn packet_ids_skip_zero_and_ids_in_use() {
    let mut o = Outbound::new(3);
    o.restore(unacknowledged(&[65535, 1]), DeliveryQueue::default());
    o.push(delivery(1, QoS::AtLeastOnce), &UNBOUNDED);
    assert_eq!(
        o.next_to_send(Instant::now(), |_| true).map(|e| e.pid),
        Some(2),
        "0 and 1 are skipped"
    );
}

#[test]
fn durable_deliveries_leave_a_journal_of_sends_releases_and_completions() {
    let mut o = Outbound::new(4);
    let durable = |n: u8, qos| {
        let mut d = delivery(n, qos);
        d.set_durable_id(Some(u64::from(n) + 100));
        d
    };
    o.push(durable(1, QoS::AtLeastOnce), &UNBOUNDED);
    o.push(durable(2, QoS::ExactlyOnce), &UNBOUNDED);
    o.push(delivery(3, QoS::AtLeastOnce), &UNBOUNDED);
    let now = Instant::now();
    let pids: Vec<u16> =
        std::iter::from_fn(|| o.next_to_send(now, |_| true).map(|e| e.pid)).collect();
    assert_eq!(pids, vec![1, 2, 3]);
    assert_eq!(o.puback_kept(1), (AckResult::Completed, Some(101)));
    assert_eq!(o.pubrec(2), AckResult::SendPubRel);
    assert_eq!(
        o.pubrec(2),
        AckResult::SendPubRel,
        "a repeated PUBREC records nothing"
    );
    assert_eq!(o.pubcomp(2), AckResult::Completed);
    assert_eq!(
        o.puback_kept(3),
        (AckResult::Completed, None),
        "not durable: no record"
    );
    use DurableChange::*;
    assert_eq!(
        taken(&mut o),
        vec![
            Sent(101, 1, QoS::AtLeastOnce),
            Sent(102, 2, QoS::ExactlyOnce),
            Done(101),
            Released(102),
            Done(102)
        ]
    );
    assert!(taken(&mut o).is_empty());
}

#[test]
fn messages_the_client_may_not_read_are_dropped_and_recorded_done() {
    let mut o = Outbound::new(4);
    let mut secret = delivery(2, QoS::AtLeastOnce);
    secret.set_durable_id(Some(102));
    o.push(delivery(1, QoS::AtLeastOnce), &UNBOUNDED);
    o.push(secret, &UNBOUNDED);
    o.push(delivery(3, QoS::AtLeastOnce), &UNBOUNDED);
    let readable = |d: &Delivery| d.message.payload[0] != 2;
    let now = Instant::now();
    let sent: Vec<(u16, u8)> = std::iter::from_fn(|| {
        o.next_to_send(now, readable)
            .map(|e| (e.pid, e.delivery.message.payload[0]))
    })
    .collect();
    assert_eq!(sent, vec![(1, 1), (2, 3)], "no packet id spent on it");
    assert_eq!(o.take_refused(), 1);
    assert_eq!(o.take_refused(), 0);
    assert_eq!(o.take_expired(), 0);
    assert_eq!(
        taken(&mut o),
        vec![DurableChange::Done(102)],
        "the store forgets it"
    );
}

#[test]
fn a_restored_queue_with_nothing_in_it_still_reports_its_drops() {
    // A stored session's queue dropped a delivery kept on disk (too large for it) and holds
    // nothing else: its `Done` must still reach the store after a resume.
    let mut queue = DeliveryQueue::default();
    let mut big = delivery(1, QoS::AtLeastOnce);
    big.set_durable_id(Some(7));
    let tight = QueueLimits {
        max_bytes: 0,
        ..UNBOUNDED
    };
    assert_eq!(
        queue.push_bounded(big, &tight),
        Pushed::Queued { dropped: 1 }
    );
    assert!(queue.is_empty());
    let mut o = Outbound::new(4);
    o.restore(VecDeque::new(), queue);
    assert_eq!(taken(&mut o), vec![DurableChange::Done(7)]);
    let mut untouched = Outbound::new(4);
    untouched.restore(VecDeque::new(), DeliveryQueue::default());
    assert!(
        untouched.flow.is_none(),
        "nothing to restore: nothing allocated"
    );
}

#[test]
fn take_returns_everything_in_order() {
    let mut o = Outbound::new(1);
    for n in 0..3 {
        o.push(delivery(n, QoS::AtLeastOnce), &UNBOUNDED);
    }
    o.next_to_send(Instant::now(), |_| true);
    let (inflight, queue) = o.take();
    assert_eq!(inflight.iter().map(payload).collect::<Vec<_>>(), vec![0]);
    assert_eq!(
        queue
            .iter()
            .map(|d| d.message.payload[0])
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(o.queued() + o.inflight_len(), 0);
}

#[test]
fn a_resumed_window_narrower_than_the_last_sends_its_messages_again_as_room_frees() {
    // The last connection had five in flight: 1, 2 and 4 awaiting PUBACK, 3 awaiting PUBCOMP
    // (its PUBREL goes again whatever the window), 5 awaiting PUBREC; and one more queued.
    let mut last = Outbound::new(10);
    for n in 1..=5 {
        let qos = if n == 3 || n == 5 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        last.push(delivery(n, qos), &UNBOUNDED);
        last.next_to_send(Instant::now(), |_| true);
    }
    assert_eq!(last.pubrec(3), AckResult::SendPubRel);
    last.push(delivery(6, QoS::AtLeastOnce), &UNBOUNDED);
    let (inflight, queue) = last.take();

    // The new connection's Receive Maximum is 2 [MQTT-3.3.4-9].
    let mut o = Outbound::new(10);
    o.limit_window(2);
    o.restore(inflight, queue);
    o.hold_beyond_window();
    let now: Vec<u8> = o
        .inflight()
        .filter(|e| !o.is_held(e.pid) && e.stage != InflightStage::AwaitingPubComp)
        .map(payload)
        .collect();
    assert_eq!(now, [1], "3 (awaiting PUBCOMP) takes room, 1 goes again");
    assert!(o.is_held(2) && o.is_held(4) && o.is_held(5));
    assert!(o.next_to_resend().is_none(), "no room yet");
    assert!(
        o.next_to_send(Instant::now(), |_| true).is_none(),
        "nothing queued goes before the held ones"
    );

    assert_eq!(o.puback_kept(1).0, AckResult::Completed);
    assert_eq!(o.next_to_resend().map(payload), Some(2));
    assert!(o.next_to_resend().is_none());
    // A PUBACK from the last connection for one still held: it is done, not sent again.
    assert_eq!(o.puback_kept(4).0, AckResult::Completed);
    assert_eq!(o.pubcomp(3), AckResult::Completed);
    assert_eq!(
        o.next_to_resend().map(|e| (payload(e), e.stage)),
        Some((5, InflightStage::AwaitingPubRec))
    );
    assert!(o.next_to_resend().is_none());
    assert!(
        o.next_to_send(Instant::now(), |_| true).is_none(),
        "2 and 5 fill it"
    );
    assert_eq!(o.puback_kept(2).0, AckResult::Completed);
    assert_eq!(
        o.next_to_send(Instant::now(), |_| true).map(payload),
        Some(6),
        "then the queue"
    );
}

#[test]
fn held_changes_follow_the_window_and_the_queue_in_messages_and_bytes() {
    let mut o = Outbound::new(2);
    assert_eq!(o.take_held_change(), (0, 0), "nothing ever held");
    // A resumed session's two unacknowledged messages, then three new ones: two wait.
    o.restore(unacknowledged(&[1, 2]), DeliveryQueue::default());
    for n in 1..=3 {
        o.push(delivery(n, QoS::AtLeastOnce), &UNBOUNDED);
    }
    // Each weighs 2 bytes: topic "t" and a 1-byte payload.
    assert_eq!(o.take_held_change(), (5, 10));
    assert_eq!(o.take_held_change(), (0, 0), "counted once");
    assert_eq!(o.puback_kept(1).0, AckResult::Completed);
    let sent = o.next_to_send(Instant::now(), |_| true).map(|e| e.pid);
    assert!(sent.is_some());
    assert_eq!(
        o.take_held_change(),
        (-1, -2),
        "one acknowledged, one moved up"
    );
    assert!(o.discard(2));
    assert_eq!(o.take_held_change(), (-1, -2));
    // Given up to the Registry: what is left is taken back from the gauge.
    let (window, queue) = o.take();
    assert_eq!(window.len() + queue.len(), 3);
    assert_eq!(o.take_held_change(), (-3, -6));
    assert_eq!(o.uncount_held(), (0, 0));
    // A Session that ends holding messages takes back all it counted.
    o.push(delivery(9, QoS::AtLeastOnce), &UNBOUNDED);
    assert_eq!(o.take_held_change(), (1, 2));
    assert_eq!(o.uncount_held(), (-1, -2));
}
