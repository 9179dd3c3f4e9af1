//! The `switchboard` binary as a child process: start it, read its log lines, find its port.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// Starts the binary and returns it with a channel of its log lines.
pub fn spawn(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    spawn_with_log(args, "info")
}

/// [`spawn`] with `RUST_LOG` set to `log`.
pub fn spawn_with_log(args: &[&str], log: &str) -> (Child, mpsc::Receiver<String>) {
    let mut command = Command::new(BIN);
    command.args(args).env("RUST_LOG", log);
    if !args.contains(&"--http-port") {
        // Beside other test brokers: not the default port 8080.
        command.args(["--http-port", "0"]);
    }
    spawn_command(command)
}

/// Starts `command` (the binary, prepared by the caller) and returns it with a channel of its
/// log lines.
#[allow(dead_code)]
pub fn spawn_command(mut command: Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        forward_lines(stdout, tx.clone());
    }
    if let Some(stderr) = child.stderr.take() {
        forward_lines(stderr, tx);
    }
    (child, rx)
}

/// Sends each line of `stream` (a child's output) on `tx`, from a thread of its own, until the
/// stream ends; the channel ends when every sender has.
fn forward_lines(stream: impl std::io::Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
}

/// Starts `command` (a script a test drives) with its standard output read line by line while
/// it runs; returns it with the lines, whose channel ends with its output. Its standard error
/// is as the caller set it.
pub fn spawn_reading_stdout(command: &mut Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} starts: {e}"));
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        forward_lines(stdout, tx);
    }
    (child, rx)
}

pub fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    wait_line_within(rx, needle, super::WAIT)
}

/// [`wait_line`], with `within` for each line instead of the usual wait.
pub fn wait_line_within(
    rx: &mpsc::Receiver<String>,
    needle: &str,
    within: std::time::Duration,
) -> String {
    loop {
        match rx.recv_timeout(within) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => continue,
            Err(_) => panic!("no line containing {needle:?}"),
        }
    }
}

/// The address in the broker's "switchboard listening on ADDR" line.
pub fn listening_addr(line: &str) -> std::net::SocketAddr {
    line.rsplit("listening on ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("address in the listening line")
}

/// The value of `name=` in a log line (tracing's key=value fields).
#[allow(dead_code)]
pub fn log_field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split(&format!("{name}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{name} in {line:?}"))
}

/// [`log_field`] as a number.
#[allow(dead_code)]
pub fn log_number(line: &str, name: &str) -> u64 {
    log_field(line, name)
        .parse()
        .unwrap_or_else(|_| panic!("{name} is a number in {line:?}"))
}

/// Sends SIGHUP to the broker process.
pub fn sighup(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A broker process that is killed (SIGKILL) and reaped when dropped: a test that fails before
/// its own kill (as [`super::durable::kill_9`]) does not leave it running.
pub struct BrokerProcess(pub Child);

impl std::borrow::Borrow<Child> for BrokerProcess {
    fn borrow(&self) -> &Child {
        &self.0
    }
}

impl std::borrow::BorrowMut<Child> for BrokerProcess {
    fn borrow_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
