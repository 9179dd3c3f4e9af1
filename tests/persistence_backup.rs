//! Backing up a running broker and restoring the backup: `curl` fetches
//! `GET /api/v1/persistence/backup` from a broker serving traffic, `switchboard restore`
//! installs it in a new directory, and a broker started there has what was acknowledged
//! before the backup (retained messages, a persistent session with its subscription and
//! queued QoS 1 messages), and nothing published after it. Damaged, cut and misplaced backups
//! are refused with the offset or the reason.

mod common;

use std::path::Path;
use std::process::Command;

use common::http::get;
use common::{broker_with, packets, Raw};
use switchboard::persistence::{Record, LOG_FORMAT};

/// A broker with its state in `dir` and its HTTP server on a free port.
fn persistent_broker(dir: &Path) -> switchboard::BackgroundBroker {
    let dir = dir.to_path_buf();
    broker_with(move |c| c.persistence.dir = Some(dir))
}

/// A broker with its state in `dir`, its HTTP address, and a client `app` connected to it.
async fn serving(dir: &Path) -> (switchboard::BackgroundBroker, std::net::SocketAddr, Raw) {
    let broker = persistent_broker(dir);
    let http = broker.http_local_addr().expect("http");
    let (app, _) = Raw::handshake(broker.local_addr(), "app", true).await;
    (broker, http, app)
}

/// `curl -fsS -o <to> http://<http>/api/v1/persistence/backup`, as docs/persistence.md says.
fn curl_backup(http: std::net::SocketAddr, to: &Path) -> std::process::Output {
    Command::new("curl")
        .args(["-fsS", "-o"])
        .arg(to)
        .arg(format!("http://{http}/api/v1/persistence/backup"))
        .output()
        .expect("curl runs (.ci/run installs it)")
}

/// `switchboard restore <backup> <dir>`: its exit status and log.
fn restore(backup: &Path, dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("restore")
        .arg(backup)
        .arg(dir)
        .output()
        .expect("switchboard restore runs");
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), log)
}

/// Publishes retained at QoS 1 and waits for the PUBACK (so it is on disk).
async fn retain(publisher: &mut Raw, topic: &str, payload: &[u8], pid: u16) {
    publisher
        .send(&packets::publish(topic, payload, 1, pid, true, false))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x40, "PUBACK");
}

#[tokio::test]
async fn a_backup_of_a_running_broker_restores_what_was_acknowledged_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (running, http, mut app) = serving(&dir.path().join("running")).await;
    retain(&mut app, "gate/1AB/state", b"closed", 1).await;
    retain(&mut app, "gate/2CD/state", b"open", 2).await;
    // A radar's persistent session, offline, with three status requests queued for it.
    Raw::leave_subscribed(
        running.local_addr(),
        "radar-1AB",
        "detrd/status/request/1AB",
    )
    .await;
    for pid in 3..=5 {
        app.send(&packets::publish(
            "detrd/status/request/1AB",
            format!("request {pid}").as_bytes(),
            1,
            pid,
            false,
            false,
        ))
        .await;
        assert_eq!(app.expect().await.byte1, 0x40, "PUBACK");
    }

    let backup = dir.path().join("backup.log");
    let fetched = curl_backup(http, &backup);
    assert!(
        fetched.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    // After the backup: not in it.
    retain(&mut app, "gate/3EF/state", b"closed", 6).await;
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("running"))
        .expect("state dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|name| name.starts_with("backup"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "the served backup is not left behind: {leftovers:?}"
    );

    let restored_dir = dir.path().join("restored");
    let (ok, log) = restore(&backup, &restored_dir);
    assert!(ok, "restore: {log}");
    assert!(log.contains("backup restored"), "{log}");
    let restored = persistent_broker(&restored_dir);
    let addr = restored.local_addr();
    let (mut reader, _) = Raw::handshake(addr, "reader", true).await;
    reader.subscribe(1, &[("gate/#", 1)], &[1]).await;
    let mut retained: Vec<(String, Vec<u8>)> = reader
        .drain_acking()
        .await
        .into_iter()
        .map(|p| (p.topic, p.payload))
        .collect();
    retained.sort();
    assert_eq!(
        retained,
        vec![
            ("gate/1AB/state".to_string(), b"closed".to_vec()),
            ("gate/2CD/state".to_string(), b"open".to_vec()),
        ],
        "the retained messages acknowledged before the backup, and only those"
    );
    // [MQTT-3.2.2-2] the session is resumed: present, subscribed, its queue delivered in order.
    let (mut radar, present) = Raw::handshake(addr, "radar-1AB", false).await;
    assert!(present, "session present after the restore");
    let queued: Vec<Vec<u8>> = radar.drain_payloads().await;
    assert_eq!(
        queued,
        vec![
            b"request 3".to_vec(),
            b"request 4".to_vec(),
            b"request 5".to_vec()
        ]
    );
    drop(running);
}

