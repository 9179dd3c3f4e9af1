//! The TLS listener beside the plain one, with rumqttc as the TLS client; optional client
//! certificate authentication.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};
use switchboard::BackgroundBroker;

use common::child::{spawn, wait_line};
use common::pki::Pki;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
fn pki() -> Pki {
    Pki::new("1AB.ENTER.DETRD")
}

fn tls_broker(pki: &Pki, require_client_cert: bool) -> BackgroundBroker {
    common::broker_with(|c| {
        c.tls.port = Some(0);
        c.tls.cert_file = Some(pki.dir.path().join("server.pem"));
        c.tls.key_file = Some(pki.dir.path().join("server.key"));
        if require_client_cert {
            c.tls.client_ca_file = Some(pki.dir.path().join("ca.pem"));
        }
    })
}

/// Connects over TLS; returns the first result of the event loop (CONNACK or an error).
async fn tls_client(
    broker: &BackgroundBroker,
    pki: &Pki,
    id: &str,
    client_cert: bool,
) -> Result<(AsyncClient, rumqttc::EventLoop), String> {
    let addr = broker.tls_local_addr().expect("TLS listener");
    tls_client_at(addr, pki, id, client_cert).await
}

/// [`tls_client`] to the TLS listener at `addr`, trusting `pki`'s CA.
async fn tls_client_at(
    addr: SocketAddr,
    pki: &Pki,
    id: &str,
    client_cert: bool,
) -> Result<(AsyncClient, rumqttc::EventLoop), String> {
    let cert = client_cert.then_some(&pki.client);
    tls_client_with(addr, pki, id, cert, None).await
}

/// [`tls_client_at`] with this client certificate and key (PEM), and these credentials.
async fn tls_client_with(
    addr: SocketAddr,
    pki: &Pki,
    id: &str,
    cert: Option<&(String, String)>,
    credentials: Option<(&str, &str)>,
) -> Result<(AsyncClient, rumqttc::EventLoop), String> {
    let mut options = MqttOptions::new(id, "127.0.0.1", addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    if let Some((username, password)) = credentials {
        options.set_credentials(username, password);
    }
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
        ca: pki.ca_pem.clone().into_bytes(),
        alpn: None,
        client_auth: cert.map(|(cert, key)| (cert.clone().into_bytes(), key.clone().into_bytes())),
    }));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    loop {
        match tokio::time::timeout(common::WAIT, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => return Ok((client, eventloop)),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timeout".into()),
        }
    }
}

