//! Durable state (`[persistence]`): what the broker acknowledged survives `kill -9`, and with
//! `fsync = "always"` power loss. Today: retained messages (with their MQTT 5 properties and
//! expiry), and sessions with an expiry interval above 0 with their subscriptions. Their queued
//! messages and wills are not kept yet (`docs/persistence.md`).
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

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use thiserror::Error;
use tracing::{info, warn};

pub use record::{Record, RecordError};
use writer::{Command, Writer};

use crate::config::PersistenceConfig;
use crate::message::{Message, SubscriptionOptions};

/// Now, in milliseconds since the Unix epoch (the wall clock of session and will deadlines).
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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

/// A persistent session read back at start.
#[derive(Debug, Clone)]
pub struct RecoveredSession {
    /// The client id.
    pub client_id: String,
    /// Session Expiry Interval in seconds; `u32::MAX` never.
    pub expiry: u32,
    /// How much of the expiry interval is left; `None` never expires.
    pub expires_in: Option<Duration>,
    /// Its subscriptions, by filter.
    pub subscriptions: Vec<(String, SubscriptionOptions)>,
}

/// Durable state read at start, before the writer runs.
pub struct Recovered {
    /// The retained messages, expired ones left out.
    pub retained: Vec<Arc<Message>>,
    /// The persistent sessions, expired ones left out.
    pub sessions: Vec<RecoveredSession>,
    /// Client ids of sessions that expired while the broker was down (to be recorded gone).
    pub expired_sessions: Vec<String>,
    writer: Writer,
}

/// A session as the records build it up.
struct SessionInLog {
    expiry: u32,
    offline_since: u64,
    subscriptions: BTreeMap<String, SubscriptionOptions>,
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
        live: BTreeMap::new(),
        live_bytes: 0,
        policy: config.fsync,
        interval: config.fsync_interval,
    };
    let mut retained: HashMap<String, Arc<Message>> = HashMap::new();
    let mut sessions: BTreeMap<String, SessionInLog> = BTreeMap::new();
    let records = scanned.records.len();
    for (record, frame) in scanned.records {
        writer.track(&record, frame);
        match record {
            Record::RetainSet(message) => {
                retained.insert(message.topic.clone(), message);
            }
            Record::RetainClear(topic) => {
                retained.remove(&topic);
            }
            Record::SessionSet {
                client_id,
                expiry,
                offline_since,
            } => {
                let session = sessions.entry(client_id).or_insert(SessionInLog {
                    expiry,
                    offline_since,
                    subscriptions: BTreeMap::new(),
                });
                session.expiry = expiry;
                session.offline_since = offline_since;
            }
            Record::SessionGone(client_id) => {
                sessions.remove(&client_id);
            }
            Record::Subscribe {
                client_id,
                filter,
                options,
            } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.subscriptions.insert(filter, options);
                }
            }
            Record::Unsubscribe { client_id, filter } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.subscriptions.remove(&filter);
                }
            }
            Record::Snapshot => {}
        }
    }
    let now = Instant::now();
    let before = retained.len();
    retained.retain(|_, m| !m.is_expired(now));
    let expired = before - retained.len();
    let now_ms = unix_ms_now();
    let mut live_sessions = Vec::new();
    let mut expired_sessions = Vec::new();
    for (client_id, session) in sessions {
        // A session that was connected when the broker stopped counts as offline from now.
        let offline_for = match session.offline_since {
            0 => Duration::ZERO,
            since => Duration::from_millis(now_ms.saturating_sub(since)),
        };
        let expires_in = match session.expiry {
            u32::MAX => None,
            expiry => {
                let interval = Duration::from_secs(u64::from(expiry));
                if offline_for >= interval {
                    expired_sessions.push(client_id);
                    continue;
                }
                Some(interval - offline_for)
            }
        };
        live_sessions.push(RecoveredSession {
            client_id,
            expiry: session.expiry,
            expires_in,
            subscriptions: session.subscriptions.into_iter().collect(),
        });
    }
    info!(
        records,
        retained = retained.len(),
        expired_while_down = expired,
        sessions = live_sessions.len(),
        sessions_expired_while_down = expired_sessions.len(),
        bytes = writer.log.total_bytes(),
        millis = started.elapsed().as_millis() as u64,
        "persisted state recovered"
    );
    Ok(Some(Recovered {
        retained: retained.into_values().collect(),
        sessions: live_sessions,
        expired_sessions,
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
