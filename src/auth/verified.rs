//! Passwords already verified against the password file, so that a device that connects again
//! costs one SHA-256 instead of the file's PBKDF2 (32 ms of CPU per CONNECT at the 100,000
//! rounds `switchboard passwd` writes, on this project's machines).
//!
//! For each user, the digest of the password that last verified, keyed with 32 random bytes
//! drawn when the file is loaded (never the password itself, and useless outside this
//! process). Only successes are kept: a wrong password always pays the full PBKDF2, so guessing
//! costs what the file's rounds say. A reload of the file starts afresh.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use tracing::warn;

/// The verified passwords of one password file (see the module doc).
pub struct VerifiedPasswords {
    /// `None` when no random key could be drawn: nothing is kept then.
    key: Option<[u8; 32]>,
    by_user: HashMap<String, [u8; 32]>,
}

impl VerifiedPasswords {
    /// None yet, under a fresh random key.
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        let key = match getrandom::getrandom(&mut key) {
            Ok(()) => Some(key),
            Err(e) => {
                warn!(error = %e, "no random key for the verified-password cache; every CONNECT with a password pays the full PBKDF2");
                None
            }
        };
        VerifiedPasswords {
            key,
            by_user: HashMap::new(),
        }
    }

    fn digest(key: &[u8; 32], password: &[u8]) -> [u8; 32] {
        Sha256::new()
            .chain_update(key)
            .chain_update(password)
            .finalize()
            .into()
    }

    /// Whether `password` is the one that last verified for `user`.
    pub fn holds(&self, user: &str, password: &[u8]) -> bool {
        let (Some(key), Some(known)) = (&self.key, self.by_user.get(user)) else {
            return false;
        };
        let digest = Self::digest(key, password);
        // Constant time: no early exit on the first differing byte.
        digest
            .iter()
            .zip(known)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// `password` just verified for `user` (who is in the file: at most one entry per user).
    pub fn note(&mut self, user: &str, password: &[u8]) {
        if let Some(key) = &self.key {
            self.by_user
                .insert(user.to_string(), Self::digest(key, password));
        }
    }

    /// Forgets every password (the file was reloaded), under a new key.
    pub fn clear(&mut self) {
        *self = VerifiedPasswords::new();
    }
}

impl Default for VerifiedPasswords {
    fn default() -> Self {
        VerifiedPasswords::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_password_that_verified_is_held_and_a_reload_forgets_it() {
        let mut verified = VerifiedPasswords::new();
        assert!(!verified.holds("gate", b"pw"));
        verified.note("gate", b"pw");
        assert!(verified.holds("gate", b"pw"));
        assert!(!verified.holds("gate", b"pw2"), "another password");
        assert!(!verified.holds("radar", b"pw"), "another user");
        verified.note("gate", b"new");
        assert!(verified.holds("gate", b"new") && !verified.holds("gate", b"pw"));
        verified.clear();
        assert!(!verified.holds("gate", b"new"));
    }
}
