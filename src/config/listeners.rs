//! The settings of what clients connect to: `[listener]`, `[tls]` and `[auth]`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[listener]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Address to bind. Default `127.0.0.1`.
    pub bind: IpAddr,
    /// TCP port; 0 picks a free one. Default 1883.
    pub port: u16,
    /// Worker threads running Sessions; 0 means one per core but one (at least one). Default 0.
    pub workers: usize,
    /// One listening socket per worker sharing the port (`SO_REUSEPORT`, Linux and BSDs): the
    /// kernel spreads connections over the workers by a hash of their addresses and each worker
    /// accepts its own, with no hand-off between threads (cheaper connects, for reconnect
    /// storms). `false`: one listener deals connections out to the workers in turn. Default
    /// false: placement in turn put the harness's publisher/subscriber pairs on one worker,
    /// which the hash does not (`docs/benchmarks.md`).
    pub reuse_port: bool,
    /// Every connection starts with a PROXY protocol header (HAProxy's, version 1 or 2), sent
    /// by the load balancer in front: the client's address it names stands for the
    /// connection's. A connection without one is refused. Only the proxy may reach such a
    /// listener: anyone who can may claim any address. Default false.
    pub proxy_protocol: bool,
    /// With `proxy_protocol`, behind a proxy that terminates TLS and checks client certificates:
    /// the Common Name of the certificate it verified (HAProxy's `send-proxy-v2-ssl-cn`) is the
    /// client's user name, as `tls.use_identity_as_username` makes it on the TLS listener; a
    /// connection whose header carries none is refused (CONNACK not authorised). Default false.
    pub use_identity_as_username: bool,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 1883,
            workers: 0,
            reuse_port: false,
            proxy_protocol: false,
            use_identity_as_username: false,
        }
    }
}

/// `[tls]` settings. The TLS listener exists when `port` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Port of the TLS listener (8883 is the usual one; 0 picks a free one). No default: no TLS.
    pub port: Option<u16>,
    /// Address of the TLS listener. Default: `listener.bind`.
    pub bind: Option<IpAddr>,
    /// Server certificate chain, PEM.
    pub cert_file: Option<PathBuf>,
    /// Server private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CA certificates, PEM: when set, clients must present a certificate signed by one of them.
    pub client_ca_file: Option<PathBuf>,
    /// Certificate revocation lists, PEM, from the CAs of `client_ca_file`: a client certificate
    /// they revoke fails the handshake, as does one whose issuer has no list here. Needs
    /// `client_ca_file`. Re-read on SIGHUP with the certificates.
    pub crl_file: Option<PathBuf>,
    /// The client certificate's subject Common Name is the client's user name (for the ACL and
    /// the connect interceptor); the CONNECT's user name and password are ignored, and a certificate
    /// without a Common Name is refused (CONNACK not authorised). Needs `client_ca_file`.
    /// Mosquitto's `use_identity_as_username`. Default: false.
    pub use_identity_as_username: bool,
    /// The oldest TLS version accepted: `"1.2"` (the default) or `"1.3"`. Mosquitto's
    /// `tls_version`.
    pub min_version: TlsVersion,
    /// The TLS listener's connections start with a PROXY protocol header, before the TLS
    /// handshake (as `listener.proxy_protocol`). Default false.
    pub proxy_protocol: bool,
    /// How often the broker looks whether the certificate, key, client CA or revocation list
    /// files changed (their modification time, size or inode: a renewal written in place, a
    /// `certbot` or Kubernetes symlink swap), and reloads them if so, as SIGHUP does. `"0s"`:
    /// only on SIGHUP. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            port: None,
            bind: None,
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            crl_file: None,
            use_identity_as_username: false,
            min_version: TlsVersion::default(),
            proxy_protocol: false,
            watch_interval: Duration::from_secs(60),
        }
    }
}

/// The oldest TLS version the TLS listeners accept (`tls.min_version`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default).
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// `[auth]` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A password file in Mosquitto's format (`mosquitto_passwd`, or `switchboard passwd`).
    /// Clients that send a user name must match it.
    pub password_file: Option<PathBuf>,
    /// An ACL file in Mosquitto's format (`user`, `topic`, `pattern` lines with `%u`/`%c`):
    /// denied publishes are dropped, denied subscriptions get SUBACK 0x80. No default (no ACL).
    pub acl_file: Option<PathBuf>,
    /// Whether clients without a user name may connect. Default: only when there is no password
    /// file and the listener is bound to a loopback address. Binding any other address without a
    /// password file needs `allow_anonymous = true` said explicitly.
    pub allow_anonymous: Option<bool>,
}

impl AuthConfig {
    /// Whether clients without a user name are let in, for a listener bound to `bind`.
    pub fn anonymous_allowed(&self, bind: IpAddr) -> bool {
        self.allow_anonymous
            .unwrap_or(self.password_file.is_none() && bind.is_loopback())
    }
}
