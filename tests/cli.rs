//! The `switchboard` binary: flags, config errors, lifecycle log lines, clean shutdown on SIGTERM.

mod common;

use std::process::{Child, Command, Stdio};

use common::packets;

use common::child::{listening_addr, spawn, wait_line, BIN};

/// Waits for the broker's exit itself (on a blocking thread), bounded by the usual timeout, and
/// asserts it succeeded.
async fn assert_clean_exit(mut child: Child) {
    let exit = tokio::time::timeout(
        common::WAIT,
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("broker did not stop on SIGTERM")
    .expect("wait task")
    .expect("wait");
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn binary_logs_lifecycle_events_and_stops_on_sigterm() {
    let (child, logs) = spawn(&["--port", "0"]);
    let listening = wait_line(&logs, "switchboard listening on");
    let addr = listening_addr(&listening);
    let mut raw = common::Raw::connect(addr).await;
    raw.send(&packets::connect("1AB.ENTER.DETRD", true, 60))
        .await;
    raw.expect().await;
    let line = wait_line(&logs, "client connected");
    assert!(
        line.contains("1AB.ENTER.DETRD") && line.contains("MQTT 3.1.1"),
        "{line}"
    );
    raw.subscribe(1, &[("detrd/status/request/1AB.ENTER.DETRD", 1)], &[1])
        .await;
    assert!(wait_line(&logs, "client subscribed").contains("detrd/status/request/1AB.ENTER.DETRD"));
    raw.send(&packets::unsubscribe(
        2,
        &["detrd/status/request/1AB.ENTER.DETRD"],
    ))
    .await;
    raw.expect().await;
    wait_line(&logs, "client unsubscribed");
    raw.send(&[0xE0, 0x00]).await;
    assert!(wait_line(&logs, "client disconnected").contains("reason=clean"));
    // [MQTT-3.14.4-1] after DISCONNECT the client closes the connection (a client that does not
    // holds the broker's lingering close, and so its shutdown, for up to LINGER_TIME).
    drop(raw);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_clean_exit(child).await;
}

#[tokio::test]
async fn sigterm_tells_mqtt5_clients_the_server_is_shutting_down() {
    // Section 4.13.2: DISCONNECT 0x8B (Server shutting down) before the connection closes; a
    // 3.1.1 client is simply closed.
    let (child, logs) = spawn(&["--port", "0"]);
    let addr = listening_addr(&wait_line(&logs, "switchboard listening on"));
    let mut v5 = common::Raw::handshake5(addr, "v5-client").await;
    let (mut v311, _) = common::Raw::handshake(addr, "v311-client", true).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let frame = v5.expect().await;
    assert_eq!(common::v5::disconnect_reason(&frame), 0x8B);
    // A client still writing meanwhile gets an orderly end of stream, not a reset (the
    // lingering close covers shutdown too).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    v5.stream
        .write_all(&[0xC0, 0x00])
        .await
        .expect("write after DISCONNECT");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(common::WAIT, v5.stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(end, Ok(Ok(0))),
        "orderly end of stream: {end:?} {rest:?}"
    );
    v5.stream
        .write_all(&[0xC0, 0x00])
        .await
        .expect("still no reset");
    v311.expect_closed().await;
    drop((v5, v311));
    assert_clean_exit(child).await;
}

#[test]
fn unknown_config_key_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("switchboard.toml");
    std::fs::write(
        &path,
        "[listener]\nport = 0\n\n[limits]\nmax_packet_sise = 10\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["-c", path.to_str().expect("utf-8 path")])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("limits") && text.contains("max_packet_sise"),
        "{text}"
    );
}

#[test]
fn bad_config_value_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, "[sessions]\nqueue_overflow = \"drop_everything\"\n").expect("write");
    let out = Command::new(BIN)
        .args(["--config", path.to_str().expect("utf-8 path")])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("sessions.queue_overflow"), "{text}");
}

#[test]
fn config_file_settings_are_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, "[listener]\nport = 0\nworkers = 1\n").expect("write");
    let (mut child, logs) = spawn(&["-c", path.to_str().expect("utf-8 path"), "-v"]);
    let line = wait_line(&logs, "switchboard listening on");
    assert!(line.contains("workers=1"), "{line}");
    child.kill().expect("kill");
    let _ = child.wait();
}

