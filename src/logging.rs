//! Log set-up for the binary and the examples: `tracing` to standard error, `RUST_LOG` first.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs a `tracing` subscriber writing to standard error, filtered by `RUST_LOG` when it is
/// set and by `default_filter` (e.g. `"info"`) otherwise. Colours only when standard error is a
/// terminal and `NO_COLOR` is not set: a file, a pipe or systemd's journal gets plain text. Call
/// once, at the start of `main`.
pub fn init_logging(default_filter: &str) {
    init_logging_as(default_filter, LogFormat::Text);
}

/// [`init_logging`] in the given format: with [`LogFormat::Json`] each event is one JSON object
/// per line, its fields (`client_id`, `addr`, `reason`, ...) beside `timestamp`, `level`,
/// `target` and `message`.
pub fn init_logging_as(default_filter: &str, format: LogFormat) {
    // actix-web's server logs its own start and stop at info: not the broker's business.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_filter},actix_server=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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

/// Whether log lines get ANSI colours: standard error is a terminal, and `NO_COLOR` (see
/// no-color.org) is unset or empty.
fn colour_wanted() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    std::io::stderr().is_terminal() && !no_color
}
