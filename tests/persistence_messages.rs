//! Durable QoS 1/2 messages of persistent sessions (`[persistence]`): a broker process killed
//! with SIGKILL in the middle of a stream loses no message whose PUBACK reached its publisher,
//! under each `fsync` policy, whether the persistent subscriber was online or offline; the
//! resumed subscriber gets them without subscribing again `[MQTT-3.1.2-4]`, unacknowledged ones
//! re-sent with their packet ids `[MQTT-4.4.0-1]`; inbound QoS 2 stays exactly once across the
//! kill `[MQTT-4.3.3-2]`; and with `fsync = "always"` a log cut back to the last synced offset
//! (power loss) still holds everything acknowledged.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::durable::{
    cut_log_at_last_sync, kill_9, start_broker, start_broker_reporting_syncs, start_broker_with,
    stream_then_kill,
};
use common::packets;
use common::Raw;

/// The broker's default `sessions.max_inflight`: the most messages a subscriber has unacknowledged.
const WINDOW: usize = 32;

/// Reads QoS 1 PUBLISH packets until the connection ends, acknowledging each; returns their
/// numbers (the two-byte payloads) in order.
async fn read_until_closed(mut sub: Raw) -> Vec<u16> {
    use tokio::io::AsyncWriteExt;
    let mut got = Vec::new();
    while let Some(frame) = sub.recv().await {
        let p = packets::parse_publish(&frame);
        got.push(u16::from_be_bytes([p.payload[0], p.payload[1]]));
        // The broker may be gone already.
        if sub
            .stream
            .write_all(&packets::ack(0x40, p.pid))
            .await
            .is_err()
        {
            break;
        }
    }
    got
}

async fn qos1_stream_survives_kill_9(fsync: &str, subscriber_online: bool) {
    qos1_stream_survives(fsync, subscriber_online, false).await;
}

/// A QoS 1 stream to a persistent subscriber, the broker killed with SIGKILL in the middle of
/// it, and with `power_loss` its log then cut back to the last offset the writer reported
/// synced (what a power cut would leave with `fsync = "always"`).
async fn qos1_stream_survives(fsync: &str, subscriber_online: bool, power_loss: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, logs, addr) = start_broker_reporting_syncs(&state, fsync);
    let (mut sub, _) = Raw::handshake(addr, "radar-sub", false).await;
    sub.subscribe(1, &[("fleet/#", 1)], &[1]).await;
    let reader = if subscriber_online {
        Some(tokio::spawn(read_until_closed(sub)))
    } else {
        sub.send(&[0xE0, 0x00]).await; // DISCONNECT: the session stays, offline
        sub.expect_closed().await;
        None
    };
    let acked = stream_then_kill(addr, child, 500, |n| format!("fleet/{n}"), false).await;
    assert!(acked.len() >= 500, "{} PUBACKs", acked.len());
    let before = match reader {
        Some(reader) => reader.await.expect("reader"),
        None => Vec::new(),
    };
    if power_loss {
        cut_log_at_last_sync(logs);
    }

    let (child, _logs, addr) = start_broker(&state, fsync);
    // [MQTT-3.2.2-2] the session is there, and [MQTT-3.1.2-4] its subscription delivers the
    // stored messages without a new SUBSCRIBE.
    let (mut sub, present) = Raw::handshake(addr, "radar-sub", false).await;
    assert!(present, "the persistent session survived the kill");
    let after = sub.drain_acking().await;
    for p in &after {
        assert_eq!((p.qos, p.topic.starts_with("fleet/")), (1, true));
    }
    let after: Vec<u16> = after
        .iter()
        .map(|p| u16::from_be_bytes([p.payload[0], p.payload[1]]))
        .collect();
    let mut seen: HashMap<u16, usize> = HashMap::new();
    for n in before.iter().chain(&after) {
        *seen.entry(*n).or_default() += 1;
    }
    for pid in &acked {
        let n = pid - 1;
        assert!(
            seen.contains_key(&n),
            "message {n} was acknowledged to its publisher and never reached the subscriber \
             ({} before the kill, {} after)",
            before.len(),
            after.len()
        );
    }
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    // What comes again is the newest of what the subscriber had, none older: the messages in
    // flight, and those whose completion (`Done`, recorded in the order the PUBACKs came) did
    // not survive. So the duplicates are the last ones it got before the kill.
    let twice: std::collections::HashSet<u16> = seen
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(n, _)| *n)
        .collect();
    let from = before
        .len()
        .checked_sub(twice.len())
        .expect("what came twice came once before the kill");
    let newest: std::collections::HashSet<u16> = before[from..].iter().copied().collect();
    assert_eq!(
        twice, newest,
        "the messages sent again are the newest the subscriber had"
    );
    // At most the inflight window comes again after `kill -9`: a subscriber's output waits
    // while the messages in flight plus those acknowledged whose `Done` record is not yet
    // written exceed it. A power cut also takes what was written after the last sync (the
    // writer stays within 4 MiB of the syncs): the completions there come again, beyond the
    // window, as the check above bounds them.
    if !power_loss {
        assert!(
            duplicates <= WINDOW,
            "{duplicates} duplicates: at most the inflight window ({WINDOW}) re-sent"
        );
    }
    // Delivered once is done: nothing comes again on the next connection.
    drop(sub);
    let (mut sub, present) = Raw::handshake(addr, "radar-sub", false).await;
    assert!(present);
    assert!(
        sub.drain_acking().await.is_empty(),
        "acknowledged messages are not re-sent"
    );
    kill_9(child);
}

