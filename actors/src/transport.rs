//! How a [`ManagedConnection`](crate::ManagedConnection) reaches its broker: plain TCP (the
//! default), TLS over TCP, or any byte stream a [`Connector`] opens (an in-process pipe, say).

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A byte stream to a broker.
pub trait BrokerStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> BrokerStream for T {}

/// What a [`Connector`] opens.
pub type BoxedStream = Box<dyn BrokerStream>;

/// The future a [`Connector`] returns.
pub type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<BoxedStream>>>>;

/// Opens a byte stream to the broker, each time the connection (re)connects; the connection's
/// `host` and `port` are not used then.
#[derive(Clone)]
pub struct Connector(Arc<dyn Fn() -> ConnectFuture + Send + Sync>);

impl Connector {
    /// A connector that calls `open` for every connection attempt.
    pub fn new(open: impl Fn() -> ConnectFuture + Send + Sync + 'static) -> Self {
        Connector(Arc::new(open))
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Connector")
    }
}

/// TLS towards the broker: what to trust and, optionally, the certificate to present.
#[derive(Clone)]
pub struct TlsOptions {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsOptions")
    }
}

/// Why TLS options could not be built from files.
#[derive(Debug, Error)]
pub enum TlsOptionsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// A PEM file held no certificate, or no key.
    #[error("{0}")]
    Missing(String),
    /// rustls refused the certificates or the key.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

impl TlsOptions {
    /// Trusts the CA certificates in `ca_file` (PEM); with `client` = (certificate chain, key)
    /// PEM files, presents that certificate to the broker.
    pub fn from_files(
        ca_file: &Path,
        client: Option<(&Path, &Path)>,
    ) -> Result<Self, TlsOptionsError> {
        let mut roots = RootCertStore::empty();
        for ca in certificates(ca_file)? {
            roots
                .add(ca)
                .map_err(|e| TlsOptionsError::Rustls(e.to_string()))?;
        }
        // ring, named here rather than picked from crate features, as the broker does.
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsOptionsError::Rustls(e.to_string()))?
            .with_root_certificates(roots);
        let config = match client {
            Some((cert_file, key_file)) => builder
                .with_client_auth_cert(certificates(cert_file)?, private_key(key_file)?)
                .map_err(|e| TlsOptionsError::Rustls(e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        Ok(TlsOptions {
            config: Arc::new(config),
        })
    }

    /// Makes the TLS handshake over `stream` with a server whose certificate must be valid for
    /// `host` (a name or an IP address), e.g. after a protocol's plain-text greeting.
    pub async fn connect<S>(
        &self,
        host: &str,
        stream: S,
    ) -> io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsOptionsError> {
    std::fs::read(path).map_err(|source| TlsOptionsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The certificates of a PEM file (at least one). The broker's TLS listener reads its files with
/// it too.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsOptionsError> {
    let pem = read_pem(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsOptionsError::Read {
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsOptionsError::Missing(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsOptionsError> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsOptionsError::Read {
            path: path.display().to_string(),
            source,
        })?
        .ok_or_else(|| TlsOptionsError::Missing(format!("no private key in {}", path.display())))
}

/// How a managed connection reaches its broker.
#[derive(Debug, Clone, Default)]
pub enum Transport {
    /// TCP to `host:port` (the default).
    #[default]
    Tcp,
    /// TLS over TCP to `host:port`; the broker's certificate must be valid for `host`.
    Tls(TlsOptions),
    /// Whatever this connector opens.
    Custom(Connector),
}

/// The two halves of an open stream, as the connection reads and writes them.
pub(crate) type Halves = (Box<dyn AsyncRead + Unpin>, Box<dyn AsyncWrite + Unpin>);

/// Opens the stream `transport` describes (without a timeout: the caller adds one).
pub(crate) async fn open(transport: Transport, host: String, port: u16) -> io::Result<Halves> {
    match transport {
        Transport::Tcp => {
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            let _ = stream.set_nodelay(true);
            let (read, write) = stream.into_split();
            Ok((Box::new(read), Box::new(write)))
        }
        Transport::Tls(tls) => {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            let _ = stream.set_nodelay(true);
            let stream = TlsConnector::from(tls.config).connect(name, stream).await?;
            let (read, write) = tokio::io::split(stream);
            Ok((Box::new(read), Box::new(write)))
        }
        Transport::Custom(connector) => {
            let stream = (connector.0)().await?;
            let (read, write) = tokio::io::split(stream);
            Ok((Box::new(read), Box::new(write)))
        }
    }
}
