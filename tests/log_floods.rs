//! What a client may send again and again and the broker refuses (publishes the ACL denies,
//! filters it denies, filters past `limits.max_subscriptions_per_client`) costs a log line per
//! kind a second at most, not one per message or filter: a device stuck in such a loop must
//! not fill the disk with the broker's log (docs/security.md, "Threat model").

mod common;

use std::sync::mpsc::Receiver;

use common::child::{listening_addr, log_number, spawn, wait_line, BrokerProcess};
use common::{packets, Raw};

/// How many times each refused thing is sent: with a line each, the log would hold this many.
const TIMES: u16 = 300;

/// The lines logged before the line containing `marker`.
fn lines_before(logs: &Receiver<String>, marker: &str) -> Vec<String> {
    let mut before = Vec::new();
    loop {
        let line = logs
            .recv_timeout(common::WAIT)
            .unwrap_or_else(|_| panic!("no line containing {marker:?}"));
        if line.contains(marker) {
            return before;
        }
        before.push(line);
    }
}

/// The lines of `lines` containing `message`, at least one and at most `most`.
fn lines_about<'a>(lines: &'a [String], message: &str, most: usize) -> Vec<&'a String> {
    let found: Vec<&String> = lines.iter().filter(|l| l.contains(message)).collect();
    assert!(
        !found.is_empty() && found.len() <= most,
        "{} lines about {message:?} for {TIMES} refusals (at most {most}): {found:#?}",
        found.len()
    );
    found
}

#[tokio::test]
async fn refusals_in_a_loop_cost_one_log_line_not_one_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "pattern readwrite open/#\npattern deny secrets/#\n").expect("acl");
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[limits]\nmax_subscriptions_per_client = 5\n[auth]\nallow_anonymous = true\nacl_file = {:?}\n",
            acl.to_str().expect("utf-8")
        ),
    )
    .expect("config");
    let (child, logs) = spawn(&["--port", "0", "-c", config.to_str().expect("utf-8")]);
    let _broker = BrokerProcess(child);
    let addr = listening_addr(&wait_line(&logs, "switchboard listening on"));

    let (mut device, _) = Raw::handshake(addr, "stuck-device", true).await;
    // Publishes the ACL denies: MQTT 3.1.1 has no negative PUBACK, so each is acknowledged (and
    // dropped), as Mosquitto does.
    for pid in 1..=TIMES {
        device
            .send(&packets::publish("secrets/x", b"1", 1, pid, false, false))
            .await;
    }
    let acks = device.sync_acks().await;
    assert_eq!(
        acks.len(),
        usize::from(TIMES),
        "every denied publish acknowledged"
    );
    assert!(acks.iter().all(|&(byte1, _)| byte1 == 0x40));
    // One SUBSCRIBE of filters the ACL denies, one of filters past the limit of 5.
    let denied: Vec<String> = (0..TIMES).map(|i| format!("secrets/{i}")).collect();
    let denied: Vec<(&str, u8)> = denied.iter().map(|f| (f.as_str(), 1)).collect();
    device
        .subscribe(1, &denied, &vec![0x80; usize::from(TIMES)])
        .await;
    let many: Vec<String> = (0..TIMES).map(|i| format!("open/{i}")).collect();
    let many: Vec<(&str, u8)> = many.iter().map(|f| (f.as_str(), 1)).collect();
    let mut codes = vec![1u8; 5];
    codes.resize(usize::from(TIMES), 0x80);
    device.subscribe(2, &many, &codes).await;

    // Everything above was logged before this client connects.
    let _marker = Raw::handshake(addr, "marker", true).await;
    let lines = lines_before(&logs, "client connected client_id=marker");
    // One line each (a second if the run took over a second), each with the count.
    let publishes = lines_about(&lines, "publish denied", 3);
    assert!(publishes[0].contains("client_id=stuck-device") && publishes[0].contains("secrets/x"));
    assert_eq!(
        log_number(publishes[0], "refused"),
        1,
        "the first is logged at once"
    );
    // The Session's line (the ACL); the Registry's for the limit says "subscription refused:
    // limit of subscriptions per client".
    let acl = lines_about(&lines, "subscription refused client_id=", 1);
    assert_eq!(log_number(acl[0], "in_packet"), u64::from(TIMES));
    assert!(
        acl[0].contains("filter=secrets/0"),
        "the first filter named: {}",
        acl[0]
    );
    let limit = lines_about(&lines, "limit of subscriptions per client", 1);
    assert_eq!(log_number(limit[0], "in_packet"), u64::from(TIMES) - 5);
    assert!(
        limit[0].contains("filter=open/5"),
        "the first refused named: {}",
        limit[0]
    );
}
