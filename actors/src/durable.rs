//! The optional durable queue: an append-only file of "added" and "removed" records, so messages
//! enqueued and not yet delivered survive a restart of the device process.
//!
//! Records are written (not fsynced) as they happen: they survive a process crash or restart, not
//! a power cut. A torn last record (the process died mid-write) is ignored and cut off on open.
//! The file is rewritten with only the live messages when it opens, when the last live message
//! is delivered, and when removed records outnumber live ones by far.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use switchboard_mqtt::QoS;

use crate::events::MessageId;
use crate::queue::Outgoing;

const ADDED: u8 = b'A';
const REMOVED: u8 = b'R';

/// An append-only log of pending messages.
#[derive(Debug)]
pub struct DurableLog {
    path: PathBuf,
    file: File,
    live: BTreeMap<MessageId, Outgoing>,
    removed_records: usize,
}

impl DurableLog {
    /// Opens (or creates) the log and returns it with the messages still pending, oldest first.
    pub fn open(path: &Path) -> io::Result<(DurableLog, Vec<Outgoing>)> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let live = replay(&bytes);
        let mut log = DurableLog {
            path: path.to_path_buf(),
            // Appending leaves the old records in place until `rewrite` swaps in the new file.
            file: OpenOptions::new().create(true).append(true).open(path)?,
            live,
            removed_records: 0,
        };
        log.rewrite()?;
        let pending = log.live.values().cloned().collect();
        Ok((log, pending))
    }

    /// Number of messages still pending.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Records a new pending message.
    pub fn add(&mut self, message: &Outgoing) -> io::Result<()> {
        let mut record = Vec::with_capacity(16 + message.topic.len() + message.payload.len());
        record.push(ADDED);
        record.extend(message.id.to_be_bytes());
        record.push(message.qos as u8);
        record.push(u8::from(message.retain));
        record.extend((message.topic.len() as u16).to_be_bytes());
        record.extend(message.topic.as_bytes());
        record.extend((message.payload.len() as u32).to_be_bytes());
        record.extend(&message.payload[..]);
        self.file.write_all(&record)?;
        self.live.insert(message.id, message.clone());
        Ok(())
    }

    /// Records that a message was delivered or dropped.
    pub fn remove(&mut self, id: MessageId) -> io::Result<()> {
        if self.live.remove(&id).is_none() {
            return Ok(());
        }
        if self.live.is_empty() {
            return self.rewrite();
        }
        let mut record = [0u8; 9];
        record[0] = REMOVED;
        record[1..].copy_from_slice(&id.to_be_bytes());
        self.file.write_all(&record)?;
        self.removed_records += 1;
        if self.removed_records > 4096 && self.removed_records > 4 * self.live.len() {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Writes a fresh file holding only the live messages, then swaps it in.
    fn rewrite(&mut self) -> io::Result<()> {
        let tmp = self.path.with_extension("compacting");
        let mut file = File::create(&tmp)?;
        let live = std::mem::take(&mut self.live);
        self.file = file.try_clone()?;
        for message in live.values() {
            self.add(message)?;
        }
        file.flush()?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.removed_records = 0;
        Ok(())
    }
}

/// Rebuilds the live set from the records; stops at the first torn or unreadable record.
fn replay(mut bytes: &[u8]) -> BTreeMap<MessageId, Outgoing> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Some(head)
    }
    fn id(bytes: &mut &[u8]) -> Option<MessageId> {
        let raw: [u8; 8] = take(bytes, 8)?.try_into().ok()?;
        Some(MessageId::from_be_bytes(raw))
    }
    fn added(bytes: &mut &[u8]) -> Option<Outgoing> {
        let id = id(bytes)?;
        let flags = take(bytes, 2)?;
        let qos = QoS::from_u8(flags[0])?;
        let topic_len = u16::from_be_bytes(take(bytes, 2)?.try_into().ok()?) as usize;
        let topic = String::from_utf8(take(bytes, topic_len)?.to_vec()).ok()?;
        let payload_len = u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?) as usize;
        let payload = Bytes::copy_from_slice(take(bytes, payload_len)?);
        Some(Outgoing {
            id,
            topic,
            payload,
            qos,
            retain: flags[1] == 1,
            // MQTT 5 properties and expiry are not part of the record format.
            properties: None,
            expires_at: None,
        })
    }
    let mut live = BTreeMap::new();
    while let Some(kind) = take(&mut bytes, 1) {
        match kind[0] {
            ADDED => match added(&mut bytes) {
                Some(message) => {
                    live.insert(message.id, message);
                }
                None => break,
            },
            REMOVED => match id(&mut bytes) {
                Some(id) => {
                    live.remove(&id);
                }
                None => break,
            },
            _ => break,
        }
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: MessageId, payload: &'static [u8]) -> Outgoing {
        Outgoing {
            id,
            topic: "detrd/status/request/1AB.ENTER.DETRD".into(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: id.is_multiple_of(2),
            properties: None,
            expires_at: None,
        }
    }

    #[test]
    fn pending_messages_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.log");
        {
            let (mut log, pending) = DurableLog::open(&path).unwrap();
            assert!(pending.is_empty());
            for id in 1..=4 {
                log.add(&msg(id, b"payload")).unwrap();
            }
            log.remove(2).unwrap();
        }
        let (log, pending) = DurableLog::open(&path).unwrap();
        assert_eq!(
            pending,
            vec![msg(1, b"payload"), msg(3, b"payload"), msg(4, b"payload")]
        );
        assert_eq!(log.len(), 3);
    }

    #[test]
    fn a_torn_last_record_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.log");
        {
            let (mut log, _) = DurableLog::open(&path).unwrap();
            log.add(&msg(1, b"whole")).unwrap();
            log.add(&msg(2, b"torn")).unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 2)
            .unwrap();
        let (_, pending) = DurableLog::open(&path).unwrap();
        assert_eq!(pending, vec![msg(1, b"whole")]);
    }

    #[test]
    fn delivering_everything_empties_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.log");
        let (mut log, _) = DurableLog::open(&path).unwrap();
        log.add(&msg(1, b"x")).unwrap();
        log.add(&msg(2, b"y")).unwrap();
        log.remove(1).unwrap();
        log.remove(2).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        log.add(&msg(3, b"z")).unwrap();
        drop(log);
        assert_eq!(DurableLog::open(&path).unwrap().1, vec![msg(3, b"z")]);
    }
}
