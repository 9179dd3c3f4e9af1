//! The TLS listener beside the plain one, with rumqttc as the TLS client; optional client
//! certificate authentication.

mod common;

use rumqttc::{AsyncClient, Event, Incoming, QoS};
use switchboard::BackgroundBroker;

use common::pki::Pki;
use common::tls::{
    client_config, client_config_with, handshake_with_versions, may_subscribe, mqtt_over_tls,
    tls_client_with,
};

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
fn pki() -> Pki {
    Pki::new("1AB.ENTER.DETRD")
}

/// Connects over TLS; returns the first result of the event loop (CONNACK or an error).
async fn tls_client(
    broker: &BackgroundBroker,
    pki: &Pki,
    id: &str,
    client_cert: bool,
) -> Result<(AsyncClient, rumqttc::EventLoop), String> {
    let addr = broker.tls_local_addr().expect("TLS listener");
    let cert = client_cert.then_some(&pki.client);
    tls_client_with(addr, pki, id, cert, None).await
}

#[tokio::test]
async fn tls_clients_and_plain_clients_share_the_broker() {
    let pki = pki();
    let broker = common::tls_broker(&pki, false);
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
    let broker = common::tls_broker(&pki, true);
    assert!(tls_client(&broker, &pki, "with-cert", true).await.is_ok());
    assert!(tls_client(&broker, &pki, "without-cert", false)
        .await
        .is_err());
}

