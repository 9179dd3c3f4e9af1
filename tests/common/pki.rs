//! Certificates for TLS tests (rcgen): a CA, a server certificate for `localhost` and
//! 127.0.0.1, and a client certificate, as PEM files in a temporary directory.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};

/// The files (`ca.pem`, `server.pem`, `server.key`) and what a client needs.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    /// A client certificate and its key, PEM, signed by the CA.
    pub client: (String, String),
}

impl Pki {
    /// A CA, a server certificate for `localhost` and 127.0.0.1 and a client certificate (for
    /// `client_cn`), written as PEM files.
    pub fn new(client_cn: &str) -> Pki {
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
        let server = server_params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server cert");

        let client_key = KeyPair::generate().expect("key");
        let mut client_params =
            CertificateParams::new(vec![client_cn.to_string()]).expect("params");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params
            .signed_by(&client_key, &ca, &ca_key)
            .expect("client cert");

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write");
        std::fs::write(dir.path().join("server.pem"), server.pem()).expect("write");
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).expect("write");
        Pki {
            ca_pem: ca.pem(),
            client: (client.pem(), client_key.serialize_pem()),
            dir,
        }
    }
}
