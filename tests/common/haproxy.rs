//! Debian's HAProxy in TCP mode in a child process, in front of a broker: each frontend on a free
//! port of 127.0.0.2 passes its connections to one of the broker's listeners from 127.0.0.3,
//! with a PROXY protocol header (`send-proxy` or `send-proxy-v2`) naming the client.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// Where HAProxy connects from: an address no test client uses, so that a broker that shows it
/// did not take the header's.
pub const PROXY_SOURCE: [u8; 4] = [127, 0, 0, 3];

/// One frontend: the broker listener it forwards to and the header it sends.
pub struct Frontend {
    /// The broker's listener.
    pub to: SocketAddr,
    /// `send-proxy` (version 1), `send-proxy-v2`, or `send-proxy-v2-ssl-cn` (with the client
    /// certificate's Common Name, where the frontend terminates TLS).
    pub header: &'static str,
    /// More of the frontend's `bind` line: empty, or `ssl crt ... ca-file ... verify ...` to
    /// terminate TLS there.
    pub bind: String,
}

impl Frontend {
    /// A frontend passing TCP through to `to` with `header`.
    pub fn tcp(to: SocketAddr, header: &'static str) -> Frontend {
        Frontend {
            to,
            header,
            bind: String::new(),
        }
    }
}

/// A running HAProxy; killed on drop.
pub struct HaProxy {
    child: Child,
    /// The address of each frontend, in the order given.
    pub fronts: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    /// Starts HAProxy with these frontends; returns once the first one passes an MQTT CONNECT
    /// through to the broker (HAProxy binds all of them before it serves any). The first must
    /// lead to a plain MQTT listener.
    pub fn start(frontends: &[Frontend]) -> HaProxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("haproxy.cfg");
        for _ in 0..5 {
            let fronts: Vec<SocketAddr> = frontends.iter().map(|_| free_port()).collect();
            let mut text = String::from(
                "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
                 timeout client 60s\n  timeout server 60s\n",
            );
            let source = std::net::Ipv4Addr::from(PROXY_SOURCE);
            for (n, (front, frontend)) in fronts.iter().zip(frontends).enumerate() {
                text.push_str(&format!(
                    "listen front{n}\n  bind {front} {}\n  server broker {} {} source {source}\n",
                    frontend.bind, frontend.to, frontend.header
                ));
            }
            std::fs::write(&config, text).expect("write haproxy.cfg");
            let mut child = Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("haproxy starts");
            // An external process, which gives no event: ready when a CONNECT gets through.
            let deadline = std::time::Instant::now() + super::WAIT;
            loop {
                if super::interop::answers_mqtt(fronts[0]) {
                    return HaProxy {
                        child,
                        fronts,
                        _dir: dir,
                    };
                }
                if child.try_wait().expect("haproxy's status").is_some() {
                    break; // It could not bind: a port was taken meanwhile.
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "haproxy did not start"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        panic!("haproxy found no free ports to listen on");
    }
}

/// A port of 127.0.0.2 that was free a moment ago (HAProxy cannot report one it picked).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.2:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
