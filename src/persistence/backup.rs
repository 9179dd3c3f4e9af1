//! Backups of a running broker, and restoring one.
//!
//! A backup is what a compaction writes, to a file of its own: a log of one segment holding
//! the live state, as of everything submitted to the store before the backup was asked for
//! (so everything acknowledged by then). Between two commits the writer thread lists where the
//! live frames are (a pause of tens of milliseconds for a million records); a backup thread
//! then reads them back from the segments as a compaction does, while the writer goes on
//! appending past them (and compacts only once the copy is done), into a new file in the
//! persistence directory (`backup-<ms>-<n>.log.tmp`, deleted by the next start if it is still
//! there). Whoever asked opens it, and it is deleted when the answer ([`BackupFile`]) is
//! dropped (the admin API streams it: `GET /api/v1/persistence/backup`).
//!
//! Restoring is putting that file in an empty directory as its first segment
//! (`0000000000000001.log`): [`restore`] does that after reading every record of it back, so a
//! damaged or cut backup is refused with the error a start would give, before anything is
//! installed.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::sync::oneshot;

use super::frame::header_fields;
use super::log::{frame_at, sync_dir};
use super::record::{FRAME_HEADER, MAX_RECORD};
use super::{PersistenceError, Record, Store, LOG_FORMAT};

/// A backup the writer wrote: where, and its size. The file is deleted when this is dropped
/// (open it first: an open file stays readable), so a backup nobody takes is not left behind,
/// wherever the answer stops on its way.
#[derive(Debug)]
pub struct BackupFile {
    /// The file, in the persistence directory.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

impl Drop for BackupFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Why there is no backup.
#[derive(Debug, Error)]
pub enum BackupError {
    /// The broker keeps no durable state (`[persistence] dir` is not set).
    #[error("persistence is off ([persistence] dir is not set): there is nothing to back up")]
    Off,
    /// The writer could not write it.
    #[error("the backup could not be written: {0}")]
    Failed(#[from] PersistenceError),
    /// No backup was written: the broker is shutting down, or no thread could be started for
    /// it (said in the log).
    #[error("no backup was written: the broker is shutting down, or could not start a thread for it (see its log)")]
    Stopped,
}

/// A backup asked of the writer thread, and who waits for it.
pub(super) struct BackupRequest {
    done: oneshot::Sender<Result<BackupFile, PersistenceError>>,
}

impl BackupRequest {
    /// A request, and where its answer comes (the writer's tests ask the writer directly).
    #[cfg(test)]
    pub(super) fn new() -> (
        Self,
        oneshot::Receiver<Result<BackupFile, PersistenceError>>,
    ) {
        let (done, answer) = oneshot::channel();
        (BackupRequest { done }, answer)
    }

    /// Called by the writer: tells whoever asked (if they have gone, the file goes with the
    /// answer: [`BackupFile`]'s drop).
    pub(super) fn answer(self, written: Result<BackupFile, PersistenceError>) {
        let _ = self.done.send(written);
    }
}

impl Store {
    /// Asks the writer thread for a backup of everything submitted so far (see the module
    /// doc). The answer comes once it is written.
    pub fn backup(
        &self,
    ) -> impl std::future::Future<Output = Result<BackupFile, BackupError>> + 'static {
        let (done, answer) = oneshot::channel();
        let accepted = {
            let mut pending = self.shared().lock_pending();
            if pending.closed {
                false
            } else {
                pending.backups.push(BackupRequest { done });
                true
            }
        };
        if accepted {
            self.shared().wake_writer.notify_one();
        }
        async move {
            match answer.await {
                Ok(written) => Ok(written?),
                Err(_) => Err(BackupError::Stopped),
            }
        }
    }
}

/// Copies the records of the log's `segments` (in order, each with where its records end:
/// `None` for up to the zeros written ahead of them) to a new file at `path`, as a log of one
/// segment ending with its end mark: what the log reads back as now, its records not yet
/// compacted away included. Each segment's format record is left out (the file has its own),
/// and every frame's checksum is checked on the way: a damaged frame fails the backup with its
/// file and offset. Returns the file's size. Safe beside the writer thread while no compaction
/// deletes the segments: the writer only appends past the ends given.
pub(super) fn copy_log(
    segments: &[(PathBuf, Option<u64>)],
    path: &Path,
) -> Result<u64, PersistenceError> {
    let written = copy_log_to(segments, path);
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

fn copy_log_to(segments: &[(PathBuf, Option<u64>)], path: &Path) -> Result<u64, PersistenceError> {
    let io = |e| PersistenceError::io(path, e);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io)?);
    let format = Record::LogFormat(LOG_FORMAT).to_frame();
    out.write_all(&format).map_err(io)?;
    let mut written = format.len() as u64;
    for (segment, end) in segments {
        written += copy_segment(segment, *end, &mut out)?;
    }
    // The end mark: a backup cut short on its way is told by its absence.
    out.write_all(&format)
        .and_then(|()| out.flush())
        .map_err(io)?;
    Ok(written + format.len() as u64)
}

