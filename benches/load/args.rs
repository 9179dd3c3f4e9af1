//! Command line of the load harness.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// A traffic pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N publishers, each to its own subscriber.
    Pairs,
    /// N publishers to one subscriber (`bench/+`).
    FanIn,
    /// One publisher to N subscribers.
    FanOut,
    /// N publishers over many topics, subscribers on `+` and `#` filters (plus unrelated ones).
    Wildcard,
    /// `--topics` retained messages, then N clients subscribing to them all at once.
    Retained,
    /// Connections per second: CONNECT, CONNACK, DISCONNECT, with `--concurrency` at a time.
    ConnectStorm,
    /// N idle connections, each with one subscription; broker RSS per connection (needs the
    /// broker's pid).
    Idle,
    /// The seed's pattern: N devices answering status requests that an app sends at `--rate`
    /// requests/s (default 1000), each device also publishing `--telemetry-rate` messages/s;
    /// latency is the request's round trip.
    Fleet,
}

/// Load-test an MQTT broker. Without `--addr`, starts the `switchboard` release binary on a free
/// loopback port and measures it.
#[derive(Debug, Clone, Parser)]
#[command(name = "load")]
pub struct Args {
    /// Traffic pattern.
    #[arg(long, value_enum, default_value = "pairs")]
    pub scenario: Scenario,
    /// Clients (publishers and/or subscribers, per scenario).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// MQTT version the clients speak: 3.1.1 or 5 (MQTT 5 publishes carry no properties).
    #[arg(long, default_value = "3.1.1", value_parser = ["3.1.1", "5"])]
    pub mqtt: String,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes (at least 20: publisher, sequence number and timestamp travel in it).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Open loop: total publish rate in messages/s (fleet: status requests/s), shared evenly by
    /// the publishers, each sending on its own timetable with its phase spread over one period.
    /// Without it, closed loop with `--window`.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Closed loop: messages per publisher published and not yet delivered to every subscriber.
    #[arg(long, default_value_t = 100)]
    pub window: u64,
    /// Closed loop: a publisher also keeps at most `--window` messages unacknowledged by the
    /// broker (PUBACK, or PUBCOMP at QoS 2), as a device that waits for its PUBACK does. Without
    /// it only delivery counts: with `[persistence]` a PUBACK waits for the store and delivery
    /// does not, so the PUBACK's wait is not on the path measured.
    #[arg(long)]
    pub window_acked: bool,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Broker to test; default: start `switchboard` on a free port.
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Pid of the broker at `--addr`, for its CPU and RSS.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Flow scenarios: subscribers connect here instead of `--addr` (publishers on a site broker,
    /// subscribers on the central broker it bridges to).
    #[arg(long)]
    pub subscribe_addr: Option<SocketAddr>,
    /// Pid of a second broker (the other end of a bridge) whose CPU counts as the broker's.
    #[arg(long)]
    pub peer_pid: Option<u32>,
    /// Name of the broker in reports.
    #[arg(long, default_value = "switchboard")]
    pub label: String,
    /// Fleet: telemetry messages per second from each device (0: none).
    #[arg(long, default_value_t = 0.2)]
    pub telemetry_rate: f64,
    /// Topics: retained messages (retained) or topics per publisher (wildcard).
    #[arg(long, default_value_t = 1000)]
    pub topics: usize,
    /// Connections in progress at once (connect-storm, idle, --idle-beside).
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Idle connections (each subscribed to a topic of its own) opened before the scenario and
    /// kept open through it, to measure what a quiet fleet costs the traffic beside it.
    #[arg(long, default_value_t = 0)]
    pub idle_beside: usize,
    /// Subscription changes per second made beside the scenario by one more client (a
    /// SUBSCRIBE, then an UNSUBSCRIBE, each waiting for its ack), as devices that come and go
    /// make them (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub churn_beside: f64,
    /// connect-storm and the message scenarios (pairs, fan-in, fan-out, wildcard, fleet):
    /// connect over TLS (1.3, server name `localhost`), trusting the CA certificates in this PEM
    /// file.
    #[arg(long, value_name = "CA_FILE")]
    pub tls_ca: Option<PathBuf>,
    /// With `--tls-ca`: resume earlier TLS sessions (as devices reconnecting after a network
    /// outage do); without it every connection makes a full handshake (as after a broker
    /// restart).
    #[arg(long)]
    pub tls_resume: bool,
    /// connect-storm: each connection first sends a PROXY protocol v2 header naming a client
    /// address of its own (in 10.0.0.0/16), as a load balancer does, for a listener with
    /// `proxy_protocol = true`.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// connect-storm: send the CONNECT and close the connection at once (over TLS with
    /// `--tls-ca`: close_notify, then end of stream), without waiting for the CONNACK (a flood
    /// of guesses that does not wait for answers); each CONNECT sent counts as an operation.
    #[arg(long)]
    pub close_at_once: bool,
    /// connect-storm with `--close-at-once`: over WebSocket at this path (the upgrade offering
    /// `mqtt`, the CONNECT in one binary frame, then a Close frame and end of stream), as a
    /// WebSocket client that gives up closes.
    #[arg(
        long,
        value_name = "PATH",
        requires = "close_at_once",
        conflicts_with = "tls_ca"
    )]
    pub ws_path: Option<String>,
    /// Connection scenarios on loopback: every connection from this one loopback address
    /// (e.g. 127.0.0.200) instead of spread over 127.0.0.2-65, as a single attacker or many
    /// devices behind one NAT are to the broker.
    #[arg(long, value_name = "IPV4")]
    pub source_address: Option<std::net::Ipv4Addr>,
    /// Subscribers keep a persistent session (clean session 0): with `[persistence]`, their
    /// QoS 1/2 messages are kept on disk. In the fleet every client subscribes, so the devices,
    /// the app and the telemetry collector all keep one.
    #[arg(long)]
    pub persistent_subscribers: bool,
    /// Every client connects with this user name (a broker with a password file), and
    /// `--password`.
    #[arg(long, requires = "password")]
    pub username: Option<String>,
    /// The password of `--username`.
    #[arg(long, requires = "username")]
    pub password: Option<String>,
    /// With `--username U`: connect as `U0`, `U1`, ... `U<N-1>` in turn, all with `--password`
    /// (a fleet of devices with users of their own, each first seen by the broker); 0: as `U`.
    #[arg(long, default_value_t = 0, requires = "username")]
    pub users: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Append the report as a JSON line to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Instead of running: read JSON lines from this file and print a comparison table.
    #[arg(long)]
    pub table: Option<PathBuf>,
    /// With `--table`: also draw a bar chart of delivered msgs/s to this SVG file.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}
