//! Durable state (`[persistence]`): what the broker acknowledged survives `kill -9`, and with
//! `fsync = "always"` power loss: retained messages (with their MQTT 5 properties and expiry),
//! sessions with an expiry interval above 0 with their subscriptions, their QoS 1/2 messages
//! queued or in flight, and their inbound QoS 2 packet ids. Wills are not kept yet
//! (`docs/persistence.md`).
//!
//! Neither the Registry nor a Session blocks on disk: each submits its changes to the
//! [`Store`], whose writer thread (`writer.rs`) appends a drain of its queue with one write,
//! syncs by the policy, and reports the last durable change: to the Registry ([`Persisted`])
//! and to the Sessions that asked ([`Durable`]). Only then do the acknowledgements of what
//! those changes keep go out. The log (`log.rs`) is a directory of segment files of
//! checksummed records (`record.rs`), compacted into a snapshot when it grows to twice the live
//! state.

mod log;
mod record;
mod wire;
mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use thiserror::Error;
use tracing::{info, warn};

pub use record::{LiveEffect, Record, RecordError};
use writer::{Command, Writer};

use crate::config::PersistenceConfig;
use crate::message::{Delivery, Message, QoS, SubscriptionOptions};
use crate::session_state::{InflightEntry, InflightStage, SessionState};

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

/// Sent by the writer thread to a Session that asked ([`Store::notify_when_durable`]): every
/// change up to this sequence number is durable.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Durable(pub u64);

/// A persistent session read back at start.
#[derive(Debug)]
pub struct RecoveredSession {
    /// The client id.
    pub client_id: String,
    /// Session Expiry Interval in seconds; `u32::MAX` never.
    pub expiry: u32,
    /// How much of the expiry interval is left; `None` never expires.
    pub expires_in: Option<Duration>,
    /// Its subscriptions, by filter.
    pub subscriptions: Vec<(String, SubscriptionOptions)>,
    /// Its messages in flight (to re-send with their packet ids) and queued, and its inbound
    /// QoS 2 ids awaiting PUBREL.
    pub state: SessionState,
}

/// Durable state read at start, before the writer runs.
pub struct Recovered {
    /// The retained messages, expired ones left out.
    pub retained: Vec<Arc<Message>>,
    /// The persistent sessions, expired ones left out.
    pub sessions: Vec<RecoveredSession>,
    /// What start-up found ended while the broker was down (expired sessions and messages),
    /// to be recorded.
    pub ended: Vec<Record>,
    writer: Option<Writer>,
    next_id: u64,
}

/// A queued message as the records build it up.
struct QueuedInLog {
    delivery: Delivery,
    pid: Option<u16>,
    released: bool,
}

/// A session as the records build it up.
struct SessionInLog {
    expiry: u32,
    offline_since: u64,
    subscriptions: BTreeMap<String, SubscriptionOptions>,
    queued: BTreeMap<u64, QueuedInLog>,
    inbound_qos2: BTreeSet<u16>,
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
    let mut max_id = 0;
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
                    queued: BTreeMap::new(),
                    inbound_qos2: BTreeSet::new(),
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
            Record::Queued {
                client_id,
                id,
                qos,
                retain,
                subscription_ids,
                message,
            } => {
                max_id = max_id.max(id);
                if let Some(session) = sessions.get_mut(&client_id) {
                    let mut delivery =
                        Delivery::new(message, qos, retain).with_extras(subscription_ids, None);
                    delivery.set_durable_id(Some(id));
                    let queued = QueuedInLog {
                        delivery,
                        pid: None,
                        released: false,
                    };
                    session.queued.insert(id, queued);
                }
            }
            Record::Sent { client_id, id, pid } => {
                if let Some(q) = queued_in(&mut sessions, &client_id, id) {
                    q.pid = Some(pid);
                }
            }
            Record::Released { client_id, id } => {
                if let Some(q) = queued_in(&mut sessions, &client_id, id) {
                    q.released = true;
                }
            }
            Record::Done { client_id, id } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.queued.remove(&id);
                }
            }
            Record::InboundQos2 { client_id, pid } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.inbound_qos2.insert(pid);
                }
            }
            Record::InboundReleased { client_id, pid } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.inbound_qos2.remove(&pid);
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
    let mut ended = Vec::new();
    let mut queued_messages = 0usize;
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
                    ended.push(Record::SessionGone(client_id));
                    continue;
                }
                Some(interval - offline_for)
            }
        };
        let mut state = SessionState {
            inbound_qos2: session.inbound_qos2.into_iter().collect(),
            ..SessionState::default()
        };
        for (id, queued) in session.queued {
            // [MQTT-3.3.2-5] a message whose expiry passed while the broker was down is gone;
            // one already sent is still re-sent (its receiver may hold it).
            if queued.pid.is_none() && queued.delivery.message.is_expired(now) {
                ended.push(Record::Done {
                    client_id: client_id.clone(),
                    id,
                });
                continue;
            }
            queued_messages += 1;
            match queued.pid {
                Some(pid) => state.inflight.push_back(InflightEntry {
                    pid,
                    stage: match (queued.released, queued.delivery.qos) {
                        (true, _) => InflightStage::AwaitingPubComp,
                        (false, QoS::ExactlyOnce) => InflightStage::AwaitingPubRec,
                        (false, _) => InflightStage::AwaitingPubAck,
                    },
                    delivery: queued.delivery,
                }),
                None => state.queue.push_back(queued.delivery),
            }
        }
        live_sessions.push(RecoveredSession {
            client_id,
            expiry: session.expiry,
            expires_in,
            subscriptions: session.subscriptions.into_iter().collect(),
            state,
        });
    }
    info!(
        records,
        retained = retained.len(),
        expired_while_down = expired,
        sessions = live_sessions.len(),
        sessions_expired_while_down = ended
            .iter()
            .filter(|r| matches!(r, Record::SessionGone(_)))
            .count(),
        queued_messages,
        bytes = writer.log.total_bytes(),
        millis = started.elapsed().as_millis() as u64,
        "persisted state recovered"
    );
    Ok(Some(Recovered {
        retained: retained.into_values().collect(),
        sessions: live_sessions,
        ended,
        writer: Some(writer),
        next_id: max_id + 1,
    }))
}

