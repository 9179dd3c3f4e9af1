//! The seed's gate/radar scenario in one process: a broker on port 1234 with the four lifecycle
//! hooks, a gate barrier `1AB.ENTER.GATE` and a radar `1AB.ENTER.DETRD` as device actors, and the
//! server-side app that asks both for their status every 5 seconds, prints the responses, and
//! opens and closes the gate.
//!
//! ```text
//! cargo run --release --example gate_demo                 # every 5 s, until Ctrl-C
//! cargo run --release --example gate_demo -- --fast       # every 500 ms
//! cargo run --release --example gate_demo -- --cycles 3 --interval-ms 200 --port 0
//! ```
//!
//! While it runs, `mosquitto_sub -p 1234 -t 'detrd/#' -v` shows the traffic.

use std::collections::BTreeSet;
use std::time::Duration;

use actix::prelude::*;
use clap::Parser;
use switchboard::hooks::{
    ClientConnected, ClientDisconnected, ClientSubscribed, ClientUnsubscribed, LifecycleHooks,
};
use switchboard::{Broker, Config, ProtocolVersion};
use switchboard_actors::fleet::{
    command_topic, status_request_topic, status_response_topic, GateBarrier, GateCommand,
    RadarDetector,
};
use switchboard_actors::{
    ConnectionOptions, Consumer, DeviceActor, GetConnection, ManagedConnection, Publish, Publisher,
    QoS, Received, Request, Requester, Stop,
};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// The gate barrier's id.
pub const GATE_ID: &str = "1AB.ENTER.GATE";
/// The radar's id.
pub const RADAR_ID: &str = "1AB.ENTER.DETRD";

/// Command line of the demo.
#[derive(Debug, Parser)]
#[command(about = "Switchboard's gate/radar demo: broker, devices and app in one process")]
pub struct DemoOptions {
    /// Broker port (0 picks a free one).
    #[arg(long, default_value_t = 1234)]
    pub port: u16,
    /// Time between two status requests.
    #[arg(long, default_value_t = 5000)]
    pub interval_ms: u64,
    /// Shorthand for --interval-ms 500.
    #[arg(long)]
    pub fast: bool,
    /// Stop after this many cycles (0 = run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub cycles: u32,
    /// MQTT version the devices and the app speak: 3.1.1 or 5 (with 5, status requests carry a
    /// Response Topic and Correlation Data).
    #[arg(long, default_value = "3.1.1", value_parser = ["3.1.1", "5"])]
    pub mqtt: String,
}

/// What the demo saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DemoReport {
    /// Request cycles run.
    pub cycles: u32,
    /// Status requests answered.
    pub answered: u32,
    /// Status requests that timed out.
    pub timed_out: u32,
}

/// The four lifecycle hooks of the original broker, printed the way it printed them.
struct SeedHooks;

impl Actor for SeedHooks {
    type Context = Context<Self>;
}

impl Handler<ClientConnected> for SeedHooks {
    type Result = ();
    fn handle(&mut self, e: ClientConnected, _: &mut Context<Self>) {
        info!("{} ClientConnected", e.client_id);
    }
}

impl Handler<ClientDisconnected> for SeedHooks {
    type Result = ();
    fn handle(&mut self, e: ClientDisconnected, _: &mut Context<Self>) {
        info!("{} ClientDisconnected ({})", e.client_id, e.reason);
    }
}

impl Handler<ClientSubscribed> for SeedHooks {
    type Result = ();
    fn handle(&mut self, e: ClientSubscribed, _: &mut Context<Self>) {
        info!("{} ClientSubscribedTopic {}", e.client_id, e.filter);
    }
}

impl Handler<ClientUnsubscribed> for SeedHooks {
    type Result = ();
    fn handle(&mut self, e: ClientUnsubscribed, _: &mut Context<Self>) {
        info!("{} ClientUnsubscribedTopic {}", e.client_id, e.filter);
    }
}

/// Prints every status response and state report the app's Consumer receives, and resolves
/// `all_online` once every device has announced itself.
struct Printer {
    waiting_for: BTreeSet<String>,
    all_online: Option<oneshot::Sender<()>>,
}

impl Actor for Printer {
    type Context = Context<Self>;
}

