//! The log directory's entries not yet synced: a segment the writer starts for what follows a
//! compaction's snapshot is a new name in the directory, which must be synced before anything
//! written to that segment counts as synced. The writer only counts the change
//! ([`DirEntries::changed`]); whichever thread syncs the segment's data next syncs the
//! directory after it ([`DirEntries::sync_if_changed`]), before that sync is reported, so that
//! on a slow disk the writer does not wait for a directory's sync.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of the directory's changes and of those a sync has made durable. Shared (`Arc`) by
/// the log and every sync job it hands out.
#[derive(Debug)]
pub struct DirEntries {
    dir: PathBuf,
    /// Changes made to the directory's entries (new segments).
    changed: AtomicU64,
    /// The changes a completed directory sync covered (those counted when it began).
    synced: AtomicU64,
}

impl DirEntries {
    /// The entries of `dir`, all synced.
    pub fn new(dir: PathBuf) -> Self {
        DirEntries {
            dir,
            changed: AtomicU64::new(0),
            synced: AtomicU64::new(0),
        }
    }

    /// A new entry was made in the directory (before anything is written to it).
    pub fn changed(&self) {
        self.changed.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether an entry made since the last directory sync is still unsynced.
    #[cfg(test)]
    pub fn unsynced(&self) -> bool {
        self.synced.load(Ordering::Acquire) < self.changed.load(Ordering::Acquire)
    }

    /// Syncs the directory if an entry was made since the last sync of it. The changes counted
    /// when the sync begins are the ones it covers: one made during it waits for the next.
    pub fn sync_if_changed(&self) -> io::Result<()> {
        let changed = self.changed.load(Ordering::Acquire);
        if self.synced.load(Ordering::Acquire) >= changed {
            return Ok(());
        }
        File::open(&self.dir)?.sync_all()?;
        self.synced.fetch_max(changed, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_synced_once_and_a_change_after_a_sync_waits_for_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entries = DirEntries::new(dir.path().to_path_buf());
        assert!(!entries.unsynced(), "a directory starts synced");
        entries.changed();
        assert!(entries.unsynced());
        entries.sync_if_changed().expect("synced");
        assert!(!entries.unsynced());
        entries.changed();
        entries.changed();
        assert!(entries.unsynced(), "two changes since");
        entries.sync_if_changed().expect("synced");
        assert!(!entries.unsynced());
    }

    #[test]
    fn a_directory_that_cannot_be_opened_is_an_error_and_stays_unsynced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entries = DirEntries::new(dir.path().join("gone"));
        entries.changed();
        assert!(entries.sync_if_changed().is_err());
        assert!(entries.unsynced(), "still to sync");
    }
}
