//! Long QoS 1 and QoS 2 streams to a persistent subscriber (`[persistence]`, each `fsync`
//! policy) run to their end: what a Session holds until a store change is durable (deliveries
//! to its client, PUBREL after its PUBREC, the PUBCOMP and PUBREC of what it was sent) goes out
//! once the change is durable, however the writer's reports and the Session's own reads of
//! what is durable interleave. A Session that missed one stopped its client's stream for good:
//! the QoS 2 window full of messages waiting for PUBREL, or every later delivery held. Both
//! clients are rumqttc with persistent sessions: the subscriber acknowledging as it reads, the
//! publisher keeping four messages in flight. And what is held goes out in the order it came:
//! a SUBACK before the retained message its subscription brings, while the writer commits.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use rumqttc::{Incoming, QoS};
use switchboard::config::FsyncPolicy;

/// Messages in each stream: enough for the writer's commits to interleave with the Sessions'
/// turns many times over.
const COUNT: u32 = 4000;

/// The longest the stream may pause: far above a commit's time, even with `fsync = "always"`
/// on a slow disk.
const STALL: Duration = Duration::from_secs(15);

async fn a_stream_to_a_persistent_subscriber_runs_to_its_end(fsync: FsyncPolicy, qos: QoS) {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = common::broker_with(|c| {
        c.persistence.dir = Some(dir.path().join("state"));
        c.persistence.fsync = fsync;
    });
    let addr = broker.local_addr();
    let mut device_options = common::options(addr, "stream-device");
    device_options.set_clean_session(false);
    let mut device = common::peer(device_options).await;
    device.subscribe("stream/#", qos).await;
    // A persistent publisher too: its QoS 2 ids are kept, and the deliveries of its messages
    // wait for them to be durable (exactly once across a crash).
    let mut app_options = common::options(addr, "stream-app");
    app_options.set_clean_session(false);
    // A few in flight: its messages' records and the device's go to the writer in many small
    // commits, so that one is often made while a Session's answer for the last is on its way.
    app_options.set_inflight(4);
    let app = common::peer(app_options).await;
    let publisher = app.client.clone();
    tokio::spawn(async move {
        for n in 0..COUNT {
            let payload = n.to_be_bytes().to_vec();
            if publisher
                .publish("stream/gate", qos, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });

    let mut seen = HashSet::new();
    let mut last = None;
    while seen.len() < COUNT as usize {
        let event = tokio::time::timeout(STALL, device.events.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{fsync:?}, {qos:?}: the stream stopped after {} of {COUNT} messages",
                    seen.len()
                )
            });
        let publish = match event {
            Some(Ok(Incoming::Publish(publish))) => publish,
            Some(Ok(_)) => continue,
            other => panic!("{fsync:?}, {qos:?}: the device's connection ended: {other:?}"),
        };
        let n = u32::from_be_bytes(
            publish.payload[..4]
                .try_into()
                .expect("a four-byte payload"),
        );
        if seen.insert(n) {
            // [MQTT-4.6.0-6] one publisher's messages on one topic arrive in order.
            assert!(last < Some(n), "{n} after {last:?}");
            last = Some(n);
        } else {
            // A QoS 2 message arrives once (MQTT 3.1.1 section 4.3.3: the broker passes on
            // no repeated PUBLISH of the publisher's [MQTT-4.3.3-2] and sends none again after
            // its PUBREL [MQTT-4.3.3-1]); QoS 1 has no reason to come twice on a connection
            // that stays up.
            panic!("{fsync:?}, {qos:?}: message {n} twice");
        }
    }
    drop(app);
}

#[tokio::test]
async fn a_qos2_stream_to_a_persistent_subscriber_runs_to_its_end_with_fsync_never() {
    a_stream_to_a_persistent_subscriber_runs_to_its_end(FsyncPolicy::Never, QoS::ExactlyOnce).await;
}

#[tokio::test]
async fn a_qos2_stream_to_a_persistent_subscriber_runs_to_its_end_with_fsync_interval() {
    a_stream_to_a_persistent_subscriber_runs_to_its_end(FsyncPolicy::Interval, QoS::ExactlyOnce)
        .await;
}

