//! Durable state (`[persistence]`): what the broker acknowledged survives `kill -9`, and with
//! `fsync = "always"` power loss: retained messages (with their MQTT 5 properties and expiry),
//! sessions with an expiry interval above 0 with their subscriptions, their QoS 1/2 messages
//! queued or in flight, their inbound QoS 2 packet ids, and their wills with the wall-clock
//! time a delayed one is due.
//!
//! Neither the Registry nor a Session blocks on disk: each submits its changes to the
//! [`Store`], whose writer thread (`writer.rs`) appends a drain of its queue with one write,
//! syncs by the policy, and reports the last durable change ([`Durable`]) to the Registry and
//! the Sessions that asked, once per thread they run on (`durable_waiters.rs`); it runs as a
//! batch thread, so that its wake-ups do not preempt theirs (`batch_thread.rs`), and is woken
//! after a submission at once or at the end of the thread's turn (`wake.rs`). With
//! `fsync = "always"` a syncing thread (`syncer.rs`) syncs while the writer appends the next
//! commits, and the writer reports what is written (what survives `kill -9`) before what is
//! synced; with `fsync = "interval"` one (`interval_sync.rs`) makes the periodic sync, so that
//! no commit waits behind it. Only then do the acknowledgements of what
//! those changes keep go out. The log (`log.rs`) is a directory of segment files of
//! checksummed records (`record.rs`; the ones written for every message are framed from borrowed
//! fields, `record_ref.rs`), compacted into a snapshot when it grows to twice the live state
//! (`compaction.rs`: on the writer's thread or beside it);
//! the segments a snapshot supersedes are deleted on a thread of their own
//! (`segment_deleter.rs`).
//! The writer and the syncing thread count their commits, syncs, failures and compactions for
//! `/metrics`, the dashboard and the admin API (`stats.rs`: per commit and per sync, never per
//! message).

mod backup;
mod batch_thread;
mod compaction;
mod dir_entries;
mod durable_waiters;
mod frame;
mod guarded;
mod interval_sync;
mod live;
mod live_state;
mod log;
mod queued_listing;
mod record;
mod record_ref;
mod segment_deleter;
mod snapshot;
mod stats;
mod store;
mod syncer;
mod wake;
mod wire;
mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use thiserror::Error;
use tracing::info;

pub use backup::{restore, BackupError, BackupFile, RestoreError, Restored};
pub use durable_waiters::DurableTo;
pub use live::LiveKind;
pub use record::{Record, RecordError, SessionUser, LOG_FORMAT};
pub use record_ref::{Framed, RecordRef};
pub use stats::{PersistenceSnapshot, PersistenceStats, SYNC_BOUNDS};
pub use store::{Store, StoreShared};
use writer::Writer;

use crate::config::PersistenceConfig;
use crate::message::{Delivery, LastWill, Message, QoS, SubscriptionOptions};
use crate::session_state::{InflightEntry, InflightStage, SessionState};

/// When a will whose connection ended at `now_ms` (Unix milliseconds) goes out: after its Will
/// Delay Interval or when its session (of `session_expiry` seconds) ends, whichever comes first
/// [MQTT-3.1.2-8].
pub fn will_due_ms(will: &LastWill, session_expiry: u32, now_ms: u64) -> u64 {
    now_ms.saturating_add(u64::from(will.delay.min(session_expiry)) * 1000)
}

