//! Log set-up for the binary and the examples: `tracing` to standard error, `RUST_LOG` first.

use tracing_subscriber::EnvFilter;

/// Installs a `tracing` subscriber writing to standard error, filtered by `RUST_LOG` when it is
/// set and by `default_filter` (e.g. `"info"`) otherwise. Call once, at the start of `main`.
pub fn init_logging(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
