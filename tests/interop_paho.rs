//! Stock clients work unchanged: paho-mqtt (Python) against a real broker. `.ci/run` installs
//! paho-mqtt; on a machine without it this test says so and passes only when not under CI.

mod common;

use std::process::Command;

#[test]
fn paho_python_client_round_trip() {
    if !common::paho_available() {
        return;
    }
    let broker = common::broker();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/paho_roundtrip.py"
    );
    let out = Command::new("python3")
        .args([script, &broker.local_addr().port().to_string()])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "detrd/status/response/q0 payload-0 0 0",
            "detrd/status/response/q1 payload-1 1 0",
            "detrd/status/response/q2 payload-2 2 0",
            "detrd/status/retained kept 1 0",
            "detrd/status/retained kept 1",
        ]
    );
}
