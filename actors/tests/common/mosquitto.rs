//! Debian's Mosquitto as the broker the device actors talk to: the broker a fleet may run
//! before (or beside) Switchboard. In memory, on a free loopback port, killed on drop. Whether
//! it is installed: [`super::interop::mosquitto_broker_available`].

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::interop::{answers_mqtt, mosquitto_binary};

/// A running Mosquitto.
pub struct MosquittoPeer {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl MosquittoPeer {
    /// Starts one with anonymous access and no persistence, and waits until it answers MQTT.
    pub fn start() -> MosquittoPeer {
        let mut peer = MosquittoPeer {
            child: None,
            addr: ([127, 0, 0, 1], 0).into(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        peer.launch(None);
        peer
    }

    /// Kills it (SIGKILL: every connection drops, nothing is saved) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        self.launch(Some(self.addr.port()));
    }

    /// Starts it on `port`, or on a port that was free a moment ago (Mosquitto cannot report
    /// one it picked; if another process takes it first, Mosquitto exits and another is tried).
    fn launch(&mut self, port: Option<u16>) {
        for _ in 0..5 {
            let port = port.unwrap_or_else(super::free_port);
            let config = self.dir.path().join("mosquitto.conf");
            std::fs::write(
                &config,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                     log_dest stderr\nlog_type error\nlog_type warning\n"
                ),
            )
            .expect("write mosquitto.conf");
            let mut child = Command::new(mosquitto_binary())
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("mosquitto starts");
            self.addr = ([127, 0, 0, 1], port).into();
            // An external process gives no readiness event: it is ready once it answers.
            let deadline = Instant::now() + super::WAIT;
            while Instant::now() < deadline {
                if answers_mqtt(self.addr) {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().expect("mosquitto's status").is_some() {
                    break; // The port was taken.
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("mosquitto did not start listening");
    }
}

impl Drop for MosquittoPeer {
    fn drop(&mut self) {
        self.kill();
    }
}