#[tokio::test]
async fn plain_bytes_on_the_tls_port_are_refused() {
    let pki = pki();
    let broker = common::tls_broker(&pki, false);
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
    let broker = common::tls_broker(&pki, false);
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
        pki.serve(&mut c.tls, true);
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
async fn tls_1_2_can_be_refused() {
    // tls.min_version = "1.3" (Mosquitto's tls_version): a client that offers TLS 1.2 only fails
    // the handshake, with rustls and with OpenSSL's s_client; TLS 1.3 gets in.
    use tokio_rustls::rustls::version::{TLS12, TLS13};
    let pki = pki();
    let broker = common::broker_with(|c| {
        c.tls.port = Some(0);
        pki.serve(&mut c.tls, false);
        c.tls.min_version = switchboard::config::TlsVersion::Tls13;
    });
    let addr = broker.tls_local_addr().expect("TLS listener");
    assert_eq!(handshake_with_versions(addr, &pki, &[&TLS13]).await, Ok(()));
    assert!(handshake_with_versions(addr, &pki, &[&TLS12])
        .await
        .is_err());
    if !common::openssl_available() {
        return;
    }
    for (version, accepted) in [("-tls1_2", false), ("-tls1_3", true)] {
        let out = tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string(), version])
            .arg("-CAfile")
            .arg(pki.dir.path().join("ca.pem"))
            .args(["-servername", "localhost", "-verify_return_error"])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("openssl runs");
        assert_eq!(
            out.status.success(),
            accepted,
            "openssl s_client {version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A connect interceptor that admits only the gate whose certificate names it, and passes on
/// the user name and password each CONNECT was asked about.
struct CertifiedGatesOnly(std::sync::mpsc::Sender<(Option<String>, Option<Vec<u8>>)>);

impl actix::Actor for CertifiedGatesOnly {
    type Context = actix::Context<Self>;
}

impl actix::Handler<switchboard::hooks::AuthorizeConnect> for CertifiedGatesOnly {
    type Result = switchboard::hooks::ConnectDecision;

    fn handle(
        &mut self,
        asked: switchboard::hooks::AuthorizeConnect,
        _: &mut actix::Context<Self>,
    ) -> Self::Result {
        let password = asked.password.as_ref().map(|p| p.to_vec());
        let _ = self.0.send((asked.username.clone(), password));
        match asked.username.as_deref() {
            Some("1AB.ENTER.DETRD") => switchboard::hooks::ConnectDecision::Accept,
            _ => switchboard::hooks::ConnectDecision::Refuse(
                switchboard::ConnectReturnCode::NotAuthorized,
            ),
        }
    }
}

#[tokio::test]
async fn the_connect_interceptor_sees_the_certificates_name_as_the_user_name() {
    // With tls.use_identity_as_username, AuthorizeConnect carries the certificate's Common Name
    // as the user name and no password, whatever the CONNECT said.
    use actix::Actor;
    let pki = pki();
    let (asked_tx, asked) = std::sync::mpsc::channel();
    let mut config = common::test_config();
    config.tls.port = Some(0);
    pki.serve(&mut config.tls, true);
    config.tls.use_identity_as_username = true;
    let broker = BackgroundBroker::start_with(config, move |broker| {
        let policy = CertifiedGatesOnly(asked_tx).start();
        broker.interceptors(switchboard::hooks::Interceptors {
            connect: Some(policy.recipient()),
            publish: None,
            subscribe: None,
        })
    })
    .expect("broker starts");
    let addr = broker.tls_local_addr().expect("TLS listener");
    let credentials = Some(("someone-else", "a-password"));
    let gate = tls_client_with(addr, &pki, "gate", Some(&pki.client), credentials).await;
    assert!(gate.is_ok(), "{:?}", gate.err());
    let (username, password) = asked.recv_timeout(common::WAIT).expect("asked");
    assert_eq!(username.as_deref(), Some("1AB.ENTER.DETRD"));
    assert_eq!(password, None);

    let stolen = tls_client_with(addr, &pki, "gate", Some(&pki.stolen), credentials).await;
    let refused = stolen.err().expect("another certificate's name is refused");
    assert!(refused.contains("NotAuthorized"), "{refused}");
    let (username, _) = asked.recv_timeout(common::WAIT).expect("asked");
    assert_eq!(username.as_deref(), Some("stolen-gate"));
}

#[tokio::test]
async fn a_device_resumes_its_tls_session_after_hundreds_of_others() {
    // Session tickets: a device that reconnects resumes its session (no new certificate
    // signature in TLS 1.3, no key exchange in TLS 1.2), even after more devices than a
    // server-side session cache holds (256) connected in between, as in a fleet.
    use tokio_rustls::rustls::version::{TLS12, TLS13};
    use tokio_rustls::rustls::HandshakeKind;
    let pki = pki();
    let broker = common::tls_broker(&pki, false);
    let addr = broker.tls_local_addr().expect("TLS listener");
    for version in [&TLS13, &TLS12] {
        let device = client_config(&pki, version, true);
        assert_eq!(
            mqtt_over_tls(addr, &device, "gate").await,
            HandshakeKind::Full
        );
        let others = client_config(&pki, version, false);
        for n in 0..300 {
            mqtt_over_tls(addr, &others, &format!("other-{n}")).await;
        }
        let again = mqtt_over_tls(addr, &device, "gate").await;
        assert_eq!(again, HandshakeKind::Resumed, "{version:?}");
    }
}

#[tokio::test]
async fn a_resumed_session_keeps_the_certificates_identity() {
    // tls.use_identity_as_username: a device that resumes its session presents no certificate
    // again; the one from its first handshake, kept in the ticket, still names it.
    use tokio_rustls::rustls::version::{TLS12, TLS13};
    use tokio_rustls::rustls::HandshakeKind;
    let pki = pki();
    let broker = common::broker_with(|c| {
        c.tls.port = Some(0);
        pki.serve(&mut c.tls, true);
        c.tls.use_identity_as_username = true;
    });
    let addr = broker.tls_local_addr().expect("TLS listener");
    for version in [&TLS13, &TLS12] {
        let device = client_config_with(&pki, &[version], true, Some(&pki.client));
        assert_eq!(
            mqtt_over_tls(addr, &device, "gate").await,
            HandshakeKind::Full
        );
        // Accepted (CONNACK 0) with the name: a session without it would be refused.
        let again = mqtt_over_tls(addr, &device, "gate").await;
        assert_eq!(again, HandshakeKind::Resumed, "{version:?}");
    }
}
