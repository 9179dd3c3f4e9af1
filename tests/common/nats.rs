//! Debian's nats-server in a child process on a free loopback port: the transport of a
//! cluster's nodes. Stopped and started again on the same port to test reconnection.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A NATS server; killed on drop.
pub struct Nats {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    args: Vec<String>,
}

impl Nats {
    /// Starts one on a port it picks (`-p -1`), read off its log.
    pub fn start() -> Nats {
        Nats::start_with(&[])
    }

    /// [`Nats::start`] with more command-line arguments (`--tls` ...).
    pub fn start_with(args: &[&str]) -> Nats {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (child, port) = spawn("-1", &args);
        Nats {
            child: Some(child),
            port,
            args,
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it; its clients see the connection end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Publishes `payload` on `subject` as a client of its own (CONNECT, PUB, then a PING whose
    /// PONG says the server took both): what a node would send, forged by a test.
    pub fn publish(&self, subject: &str, payload: &[u8]) {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("NATS accepts");
        let mut frame = format!(
            "CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n",
            payload.len()
        )
        .into_bytes();
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\nPING\r\n");
        stream.write_all(&frame).expect("written");
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while !String::from_utf8_lossy(&seen).contains("PONG") {
            let n = stream.read(&mut buf).expect("NATS answers");
            assert!(
                n > 0,
                "NATS closed the connection: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    }

    /// Starts it again on the same port.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let (child, _) = spawn(&self.port.to_string(), &self.args);
        self.child = Some(child);
    }
}

/// Starts nats-server on `port` and waits for its "listening" line; answers the port.
fn spawn(port: &str, args: &[String]) -> (Child, u16) {
    let mut child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", port])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let needle = "Listening for client connections on ";
    let port = loop {
        let line = lines
            .next()
            .expect("nats-server says where it listens")
            .expect("readable log");
        if let Some(at) = line.find(needle) {
            let addr = &line[at + needle.len()..];
            let port = addr.rsplit(':').next().and_then(|p| p.trim().parse().ok());
            break port.expect("a port in the listening line");
        }
    };
    // The rest of the log is not read; keep the pipe drained so the server never blocks.
    std::thread::spawn(move || lines.for_each(drop));
    (child, port)
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP proxy in front of a NATS server that a test can cut: one node's connection to NATS
/// breaks (and new ones are refused) while the other nodes keep theirs.
pub struct CutProxy {
    /// Its port.
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Forwards 127.0.0.1:<its port> to `nats`.
    pub async fn start(nats: &Nats) -> CutProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let target = nats.port;
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (accept_cut, accept_links) = (cut.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if accept_cut.load(Ordering::SeqCst) {
                    continue; // dropped: refused while cut
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accept_links.lock().expect("links").push(link);
            }
        });
        CutProxy {
            port,
            cut,
            links,
            accept,
        }
    }

    /// `nats://127.0.0.1:<its port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Breaks every connection through it, and refuses new ones until [`CutProxy::heal`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