#[tokio::test]
async fn qos1_messages_for_an_online_persistent_subscriber_survive_kill_9_fsync_always() {
    qos1_stream_survives_kill_9("always", true).await;
}

#[tokio::test]
async fn with_fsync_always_power_loss_loses_nothing_acknowledged_and_re_sends_only_the_newest() {
    qos1_stream_survives("always", true, true).await;
}

#[tokio::test]
async fn qos1_messages_for_an_offline_persistent_subscriber_survive_kill_9_fsync_always() {
    qos1_stream_survives_kill_9("always", false).await;
}

#[tokio::test]
async fn qos1_messages_for_an_online_persistent_subscriber_survive_kill_9_fsync_interval() {
    qos1_stream_survives_kill_9("interval", true).await;
}

#[tokio::test]
async fn qos1_messages_for_an_offline_persistent_subscriber_survive_kill_9_fsync_interval() {
    qos1_stream_survives_kill_9("interval", false).await;
}

#[tokio::test]
async fn qos1_messages_for_an_online_persistent_subscriber_survive_kill_9_fsync_never() {
    qos1_stream_survives_kill_9("never", true).await;
}

#[tokio::test]
async fn qos1_messages_for_an_offline_persistent_subscriber_survive_kill_9_fsync_never() {
    qos1_stream_survives_kill_9("never", false).await;
}

/// Receives one QoS 2 PUBLISH and completes its handshake as a client that passes messages on
/// when they arrive: PUBREC, then PUBCOMP for the PUBREL. Returns the payload.
async fn receive_qos2(sub: &mut Raw) -> Vec<u8> {
    let p = packets::parse_publish(&sub.expect().await);
    assert_eq!(p.qos, 2);
    sub.send(&packets::ack(0x50, p.pid)).await; // PUBREC
    let rel = sub.expect().await;
    assert_eq!((rel.byte1, rel.pid()), (0x62, p.pid), "PUBREL");
    sub.send(&packets::ack(0x70, p.pid)).await; // PUBCOMP
    p.payload
}

