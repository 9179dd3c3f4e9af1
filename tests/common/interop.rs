//! Whether the external clients and servers the interop tests drive are installed (required
//! under CI), and running them: mosquitto_sub, the Python scripts of `tests/interop/`.

use std::ffi::OsStr;
use std::time::Duration;

/// Whether `program` starts with `args` (whatever its exit status: `mosquitto -h` fails).
fn starts(program: impl AsRef<OsStr>, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// Whether `program` runs with `args` and exits successfully.
fn succeeds(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether an external client the interop tests drive (`what`) was `found`. Under CI
/// (`.ci/run` installs them all) its absence is a failure; elsewhere the test says it skipped,
/// and how to install it.
fn required_under_ci(found: bool, what: &str, install: &str) -> bool {
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} must be installed under CI (.ci/run installs it)"
        );
        eprintln!("SKIPPED: {what} not found ({install})");
    }
    found
}

/// Whether python3 with paho-mqtt is there (see [`required_under_ci`]).
pub fn paho_available() -> bool {
    let found = succeeds("python3", &["-c", "import paho.mqtt.client"]);
    required_under_ci(found, "python3 with paho-mqtt", "pip install paho-mqtt")
}

/// Whether python3 with gmqtt (an asyncio MQTT 5 client with its own protocol code) is there
/// (see [`required_under_ci`]).
pub fn gmqtt_available() -> bool {
    let found = succeeds("python3", &["-c", "import gmqtt"]);
    required_under_ci(found, "python3 with gmqtt", "pip install gmqtt==0.8.0")
}

/// Whether python3 with amqtt (an asyncio MQTT 3.1.1 client with its own protocol code) is
/// there (see [`required_under_ci`]).
pub fn amqtt_available() -> bool {
    let found = succeeds("python3", &["-c", "import amqtt.client"]);
    required_under_ci(found, "python3 with amqtt", "pip install amqtt==0.12.1")
}

/// Whether python3 with prometheus-client (the official Prometheus text parser) is there (see
/// [`required_under_ci`]).
pub fn prometheus_parser_available() -> bool {
    let found = succeeds(
        "python3",
        &["-c", "import prometheus_client.openmetrics.parser"],
    );
    required_under_ci(
        found,
        "python3 with prometheus-client",
        "pip install prometheus-client",
    )
}

/// The dashboard driver (`tests/interop/dashboard/`: puppeteer-core and its script).
pub fn dashboard_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/dashboard")
}

/// Whether Node.js, puppeteer-core and Debian's chromium are there (see [`required_under_ci`]).
pub fn browser_available() -> bool {
    let node = succeeds("node", &["--version"]);
    let chromium = std::env::var_os("CHROMIUM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into())
        .exists();
    let found = node && chromium && dashboard_dir().join("node_modules/puppeteer-core").is_dir();
    required_under_ci(
        found,
        "node with puppeteer-core, and chromium",
        "apt-get install chromium; npm ci --prefix tests/interop/dashboard",
    )
}

/// Runs a headless-Chromium script of `tests/interop/dashboard/` with `args`; asserts it
/// succeeded and returns the last line it printed, as JSON.
pub fn run_browser_script(
    script: &str,
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
) -> serde_json::Value {
    let output = std::process::Command::new("node")
        .arg(dashboard_dir().join(script))
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Debian's Mosquitto broker: `mosquitto` on the PATH, else `/usr/sbin/mosquitto`.
pub fn mosquitto_binary() -> std::path::PathBuf {
    if starts("mosquitto", &["-h"]) {
        "mosquitto".into()
    } else {
        "/usr/sbin/mosquitto".into()
    }
}

/// Whether Debian's Mosquitto broker is there, as a bridge peer (see [`required_under_ci`]).
pub fn mosquitto_broker_available() -> bool {
    let found = starts(mosquitto_binary(), &["-h"]);
    required_under_ci(found, "mosquitto (the broker)", "apt-get install mosquitto")
}

/// Whether Debian's mosquitto clients are there (see [`required_under_ci`]).
pub fn mosquitto_clients_available() -> bool {
    let found = starts("mosquitto_pub", &["--help"]);
    required_under_ci(found, "mosquitto_pub", "apt-get install mosquitto-clients")
}

/// Whether Debian's HAProxy is there, as a load balancer in front of the broker (see
/// [`required_under_ci`]).
pub fn haproxy_available() -> bool {
    let found = starts("haproxy", &["-v"]);
    required_under_ci(found, "haproxy", "apt-get install haproxy")
}

/// Whether the Eclipse Paho C client's tools (`paho_c_pub`, `paho_c_sub`) are there (see
/// [`required_under_ci`]).
pub fn paho_c_available() -> bool {
    let found = starts("paho_c_pub", &["--version"]);
    required_under_ci(found, "paho_c_pub", "apt-get install paho.mqtt.c-examples")
}

/// Where Debian's `golang-github-eclipse-paho.mqtt.golang-dev` puts Eclipse Paho's Go client
/// (a GOPATH tree: the interop program builds offline, with `GO111MODULE=off`).
pub const GO_PAHO_GOPATH: &str = "/usr/share/gocode";

/// Whether the Go toolchain and Eclipse Paho's Go client are there (see [`required_under_ci`]).
pub fn go_paho_available() -> bool {
    let found = succeeds("go", &["version"])
        && std::path::Path::new(GO_PAHO_GOPATH)
            .join("src/github.com/eclipse/paho.mqtt.golang")
            .is_dir();
    required_under_ci(
        found,
        "go with Eclipse Paho's Go client",
        "apt-get install golang-go golang-github-eclipse-paho.mqtt.golang-dev",
    )
}

/// The jars of Debian's `libmqtt-client-java` (the FuseSource MQTT client) and of the two
/// libraries it runs on, as a Java class path.
pub const FUSESOURCE_CLASSPATH: &str = "/usr/share/java/mqtt-client.jar:/usr/share/java/hawtbuf.jar:/usr/share/java/hawtdispatch.jar:/usr/share/java/hawtdispatch-transport.jar";

/// Whether a Java compiler and runtime and the FuseSource MQTT client are there (see
/// [`required_under_ci`]).
pub fn fusesource_java_available() -> bool {
    let found = succeeds("javac", &["-version"])
        && succeeds("java", &["-version"])
        && FUSESOURCE_CLASSPATH
            .split(':')
            .all(|jar| std::path::Path::new(jar).is_file());
    required_under_ci(
        found,
        "a JDK with the FuseSource MQTT client for Java",
        "apt-get install default-jdk-headless libmqtt-client-java",
    )
}

/// Whether curl is there with its MQTT client (`mqtt` among its protocols; see
/// [`required_under_ci`]).
pub fn curl_available() -> bool {
    let found = std::process::Command::new("curl")
        .arg("-V")
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("Protocols:") && l.split(' ').any(|p| p == "mqtt"))
        });
    required_under_ci(found, "curl with MQTT", "apt-get install curl")
}

