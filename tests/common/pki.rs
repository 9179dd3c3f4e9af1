//! Certificates for TLS tests (rcgen): a CA, a server certificate for `localhost` and
//! 127.0.0.1, client certificates, and revocation lists, as PEM files in a temporary directory.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, RevokedCertParams, SanType,
    SerialNumber,
};

/// The files (`ca.pem`, `server.pem`, `server.key`; `crl-none.pem`, a revocation list that
/// revokes nothing, and `crl-stolen.pem`, one that revokes [`Pki::stolen`]) and what clients
/// need.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    /// A client certificate (Common Name: the name given to [`Pki::new`]) and its key, PEM,
    /// signed by the CA.
    pub client: (String, String),
    /// A client certificate without a Common Name, and its key.
    pub nameless: (String, String),
    /// A client certificate (Common Name `stolen-gate`) that `crl-stolen.pem` revokes, and its
    /// key.
    pub stolen: (String, String),
    /// When the server certificate expires (notAfter), in Unix seconds.
    pub server_not_after: i64,
}

/// A client certificate signed by the CA: its Common Name if any, and its serial number.
fn client_certificate(
    common_name: Option<&str>,
    serial: u64,
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = DistinguishedName::new();
    if let Some(name) = common_name {
        params.distinguished_name.push(DnType::CommonName, name);
    }
    params.serial_number = Some(SerialNumber::from(serial));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, ca, ca_key).expect("client cert");
    (cert.pem(), key.serialize_pem())
}

/// A revocation list from the CA, revoking these serial numbers.
fn revocation_list(revoked: &[u64], ca: &rcgen::Certificate, ca_key: &KeyPair) -> String {
    let now = time::OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from(*serial),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params
        .signed_by(ca, ca_key)
        .expect("CRL")
        .pem()
        .expect("CRL PEM")
}

impl Pki {
    /// Makes `tls` serve this PKI's server certificate, and ask clients for a certificate
    /// signed by its CA if `client_certificates`; the TLS port itself is left to the caller.
    pub fn serve(&self, tls: &mut switchboard::config::TlsConfig, client_certificates: bool) {
        tls.cert_file = Some(self.dir.path().join("server.pem"));
        tls.key_file = Some(self.dir.path().join("server.key"));
        if client_certificates {
            tls.client_ca_file = Some(self.dir.path().join("ca.pem"));
        }
    }

    /// A CA, a server certificate for `localhost` and 127.0.0.1 and a client certificate (for
    /// `client_cn`), written as PEM files.
    pub fn new(client_cn: &str) -> Pki {
        Pki::with_server_days(client_cn, 365)
    }

    /// [`Pki::new`] with a server certificate that expires in `days` days.
    pub fn with_server_days(client_cn: &str, days: i64) -> Pki {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "switchboard test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA");

        let server_key = KeyPair::generate().expect("key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        server_params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("whole second");
        server_params.not_before = now - time::Duration::days(1);
        server_params.not_after = now + time::Duration::days(days);
        let server = server_params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server cert");

        let client = client_certificate(Some(client_cn), 1001, &ca, &ca_key);
        let nameless = client_certificate(None, 1002, &ca, &ca_key);
        let stolen = client_certificate(Some("stolen-gate"), 1003, &ca, &ca_key);

        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write");
        };
        write("ca.pem", &ca.pem());
        write("server.pem", &server.pem());
        write("server.key", &server_key.serialize_pem());
        write("crl-none.pem", &revocation_list(&[], &ca, &ca_key));
        write("crl-stolen.pem", &revocation_list(&[1003], &ca, &ca_key));
        Pki {
            ca_pem: ca.pem(),
            client,
            nameless,
            stolen,
            server_not_after: (now + time::Duration::days(days)).unix_timestamp(),
            dir,
        }
    }
}