/// A QoS 2 message from a persistent publisher, retained or not (a retained one is routed by
/// the Registry, the other on the publisher's worker), across `kill -9` before its PUBREL.
async fn inbound_qos2_is_delivered_once_across_kill_9(retain: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, _logs, addr) = start_broker(&state, "always");
    let (mut sub, _) = Raw::handshake(addr, "gate-sub", false).await;
    sub.subscribe(1, &[("gate/1/cmd", 2)], &[2]).await;
    let (mut app, _) = Raw::handshake(addr, "app", false).await;
    app.send(&packets::publish(
        "gate/1/cmd",
        b"open",
        2,
        7,
        retain,
        false,
    ))
    .await;
    let rec = app.expect().await;
    assert_eq!((rec.byte1, rec.pid()), (0x50, 7), "PUBREC");
    assert_eq!(receive_qos2(&mut sub).await, b"open");
    // The app stops before its PUBREL, the broker is killed.
    kill_9(child);
    drop((sub, app));

    let (child, _logs, addr) = start_broker(&state, "always");
    let (mut sub, present) = Raw::handshake(addr, "gate-sub", false).await;
    assert!(present);
    // If the kill came before the subscriber's PUBCOMP was on disk, the broker re-sends PUBREL
    // [MQTT-4.4.0-1]; never the PUBLISH.
    for frame in sub.sync().await {
        assert_eq!(frame.byte1, 0x62, "only a PUBREL may come again: {frame:?}");
        sub.send(&packets::ack(0x70, frame.pid())).await;
    }
    // The app did not see the PUBREC and sends the PUBLISH again, DUP set [MQTT-3.3.1-1]. The
    // broker still holds id 7 awaiting PUBREL: the message is not routed again
    // [MQTT-4.3.3-2], only acknowledged.
    let (mut app, present) = Raw::handshake(addr, "app", false).await;
    assert!(present);
    app.send(&packets::publish("gate/1/cmd", b"open", 2, 7, retain, true))
        .await;
    let rec = app.expect().await;
    assert_eq!((rec.byte1, rec.pid()), (0x50, 7), "PUBREC again");
    app.send(&packets::ack(0x62, 7)).await; // PUBREL
    let comp = app.expect().await;
    assert_eq!((comp.byte1, comp.pid()), (0x70, 7), "PUBCOMP");
    // The id is free again: a new message with it is routed.
    app.send(&packets::publish(
        "gate/1/cmd",
        b"close",
        2,
        7,
        retain,
        false,
    ))
    .await;
    assert_eq!(app.expect().await.byte1, 0x50);
    app.send(&packets::ack(0x62, 7)).await;
    assert_eq!(app.expect().await.byte1, 0x70);
    assert_eq!(
        receive_qos2(&mut sub).await,
        b"close",
        "\"open\" came once, before the kill"
    );
    assert!(sub.sync().await.is_empty());
    kill_9(child);
}

#[tokio::test]
async fn an_inbound_qos2_id_survives_kill_9_and_the_message_is_delivered_once() {
    inbound_qos2_is_delivered_once_across_kill_9(false).await;
}

#[tokio::test]
async fn a_retained_inbound_qos2_message_is_delivered_once_across_kill_9() {
    inbound_qos2_is_delivered_once_across_kill_9(true).await;
}

/// A retained message sent for a kept session's new subscription, left unacknowledged, then
/// the broker stopped (SIGTERM with `graceful`, else SIGKILL) and started again.
async fn retained_message_in_flight_is_sent_again(graceful: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (mut child, _logs, addr) = start_broker(&state, "interval");
    let (mut app, _) = Raw::handshake(addr, "app", true).await;
    app.send(&packets::publish(
        "gate/1/state",
        b"closed",
        1,
        1,
        true,
        false,
    ))
    .await;
    assert_eq!(app.expect().await.byte1, 0x40, "PUBACK");
    let (mut sub, _) = Raw::handshake(addr, "gate-watch", false).await;
    sub.subscribe(1, &[("gate/+/state", 1)], &[1]).await;
    // [MQTT-3.3.1-8] sent for the new subscription, with RETAIN; left unacknowledged.
    let sent = packets::parse_publish(&sub.expect().await);
    assert_eq!((sent.qos, sent.retain, sent.dup), (1, true, false));
    if graceful {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
        sub.expect_closed().await;
        child.0.wait().expect("stopped");
    } else {
        kill_9(child);
    }
    drop((sub, app));

    let (child, _logs, addr) = start_broker(&state, "interval");
    let (mut sub, present) = Raw::handshake(addr, "gate-watch", false).await;
    assert!(present, "[MQTT-3.2.2-2] the kept session resumes");
    // [MQTT-4.4.0-1] in flight when the broker stopped: sent again.
    let frames = sub.sync().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    let again = packets::parse_publish(&frames[0]);
    assert_eq!(
        (again.topic.as_str(), &again.payload[..], again.qos),
        ("gate/1/state", &b"closed"[..], 1)
    );
    if graceful {
        // Its record of being sent is on disk: DUP, with its packet id.
        assert_eq!((again.pid, again.dup), (sent.pid, true));
    }
    // (After SIGKILL that record, written with the writer's next commit, may be lost: then the
    // broker sends it as new, one of the duplicates the inflight window bounds.)
    sub.send(&packets::ack(0x40, again.pid)).await;
    assert!(sub.sync().await.is_empty(), "acknowledged: not sent again");
    kill_9(child);
}

