//! Watching `[tls]`'s files: when the certificate, key, client CA or revocation list files
//! change on disk (a renewal by certbot, cert-manager or a script), the TLS and `wss://`
//! listeners take them for the handshakes that follow, as after a SIGHUP, with nobody to send
//! one. What is watched is each file's modification time, size and inode, read every
//! `tls.watch_interval`: a file rewritten in place and a symlink swapped to a new file both
//! change them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::tls::{ServerTls, TlsError};

/// What tells one file's content from another's without reading it: modification time, size and
/// inode (of the file a symlink leads to); `None` while it cannot be read.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &PathBuf) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    #[cfg(not(unix))]
    let inode = 0;
    Some((metadata.modified().ok()?, metadata.len(), inode))
}

/// Reloads `server_tls`'s files and, if they load, notes when the new certificate expires in
/// `metrics` (the SIGHUP reload and the watch both do this). On an error nothing changes.
pub(crate) fn reload(server_tls: &ServerTls, metrics: &Metrics) -> Result<(), TlsError> {
    server_tls.reload()?;
    metrics.set_tls_certificate_expiry(server_tls.certificate().map(|c| c.not_after));
    Ok(())
}

/// Starts watching `server_tls`'s files every `every` (nothing with a zero interval), until
/// `stop` is cancelled.
pub(crate) fn spawn(
    server_tls: Arc<ServerTls>,
    metrics: Arc<Metrics>,
    every: Duration,
    stop: CancellationToken,
) {
    if every.is_zero() {
        return;
    }
    // Looked at now, before the listeners start: a change after this is seen.
    let files = server_tls.files();
    let seen = look(&files);
    actix_rt::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = watch(&server_tls, &metrics, every, &files, seen) => {}
        }
    });
}

fn look(files: &[PathBuf]) -> Vec<Stamp> {
    files.iter().map(stamp).collect()
}

/// Reloads whenever a file's [`Stamp`] changed since the last look (`seen`). A reload that fails
/// (a renewal caught half-written: the new certificate beside the old key) keeps the
/// certificate in use and is tried again at the next change.
async fn watch(
    server_tls: &ServerTls,
    metrics: &Metrics,
    every: Duration,
    files: &[PathBuf],
    mut seen: Vec<Stamp>,
) {
    let mut ticks = actix_rt::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: `seen` is from just before.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let now = look(files);
        if now == seen {
            continue;
        }
        seen = now;
        match reload(server_tls, metrics) {
            Ok(()) => info!("TLS files changed on disk: reloaded"),
            Err(e) => warn!(
                "TLS files changed on disk but not reloaded, the certificate in use stays (tried again when they change): {e}"
            ),
        }
    }
}
