//! `[[bridge]]`: the settings of one bridge to a remote broker, and their checks at start-up
//! (and at each reload), with errors that name the bridge and the key.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use switchboard_actors::{BrokerAddress, TlsOptions};

use crate::config::ConfigError;

/// The protocol spoken to the remote broker (`protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum BridgeProtocol {
    /// MQTT 3.1.1, with the bridge bit in the CONNECT protocol level (0x84).
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5, with No Local and Retain As Published on every remote subscription.
    #[serde(rename = "5")]
    V5,
}

/// Which way a topic pattern's messages go (`topics[].direction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Local messages that match go to the remote.
    Out,
    /// Remote messages that match come to this broker.
    In,
    /// Both ways.
    Both,
}

impl Direction {
    /// Whether local messages go out.
    pub fn outgoing(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    /// Whether remote messages come in.
    pub fn incoming(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// What a full queue for the remote does (`queue_overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BridgeOverflow {
    /// Drop the oldest queued message (counted).
    #[default]
    DropOldest,
    /// Drop the new message (counted).
    DropNewest,
}

/// One `topics` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTopic {
    /// A topic filter, without the prefixes.
    pub pattern: String,
    /// Which way its messages go.
    pub direction: Direction,
    /// The QoS of the bridge's subscription (local for `out`, remote for `in`). Default 0.
    #[serde(default)]
    pub qos: u8,
    /// Put before the pattern on this broker. Default empty.
    #[serde(default)]
    pub local_prefix: String,
    /// Put before the pattern on the remote broker. Default empty.
    #[serde(default)]
    pub remote_prefix: String,
}

/// `tls = { ... }`: TLS towards the remote.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTls {
    /// CA certificates (PEM) that the remote's certificate must chain to.
    pub ca_file: PathBuf,
    /// A client certificate chain (PEM) to present; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM); needs `cert_file`.
    pub key_file: Option<PathBuf>,
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(60)
}

fn default_max_queued() -> usize {
    10_000
}

fn default_max_inflight() -> u16 {
    16
}

fn default_reconnect_initial() -> Duration {
    Duration::from_millis(500)
}

fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}

/// One `[[bridge]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Names the bridge in logs, `$SYS`, metrics and the API; letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The remote broker, `host:port` (`[v6 address]:port` for IPv6); or several, an array of
    /// them: the bridge connects to the first it reaches, and on losing it tries that one, then
    /// the others in turn.
    #[serde(deserialize_with = "one_or_several")]
    pub address: Vec<String>,
    /// With several `address`es: `false` (default, as Mosquitto's): the first is the main
    /// broker, and while the bridge is on another it looks every `reconnect_max` whether the
    /// first answers again and goes back to it; `true`: the brokers are equals, and the bridge
    /// stays on the one it reached until that one goes (the nodes of a cluster).
    #[serde(default)]
    pub round_robin: bool,
    /// `"3.1.1"` (default) or `"5"`.
    #[serde(default)]
    pub protocol: BridgeProtocol,
    /// The client id at the remote. Default `<hostname>.<name>`.
    pub client_id: Option<String>,
    /// Ask the remote for a clean session. Default false: the remote keeps the bridge's
    /// subscriptions, and queues what matches them, while the link is down.
    #[serde(default)]
    pub clean_session: bool,
    /// Keep-alive towards the remote. Default 60 s.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// User name at the remote.
    pub username: Option<String>,
    /// A file whose first line is the password at the remote (needs `username`).
    pub password_file: Option<PathBuf>,
    /// TLS towards the remote.
    pub tls: Option<BridgeTls>,
    /// What goes which way.
    pub topics: Vec<BridgeTopic>,
    /// Most QoS 1/2 messages queued for the remote (queued plus in flight). Default 10,000.
    #[serde(default = "default_max_queued")]
    pub max_queued_messages: usize,
    /// What a full queue does: `"drop_oldest"` (default) or `"drop_newest"`.
    #[serde(default)]
    pub queue_overflow: BridgeOverflow,
    /// QoS 1/2 messages sent to the remote and not yet acknowledged. Default 16.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// First delay before reconnecting. Default 500 ms; doubles up to `reconnect_max`, with jitter.
    #[serde(default = "default_reconnect_initial", with = "humantime_serde")]
    pub reconnect_initial: Duration,
    /// Longest delay between reconnect attempts. Default 30 s.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
}

/// What a checked bridge needs beyond its settings: read once from the files it names.
#[derive(Debug, Clone)]
pub struct BridgeSecrets {
    /// The password from `password_file`.
    pub password: Option<String>,
    /// TLS towards the remote, from `tls`.
    pub tls: Option<TlsOptions>,
}