#[tokio::test]
async fn sighup_reloads_passwords_and_acl_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwords = dir.path().join("passwords");
    let acl = dir.path().join("acl");
    let config = dir.path().join("switchboard.toml");
    let add_user = |user: &str, password: &str| {
        let mut child = Command::new(BIN)
            .args(["passwd", "--iterations", "1000"])
            .arg(&passwords)
            .arg(user)
            .stdin(Stdio::piped())
            .spawn()
            .expect("passwd");
        std::io::Write::write_all(
            &mut child.stdin.take().expect("stdin"),
            format!("{password}\n").as_bytes(),
        )
        .expect("write");
        assert!(child.wait().expect("exit").success());
    };
    add_user("gate", "gate-pw");
    std::fs::write(&acl, "user gate\ntopic read detrd/command/gate\n").expect("acl");
    std::fs::write(
        &config,
        format!(
            "[listener]\nport = 0\n[auth]\npassword_file = {:?}\nacl_file = {:?}\n",
            passwords.display().to_string(),
            acl.display().to_string()
        ),
    )
    .expect("config");
    let (mut child, logs) = spawn(&["-c", config.to_str().expect("utf-8")]);
    let listening = wait_line(&logs, "switchboard listening on");
    let addr = listening_addr(&listening);
    let login = |user: &'static str, password: &'static [u8]| async move {
        let mut raw = common::Raw::connect(addr).await;
        raw.send(
            &common::packets::ConnectSpec {
                client_id: user,
                username: Some(user),
                password: Some(password),
                ..Default::default()
            }
            .encode(),
        )
        .await;
        let code = raw.expect().await.body[1];
        (raw, code)
    };
    let (mut gate, code) = login("gate", b"gate-pw").await;
    assert_eq!(code, 0);
    gate.subscribe(1, &[("detrd/state/gate", 0)], &[0x80]).await;
    gate.subscribe(2, &[("detrd/command/gate", 0)], &[0]).await;
    assert_eq!(login("radar", b"radar-pw").await.1, 4, "not a user yet");

    add_user("radar", "radar-pw");
    std::fs::write(
        &acl,
        "user gate\ntopic read detrd/state/gate\nuser radar\ntopic write detrd/#\n",
    )
    .expect("acl");
    common::child::sighup(&child);
    wait_line(&logs, "password and ACL files reloaded");
    // The same connection, still open, now gets the new rules; the new user gets in.
    gate.subscribe(3, &[("detrd/state/gate", 0)], &[0]).await;
    let (mut radar, code) = login("radar", b"radar-pw").await;
    assert_eq!(code, 0);
    // The gate may no longer read the commands it subscribed to before the reload.
    for topic in ["detrd/command/gate", "detrd/state/gate"] {
        radar
            .send(&common::packets::publish(topic, b"x", 0, 0, false, false))
            .await;
    }
    radar.sync().await;
    let got: Vec<_> = gate
        .sync()
        .await
        .iter()
        .map(|f| common::packets::parse_publish(f).topic)
        .collect();
    assert_eq!(got, vec!["detrd/state/gate".to_string()]);
    child.kill().expect("kill");
    let _ = child.wait();
}

/// Runs the binary with a configuration it refuses, so that it logs one error line and exits.
fn bad_config() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[limits]\nmax_packet_size = 0\n").expect("write");
    let path = path.to_str().expect("utf-8 path").to_string();
    (dir, path)
}

#[test]
fn log_lines_have_no_colour_codes_in_a_pipe_or_a_file() {
    // `switchboard 2> broker.log`, systemd's journal: plain text.
    let (_dir, path) = bad_config();
    let out = Command::new(BIN)
        .args(["-c", &path])
        .env_remove("NO_COLOR")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ERROR"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes in {stderr:?}");
}

#[test]
fn log_lines_are_coloured_on_a_terminal_unless_no_color_is_set() {
    // util-linux's `script` gives the binary a pseudo-terminal.
    if Command::new("script").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "util-linux's script must be there under CI"
        );
        eprintln!("SKIPPED: script (util-linux) not found");
        return;
    }
    let (_dir, path) = bad_config();
    let on_terminal = |no_color: &str| {
        let out = Command::new("script")
            .args(["-qec", &format!("{BIN} -c {path}"), "/dev/null"])
            .env("NO_COLOR", no_color)
            .output()
            .expect("script runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_terminal("");
    assert!(coloured.contains("ERROR"), "{coloured}");
    assert!(
        coloured.contains("\u{1b}["),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = on_terminal("1");
    assert!(plain.contains("ERROR"), "{plain}");
    assert!(!plain.contains('\u{1b}'), "NO_COLOR ignored: {plain:?}");
}

/// Runs `switchboard check FILE`; its success and its output.
fn run_check(file: &std::path::Path) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("check")
        .arg(file)
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text.into_owned())
}

