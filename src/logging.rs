//! Log set-up for the binary and the examples: `tracing` to standard error, `RUST_LOG` first.
//!
//! By default the threads that serve clients never write to standard error themselves. Each
//! line goes into a queue of `log.buffer_lines` lines, and a thread of its own
//! (`switchboard-log`) writes the queue out. A reader of standard error that stops reading (a pipe nobody drains, a stalled log
//! shipper, a paused terminal) used to stop the whole broker at the first line that did not fit
//! in the pipe. Now the queue fills, the lines past it are dropped and counted
//! ([`log_lines_dropped`], `switchboard_log_lines_dropped_total` in `/metrics`), and once lines
//! go out again a WARN line says how many were lost.
//!
//! The price is that lines still queued when the process is killed (SIGKILL, an abort) are lost.
//! `log.buffer_lines = 0` keeps the old way for those who need every line out before the broker
//! acts on it (an audit trail, a test reading the log as a record of what happened): each
//! thread writes its own lines and waits for standard error.

use std::io::{BufWriter, IsTerminal};
use std::sync::OnceLock;
use std::time::Duration;

use tracing::warn;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// How lines reach standard error, once logging is set up by [`init_logging`] or
/// [`init_logging_as`].
static WRITTEN: OnceLock<Written> = OnceLock::new();

/// How lines reach standard error.
enum Written {
    /// Each thread writes its own (`log.buffer_lines = 0`): nothing is ever dropped.
    Synchronously,
    /// Through the queue; what a full queue dropped.
    Queued(ErrorCounter),
}

/// How often the count of dropped lines is looked at, and a WARN line written if it grew.
const DROPS_CHECKED_EVERY: Duration = Duration::from_secs(1);

/// Bytes of lines the writer thread gathers before it writes: all the lines waiting go out in
/// as few writes as this allows.
const WRITE_BUFFER: usize = 64 * 1024;

/// Keeps the log's writer thread running. Dropped (at the end of `main`), it writes out the
/// lines still queued, waiting about a second at most for a standard error that is not read.
#[must_use = "dropping the guard stops the log's writer thread: hold it until the program ends"]
pub struct LogGuard {
    _writer: Option<WorkerGuard>,
}

/// Installs a `tracing` subscriber writing to standard error, filtered by `RUST_LOG` when it is
/// set and by `default_filter` (e.g. `"info"`) otherwise, with the default `[log]` settings.
/// Colours only when standard error is a terminal and `NO_COLOR` is not set: a file, a pipe or
/// systemd's journal gets plain text. Call once, at the start of `main`, and hold the guard.
pub fn init_logging(default_filter: &str) -> LogGuard {
    init_logging_as(default_filter, &LogConfig::default())
}

/// [`init_logging`] with the `[log]` settings: with [`LogFormat::Json`] each event is one JSON
/// object per line, its fields (`client_id`, `addr`, `reason`, ...) beside `timestamp`,
/// `level`, `target` and `message`; `log.buffer_lines` lines at most wait for the writer thread
/// (0: no writer thread, each thread writes its own lines).
pub fn init_logging_as(default_filter: &str, log: &LogConfig) -> LogGuard {
    if log.buffer_lines == 0 {
        install(default_filter, log.format, std::io::stderr);
        let _ = WRITTEN.set(Written::Synchronously);
        return LogGuard { _writer: None };
    }
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(log.buffer_lines)
        .thread_name("switchboard-log")
        .finish(BufWriter::with_capacity(WRITE_BUFFER, std::io::stderr()));
    let dropped = writer.error_counter();
    install(default_filter, log.format, writer);
    if WRITTEN.set(Written::Queued(dropped.clone())).is_ok() {
        watch_drops(dropped);
    }
    LogGuard {
        _writer: Some(guard),
    }
}

/// Installs the global subscriber, writing with `writer`.
fn install<W>(default_filter: &str, format: LogFormat, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // actix-web's server logs its own start and stop at info: not the broker's business.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_filter},actix_server=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(colour_wanted()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Log lines dropped since start because the queue for standard error was full; `None` when the
/// program did not set up its log with [`init_logging`] (a broker embedded in another program).
pub fn log_lines_dropped() -> Option<u64> {
    WRITTEN.get().map(|written| match written {
        Written::Synchronously => 0,
        Written::Queued(dropped) => dropped.dropped_lines() as u64,
    })
}

/// Starts the thread that says, in a WARN line, how many log lines were dropped since the last
/// such line that was written. That line may be dropped too while standard error is still not
/// read (the count then grows past what it read); the next look says it again with the lines
/// since, so the line that comes out once lines go out again counts every line lost.
fn watch_drops(dropped: ErrorCounter) {
    let watch = std::thread::Builder::new()
        .name("switchboard-log-watch".into())
        .spawn(move || {
            let mut said = 0;
            loop {
                std::thread::sleep(DROPS_CHECKED_EVERY);
                let now = dropped.dropped_lines();
                if now != said {
                    warn!(
                        dropped = now - said,
                        dropped_total = now,
                        "log lines dropped: standard error was not read as fast as the broker logged (log.buffer_lines)"
                    );
                    if dropped.dropped_lines() == now {
                        // Nothing dropped since the look, this line included: it is queued.
                        said = now;
                    }
                }
            }
        });
    if let Err(e) = watch {
        warn!("no thread to report dropped log lines (they are still counted in /metrics): {e}");
    }
}

/// Whether log lines get ANSI colours: standard error is a terminal, and `NO_COLOR` (see
/// no-color.org) is unset or empty.
fn colour_wanted() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    std::io::stderr().is_terminal() && !no_color
}
