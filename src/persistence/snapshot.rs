//! Snapshot segments: the live frames read back from where they are in the log and written
//! after a snapshot marker, as a compaction's new segment ([`write_snapshot_segment`], on the
//! compaction's thread) or as a backup ([`write_backup`], on a backup's thread). Either runs
//! beside the writer thread, which only appends past the frames read.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::Receiver;

use super::log::{segment_path, sync_dir, FrameAt};
use super::queued_listing::QueuedListing;
use super::record::{Record, LOG_FORMAT};
use super::PersistenceError;

/// Writes segment `id` of the log in `dir` as a snapshot holding the `live` frames (read from
/// where they are, in that order): syncs `previous` if given (the segment appended to until
/// then, when the writer goes on in a segment after the snapshot's: so that no later segment
/// outlives its tail), then writes to a temporary file, synced, renamed into place, the
/// directory synced. Returns where each frame is now, in the same order, and the segment's
/// size.
pub fn write_snapshot_segment(
    dir: &Path,
    id: u64,
    previous: Option<&Path>,
    live: &[FrameAt],
) -> Result<(Vec<FrameAt>, u64), PersistenceError> {
    let mut moved = Vec::with_capacity(live.len());
    let written = write_snapshot_segment_with(dir, id, previous, |snapshot| {
        for at in live {
            moved.push(snapshot.add(at)?);
        }
        Ok(())
    })?;
    Ok((moved, written))
}

/// What a compaction's writer lists for its thread, slice by slice (`compaction.rs`).
pub enum Listed {
    /// Frames to write next, in this order.
    Frames(Vec<FrameAt>),
    /// The queued messages, listed in no order: the thread sorts them into a snapshot's
    /// order and writes them next (`queued_listing.rs`).
    Queued(QueuedListing),
    /// Every frame was listed: the snapshot is complete.
    End,
}

/// What [`write_listed_snapshot_segment`] wrote.
pub struct ListedSnapshot {
    /// The frames listed, in the order written.
    pub listed: Vec<FrameAt>,
    /// Where each of them is now, in the same order.
    pub moved: Vec<FrameAt>,
    /// The segment's size.
    pub written: u64,
    /// The queued messages' listing as sorted and written, and the index in `listed` of its
    /// first frame; `None` if none was sent.
    pub queued: Option<(usize, QueuedListing)>,
}

/// A snapshot segment written from the frames the writer lists as it goes ([`Listed`],
/// received from `slices` until `End`), as [`write_snapshot_segment`] does with a list given
/// at once. If `slices` closes before `End` (the writer stopped), nothing is renamed into
/// place.
pub fn write_listed_snapshot_segment(
    dir: &Path,
    id: u64,
    previous: Option<&Path>,
    slices: &Receiver<Listed>,
) -> Result<ListedSnapshot, PersistenceError> {
    let (mut listed, mut moved) = (Vec::new(), Vec::new());
    let mut queued = None;
    let written = write_snapshot_segment_with(dir, id, previous, |snapshot| loop {
        match slices.recv() {
            Ok(Listed::Frames(frames)) => {
                moved.reserve(frames.len());
                for at in &frames {
                    moved.push(snapshot.add(at)?);
                }
                listed.extend(frames);
            }
            Ok(Listed::Queued(mut listing)) => {
                listing.sort();
                let start = listed.len();
                moved.reserve(listing.len());
                listed.reserve(listing.len());
                for at in listing.frames() {
                    moved.push(snapshot.add(&at)?);
                    listed.push(at);
                }
                queued = Some((start, listing));
            }
            Ok(Listed::End) => return Ok(()),
            Err(_) => {
                return Err(PersistenceError::io(
                    dir,
                    std::io::Error::other("compaction abandoned: the writer stopped listing"),
                ))
            }
        }
    })?;
    Ok(ListedSnapshot {
        listed,
        moved,
        written,
        queued,
    })
}

/// Writes segment `id` as a snapshot of the frames `fill` adds (see
/// [`write_snapshot_segment`]). Returns its size.
fn write_snapshot_segment_with(
    dir: &Path,
    id: u64,
    previous: Option<&Path>,
    fill: impl FnOnce(&mut SnapshotFile) -> Result<(), PersistenceError>,
) -> Result<u64, PersistenceError> {
    if let Some(previous) = previous {
        File::open(previous)
            .and_then(|file| file.sync_data())
            .map_err(|e| PersistenceError::io(previous, e))?;
    }
    let path = segment_path(dir, id);
    let tmp = path.with_extension("log.tmp");
    let written = SnapshotFile::create(dir, id, &tmp)
        .and_then(|mut snapshot| {
            fill(&mut snapshot)?;
            snapshot.finish(&[], true)
        })
        .and_then(|written| {
            fs::rename(&tmp, &path).map_err(|e| PersistenceError::io(&path, e))?;
            sync_dir(dir)?;
            Ok(written)
        });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// A snapshot segment being written: the live frames read back from the segments of `dir`
/// after a format record and a snapshot marker, frame by frame.
struct SnapshotFile<'a> {
    path: &'a Path,
    file: File,
    /// The segment id its frames' new places are given in.
    id: u64,
    /// Bytes written to the file so far.
    written: u64,
    /// Bytes to write next.
    buffer: Vec<u8>,
    reader: FrameReader<'a>,
}

