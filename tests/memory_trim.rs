//! Memory goes back after a spike of connections (issue 13): once the connection count has
//! fallen to half its peak, the broker returns freed heap pages to the OS and logs it.

mod common;

use std::time::{Duration, Instant};

use common::child::{listening_addr, log_number, spawn, wait_line};
use common::Raw;

#[tokio::test]
async fn after_a_spike_of_connections_freed_memory_goes_back_to_the_os() {
    // This process holds the client ends: it needs more than a default 1,024 descriptors.
    switchboard::fd_limit::raise_fd_limit();
    let (mut child, logs) = spawn(&["--port", "0"]);
    let addr = listening_addr(&wait_line(&logs, "switchboard listening on"));
    let mut clients = Vec::new();
    for i in 0..1500 {
        let (raw, _) = Raw::handshake(addr, &format!("spike-{i}"), true).await;
        clients.push(raw);
    }
    drop(clients);
    // The broker looks at its connection count every 5 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match logs.recv_timeout(left) {
            Ok(line) if line.contains("returned freed memory") => break line,
            Ok(_) => continue,
            Err(_) => panic!("no memory trim logged after the connections closed"),
        }
    };
    let (before, after) = (
        log_number(&line, "rss_before"),
        log_number(&line, "rss_after"),
    );
    assert!(after < before, "RSS {before} -> {after}");
    child.kill().expect("kill");
    child.wait().expect("reaped");
}