impl Handler<Received> for Printer {
    type Result = ();
    fn handle(&mut self, r: Received, _: &mut Context<Self>) {
        info!(
            "Received message on {}: {}",
            r.topic,
            String::from_utf8_lossy(&r.payload)
        );
        if let Some(device) = r.topic.strip_prefix("detrd/state/") {
            self.waiting_for.remove(device);
            if self.waiting_for.is_empty() {
                if let Some(online) = self.all_online.take() {
                    let _ = online.send(());
                }
            }
        }
    }
}

/// Runs the demo inside the current actix `System`.
pub async fn run(options: DemoOptions) -> Result<DemoReport, Box<dyn std::error::Error>> {
    let interval = if options.fast {
        Duration::from_millis(500)
    } else {
        Duration::from_millis(options.interval_ms.max(1))
    };
    let mut config = Config::default();
    config.listener.port = options.port;
    // The demo's broker runs beside a broker on the defaults: its HTTP server (metrics, health)
    // takes a free port, logged at start.
    config.http.port = 0;
    let broker = Broker::new(config)
        .hooks(LifecycleHooks::all(&SeedHooks.start()))
        .start()
        .await?;
    let port = broker.local_addr().port();
    let protocol = match options.mqtt.as_str() {
        "5" => ProtocolVersion::V5,
        _ => ProtocolVersion::V3_1_1,
    };
    info!(%protocol, "devices and app speak {protocol}");
    let at = |id: &str| {
        let mut connection = ConnectionOptions::new("127.0.0.1", port, id);
        connection.protocol = protocol;
        connection
    };

    let gate = DeviceActor::start(GateBarrier::new(GATE_ID), at(GATE_ID));
    let radar = DeviceActor::start(RadarDetector::new(RADAR_ID, interval * 2), at(RADAR_ID));

    let app = ManagedConnection::start_with(at("detrd-app"), Vec::new());
    let (online_tx, online) = oneshot::channel();
    let printer = Printer {
        waiting_for: [GATE_ID, RADAR_ID].map(String::from).into(),
        all_online: Some(online_tx),
    }
    .start();
    let filters = vec![
        ("detrd/status/response/+".to_string(), QoS::AtLeastOnce),
        ("detrd/state/+".to_string(), QoS::AtLeastOnce),
    ];
    Consumer::new(app.clone(), filters, printer.recipient()).start();
    let timeout = interval.min(Duration::from_secs(3));
    let requester = Requester::new(app.clone(), "detrd/status/response/+", timeout).start();
    let publisher = Publisher::new(app.clone()).start();
    if tokio::time::timeout(Duration::from_secs(10), online)
        .await
        .is_err()
    {
        warn!("not every device announced itself within 10 s; requesting anyway");
    }

    let mut report = DemoReport::default();
    let mut ticks = tokio::time::interval(interval);
    while options.cycles == 0 || report.cycles < options.cycles {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        report.cycles += 1;
        for id in [RADAR_ID, GATE_ID] {
            let request = Request::new(
                status_request_topic(id),
                serde_json::json!({ "ask": "status" }),
            )
            .answer_on(status_response_topic(id));
            match requester.send(request).await? {
                Ok(status) => {
                    report.answered += 1;
                    info!("MQTT application message is published; {id} answered {status}");
                }
                Err(e) => {
                    report.timed_out += 1;
                    warn!("{id}: {e}");
                }
            }
        }
        let command = if report.cycles % 2 == 1 {
            GateCommand::Open
        } else {
            GateCommand::Close
        };
        publisher
            .send(Publish {
                topic: command_topic(GATE_ID),
                payload: serde_json::to_vec(&command)?.into(),
                qos: QoS::AtLeastOnce,
                retain: false,
            })
            .await??;
    }
    let stop = Stop {
        deadline: Duration::from_secs(2),
    };
    let device_connections = [
        gate.send(GetConnection).await?,
        radar.send(GetConnection).await?,
    ];
    for connection in device_connections.into_iter().flatten().chain([app]) {
        let stopped = connection.send(stop).await?;
        if !stopped.undelivered.is_empty() {
            warn!(
                count = stopped.undelivered.len(),
                "messages not delivered at stop"
            );
        }
    }
    broker.stop();
    Ok(report)
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _log = switchboard::init_logging("info");
    let report = run(DemoOptions::parse()).await?;
    info!(
        cycles = report.cycles,
        answered = report.answered,
        timed_out = report.timed_out,
        "demo finished"
    );
    Ok(())
}
