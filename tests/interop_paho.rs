//! Stock clients work unchanged: paho-mqtt (Python) against a real broker. `.ci/run` installs
//! paho-mqtt; on a machine without it this test says so and passes only when not under CI.

mod common;

#[test]
fn paho_python_client_round_trip() {
    if !common::paho_available() {
        return;
    }
    let broker = common::broker();
    let lines = common::run_interop_script("paho_roundtrip.py", broker.local_addr().port());
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