#[tokio::test]
async fn a_retained_message_in_flight_to_a_persistent_session_is_sent_again_after_kill_9() {
    retained_message_in_flight_is_sent_again(false).await;
}

#[tokio::test]
async fn a_retained_message_in_flight_to_a_persistent_session_is_sent_again_after_a_restart() {
    retained_message_in_flight_is_sent_again(true).await;
}

/// Publishes QoS 0 bursts to a subscriber that reads them, until `flooding` is cleared.
async fn flood(addr: std::net::SocketAddr, flooding: Arc<AtomicBool>) {
    let (mut reader, _) = Raw::handshake(addr, "flood-reader", true).await;
    reader.subscribe(1, &[("flood/#", 0)], &[0]).await;
    let (mut writer, _) = Raw::handshake(addr, "flood-writer", true).await;
    let burst: Vec<u8> = (0..50)
        .flat_map(|_| packets::publish("flood/x", &[0; 64], 0, 0, false, false))
        .collect();
    let draining = tokio::spawn(async move { while reader.recv().await.is_some() {} });
    while flooding.load(Ordering::Relaxed) {
        writer.send(&burst).await;
        writer.sync().await;
    }
    drop(writer);
    draining.abort();
}

/// A device whose new persistent session's first packet, right behind its CONNECT, is a QoS 2
/// PUBLISH: the id is kept with the session, so after a kill the PUBLISH sent again is not
/// routed again [MQTT-4.3.3-2]. (Its record used to race the session's own: the Registry
/// recorded the session after answering the CONNECT, and a Session on another thread could
/// record the id first, which start-up then dropped as belonging to no session.)
#[tokio::test]
async fn a_qos2_publish_right_behind_a_new_sessions_connect_is_delivered_once_across_kill_9() {
    const DEVICES: u16 = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // Two workers, one of them busy routing a flood, so that the route table is often
    // read-locked and the Registry's write to it (a new session's durable mark) may wait.
    let (child, _logs, addr) =
        start_broker_with(&state, "always", "info", "[listener]\nworkers = 2");
    let (mut sub, _) = Raw::handshake(addr, "gate-sub", false).await;
    sub.subscribe(1, &[("gate/+/state", 1)], &[1]).await;
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = tokio::spawn(flood(addr, flooding.clone()));
    let mut devices = Vec::new();
    for n in 0..DEVICES {
        let id = format!("gate-{n}");
        let mut bytes = packets::connect(&id, false, 60);
        bytes.extend(packets::publish(
            &format!("gate/{n}/state"),
            b"closed",
            2,
            1,
            false,
            false,
        ));
        let mut device = Raw::connect(addr).await;
        device.send(&bytes).await;
        assert_eq!(device.expect().await.byte1, 0x20, "CONNACK");
        let rec = device.expect().await;
        assert_eq!((rec.byte1, rec.pid()), (0x50, 1), "PUBREC");
        devices.push(device);
    }
    flooding.store(false, Ordering::Relaxed);
    flood.await.expect("flood");
    let before = sub.drain_acking().await;
    assert_eq!(before.len(), usize::from(DEVICES));
    // Killed before any device's PUBREL.
    kill_9(child);
    drop((sub, devices));

    let (child, _logs, addr) = start_broker(&state, "always");
    let (mut sub, present) = Raw::handshake(addr, "gate-sub", false).await;
    assert!(present);
    for n in 0..DEVICES {
        let (mut device, present) = Raw::handshake(addr, &format!("gate-{n}"), false).await;
        assert!(present, "gate-{n}'s session is kept");
        // Sent again, DUP set: acknowledged, not routed again.
        let topic = format!("gate/{n}/state");
        device
            .send(&packets::publish(&topic, b"closed", 2, 1, false, true))
            .await;
        let rec = device.expect().await;
        assert_eq!((rec.byte1, rec.pid()), (0x50, 1), "PUBREC again");
        device.send(&packets::ack(0x62, 1)).await;
        assert_eq!(device.expect().await.byte1, 0x70, "PUBCOMP");
    }
    // Only what the subscriber had not acknowledged on disk may come again, with DUP set; a
    // message routed a second time would come without it.
    let again = sub.drain_acking().await;
    let routed_again: Vec<&String> = again.iter().filter(|p| !p.dup).map(|p| &p.topic).collect();
    assert!(routed_again.is_empty(), "routed again: {routed_again:?}");
    kill_9(child);
}