/// Backups taken one after another while retained messages churn and the log compacts every
/// few hundred milliseconds: the backup thread copies frames out of segments that a compaction
/// would delete, so the writer holds compactions until the copy is done. Every backup must
/// restore whole, with every topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_taken_while_the_log_compacts_are_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("running");
    let running = broker_with(|c| {
        c.persistence.dir = Some(state);
        c.persistence.compact_min_bytes = 1024 * 1024;
    });
    let (addr, http) = (
        running.local_addr(),
        running.http_local_addr().expect("http"),
    );
    const TOPICS: usize = 5000;
    let payload = vec![b'x'; 1000];
    let (mut app, _) = Raw::handshake(addr, "app", true).await;
    for n in 0..TOPICS {
        retain(
            &mut app,
            &format!("load/{n}"),
            &payload,
            (n % 60_000) as u16 + 1,
        )
        .await;
    }
    // Churn: half the topics set again and again (5 MB of live state, compacted at 10 MB of log).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // QoS 0, 100 at a time: tens of megabytes a second, a compaction every few
                // tens of milliseconds.
                let mut burst = Vec::new();
                for _ in 0..100 {
                    // Odd topics only: the even ones stay where the last compaction put them,
                    // so a backup reads from two segments in turn, opening each again and again.
                    let topic = format!("load/{}", (2 * n + 1) % TOPICS);
                    burst.extend(packets::publish(&topic, &payload, 0, 0, true, false));
                    n += 1;
                }
                app.send(&burst).await;
            }
            app.ping().await;
            n
        })
    };
    for round in 0..8 {
        let backup = dir.path().join(format!("backup-{round}.log"));
        let fetched = curl_backup(http, &backup);
        assert!(
            fetched.status.success(),
            "backup {round}: {}",
            String::from_utf8_lossy(&fetched.stderr)
        );
        let target = dir.path().join(format!("restored-{round}"));
        let (ok, log) = restore(&backup, &target);
        assert!(ok, "backup {round} does not restore: {log}");
        // What a start reads back there: every topic, once. (A backup of a live state this
        // large is the log as it stood, records not compacted away yet included: the
        // restore's count of records says nothing of the state.)
        let config = switchboard::config::PersistenceConfig {
            dir: Some(target),
            ..Default::default()
        };
        let recovered = switchboard::persistence::open(&config)
            .expect("reads back")
            .expect("a directory");
        let mut topics: Vec<&str> = recovered.retained.iter().map(|m| &m.topic[..]).collect();
        topics.sort_unstable();
        topics.dedup();
        assert_eq!(
            (recovered.retained.len(), topics.len()),
            (TOPICS, TOPICS),
            "backup {round}: every topic once: {log}"
        );
        assert!(
            recovered.retained.iter().all(|m| m.payload.len() == 1000),
            "backup {round}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let churned = churn.await.expect("churn");
    assert!(churned > TOPICS, "the log churned: {churned} messages");
}

#[tokio::test]
async fn damaged_cut_and_misplaced_backups_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_running, http, mut app) = serving(&dir.path().join("running")).await;
    for (pid, gate) in ["1AB", "2CD", "3EF"].into_iter().enumerate() {
        retain(
            &mut app,
            &format!("gate/{gate}/state"),
            b"closed",
            pid as u16 + 1,
        )
        .await;
    }
    let backup = dir.path().join("backup.log");
    assert!(curl_backup(http, &backup).status.success());
    let whole = std::fs::read(&backup).expect("backup");

    // One flipped byte in the middle: refused, naming the offset; nothing installed.
    let mut flipped = whole.clone();
    let middle = whole.len() / 2;
    flipped[middle] ^= 0x40;
    let flipped_path = dir.path().join("flipped.log");
    std::fs::write(&flipped_path, &flipped).expect("write");
    let target = dir.path().join("target");
    let (ok, log) = restore(&flipped_path, &target);
    assert!(!ok && log.contains("damaged at byte"), "{log}");
    assert!(
        !target.exists(),
        "nothing installed, not even the directory"
    );

    // Cut between two records, just before the end mark: refused as not whole.
    let end_mark = Record::LogFormat(LOG_FORMAT).to_frame().len();
    let cut_path = dir.path().join("cut.log");
    std::fs::write(&cut_path, &whole[..whole.len() - end_mark]).expect("write");
    let (ok, log) = restore(&cut_path, &target);
    assert!(!ok && log.contains("end mark"), "{log}");

    // Into a directory that holds a log: refused.
    let (ok, log) = restore(&backup, &dir.path().join("running"));
    assert!(!ok && log.contains("already holds a log"), "{log}");

    // The whole one restores.
    let (ok, log) = restore(&backup, &target);
    assert!(ok, "{log}");

    // A broker without durable state has nothing to back up: 404 with the reason.
    let in_memory = broker_with(|_| {});
    let answer = get(
        in_memory.http_local_addr().expect("http"),
        "/api/v1/persistence/backup",
        None,
    )
    .await;
    assert_eq!(answer.status, 404);
    let reason = answer.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("persistence is off"), "{reason}");
}
