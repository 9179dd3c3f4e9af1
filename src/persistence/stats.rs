//! What the persistence writer and its syncing thread have done, for `/metrics`, the dashboard
//! and `GET /api/v1/persistence`: the policy, commits, bytes appended, syncs and how long each
//! took, failed writes and syncs (a full or failing disk: retried every second while nothing
//! more is acknowledged, but a failed sync under `fsync = "always"` loses durability until a
//! restart), whether the last write or sync failed, compactions, and the log's size against
//! the live state's. Counted per commit or per sync, never per message. A sync of
//! [`SLOW_SYNC`] or more is also warned of in the log, at most once per [`WARNING_INTERVAL`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::config::FsyncPolicy;
use crate::drops::WARNING_INTERVAL;
use crate::log_gate::LogGate;

/// A sync this long or longer is warned of: every acknowledgement with `fsync = "always"`
/// waited for it, and with the other policies the writer's next commits did.
pub const SLOW_SYNC: Duration = Duration::from_secs(1);

/// Upper bounds, in seconds, of the sync-duration histogram's buckets (then `+Inf`): from a
/// fast SSD's `fdatasync` to a disk that stalls.
pub const SYNC_BOUNDS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The writer's counters, shared as `Arc` with the broker's [`Metrics`](crate::metrics::Metrics).
/// Written by the writer thread and the syncing thread; read by a scrape.
#[derive(Debug)]
pub struct PersistenceStats {
    /// The writer thread has started (`[persistence]` with a `dir`).
    started: AtomicBool,
    /// Its `fsync` policy, set as it starts.
    policy: OnceLock<FsyncPolicy>,
    commits: AtomicU64,
    appended_bytes: AtomicU64,
    syncs: AtomicU64,
    sync_nanos: AtomicU64,
    /// Syncs by [`SYNC_BOUNDS`] bucket, the last one `+Inf` (not cumulative).
    sync_buckets: [AtomicU64; SYNC_BOUNDS.len() + 1],
    write_failures: AtomicU64,
    sync_failures: AtomicU64,
    compactions: AtomicU64,
    log_bytes: AtomicU64,
    live_bytes: AtomicU64,
    /// Slow syncs, warned of at most once per [`WARNING_INTERVAL`].
    slow_syncs: Mutex<LogGate>,
    /// With `fsync = "always"`, a sync failed: nothing is reported durable any more.
    durability_lost: AtomicBool,
    /// The last append failed; the next that succeeds clears it.
    writes_failing: AtomicBool,
    /// The last sync failed; the next that succeeds clears it.
    syncs_failing: AtomicBool,
}

impl Default for PersistenceStats {
    fn default() -> Self {
        PersistenceStats {
            started: AtomicBool::default(),
            policy: OnceLock::new(),
            commits: AtomicU64::default(),
            appended_bytes: AtomicU64::default(),
            syncs: AtomicU64::default(),
            sync_nanos: AtomicU64::default(),
            sync_buckets: Default::default(),
            write_failures: AtomicU64::default(),
            sync_failures: AtomicU64::default(),
            compactions: AtomicU64::default(),
            log_bytes: AtomicU64::default(),
            live_bytes: AtomicU64::default(),
            slow_syncs: Mutex::new(LogGate::new(WARNING_INTERVAL)),
            durability_lost: AtomicBool::default(),
            writes_failing: AtomicBool::default(),
            syncs_failing: AtomicBool::default(),
        }
    }
}

