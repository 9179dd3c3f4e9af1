//! Access control as the Sessions see it: the password checker, the anonymous rule and the ACL,
//! reloadable at run time (SIGHUP) without dropping connections.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use actix::prelude::*;
use tracing::{info, warn};

use super::{
    AclError, AclFile, Authenticator, CheckLanes, PasswordFile, PasswordFileError, Passwords,
};
use crate::config::AuthConfig;

/// Why access control could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The password file is unreadable or malformed.
    #[error(transparent)]
    PasswordFile(#[from] PasswordFileError),
    /// The ACL file is unreadable or malformed.
    #[error(transparent)]
    Acl(#[from] AclError),
}

/// Shared by every Session of a broker.
pub struct AccessControl {
    config: AuthConfig,
    allow_anonymous: bool,
    authenticator: Option<Addr<Authenticator>>,
    /// Each client address's lane into the Authenticator's queue (`lanes.rs`).
    check_lanes: Arc<CheckLanes>,
    /// The users the authenticator's threads check against (replaced by a reload).
    passwords: Option<Arc<Passwords>>,
    acl: RwLock<Option<Arc<AclFile>>>,
    /// Bumped when the ACL is replaced, so Sessions can keep their copy until it changes instead
    /// of taking the lock for every packet.
    acl_generation: AtomicU64,
}

impl AccessControl {
    /// Loads the files named in `config` for a listener bound to `bind`; starts the
    /// Authenticator's `SyncArbiter` when there is a password file. Call inside an actix `System`.
    pub fn load(config: &AuthConfig, bind: IpAddr) -> Result<AccessControl, AccessError> {
        // One thread per core: a restart's reconnect storm pays the file's PBKDF2 once per
        // device, and spreads it over the machine; one address may keep them all busy.
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let (authenticator, passwords) = match &config.password_file {
            Some(path) => {
                let file = Arc::new(PasswordFile::load(path)?);
                info!(users = file.len(), path = %path.display(), "password file loaded");
                let passwords = Arc::new(Passwords::new(file));
                let shared = passwords.clone();
                let authenticator =
                    SyncArbiter::start(threads, move || Authenticator::new(shared.clone()));
                (Some(authenticator), Some(passwords))
            }
            None => (None, None),
        };
        let acl = match &config.acl_file {
            Some(path) => {
                let acl = AclFile::load(path)?;
                info!(path = %path.display(), "ACL file loaded");
                warn_of_doubtful_rules(path, &acl);
                Some(Arc::new(acl))
            }
            None => None,
        };
        Ok(AccessControl {
            config: config.clone(),
            allow_anonymous: config.anonymous_allowed(bind),
            authenticator,
            check_lanes: CheckLanes::new(threads),
            passwords,
            acl: RwLock::new(acl),
            acl_generation: AtomicU64::new(0),
        })
    }

    /// Re-reads the password and ACL files. On an error nothing changes and the error is
    /// returned; connections are never dropped.
    pub fn reload(&self) -> Result<(), AccessError> {
        let passwords = match &self.config.password_file {
            Some(path) => Some(Arc::new(PasswordFile::load(path)?)),
            None => None,
        };
        let acl = match &self.config.acl_file {
            Some(path) => {
                let acl = AclFile::load(path)?;
                warn_of_doubtful_rules(path, &acl);
                Some(Arc::new(acl))
            }
            None => None,
        };
        if let (Some(file), Some(passwords)) = (passwords, &self.passwords) {
            passwords.replace(file);
            info!(users = passwords.users(), "password file reloaded");
        }
        if let Some(acl) = acl {
            info!("ACL file reloaded");
            *self
                .acl
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(acl);
            self.acl_generation.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }

    /// The password checker, when a password file is configured.
    pub fn authenticator(&self) -> Option<&Addr<Authenticator>> {
        self.authenticator.as_ref()
    }

    /// The lanes a Session enters before it asks the [`authenticator`](Self::authenticator).
    pub fn check_lanes(&self) -> &Arc<CheckLanes> {
        &self.check_lanes
    }

    /// Whether `password` verified for `user` before (so no PBKDF2 and no trip to the
    /// Authenticator is needed); false without a password file.
    pub fn password_verified_before(&self, user: &str, password: &[u8]) -> bool {
        self.passwords
            .as_ref()
            .is_some_and(|passwords| passwords.verified_before(user, password))
    }

    /// Whether a CONNECT without a user name is accepted.
    pub fn allow_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// Changes whenever the ACL is replaced. Read it to know whether a copy from [`acl`](Self::acl)
    /// is still current.
    pub fn acl_generation(&self) -> u64 {
        self.acl_generation.load(Ordering::Acquire)
    }

    /// The ACL in force, if any.
    pub fn acl(&self) -> Option<Arc<AclFile>> {
        self.acl
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Logs a warning for each rule of `acl` that names no access and has a space in its topic
/// ([`AclFile::doubtful_rules`]): the file is used as Mosquitto would use it, but a misspelt
/// `read` or `deny` there grants or denies nothing the writer meant.
fn warn_of_doubtful_rules(path: &std::path::Path, acl: &AclFile) {
    for line in acl.doubtful_rules() {
        warn!(
            path = %path.display(),
            line,
            "ACL rule names no access (read, write, readwrite or deny) and its topic holds a \
             space: read as readwrite for a topic with a space in it, as Mosquitto reads it; \
             check the spelling of its first word"
        );
    }
}
