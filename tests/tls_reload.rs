//! TLS files changed under a running broker binary: a renewed server certificate and a new
//! revocation list are used after a SIGHUP, or on their own once the broker sees the files
//! change (`tls.watch_interval`), and the certificate's expiry is logged and measured.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use rumqttc::{Event, Incoming, QoS};

use common::child::{sighup, spawn, wait_line};
use common::durable::BrokerProcess;
use common::pki::Pki;
use common::tls::{
    client_config_with, handshake, mqtt_over_tls, mqtt_over_tls_result, tls_client_with,
};
use tokio_rustls::rustls::version::TLS13;
use tokio_rustls::rustls::HandshakeKind;

/// The server certificate and key a broker is configured with, in a directory of their own so
/// that a test can replace them as a renewal does.
struct ServerFiles {
    dir: tempfile::TempDir,
}

impl ServerFiles {
    /// The files, with `pki`'s server certificate installed.
    fn of(pki: &Pki) -> ServerFiles {
        let files = ServerFiles {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        files.install(pki);
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Copies `pki`'s server certificate and key over the configured ones.
    fn install(&self, pki: &Pki) {
        for name in ["server.pem", "server.key"] {
            std::fs::copy(pki.dir.path().join(name), self.path(name)).expect("copied");
        }
    }

    /// A config file with a plain listener and a TLS one on free ports, these files, and
    /// `more` (TOML) at the end of `[tls]`; returns its path.
    fn config(&self, more: &str) -> String {
        let path = self.path("switchboard.toml");
        let text = format!(
            "[listener]\nport = 0\n[tls]\nport = 0\ncert_file = {:?}\nkey_file = {:?}\n{more}",
            self.path("server.pem").display().to_string(),
            self.path("server.key").display().to_string(),
        );
        std::fs::write(&path, text).expect("config");
        path.display().to_string()
    }
}

/// The address after `marker` in a log line ("... listening for TLS on 127.0.0.1:PORT").
fn address_after(line: &str, marker: &str) -> SocketAddr {
    line.rsplit(marker)
        .next()
        .and_then(|rest| rest.trim().split(['/', ' ']).next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("an address after {marker:?} in {line:?}"))
}

#[tokio::test]
async fn sighup_serves_a_renewed_certificate_and_keeps_open_connections() {
    // A certificate renewed in place (as certbot's deploy hook does) is served after a SIGHUP
    // on both TLS listeners, MQTT and wss://, without a restart; a connection opened before
    // keeps working; files that do not load leave the certificate in use (docs/security.md).
    let (first, renewed) = (Pki::new("1AB.ENTER.DETRD"), Pki::new("1AB.ENTER.DETRD"));
    let files = ServerFiles::of(&first);
    let (child, logs) = spawn(&["-c", &files.config("[websocket]\ntls_port = 0\n")]);
    // Killed when dropped, also when an assertion fails.
    let child = BrokerProcess(child);
    let tls = address_after(&wait_line(&logs, "listening for TLS on "), "TLS on ");
    let wss = address_after(&wait_line(&logs, "WebSocket on wss://"), "wss://");
    let (open, mut open_events) = tls_client_with(tls, &first, "before-renewal", None, None)
        .await
        .expect("first certificate");
    assert_eq!(handshake(wss, &first).await, Ok(()));

    files.install(&renewed);
    sighup(&child.0);
    wait_line(&logs, "TLS certificate and key reloaded");
    for addr in [tls, wss] {
        assert_eq!(handshake(addr, &renewed).await, Ok(()), "renewed on {addr}");
        let refused = handshake(addr, &first).await.expect_err("old CA refused");
        // Both test CAs have one name: the old CA's key does not verify the renewed chain.
        assert!(refused.contains("invalid peer certificate"), "{refused}");
    }
    assert!(tls_client_with(tls, &renewed, "after-renewal", None, None)
        .await
        .is_ok());
    // The connection from before the renewal is still served.
    open.subscribe("gate/+/state", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        match tokio::time::timeout(common::WAIT, open_events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => break,
            Ok(Ok(_)) => continue,
            other => panic!("the open connection after the reload: {other:?}"),
        }
    }

    // A key file that does not load: a clear error naming it, and the renewed certificate stays.
    std::fs::write(files.path("server.key"), "not a key\n").expect("key broken");
    sighup(&child.0);
    let error = wait_line(&logs, "TLS files not reloaded");
    assert!(error.contains("server.key"), "{error}");
    assert_eq!(handshake(tls, &renewed).await, Ok(()));
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused_after_a_sighup() {
    // A device's certificate revoked (stolen gate): the CA's new revocation list goes in
    // tls.crl_file's place and a SIGHUP makes new handshakes check it, without a restart.
    let pki = Pki::new("1AB.ENTER.DETRD");
    let files = ServerFiles::of(&pki);
    let crl = files.path("crl.pem");
    std::fs::copy(pki.dir.path().join("crl-none.pem"), &crl).expect("CRL");
    let more = format!(
        "client_ca_file = {:?}\ncrl_file = {:?}\n",
        pki.dir.path().join("ca.pem").display().to_string(),
        crl.display().to_string()
    );
    let (child, logs) = spawn(&["-c", &files.config(&more)]);
    // Killed when dropped, also when an assertion fails.
    let child = BrokerProcess(child);
    let addr = address_after(&wait_line(&logs, "listening for TLS on "), "TLS on ");
    let stolen = Some(&pki.stolen);
    assert!(tls_client_with(addr, &pki, "gate-9", stolen, None)
        .await
        .is_ok());
    // The same device with a client that resumes sessions: its second connection resumes.
    let resuming = client_config_with(&pki, &[&TLS13], true, stolen);
    let first = mqtt_over_tls(addr, &resuming, "gate-9").await;
    assert_eq!(first, HandshakeKind::Full);
    let second = mqtt_over_tls(addr, &resuming, "gate-9").await;
    assert_eq!(second, HandshakeKind::Resumed);

    std::fs::copy(pki.dir.path().join("crl-stolen.pem"), &crl).expect("CRL");
    sighup(&child.0);
    wait_line(&logs, "TLS certificate and key reloaded");
    let refused = tls_client_with(addr, &pki, "gate-9", stolen, None)
        .await
        .err()
        .expect("the revoked certificate is refused");
    assert!(refused.contains("Revoked"), "{refused}");
    // Nor can it resume a session from before the revocation: a reload brings new ticket keys,
    // and the full handshake it falls back to checks the list.
    let resumed = mqtt_over_tls_result(addr, &resuming, "gate-9").await;
    assert!(resumed.is_err(), "{resumed:?}");
    let good = Some(&pki.client);
    assert!(tls_client_with(addr, &pki, "gate-1", good, None)
        .await
        .is_ok());
}

#[tokio::test]
async fn the_server_certificates_expiry_is_logged_and_in_the_metrics() {
    // Expiring certificates are the classic outage: the log warns when fewer than 14 days are
    // left, and /metrics gives the notAfter for an alert, again after a renewal and SIGHUP.
    let (expiring, renewed) = (
        Pki::with_server_days("1AB.ENTER.DETRD", 5),
        Pki::with_server_days("1AB.ENTER.DETRD", 90),
    );
    let files = ServerFiles::of(&expiring);
    let (child, logs) = spawn(&["-c", &files.config("")]);
    // Killed when dropped, also when an assertion fails.
    let child = BrokerProcess(child);
    let warning = wait_line(&logs, "the TLS server certificate expires soon");
    assert!(warning.contains("WARN"), "{warning}");
    let not_after = format!("not_after={}", expiring.server_not_after);
    assert!(warning.contains(&not_after), "{warning}");
    let http_line = wait_line(&logs, "dashboard, metrics and admin API on http://");
    let http = address_after(&http_line, "http://");
    let expiry = || async {
        let text = common::http::get(http, "/metrics", None).await.body;
        text.lines()
            .find_map(|l| l.strip_prefix("switchboard_tls_certificate_expiry_timestamp_seconds "))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or_else(|| panic!("no expiry gauge in {text}"))
    };
    assert_eq!(expiry().await, expiring.server_not_after);

    files.install(&renewed);
    sighup(&child.0);
    let line = wait_line(&logs, "reloaded: TLS server certificate");
    assert!(line.contains("INFO"), "{line}");
    let not_after = format!("not_after={}", renewed.server_not_after);
    assert!(line.contains(&not_after), "{line}");
    // The gauge is set once the new certificate is in use, just before the SIGHUP line.
    wait_line(&logs, "SIGHUP: TLS certificate and key reloaded");
    assert_eq!(expiry().await, renewed.server_not_after);
}

#[tokio::test]
async fn renewed_files_are_served_without_a_sighup() {
    // `tls.watch_interval`: a renewal on disk is taken with nobody sending SIGHUP. Caught
    // half-written (the new certificate beside the old key), the certificate in use stays and
    // the reload is tried again at the next change; a Kubernetes-style symlink swap to a new
    // version of both files is seen too.
    let (first, renewed) = (Pki::new("1AB.ENTER.DETRD"), Pki::new("1AB.ENTER.DETRD"));
    let files = ServerFiles::of(&first);
    let (child, logs) = spawn(&["-c", &files.config("watch_interval = \"100ms\"\n")]);
    // Killed when dropped, also when an assertion fails.
    let _child = BrokerProcess(child);
    let tls = address_after(&wait_line(&logs, "listening for TLS on "), "TLS on ");
    assert_eq!(handshake(tls, &first).await, Ok(()));

    let renewed_file = |name: &str| renewed.dir.path().join(name);
    std::fs::copy(renewed_file("server.pem"), files.path("server.pem")).expect("certificate");
    wait_line(&logs, "TLS files changed on disk but not reloaded");
    assert_eq!(
        handshake(tls, &first).await,
        Ok(()),
        "the certificate in use stays"
    );
    std::fs::copy(renewed_file("server.key"), files.path("server.key")).expect("key");
    wait_line(&logs, "TLS files changed on disk: reloaded");
    assert_eq!(handshake(tls, &renewed).await, Ok(()));
    assert!(handshake(tls, &first).await.is_err(), "the old CA refused");

    // Both files become symlinks into a new version's directory, each swapped in by a rename.
    let version = files.path("v3");
    std::fs::create_dir(&version).expect("version directory");
    for name in ["server.pem", "server.key"] {
        std::fs::copy(first.dir.path().join(name), version.join(name)).expect("copied");
        let link = files.path(&format!("{name}.new"));
        std::os::unix::fs::symlink(version.join(name), &link).expect("symlink");
        std::fs::rename(&link, files.path(name)).expect("swapped");
    }
    wait_line(&logs, "TLS files changed on disk: reloaded");
    assert_eq!(handshake(tls, &first).await, Ok(()));
}
