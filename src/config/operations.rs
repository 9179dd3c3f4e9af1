//! The settings of operating the broker: `[http]`, `[websocket]`, `[log]` and `[sys]`.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

/// `[websocket]` settings: MQTT over WebSocket (subprotocol `mqtt`), off unless `port` (or
/// `tls_port`) is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSocketListenerConfig {
    /// Port of the `ws://` listener (8083 is usual; 0 picks a free one). No default: off.
    pub port: Option<u16>,
    /// Port of the `wss://` listener, with `[tls]`'s certificate and key. No default: off.
    pub tls_port: Option<u16>,
    /// Address of both. Default: `listener.bind`.
    pub bind: Option<IpAddr>,
    /// The HTTP path of the WebSocket endpoint. Default `/mqtt`.
    pub path: String,
    /// The connections of both start with a PROXY protocol header, before TLS and the HTTP
    /// upgrade (as `listener.proxy_protocol`). Default false.
    pub proxy_protocol: bool,
}

impl Default for WebSocketListenerConfig {
    fn default() -> Self {
        WebSocketListenerConfig {
            port: None,
            tls_port: None,
            bind: None,
            path: "/mqtt".into(),
            proxy_protocol: false,
        }
    }
}

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One line of text per event (the default).
    #[default]
    Text,
    /// One JSON object per line, the event's fields at the top level (for log shippers).
    Json,
}

/// `[log]` settings of the binary (`RUST_LOG` still sets the levels).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `"text"` (default) or `"json"`.
    pub format: LogFormat,
    /// Lines that may wait for the thread writing the log to standard error. When it falls
    /// behind (standard error not read, or read slower than the broker logs), lines past this
    /// are dropped, counted in `switchboard_log_lines_dropped_total` and reported in a WARN
    /// line once lines go out again: the broker never waits for its log. Lines still queued
    /// when the process is killed are lost. 0: no queue, each thread writes its own lines and
    /// waits (every line is out before the broker goes on; a reader that stops stops the
    /// broker). Default 16,384.
    pub buffer_lines: usize,
}

/// `log.buffer_lines` by default: a few MB of lines at most, and room for the lifecycle lines
/// of a connect storm's first 170 ms or so (two lines a connection, 47,000 connections a second).
pub const DEFAULT_LOG_BUFFER_LINES: usize = 16_384;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            buffer_lines: DEFAULT_LOG_BUFFER_LINES,
        }
    }
}

/// `[http]` settings: the HTTP server of the dashboard (`/`), `/metrics` and the API under
/// `/api/v1`. On by default, on loopback.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Whether the HTTP server runs. Default true.
    pub enabled: bool,
    /// Address to bind. Default 127.0.0.1.
    pub bind: IpAddr,
    /// Port; 0 picks a free one (the bound address is logged). Default 8080.
    pub port: u16,
    /// Bearer token that `/metrics`, the admin API and the dashboard's event stream require
    /// (`Authorization: Bearer ...`); the health checks and the page itself do not. Required
    /// when `bind` is not a loopback address. Default: none.
    pub token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            token: None,
        }
    }
}

impl std::fmt::Debug for HttpConfig {
    /// Leaves the token out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("enabled", &self.enabled)
            .field("bind", &self.bind)
            .field("port", &self.port)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// `[sys]` settings: the broker's own statistics, published under `$SYS/broker/...` with
/// Mosquitto's topic names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// How often the `$SYS` topics are published (retained). Default 10 s; `"0s"` turns them
    /// off.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig {
            interval: Duration::from_secs(10),
        }
    }
}