#[tokio::test]
async fn tls_clients_and_plain_clients_share_the_broker() {
    let pki = pki();
    let broker = tls_broker(&pki, false);
    let (client, mut eventloop) = tls_client(&broker, &pki, "tls-sub", false)
        .await
        .expect("TLS connect");
    client
        .subscribe("detrd/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        if let Event::Incoming(Incoming::SubAck(_)) = eventloop.poll().await.expect("suback") {
            break;
        }
    }
    // A plain-TCP client publishes; the TLS client receives.
    let (mut plain, _) = common::Raw::handshake(broker.local_addr(), "plain-pub", true).await;
    plain
        .send(&common::packets::publish(
            "detrd/status/response/1AB",
            b"over tls",
            1,
            1,
            false,
            false,
        ))
        .await;
    plain.expect().await;
    loop {
        match tokio::time::timeout(common::WAIT, eventloop.poll())
            .await
            .expect("in time")
            .expect("event")
        {
            Event::Incoming(Incoming::Publish(p)) => {
                assert_eq!(&p.payload[..], b"over tls");
                break;
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn client_certificates_can_be_required() {
    let pki = pki();
    let broker = tls_broker(&pki, true);
    assert!(tls_client(&broker, &pki, "with-cert", true).await.is_ok());
    assert!(tls_client(&broker, &pki, "without-cert", false)
        .await
        .is_err());
}

#[tokio::test]
async fn plain_bytes_on_the_tls_port_are_refused() {
    let pki = pki();
    let broker = tls_broker(&pki, false);
    let mut raw = common::Raw::connect(broker.tls_local_addr().expect("TLS listener")).await;
    raw.send(&common::packets::connect("plain-on-tls", true, 60))
        .await;
    // The answer is a TLS alert record (content type 0x15) or nothing, then the connection closes:
    // never a CONNACK.
    let mut answer = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut raw.stream, &mut answer);
    tokio::time::timeout(common::WAIT, read)
        .await
        .expect("closed in time")
        .expect("read");
    assert!(answer.is_empty() || answer[0] == 0x15, "{answer:?}");
}

#[tokio::test]
async fn mosquitto_pub_over_tls_by_ip_address_and_by_name() {
    // OpenSSL-based clients such as mosquitto_pub send the IP address as SNI when they connect
    // by address, which RFC 6066 forbids but devices in the field do: the handshake must
    // succeed either way (docs/security.md).
    if !common::mosquitto_clients_available() {
        return;
    }
    let pki = pki();
    let broker = tls_broker(&pki, false);
    let port = broker.tls_local_addr().expect("TLS listener").port();
    let ca = pki.dir.path().join("ca.pem");
    let (mut sub, _) = common::Raw::handshake(broker.local_addr(), "tls-watch", true).await;
    sub.subscribe(1, &[("tls/+", 1)], &[1]).await;
    for host in ["127.0.0.1", "localhost"] {
        let out = tokio::process::Command::new("mosquitto_pub")
            .args(["-h", host, "-p", &port.to_string()])
            .arg("--cafile")
            .arg(&ca)
            .args(["-i", "openssl-device", "-q", "1"])
            .args(["-t", &format!("tls/{host}"), "-m", &format!("by {host}")])
            .output()
            .await
            .expect("mosquitto_pub runs");
        assert!(
            out.status.success(),
            "mosquitto_pub -h {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let publish = common::packets::parse_publish(&sub.expect().await);
        assert_eq!(publish.payload, format!("by {host}").into_bytes());
        sub.send(&common::packets::ack(0x40, publish.pid)).await;
    }
}

/// A TLS handshake with the listener at `addr`, trusting only `pki`'s CA (for `localhost`).
async fn handshake(addr: SocketAddr, pki: &Pki) -> Result<(), String> {
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let ca = pki.dir.path().join("ca.pem");
    let mut roots = RootCertStore::empty();
    for cert in switchboard_actors::transport::certificates(&ca).expect("CA") {
        roots.add(cert).expect("CA added");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = "localhost".try_into().expect("server name");
    let handshake = connector.connect(name, tcp);
    match tokio::time::timeout(common::WAIT, handshake).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// Sends SIGHUP to the broker process.
fn sighup(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test]
async fn sighup_serves_a_renewed_certificate_and_keeps_open_connections() {
    // A certificate renewed in place (as certbot's deploy hook does) is served after a SIGHUP
    // on both TLS listeners, MQTT and wss://, without a restart; a connection opened before
    // keeps working; files that do not load leave the certificate in use (docs/security.md).
    let (first, renewed) = (pki(), Pki::new("1AB.ENTER.DETRD"));
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let install = |pki: &Pki| {
        std::fs::copy(pki.dir.path().join("server.pem"), &cert).expect("cert copied");
        std::fs::copy(pki.dir.path().join("server.key"), &key).expect("key copied");
    };
    install(&first);
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[listener]\nport = 0\n[tls]\nport = 0\ncert_file = {:?}\nkey_file = {:?}\n\
             [websocket]\ntls_port = 0\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .expect("config");
    let (mut child, logs) = spawn(&["-c", config.to_str().expect("utf-8")]);
    let address_after = |line: String, marker: &str| -> SocketAddr {
        line.rsplit(marker)
            .next()
            .and_then(|rest| rest.split(['/', ' ']).next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("an address after {marker:?} in {line:?}"))
    };
    let tls = address_after(wait_line(&logs, "listening for TLS on "), "TLS on ");
    let wss = address_after(wait_line(&logs, "WebSocket on wss://"), "wss://");
    let (open, mut open_events) = tls_client_at(tls, &first, "before-renewal", false)
        .await
        .expect("first certificate");
    assert_eq!(handshake(wss, &first).await, Ok(()));

    install(&renewed);
    sighup(&child);
    wait_line(&logs, "TLS certificate and key reloaded");
    for addr in [tls, wss] {
        assert_eq!(handshake(addr, &renewed).await, Ok(()), "renewed on {addr}");
        let refused = handshake(addr, &first).await.expect_err("old CA refused");
        // Both test CAs have one name: the old CA's key does not verify the renewed chain.
        assert!(refused.contains("invalid peer certificate"), "{refused}");
    }
    assert!(tls_client_at(tls, &renewed, "after-renewal", false)
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
    std::fs::write(&key, "not a key\n").expect("key broken");
    sighup(&child);
    let error = wait_line(&logs, "TLS files not reloaded");
    assert!(error.contains("server.key"), "{error}");
    assert_eq!(handshake(tls, &renewed).await, Ok(()));
    child.kill().expect("kill");
    let _ = child.wait();
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    // A reload that reads the renewed certificate beside the old key (written between the two
    // files' writes) must fail and leave the certificate in use, not serve a broken pair.
    let (first, renewed) = (pki(), Pki::new("1AB.ENTER.DETRD"));
    let files = |cert: &Pki, key: &Pki| switchboard::config::TlsConfig {
        cert_file: Some(cert.dir.path().join("server.pem")),
        key_file: Some(key.dir.path().join("server.key")),
        ..Default::default()
    };
    assert!(switchboard::tls::ServerTls::load(&files(&first, &first)).is_ok());
    let error = switchboard::tls::ServerTls::load(&files(&renewed, &first))
        .err()
        .expect("a mismatched pair is refused");
    assert!(error.to_string().contains("TLS configuration"), "{error}");
}

/// Subscribes to `filter` and returns whether the SUBACK granted it.
async fn may_subscribe(
    client: &AsyncClient,
    events: &mut rumqttc::EventLoop,
    filter: &str,
) -> bool {
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        match tokio::time::timeout(common::WAIT, events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::SubAck(ack)))) => {
                return ack.return_codes
                    == [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)];
            }
            Ok(Ok(_)) => continue,
            other => panic!("no SUBACK for {filter}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_client_certificates_common_name_is_its_user_name() {
    // tls.use_identity_as_username (Mosquitto's use_identity_as_username): the certificate's
    // Common Name is the user name the ACL's %u sees; the CONNECT's user name and password are
    // not checked (here a real user of the password file with a wrong password, which would
    // otherwise be refused); a certificate without a Common Name is refused.
    let pki = pki();
    let passwords = pki.dir.path().join("passwords");
    let line = switchboard::auth::hash_line("app", b"app-pw", 1000).expect("hash");
    std::fs::write(&passwords, format!("{line}\n")).expect("passwords");
    let acl = pki.dir.path().join("acl");
    let rules =
        "pattern read detrd/status/request/%u\npattern readwrite detrd/status/response/%u\n";
    std::fs::write(&acl, rules).expect("acl");
    let broker = common::broker_with(|c| {
        c.tls.port = Some(0);
        c.tls.cert_file = Some(pki.dir.path().join("server.pem"));
        c.tls.key_file = Some(pki.dir.path().join("server.key"));
        c.tls.client_ca_file = Some(pki.dir.path().join("ca.pem"));
        c.tls.use_identity_as_username = true;
        c.auth.password_file = Some(passwords.clone());
        c.auth.acl_file = Some(acl.clone());
    });
    let addr = broker.tls_local_addr().expect("TLS listener");
    let credentials = Some(("app", "not-the-password"));
    let (client, mut events) =
        tls_client_with(addr, &pki, "gate-7", Some(&pki.client), credentials)
            .await
            .expect("the certificate is the credential");
    assert!(may_subscribe(&client, &mut events, "detrd/status/request/1AB.ENTER.DETRD").await);
    assert!(!may_subscribe(&client, &mut events, "detrd/status/request/app").await);
    assert!(!may_subscribe(&client, &mut events, "detrd/status/request/gate-7").await);

    // An OpenSSL-based client with the same certificate publishes under the same identity.
    if common::mosquitto_clients_available() {
        let own = "detrd/status/response/1AB.ENTER.DETRD";
        assert!(may_subscribe(&client, &mut events, own).await);
        let (cert, key) = (
            pki.dir.path().join("gate.pem"),
            pki.dir.path().join("gate.key"),
        );
        std::fs::write(&cert, &pki.client.0).expect("cert");
        std::fs::write(&key, &pki.client.1).expect("key");
        let out = tokio::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
            .arg("--cafile")
            .arg(pki.dir.path().join("ca.pem"))
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["-i", "openssl-gate", "-q", "1", "-t", own, "-m", "open"])
            .output()
            .await
            .expect("mosquitto_pub runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        loop {
            match tokio::time::timeout(common::WAIT, events.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => {
                    assert_eq!(&p.payload[..], b"open");
                    break;
                }
                Ok(Ok(_)) => continue,
                other => panic!("mosquitto_pub's message: {other:?}"),
            }
        }
    }

    let refused = tls_client_with(addr, &pki, "nameless", Some(&pki.nameless), None)
        .await
        .err()
        .expect("a certificate without a Common Name is refused");
    assert!(refused.contains("NotAuthorized"), "{refused}");
}

#[test]
fn revocation_lists_and_the_identity_need_client_certificates() {
    for (key, set) in [
        (
            "tls.crl_file",
            (|c: &mut switchboard::Config| c.tls.crl_file = Some("crl.pem".into()))
                as fn(&mut switchboard::Config),
        ),
        ("tls.use_identity_as_username", |c| {
            c.tls.use_identity_as_username = true
        }),
    ] {
        let mut config = common::test_config();
        set(&mut config);
        let error = BackgroundBroker::start(config).err().expect("refused");
        assert!(error.to_string().contains(key), "{error}");
    }
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused_after_a_sighup() {
    // A device's certificate revoked (stolen gate): the CA's new revocation list goes in
    // tls.crl_file's place and a SIGHUP makes new handshakes check it, without a restart.
    let pki = pki();
    let file = |name: &str| pki.dir.path().join(name).display().to_string();
    let crl = pki.dir.path().join("crl.pem");
    std::fs::copy(pki.dir.path().join("crl-none.pem"), &crl).expect("CRL");
    let config = pki.dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[listener]\nport = 0\n[tls]\nport = 0\ncert_file = {:?}\nkey_file = {:?}\n\
             client_ca_file = {:?}\ncrl_file = {:?}\n",
            file("server.pem"),
            file("server.key"),
            file("ca.pem"),
            file("crl.pem"),
        ),
    )
    .expect("config");
    let (mut child, logs) = spawn(&["-c", config.to_str().expect("utf-8")]);
    let line = wait_line(&logs, "listening for TLS on ");
    let addr: SocketAddr = line
        .rsplit("TLS on ")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .expect("TLS address");
    let stolen = Some(&pki.stolen);
    assert!(tls_client_with(addr, &pki, "gate-9", stolen, None)
        .await
        .is_ok());

    std::fs::copy(pki.dir.path().join("crl-stolen.pem"), &crl).expect("CRL");
    sighup(&child);
    wait_line(&logs, "TLS certificate and key reloaded");
    let refused = tls_client_with(addr, &pki, "gate-9", stolen, None)
        .await
        .err()
        .expect("the revoked certificate is refused");
    assert!(refused.contains("Revoked"), "{refused}");
    let good = Some(&pki.client);
    assert!(tls_client_with(addr, &pki, "gate-1", good, None)
        .await
        .is_ok());
    child.kill().expect("kill");
    let _ = child.wait();
}

#[tokio::test]
async fn the_server_certificates_expiry_is_logged_and_in_the_metrics() {
    // Expiring certificates are the classic outage: the log warns when fewer than 14 days are
    // left, and /metrics gives the notAfter for an alert, again after a renewal and SIGHUP.
    let (expiring, renewed) = (
        Pki::with_server_days("1AB.ENTER.DETRD", 5),
        Pki::with_server_days("1AB.ENTER.DETRD", 90),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let install = |pki: &Pki| {
        std::fs::copy(pki.dir.path().join("server.pem"), &cert).expect("cert copied");
        std::fs::copy(pki.dir.path().join("server.key"), &key).expect("key copied");
    };
    install(&expiring);
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[listener]\nport = 0\n[tls]\nport = 0\ncert_file = {:?}\nkey_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .expect("config");
    let (mut child, logs) = spawn(&["-c", config.to_str().expect("utf-8")]);
    let warning = wait_line(&logs, "the TLS server certificate expires soon");
    assert!(warning.contains("WARN"), "{warning}");
    let not_after = format!("not_after={}", expiring.server_not_after);
    assert!(warning.contains(&not_after), "{warning}");
    let http_line = wait_line(&logs, "dashboard, metrics and admin API on http://");
    let http: SocketAddr = http_line
        .rsplit("http://")
        .next()
        .and_then(|rest| rest.trim().trim_end_matches('/').parse().ok())
        .expect("HTTP address");
    let expiry = || async {
        let text = common::http::get(http, "/metrics", None).await.body;
        text.lines()
            .find_map(|l| l.strip_prefix("switchboard_tls_certificate_expiry_timestamp_seconds "))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or_else(|| panic!("no expiry gauge in {text}"))
    };
    assert_eq!(expiry().await, expiring.server_not_after);

    install(&renewed);
    sighup(&child);
    let line = wait_line(&logs, "reload: TLS server certificate");
    assert!(line.contains("INFO"), "{line}");
    let not_after = format!("not_after={}", renewed.server_not_after);
    assert!(line.contains(&not_after), "{line}");
    assert_eq!(expiry().await, renewed.server_not_after);
    child.kill().expect("kill");
    let _ = child.wait();
}
