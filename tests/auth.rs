//! Authentication: Mosquitto password files read as they are, `switchboard passwd`, anonymous
//! access rules.

mod common;

use common::packets::ConnectSpec;
use common::passwords::{
    app_sees_the_one_shot_state, closed_connects_ended_unchecked, gate_1ab, guess,
    one_shot_packets, set_password_rounds, CHECK_WAIT,
};
use common::{broker_with, Raw};
use switchboard::{BackgroundBroker, BrokerError};

/// Written by `mosquitto_passwd -b -c FILE alice s3cret` (Mosquitto 2.0.11).
const MOSQUITTO_LINE: &str = "alice:$7$101$KkuAleRaWpH/W1vd$mcZbfAMv/O/YmRFUKsggMGcwepJcy/SpAw0aj3qmYLqiJpSnyOBWgR+ApMfuF+oeMfEGIFZbnsv+fCyJODFeqQ==";

/// A password file with alice (from mosquitto_passwd) and radar (from `switchboard passwd`).
fn password_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("passwords");
    std::fs::write(&path, format!("{MOSQUITTO_LINE}\n")).expect("write");
    set_password(&path, "1AB.ENTER.DETRD", "radar-pw");
    path
}

/// `switchboard passwd` (1,000 rounds): adds `user` to the file at `path`, or changes its
/// password.
fn set_password(path: &std::path::Path, user: &str, password: &str) {
    set_password_rounds(path, user, password, 1000);
}

/// A broker whose password file holds `gates`, each with the password `gate-secret` hashed
/// with `rounds` PBKDF2 rounds; the file's directory is returned with it, to live as long.
fn broker_with_gates(gates: &[&str], rounds: u32) -> (tempfile::TempDir, BackgroundBroker) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("passwords");
    for gate in gates {
        set_password_rounds(&path, gate, "gate-secret", rounds);
    }
    let broker = broker_with(|c| c.auth.password_file = Some(path));
    (dir, broker)
}

/// Sends the CONNECT `spec` from the loopback address `source` (or the default one) and
/// returns its CONNACK's return code.
async fn connack_of(
    addr: std::net::SocketAddr,
    source: Option<std::net::Ipv4Addr>,
    spec: ConnectSpec<'_>,
) -> u8 {
    use tokio::io::AsyncReadExt;
    let mut raw = match source {
        Some(source) => Raw::connect_from(addr, source).await,
        None => Raw::connect(addr).await,
    };
    raw.send(&spec.encode()).await;
    // MQTT 3.1.1 CONNACK: 0x20, remaining length 2, session present, return code.
    let mut connack = [0u8; 4];
    tokio::time::timeout(CHECK_WAIT, raw.stream.read_exact(&mut connack))
        .await
        .expect("a CONNACK within the wait")
        .expect("a CONNACK");
    assert_eq!(connack[..2], [0x20, 0x02], "CONNACK expected");
    connack[3]
}

async fn connack(addr: std::net::SocketAddr, user: Option<&str>, password: Option<&[u8]>) -> u8 {
    let spec = ConnectSpec {
        client_id: "auth-test",
        username: user,
        password,
        ..Default::default()
    };
    connack_of(addr, None, spec).await
}

#[tokio::test]
async fn password_file_users_get_in_and_nobody_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = password_file(&dir);
    let broker = broker_with(|c| c.auth.password_file = Some(path));
    let addr = broker.local_addr();
    assert_eq!(connack(addr, Some("alice"), Some(b"s3cret")).await, 0);
    assert_eq!(
        connack(addr, Some("1AB.ENTER.DETRD"), Some(b"radar-pw")).await,
        0
    );
    assert_eq!(
        connack(addr, Some("alice"), Some(b"wrong")).await,
        4,
        "bad password"
    );
    assert_eq!(
        connack(addr, Some("mallory"), Some(b"s3cret")).await,
        4,
        "unknown user"
    );
    assert_eq!(connack(addr, Some("alice"), None).await, 4, "no password");
    // With a password file, anonymous clients are refused unless allowed.
    assert_eq!(connack(addr, None, None).await, 5);
}

