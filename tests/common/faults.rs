//! A misbehaving disk under a running broker, made so by strace's fault injection, and what the
//! broker's HTTP server then says (`/metrics`, readiness).

use std::process::{Command, Stdio};
use std::time::Duration;

/// Attaches strace to the running broker `pid` (all its threads) with this fault injection;
/// returns once every thread is traced. Killing strace detaches it.
pub fn inject(pid: u32, syscall: &str, fault: &str) -> std::process::Child {
    let strace = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-p", &pid.to_string()])
        .args(["-e", &format!("trace={syscall}")])
        .args(["-e", &format!("inject={syscall}:{fault}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace runs");
    let traced = || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the broker's threads");
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("status")).is_ok_and(|status| {
                status
                    .lines()
                    .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
            })
        })
    };
    // Attaching takes strace a moment per thread; nothing else says when it is done.
    let deadline = std::time::Instant::now() + super::WAIT;
    while !traced() {
        assert!(
            std::time::Instant::now() < deadline,
            "strace did not attach"
        );
        std::thread::yield_now();
    }
    strace
}

/// Stops `strace`, which detaches it from the broker.
pub fn stop_tracing(mut strace: std::process::Child) {
    let _ = strace.kill();
    let _ = strace.wait();
}

/// The value of the unlabelled sample `name` on the `/metrics` of the broker whose HTTP server
/// is at `http` (the classic text format).
pub async fn sample(http: std::net::SocketAddr, name: &str) -> String {
    let metrics = super::http::get(http, "/metrics", None).await;
    let prefix = format!("{name} ");
    metrics
        .body
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .map(|value| value.trim().to_string())
        .unwrap_or_else(|| panic!("no sample {name} in {}", metrics.body))
}

/// Asserts that `/api/v1/health/ready` of the broker whose HTTP server is at `http` answers
/// `status`, saying `says`.
pub async fn assert_ready(http: std::net::SocketAddr, status: u16, says: &str) {
    let ready = super::http::get(http, "/api/v1/health/ready", None).await;
    assert_eq!(ready.status, status, "{}", ready.body);
    assert!(ready.body.contains(says), "{}", ready.body);
}

/// Publishes QoS 1 `payload` to `topic` with packet id `pid` and returns once its PUBACK came
/// (waiting up to 30 s, longer than any sync here).
pub async fn publish_until_acked(
    publisher: &mut super::Raw,
    topic: &str,
    payload: &[u8],
    pid: u16,
) {
    publisher
        .send(&super::packets::publish(
            topic, payload, 1, pid, false, false,
        ))
        .await;
    let frame = publisher
        .recv_within(Duration::from_secs(30))
        .await
        .expect("PUBACK, not a closed connection");
    assert_eq!((frame.packet_type(), frame.pid()), (4, pid), "{frame:?}");
}
