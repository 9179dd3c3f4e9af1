//! Deleting the segments a compaction superseded, on a thread of its own. Unlinking a segment of
//! tens of megabytes whose pages are cached takes the kernel milliseconds (22 ms for a 67 MB
//! segment on this machine), and on the writer's thread every commit, and every acknowledgement
//! waiting for one, waited for it.
//!
//! The sets are deleted in the order they were handed over, each newest first, as the writer
//! deleted them itself: a crash part way leaves the oldest segments, which start-up reads as
//! before (the snapshot after them supersedes them). Until a set is deleted its segments take
//! disk space and nothing else: the live state no longer points into them, so no backup copies
//! out of them. Dropping the deleter deletes what is queued and joins the thread.

use std::fs::remove_file;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tracing::warn;

/// Sets handed over and not yet deleted, and the condition a waiter for them waits on.
#[derive(Default)]
struct Pending {
    sets: Mutex<usize>,
    deleted: Condvar,
}

impl Pending {
    fn add(&self, n: isize) {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        *sets = sets.saturating_add_signed(n);
        if *sets == 0 {
            self.deleted.notify_all();
        }
    }
}

/// The thread that deletes superseded segments, started when the first set comes.
#[derive(Default)]
pub(super) struct SegmentDeleter {
    sender: Option<Sender<Vec<PathBuf>>>,
    thread: Option<JoinHandle<()>>,
    pending: Arc<Pending>,
}

impl SegmentDeleter {
    /// Deletes `superseded` (oldest first in the list; deleted newest first) on the deleting
    /// thread, after the sets handed before it; here, if that thread cannot be started.
    pub(super) fn delete(&mut self, superseded: Vec<PathBuf>) {
        if superseded.is_empty() {
            return;
        }
        if self.sender.is_none() {
            self.start();
        }
        self.pending.add(1);
        let unsent = match &self.sender {
            Some(sender) => sender.send(superseded).err().map(|e| e.0),
            None => Some(superseded),
        };
        if let Some(superseded) = unsent {
            delete_newest_first(superseded, |old| remove_file(old));
            self.pending.add(-1);
        }
    }

    fn start(&mut self) {
        let (sender, receiver) = channel::<Vec<PathBuf>>();
        let pending = self.pending.clone();
        let spawned = std::thread::Builder::new()
            .name("switchboard-segment-delete".into())
            .spawn(move || {
                for superseded in receiver {
                    delete_newest_first(superseded, |old| remove_file(old));
                    pending.add(-1);
                }
            });
        match spawned {
            Ok(thread) => {
                self.sender = Some(sender);
                self.thread = Some(thread);
            }
            Err(e) => {
                warn!(error = %e, "cannot start a thread to delete compacted segments; the writer deletes them");
            }
        }
    }

    /// Waits until every set handed over is deleted.
    #[cfg(test)]
    pub(super) fn wait_deleted(&self) {
        let sets = self.pending.sets.lock().unwrap_or_else(|p| p.into_inner());
        drop(
            self.pending
                .deleted
                .wait_while(sets, |sets| *sets > 0)
                .unwrap_or_else(|p| p.into_inner()),
        );
    }
}

impl Drop for SegmentDeleter {
    fn drop(&mut self) {
        // The thread ends once it has deleted what is queued.
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Deletes the segments a snapshot supersedes, newest first: a crash between two deletions
/// leaves the oldest segments, which read as before, not a later one without a snapshot before
/// the snapshot (which start-up would take for segments gone missing).
pub(super) fn delete_newest_first(
    superseded: Vec<PathBuf>,
    mut remove: impl FnMut(&Path) -> std::io::Result<()>,
) {
    for old in superseded.into_iter().rev() {
        if let Err(e) = remove(&old) {
            warn!(file = %old.display(), error = %e, "could not delete a compacted segment");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_set_handed_over_is_deleted_by_the_time_the_deleter_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files: Vec<PathBuf> = (1..=3)
            .map(|id| {
                let path = dir.path().join(format!("{id}.log"));
                std::fs::write(&path, b"segment").expect("write");
                path
            })
            .collect();
        let mut deleter = SegmentDeleter::default();
        deleter.delete(files[..2].to_vec());
        deleter.wait_deleted();
        assert!(!files[0].exists() && !files[1].exists());
        assert!(files[2].exists(), "not handed over");
        deleter.delete(files[2..].to_vec());
        drop(deleter);
        assert!(!files[2].exists(), "deleted before the thread ended");
    }
}