/// How long the broker takes to refuse a CONNECT of `user` with a wrong password.
async fn refusal(addr: std::net::SocketAddr, user: &str) -> std::time::Duration {
    let started = std::time::Instant::now();
    assert_eq!(connack(addr, Some(user), Some(b"a-guess")).await, 4);
    started.elapsed()
}

/// A refusal must not tell who has an account: an unknown user name is checked against a decoy
/// with the file's rounds (src/auth/password_file.rs), so its CONNACK 4 comes no sooner than a
/// wrong password's. With 10,000 rounds the wrong password takes some 150 ms in a debug build
/// and an unknown user, unchecked, about 1 ms; the decoy makes them alike, and the test allows
/// a factor of two for a busy machine. (Three tries of each, one kind after the other, once
/// saw a wrong password's shortest at 406 ms beside a build, against 161 ms.)
#[tokio::test]
async fn an_unknown_user_is_refused_no_sooner_than_a_wrong_password() {
    let (_dir, broker) = broker_with_gates(&["gate-1AB", "gate-2CD", "gate-3EF"], 10_000);
    let addr = broker.local_addr();
    // The shortest of five tries each, taken in turn, so that a busy moment of the machine
    // (another test binary, a build) slows both alike rather than one of them.
    let (mut wrong_password, mut unknown_user) =
        (std::time::Duration::MAX, std::time::Duration::MAX);
    for _ in 0..5 {
        wrong_password = wrong_password.min(refusal(addr, "gate-1AB").await);
        unknown_user = unknown_user.min(refusal(addr, "gate-9ZZ").await);
    }
    assert!(
        unknown_user * 2 >= wrong_password,
        "unknown user refused in {unknown_user:?}, a wrong password in {wrong_password:?}"
    );
}

/// The nice values of this process's threads (`/proc/self/task/*/stat`, the 19th field).
fn thread_nice_values() -> Vec<i64> {
    let mut values = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc") {
        let Ok(stat) = std::fs::read_to_string(task.expect("task").path().join("stat")) else {
            continue; // a thread that ended meanwhile
        };
        // After the command name in parentheses: state is field 3, nice field 19.
        let after_name = &stat[stat.rfind(')').expect("stat's name") + 2..];
        if let Some(nice) = after_name.split(' ').nth(16) {
            values.push(nice.parse().expect("nice is a number"));
        }
    }
    values
}

/// A device whose password verified before reconnects at once while wrong passwords keep the
/// Authenticator's threads busy: the Session checks what verified before itself, and never
/// queues behind the flood (before, a known gate waited some 300 ms behind 20 guessers with a
/// 100,000-round file, docs/security.md). The flood's checks run 10 nicer, behind the traffic.
#[tokio::test]
async fn a_known_device_reconnects_past_a_flood_of_wrong_passwords() {
    let (_dir, broker) = broker_with_gates(&["gate-1AB"], 2_000);
    let addr = broker.local_addr();
    assert_eq!(
        connack(addr, Some("gate-1AB"), Some(b"gate-secret")).await,
        0
    );
    let mut flood = Flood::start(addr, None).await;
    assert_eq!(
        connack(addr, Some("gate-1AB"), Some(b"gate-secret")).await,
        0,
        "the gate reconnects"
    );
    let refused_before_the_gate = flood.refused_by_now();
    assert!(
        refused_before_the_gate < 10,
        "the gate waited behind {refused_before_the_gate} of 20 wrong passwords"
    );
    flood.all_refused().await;
    // Threads inherit their nice value: the broker's run at the test's, the Authenticator's
    // at 10 more (at most 19).
    let nice = thread_nice_values();
    let traffic = nice.iter().min().copied().expect("threads");
    assert!(
        nice.contains(&(traffic + 10).min(19)),
        "an Authenticator thread 10 nicer than {traffic}: {nice:?}"
    );
}

