//! The broker under test: one at `--addr`, or the `switchboard` binary started here.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use crate::args::Args;

/// Where the broker is, and its pid when known.
pub struct Target {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    child: Option<Child>,
}

impl Target {
    /// The broker named by `--addr`, or a `switchboard` started on a free loopback port.
    pub fn resolve(args: &Args) -> Result<Target, String> {
        if let Some(addr) = args.addr {
            return Ok(Target {
                addr,
                pid: args.broker_pid,
                child: None,
            });
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["--port", "0", "--http-port", "0"])
            // Only warnings and the listening line: per-connection log lines would be measured.
            .env("RUST_LOG", "warn,switchboard::broker=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the switchboard binary: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = match lines.next() {
                Some(Ok(line)) => line,
                _ => return Err("switchboard exited before listening".into()),
            };
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("");
                break addr
                    .parse()
                    .map_err(|e| format!("bad address {addr:?}: {e}"))?;
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Ok(Target {
            addr,
            pid: Some(child.id()),
            child: Some(child),
        })
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