/// Whether the OpenSSL command line tool is there (see [`required_under_ci`]).
pub fn openssl_available() -> bool {
    let found = succeeds("openssl", &["version"]);
    required_under_ci(found, "openssl", "apt-get install openssl")
}

/// Whether strace with fault injection is there, to make a disk slow (see
/// [`required_under_ci`]).
pub fn strace_available() -> bool {
    let found = succeeds("strace", &["-V"]);
    required_under_ci(found, "strace", "apt-get install strace")
}

/// Whether Debian's nats-server is there, for clusters (see [`required_under_ci`]).
pub fn nats_available() -> bool {
    let found = succeeds("nats-server", &["--version"]);
    required_under_ci(found, "nats-server", "apt-get install nats-server")
}

/// The MQTT.js scripts and their `node_modules` (`tests/interop/mqttjs/`).
pub fn mqttjs_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/mqttjs")
}

/// Whether Node.js and MQTT.js are there (see [`required_under_ci`]).
pub fn mqttjs_available() -> bool {
    let node = succeeds("node", &["--version"]);
    let found = node && mqttjs_dir().join("node_modules/mqtt").is_dir();
    required_under_ci(
        found,
        "node with MQTT.js",
        "npm ci --prefix tests/interop/mqttjs",
    )
}

/// Starts `mosquitto_sub` against the broker on `port` with these extra arguments (it should
/// end by itself, e.g. with `-C`).
pub fn spawn_mosquitto_sub(port: u16, args: &[&str]) -> tokio::process::Child {
    spawn_mosquitto_client("mosquitto_sub", port, args)
}

/// Starts one of Debian's mosquitto clients (`program`: `mosquitto_sub`, `mosquitto_rr`)
/// against the broker on `port` with these extra arguments, its output piped.
pub fn spawn_mosquitto_client(program: &str, port: u16, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} starts: {e}"))
}

/// Waits (at most 10 s) for a mosquitto client started by [`spawn_mosquitto_client`] to end,
/// asserts it succeeded, and returns the lines it printed.
pub async fn mosquitto_client_lines(client: tokio::process::Child) -> Vec<String> {
    let out = tokio::time::timeout(Duration::from_secs(10), client.wait_with_output())
        .await
        .expect("the mosquitto client ends")
        .expect("the mosquitto client's output");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Runs a Python script from `tests/interop/` against the broker on `port`; asserts it succeeded
/// and returns the lines it printed.
pub fn run_interop_script(name: &str, port: u16) -> Vec<String> {
    run_interop_script_with(name, &[&port.to_string()])
}

/// [`run_interop_script`] with these arguments.
pub fn run_interop_script_with(name: &str, args: &[&str]) -> Vec<String> {
    let script = format!("{}/tests/interop/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

/// Checks what an interop program (`client`) printed for its scenarios, one JSON line each
/// (`{"name": ..., "ok": ..., "detail": ...}`): it exited successfully, ran exactly `names`
/// in that order, and every one passed.
pub fn assert_scenarios_passed(client: &str, output: &std::process::Output, names: &[&str]) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{client} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line per scenario"))
        .collect();
    let ran: Vec<&str> = results
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(ran, names, "{client}'s scenarios");
    for result in &results {
        assert_eq!(
            result["ok"], true,
            "{client}, {}: {}",
            result["name"], result["detail"]
        );
    }
}

/// Whether what listens on `addr` answers an MQTT 3.1.1 CONNECT (clean session, empty client
/// id) with a CONNACK, rather than being some other server that took the port.
pub fn answers_mqtt(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let connect = [
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ];
    let mut connack = [0u8; 4];
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .is_ok()
        && stream.write_all(&connect).is_ok()
        && stream.read_exact(&mut connack).is_ok()
        && connack[0] == 0x20
}
