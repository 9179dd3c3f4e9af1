//! The TLS listener beside the plain one, with rumqttc as the TLS client; optional client
//! certificate authentication.

mod common;

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};
use switchboard::BackgroundBroker;

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
    let mut options = MqttOptions::new(id, "127.0.0.1", addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
        ca: pki.ca_pem.clone().into_bytes(),
        alpn: None,
        client_auth: client_cert.then(|| {
            (
                pki.client.0.clone().into_bytes(),
                pki.client.1.clone().into_bytes(),
            )
        }),
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
