//! The Authenticator actor: checks passwords on `SyncArbiter` threads (one per core, behind the
//! traffic: `low_priority.rs`), the password file's PBKDF2 once per user and password
//! ([`VerifiedPasswords`]). A Session asks [`Passwords::verified_before`] itself first, so a
//! device that reconnects never waits in the Authenticator's queue behind slow checks.

use std::sync::{Arc, Mutex, RwLock};

use actix::prelude::*;
use bytes::Bytes;

use super::verified::VerifiedPasswords;
use super::PasswordFile;

/// The password file in force and the passwords verified against it: shared by the
/// Authenticator's threads, replaced as a whole by a reload.
pub struct Passwords {
    /// Its lock also orders a reload against a thread noting a success, so that nothing
    /// verified against a replaced file is kept.
    verified: Mutex<VerifiedPasswords>,
    file: RwLock<Arc<PasswordFile>>,
}

impl Passwords {
    /// These users, nothing verified yet.
    pub fn new(file: Arc<PasswordFile>) -> Self {
        Passwords {
            verified: Mutex::new(VerifiedPasswords::new()),
            file: RwLock::new(file),
        }
    }

    fn file(&self) -> Arc<PasswordFile> {
        // A poisoned lock only means a thread panicked while holding it; the value is whole.
        self.file.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, VerifiedPasswords> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `password` verified for `user` before, against the file in force: one keyed
    /// SHA-256, cheap enough for a Session's thread. False says nothing (ask [`check`](Self::check)).
    pub fn verified_before(&self, user: &str, password: &[u8]) -> bool {
        self.verified().holds(user, password)
    }

    /// Whether `password` is `user`'s: at once if it verified before, else with the file's
    /// PBKDF2 (slow on purpose: call it off the broker's actors), which no lock is held for.
    pub fn check(&self, user: &str, password: &[u8]) -> bool {
        if self.verified_before(user, password) {
            return true;
        }
        let file = self.file();
        let right = file.verify(user, password);
        if right {
            let mut verified = self.verified();
            // Not if a reload replaced the file meanwhile: this success was against the old one.
            if Arc::ptr_eq(&self.file(), &file) {
                verified.note(user, password);
            }
        }
        right
    }

    /// Uses these users from now on (a reload), forgetting every password verified before: a
    /// password changed or removed in the file no longer passes once this returns.
    pub fn replace(&self, file: Arc<PasswordFile>) {
        let mut verified = self.verified();
        *self.file.write().unwrap_or_else(|e| e.into_inner()) = file;
        verified.clear();
    }

    /// How many users the file in force has.
    pub fn users(&self) -> usize {
        self.file().len()
    }
}

/// Checks user names and passwords against the shared [`Passwords`]. Runs on a `SyncArbiter`:
/// PBKDF2 is slow on purpose and must not block an async arbiter.
pub struct Authenticator {
    passwords: Arc<Passwords>,
}

impl Authenticator {
    /// An authenticator for these users.
    pub fn new(passwords: Arc<Passwords>) -> Self {
        Authenticator { passwords }
    }
}

impl Actor for Authenticator {
    type Context = SyncContext<Self>;

    /// Runs on the actor's own thread, once: puts that thread behind the traffic.
    fn started(&mut self, _: &mut SyncContext<Self>) {
        super::low_priority::yield_to_traffic();
    }
}

/// Sent by a Session to the Authenticator for a CONNECT with a user name: answers whether the
/// password is right.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct CheckPassword {
    /// User name from the CONNECT.
    pub username: String,
    /// Password from the CONNECT (empty if none was sent).
    pub password: Bytes,
}

impl Handler<CheckPassword> for Authenticator {
    type Result = bool;

    fn handle(&mut self, msg: CheckPassword, _: &mut SyncContext<Self>) -> bool {
        self.passwords.check(&msg.username, &msg.password)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_line;

    fn file(password: &[u8]) -> Arc<PasswordFile> {
        let line = hash_line("gate", password, 10).expect("random salt");
        Arc::new(PasswordFile::parse(&line).expect("parses"))
    }

    #[test]
    fn a_password_verified_once_passes_until_the_file_is_replaced() {
        let passwords = Passwords::new(file(b"old"));
        assert!(!passwords.check("gate", b"new"));
        assert!(passwords.check("gate", b"old"));
        assert!(passwords.check("gate", b"old"), "from the verified ones");
        assert!(passwords.verified().holds("gate", b"old"));
        passwords.replace(file(b"new"));
        assert!(!passwords.verified().holds("gate", b"old"));
        assert!(!passwords.check("gate", b"old"), "changed in the file");
        assert!(passwords.check("gate", b"new"));
        assert_eq!(passwords.users(), 1);
    }
}
