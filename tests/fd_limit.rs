//! File-descriptor limits (issue 13): the broker raises its soft `RLIMIT_NOFILE` to the hard
//! limit at start and logs the connection capacity, warns when `limits.max_connections` is above
//! it, and when accept fails for lack of descriptors it backs off and logs, without spinning or
//! dying, and serves again once connections close. The limit is lowered in the child process.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::child::{listening_addr, log_number, spawn_command, wait_line, BIN};
use common::Raw;

/// Starts the broker with RLIMIT_NOFILE lowered to `soft`/`hard` before it runs.
fn broker_with_fd_limit(soft: u64, hard: u64) -> (Child, Receiver<String>) {
    let mut command = Command::new(BIN);
    command
        .args(["--port", "0", "--http-port", "0"])
        .env("RUST_LOG", "info");
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    spawn_command(command)
}

/// CPU time (user + system) the process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let after = stat.rsplit(')').next().expect("stat fields");
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn the_soft_limit_is_raised_to_the_hard_limit_and_the_capacity_logged() {
    let (mut child, logs) = broker_with_fd_limit(256, 512);
    let line = wait_line(&logs, "file-descriptor limit");
    assert_eq!(
        (log_number(&line, "soft_before"), log_number(&line, "soft")),
        (256, 512)
    );
    assert_eq!(log_number(&line, "connection_capacity"), 512 - 64);
    // The default limits.max_connections (100,000) is more than 448 descriptors allow.
    let warning = wait_line(&logs, "limits.max_connections is above");
    assert!(warning.contains("WARN"), "{warning}");
    wait_line(&logs, "switchboard listening on");
    child.kill().expect("kill");
    child.wait().expect("reaped");
}

#[tokio::test]
async fn out_of_descriptors_the_broker_backs_off_logs_and_serves_again() {
    let (mut child, logs) = broker_with_fd_limit(96, 96);
    let addr = listening_addr(&wait_line(&logs, "switchboard listening on"));
    // More connections than descriptors: the kernel completes them, accept fails with EMFILE.
    let mut held = Vec::new();
    for _ in 0..120 {
        let mut raw = Raw::connect(addr).await;
        raw.send(&common::packets::connect("", true, 60)).await;
        held.push(raw);
    }
    let line = wait_line(&logs, "out of file descriptors");
    assert!(
        line.contains("WARN") && line.contains("os error 24"),
        "{line}"
    );
    // Not spinning: while still out of descriptors, the accept loop sleeps between tries.
    let before = cpu_ticks(child.id());
    tokio::time::sleep(Duration::from_millis(500)).await; // a window to measure, not a wait
    let used = cpu_ticks(child.id()) - before;
    assert!(
        used < 20,
        "{used} clock ticks of CPU in 0.5 s while out of descriptors"
    );
    assert!(child.try_wait().expect("status").is_none(), "still running");

    // Connections close: descriptors come back, the waiting ones and a new one are served.
    drop(held);
    wait_line(&logs, "accepting connections again");
    let (_raw, present) = Raw::handshake(addr, "after-the-storm", true).await;
    assert!(!present);
    child.kill().expect("kill");
    child.wait().expect("reaped");
}