/// An error about one key of one bridge.
fn invalid(bridge: &str, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Bridge {
        bridge: bridge.to_string(),
        key: key.into(),
        message: message.into(),
    }
}

/// Whether `name` may name a bridge: it is used in file names, topics and client ids.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `address`: a string, or an array of strings.
fn one_or_several<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "`host:port`, or an array of them")]
    enum OneOrSeveral {
        One(String),
        Several(Vec<String>),
    }
    Ok(match OneOrSeveral::deserialize(deserializer)? {
        OneOrSeveral::One(address) => vec![address],
        OneOrSeveral::Several(addresses) => addresses,
    })
}

/// This machine's host name, for the default client id.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match (ok, std::str::from_utf8(&buf[..end])) {
        (true, Ok(name)) if !name.is_empty() => name.to_string(),
        _ => "switchboard".to_string(),
    }
}

impl BridgeConfig {
    /// The remote brokers of `address`, in order; an error names the entry that is not
    /// `host:port`.
    pub fn brokers(&self) -> Result<Vec<BrokerAddress>, ConfigError> {
        if self.address.is_empty() {
            return Err(invalid(
                &self.name,
                "address",
                "an empty array; name a broker",
            ));
        }
        let several = self.address.len() > 1;
        self.address
            .iter()
            .enumerate()
            .map(|(i, address)| {
                BrokerAddress::parse(address).ok_or_else(|| {
                    let key = if several {
                        format!("address[{i}]")
                    } else {
                        "address".to_string()
                    };
                    invalid(&self.name, key, format!("`{address}` is not host:port"))
                })
            })
            .collect()
    }

    /// `address` as logs and the admin API show it: the brokers separated by commas.
    pub fn address_list(&self) -> String {
        self.address.join(", ")
    }