/// Now, in milliseconds since the Unix epoch (the wall clock of session and will deadlines).
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
    /// `persistence.dir` names something that is not a directory, or a path under a file.
    #[error(
        "persistence.dir: {path} is not a directory; name a directory, or a path to create one at"
    )]
    NotADirectory {
        /// The path configured, or the file on its way.
        path: PathBuf,
    },
    /// `persistence.dir` could not be created, or its lock file not made in it.
    #[error("persistence.dir: cannot use {path}: {source}; the broker's user must be able to create it and write in it")]
    DirUnusable {
        /// The directory, or the lock file in it.
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
    /// A segment was started by a newer build, in a log format this one cannot read.
    #[error("{path} is in log format {found}, written by a newer Switchboard; this one reads format {reads} and older, so it leaves the directory as it is: start the newer build, or give this one another directory")]
    NewerFormat {
        /// The segment.
        path: PathBuf,
        /// Its format.
        found: u16,
        /// The newest this build reads ([`LOG_FORMAT`]).
        reads: u16,
    },
    /// The oldest segment in the directory is not the log's first and does not start with a
    /// snapshot: the segments before it are missing.
    #[error("{path} does not start with a snapshot, and the segments before it are missing (a log starts at 0000000000000001.log; each later segment with a snapshot); restore them, or start with `repair = true` in [persistence] to read what is here")]
    SegmentsMissing {
        /// The oldest segment there is.
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

/// Sent by the writer thread to a Session or the Registry that asked
/// ([`Store::notify_when_durable`]): every change up to this sequence number is written (and
/// synced, as the policy asks). Also to a Session that asked [`Store::notify_when_written`],
/// once its change is written, with what is durable then (which may be less).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Durable(
    pub u64,
    /// Held for its `Drop`: the waiter it was told to has handled it (or it was dropped).
    #[allow(dead_code)]
    Option<durable_waiters::Told>,
);

impl Durable {
    /// What a Session or the Registry tells itself: everything up to `seq` is durable.
    pub fn at(seq: u64) -> Self {
        Durable(seq, None)
    }
}

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
    /// Its will and when it is due, Unix milliseconds (at or before now: at start). A will
    /// armed when the broker stopped counts its delay from start-up, as the session's expiry
    /// does.
    pub will: Option<(LastWill, u64)>,
    /// Who its client last connected as, if that was recorded (only with an ACL).
    pub user: Option<SessionUser>,
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
    /// The wills of sessions that expired while the broker was down: a session's end
    /// publishes its will `[MQTT-3.1.2-8]`, so they go out at start. By client id.
    pub wills_of_ended: Vec<(String, LastWill)>,
    writer: Option<Writer>,
    next_id: u64,
}

/// A queued message as the records build it up.
struct QueuedInLog {
    delivery: Delivery,
    pid: Option<u16>,
    released: bool,
    /// When it was sent, in the order of the log's `Sent` records: the order a resumed client
    /// gets the messages in flight again [MQTT-4.6.0-1].
    sent_order: u64,
}

/// A session as the records build it up.
struct SessionInLog {
    expiry: u32,
    offline_since: u64,
    subscriptions: BTreeMap<String, SubscriptionOptions>,
    queued: BTreeMap<u64, QueuedInLog>,
    inbound_qos2: BTreeSet<u16>,
    /// Its will, and when it is due (0: armed, its client was connected).
    will: Option<(u64, LastWill)>,
    user: Option<SessionUser>,
}

/// What start-up refuses of `dir` before it creates or locks anything: a path that is not a
/// directory, or one that would have to be made under a file. Touches nothing (`switchboard
/// check` asks it beside a running broker).
pub fn check_dir(dir: &Path) -> Result<(), PersistenceError> {
    // The nearest part of the path that exists; a relative path's is at worst `.`.
    let existing = dir
        .ancestors()
        .find(|part| part.as_os_str().is_empty() || part.exists());
    match existing {
        Some(part) if !part.as_os_str().is_empty() && !part.is_dir() => {
            Err(PersistenceError::NotADirectory {
                path: part.to_path_buf(),
            })
        }
        _ => Ok(()),
    }
}

