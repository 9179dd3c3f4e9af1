//! The brokers a script runs against: Switchboard in this process (in memory), Switchboard as a
//! child process with `[persistence]` (restarted gracefully on its directory), and Mosquitto
//! (restarted gracefully on its saved state).

use std::net::SocketAddr;

use super::common::durable::{start_broker_with, BrokerProcess};
use super::common::mosquitto::Mosquitto;
use switchboard::BackgroundBroker;

/// Switchboard's window of QoS 1 and 2 messages in flight to a client: as wide as it goes, so
/// that, like Mosquitto's here, it never fills in a script.
pub const WINDOW: u16 = u16::MAX;

/// The `fsync` policy of Switchboard's process with `[persistence]`: `DIFFERENTIAL_FSYNC` when
/// set (a hunt over `always`, whose settlements change what the acknowledgements wait for),
/// else `interval`, as CI runs it.
fn fsync_policy() -> String {
    std::env::var("DIFFERENTIAL_FSYNC").unwrap_or_else(|_| "interval".to_string())
}

/// One broker, as a script reaches it.
pub enum Server {
    /// Switchboard in this process, without persistence: it cannot restart.
    InProcess(BackgroundBroker),
    /// The `switchboard` binary with its state in `state`, `[persistence]` extended by `more`.
    Process {
        process: Option<BrokerProcess>,
        addr: SocketAddr,
        state: std::path::PathBuf,
        more: String,
        _dir: tempfile::TempDir,
    },
    Mosquitto(Mosquitto),
}

impl Server {
    /// Which broker it is, for a failure's message.
    pub fn name(&self) -> &'static str {
        match self {
            Server::Mosquitto(_) => "Mosquitto",
            _ => "Switchboard",
        }
    }

    /// Switchboard as a child process with its state on disk, `workers` worker threads.
    pub fn switchboard_process(workers: usize) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let more =
            format!("[listener]\nworkers = {workers}\n[sessions]\nmax_inflight = {WINDOW}\n");
        let (process, _logs, addr) = start_broker_with(&state, &fsync_policy(), "info", &more);
        Server::Process {
            process: Some(process),
            addr,
            state,
            more,
            _dir: dir,
        }
    }

    /// Mosquitto, with its state saved when it stops when `persistent`.
    pub fn mosquitto(persistent: bool) -> Server {
        // Without TCP_NODELAY, a PUBLISH and the UNSUBACK after it wait on each other (Nagle
        // and the client's delayed ACK), 40 ms a barrier. Its log would be a line per takeover.
        // No window for QoS 1 and 2 messages in flight (nor in Switchboard's, `WINDOW`): a
        // client that does not acknowledge has every one in flight, to be sent again with DUP,
        // where a window would leave some queued, and Mosquitto's fills by its own count
        // (with MQTT 5, a copy per overlapping subscription).
        Server::Mosquitto(Mosquitto::start(
            "set_tcp_nodelay true\nlog_dest none\nmax_inflight_messages 0\n",
            persistent,
        ))
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Server::InProcess(broker) => broker.local_addr(),
            Server::Process { addr, .. } => *addr,
            Server::Mosquitto(mosquitto) => mosquitto.addr,
        }
    }

    /// Asks it to stop (SIGTERM), without waiting: it closes its connections.
    pub fn stop(&mut self) {
        let pid = match self {
            Server::InProcess(_) => panic!("a broker in this process does not restart"),
            Server::Process { process, .. } => process.as_ref().expect("running").0.id(),
            Server::Mosquitto(mosquitto) => mosquitto.pid(),
        };
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }

    /// Waits for it to have stopped, then starts it again on what it kept.
    pub fn start_again(&mut self) {
        match self {
            Server::InProcess(_) => panic!("a broker in this process does not restart"),
            Server::Process {
                process,
                addr,
                state,
                more,
                ..
            } => {
                if let Some(mut stopped) = process.take() {
                    stopped.0.wait().expect("stopped");
                }
                let (started, _logs, new_addr) =
                    start_broker_with(state, &fsync_policy(), "info", more);
                *process = Some(started);
                *addr = new_addr;
            }
            Server::Mosquitto(mosquitto) => {
                // Signals it again (harmless while it stops) and waits for it to exit.
                mosquitto.stop();
                mosquitto.resume();
            }
        }
    }
}
