//! The live dashboard at `/`: served from the binary with nothing fetched from elsewhere, its
//! event stream (server-sent events), and the page itself in headless Chromium: it shows a
//! connected client, its Kick button disconnects the client, the lifecycle feed shows it.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::http::get;
use common::v5::{self, Props};
use common::{broker_with, browser_available, dashboard_dir, run_browser_script, Raw};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;

#[tokio::test]
async fn the_page_is_served_whole_from_the_binary() {
    let broker = broker_with(|c| c.http.token = Some("secret".into()));
    let http = broker.http_local_addr().expect("http");
    // The page holds no data: it is served without the token, and asks for it.
    let page = get(http, "/", None).await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"].starts_with("text/html"));
    assert!(page.body.contains("<title>Switchboard</title>"));
    for external in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!page.body.contains(external), "no CDN: found {external}");
    }
    assert_eq!(get(http, "/api/v1/events", None).await.status, 401);
}

/// Reads server-sent events from `/api/v1/events` until `pick` returns something.
async fn wait_for_event(
    lines: &mut tokio::io::Lines<AsyncBufReader<TcpStream>>,
    mut pick: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let line = tokio::time::timeout(common::WAIT, lines.next_line())
            .await
            .expect("an event in time")
            .expect("read")
            .expect("stream open");
        if let Some(data) = line.strip_prefix("data: ") {
            let event: serde_json::Value = serde_json::from_str(data).expect("JSON event");
            if pick(&event) {
                return event;
            }
        }
    }
}

async fn open_events(http: SocketAddr) -> tokio::io::Lines<AsyncBufReader<TcpStream>> {
    let mut stream = TcpStream::connect(http).await.expect("connect");
    let request = format!("GET /api/v1/events HTTP/1.1\r\nHost: {http}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut lines = AsyncBufReader::new(stream).lines();
    let status = lines.next_line().await.expect("read").expect("status");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    loop {
        let header = lines.next_line().await.expect("read").expect("header");
        if header.is_empty() {
            return lines;
        }
        if let Some(kind) = header.to_ascii_lowercase().strip_prefix("content-type: ") {
            assert_eq!(kind, "text/event-stream");
        }
    }
}

#[tokio::test]
async fn the_event_stream_carries_lifecycle_events_and_counters() {
    let broker = common::broker();
    let http = broker.http_local_addr().expect("http");
    let mut events = open_events(http).await;
    let stats = wait_for_event(&mut events, |e| e["type"] == "stats").await;
    assert!(stats["connections"].is_u64(), "{stats}");
    assert!(stats["persistence"].is_null(), "in memory: {stats}");
    let (mut gate, _) = Raw::handshake(broker.local_addr(), "gate-1AB", true).await;
    let connected = wait_for_event(&mut events, |e| e["type"] == "connected").await;
    assert_eq!(connected["client_id"], "gate-1AB");
    assert_eq!(connected["protocol"], "MQTT 3.1.1");
    gate.subscribe(1, &[("gate/1AB/cmd", 1)], &[1]).await;
    let subscribed = wait_for_event(&mut events, |e| e["type"] == "subscribed").await;
    assert_eq!(subscribed["filter"], "gate/1AB/cmd");
    gate.send(&common::packets::unsubscribe(2, &["gate/1AB/cmd"]))
        .await;
    gate.expect().await;
    wait_for_event(&mut events, |e| e["type"] == "unsubscribed").await;
    gate.send(&[0xE0, 0x00]).await;
    let gone = wait_for_event(&mut events, |e| e["type"] == "disconnected").await;
    assert_eq!(gone["reason"], "clean");
    // A page opened later gets the recent events first.
    let mut late = open_events(http).await;
    let first = wait_for_event(&mut late, |_| true).await;
    assert_eq!(first["type"], "connected", "{first}");
    let stats = wait_for_event(&mut events, |e| e["type"] == "stats").await;
    assert_eq!(stats["clients"], 0);
    assert_eq!(stats["offline_messages"], 0);
    assert_eq!(stats["online_messages"], 0);
    assert_eq!(stats["online_bytes"], 0);
    // A gate that went away subscribed: what is held for it shows in the next summaries.
    Raw::leave_subscribed(broker.local_addr(), "gate-away", "gate/+/cmd").await;
    let (mut app, _) = Raw::handshake(broker.local_addr(), "app", true).await;
    app.publish_acked("gate/1/cmd", b"open", 1, false).await;
    app.publish_acked("gate/1/cmd", b"close", 2, false).await;
    let held = wait_for_event(&mut events, |e| {
        e["type"] == "stats" && e["offline_messages"] == 2
    })
    .await;
    // The `$SYS` messages are retained (their exact bytes: tests/http_metrics_gauges.rs).
    assert!(held["retained"].as_u64() > Some(0), "{held}");
    assert!(held["retained_bytes"].as_u64() > Some(0), "{held}");
    assert_eq!(held["sessions_offline"], 1);
    assert_eq!(
        held["offline_bytes"],
        2 * "gate/1/cmd".len() + "open".len() + "close".len(),
        "topic and payload of each"
    );
}

#[tokio::test]
async fn with_persistence_the_summaries_carry_the_log_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = broker_with(|c| c.persistence.dir = Some(dir.path().join("state")));
    let http = broker.http_local_addr().expect("http");
    let mut events = open_events(http).await;
    let (mut app, _) = Raw::handshake(broker.local_addr(), "app", true).await;
    // A retained QoS 1 message is kept: acknowledged once it is in the log.
    app.publish_acked("gate/1AB/state", b"closed", 1, true)
        .await;
    let stats = wait_for_event(&mut events, |e| {
        e["type"] == "stats" && e["persistence"]["commits_total"].as_u64() >= Some(1)
    })
    .await;
    let persistence = &stats["persistence"];
    assert_eq!(persistence["fsync"], "interval", "the default: {stats}");
    assert!(
        persistence["log_bytes"].as_u64() > Some(0),
        "the retained message is in the log: {stats}"
    );
    for healthy in ["writes_failing", "syncs_failing", "durability_lost"] {
        assert_eq!(persistence[healthy], false, "{healthy}: {stats}");
    }
}