/// Opens the directory of `config` (creating it), takes its lock, and reads the log back.
pub fn open(config: &PersistenceConfig) -> Result<Option<Recovered>, PersistenceError> {
    let Some(dir) = &config.dir else {
        return Ok(None);
    };
    let started = Instant::now();
    check_dir(dir)?;
    fs::create_dir_all(dir).map_err(|source| PersistenceError::DirUnusable {
        path: dir.clone(),
        source,
    })?;
    let lock_path = dir.join("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| PersistenceError::DirUnusable {
            path: lock_path.clone(),
            source,
        })?;
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
        live: Default::default(),
        read_back: Vec::new(),
        policy: config.fsync,
        interval: config.fsync_interval,
        compact_floor: config.compact_min_bytes,
        backups: Vec::new(),
        backups_copying: Default::default(),
        compaction: None,
        slow_disk_compactions_left: 0,
    };
    // Seeded per process like the standard hasher, and cheaper per topic than its SipHash.
    let mut retained: HashMap<String, Arc<Message>, foldhash::fast::RandomState> =
        HashMap::default();
    let mut sessions: BTreeMap<String, SessionInLog> = BTreeMap::new();
    let mut max_id = 0;
    let mut sent_records = 0u64;
    let records = scanned.records.len();
    writer.read_back.reserve_exact(records);
    for (record, at) in scanned.records {
        writer.note_read_back(&record, at);
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
                user,
            } => {
                let session = sessions.entry(client_id).or_insert(SessionInLog {
                    expiry,
                    offline_since,
                    subscriptions: BTreeMap::new(),
                    queued: BTreeMap::new(),
                    inbound_qos2: BTreeSet::new(),
                    will: None,
                    user: None,
                });
                session.expiry = expiry;
                session.offline_since = offline_since;
                session.user = user;
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
                        sent_order: 0,
                    };
                    session.queued.insert(id, queued);
                }
            }
            Record::Sent { client_id, id, pid } => {
                if let Some(q) = queued_in(&mut sessions, &client_id, id) {
                    q.pid = Some(pid);
                    sent_records += 1;
                    q.sent_order = sent_records;
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
            Record::WillSet {
                client_id,
                deadline,
                will,
            } => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.will = Some((deadline, *will));
                }
            }
            Record::WillClear(client_id) => {
                if let Some(session) = sessions.get_mut(&client_id) {
                    session.will = None;
                }
            }
            Record::Snapshot | Record::LogFormat(_) => {}
        }
    }
    let now = Instant::now();
    let before = retained.len();
    retained.retain(|_, m| !m.is_expired(now));
    let expired = before - retained.len();
    let now_ms = unix_ms_now();
    let mut live_sessions = Vec::new();
    let mut ended = Vec::new();
    let mut wills_of_ended = Vec::new();
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
                    if let Some((_, will)) = session.will {
                        wills_of_ended.push((client_id.clone(), will));
                    }
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
        // In flight in the order sent [MQTT-4.6.0-1]; queued in id order, which keeps each
        // publisher's order [MQTT-4.6.0-6] (its messages take ids as they are routed).
        let mut in_flight = Vec::new();
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
                Some(pid) => in_flight.push((
                    queued.sent_order,
                    InflightEntry {
                        pid,
                        stage: match (queued.released, queued.delivery.qos) {
                            (true, _) => InflightStage::AwaitingPubComp,
                            (false, QoS::ExactlyOnce) => InflightStage::AwaitingPubRec,
                            (false, _) => InflightStage::AwaitingPubAck,
                        },
                        delivery: queued.delivery,
                    },
                )),
                None => state.queue.push_back(queued.delivery),
            }
        }
        in_flight.sort_unstable_by_key(|(sent_order, _)| *sent_order);
        state.inflight = in_flight.into_iter().map(|(_, entry)| entry).collect();
        // A will resumes its delay where it stood; one armed at the stop (the connection
        // ended with the broker) starts its delay now [MQTT-3.1.3-9].
        let will = session.will.map(|(deadline, will)| {
            let due_ms = match deadline {
                0 => will_due_ms(&will, session.expiry, now_ms),
                at => at,
            };
            (will, due_ms)
        });
        live_sessions.push(RecoveredSession {
            client_id,
            expiry: session.expiry,
            expires_in,
            subscriptions: session.subscriptions.into_iter().collect(),
            state,
            will,
            user: session.user,
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
        wills_of_ended,
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

/// Tells when the writer thread has ended: it ends once every [`Store`] handle is gone, having
/// written what it was given, and with it the directory's lock is released.
pub struct WriterEnded(std::sync::mpsc::Receiver<()>);

impl WriterEnded {
    /// Waits up to `within` for the writer thread to end; whether it has.
    pub fn wait(&self, within: Duration) -> bool {
        matches!(
            self.0.recv_timeout(within),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        )
    }
}

impl Recovered {
    /// Starts the writer thread; it reports durability to whoever asks the [`Store`], and
    /// counts its commits and syncs into `stats` (shown on `/metrics`).
    pub fn start(
        &mut self,
        stats: Arc<PersistenceStats>,
    ) -> Result<(Store, WriterEnded), PersistenceError> {
        let Some(writer) = self.writer.take() else {
            return Err(PersistenceError::io(
                Path::new("persistence writer thread"),
                std::io::Error::other("already started"),
            ));
        };
        let syncs_each_commit = writer.policy == crate::config::FsyncPolicy::Always;
        let shared = Arc::new(StoreShared::new(self.next_id, syncs_each_commit, stats));
        let for_writer = shared.clone();
        // Dropped as the thread ends, after the writer (and its lock) went at the end of `run`.
        let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("switchboard-persistence".into())
            .spawn(move || {
                let _ended = ended_tx;
                writer.run(for_writer);
            })
            .map_err(|e| PersistenceError::io(Path::new("persistence writer thread"), e))?;
        Ok((Store::new(shared), WriterEnded(ended)))
    }
}