/// Copies the frames of `segment` up to `end` (or up to the zeros written ahead of them) to
/// `out`, its first record left out if it is the segment's format. Returns the bytes copied.
fn copy_segment(
    segment: &Path,
    end: Option<u64>,
    out: &mut impl Write,
) -> Result<u64, PersistenceError> {
    let io = |e| PersistenceError::io(segment, e);
    let file = File::open(segment).map_err(io)?;
    let limit = match end {
        Some(end) => end,
        None => file.metadata().map_err(io)?.len(),
    };
    let mut reader = BufReader::with_capacity(1 << 20, file).take(limit);
    let damaged = |offset: u64, what| PersistenceError::Damaged {
        path: segment.to_path_buf(),
        offset,
        what,
    };
    let (mut offset, mut copied) = (0u64, 0u64);
    let mut frame = Vec::new();
    loop {
        let mut header = [0u8; FRAME_HEADER];
        let got = read_full(&mut reader, &mut header).map_err(io)?;
        if got == 0 || (end.is_none() && header.iter().all(|&b| b == 0)) {
            // The segment's end, or the zeros written ahead of its records (no record is
            // empty), however few of them there are before the file's end.
            break;
        }
        if got < FRAME_HEADER {
            return Err(damaged(offset, "record header cut short"));
        }
        let (len, crc) = header_fields(&header);
        if len == 0 || len > MAX_RECORD {
            return Err(damaged(offset, "record length out of range"));
        }
        if offset + (FRAME_HEADER + len) as u64 > limit {
            // Told before the frame's buffer is made: a damaged length is not an allocation.
            return Err(damaged(offset, "record cut short"));
        }
        frame.clear();
        frame.extend_from_slice(&header);
        frame.resize(FRAME_HEADER + len, 0);
        if read_full(&mut reader, &mut frame[FRAME_HEADER..]).map_err(io)? < len {
            return Err(damaged(offset, "record cut short"));
        }
        if crc32fast::hash(&frame[FRAME_HEADER..]) != crc {
            return Err(damaged(offset, "record checksum mismatch"));
        }
        let format = offset == 0
            && matches!(
                Record::decode(&frame[FRAME_HEADER..]),
                Ok(Record::LogFormat(_))
            );
        if !format {
            out.write_all(&frame)
                .map_err(|e| PersistenceError::io(segment, e))?;
            copied += frame.len() as u64;
        }
        offset += frame.len() as u64;
    }
    Ok(copied)
}

/// Reads into `buffer` until it is full or the reader ends; returns how much was read.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut read = 0;
    while read < buffer.len() {
        match reader.read(&mut buffer[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(read)
}

/// Why a backup could not be restored.
#[derive(Debug, Error)]
pub enum RestoreError {
    /// The directory already holds a log: restoring would mix two states.
    #[error("{0} already holds a log (*.log files): restore into an empty or new directory, then point [persistence] dir at it")]
    NotEmpty(PathBuf),
    /// A file operation failed, or the backup does not read back whole.
    #[error(transparent)]
    Persistence(#[from] PersistenceError),
}

/// What a restored backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Records read back from it.
    pub records: usize,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Installs the backup at `backup` as the log of `dir` (created if missing; it must hold no
/// log), after reading every record of it back; a backup that does not read back whole is
/// refused with the error a start would give (file and offset), before `dir` is made or
/// anything is put in it.
pub fn restore(backup: &Path, dir: &Path) -> Result<Restored, RestoreError> {
    let has_log = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .any(|entry| entry.file_name().to_string_lossy().ends_with(".log")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(PersistenceError::io(dir, e).into()),
    };
    if has_log {
        return Err(RestoreError::NotEmpty(dir.to_path_buf()));
    }
    // Checked whole before anything is made: a refused backup leaves no directory behind.
    let records = read_backup(backup)?;
    fs::create_dir_all(dir).map_err(|e| PersistenceError::io(dir, e))?;
    let first = dir.join(format!("{:016}.log", 1));
    let tmp = first.with_extension("log.tmp");
    let bytes = fs::copy(backup, &tmp).map_err(|e| PersistenceError::io(backup, e))?;
    fs::File::open(&tmp)
        .and_then(|file| file.sync_all())
        .map_err(|e| PersistenceError::io(&tmp, e))?;
    fs::rename(&tmp, &first).map_err(|e| PersistenceError::io(&first, e))?;
    sync_dir(dir)?;
    Ok(Restored { records, bytes })
}

/// Reads every record of the backup at `path` back, strictly: any damage is an error naming
/// the offset, and so is a backup without its end mark (a download cut short between two
/// records). Returns how many records of state it holds.
fn read_backup(path: &Path) -> Result<usize, PersistenceError> {
    let data = fs::read(path).map_err(|e| PersistenceError::io(path, e))?;
    let damaged = |offset: usize, what| PersistenceError::Damaged {
        path: path.to_path_buf(),
        offset: offset as u64,
        what,
    };
    let (mut offset, mut records, mut ends_with_mark) = (0, 0, false);
    while offset < data.len() {
        let (record, next) = frame_at(&data, offset).map_err(|d| damaged(offset, d.what))?;
        ends_with_mark = false;
        match record {
            Record::LogFormat(found) if found > LOG_FORMAT => {
                return Err(PersistenceError::NewerFormat {
                    path: path.to_path_buf(),
                    found,
                    reads: LOG_FORMAT,
                })
            }
            Record::LogFormat(_) => ends_with_mark = offset > 0,
            Record::Snapshot => {}
            _ => records += 1,
        }
        offset = next;
    }
    if !ends_with_mark {
        return Err(damaged(
            offset,
            "not a whole backup: it does not end with its end mark (cut short?)",
        ));
    }
    Ok(records)
}
