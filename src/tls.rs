//! The TLS listeners' configuration: certificates and keys from PEM files, optional client
//! certificate authentication (rustls), re-read on demand (the binary does it on SIGHUP) so that
//! a renewed certificate is served without a restart.

use std::path::Path;
use std::sync::{Arc, RwLock};

use thiserror::Error;
use tokio_rustls::rustls::crypto::ring::Ticketer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer,
};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{version, RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use switchboard_actors::transport::TlsOptionsError;

use crate::config::{TlsConfig, TlsVersion};

/// Why the TLS listener could not be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A PEM file held no certificate or no key.
    #[error("{0}")]
    Missing(String),
    /// rustls refused the certificates or key.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

impl From<TlsOptionsError> for TlsError {
    fn from(error: TlsOptionsError) -> Self {
        match error {
            TlsOptionsError::Read { path, source } => TlsError::Read { path, source },
            TlsOptionsError::Missing(what) => TlsError::Missing(what),
            TlsOptionsError::Rustls(why) => TlsError::Rustls(why),
        }
    }
}

/// The PEM files are read as the bridges' TLS reads them (`switchboard_actors::transport`).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    Ok(switchboard_actors::transport::certificates(path)?)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    Ok(switchboard_actors::transport::private_key(path)?)
}

/// The certificate revocation lists of a PEM file (at least one).
fn revocation_lists(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let read = |e: tokio_rustls::rustls::pki_types::pem::Error| TlsError::Read {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    };
    let lists = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if lists.is_empty() {
        return Err(TlsError::Missing(format!(
            "no certificate revocation list in {}",
            path.display()
        )));
    }
    Ok(lists)
}

/// The subject Common Name of a client's certificate (the first of its chain), if it has one
/// that is UTF-8: its identity with `tls.use_identity_as_username`.
pub fn certificate_identity(chain: &[CertificateDer<'_>]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
    let common_name = certificate.subject().iter_common_name().next()?;
    common_name.as_str().ok().map(str::to_owned)
}

/// What the log and `/metrics` say of a server certificate: the first of `cert_file`'s chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// Its subject, e.g. `CN=broker.example`.
    pub subject: String,
    /// The end of its validity (notAfter), in Unix seconds.
    pub not_after: i64,
}

impl CertificateSummary {
    /// Reads the subject and notAfter of the first certificate of `chain`.
    fn of(chain: &[CertificateDer<'_>]) -> Option<CertificateSummary> {
        let (_, certificate) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
        Some(CertificateSummary {
            subject: certificate.subject().to_string(),
            not_after: certificate.validity().not_after.timestamp(),
        })
    }

    /// Logs it: a warning when it has expired or expires within [`EXPIRY_WARNING_DAYS`].
    fn log(&self, event: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let days_left = (self.not_after - now).div_euclid(86_400);
        let subject = self.subject.as_str();
        let not_after = self.not_after;
        if self.not_after <= now {
            warn!(subject, not_after, "{event}: the TLS server certificate has EXPIRED; clients that check it refuse the broker");
        } else if days_left < EXPIRY_WARNING_DAYS {
            warn!(
                subject,
                not_after,
                days_left,
                "{event}: the TLS server certificate expires soon; renew it (new files are taken when they change on disk, see tls.watch_interval, or on SIGHUP)"
            );
        } else {
            info!(
                subject,
                not_after, days_left, "{event}: TLS server certificate"
            );
        }
    }
}

/// A server certificate with fewer days left than this is logged as a warning.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// The rustls configuration and what it serves.
struct Current {
    config: Arc<ServerConfig>,
    certificate: Option<CertificateSummary>,
}

/// The server side of TLS, shared by the MQTT and `wss://` listeners: the rustls configuration
/// built from `[tls]`'s files, replaced whole by [`ServerTls::reload`]. A handshake uses the
/// configuration current when it starts; connections already open keep theirs.
pub struct ServerTls {
    /// Where the files are: `[tls]` as the broker started with it.
    files: TlsConfig,
    /// What new handshakes use.
    current: RwLock<Current>,
}

impl ServerTls {
    /// Reads `[tls]`'s files (which must include `cert_file` and `key_file`).
    pub fn load(files: &TlsConfig) -> Result<ServerTls, TlsError> {
        let current = server_config(files)?;
        if let Some(certificate) = &current.certificate {
            certificate.log("loaded");
        }
        Ok(ServerTls {
            current: RwLock::new(current),
            files: files.clone(),
        })
    }

    /// The server certificate in use (`None` if it could not be parsed for the summary; the
    /// handshakes do not need that).
    pub fn certificate(&self) -> Option<CertificateSummary> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.certificate.clone()
    }

    /// Whether the client certificate's Common Name is the client's user name
    /// (`tls.use_identity_as_username`).
    pub fn identity_as_username(&self) -> bool {
        self.files.use_identity_as_username
    }

    /// The files a reload reads: the certificate, the key, and the client CA and revocation
    /// lists where configured.
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        let files = &self.files;
        [
            &files.cert_file,
            &files.key_file,
            &files.client_ca_file,
            &files.crl_file,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    /// An acceptor for one connection, with the current certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        // A poisoned lock only means a reload panicked mid-swap; the Arc in it is whole.
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(Arc::clone(&current.config))
    }

    /// Reads the certificate, key, client CA and revocation list files again, from the same
    /// paths, and uses them (with new session ticket keys) for the handshakes that follow. On
    /// an error nothing changes: the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = server_config(&self.files)?;
        if let Some(certificate) = &fresh.certificate {
            certificate.log("reloaded");
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// Builds the rustls configuration for `[tls]` (which must have `cert_file` and `key_file`).
fn server_config(config: &TlsConfig) -> Result<Current, TlsError> {
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        return Err(TlsError::Missing(
            "tls.cert_file and tls.key_file are required".into(),
        ));
    };
    // ring, named here rather than picked from crate features, so that no other crate's choice
    // of provider changes ours. rustls 0.23.5 and later ignore an IP address sent as SNI (which
    // RFC 6066 forbids, but OpenSSL-based clients connecting by IP send): 0.22 refused those
    // handshakes.
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let versions: &[&'static SupportedProtocolVersion] = match config.min_version {
        TlsVersion::Tls12 => &[&version::TLS13, &version::TLS12],
        TlsVersion::Tls13 => &[&version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &config.client_ca_file {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(ca_file)? {
                roots.add(ca).map_err(|e| TlsError::Rustls(e.to_string()))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crl_file) = &config.crl_file {
                // The client's own certificate is checked, as OpenSSL's CRL check (Mosquitto's
                // `crlfile`) does; its issuer must have a list here.
                verifier = verifier
                    .with_crls(revocation_lists(crl_file)?)
                    .only_check_end_entity_revocation();
            }
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let chain = certificates(cert_file)?;
    let certificate = CertificateSummary::of(&chain);
    let mut server = builder
        .with_single_cert(chain, private_key(key_file)?)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    // Session tickets: a client that reconnects resumes its session without a new certificate
    // signature (TLS 1.3) or key exchange (TLS 1.2), however many clients there are (rustls's
    // server-side session cache holds 256). Random keys, rotated every 6 hours, and new ones
    // with every reload: a resumed session skips the certificate checks, so after a SIGHUP that
    // brought a revocation list (or a new CA) every client makes a full handshake again.
    server.ticketer = Ticketer::new().map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(Current {
        config: Arc::new(server),
        certificate,
    })
}
