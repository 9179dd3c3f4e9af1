//! A connection of the message scenarios: plain TCP, or TLS 1.3 with `--tls-ca` (devices in the
//! field talk to their broker over TLS, so its cost belongs in the figures).

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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

/// One client connection.
pub enum Conn {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    /// Waits until the socket has bytes to read. Over TLS, the caller has read until its read
    /// would wait, so nothing decrypted is left behind in the TLS layer.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(tcp) => tcp.readable().await,
            Conn::Tls(tls) => tls.get_ref().0.readable().await,
        }
    }
}

/// TCP (with `TCP_NODELAY`), TLS if [`use_tls`] was called, then CONNECT and CONNACK with the
/// clean session flag as given (see [`wire::handshake_with`]).
pub async fn handshake(addr: std::net::SocketAddr, id: &str, clean: bool) -> io::Result<Conn> {
    let Some(tls) = TLS.get() else {
        return Ok(Conn::Tcp(wire::handshake_with(addr, id, clean).await?));
    };
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")
        .map_err(io::Error::other)?;
    let stream = tls.connect(name, tcp).await?;
    let stream = wire::mqtt_connect(stream, id, clean).await?;
    Ok(Conn::Tls(Box::new(stream)))
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(tcp) => Pin::new(tcp).poll_flush(cx),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Conn::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
