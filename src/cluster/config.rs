//! `[cluster]`: the nodes that share their traffic through NATS.

use serde::Deserialize;

use super::nats::{parse_urls, NatsServer};
use super::subjects::valid_token;
use crate::config::ConfigError;

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
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: None,
            node: None,
            name: "switchboard".to_string(),
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
    }

    #[test]
    fn the_default_node_name_is_one_token() {
        let name = ClusterConfig::default().node_name(1883);
        assert!(valid_token(&name), "{name}");
        assert!(name.ends_with("-1883"));
    }
}