#[test]
fn in_chromium_the_page_shows_the_persistence_log() {
    if !browser_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = broker_with(|c| {
        c.persistence.dir = Some(dir.path().join("state"));
        c.persistence.fsync = switchboard::config::FsyncPolicy::Always;
    });
    let shown = drive_page(&broker, &["--persistence", "ok"]);
    assert_eq!(shown["fsync"], "always", "{shown}");
    assert_eq!(shown["commits"], "0", "no traffic: {shown}");
    assert!(
        shown["persistence"]
            .as_str()
            .is_some_and(|text| text.contains("Writing and syncing")),
        "{shown}"
    );
    // A broker in memory shows no such section.
    let in_memory = common::broker();
    let shown = drive_page(&in_memory, &["--persistence", "hidden"]);
    assert_eq!(shown["hidden"], true, "{shown}");
}

#[tokio::test]
async fn in_chromium_the_page_shows_a_client_and_its_kick_button_disconnects_it() {
    if !browser_available() {
        return;
    }
    let broker = broker_with(|c| c.http.token = Some("dash-token".into()));
    let http = broker.http_local_addr().expect("http");
    let mut radar = Raw::handshake5(broker.local_addr(), "radar-1AB.ENTER").await;
    radar
        .subscribe5(1, &Props::new(), &[("detrd/status/request/1AB.ENTER", 1)])
        .await;
    let mut driver = Command::new("node")
        .arg(dashboard_dir().join("drive.js"))
        .args([&format!("http://{http}/"), "radar-1AB.ENTER", "dash-token"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let stdout = driver.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a line from drive.js");
        serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    assert_eq!(next(), serde_json::json!({ "shown": "radar-1AB.ENTER" }));
    assert_eq!(next(), serde_json::json!({ "stats": "1" }));
    assert_eq!(next(), serde_json::json!({ "clicked": "kick" }));
    // The client is told why (MQTT 5: 0x98 Administrative action), then closed.
    let disconnect = radar.expect().await;
    assert_eq!(v5::disconnect_reason(&disconnect), 0x98);
    radar.expect_closed().await;
    let feed = next();
    let text = feed["feed"].as_str().unwrap_or_default();
    assert!(
        text.contains("disconnected") && text.contains("radar-1AB.ENTER"),
        "{feed}"
    );
    assert!(driver.wait().expect("node").success());
}

/// Runs `drive.js` on `broker`'s dashboard with `args` and returns its last line, as JSON,
/// asserting it succeeded.
fn drive_page(broker: &switchboard::BackgroundBroker, args: &[&str]) -> serde_json::Value {
    let http = broker.http_local_addr().expect("http");
    let url = format!("http://{http}/");
    run_browser_script(
        "drive.js",
        std::iter::once(url.as_str()).chain(args.iter().copied()),
    )
}

#[test]
fn in_chromium_the_page_shows_a_connected_bridge() {
    if !browser_available() {
        return;
    }
    let central = common::broker();
    let toml = format!(
        "[[bridge]]\nname = \"central\"\naddress = \"{}\"\n\
         topics = [{{ pattern = \"gate/#\", direction = \"both\", qos = 1 }}]\n",
        central.local_addr()
    );
    let bridges = switchboard::Config::from_toml(&toml)
        .expect("config")
        .bridge;
    let site = broker_with(|c| c.bridge = bridges);
    let shown = drive_page(&site, &["--bridge", "central"]);
    let cells = shown["bridge"].as_array().expect("the bridge's cells");
    assert_eq!(cells[0], "central");
    assert_eq!(cells[1], central.local_addr().to_string());
    assert_eq!(cells[2], "connected");
}

#[test]
fn in_chromium_the_page_shows_the_cluster() {
    if !browser_available() || !common::nats_available() {
        return;
    }
    let nats = common::nats::Nats::start();
    let node = |name: &str| {
        broker_with(|c| {
            c.cluster.nats_url = Some(nats.url());
            c.cluster.node = Some(name.to_string());
        })
    };
    let a = node("a");
    let _b = node("b");
    let shown = drive_page(&a, &["--cluster", "a", "b"]);
    assert_eq!(shown["node"][0], "a (this node)");
    assert_eq!(shown["node"][1], nats.url());
    assert_eq!(shown["node"][2], "connected");
    assert_eq!(shown["peer"][0], "b");
}
