//! The Authenticator actor: checks passwords on a `SyncArbiter` thread.

use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;

use super::PasswordFile;

/// Checks user names and passwords against a [`PasswordFile`]. Runs on a `SyncArbiter`: PBKDF2
/// is slow on purpose and must not block an async arbiter.
pub struct Authenticator {
    passwords: Arc<PasswordFile>,
}

impl Authenticator {
    /// An authenticator for these users.
    pub fn new(passwords: Arc<PasswordFile>) -> Self {
        Authenticator { passwords }
    }
}

impl Actor for Authenticator {
    type Context = SyncContext<Self>;
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
        self.passwords.verify(&msg.username, &msg.password)
    }
}

/// Sent by [`AccessControl::reload`](super::AccessControl::reload) to the Authenticator: use these
/// users from now on.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReplacePasswords(pub Arc<PasswordFile>);

impl Handler<ReplacePasswords> for Authenticator {
    type Result = ();

    fn handle(&mut self, msg: ReplacePasswords, _: &mut SyncContext<Self>) {
        self.passwords = msg.0;
    }
}
