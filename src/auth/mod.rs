//! Authentication: Mosquitto-compatible password files, checked on a `SyncArbiter` so slow hashes
//! never run on the Registry's or a Session's thread.

mod authenticator;
mod password_file;

pub use authenticator::{Authenticator, CheckPassword};
pub use password_file::{hash_line, PasswordFile, PasswordFileError};
