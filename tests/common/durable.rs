//! A broker process with `[persistence]` on, killed with SIGKILL and started again on the same
//! directory, and a QoS 1 stream cut by the kill.

use std::borrow::BorrowMut;
use std::path::Path;
use std::process::Child;
use std::sync::mpsc::Receiver;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use super::child::BrokerProcess;
use super::child::{listening_addr, log_field, log_number, spawn_with_log, wait_line};
use super::{packets, Raw};

/// Starts the broker binary on a free port with its state in `dir` and the `fsync` policy;
/// returns it once it listens, with its log lines.
pub fn start_broker(
    dir: &Path,
    fsync: &str,
) -> (BrokerProcess, Receiver<String>, std::net::SocketAddr) {
    start_broker_logging(dir, fsync, "info")
}

/// [`start_broker`] with `RUST_LOG` set to `log`.
pub fn start_broker_logging(
    dir: &Path,
    fsync: &str,
    log: &str,
) -> (BrokerProcess, Receiver<String>, std::net::SocketAddr) {
    start_broker_with(dir, fsync, log, "")
}

/// [`start_broker`] with the writer's syncs in the log (`switchboard::persistence=debug`), each
/// line out before the broker acts on the sync (`log.buffer_lines = 0`: with the default queue,
/// lines still queued at a SIGKILL are lost), for [`cut_log_at_last_sync`].
pub fn start_broker_reporting_syncs(
    dir: &Path,
    fsync: &str,
) -> (BrokerProcess, Receiver<String>, std::net::SocketAddr) {
    start_broker_with(
        dir,
        fsync,
        "info,switchboard::persistence=debug",
        "\n[log]\nbuffer_lines = 0\n",
    )
}

/// [`start_broker_logging`] with `more` appended to the `[persistence]` table.
pub fn start_broker_with(
    dir: &Path,
    fsync: &str,
    log: &str,
    more: &str,
) -> (BrokerProcess, Receiver<String>, std::net::SocketAddr) {
    start_broker_on(dir, fsync, log, more, 0)
}

/// [`start_broker_with`] on `port` (0: a free one): a broker started again where its clients
/// reconnect on their own, on the port the first one was given.
pub fn start_broker_on(
    dir: &Path,
    fsync: &str,
    log: &str,
    more: &str,
    port: u16,
) -> (BrokerProcess, Receiver<String>, std::net::SocketAddr) {
    let (child, logs, addr, _http) = start_broker_and_http(dir, fsync, log, more, port);
    (child, logs, addr)
}

/// [`start_broker_on`], also returning the address of its HTTP server (`/metrics`), which
/// start-up logs between what it recovered and its listener.
pub fn start_broker_and_http(
    dir: &Path,
    fsync: &str,
    log: &str,
    more: &str,
    port: u16,
) -> (
    BrokerProcess,
    Receiver<String>,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let config = write_config(dir, fsync, more);
    let port = port.to_string();
    let (child, logs) = spawn_with_log(&["--port", &port, "--config", &config], log);
    let child = BrokerProcess(child);
    // Start-up logs its progress: reading, then what was recovered, then the HTTP server,
    // then listening.
    wait_line(&logs, "reading persisted state");
    wait_line(&logs, "persisted state recovered");
    let http = wait_line(&logs, "dashboard, metrics and admin API on http://");
    let http = http
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP address in {http:?}"));
    let addr = listening_addr(&wait_line(&logs, "switchboard listening on"));
    (child, logs, addr, http)
}

/// Writes a config file beside `dir` that keeps the broker's state in `dir` with the `fsync`
/// policy (synced every 200 ms with `interval`), `more` appended; returns its path.
pub fn write_config(dir: &Path, fsync: &str, more: &str) -> String {
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "[persistence]\ndir = {:?}\nfsync = \"{fsync}\"\nfsync_interval = \"200ms\"\n{more}\n",
            dir.display().to_string()
        ),
    )
    .expect("config written");
    config.display().to_string()
}

/// Power loss keeps what was synced: cuts the log back to the last offset the writer reported
/// synced, as the page cache would be lost. Reads the log lines of a killed broker started by
/// [`start_broker_reporting_syncs`] to their end.
pub fn cut_log_at_last_sync(logs: Receiver<String>) {
    let last = logs
        .iter()
        .filter(|l| l.contains("persistence log synced"))
        .last()
        .expect("the writer reported syncs");
    let segment = log_field(&last, "segment");
    let offset = log_number(&last, "offset");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(segment)
        .expect("the synced segment");
    let written = file.metadata().expect("metadata").len();
    assert!(offset <= written);
    file.set_len(offset).expect("cut");
}

/// Stops the broker with SIGTERM (a graceful shutdown: what it changed is flushed and synced)
/// and reaps it.
pub fn terminate(mut child: impl BorrowMut<Child>) {
    let child = child.borrow_mut();
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().expect("reaped");
}

/// Kills the broker with SIGKILL and reaps it.
pub fn kill_9(mut child: impl BorrowMut<Child>) {
    let child = child.borrow_mut();
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

/// Publishes QoS 1 messages to `topic(n)` (payload: `n` as two bytes, packet id `n + 1`) as
/// fast as the socket takes them, reading PUBACKs meanwhile, and kills the broker with SIGKILL
/// once `kill_after` PUBACKs came. Returns the packet ids whose PUBACK reached the publisher.
pub async fn stream_then_kill(
    addr: std::net::SocketAddr,
    child: BrokerProcess,
    kill_after: usize,
    topic: fn(u16) -> String,
    retain: bool,
) -> Vec<u16> {
    let (raw, _) = Raw::handshake(addr, "stream-writer", true).await;
    let (mut read, mut write) = raw.stream.into_split();
    let writer = tokio::spawn(async move {
        for n in 0..5000u16 {
            let frame = packets::publish(&topic(n), &n.to_be_bytes(), 1, n + 1, retain, false);
            if write.write_all(&frame).await.is_err() {
                return;
            }
        }
        // Dropping the write half would end the connection: hold it until aborted.
        std::future::pending::<()>().await;
        drop(write);
    });
    let mut acked = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut child = Some(child);
    loop {
        let n = match tokio::time::timeout(super::WAIT, read.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => panic!("no PUBACK and no end of stream"),
        };
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 4 {
            assert_eq!(buf[0], 0x40, "PUBACK");
            acked.push(u16::from_be_bytes([buf[2], buf[3]]));
            buf.drain(..4);
        }
        if acked.len() >= kill_after {
            if let Some(child) = child.take() {
                kill_9(child);
            }
        }
    }
    writer.abort();
    if let Some(child) = child.take() {
        kill_9(child);
    }
    acked
}