    /// The client id used at the remote.
    pub fn remote_client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("{}.{}", hostname(), self.name))
    }

    /// Checks every key and reads the files it names.
    pub fn check(&self) -> Result<BridgeSecrets, ConfigError> {
        let name = self.name.as_str();
        if !valid_name(name) {
            return Err(invalid(
                name,
                "name",
                "a bridge name is 1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
        self.brokers()?;
        if self.client_id.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(
                name,
                "client_id",
                "empty; leave it out for the default",
            ));
        }
        if self.keep_alive > Duration::from_secs(u64::from(u16::MAX)) {
            return Err(invalid(name, "keep_alive", "at most 65535 s"));
        }
        if self.max_queued_messages == 0 {
            return Err(invalid(name, "max_queued_messages", "at least 1"));
        }
        if self.max_inflight == 0 {
            return Err(invalid(name, "max_inflight", "at least 1"));
        }
        if self.reconnect_initial.is_zero() || self.reconnect_max < self.reconnect_initial {
            return Err(invalid(
                name,
                "reconnect_max",
                "reconnect_initial must be above 0 and reconnect_max at least reconnect_initial",
            ));
        }
        if self.topics.is_empty() {
            return Err(invalid(name, "topics", "a bridge needs at least one topic"));
        }
        for (i, topic) in self.topics.iter().enumerate() {
            check_topic(name, i, topic)?;
        }
        let password = match (&self.username, &self.password_file) {
            (None, Some(_)) => {
                return Err(invalid(name, "password_file", "needs `username`"));
            }
            (_, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        name,
                        "password_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let first = text.lines().next().unwrap_or("").trim_end_matches('\r');
                if first.is_empty() {
                    return Err(invalid(
                        name,
                        "password_file",
                        format!("{} has no password on its first line", path.display()),
                    ));
                }
                Some(first.to_string())
            }
            (_, None) => None,
        };
        let tls = match &self.tls {
            None => None,
            Some(tls) => {
                let client = match (&tls.cert_file, &tls.key_file) {
                    (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
                    (None, None) => None,
                    _ => return Err(invalid(name, "tls", "cert_file and key_file go together")),
                };
                let options = TlsOptions::from_files(&tls.ca_file, client)
                    .map_err(|e| invalid(name, "tls", e.to_string()))?;
                Some(options)
            }
        };
        Ok(BridgeSecrets { password, tls })
    }
}

/// Checks one `topics` entry.
fn check_topic(bridge: &str, index: usize, topic: &BridgeTopic) -> Result<(), ConfigError> {
    let key = |field: &str| format!("topics[{index}].{field}");
    if let Err(e) = crate::topic::validate_filter(&topic.pattern) {
        return Err(invalid(
            bridge,
            key("pattern"),
            format!("`{}` is not a valid topic filter: {e}", topic.pattern),
        ));
    }
    if topic.pattern.starts_with("$share/") {
        return Err(invalid(
            bridge,
            key("pattern"),
            "a shared subscription cannot be bridged",
        ));
    }
    if topic.qos > 2 {
        return Err(invalid(bridge, key("qos"), "0, 1 or 2"));
    }
    for (field, prefix) in [
        ("local_prefix", &topic.local_prefix),
        ("remote_prefix", &topic.remote_prefix),
    ] {
        if prefix.contains(['+', '#']) {
            return Err(invalid(
                bridge,
                key(field),
                format!("`{prefix}` has a wildcard; a prefix may not"),
            ));
        }
        let filter = format!("{prefix}{}", topic.pattern);
        if let Err(e) = crate::topic::validate_filter(&filter) {
            return Err(invalid(
                bridge,
                key(field),
                format!("`{filter}` (prefix and pattern) is not a valid topic filter: {e}"),
            ));
        }
    }
    Ok(())
}

/// For a parse error at `bridge[i].rest` in the TOML `text`: the name of bridge `i` (or its
/// position, if it has none) and `rest`.
pub fn name_the_bridge(text: &str, key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix("bridge[")?;
    let (index, rest) = rest.split_once(']')?;
    let index: usize = index.parse().ok()?;
    let rest = rest.strip_prefix('.').unwrap_or(rest);
    let value: toml::Value = toml::from_str(text).ok()?;
    let name = value
        .get("bridge")
        .and_then(|b| b.get(index))
        .and_then(|b| b.get("name"))
        .and_then(|n| n.as_str())
        .map_or_else(|| format!("#{}", index + 1), str::to_string);
    let rest = if rest.is_empty() { "." } else { rest };
    Some((name, rest.to_string()))
}

/// Checks a whole list of bridges: each one, and that names are unique.
pub fn check_all(bridges: &[BridgeConfig]) -> Result<Vec<BridgeSecrets>, ConfigError> {
    let mut secrets = Vec::with_capacity(bridges.len());
    for (i, bridge) in bridges.iter().enumerate() {
        if bridges[..i].iter().any(|b| b.name == bridge.name) {
            return Err(invalid(&bridge.name, "name", "two bridges have this name"));
        }
        secrets.push(bridge.check()?);
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(address: &str) -> Result<crate::Config, ConfigError> {
        crate::Config::from_toml(&format!(
            "[[bridge]]\nname = \"central\"\naddress = {address}\n\
             topics = [{{ pattern = \"a\", direction = \"in\" }}]\n"
        ))
    }

    #[test]
    fn an_address_is_one_broker_or_an_array_of_them() {
        let one = bridge("\"central.example:1883\"").expect("one");
        let brokers = one.bridge[0].brokers().expect("parsed");
        assert_eq!(brokers, [BrokerAddress::new("central.example", 1883)]);
        let two = bridge("[\"[::1]:8883\", \"b.example:1884\"]").expect("two");
        let brokers = two.bridge[0].brokers().expect("parsed");
        assert_eq!(
            brokers,
            [
                BrokerAddress::new("::1", 8883),
                BrokerAddress::new("b.example", 1884)
            ]
        );
        assert_eq!(two.bridge[0].address_list(), "[::1]:8883, b.example:1884");
        let err = bridge("[\"a:1\", \"b\"]")
            .expect_err("not host:port")
            .to_string();
        assert!(err.contains("`address[1]`: `b` is not host:port"), "{err}");
        let err = bridge("[]").expect_err("empty").to_string();
        assert!(err.contains("`address`: an empty array"), "{err}");
        let err = bridge("1883").expect_err("a number").to_string();
        assert!(err.contains("`host:port`, or an array of them"), "{err}");
    }

    #[test]
    fn the_default_client_id_is_the_host_name_dot_the_bridge_name() {
        let toml = "[[bridge]]\nname = \"central\"\naddress = \"h:1\"\n\
                    topics = [{ pattern = \"a\", direction = \"in\" }]\n";
        let config = crate::Config::from_toml(toml).expect("valid");
        let id = config.bridge[0].remote_client_id();
        assert_eq!(id, format!("{}.central", hostname()));
        assert!(id.len() > ".central".len(), "{id}");
    }

    #[test]
    fn names_are_safe_for_files_and_topics() {
        assert!(valid_name("central-1.eu_west"));
        for bad in ["", "a/b", "a+b", "a#", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