#[tokio::test]
async fn a_qos2_stream_to_a_persistent_subscriber_runs_to_its_end_with_fsync_always() {
    a_stream_to_a_persistent_subscriber_runs_to_its_end(FsyncPolicy::Always, QoS::ExactlyOnce)
        .await;
}

#[tokio::test]
async fn a_qos1_stream_to_a_persistent_subscriber_runs_to_its_end_with_fsync_never() {
    a_stream_to_a_persistent_subscriber_runs_to_its_end(FsyncPolicy::Never, QoS::AtLeastOnce).await;
}

/// SUBSCRIBE/UNSUBSCRIBE rounds in [`a_suback_comes_before_its_retained_message_while_the_writer_commits`].
const ROUNDS: u16 = 400;

#[tokio::test]
async fn a_suback_comes_before_its_retained_message_while_the_writer_commits() {
    // A persistent client's SUBACK waits until its subscription is durable, and so does the
    // retained message the subscription brings (a `Queued` record): both wait for the same
    // store change. MQTT lets a server send matching PUBLISH packets before the SUBACK
    // (3.1.1 section 3.8.4, 5.0 section 3.8.4), but Switchboard promises the SUBACK first, as
    // Mosquitto sends it (docs/architecture.md), and clients that set up a subscription's
    // handler on its SUBACK count on it. When the change became durable between the Session's
    // two turns, the SUBACK stayed held for the writer's report and the retained message,
    // which found the change durable, went first (in 20 runs of 20 before the fix). A stream
    // from another persistent client keeps the writer committing throughout.
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = common::broker_with(|c| {
        c.persistence.dir = Some(dir.path().join("state"));
        c.persistence.fsync = FsyncPolicy::Interval;
    });
    let addr = broker.local_addr();
    let (mut app, _) = common::Raw::handshake(addr, "config-app", true).await;
    app.publish_acked("cfg/gate", b"open at 7", 1, true).await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let streamer = tokio::spawn(async move {
        let (mut streamer, _) = common::Raw::handshake(addr, "radar-stream", false).await;
        let mut n = 0u16;
        while stopped.try_recv().is_err() {
            let pid = n % 1000 + 1;
            streamer
                .publish_acked("radar/speed", &n.to_be_bytes(), pid, false)
                .await;
            n = n.wrapping_add(1);
        }
    });
    let (mut device, _) = common::Raw::handshake(addr, "gate-device", false).await;
    // The stream reaches the device too (QoS 0), so that live messages matched under each new
    // table come right behind each SUBACK; they must not overtake it either, and the helper
    // checks that this SUBACK comes first.
    device.subscribe(1, &[("radar/#", 0)], &[0]).await;
    for round in 0..ROUNDS {
        let pid = 2 + 2 * round;
        device
            .send(&common::packets::subscribe(pid, &[("cfg/#", 1)]))
            .await;
        let mut frames = Vec::new();
        while frames.len() < 2 {
            let frame = device.expect().await;
            if frame.byte1 & 0xF0 == 0x30 && frame.byte1 & 0x06 == 0 {
                continue; // a QoS 0 message of the stream
            }
            frames.push(frame);
        }
        assert_eq!(
            (frames[0].byte1, frames[0].pid()),
            (0x90, pid),
            "round {round}: the SUBACK first, then the retained message; got {frames:?}"
        );
        let retained = common::packets::parse_publish(&frames[1]);
        assert_eq!(
            (retained.topic.as_str(), retained.retain),
            ("cfg/gate", true),
            "[MQTT-3.3.1-8]"
        );
        device.send(&common::packets::ack(0x40, retained.pid)).await;
        device
            .send(&common::packets::unsubscribe(pid + 1, &["cfg/#"]))
            .await;
        loop {
            let frame = device.expect().await;
            if frame.byte1 == 0xB0 && frame.pid() == pid + 1 {
                break;
            }
            assert_eq!(
                frame.byte1 & 0xF6,
                0x30,
                "only the stream's QoS 0 messages: {frame:?}"
            );
        }
    }
    let _ = stop.send(());
    streamer.await.expect("streamer");
}
