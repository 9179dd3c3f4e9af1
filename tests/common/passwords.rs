//! Password files for the authentication tests (`switchboard passwd`, as users run it), and what
//! CONNECTs closed while their password waits must leave behind.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long a CONNACK may take where passwords are checked: the checks run at nice 10
/// (src/auth/low_priority.rs), so on a machine busy with other work they wait for the CPU far
/// longer than the tests' usual wait.
pub const CHECK_WAIT: Duration = Duration::from_secs(120);

/// `switchboard passwd --iterations rounds`: adds `user` to the file at `path`, or changes its
/// password.
pub fn set_password_rounds(path: &std::path::Path, user: &str, password: &str, rounds: u32) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["passwd", "--iterations", &rounds.to_string()])
        .arg(path)
        .arg(user)
        .stdin(Stdio::piped())
        .spawn()
        .expect("switchboard passwd runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("password");
    assert!(child.wait().expect("exit").success());
}

/// The device `gate-1AB` with its right password (`gate-secret`).
pub fn gate_1ab() -> super::packets::ConnectSpec<'static> {
    super::packets::ConnectSpec {
        client_id: "gate-1AB",
        username: Some("gate-1AB"),
        password: Some(b"gate-secret"),
        ..Default::default()
    }
}

/// A guess at `gate-1AB`'s password (`guess`), as a flood of wrong passwords sends it, from
/// the client `client_id`.
pub fn guess(client_id: &str) -> super::packets::ConnectSpec<'_> {
    super::packets::ConnectSpec {
        client_id,
        username: Some("gate-1AB"),
        password: Some(b"guess"),
        ..Default::default()
    }
}

/// Waits until the broker has read `count` packets in all (a CONNECT it now waits on).
pub async fn packets_read(metrics: &switchboard::metrics::Metrics, count: u64) {
    super::eventually_within(super::WAIT, || {
        let read = metrics.traffic.totals().packets_received;
        async move { read == count }
    })
    .await;
}

/// Waits until the broker has had `total` connections and holds none, then asserts that fewer
/// than 5 of them had their password checked and refused: CONNECTs whose clients closed while
/// their check waited give up their place (src/session/socket.rs, `peer_gone`). A few may be
/// checked on a machine so loaded that a check ends before the close is seen.
pub async fn closed_connects_ended_unchecked(
    metrics: &switchboard::metrics::Metrics,
    total: u64,
    what: &str,
) {
    super::eventually_within(CHECK_WAIT, || async {
        let now = metrics.snapshot();
        now.connections_total == total && now.connections_current == 0
    })
    .await;
    let refused = metrics.snapshot().auth_failures;
    assert!(
        refused < 5,
        "{refused} of the {total} {what} closed before their check were checked and refused"
    );
}

/// What a one-shot `gate` publisher sends behind its CONNECT before it closes: a retained
/// `gate/1AB/state` = `closed` (QoS 0), then a DISCONNECT ([`app_sees_the_one_shot_state`]
/// checks it was served).
pub fn one_shot_packets() -> Vec<u8> {
    let mut bytes = super::packets::publish("gate/1AB/state", b"closed", 0, 0, true, false);
    bytes.extend([0xE0, 0x00]);
    bytes
}

/// Connects `app` (client id `app`, with `gate`'s user name and password, which verified
/// already, so it is not checked again), subscribes to `gate/#` and asserts the retained
/// message a one-shot `gate` publisher left: `gate/1AB/state` = `closed`.
pub async fn app_sees_the_one_shot_state(
    addr: std::net::SocketAddr,
    gate: super::packets::ConnectSpec<'_>,
) {
    let app = super::packets::ConnectSpec {
        client_id: "app",
        ..gate
    };
    let mut app_raw = super::Raw::connect(addr).await;
    app_raw.send(&app.encode()).await;
    let connack = app_raw.expect().await;
    assert_eq!((connack.byte1, &connack.body[..]), (0x20, &[0u8, 0][..]));
    app_raw.subscribe(1, &[("gate/#", 0)], &[0]).await;
    let retained = super::packets::parse_publish(&app_raw.expect().await);
    assert_eq!(
        (
            retained.topic.as_str(),
            &retained.payload[..],
            retained.retain
        ),
        ("gate/1AB/state", &b"closed"[..], true)
    );
}
