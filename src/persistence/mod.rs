//! Durable state (`[persistence]`): what the broker acknowledged survives `kill -9`, and with
//! `fsync = "always"` power loss. Today: retained messages (with their MQTT 5 properties and
//! expiry). Sessions and their queued messages are not kept yet (`docs/persistence.md`).
//!
//! The Registry never blocks on disk: it submits each change to a [`Store`], whose writer
//! thread (`writer.rs`) appends a drain of its queue with one write, syncs by the policy, and
//! reports the last durable change ([`Persisted`]); only then does the Registry let the
//! publisher's PUBACK/PUBREC go out. The log (`log.rs`) is a directory of segment files of
//! checksummed records (`record.rs`), compacted into a snapshot when it grows to twice the live
//! state.

mod log;
mod record;
mod writer;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use thiserror::Error;
use tracing::{info, warn};

pub use record::{Record, RecordError};
use writer::{Command, Writer};

use crate::config::PersistenceConfig;
use crate::message::Message;

/// Commands the writer's queue holds before a submit waits.
const QUEUE: usize = 65_536;

/// Why durable state could not be opened or written.
#[derive(Debug, Error)]
pub enum PersistenceError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another process holds the directory's lock.
    #[error(
        "{path} is in use by another broker (its lock file is held); one broker per directory"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A segment is damaged somewhere other than its torn tail.
    #[error("{path}: damaged at byte {offset} ({what}); start with `repair = true` in [persistence] to cut the damaged part and go on")]
    Damaged {
        /// The segment.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong there.
        what: &'static str,
    },
}

impl PersistenceError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        PersistenceError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Sent by the writer thread to the Registry: every change up to this sequence number is
/// written (and synced, as the policy asks).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Persisted(pub u64);

/// Durable state read at start, before the writer runs.
pub struct Recovered {
    /// The retained messages, expired ones left out.
    pub retained: Vec<Arc<Message>>,
    writer: Writer,
}

/// Opens the directory of `config` (creating it), takes its lock, and reads the log back.
pub fn open(config: &PersistenceConfig) -> Result<Option<Recovered>, PersistenceError> {
    let Some(dir) = &config.dir else {
        return Ok(None);
    };
    let started = Instant::now();
    fs::create_dir_all(dir).map_err(|e| PersistenceError::io(dir, e))?;
    let lock_path = dir.join("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| PersistenceError::io(&lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(PersistenceError::Locked { path: lock_path })
        }
        Err(fs::TryLockError::Error(e)) => return Err(PersistenceError::io(&lock_path, e)),
    }
    info!(dir = %dir.display(), "reading persisted state");
    let scanned = log::scan(dir, config.repair)?;
    let mut writer = Writer {
        log: scanned.log,
        _lock: lock,
        live: HashMap::new(),
        live_bytes: 0,
        policy: config.fsync,
        interval: config.fsync_interval,
    };
    let mut retained: HashMap<String, Arc<Message>> = HashMap::new();
    let records = scanned.records.len();
    for record in scanned.records {
        let frame = record.to_frame();
        writer.track(&record, frame);
        match record {
            Record::RetainSet(message) => {
                retained.insert(message.topic.clone(), message);
            }
            Record::RetainClear(topic) => {
                retained.remove(&topic);
            }
            Record::Snapshot => {}
        }
    }
    let now = Instant::now();
    let before = retained.len();
    retained.retain(|_, m| !m.is_expired(now));
    let expired = before - retained.len();
    info!(
        records,
        retained = retained.len(),
        expired_while_down = expired,
        bytes = writer.log.total_bytes(),
        millis = started.elapsed().as_millis() as u64,
        "persisted state recovered"
    );
    Ok(Some(Recovered {
        retained: retained.into_values().collect(),
        writer,
    }))
}

impl Recovered {
    /// Starts the writer thread; it reports durability to `durable` (the Registry).
    pub fn start(self, durable: Recipient<Persisted>) -> Result<Store, PersistenceError> {
        let (tx, rx) = sync_channel(QUEUE);
        let writer = self.writer;
        std::thread::Builder::new()
            .name("switchboard-persistence".into())
            .spawn(move || writer.run(rx, durable))
            .map_err(|e| PersistenceError::io(Path::new("persistence writer thread"), e))?;
        Ok(Store { tx, next_seq: 0 })
    }
}

/// The Registry's handle on the writer thread.
pub struct Store {
    tx: SyncSender<Command>,
    next_seq: u64,
}

impl Store {
    /// Submits a change; returns its sequence number, reported in [`Persisted`] once durable.
    /// Waits only if the writer is [`QUEUE`] changes behind.
    pub fn submit(&mut self, record: Record) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        match self.tx.try_send(Command::Append { record, seq }) {
            Ok(()) => {}
            Err(TrySendError::Full(command)) => {
                warn!("the persistence writer is behind; the Registry waits for it");
                let _ = self.tx.send(command);
            }
            // The writer stopped (it logged why); nothing more becomes durable.
            Err(TrySendError::Disconnected(_)) => {}
        }
        seq
    }

    /// The sequence number of the last change submitted (0: none yet).
    pub fn last_submitted(&self) -> u64 {
        self.next_seq
    }

    /// Syncs everything submitted so far and waits for it (graceful shutdown).
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.send(Command::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}
