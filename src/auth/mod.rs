//! Authentication and authorisation: Mosquitto-compatible password files (checked on a
//! `SyncArbiter`, so slow hashes never run on the Registry's or a Session's thread) and ACL files.

mod access;
mod acl;
mod authenticator;
mod lanes;
mod low_priority;
mod password_file;
mod verified;

pub use access::{AccessControl, AccessError};
pub use acl::{AclError, AclFile, SubscribeAccess};
pub use authenticator::{Authenticator, CheckPassword, Passwords};
pub use lanes::{CheckLanes, LanePlace};
pub use password_file::{hash_line, PasswordFile, PasswordFileError};
