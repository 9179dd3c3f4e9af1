//! paho-mqtt (Python) across a broker process killed with SIGKILL (`[persistence]`, `fsync =
//! "never"`): a persistent subscriber (clean session 0) online while a publisher streams QoS 1
//! messages, the broker killed in the middle of the stream, and the subscriber back in a new
//! process after the restart. Every message whose PUBACK reached the publisher reaches the
//! subscriber. The script is `tests/interop/paho_durable.py`; `.ci/run` installs paho-mqtt.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;

use common::child::spawn_reading_stdout;
use common::durable::{kill_9, start_broker};

/// The broker's default `sessions.max_inflight`: the most messages the subscriber has
/// unacknowledged.
const WINDOW: usize = 32;
/// PUBACKs the publisher has had when the broker is killed.
const KILL_AFTER: usize = 1000;

/// Starts `paho_durable.py` in `mode` against `port`; returns it with a channel of its lines,
/// which ends with its output.
fn script(mode: &str, port: u16, more: &[&str]) -> (Child, Receiver<String>) {
    let path = format!(
        "{}/tests/interop/paho_durable.py",
        env!("CARGO_MANIFEST_DIR")
    );
    spawn_reading_stdout(
        Command::new("python3")
            .arg(path)
            .args([mode, &port.to_string()])
            .args(more)
            .stderr(Stdio::inherit()),
    )
}

/// Waits for the line `wanted`; returns every line up to it.
fn lines_until(lines: &Receiver<String>, mut wanted: impl FnMut(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(common::WAIT * 4) {
            Ok(line) => {
                let done = wanted(&line);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(e) => panic!("no such line ({e}) after {:?}", seen.last()),
        }
    }
}

/// The numbers of the lines `"{prefix} N"`.
fn numbers<'a>(lines: impl IntoIterator<Item = &'a String>, prefix: &str) -> Vec<u32> {
    lines
        .into_iter()
        .filter_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
        .collect()
}

#[test]
fn a_paho_persistent_subscriber_gets_every_acknowledged_message_across_kill_9() {
    if !common::paho_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (child, _logs, addr) = start_broker(&state, "never");
    let (mut subscriber, sub_lines) = script("subscribe", addr.port(), &[]);
    lines_until(&sub_lines, |l| l == "ready");
    let (mut publisher, pub_lines) = script("publish", addr.port(), &["65535"]);
    let mut acked = 0;
    let mut before_kill = lines_until(&pub_lines, |l| {
        acked += usize::from(l.starts_with("acked "));
        acked == KILL_AFTER
    });
    kill_9(child);
    // Both scripts end once they lose their connection.
    assert!(publisher.wait().expect("publisher ends").success());
    assert!(subscriber.wait().expect("subscriber ends").success());
    // Every line each printed: the channels end with the scripts' output.
    before_kill.extend(pub_lines.iter());
    let acked: BTreeSet<u32> = numbers(&before_kill, "acked ").into_iter().collect();
    let got_before: Vec<String> = sub_lines.iter().collect();

    let (child, _logs, addr) = start_broker(&state, "never");
    let (mut resumed, resumed_lines) = script("resume", addr.port(), &[]);
    let got_after = lines_until(&resumed_lines, |l| l == "got end");
    assert!(resumed.wait().expect("resumed subscriber ends").success());
    // [MQTT-3.2.2-2] the session survived the kill; [MQTT-3.1.2-4] its subscription delivers
    // without a new SUBSCRIBE (the script sends none).
    assert_eq!(got_after.first().map(String::as_str), Some("present 1"));
    let mut seen: HashMap<u32, usize> = HashMap::new();
    for n in numbers(got_before.iter().chain(&got_after), "got ") {
        *seen.entry(n).or_default() += 1;
    }
    let missing: Vec<&u32> = acked.iter().filter(|n| !seen.contains_key(n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages never reached the subscriber: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    // [MQTT-4.4.0-1] what was sent and not acknowledged is sent again: at most the window.
    assert!(
        duplicates <= WINDOW,
        "{duplicates} duplicates: at most {WINDOW} re-sent (the inflight window)"
    );
    kill_9(child);
}
