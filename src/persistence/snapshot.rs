//! Snapshot segments: the live frames read back from where they are in the log and written
//! after a snapshot marker, as a compaction's new segment ([`write_snapshot_segment`], on the
//! compaction's thread) or as a backup ([`write_backup`], on a backup's thread). Either runs
//! beside the writer thread, which only appends past the frames read.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::log::{segment_path, sync_dir, FrameAt};
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
    if let Some(previous) = previous {
        File::open(previous)
            .and_then(|file| file.sync_data())
            .map_err(|e| PersistenceError::io(previous, e))?;
    }
    let path = segment_path(dir, id);
    let tmp = path.with_extension("log.tmp");
    let mut moved = Vec::with_capacity(live.len());
    let snapshot = Snapshot {
        dir,
        id,
        trailer: &[],
        sync: true,
    };
    let written = snapshot
        .write(live.iter(), &tmp, |at| moved.push(at))
        .and_then(|written| {
            fs::rename(&tmp, &path).map_err(|e| PersistenceError::io(&path, e))?;
            sync_dir(dir)?;
            Ok(written)
        });
    match written {
        Ok(written) => Ok((moved, written)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// How a snapshot segment is written: the live frames read back from the segments of `dir`,
/// after a format record and a snapshot marker, then `trailer`.
struct Snapshot<'a> {
    dir: &'a Path,
    /// The segment id its frames' new places are given in.
    id: u64,
    trailer: &'a [u8],
    /// Whether the file is synced before it is closed (a compaction's; a backup is streamed
    /// and deleted, and `restore` syncs its copy).
    sync: bool,
}

impl Snapshot<'_> {
    /// Writes the `live` frames (read from where they are, in that order) to a new file at
    /// `path`; `moved` learns where each frame is in it. Returns its size.
    fn write<'f>(
        &self,
        live: impl Iterator<Item = &'f FrameAt>,
        path: &Path,
        mut moved: impl FnMut(FrameAt),
    ) -> Result<u64, PersistenceError> {
        let mut file = File::create(path).map_err(|e| PersistenceError::io(path, e))?;
        let mut written = 0u64;
        let mut buffer = Record::LogFormat(LOG_FORMAT).to_frame();
        Record::Snapshot.write_frame(&mut buffer);
        let mut reader = FrameReader::new(self.dir);
        for at in live {
            moved(FrameAt {
                segment: self.id,
                offset: written + buffer.len() as u64 + reader.pending(),
                len: at.len,
            });
            reader.read(at, &mut buffer)?;
            if buffer.len() >= 1 << 20 {
                reader.finish(&mut buffer)?;
                file.write_all(&buffer)
                    .map_err(|e| PersistenceError::io(path, e))?;
                written += buffer.len() as u64;
                buffer.clear();
            }
        }
        reader.finish(&mut buffer)?;
        buffer.extend_from_slice(self.trailer);
        file.write_all(&buffer)
            .and_then(|()| if self.sync { file.sync_all() } else { Ok(()) })
            .map_err(|e| PersistenceError::io(path, e))?;
        Ok(written + buffer.len() as u64)
    }
}

/// Writes the `live` frames of the log in `dir` as a log of one segment to `path` (a backup:
/// the first segment, `0000000000000001.log`, of a directory to restore into), ending with
/// its format record again as an end mark (`backup.rs`). Returns its size. Safe on another
/// thread than the writer's while no compaction deletes the segments the frames are in: the
/// writer only appends past them.
pub fn write_backup(dir: &Path, live: &[FrameAt], path: &Path) -> Result<u64, PersistenceError> {
    let end_mark = Record::LogFormat(LOG_FORMAT).to_frame();
    let snapshot = Snapshot {
        dir,
        id: 1,
        trailer: &end_mark,
        sync: false,
    };
    let written = snapshot.write(live.iter(), path, |_| {});
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
