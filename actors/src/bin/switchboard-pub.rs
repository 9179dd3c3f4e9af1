//! `switchboard-pub`: publish messages through a managed connection, with an optional durable
//! queue, and wait until they are delivered.
//!
//! ```text
//! switchboard-pub --port 1883 --topic detrd/status/response/1AB.ENTER.DETRD --qos 1 \
//!     --message '{"state":"ok"}' --count 10 --queue /var/lib/radar/queue
//! ```
//!
//! `--failover HOST:PORT` (repeated) names brokers to try when the first is down. With `--queue`,
//! messages not yet delivered stay in the file if the process dies, and the next
//! run (even with `--count 0`) sends them first. It prints `queued N` once its messages are
//! queued, and exits when nothing is pending (or after `--wait` seconds, with status 2).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use switchboard_actors::{
    BrokerAddress, ConnectionOptions, Enqueue, ManagedConnection, PendingCount, ProtocolVersion,
    QoS,
};

struct Args {
    host: String,
    port: u16,
    failover: Vec<BrokerAddress>,
    id: String,
    topic: String,
    qos: QoS,
    message: String,
    count: u32,
    queue: Option<PathBuf>,
    wait: Duration,
    protocol: ProtocolVersion,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        host: "127.0.0.1".into(),
        port: 1883,
        failover: Vec::new(),
        id: format!("switchboard-pub-{}", std::process::id()),
        topic: String::new(),
        qos: QoS::AtLeastOnce,
        message: String::new(),
        count: 1,
        queue: None,
        wait: Duration::from_secs(60),
        protocol: ProtocolVersion::V3_1_1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--host" => args.host = value()?,
            "--port" => args.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--failover" => {
                let address = value()?;
                let broker = BrokerAddress::parse(&address)
                    .ok_or(format!("--failover: `{address}` is not host:port"))?;
                args.failover.push(broker);
            }
            "--id" => args.id = value()?,
            "--topic" => args.topic = value()?,
            "--qos" => {
                args.qos = value()?
                    .parse::<u8>()
                    .ok()
                    .and_then(QoS::from_u8)
                    .ok_or("--qos is 0, 1 or 2")?
            }
            "--message" => args.message = value()?,
            "--mqtt" => {
                args.protocol = match value()?.as_str() {
                    "3.1.1" => ProtocolVersion::V3_1_1,
                    "5" => ProtocolVersion::V5,
                    _ => return Err("--mqtt is 3.1.1 or 5".into()),
                }
            }
            "--count" => args.count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--queue" => args.queue = Some(value()?.into()),
            "--wait" => {
                args.wait =
                    Duration::from_secs(value()?.parse().map_err(|e| format!("--wait: {e}"))?)
            }
            "-h" | "--help" => return Err(
                "usage: switchboard-pub --topic T [--host H] [--port P] [--failover HOST:PORT]... \
                            [--id ID] [--qos 0|1|2] [--message M] [--count N] [--queue FILE] [--wait SECONDS] [--mqtt 3.1.1|5]"
                    .into(),
            ),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.topic.is_empty() && args.count > 0 {
        return Err("--topic is required".into());
    }
    Ok(args)
}

#[actix_rt::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("switchboard-pub: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut options = ConnectionOptions::new(args.host.clone(), args.port, args.id.clone());
    options.clean_session = true;
    options.failover = args.failover.clone();
    options.durable_queue = args.queue.clone();
    options.protocol = args.protocol;
    let connection = ManagedConnection::start_with(options, Vec::new());
    for _ in 0..args.count {
        let message = Enqueue::new(
            args.topic.clone(),
            args.message.clone().into_bytes(),
            args.qos,
        );
        match connection.send(message).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                eprintln!("switchboard-pub: not queued: {e}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("switchboard-pub: connection stopped: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("queued {}", args.count);
    let deadline = Instant::now() + args.wait;
    loop {
        match connection.send(PendingCount).await {
            Ok(0) => {
                println!("delivered");
                return ExitCode::SUCCESS;
            }
            Ok(_) if Instant::now() < deadline => {}
            _ => {
                eprintln!(
                    "switchboard-pub: not everything was delivered within {:?}",
                    args.wait
                );
                return ExitCode::from(2);
            }
        }
        // Polling the pending count of a process that does nothing else.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
