//! `[persistence]` with an ACL: a restarted broker still knows who each kept session's client
//! connected as, so a shared group's message goes to an offline member that may read it.

mod common;

use common::durable::{kill_9, start_broker_with};
use common::packets;
use common::Raw;

/// The topics of what `raw` has waiting, each acknowledged.
async fn received(raw: &mut Raw) -> Vec<String> {
    raw.drain_acking()
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect()
}

/// A shared group's message goes to a member that may read it, offline members included
/// (MQTT 5 section 4.8.2: one member gets each message). The members' user names are kept with
/// their sessions (from the CONNECT on: a crash may come before any DISCONNECT), so after a
/// restart, with every member offline, a job only the worker may
/// read is queued for the worker and none for the intern, whose Session would drop it on
/// resuming (it may not read it): before user names were kept, a restart made every stored
/// member count as one that may read, and half the secret jobs were lost that way.
#[tokio::test]
async fn after_a_restart_a_shared_groups_message_goes_to_an_offline_member_that_may_read_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        format!("{}topic write marker\n", common::SHARED_JOBS_ACL),
    )
    .expect("write");
    let state = dir.path().join("state");
    let more = format!("\n[auth]\nacl_file = {:?}\n", acl.display().to_string());
    let (child, _logs, addr) = start_broker_with(&state, "never", "info", &more);
    let mut worker = Raw::connect_as(addr, "worker-1", "worker", false).await;
    worker.subscribe(1, &[("$share/g/jobs/#", 1)], &[1]).await;
    worker.send(&[0xE0, 0x00]).await; // DISCONNECT
    worker.expect_closed().await;
    // The intern is still connected when the broker dies: what was recorded when it
    // connected says who it is.
    let mut intern = Raw::connect_as(addr, "intern-1", "intern", false).await;
    intern.subscribe(1, &[("$share/g/jobs/#", 1)], &[1]).await;
    // Changes are written in the order they were made: once this is acknowledged, the
    // sessions and their subscriptions are on disk.
    let mut boss = Raw::connect_as(addr, "boss", "boss", true).await;
    boss.send(&packets::publish("marker", b"m", 1, 1, true, false))
        .await;
    assert_eq!(boss.expect().await.byte1, 0x40, "PUBACK");
    kill_9(child);
    drop(intern);

    let (child, _logs, addr) = start_broker_with(&state, "never", "info", &more);
    let mut boss = Raw::connect_as(addr, "boss", "boss", true).await;
    let secret: Vec<String> = (0..10).map(|n| format!("jobs/secret/{n}")).collect();
    for (n, topic) in (1..).zip(&secret) {
        boss.send(&packets::publish(topic, b"job", 1, n, false, false))
            .await;
    }
    for n in 1..=secret.len() {
        let ack = boss.expect().await;
        assert_eq!((ack.byte1, usize::from(ack.pid())), (0x40, n), "PUBACK");
    }

    let mut worker = Raw::connect_as(addr, "worker-1", "worker", false).await;
    assert_eq!(
        received(&mut worker).await,
        secret,
        "every secret job was queued for the member that may read it"
    );
    let mut intern = Raw::connect_as(addr, "intern-1", "intern", false).await;
    assert_eq!(
        received(&mut intern).await,
        Vec::<String>::new(),
        "none for the member that may not"
    );
    kill_9(child);
}
