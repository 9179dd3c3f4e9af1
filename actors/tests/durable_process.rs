//! The durable queue survives a real restart of the device process: the first `switchboard-pub`
//! queues messages while the broker is unreachable and is killed (SIGKILL); the second, started
//! against a live broker with the same queue file and no new messages, delivers them all.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use actix::prelude::*;
use common::*;
use switchboard_actors::{Consumer, QoS, Received};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard-pub");

#[actix_rt::test]
async fn pending_messages_survive_a_killed_process() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("radar.queue");
    let port = free_port();

    // First process: nothing listens on `port`; five messages are queued (and written to disk).
    let mut first = Command::new(BIN)
        .args([
            "--port",
            &port.to_string(),
            "--topic",
            "detrd/status/response/1AB",
            "--qos",
            "1",
        ])
        .args(["--message", "status", "--count", "5", "--wait", "600"])
        .arg("--queue")
        .arg(&queue)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(first.stdout.take().unwrap()).lines();
    assert_eq!(out.next().unwrap().unwrap(), "queued 5");
    first.kill().unwrap(); // SIGKILL: no chance to flush or say goodbye
    first.wait().unwrap();

    // A broker, with a subscriber, on that port.
    let broker = broker_on(port);
    let (conn, mut events) = connection(options(broker.local_addr().port(), "app"));
    let (sink, mut received) = probe::<Received>();
    Consumer::new(
        conn,
        vec![("detrd/status/response/+".into(), QoS::AtLeastOnce)],
        sink,
    )
    .start();
    granted(&mut events, "detrd/status/response/+").await;

    // Second process: no new messages, the same queue file.
    let second = tokio::process::Command::new(BIN)
        .args(["--port", &port.to_string(), "--count", "0", "--wait", "10"])
        .arg("--queue")
        .arg(&queue)
        .output()
        .await
        .unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(String::from_utf8_lossy(&second.stdout).contains("delivered"));
    assert_eq!(receive(&mut received, 5).await, vec!["status"; 5]);
}