impl<'a> SnapshotFile<'a> {
    /// A new file at `path` for a snapshot in segment `id` of the log in `dir`.
    fn create(dir: &'a Path, id: u64, path: &'a Path) -> Result<Self, PersistenceError> {
        let file = File::create(path).map_err(|e| PersistenceError::io(path, e))?;
        let mut buffer = Record::LogFormat(LOG_FORMAT).to_frame();
        Record::Snapshot.write_frame(&mut buffer);
        Ok(SnapshotFile {
            path,
            file,
            id,
            written: 0,
            buffer,
            reader: FrameReader::new(dir),
        })
    }

    /// Adds the frame `at` (read from where it is); returns where it is in this file.
    fn add(&mut self, at: &FrameAt) -> Result<FrameAt, PersistenceError> {
        let now = FrameAt {
            segment: self.id,
            offset: self.written + self.buffer.len() as u64 + self.reader.pending(),
            len: at.len,
        };
        self.reader.read(at, &mut self.buffer)?;
        if self.buffer.len() >= 1 << 20 {
            self.reader.finish(&mut self.buffer)?;
            self.file
                .write_all(&self.buffer)
                .map_err(|e| PersistenceError::io(self.path, e))?;
            self.written += self.buffer.len() as u64;
            self.buffer.clear();
        }
        Ok(now)
    }

    /// Writes what is left, then `trailer`, and syncs the file if `sync` (a compaction's; a
    /// backup is streamed and deleted, and `restore` syncs its copy). Returns its size.
    fn finish(mut self, trailer: &[u8], sync: bool) -> Result<u64, PersistenceError> {
        self.reader.finish(&mut self.buffer)?;
        self.buffer.extend_from_slice(trailer);
        self.file
            .write_all(&self.buffer)
            .and_then(|()| if sync { self.file.sync_all() } else { Ok(()) })
            .map_err(|e| PersistenceError::io(self.path, e))?;
        Ok(self.written + self.buffer.len() as u64)
    }
}

/// Writes the `live` frames of the log in `dir` as a log of one segment to `path` (a backup:
/// the first segment, `0000000000000001.log`, of a directory to restore into), ending with
/// its format record again as an end mark (`backup.rs`). Returns its size. Safe on another
/// thread than the writer's while no compaction deletes the segments the frames are in: the
/// writer only appends past them.
pub fn write_backup(dir: &Path, live: &[FrameAt], path: &Path) -> Result<u64, PersistenceError> {
    let end_mark = Record::LogFormat(LOG_FORMAT).to_frame();
    let written = SnapshotFile::create(dir, 1, path).and_then(|mut snapshot| {
        for at in live {
            snapshot.add(at)?;
        }
        snapshot.finish(&end_mark, false)
    });
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// Reads frames back from the segments for a compaction, one read for a run of frames that
/// follow each other in one segment (a snapshot's, written in the order they are read).
struct FrameReader<'d> {
    dir: &'d Path,
    /// The segment read from, opened for reading.
    open: Option<(u64, File)>,
    /// The run not read yet: its segment, first byte and length.
    run: Option<(u64, u64, u64)>,
}

impl<'d> FrameReader<'d> {
    fn new(dir: &'d Path) -> Self {
        FrameReader {
            dir,
            open: None,
            run: None,
        }
    }

    /// Bytes of the run not read yet (they go to the buffer before the next frame).
    fn pending(&self) -> u64 {
        self.run.map_or(0, |(_, _, len)| len)
    }

    /// Adds the frame `at` to the run, or reads the run into `buffer` and starts another.
    fn read(&mut self, at: &FrameAt, buffer: &mut Vec<u8>) -> Result<(), PersistenceError> {
        if let Some((segment, start, len)) = &mut self.run {
            // Runs stop at 1 MiB: the buffer they are read into is written out at that size.
            if *segment == at.segment && *start + *len == at.offset && *len < 1 << 20 {
                *len += u64::from(at.len);
                return Ok(());
            }
        }
        self.finish(buffer)?;
        self.run = Some((at.segment, at.offset, u64::from(at.len)));
        Ok(())
    }

    /// Reads the run into `buffer`.
    fn finish(&mut self, buffer: &mut Vec<u8>) -> Result<(), PersistenceError> {
        let Some((segment, start, len)) = self.run.take() else {
            return Ok(());
        };
        let path = segment_path(self.dir, segment);
        let file = match &mut self.open {
            Some((open, file)) if *open == segment => file,
            slot => {
                let file = File::open(&path).map_err(|e| PersistenceError::io(&path, e))?;
                &mut slot.insert((segment, file)).1
            }
        };
        let from = buffer.len();
        buffer.resize(from + len as usize, 0);
        file.read_exact_at(&mut buffer[from..], start)
            .map_err(|e| PersistenceError::io(&path, e))
    }
}