#[tokio::test]
async fn an_outbound_qos2_message_released_before_the_kill_is_not_sent_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, _logs, addr) = start_broker(&state, "always");
    let (mut sub, _) = Raw::handshake(addr, "gate-sub", false).await;
    sub.subscribe(1, &[("gate/1/cmd", 2)], &[2]).await;
    let (mut app, _) = Raw::handshake(addr, "app", true).await;
    app.send(&packets::publish("gate/1/cmd", b"open", 2, 1, false, false))
        .await;
    let p = packets::parse_publish(&sub.expect().await);
    sub.send(&packets::ack(0x50, p.pid)).await; // PUBREC: the message is the client's now
    let rel = sub.expect().await;
    assert_eq!(rel.byte1, 0x62, "PUBREL, sent once the release is on disk");
    // Killed before the subscriber's PUBCOMP.
    kill_9(child);
    drop((sub, app));

    let (child, _logs, addr) = start_broker(&state, "always");
    let (mut sub, present) = Raw::handshake(addr, "gate-sub", false).await;
    assert!(present);
    // [MQTT-4.4.0-1] the broker re-sends PUBREL with the original id, not the PUBLISH.
    let frames = sub.sync().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!((frames[0].byte1, frames[0].pid()), (0x62, p.pid));
    sub.send(&packets::ack(0x70, p.pid)).await;
    assert!(sub.sync().await.is_empty());
    kill_9(child);
}

#[tokio::test]
async fn with_fsync_always_a_log_cut_back_to_its_last_synced_offset_keeps_every_acknowledged_message(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, logs, addr) = start_broker_reporting_syncs(&state, "always");
    let (mut sub, _) = Raw::handshake(addr, "radar-sub", false).await;
    sub.subscribe(1, &[("fleet/#", 1)], &[1]).await;
    sub.send(&[0xE0, 0x00]).await;
    sub.expect_closed().await;
    let acked = stream_then_kill(addr, child, 500, |n| format!("fleet/{n}"), false).await;
    cut_log_at_last_sync(logs);

    let (child, _logs, addr) = start_broker(&state, "always");
    let (mut sub, present) = Raw::handshake(addr, "radar-sub", false).await;
    assert!(present);
    let got: std::collections::HashSet<u16> = sub
        .drain_acking()
        .await
        .iter()
        .map(|p| u16::from_be_bytes([p.payload[0], p.payload[1]]))
        .collect();
    for pid in &acked {
        assert!(
            got.contains(&(pid - 1)),
            "message {} was acknowledged and is lost after the cut",
            pid - 1
        );
    }
    kill_9(child);
}

#[tokio::test]
async fn with_fsync_always_a_suback_or_unsuback_means_the_change_survives_power_loss() {
    // What a SUBACK [MQTT-3.8.4-1] or UNSUBACK [MQTT-3.10.4-4] acknowledges for a kept session
    // is durable before it goes out.
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, logs, addr) = start_broker_reporting_syncs(&state, "always");
    let (mut panel, _) = Raw::handshake(addr, "panel", false).await;
    panel.subscribe(1, &[("keep/a", 1)], &[1]).await;
    panel.subscribe(2, &[("drop/b", 1)], &[1]).await;
    panel.send(&packets::unsubscribe(3, &["drop/b"])).await;
    let unsuback = panel.expect().await;
    assert_eq!((unsuback.byte1, unsuback.pid()), (0xB0, 3), "UNSUBACK");
    kill_9(child);
    cut_log_at_last_sync(logs);

    let (child, _logs, addr) = start_broker(&state, "always");
    let (mut panel, present) = Raw::handshake(addr, "panel", false).await;
    assert!(present, "[MQTT-3.2.2-2] the session was kept");
    let (mut publisher, _) = Raw::handshake(addr, "publisher", true).await;
    for (pid, topic) in [(1, "drop/b"), (2, "keep/a")] {
        publisher
            .send(&packets::publish(topic, b"x", 1, pid, false, false))
            .await;
        assert_eq!(publisher.expect().await.byte1, 0x40, "PUBACK");
    }
    let got: Vec<String> = panel
        .drain_acking()
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(got, vec!["keep/a".to_string()]);
    kill_9(child);
}
