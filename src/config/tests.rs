//! The configuration's parsing and validation, key by key.

use super::*;

/// The error text of a configuration that must be refused.
fn refusal(toml: &str) -> String {
    Config::from_toml(toml).unwrap_err().to_string()
}

#[test]
fn default_workers_leave_one_core_free() {
    assert_eq!(default_workers(1), 1);
    assert_eq!(default_workers(2), 1);
    assert_eq!(default_workers(4), 3);
    assert_eq!(default_workers(16), 15);
}

#[test]
fn defaults_parse_from_empty_file() {
    let c = Config::from_toml("").expect("empty config is valid");
    assert_eq!(c.listener.port, 1883);
    assert_eq!(c.limits.connect_timeout, Duration::from_secs(10));
}

#[test]
fn values_parse() {
    let c = Config::from_toml(
        "[listener]\nport = 1234\n[limits]\nconnect_timeout = \"500ms\"\n[sessions]\nqueue_overflow = \"drop_newest\"\n",
    )
    .expect("valid");
    assert_eq!(c.listener.port, 1234);
    assert_eq!(c.limits.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.sessions.queue_overflow, QueueOverflow::DropNewest);
}

#[test]
fn tls_watch_interval_is_off_or_at_least_100ms() {
    assert_eq!(
        Config::default().tls.watch_interval,
        Duration::from_secs(60)
    );
    let c = Config::from_toml("[tls]\nwatch_interval = \"0s\"\n").expect("off");
    assert!(c.tls.watch_interval.is_zero());
    let err = refusal("[tls]\nwatch_interval = \"50ms\"\n");
    assert!(err.contains("tls.watch_interval"), "{err}");
}

#[test]
fn the_bound_on_all_offline_sessions_is_off_or_at_least_1024() {
    assert_eq!(Config::default().sessions.max_offline_queued_bytes, 0);
    let c = Config::from_toml("[sessions]\nmax_offline_queued_bytes = 1073741824\n")
        .expect("a gigabyte");
    assert_eq!(c.sessions.max_offline_queued_bytes, 1 << 30);
    let err = refusal("[sessions]\nmax_offline_queued_bytes = 10\n");
    assert!(err.contains("sessions.max_offline_queued_bytes"), "{err}");
}

#[test]
fn the_listener_s_identity_needs_the_proxy_protocol() {
    let err = refusal("[listener]\nuse_identity_as_username = true\n");
    assert!(err.contains("listener.use_identity_as_username"), "{err}");
    let both = "[listener]\nproxy_protocol = true\nuse_identity_as_username = true\n";
    assert!(Config::from_toml(both).is_ok());
}

#[test]
fn unknown_key_is_named() {
    let err = refusal("[listener]\nprot = 1\n");
    assert!(err.contains("listener") && err.contains("prot"), "{err}");
}

#[test]
fn a_duration_that_does_not_parse_is_shown_how_to_write_one() {
    let err = refusal("[persistence]\nfsync_interval = \"1 fortnight\"\n");
    assert!(
        err.contains("persistence.fsync_interval")
            && err.contains("expected a duration such as \"500ms\", \"30s\""),
        "{err}"
    );
}

#[test]
fn bad_value_is_named() {
    let err = refusal("[listener]\nport = \"high\"\n");
    assert!(err.contains("listener.port"), "{err}");
    let err = refusal("[limits]\nmax_packet_size = 0\n");
    assert!(err.contains("limits.max_packet_size"), "{err}");
    let err = refusal("[persistence]\ncompact_min_bytes = 1000\n");
    assert!(err.contains("persistence.compact_min_bytes"), "{err}");
    let c = Config::from_toml("[persistence]\ncompact_min_bytes = 8388608\n").expect("valid");
    assert_eq!(c.persistence.compact_min_bytes, 8 << 20);
    let err = refusal("[log]\nbuffer_lines = 1048577\n");
    assert!(err.contains("log.buffer_lines"), "{err}");
    for lines in [0, 1024] {
        let c = Config::from_toml(&format!("[log]\nbuffer_lines = {lines}\n")).expect("valid");
        assert_eq!(c.log.buffer_lines, lines);
    }
    assert_eq!(Config::default().log.buffer_lines, 16_384);
}