/// A copy of [`PersistenceStats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PersistenceSnapshot {
    /// When the log is synced (`persistence.fsync`).
    pub fsync: FsyncPolicy,
    /// Commits that appended records to the log (one per drain of the writer's queue).
    pub commits: u64,
    /// Bytes appended to the log by commits (compaction's snapshots not included).
    pub appended_bytes: u64,
    /// `fdatasync`s of the log made, by the writer or its syncing thread.
    pub syncs: u64,
    /// Their total duration, in seconds.
    pub sync_seconds: f64,
    /// Syncs by [`SYNC_BOUNDS`] bucket, the last one `+Inf` (not cumulative).
    pub sync_buckets: [u64; SYNC_BOUNDS.len() + 1],
    /// Appends to the log that failed (each retried after a second).
    pub write_failures: u64,
    /// Syncs of the log that failed (each retried after a second; with `fsync = "always"`
    /// not retried, see `durability_lost`).
    pub sync_failures: u64,
    /// The last append failed: nothing more is acknowledged until one succeeds.
    pub writes_failing: bool,
    /// The last sync failed (retried each second; until one succeeds nothing more that
    /// waits for the disk is acknowledged).
    pub syncs_failing: bool,
    /// Compactions finished.
    pub compactions: u64,
    /// The bytes of records in the log's segments (snapshot included), as of the last commit;
    /// the segment being written runs up to 1 MiB of zeros ahead of its records.
    pub log_bytes: u64,
    /// The bytes of the records still live in it (what a compaction would keep).
    pub live_bytes: u64,
    /// With `fsync = "always"`, a sync failed: nothing waiting for the disk is acknowledged
    /// until a restart ([`PersistenceStats::durability_lost`]).
    pub durability_lost: bool,
}

impl PersistenceStats {
    /// Marks the store as started with `policy`: a scrape shows these counters from now on.
    pub(super) fn note_started(&self, policy: FsyncPolicy) {
        let _ = self.policy.set(policy);
        self.started.store(true, Ordering::Relaxed);
    }

