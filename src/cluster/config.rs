//! `[cluster]`: the nodes that share their traffic through NATS.

use std::time::Duration;

use serde::Deserialize;

use super::nats::{parse_urls, NatsServer};
use super::subjects::valid_token;
use crate::config::ConfigError;
use switchboard_actors::TlsOptions;

/// `[cluster]` settings. Without `nats_url`, the broker is on its own.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The NATS servers, `nats://[user:password@|token@]host[:port]`, several separated by
    /// commas (tried in turn). Unset: no cluster.
    pub nats_url: Option<String>,
    /// This node's name, unique in the cluster: letters, digits, `-` and `_`, at most 64.
    /// Default: the host name (cut to fit) and the MQTT port, e.g. `edge-7-1883`.
    pub node: Option<String>,
    /// The cluster's name: the first token of every NATS subject it uses, so that several
    /// clusters can share NATS servers. Default `switchboard`.
    pub name: String,
    /// TLS to the NATS servers (the keys of a bridge's `tls`): the CA their certificates chain
    /// to, and a client certificate for servers that verify clients. Their certificates must be
    /// valid for the host names (or addresses) of `nats_url`.
    pub tls: Option<crate::bridge::BridgeTls>,
    /// How long a SUBACK waits at most for the other nodes to forward the SUBSCRIBE's new
    /// filters to this node (so that a message published anywhere after the SUBACK reaches
    /// the subscriber). A node that lets the wait run out is not waited for again until it is
    /// heard from. `0s`: SUBACKs do not wait, and the other nodes forward a new filter a moment
    /// later. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub subscribe_wait: Duration,
    /// A node not heard from for this long (it crashed, or lost NATS, without a goodbye) is
    /// forgotten: its filters are dropped and no SUBACK waits for it, until it speaks again.
    /// Every node says it is alive three times per timeout. At least 100 ms; default `15s`.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: None,
            node: None,
            name: "switchboard".to_string(),
            tls: None,
            subscribe_wait: Duration::from_secs(2),
            node_timeout: Duration::from_secs(15),
        }
    }
}

impl ClusterConfig {
    /// The NATS servers, checked; `None` without `nats_url`.
    pub fn servers(&self) -> Result<Option<Vec<NatsServer>>, ConfigError> {
        let Some(urls) = &self.nats_url else {
            return Ok(None);
        };
        let servers = parse_urls(urls).map_err(|message| ConfigError::Invalid {
            key: "cluster.nats_url",
            message,
        })?;
        Ok(Some(servers))
    }

    /// Reads the files of `tls`, if set.
    pub fn tls_options(&self) -> Result<Option<TlsOptions>, ConfigError> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let invalid = |message: String| ConfigError::Invalid {
            key: "cluster.tls",
            message,
        };
        let client = match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => return Err(invalid("cert_file and key_file go together".into())),
        };
        TlsOptions::from_files(&tls.ca_file, client)
            .map(Some)
            .map_err(|e| invalid(e.to_string()))
    }

    /// Checks every key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.servers()?;
        let token = "1 to 64 letters, digits, '-' or '_'";
        if !valid_token(&self.name) {
            return Err(ConfigError::Invalid {
                key: "cluster.name",
                message: format!("must be {token}"),
            });
        }
        if self.node_timeout < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                key: "cluster.node_timeout",
                message: "must be at least 100ms".into(),
            });
        }
        if self.node.as_deref().is_some_and(|node| !valid_token(node)) {
            return Err(ConfigError::Invalid {
                key: "cluster.node",
                message: format!("must be {token}"),
            });
        }
        Ok(())
    }

    /// This node's name: `node`, or the host name and `port`.
    pub fn node_name(&self, port: u16) -> String {
        if let Some(node) = &self.node {
            return node.clone();
        }
        let host: String = crate::bridge::config::hostname()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(57)
            .collect();
        format!("{host}-{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls_are_checked() {
        let mut config = ClusterConfig {
            nats_url: Some("nats://127.0.0.1:4222".into()),
            ..ClusterConfig::default()
        };
        assert!(config.validate().is_ok());
        config.node = Some("a.b".into());
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("cluster.node"), "{error}");
        config.node = None;
        config.nats_url = Some("http://x".into());
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("cluster.nats_url"), "{error}");
        config.nats_url = None;
        config.node_timeout = Duration::ZERO;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("cluster.node_timeout"), "{error}");
    }

    #[test]
    fn tls_files_are_read_and_a_certificate_needs_its_key() {
        let mut config = ClusterConfig {
            tls: Some(crate::bridge::BridgeTls {
                ca_file: "/nonexistent/ca.pem".into(),
                cert_file: None,
                key_file: None,
            }),
            ..ClusterConfig::default()
        };
        let error = config.tls_options().unwrap_err().to_string();
        assert!(
            error.contains("cluster.tls") && error.contains("/nonexistent/ca.pem"),
            "{error}"
        );
        if let Some(tls) = &mut config.tls {
            tls.cert_file = Some("node.pem".into());
        }
        let error = config.tls_options().unwrap_err().to_string();
        assert!(error.contains("go together"), "{error}");
    }

    #[test]
    fn the_default_node_name_is_one_token() {
        let name = ClusterConfig::default().node_name(1883);
        assert!(valid_token(&name), "{name}");
        assert!(name.ends_with("-1883"));
    }
}
