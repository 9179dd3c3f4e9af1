//! Debian's Mosquitto as a peer broker in a child process, on a free loopback port: started,
//! stopped (gracefully, so it saves its state) and started again on the same port (or, if
//! another process took it meanwhile, on another).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// A Mosquitto broker; killed on drop.
pub struct Mosquitto {
    child: Option<Child>,
    /// Its address.
    pub addr: SocketAddr,
    config: std::path::PathBuf,
    /// Its configuration but the listener line.
    settings: String,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts one with this configuration after the listener, anonymous access and logging
    /// lines. With `persistent`, it saves its state in its directory when stopped.
    pub fn start(extra_config: &str, persistent: bool) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("mosquitto.conf");
        // Started as root, Mosquitto drops to its own user: it must be able to write here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let persistence = if persistent {
            format!(
                "persistence true\npersistence_location {}/\nautosave_interval 0\n",
                dir.path().display()
            )
        } else {
            "persistence false\n".to_string()
        };
        let mut mosquitto = Mosquitto {
            child: None,
            addr: ([127, 0, 0, 1], 0).into(),
            config,
            settings: format!(
                "allow_anonymous true\n{persistence}\
                 log_dest stderr\nlog_type error\nlog_type warning\n{extra_config}"
            ),
            dir,
        };
        mosquitto.move_to_a_free_port();
        mosquitto.resume();
        mosquitto
    }

    /// Writes its configuration with a port that was free a moment ago: Mosquitto cannot
    /// report a port it picked, so one is taken and handed over (and another process may take
    /// it in between: [`Mosquitto::resume`] then moves it again).
    fn move_to_a_free_port(&mut self) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        self.addr = ([127, 0, 0, 1], port).into();
        let config = format!("listener {port} 127.0.0.1\n{}", self.settings);
        std::fs::write(&self.config, config).expect("write");
    }

    /// A persistent Mosquitto (see [`Mosquitto::start`]) on which `central-sub` has a persistent
    /// session subscribed to `filter` at QoS 1 and is offline: what matches queues for it.
    pub async fn with_offline_subscriber(filter: &str) -> Mosquitto {
        let central = Mosquitto::start("", true);
        super::Raw::leave_subscribed(central.addr, "central-sub", filter).await;
        central
    }

    /// The directory its configuration (and state) is in.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Starts it (again) and waits until it answers MQTT on its port. If another process took
    /// the port first (Mosquitto then exits), it moves to another one.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        for _ in 0..5 {
            let mut child = Command::new(super::mosquitto_binary())
                .arg("-c")
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("mosquitto starts");
            // Ready when it answers a CONNECT: an external process, which gives no event.
            let deadline = std::time::Instant::now() + super::WAIT;
            loop {
                // What answers must be this Mosquitto: while it restarted, its port was free,
                // and another test's broker may have taken it (then this one exits).
                if super::answers_mqtt(self.addr) && listens_on(child.id(), self.addr.port()) {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().expect("mosquitto's status").is_some() {
                    break; // It could not listen: the port was taken.
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "mosquitto did not start"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            self.move_to_a_free_port();
        }
        panic!("mosquitto found no free port to listen on");
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Stops it with SIGTERM (it saves its state when persistent) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (`/proc/net/tcp`'s
/// listening sockets, by inode, among the process's open files). Where its files cannot be
/// read (another user's process), whatever answers on the port is taken for it.
fn listens_on(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let sockets: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let listening = fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A");
            let inode = fields.get(9).filter(|_| listening)?;
            Some(format!("socket:[{inode}]"))
        })
        .collect();
    let Ok(files) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return true;
    };
    files
        .flatten()
        .filter_map(|file| std::fs::read_link(file.path()).ok())
        .any(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
