//! A reader of the broker's standard error that stops reading (a pipe nobody drains, a log
//! shipper that stalls, a paused terminal) does not stop the broker. Its lines wait for the log's
//! writer thread in a queue of `log.buffer_lines`. The lines past it are dropped and counted in
//! `switchboard_log_lines_dropped_total`, and once standard error is read again a WARN line says
//! how many were lost. Before, every thread that logged waited on the full pipe: the broker
//! stopped answering at its hundredth connection or so, until someone read its log.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::child::{listening_addr, log_number, wait_line, BrokerProcess, BIN};
use common::{packets, Raw};

/// Connections opened and closed while nobody reads the log: two lines each (connected,
/// disconnected) of some 450 bytes with the long client ids below, so the pipe (64 KiB on Linux)
/// and a queue of [`QUEUED_LINES`] are full long before the last.
const CONNECTIONS: usize = 600;

/// `log.buffer_lines` of the broker under test.
const QUEUED_LINES: usize = 64;

/// Starts the binary with `config`, its standard error read line by line into the returned
/// channel until both listening lines have come; from then on nothing reads it until the
/// returned sender is sent `()`.
fn spawn_then_stop_reading(
    config: &str,
) -> (BrokerProcess, mpsc::Receiver<String>, mpsc::Sender<()>) {
    let child = Command::new(BIN)
        .args(["--port", "0", "--http-port", "0", "-c", config])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let mut child = BrokerProcess(child);
    let stderr = child.0.stderr.take().expect("stderr piped");
    let (lines, rx) = mpsc::channel();
    let (resume, resumed) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut markers = 0;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let marker = line.contains("switchboard listening on ")
                || line.contains("dashboard, metrics and admin API on http://");
            let _ = lines.send(line);
            if marker {
                markers += 1;
                if markers == 2 && resumed.recv().is_err() {
                    return;
                }
            }
        }
    });
    (child, rx, resume)
}

/// `switchboard_log_lines_dropped_total` at `http`.
async fn dropped(http: SocketAddr) -> f64 {
    common::metrics::scrape(http, None)
        .await
        .get("switchboard_log_lines_dropped_total{}")
}

#[tokio::test]
async fn a_log_nobody_reads_drops_lines_instead_of_stopping_the_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("switchboard.toml");
    std::fs::write(&config, format!("[log]\nbuffer_lines = {QUEUED_LINES}\n")).expect("config");
    let (_broker, logs, resume) = spawn_then_stop_reading(config.to_str().expect("utf-8"));
    let (mut addr, mut http) = (None, None);
    while addr.is_none() || http.is_none() {
        let line = wait_line(&logs, "on ");
        if line.contains("switchboard listening on ") {
            addr = Some(listening_addr(&line));
        } else if let Some(rest) = line
            .rsplit("http://")
            .next()
            .filter(|_| line.contains("admin API"))
        {
            http = rest.trim_end_matches('/').parse().ok();
        }
    }
    let (addr, http): (SocketAddr, SocketAddr) = (addr.expect("mqtt"), http.expect("http"));
    assert_eq!(dropped(http).await, 0.0, "nothing dropped at start");

    // Nobody reads the log now. Each connection still gets its CONNACK within the usual wait.
    let long = "x".repeat(200);
    for i in 0..CONNECTIONS {
        let (mut device, _) = Raw::handshake(addr, &format!("device-{i}-{long}"), true).await;
        device.send(&[0xE0, 0x00]).await;
        device.expect_closed().await;
    }
    // And messages flow: a QoS 1 round trip.
    let (mut app, _) = Raw::handshake(addr, "app", true).await;
    app.subscribe(1, &[("detrd/status/response/1AB", 1)], &[1])
        .await;
    let (mut gate, _) = Raw::handshake(addr, "gate-1AB", true).await;
    gate.publish_acked("detrd/status/response/1AB", b"closed", 7, false)
        .await;
    let answer = packets::parse_publish(&app.expect().await);
    assert_eq!(
        (answer.topic.as_str(), answer.payload.as_slice()),
        ("detrd/status/response/1AB", &b"closed"[..])
    );
    let lost = dropped(http).await;
    assert!(
        lost > 0.0,
        "lines past the queue are counted as dropped: {lost}"
    );

    // Read again: the lines queued come out, then the warnings about the lines lost. One may
    // have found room in the queue before, and a warning dropped is said again by the next:
    // together the warnings written count every line lost, up to one at least as late as the
    // count above.
    resume.send(()).expect("reader waiting");
    let mut said = 0;
    loop {
        let warning = wait_line(&logs, "log lines dropped");
        assert!(warning.contains("WARN"), "{warning}");
        said += log_number(&warning, "dropped");
        let total = log_number(&warning, "dropped_total");
        assert_eq!(
            said, total,
            "the warnings written count every line dropped: {warning}"
        );
        if total as f64 >= lost {
            break;
        }
    }
}