/// The queued message `id` of `client_id`'s session, if both are in the log.
fn queued_in<'a>(
    sessions: &'a mut BTreeMap<String, SessionInLog>,
    client_id: &str,
    id: u64,
) -> Option<&'a mut QueuedInLog> {
    sessions.get_mut(client_id)?.queued.get_mut(&id)
}

impl Recovered {
    /// Starts the writer thread; it reports durability to `durable` (the Registry) and to the
    /// Sessions that ask.
    pub fn start(&mut self, durable: Recipient<Persisted>) -> Result<Store, PersistenceError> {
        let (tx, rx) = sync_channel(QUEUE);
        let shared = Arc::new(StoreShared {
            submitter: Mutex::new(Submitter { tx, next_seq: 0 }),
            durable: AtomicU64::new(0),
            waiters: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(self.next_id),
        });
        let Some(writer) = self.writer.take() else {
            return Err(PersistenceError::io(
                Path::new("persistence writer thread"),
                std::io::Error::other("already started"),
            ));
        };
        let for_writer = shared.clone();
        std::thread::Builder::new()
            .name("switchboard-persistence".into())
            .spawn(move || writer.run(rx, durable, for_writer))
            .map_err(|e| PersistenceError::io(Path::new("persistence writer thread"), e))?;
        Ok(Store(shared))
    }
}

/// The sending end of the writer's queue, and the number of the last change sent.
struct Submitter {
    tx: SyncSender<Command>,
    next_seq: u64,
}

/// What the [`Store`] handles and the writer thread share.
pub struct StoreShared {
    /// Numbers changes and sends them in that order (one lock, so that numbers and queue
    /// order agree).
    submitter: Mutex<Submitter>,
    /// The last change the writer reported durable.
    durable: AtomicU64,
    /// Sessions waiting for a change to be durable: (its number, who to tell).
    waiters: Mutex<Vec<(u64, Recipient<Durable>)>>,
    /// The next durable id of a queued message.
    next_id: AtomicU64,
}

impl StoreShared {
    /// The waiters, even if a thread panicked holding them.
    fn lock_waiters(&self) -> MutexGuard<'_, Vec<(u64, Recipient<Durable>)>> {
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A handle on the writer thread, shared by the Registry and every Session.
#[derive(Clone)]
pub struct Store(Arc<StoreShared>);

impl Store {
    /// Submits a change; returns its sequence number, reported durable once it is. Waits only
    /// if the writer is [`QUEUE`] changes behind.
    pub fn submit(&self, record: Record) -> u64 {
        self.send(|seq| Command::Append { record, seq })
    }

    /// Submits changes, in order, as one; returns the sequence number of the last.
    pub fn submit_all(&self, records: Vec<Record>) -> u64 {
        self.send(|seq| Command::AppendAll { records, seq })
    }

    fn send(&self, command: impl FnOnce(u64) -> Command) -> u64 {
        let mut submitter = self
            .0
            .submitter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        submitter.next_seq += 1;
        let seq = submitter.next_seq;
        match submitter.tx.try_send(command(seq)) {
            Ok(()) => {}
            Err(TrySendError::Full(command)) => {
                // Pushes back on whoever submits: a Session stops reading its socket, the
                // Registry its mailbox, until the writer catches up.
                warn!("the persistence writer is behind; waiting for it");
                let _ = submitter.tx.send(command);
            }
            // The writer stopped (it logged why); nothing more becomes durable.
            Err(TrySendError::Disconnected(_)) => {}
        }
        seq
    }

    /// The sequence number of the last change submitted (0: none yet).
    pub fn last_submitted(&self) -> u64 {
        self.0
            .submitter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .next_seq
    }

    /// The last change the writer reported durable.
    pub fn durable(&self) -> u64 {
        self.0.durable.load(Ordering::SeqCst)
    }

    /// Whether change `seq` is durable; if not, `to` gets [`Durable`] once it is.
    pub fn notify_when_durable(&self, seq: u64, to: &Recipient<Durable>) -> bool {
        let mut waiters = self.0.lock_waiters();
        // Read under the lock the writer takes after storing `durable`: either this sees the
        // new value, or the writer sees this waiter.
        if self.durable() >= seq {
            return true;
        }
        waiters.push((seq, to.clone()));
        false
    }

    /// A new durable id for a queued message.
    pub fn next_id(&self) -> u64 {
        self.0.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Syncs everything submitted so far and waits for it (graceful shutdown).
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        let tx = self
            .0
            .submitter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .tx
            .clone();
        if tx.send(Command::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }
}
