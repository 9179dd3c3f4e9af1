//! A connection of the message scenarios: plain TCP, or TLS 1.3 with `--tls-ca` (devices in the
//! field talk to their broker over TLS, so its cost belongs in the figures).

use std::io;
use std::sync::OnceLock;

use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::wire;

/// The TLS client every message-scenario connection uses, set once from `--tls-ca`.
static TLS: OnceLock<tokio_rustls::TlsConnector> = OnceLock::new();

/// Makes every later [`handshake`] a TLS one, trusting `ca_file`.
pub fn use_tls(ca_file: &std::path::Path) -> Result<(), String> {
    let connector = tls_connector(ca_file, false)?;
    let _ = TLS.set(connector);
    Ok(())
}

/// TLS 1.3 to the broker, trusting the CA certificates of `ca_file` (PEM), for `localhost`,
/// resuming earlier sessions if `resume`.
pub fn tls_connector(
    ca_file: &std::path::Path,
    resume: bool,
) -> Result<tokio_rustls::TlsConnector, String> {
    use tokio_rustls::rustls::{version, ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    let certificates =
        switchboard_actors::transport::certificates(ca_file).map_err(|e| e.to_string())?;
    for certificate in certificates {
        roots.add(certificate).map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        // Full handshakes, as after a broker restart, when no earlier session can be resumed.
        config.resumption = tokio_rustls::rustls::client::Resumption::disabled();
    }
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// One client connection: plain TCP, or TLS (boxed: a TLS stream is large).
pub type Conn = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// Waits until the socket of `conn` has bytes to read. Over TLS, the caller has read until its
/// read would wait, so nothing decrypted is left behind in the TLS layer.
pub async fn readable(conn: &Conn) -> io::Result<()> {
    match conn {
        Either::Left(tcp) => tcp.readable().await,
        Either::Right(tls) => tls.get_ref().0.readable().await,
    }
}

/// TCP (with `TCP_NODELAY`), TLS if [`use_tls`] was called, then CONNECT and CONNACK with the
/// clean session flag as given (see [`wire::handshake_with`]).
pub async fn handshake(addr: std::net::SocketAddr, id: &str, clean: bool) -> io::Result<Conn> {
    let Some(tls) = TLS.get() else {
        return Ok(Either::Left(wire::handshake_with(addr, id, clean).await?));
    };
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")
        .map_err(io::Error::other)?;
    let stream = tls.connect(name, tcp).await?;
    let stream = wire::mqtt_connect(stream, id, clean).await?;
    Ok(Either::Right(Box::new(stream)))
}