#[test]
fn check_says_whether_a_config_would_start_without_binding_its_ports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwords = dir.path().join("passwords");
    let line = switchboard::auth::hash_line("gate", b"gate-pw", 1000).expect("hash");
    std::fs::write(&passwords, format!("{line}\n")).expect("passwords");
    // The port is taken, as by the running broker the check is made beside: not bound.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let config = dir.path().join("switchboard.toml");
    let write = |auth: &str| {
        let text = format!("[listener]\nport = {port}\n[auth]\n{auth}\n");
        std::fs::write(&config, text).expect("config");
    };
    write(&format!(
        "password_file = {:?}",
        passwords.display().to_string()
    ));
    let (ok, text) = run_check(&config);
    assert!(ok, "{text}");
    assert!(text.contains("configuration OK"), "{text}");

    // A file the config names is missing: the error names it, and the exit says so.
    let acl = dir.path().join("missing-acl");
    write(&format!("acl_file = {:?}", acl.display().to_string()));
    let (ok, text) = run_check(&config);
    assert!(!ok, "{text}");
    assert!(text.contains("missing-acl"), "{text}");

    // A public bind without a password file is refused as at start, naming the key.
    let public = "[listener]\nbind = \"0.0.0.0\"\nport = 0\n";
    std::fs::write(&config, public).expect("config");
    let (ok, text) = run_check(&config);
    assert!(!ok, "{text}");
    assert!(text.contains("auth.allow_anonymous"), "{text}");
    // Unless every client there must bring a certificate name its balancer verified.
    let vouched = format!("{public}proxy_protocol = true\nuse_identity_as_username = true\n");
    std::fs::write(&config, vouched).expect("config");
    let (ok, text) = run_check(&config);
    assert!(ok, "{text}");

    // A persistence directory that is a file is refused; one still to be made is not made.
    let check_persistence_dir = |state: &std::path::Path| {
        let text = format!("[persistence]\ndir = {:?}\n", state.display().to_string());
        std::fs::write(&config, text).expect("config");
        run_check(&config)
    };
    let file = dir.path().join("state-file");
    std::fs::write(&file, b"not a directory").expect("file");
    let (ok, text) = check_persistence_dir(&file);
    assert!(!ok, "{text}");
    assert!(text.contains("persistence.dir"), "{text}");
    let to_make = dir.path().join("state");
    let (ok, text) = check_persistence_dir(&to_make);
    assert!(ok, "{text}");
    assert!(!to_make.exists(), "check made {}", to_make.display());

    // A cluster node name that cannot be a NATS token, a URL that is not NATS's, unreadable TLS
    // files, a node timeout too short to tell a busy node from a dead one, and a wait that is
    // not a duration.
    for (cluster, key) in [
        (
            "nats_url = \"nats://127.0.0.1:4222\"\nnode = \"edge.1\"",
            "cluster.node",
        ),
        ("nats_url = \"http://127.0.0.1:4222\"", "cluster.nats_url"),
        (
            "nats_url = \"nats://127.0.0.1:4222\"\ntls = { ca_file = \"/nonexistent/ca.pem\" }",
            "cluster.tls",
        ),
        ("node_timeout = \"10ms\"", "cluster.node_timeout"),
        ("subscribe_wait = \"soon\"", "subscribe_wait"),
    ] {
        std::fs::write(&config, format!("[cluster]\n{cluster}\n")).expect("config");
        let (ok, text) = run_check(&config);
        assert!(!ok, "{text}");
        assert!(text.contains(key), "{text}");
    }
}

/// Runs the binary with `args`, which must stop at start-up; returns all it printed.
async fn failed_start(args: &[&str]) -> String {
    // Stopped if it outlives the timeout (a broker that started after all).
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(common::WAIT, out)
        .await
        .expect("the broker stops at start-up")
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    text.into_owned()
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_startup_error_that_names_its_key() {
    // Another program holds the port (a port taken by the test itself: no fixed port). The
    // broker says which address and which key, and stops without a panic; the HTTP server's
    // port (8080 by default, often taken on a developer's machine) was once followed by a
    // panic of the dashboard feed's timer as the runtime was torn down.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    for (args, key) in [
        (vec!["--port", &port, "--http-port", "0"], "listener.port"),
        (vec!["--port", "0", "--http-port", &port], "http.port"),
    ] {
        let text = failed_start(&args).await;
        assert!(
            text.contains(&format!("cannot listen on 127.0.0.1:{port} ({key})")),
            "{text}"
        );
        assert!(!text.contains("panicked"), "{text}");
    }
}
