//! A bridge with `[persistence]` on: what the site broker acknowledged to a publisher while the
//! remote was down survives `kill -9` of the site broker, and reaches the remote in order once
//! both are back.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::mpsc::Receiver;

use common::bridge::publish_counting;
use common::child::{listening_addr, spawn, wait_line};
use common::durable::kill_9;
use common::mosquitto::Mosquitto;
use common::{packets, Raw};

/// The site broker binary with its state in `dir` and a bridge of `gate/#` out to `remote`.
fn start_site(dir: &Path, remote: SocketAddr) -> (Child, Receiver<String>, SocketAddr) {
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "[persistence]\ndir = {:?}\nfsync = \"never\"\n\n\
             [[bridge]]\nname = \"central\"\naddress = \"{remote}\"\nclient_id = \"site-1AB\"\n\
             reconnect_initial = \"50ms\"\nreconnect_max = \"200ms\"\n\
             topics = [{{ pattern = \"gate/#\", direction = \"out\", qos = 1 }}]\n",
            dir.display().to_string()
        ),
    )
    .expect("config written");
    let config = config.display().to_string();
    let (child, logs) = spawn(&["--port", "0", "--config", &config]);
    let addr = listening_addr(&wait_line(&logs, "switchboard listening on"));
    (child, logs, addr)
}

#[tokio::test]
async fn what_the_site_acknowledged_while_the_remote_was_down_survives_kill_9() {
    if !common::mosquitto_broker_available() {
        return;
    }
    // Mosquitto saves its sessions when stopped: the subscriber's persists across its restart.
    let mut central = Mosquitto::with_offline_subscriber("gate/#").await;
    central.stop();

    let state = tempfile::tempdir().expect("tempdir");
    let dir = state.path().join("site");
    let (site, _logs, addr) = start_site(&dir, central.addr);
    let site = Reaped(Some(site));
    let (mut publisher, _) = Raw::handshake(addr, "gate-1", true).await;
    const COUNT: u16 = 200;
    publish_counting(&mut publisher, "gate/1/event", COUNT).await;
    // Killed the moment the last PUBACK came: some messages are in the bridge's queue file,
    // the latest may still wait in the bridge's local session in the store.
    site.kill_9();

    let (site, logs, _) = start_site(&dir, central.addr);
    let site = Reaped(Some(site));
    central.resume();
    wait_line(&logs, "bridge connected");
    let (mut remote_sub, present) = Raw::handshake(central.addr, "central-sub", false).await;
    assert!(present, "Mosquitto kept the subscriber's session");
    let mut first_seen: Vec<u16> = Vec::new();
    let mut received = 0usize;
    while first_seen.len() < usize::from(COUNT) {
        let Ok(Some(frame)) =
            tokio::time::timeout(std::time::Duration::from_secs(4), remote_sub.recv()).await
        else {
            let missing: Vec<u16> = (0..COUNT).filter(|n| !first_seen.contains(n)).collect();
            panic!(
                "{} of {COUNT} arrived ({received} deliveries); missing {missing:?}",
                first_seen.len()
            );
        };
        if frame.packet_type() != 3 {
            continue;
        }
        let publish = packets::parse_publish(&frame);
        remote_sub.send(&packets::ack(0x40, publish.pid)).await;
        received += 1;
        let n: u16 = String::from_utf8(publish.payload)
            .expect("utf-8")
            .parse()
            .expect("a number");
        if !first_seen.contains(&n) {
            first_seen.push(n);
        }
    }
    // QoS 1 allows a message twice (one the kill caught between the two stores); none is lost,
    // and they come in the order they were published.
    assert_eq!(first_seen, (0..COUNT).collect::<Vec<_>>());
    eprintln!("{received} deliveries for {COUNT} messages");
    site.kill_9();
}

/// A broker process that is killed when the test ends, passed or not.
struct Reaped(Option<Child>);

impl Reaped {
    /// Stops it gracefully (SIGTERM) and waits for it to exit.
    fn terminate(mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    fn kill_9(mut self) {
        if let Some(child) = self.0.take() {
            kill_9(child);
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            kill_9(child);
        }
    }
}

/// Starts the binary with this config and state; returns it with its HTTP address.
fn start_with(config: &str, path: &Path) -> (Reaped, SocketAddr) {
    std::fs::write(path, config).expect("config written");
    let config = path.display().to_string();
    let (child, logs) = spawn(&["--port", "0", "--config", &config]);
    let line = wait_line(&logs, "dashboard, metrics and admin API on http://");
    let http = line
        .rsplit("http://")
        .next()
        .and_then(|rest| rest.trim_end_matches('/').parse().ok())
        .expect("the HTTP address");
    wait_line(&logs, "switchboard listening on");
    (Reaped(Some(child)), http)
}

#[tokio::test]
async fn a_bridge_removed_while_the_broker_was_down_leaves_no_session_behind() {
    let central = common::broker();
    let state = tempfile::tempdir().expect("tempdir");
    let persistence = format!(
        "[persistence]\ndir = {:?}\n",
        state.path().join("site").display().to_string()
    );
    let bridge = format!(
        "[[bridge]]\nname = \"a\"\naddress = \"{}\"\n\
         topics = [{{ pattern = \"gate/#\", direction = \"out\", qos = 1 }}]\n",
        central.local_addr()
    );
    let config = state.path().join("site.toml");
    let (site, http) = start_with(&format!("{persistence}{bridge}"), &config);
    let client = "/api/v1/clients/%24bridge.a";
    common::eventually(|| async {
        let bridges = common::http::get(http, "/api/v1/bridges", None)
            .await
            .json();
        bridges["bridges"][0]["subscribed"] == true
    })
    .await;
    let local = common::http::get(http, client, None).await.json();
    // `null`: the session never expires.
    assert_eq!(
        local["session_expiry"],
        serde_json::Value::Null,
        "with persistence, the bridge's local session is persistent: {local}"
    );
    site.terminate();

    let (_site, http) = start_with(&persistence, &config);
    common::eventually(|| async { common::http::get(http, client, None).await.status == 404 })
        .await;
}
