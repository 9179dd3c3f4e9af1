//! `[[bridge]]` configuration: bad configs are refused at start with the bridge and the key
//! named; a remote that refuses the credentials is retried, not fatal; SIGHUP adds, removes and
//! restarts bridges, and an invalid new config changes nothing.

mod common;

use std::path::Path;
use std::process::Child;
use std::sync::mpsc::Receiver;

use common::child::{spawn, BIN};
use common::{broker_with_hooks, packets, Raw};
use switchboard::Config;

/// The error `Config::from_toml` gives for one `[[bridge]]` table named `central`.
fn error_of(body: &str) -> String {
    let toml = format!("[[bridge]]\nname = \"central\"\n{body}");
    match Config::from_toml(&toml) {
        Ok(_) => panic!("accepted:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

const GOOD: &str = "address = \"127.0.0.1:1884\"\n";

#[test]
fn bad_bridge_configs_name_the_bridge_and_the_key() {
    let topics = |entry: &str| format!("{GOOD}topics = [{entry}]\n");
    let cases = [
        (
            topics(r#"{ pattern = "gate/#/x", direction = "out" }"#),
            "`topics[0].pattern`: `gate/#/x` is not a valid topic filter",
        ),
        (
            topics(r#"{ pattern = "gate/#", direction = "out", local_prefix = "site/+/" }"#),
            "`topics[0].local_prefix`: `site/+/` has a wildcard",
        ),
        (
            topics(r##"{ pattern = "gate/#", direction = "in", remote_prefix = "#/" }"##),
            "`topics[0].remote_prefix`: `#/` has a wildcard",
        ),
        (
            "adress = \"127.0.0.1:1884\"\ntopics = []\n".to_string(),
            "`adress`: unknown field `adress`",
        ),
        (
            topics(r#"{ pattern = "gate/#", direction = "out", local_prefx = "x/" }"#),
            "`topics[0].local_prefx`: unknown field `local_prefx`",
        ),
        (
            topics(r#"{ pattern = "gate/#", direction = "sideways" }"#),
            "`topics[0].direction`: unknown variant `sideways`",
        ),
        (
            format!(
                "{GOOD}username = \"site\"\npassword_file = \"/nonexistent/bridge.secret\"\n\
                 topics = [{{ pattern = \"gate/#\", direction = \"out\" }}]\n"
            ),
            "`password_file`: cannot read /nonexistent/bridge.secret",
        ),
        (
            format!(
                "{GOOD}password_file = \"/etc/hostname\"\n\
                 topics = [{{ pattern = \"gate/#\", direction = \"out\" }}]\n"
            ),
            "`password_file`: needs `username`",
        ),
        (
            format!(
                "{GOOD}tls = {{ ca_file = \"/nonexistent/ca.pem\" }}\n\
                 topics = [{{ pattern = \"gate/#\", direction = \"out\" }}]\n"
            ),
            "`tls`: cannot read /nonexistent/ca.pem",
        ),
        (
            "address = \"central.example\"\ntopics = [{ pattern = \"a\", direction = \"in\" }]\n"
                .to_string(),
            "`address`: `central.example` is not host:port",
        ),
        (
            format!("{GOOD}protocol = \"4\"\ntopics = []\n"),
            "`protocol`: unknown variant `4`",
        ),
        (
            format!("{GOOD}topics = []\n"),
            "`topics`: a bridge needs at least one topic",
        ),
    ];
    for (body, expected) in cases {
        let error = error_of(&body);
        assert!(
            error.starts_with("invalid bridge `central`: ") && error.contains(expected),
            "for\n{body}\ngot: {error}\nwanted: {expected}"
        );
    }
    // Two bridges of one name.
    let twice = format!(
        "[[bridge]]\nname = \"central\"\n{GOOD}topics = [{{ pattern = \"a\", direction = \"in\" }}]\n"
    );
    let error = Config::from_toml(&twice.repeat(2)).expect_err("duplicate names");
    assert!(
        error
            .to_string()
            .contains("`name`: two bridges have this name"),
        "{error}"
    );
}

#[test]
fn the_binary_refuses_to_start_with_a_bad_bridge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("site.toml");
    std::fs::write(
        &config,
        format!("[[bridge]]\nname = \"central\"\n{GOOD}topics = [{{ pattern = \"gate/#\", direction = \"out\", local_prefix = \"+/\" }}]\n"),
    )
    .expect("write");
    let output = std::process::Command::new(BIN)
        .args(["--port", "0", "--http-port", "0", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("invalid bridge `central`: `topics[0].local_prefix`"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// The log of a broker process: every line read so far is kept, so a wait can look back.
struct Log {
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Log {
    /// Waits until `count` lines containing every one of `needles` have been logged in all;
    /// returns the last of them.
    fn wait_for(&mut self, needles: &[&str], count: usize) -> String {
        let matches = |line: &String| needles.iter().all(|n| line.contains(n));
        let deadline = std::time::Instant::now() + common::WAIT;
        loop {
            let found: Vec<&String> = self.seen.iter().filter(|l| matches(l)).collect();
            if found.len() >= count {
                return found[count - 1].clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no {count} log lines with {needles:?}; log:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// A broker process killed when the test ends.
struct Site(Child);

impl Site {
    fn hang_up(&self) {
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGHUP) };
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bridge_table(name: &str, central: std::net::SocketAddr, secret: &Path, pattern: &str) -> String {
    format!(
        "[[bridge]]\nname = \"{name}\"\naddress = \"{central}\"\nclient_id = \"site-{name}\"\n\
         username = \"site\"\npassword_file = {:?}\nreconnect_initial = \"50ms\"\n\
         reconnect_max = \"200ms\"\ntopics = [{{ pattern = \"{pattern}\", direction = \"out\", qos = 1 }}]\n",
        secret.display().to_string()
    )
}

#[tokio::test]
async fn refused_credentials_are_retried_and_sighup_reloads_the_bridges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwords = dir.path().join("passwords");
    let lines = [
        switchboard::auth::hash_line("site", b"site-pw", 1000).expect("hash"),
        switchboard::auth::hash_line("app", b"app-pw", 1000).expect("hash"),
    ];
    std::fs::write(&passwords, lines.join("\n") + "\n").expect("write");
    let (central, mut hooks) = broker_with_hooks(|c| c.auth.password_file = Some(passwords));
    let central_addr = central.local_addr();

    let secret = dir.path().join("bridge.secret");
    std::fs::write(&secret, "not-the-password\n").expect("write");
    let config = dir.path().join("site.toml");
    std::fs::write(&config, bridge_table("a", central_addr, &secret, "gate/#")).expect("write");
    let config_arg = config.display().to_string();
    let (child, lines) = spawn(&["--port", "0", "--config", &config_arg]);
    let site = Site(child);
    let mut log = Log {
        lines,
        seen: Vec::new(),
    };
    let site_addr = common::child::listening_addr(&log.wait_for(&["switchboard listening on"], 1));
    // Refused, logged, and tried again: not fatal.
    log.wait_for(
        &["the remote broker refused the bridge's CONNECT", "bridge=a"],
        2,
    );
    assert!(central.metrics().snapshot().auth_failures >= 2);

    // The right password, then SIGHUP: the changed bridge restarts and connects.
    std::fs::write(&secret, "site-pw\n").expect("write");
    site.hang_up();
    let reloaded = log.wait_for(&["SIGHUP: bridges reloaded"], 1);
    assert!(reloaded.contains("restarted=[\"a\"]"), "{reloaded}");
    hooks.connected("site-a").await;

    // Bridge `b` instead of `a`: `a` stops, `b` starts.
    std::fs::write(&config, bridge_table("b", central_addr, &secret, "gate/#")).expect("write");
    site.hang_up();
    let reloaded = log.wait_for(&["SIGHUP: bridges reloaded"], 2);
    assert!(
        reloaded.contains("added=[\"b\"]") && reloaded.contains("removed=[\"a\"]"),
        "{reloaded}"
    );
    hooks.disconnected("site-a").await;
    hooks.connected("site-b").await;
    log.wait_for(&["bridge connected", "bridge=b"], 1);

    // An invalid config changes nothing: `b` keeps forwarding.
    std::fs::write(
        &config,
        bridge_table("b", central_addr, &secret, "gate/#/x"),
    )
    .expect("write");
    site.hang_up();
    let refused = log.wait_for(&["SIGHUP: bridges not reloaded"], 1);
    assert!(refused.contains("`topics[0].pattern`"), "{refused}");
    let login = packets::ConnectSpec {
        client_id: "app",
        username: Some("app"),
        password: Some(b"app-pw"),
        ..Default::default()
    };
    let (mut app, code) = Raw::connect_with(central_addr, login).await;
    assert_eq!(code, 0, "CONNACK 0");
    app.subscribe(1, &[("gate/#", 1)], &[1]).await;
    let (mut gate, _) = Raw::handshake(site_addr, "gate-1", true).await;
    gate.send(&packets::publish(
        "gate/1/state",
        b"closed",
        1,
        1,
        false,
        false,
    ))
    .await;
    assert_eq!(gate.expect().await.byte1, 0x40);
    let got = packets::parse_publish(&app.expect().await);
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice()),
        ("gate/1/state", &b"closed"[..])
    );
    drop(site);
}