    /// Counts a commit that appended `bytes`: its append succeeded.
    pub(super) fn add_commit(&self, bytes: usize) {
        self.writes_failing.store(false, Ordering::Relaxed);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.appended_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts a sync of `segment` that took `took`, and warns of it if it took [`SLOW_SYNC`]
    /// or more (at most once per [`WARNING_INTERVAL`], with the count of slow ones since).
    pub(super) fn add_sync(&self, took: Duration, segment: &Path) {
        if took >= SLOW_SYNC {
            let mut gate = self
                .slow_syncs
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(slow) = gate.event(Instant::now()) {
                warn!(
                    millis = took.as_millis() as u64,
                    slow_syncs = slow,
                    segment = %segment.display(),
                    "persistence log sync was slow: what waited for it (acknowledgements with fsync = \"always\") waited as long"
                );
            }
        }
        self.syncs_failing.store(false, Ordering::Relaxed);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sync_nanos.fetch_add(nanos, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        let bucket = SYNC_BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(SYNC_BOUNDS.len());
        if let Some(count) = self.sync_buckets.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// With `fsync = "always"`, a sync of `segment` failed with `error`. After a failed
    /// `fdatasync` the kernel may have dropped what it could not write, and a later sync that
    /// succeeds does not say it reached the disk, so nothing is reported durable from then on:
    /// what waits for the disk is not acknowledged until the broker restarts and reads the log
    /// back. Counted, and logged the first time.
    pub(super) fn lose_durability(&self, error: &dyn std::fmt::Display, segment: &Path) {
        self.add_sync_failure();
        if !self.durability_lost.swap(true, Ordering::SeqCst) {
            tracing::error!(error = %error, segment = %segment.display(), "cannot sync the persistence log: what was written since the last sync may not be on disk, and a later sync cannot prove it is; nothing that waits for the disk is acknowledged until the broker restarts");
        }
    }

    /// Whether a failed sync stopped every report of durability (`fsync = "always"`): from
    /// then on nothing is reported durable until a restart.
    pub fn durability_lost(&self) -> bool {
        self.durability_lost.load(Ordering::SeqCst)
    }

    /// Whether the last append to the log failed (a full disk): it is retried each second, and
    /// nothing more that waits for the disk is acknowledged until one succeeds.
    pub fn writes_failing(&self) -> bool {
        self.writes_failing.load(Ordering::Relaxed)
    }

    /// Whether the last `fdatasync` of the log failed: `interval` and `never` try it again each
    /// second, holding back what comes after; with `always` one failure loses durability until
    /// a restart ([`PersistenceStats::durability_lost`]), whatever later syncs do.
    pub fn syncs_failing(&self) -> bool {
        self.syncs_failing.load(Ordering::Relaxed)
    }

    /// Counts a failed append to the log.
    pub(super) fn add_write_failure(&self) {
        self.writes_failing.store(true, Ordering::Relaxed);
        self.write_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed sync of the log.
    pub(super) fn add_sync_failure(&self) {
        self.syncs_failing.store(true, Ordering::Relaxed);
        self.sync_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a finished compaction.
    pub(super) fn add_compaction(&self) {
        self.compactions.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the bytes of records in the log and the live state's.
    pub(super) fn set_sizes(&self, log_bytes: u64, live_bytes: u64) {
        self.log_bytes.store(log_bytes, Ordering::Relaxed);
        self.live_bytes.store(live_bytes, Ordering::Relaxed);
    }

    /// The counters, or `None` while no store has started (persistence off).
    pub fn snapshot(&self) -> Option<PersistenceSnapshot> {
        if !self.started.load(Ordering::Relaxed) {
            return None;
        }
        let fsync = *self.policy.get()?;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Some(PersistenceSnapshot {
            fsync,
            commits: get(&self.commits),
            appended_bytes: get(&self.appended_bytes),
            syncs: get(&self.syncs),
            sync_seconds: get(&self.sync_nanos) as f64 / 1e9,
            sync_buckets: std::array::from_fn(|i| self.sync_buckets.get(i).map_or(0, get)),
            write_failures: get(&self.write_failures),
            sync_failures: get(&self.sync_failures),
            compactions: get(&self.compactions),
            log_bytes: get(&self.log_bytes),
            live_bytes: get(&self.live_bytes),
            durability_lost: self.durability_lost(),
            writes_failing: self.writes_failing.load(Ordering::Relaxed),
            syncs_failing: self.syncs_failing.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_shown_before_the_store_starts() {
        let stats = PersistenceStats::default();
        stats.add_commit(10);
        assert_eq!(stats.snapshot(), None);
        stats.note_started(FsyncPolicy::Interval);
        assert_eq!(stats.snapshot().map(|s| s.commits), Some(1));
    }

    #[test]
    fn a_failing_write_or_sync_is_shown_until_the_next_one_succeeds() {
        let stats = PersistenceStats::default();
        stats.note_started(FsyncPolicy::Interval);
        let failing = |stats: &PersistenceStats| {
            stats
                .snapshot()
                .map(|s| (s.writes_failing, s.syncs_failing))
        };
        assert_eq!(failing(&stats), Some((false, false)));
        stats.add_write_failure();
        stats.add_write_failure();
        stats.add_sync_failure();
        assert_eq!(failing(&stats), Some((true, true)));
        stats.add_commit(10);
        assert_eq!(failing(&stats), Some((false, true)));
        stats.add_sync(Duration::from_micros(80), Path::new("0000000000000001.log"));
        assert_eq!(failing(&stats), Some((false, false)));
        assert_eq!(
            stats
                .snapshot()
                .map(|s| (s.fsync, s.write_failures, s.sync_failures)),
            Some((FsyncPolicy::Interval, 2, 1)),
            "the totals stay"
        );
    }

    #[test]
    fn each_sync_lands_in_the_first_bucket_that_holds_it() {
        let stats = PersistenceStats::default();
        stats.note_started(FsyncPolicy::Always);
        let segment = Path::new("0000000000000001.log");
        stats.add_sync(Duration::from_micros(80), segment);
        stats.add_sync(Duration::from_micros(100), segment);
        stats.add_sync(Duration::from_micros(300), segment);
        stats.add_sync(Duration::from_secs(3), segment);
        let Some(snapshot) = stats.snapshot() else {
            panic!("started");
        };
        assert_eq!(snapshot.syncs, 4);
        assert_eq!(snapshot.sync_buckets[0], 2, "at most 100 µs");
        assert_eq!(snapshot.sync_buckets[2], 1, "at most 500 µs");
        assert_eq!(snapshot.sync_buckets[SYNC_BOUNDS.len()], 1, "+Inf");
        assert_eq!(snapshot.sync_buckets.iter().sum::<u64>(), 4);
        assert!((snapshot.sync_seconds - 3.00048).abs() < 1e-9);
    }
}