/// A flood of guesses from one address does not hold back the first CONNECT of a device from
/// another: each address has its own lane into the Authenticator's queue, as deep as it has
/// threads (src/auth/lanes.rs). 20 guesses from 127.0.0.2, then a device never seen before from
/// 127.0.0.3, whose password must be checked too: it is let in while most guesses still wait
/// (before lanes, behind all of them).
#[tokio::test]
async fn a_flood_from_one_address_does_not_hold_back_another() {
    let (_dir, broker) = broker_with_gates(&["gate-1AB", "gate-2CD"], 2_000);
    let addr = broker.local_addr();
    let mut flood = Flood::start(addr, Some(std::net::Ipv4Addr::new(127, 0, 0, 2))).await;
    let device = ConnectSpec {
        client_id: "gate-2CD",
        username: Some("gate-2CD"),
        password: Some(b"gate-secret"),
        ..Default::default()
    };
    let device_source = std::net::Ipv4Addr::new(127, 0, 0, 3);
    assert_eq!(connack_of(addr, Some(device_source), device).await, 0);
    let refused_before_the_device = flood.refused_by_now();
    assert!(
        refused_before_the_device < 10,
        "the device waited behind {refused_before_the_device} of 20 guesses"
    );
    flood.all_refused().await;
}

/// 20 CONNECTs of `gate-1AB` with a wrong password at once, from `source` or the default
/// loopback address: their refusals as they come. The file's 2,000 rounds cost some 30 ms of
/// PBKDF2 each in a debug build: 0.6 s of CPU in all, at nice 10, so that a busy machine still
/// answers every guess within the tests' wait.
struct Flood {
    refusals: tokio::sync::mpsc::UnboundedReceiver<u8>,
    refused: usize,
}

impl Flood {
    /// Sends the 20 CONNECTs and waits for the first refusal: the Authenticator is then
    /// working through the flood.
    async fn start(addr: std::net::SocketAddr, source: Option<std::net::Ipv4Addr>) -> Flood {
        let (refused_tx, refusals) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..20 {
            let refused_tx = refused_tx.clone();
            tokio::spawn(async move {
                let client_id = format!("guess-{i}");
                let spec = guess(&client_id);
                let _ = refused_tx.send(connack_of(addr, source, spec).await);
            });
        }
        let mut flood = Flood {
            refusals,
            refused: 0,
        };
        assert_eq!(
            flood.refusals.recv().await,
            Some(4),
            "the flood is being checked"
        );
        flood.refused = 1;
        flood
    }

    /// How many guesses were refused by now.
    fn refused_by_now(&mut self) -> usize {
        while let Ok(code) = self.refusals.try_recv() {
            assert_eq!(code, 4, "a guess refused");
            self.refused += 1;
        }
        self.refused
    }

    /// Waits for the rest: every guess is checked and refused.
    async fn all_refused(mut self) {
        while let Some(code) = self.refusals.recv().await {
            assert_eq!(code, 4, "a guess refused");
            self.refused += 1;
        }
        assert_eq!(self.refused, 20);
    }
}

/// CONNECTs whose clients close their connections while the password waits to be checked give
/// up their place (src/session/socket.rs, `peer_gone`): 20 from one address, each closed as
/// soon as it is sent, their user's 20,000 rounds some 300 ms of PBKDF2 each in a debug build.
/// Their connections end without waiting for a check, and none is refused (the test allows a
/// few, for a machine so loaded that a check ends before the close is read). Before,
/// each held its connection until its turn in the lane came and its check ran: 20 refusals
/// for nobody, and a flood of such CONNECTs kept connections open for as long as the checks
/// took.
#[tokio::test]
async fn connects_closed_while_their_password_waits_are_not_checked() {
    let (_dir, broker) = broker_with_gates(&["gate-1AB"], 20_000);
    let addr = broker.local_addr();
    let metrics = broker.metrics();
    for i in 0..20 {
        let client_id = format!("gone-{i}");
        let spec = guess(&client_id);
        let mut raw = Raw::connect_from(addr, std::net::Ipv4Addr::new(127, 0, 0, 4)).await;
        raw.send(&spec.encode()).await;
        drop(raw);
    }
    closed_connects_ended_unchecked(metrics, 20, "CONNECTs").await;
}

