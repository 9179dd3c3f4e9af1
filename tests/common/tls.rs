//! TLS clients for the TLS tests: rumqttc with a chosen client certificate and credentials, and
//! a bare handshake that tells which server certificate a listener serves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};

use super::pki::Pki;

/// A rumqttc client over TLS to `addr`, trusting `pki`'s CA, with this client certificate and
/// key (PEM) and these credentials; the first result of its event loop (CONNACK or an error).
pub async fn tls_client_with(
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
        match tokio::time::timeout(super::WAIT, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => return Ok((client, eventloop)),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("timeout".into()),
        }
    }
}

/// A TLS handshake with the listener at `addr`, trusting only `pki`'s CA (for `localhost`).
pub async fn handshake(addr: SocketAddr, pki: &Pki) -> Result<(), String> {
    use tokio_rustls::rustls::version::{TLS12, TLS13};
    handshake_with_versions(addr, pki, &[&TLS13, &TLS12]).await
}

/// [`handshake`] offering only these TLS versions.
pub async fn handshake_with_versions(
    addr: SocketAddr,
    pki: &Pki,
    versions: &[&'static tokio_rustls::rustls::SupportedProtocolVersion],
) -> Result<(), String> {
    let config = client_config_with(pki, versions, false, None);
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = "localhost".try_into().expect("server name");
    let handshake = connector.connect(name, tcp);
    match tokio::time::timeout(super::WAIT, handshake).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// Subscribes to `filter` and returns whether the SUBACK granted it.
pub async fn may_subscribe(
    client: &AsyncClient,
    events: &mut rumqttc::EventLoop,
    filter: &str,
) -> bool {
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        match tokio::time::timeout(super::WAIT, events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::SubAck(ack)))) => {
                return ack.return_codes
                    == [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)];
            }
            Ok(Ok(_)) => continue,
            other => panic!("no SUBACK for {filter}: {other:?}"),
        }
    }
}

/// A TLS client configuration trusting `pki`'s CA, offering only `version`, with or without
/// resuming sessions, without a client certificate.
pub fn client_config(
    pki: &Pki,
    version: &'static tokio_rustls::rustls::SupportedProtocolVersion,
    resume: bool,
) -> Arc<tokio_rustls::rustls::ClientConfig> {
    client_config_with(pki, &[version], resume, None)
}

/// A TLS client configuration trusting `pki`'s CA, offering `versions`, resuming sessions or
/// not, presenting this client certificate and key (PEM), if any.
pub fn client_config_with(
    pki: &Pki,
    versions: &[&'static tokio_rustls::rustls::SupportedProtocolVersion],
    resume: bool,
    cert: Option<&(String, String)>,
) -> Arc<tokio_rustls::rustls::ClientConfig> {
    use tokio_rustls::rustls::client::Resumption;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    let ca = pki.dir.path().join("ca.pem");
    for cert in switchboard_actors::transport::certificates(&ca).expect("CA") {
        roots.add(cert).expect("CA added");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            use tokio_rustls::rustls::pki_types::pem::PemObject;
            use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificate");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
    };
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Arc::new(config)
}

/// Connects over TLS with `config` (for `localhost`), sends CONNECT and reads the CONNACK (by
/// which time a TLS 1.3 server's session tickets have arrived); returns how the handshake went.
pub async fn mqtt_over_tls(
    addr: SocketAddr,
    config: &Arc<tokio_rustls::rustls::ClientConfig>,
    id: &str,
) -> tokio_rustls::rustls::HandshakeKind {
    let (kind, code) = mqtt_over_tls_answered(addr, config, id).await;
    assert_eq!(code, 0, "CONNACK return code");
    kind
}

/// [`mqtt_over_tls`], returning the CONNACK's return code too.
pub async fn mqtt_over_tls_answered(
    addr: SocketAddr,
    config: &Arc<tokio_rustls::rustls::ClientConfig>,
    id: &str,
) -> (tokio_rustls::rustls::HandshakeKind, u8) {
    mqtt_over_tls_result(addr, config, id)
        .await
        .expect("TLS and CONNACK")
}

/// [`mqtt_over_tls_answered`], with the TLS or read error (a refused handshake) as an `Err`.
pub async fn mqtt_over_tls_result(
    addr: SocketAddr,
    config: &Arc<tokio_rustls::rustls::ClientConfig>,
    id: &str,
) -> Result<(tokio_rustls::rustls::HandshakeKind, u8), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("TCP");
    let name = "localhost".try_into().expect("server name");
    let mut tls = tokio::time::timeout(super::WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .map_err(|e| e.to_string())?;
    // TLS 1.3: the server checks a client certificate after the client has finished; a refusal
    // comes as an alert on the first read.
    tls.write_all(&super::packets::connect(id, true, 60))
        .await
        .map_err(|e| e.to_string())?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(super::WAIT, tls.read_exact(&mut connack))
        .await
        .expect("CONNACK or an error in time")
        .map_err(|e| e.to_string())?;
    assert_eq!(connack[0], 0x20, "CONNACK");
    let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
    Ok((kind, connack[3]))
}
