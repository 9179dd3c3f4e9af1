//! Long QoS 1 and QoS 2 streams to a persistent subscriber (`[persistence]`, each `fsync`
//! policy) run to their end: what a Session holds until a store change is durable (deliveries
//! to its client, PUBREL after its PUBREC, the PUBCOMP and PUBREC of what it was sent) goes out
//! once the change is durable, however the writer's reports and the Session's own reads of
//! what is durable interleave. A Session that missed one stopped its client's stream for good:
//! the QoS 2 window full of messages waiting for PUBREL, or every later delivery held. Both
//! clients are rumqttc with persistent sessions: the subscriber acknowledging as it reads, the
//! publisher keeping four messages in flight.

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