/// A client may send packets right behind its CONNECT and close its side at once, without
/// waiting for the CONNACK (a one-shot publisher): those packets are still served once its
/// password is checked. A retained PUBLISH and a DISCONNECT behind the CONNECT, in one write,
/// then end of stream from the client while its check (20,000 rounds) runs.
#[tokio::test]
async fn packets_sent_behind_a_connect_are_served_though_the_client_closed_its_side() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, broker) = broker_with_gates(&["gate-1AB"], 20_000);
    let addr = broker.local_addr();
    let gate = gate_1ab();
    let mut one_shot = Raw::connect(addr).await;
    let mut bytes = gate.encode();
    bytes.extend(one_shot_packets());
    one_shot.send(&bytes).await;
    one_shot
        .stream
        .shutdown()
        .await
        .expect("end of stream sent");
    let mut connack = [0u8; 4];
    tokio::time::timeout(CHECK_WAIT, one_shot.stream.read_exact(&mut connack))
        .await
        .expect("a CONNACK within the wait")
        .expect("a CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "accepted");

    app_sees_the_one_shot_state(addr, gate).await;
}

/// A password that verified once is not checked with PBKDF2 again (src/auth/verified.rs), so a
/// changed password must end it: after `switchboard passwd` and a SIGHUP, the old password is
/// refused, even for a user who connected with it before, and the new one gets in.
#[tokio::test]
async fn a_changed_password_is_refused_after_a_reload_though_it_verified_before() {
    use common::child::{listening_addr, sighup, spawn, wait_line, BrokerProcess};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = password_file(&dir);
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\npassword_file = \"{}\"\n[http]\nenabled = false\n",
            path.display()
        ),
    )
    .expect("config");
    let (child, logs) = spawn(&["--port", "0", "-c", config.to_str().expect("utf-8")]);
    let child = BrokerProcess(child);
    let addr = listening_addr(&wait_line(&logs, "switchboard listening on"));
    let radar = Some("1AB.ENTER.DETRD");
    for _ in 0..2 {
        assert_eq!(connack(addr, radar, Some(b"radar-pw")).await, 0);
    }
    assert_eq!(connack(addr, radar, Some(b"new-pw")).await, 4);

    set_password(&path, "1AB.ENTER.DETRD", "new-pw");
    sighup(&child.0);
    wait_line(&logs, "SIGHUP: password and ACL files reloaded");
    assert_eq!(
        connack(addr, radar, Some(b"radar-pw")).await,
        4,
        "the old password, verified before the reload"
    );
    assert_eq!(connack(addr, radar, Some(b"new-pw")).await, 0);
    assert_eq!(connack(addr, Some("alice"), Some(b"s3cret")).await, 0);
}

#[tokio::test]
async fn anonymous_clients_can_be_allowed_beside_a_password_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = password_file(&dir);
    let broker = broker_with(|c| {
        c.auth.password_file = Some(path);
        c.auth.allow_anonymous = Some(true);
    });
    assert_eq!(connack(broker.local_addr(), None, None).await, 0);
    assert_eq!(
        connack(broker.local_addr(), Some("alice"), Some(b"nope")).await,
        4
    );
}

#[tokio::test]
async fn anonymous_is_the_default_only_on_loopback_without_a_password_file() {
    let broker = broker_with(|_| {});
    assert_eq!(connack(broker.local_addr(), None, None).await, 0);
    let refused = broker_with(|c| c.auth.allow_anonymous = Some(false));
    assert_eq!(connack(refused.local_addr(), None, None).await, 5);
}

#[test]
fn a_public_bind_without_authentication_needs_an_explicit_setting() {
    // Refused before anything is bound.
    let mut config = common::test_config();
    config.listener.bind = "0.0.0.0".parse().expect("address");
    match BackgroundBroker::start(config) {
        Err(BrokerError::Config(e)) => {
            assert!(e.to_string().contains("auth.allow_anonymous"), "{e}")
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a public bind without authentication must not start"),
    }
}

#[test]
fn a_broken_password_file_stops_start_up_with_its_line_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("passwords");
    std::fs::write(&path, format!("{MOSQUITTO_LINE}\nbob:plaintext\n")).expect("write");
    let mut config = common::test_config();
    config.auth.password_file = Some(path);
    match BackgroundBroker::start(config) {
        Err(e) => assert!(e.to_string().contains("line 2"), "{e}"),
        Ok(_) => panic!("a broken password file must stop start-up"),
    }
}
