//! The Switchboard load harness: runs one scenario against a broker and reports sent and
//! delivered rates, loss and duplicates (sequence numbers in payloads), latency quantiles (HDR
//! histogram, timestamps in payloads), broker CPU and RSS (when its pid is known), and the
//! harness's own CPU share.
//!
//! ```text
//! cargo bench --bench load -- --scenario fan-in --clients 50
//! cargo bench --bench load -- --scenario pairs --qos 1 --addr 127.0.0.1:1883 --broker-pid 1234 --label mosquitto
//! cargo bench --bench load -- --table results.jsonl --chart docs/benchmarks.svg
//! ```
//! Without `--addr` it starts the `switchboard` binary (release when run by `cargo bench`) on a
//! free loopback port. `benches/compare.sh` runs the comparison with Mosquitto.

mod args;
mod broker;
mod churn;
mod conn;
mod fleet;
mod flows;
mod procstat;
mod report;
mod storms;
mod wire;
mod ws;

use std::io::Write as _;
use std::process::ExitCode;
use std::rc::Rc;

use clap::Parser;

use args::{Args, Scenario};
use report::{Latency, Report};

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `text` to standard output; a reader that went away (`--table ... | head`) ends the
/// output quietly instead of panicking as `print!` would.
fn write_stdout(text: &str) -> Result<(), String> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.to_string()),
        _ => Ok(()),
    }
}

fn run(args: Args) -> Result<(), String> {
    if let Some(path) = &args.table {
        let reports = report::read_reports(path)?;
        let mut tables = report::table(&reports);
        let ratios = report::run_ratios(&reports);
        if ratios.lines().count() > 2 {
            tables.push('\n');
            tables.push_str(&ratios);
        }
        write_stdout(&tables)?;
        if let Some(chart) = &args.chart {
            std::fs::write(chart, report::chart(&reports)).map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    // Thousands of connections (idle, --idle-beside) need more descriptors than a shell's
    // default soft limit; the hard limit is the ceiling.
    let _ = switchboard::fd_limit::raise_fd_limit();
    wire::set_mqtt5(args.mqtt == "5");
    wire::set_persistent_subscribers(args.persistent_subscribers);
    if let Some(source) = args.source_address {
        wire::set_source_address(source);
    }
    if let (Some(user), Some(password)) = (&args.username, &args.password) {
        wire::set_credentials(user, password, args.users);
    }
    let target = broker::Target::resolve(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    if let Some(peer) = args.peer_pid {
        procstat::count_peer(peer);
    }
    let args = Rc::new(args);
    let mut report = Report {
        label: args.label.clone(),
        scenario: serde_json::to_value(args.scenario)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            // Over TLS (`--tls-ca`) the scenario is named so, apart from its TCP rows.
            .map(|name| match &args.tls_ca {
                Some(_) => format!("{name} over TLS"),
                None => name,
            })
            .unwrap_or_default(),
        qos: args.qos,
        clients: args.clients,
        payload: args.payload.max(wire::STAMP),
        load: match (args.scenario, args.rate) {
            (Scenario::Fleet, rate) => format!(
                "open({}/s requests, telemetry {}/s per device)",
                rate.unwrap_or(fleet::DEFAULT_REQUEST_RATE),
                args.telemetry_rate
            ),
            (_, Some(rate)) => format!("open({rate}/s)"),
            (_, None) if args.window_acked => format!("closed({}, acked)", args.window),
            (_, None) => format!("closed({})", args.window),
        } + &if args.idle_beside > 0 {
            format!(" +{} idle", args.idle_beside)
        } else {
            String::new()
        } + &if args.churn_beside > 0.0 {
            format!(" +{}/s subscription changes", args.churn_beside)
        } else {
            String::new()
        },
        ..Report::default()
    };
    // Kept open until the report is written.
    let _idle_beside = if args.idle_beside > 0 {
        let (open, _, failures) = runtime.block_on(storms::open_idle(
            target.addr,
            args.idle_beside,
            args.concurrency,
            args.quiet,
        ));
        if failures > 0 {
            return Err(format!("{failures} of the idle connections beside failed"));
        }
        open
    } else {
        Vec::new()
    };
    let churned = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let churn = (args.churn_beside > 0.0)
        .then(|| runtime.spawn(churn::run(target.addr, args.churn_beside, churned.clone())));
    let started = std::time::Instant::now();
    match args.scenario {
        Scenario::Pairs | Scenario::FanIn | Scenario::FanOut | Scenario::Wildcard => {
            let r = runtime.block_on(flows::run(args.clone(), target.addr, target.pid))?;
            r.measured.fill(&mut report);
            report.lost = r.expected.saturating_sub(r.total_received);
            report.duplicated = r.duplicated;
            let _ = r.total_sent;
        }
        Scenario::Fleet => {
            let r = runtime.block_on(fleet::run(args.clone(), target.addr, target.pid))?;
            r.measured.fill(&mut report);
            report.lost = r.lost;
        }
        Scenario::Retained | Scenario::ConnectStorm | Scenario::Idle => {
            let r = runtime.block_on(async {
                match args.scenario {
                    Scenario::Retained => storms::retained(&args, target.addr, target.pid).await,
                    Scenario::ConnectStorm => {
                        storms::connect_storm(&args, target.addr, target.pid).await
                    }
                    _ => storms::idle(&args, target.addr, target.pid).await,
                }
            })?;
            report.seconds = r.seconds;
            report.sent_per_s = r.operations as f64 / r.seconds;
            report.delivered_per_s = report.sent_per_s;
            report.latency_us = Latency::from(&r.latency);
            report.broker_cpu_s = r.broker_cpu;
            report.broker_cpu_us_per_msg =
                r.broker_cpu.map(|c| c * 1e6 / r.operations.max(1) as f64);
            report.rss_per_connection_bytes = r.rss_per_connection;
            report.harness_cpu_share = r.harness_cpu / r.seconds;
            report.failures = r.failures;
        }
    }
    if let Some(churn) = churn {
        if churn.is_finished() {
            if let Ok(Err(e)) = runtime.block_on(churn) {
                eprintln!("warning: {e}");
            }
        } else {
            churn.abort();
        }
        let made = churned.load(std::sync::atomic::Ordering::Relaxed) as f64;
        let rate = made / started.elapsed().as_secs_f64();
        report.churn_per_s = Some(rate);
        if rate < 0.9 * args.churn_beside {
            eprintln!(
                "warning: {rate:.0} subscription changes/s beside the scenario, of {} asked",
                args.churn_beside
            );
        }
    }
    report.broker_rss_bytes = target.pid.map(procstat::rss_bytes);
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        println!("{}", report.text());
    }
    if let Some(path) = &args.out {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(
            file,
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}
