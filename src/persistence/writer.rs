//! The writer thread: takes the records the Registry submits, appends each drain of its queue
//! with one write (group commit), syncs by the `fsync` policy, reports what is durable, and
//! compacts when the log has grown to twice the live state.

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Recipient;
use tracing::{debug, error, info};

use super::log::Log;
use super::record::{LiveEffect, Record};
use super::{Durable, Persisted, StoreShared};
use crate::config::FsyncPolicy;

/// Most records written in one commit.
const MAX_BATCH: usize = 4096;

/// The log is compacted when it is larger than twice the live state and than this.
const COMPACT_FLOOR: u64 = 4 * 1024 * 1024;

/// Sent by the Registry and the Sessions to the writer thread (a channel, not an actor).
pub enum Command {
    /// Append `record`; `seq` is its submission number.
    Append {
        /// The change.
        record: Record,
        /// Its sequence number.
        seq: u64,
    },
    /// Append `records`, in order; `seq` is the submission number of the last.
    AppendAll {
        /// The changes.
        records: Vec<Record>,
        /// The sequence number of the last.
        seq: u64,
    },
    /// Sync now, then answer (graceful shutdown).
    Flush(std::sync::mpsc::Sender<()>),
}

/// The writer's state: the log, and the live records (for compaction).
pub struct Writer {
    pub(super) log: Log,
    /// Held for the broker's life: one broker per directory.
    pub(super) _lock: File,
    /// Key ([`Record::live_effect`]) -> framed records: the live state, written out by
    /// compaction.
    pub(super) live: BTreeMap<String, Vec<u8>>,
    pub(super) live_bytes: u64,
    pub(super) policy: FsyncPolicy,
    pub(super) interval: Duration,
}

impl Writer {
    /// Runs until every sender is gone, then syncs and returns. What is durable goes to
    /// `durable` (the Registry) and to the Sessions waiting in `shared`.
    pub fn run(
        mut self,
        commands: Receiver<Command>,
        durable: Recipient<Persisted>,
        shared: Arc<StoreShared>,
    ) {
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        let mut frames = Vec::new();
        let mut flushes = Vec::new();
        loop {
            let wait = if unsynced && self.policy == FsyncPolicy::Interval {
                self.interval.saturating_sub(last_sync.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            let first = match commands.recv_timeout(wait) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut last_seq = None;
            frames.clear();
            let mut command = first;
            let mut taken = 0;
            while let Some(c) = command.take() {
                match c {
                    Command::Append { record, seq } => {
                        let frame = record.to_frame();
                        frames.extend_from_slice(&frame);
                        self.track(&record, frame);
                        last_seq = Some(seq);
                    }
                    Command::AppendAll { records, seq } => {
                        for record in records {
                            let frame = record.to_frame();
                            frames.extend_from_slice(&frame);
                            self.track(&record, frame);
                        }
                        last_seq = Some(seq);
                    }
                    Command::Flush(done) => flushes.push(done),
                }
                taken += 1;
                if taken < MAX_BATCH {
                    command = commands.try_recv().ok();
                }
            }
            if !frames.is_empty() {
                if let Err(e) = self.log.append(&frames) {
                    // Nothing of this commit is acknowledged; publishers wait for their PUBACK.
                    error!(error = %e, "cannot write the persistence log; nothing more is acknowledged until it can");
                    continue;
                }
                unsynced = true;
            }
            let sync_due = match self.policy {
                FsyncPolicy::Always => unsynced,
                FsyncPolicy::Interval => unsynced && last_sync.elapsed() >= self.interval,
                FsyncPolicy::Never => false,
            } || (!flushes.is_empty() && unsynced);
            if sync_due {
                if let Err(e) = self.log.sync() {
                    error!(error = %e, "cannot sync the persistence log");
                    continue;
                }
                last_sync = Instant::now();
                unsynced = false;
                let (segment, offset) = self.log.position();
                // What a power-loss test cuts the log back to.
                debug!(segment = %segment.display(), offset, "persistence log synced");
            }
            if let Some(seq) = last_seq {
                durable.do_send(Persisted(seq));
                shared.durable.store(seq, Ordering::SeqCst);
                let mut waiters = shared.lock_waiters();
                waiters.retain(|(wanted, session)| {
                    if *wanted > seq {
                        return true;
                    }
                    session.do_send(Durable(seq));
                    false
                });
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
            self.maybe_compact();
        }
        if unsynced {
            if let Err(e) = self.log.sync() {
                error!(error = %e, "cannot sync the persistence log at shutdown");
            }
        }
    }

    /// Keeps the live state current for compaction.
    pub(super) fn track(&mut self, record: &Record, frame: Vec<u8>) {
        match record.live_effect() {
            LiveEffect::None => {}
            LiveEffect::Set(key) => {
                self.live_bytes += frame.len() as u64;
                if let Some(old) = self.live.insert(key, frame) {
                    self.live_bytes -= old.len() as u64;
                }
            }
            LiveEffect::Append(key) => {
                // A compaction writes the key's frames one after the other.
                if let Some(live) = self.live.get_mut(&key) {
                    live.extend_from_slice(&frame);
                    self.live_bytes += frame.len() as u64;
                }
            }
            LiveEffect::Remove(key) => {
                if let Some(old) = self.live.remove(&key) {
                    self.live_bytes -= old.len() as u64;
                }
            }
            LiveEffect::RemovePrefix(prefix) => {
                let gone: Vec<String> = self
                    .live
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in gone {
                    if let Some(old) = self.live.remove(&k) {
                        self.live_bytes -= old.len() as u64;
                    }
                }
            }
        }
    }

    fn maybe_compact(&mut self) {
        let total = self.log.total_bytes();
        if total <= COMPACT_FLOOR || total <= 2 * self.live_bytes {
            return;
        }
        let started = Instant::now();
        let live = self.live.values().cloned();
        match self.log.compact(live) {
            Ok(()) => info!(
                before_bytes = total,
                after_bytes = self.log.total_bytes(),
                millis = started.elapsed().as_millis() as u64,
                "persistence log compacted"
            ),
            Err(e) => error!(error = %e, "persistence log compaction failed; will retry"),
        }
    }
}
