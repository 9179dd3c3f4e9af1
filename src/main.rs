//! The `switchboard` broker binary.

/// jemalloc, not glibc's malloc: on device traffic over many connections (the open loop over
/// 1,000 pairs, the fleet) it spent 5-13% less broker CPU per message, with the allocator's
/// share of a pipelined profile down from 9% to 2%, at the same memory per idle connection
/// (docs/benchmarks.md, "jemalloc as the broker's allocator"). Built with the `jemalloc`
/// feature (on by default); without it the binary uses the system allocator.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::{Broker, Config};
use tracing::{error, info};

/// Switchboard: an MQTT 5.0 and 3.1.1 broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TCP port to listen on (overrides the config file; default 1883).
    #[arg(short, long)]
    port: Option<u16>,
    /// Address to bind (overrides the config file; default 127.0.0.1).
    #[arg(short, long)]
    bind: Option<IpAddr>,
    /// Port of the HTTP server: metrics, health (overrides the config file; default 8080; 0
    /// picks a free one).
    #[arg(long, value_name = "PORT")]
    http_port: Option<u16>,
    /// TOML configuration file (see docs/configuration.md).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Debug logging (RUST_LOG, when set, takes precedence).
    #[arg(short, long)]
    verbose: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Add a user to a password file (or change its password); the password is read from the
    /// first line of standard input. The file is created if missing; Mosquitto reads it too.
    Passwd {
        /// Password file.
        file: PathBuf,
        /// User name.
        user: String,
        /// PBKDF2-SHA512 rounds.
        #[arg(long, default_value_t = 100_000)]
        iterations: u32,
    },
    /// Check a configuration file without starting a broker.
    ///
    /// Its keys and values, its password and ACL files, the TLS certificate, key, client CA and
    /// revocation lists (and when the certificate expires). Exits 0 when the broker would start
    /// with it (ports aside), 1 with the error otherwise. Binds no port and opens no persistence
    /// directory: safe beside the running broker, e.g. before `systemctl reload` or `restart`.
    Check {
        /// TOML configuration file.
        file: PathBuf,
    },
    /// Install a backup as the durable state of a directory, for a broker to start on.
    ///
    /// The backup is what `GET /api/v1/persistence/backup` on a running broker's HTTP port
    /// answers (e.g. `curl -fo backup.log http://127.0.0.1:8080/api/v1/persistence/backup`).
    /// Every record of it is read back first: a damaged or cut backup is refused, naming the
    /// offset, and nothing is installed. The directory is created if missing and must hold no
    /// log; then point `[persistence] dir` at it and start the broker.
    Restore {
        /// The backup file.
        backup: PathBuf,
        /// The persistence directory to install it in.
        dir: PathBuf,
    },
}

/// `switchboard restore BACKUP DIR`.
fn restore(backup: &std::path::Path, dir: &std::path::Path) -> ExitCode {
    let _log = switchboard::init_logging("info");
    match switchboard::persistence::restore(backup, dir) {
        Ok(restored) => {
            info!(
                backup = %backup.display(),
                dir = %dir.display(),
                records = restored.records,
                bytes = restored.bytes,
                "backup restored: start the broker with [persistence] dir set to this directory"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(backup = %backup.display(), "{e}");
            ExitCode::FAILURE
        }
    }
}

/// `switchboard check FILE`: what start-up would say of `file`, short of binding its ports.
fn check(file: &std::path::Path) -> ExitCode {
    // Errors and the files' summaries (users, certificate expiry) go to the log, as at start.
    let _log = switchboard::init_logging("info");
    let config = match Config::from_file(file) {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let checked = actix_rt::System::new().block_on(async { Broker::new(config).check() });
    match checked {
        Ok(()) => {
            info!(file = %file.display(), "configuration OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(file = %file.display(), "{e}");
            ExitCode::FAILURE
        }
    }
}

/// Adds or replaces `user` in `file`.
fn passwd(file: &std::path::Path, user: &str, iterations: u32) -> Result<(), String> {
    if user.is_empty() || user.contains(':') {
        return Err("a user name must be non-empty and contain no ':'".into());
    }
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err("empty password".into());
    }
    let line = switchboard::auth::hash_line(user, password.as_bytes(), iterations.max(1))
        .map_err(|e| format!("no random salt: {e}"))?;
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let prefix = format!("{user}:");
    let mut lines: Vec<&str> = existing
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .collect();
    lines.push(&line);
    std::fs::write(file, lines.join("\n") + "\n")
        .map_err(|e| format!("cannot write {}: {e}", file.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Passwd {
        file,
        user,
        iterations,
    }) = &cli.command
    {
        return match passwd(file, user, *iterations) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchboard passwd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Check { file }) = &cli.command {
        return check(file);
    }
    if let Some(Command::Restore { backup, dir }) = &cli.command {
        return restore(backup, dir);
    }
    let default_level = if cli.verbose { "debug" } else { "info" };
    // The config says how to log; an error reading it is logged as text. The guard is held to
    // the end of `main`: dropped, it writes out the lines still queued.
    let mut config = match &cli.config {
        Some(path) => match Config::from_file(path) {
            Ok(config) => config,
            Err(e) => {
                let _log = switchboard::init_logging(default_level);
                error!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    let _log = switchboard::init_logging_as(default_level, &config.log);
    if let Some(port) = cli.port {
        config.listener.port = port;
    }
    if let Some(bind) = cli.bind {
        config.listener.bind = bind;
    }
    if let Some(port) = cli.http_port {
        config.http.port = port;
    }

    // Every connection is a file descriptor.
    switchboard::fd_limit::raise_and_report_fd_limit(config.limits.max_connections);

    let config_path = cli.config.clone();
    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        let mut signals = Signals::new();
        let running = Broker::new(config).start().await?;
        while let Signal::Reload = signals.next().await {
            match running.reload_access() {
                Ok(()) => info!("SIGHUP: password and ACL files reloaded"),
                Err(e) => error!("SIGHUP: reload failed, the old rules stay in force: {e}"),
            }
            match running.reload_tls() {
                Some(Ok(())) => info!("SIGHUP: TLS certificate and key reloaded"),
                Some(Err(e)) => {
                    error!("SIGHUP: TLS files not reloaded, the certificate in use stays: {e}")
                }
                None => {}
            }
            let Some(path) = &config_path else {
                continue;
            };
            // Bridges are re-read from the config file; the rest of it needs a restart.
            let reloaded = match Config::from_file(path) {
                Ok(config) => running.reload_bridges(config.bridge).await,
                Err(e) => Err(e),
            };
            match reloaded {
                Ok(changes) => info!(added = ?changes.added, removed = ?changes.removed, restarted = ?changes.restarted, "SIGHUP: bridges reloaded"),
                Err(e) => error!("SIGHUP: bridges not reloaded, the running ones stay: {e}"),
            }
        }
        info!("shutdown signal received");
        running.shutdown(SHUTDOWN_GRACE).await;
        Ok::<(), switchboard::BrokerError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// How long a shutdown waits for connections to close before stopping regardless.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// What a signal asks for.
enum Signal {
    /// SIGHUP: re-read the password and ACL files, the TLS files (certificate, key, client CA,
    /// revocation lists), and the bridges from the config file.
    Reload,
    /// Ctrl-C or SIGTERM: stop.
    Stop,
}

/// The signals the broker listens to, registered once so that none is missed between two waits.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Waits for the next signal that matters.
    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            let term = async {
                match &mut self.term {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let hup = async {
                match &mut self.hup {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => Signal::Stop,
                _ = term => Signal::Stop,
                _ = hup => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}
