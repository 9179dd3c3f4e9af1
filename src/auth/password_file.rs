//! The password file format `mosquitto_passwd` writes, read as it is: one `user:hash` per line,
//! hash `$7$<iterations>$<salt>$<PBKDF2-HMAC-SHA512>` or the older `$6$<salt>$<SHA512(password +
//! salt)>`, salt and hash in standard base64.
//!
//! A user name the file does not have is checked against a decoy hash with the file's usual
//! parameters, so that a refusal takes as long for an unknown user as for a wrong password:
//! the time of a CONNACK 4 does not tell who has an account.

use std::collections::HashMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha512};
use thiserror::Error;

/// Why a password file could not be used.
#[derive(Debug, Error)]
pub enum PasswordFileError {
    /// The file could not be read.
    #[error("cannot read password file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not `user:$7$...` or `user:$6$...`.
    #[error("password file line {line}: {why}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: &'static str,
    },
}

#[derive(Debug, Clone)]
enum Hash {
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl Hash {
    /// Whether `password` hashes to this, in time that does not depend on how much matches.
    fn matches(&self, password: &[u8]) -> bool {
        match self {
            Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                constant_time_eq(&out, hash)
            }
            Hash::Sha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                constant_time_eq(&digest.finalize(), hash)
            }
        }
    }

    /// A hash no password is checked as right against (its result is never used), costing what
    /// checking the file's most common kind of line costs: PBKDF2 with the iteration count most
    /// of its `$7$` lines have (the higher on a tie), else a `$6$` SHA512. None for an empty file.
    fn decoy_for<'a>(hashes: impl Iterator<Item = &'a Hash>) -> Option<Hash> {
        let mut rounds: HashMap<u32, usize> = HashMap::new();
        let mut any = false;
        for hash in hashes {
            any = true;
            if let Hash::Pbkdf2Sha512 { iterations, .. } = hash {
                *rounds.entry(*iterations).or_default() += 1;
            }
        }
        let mut salt = vec![0u8; 12];
        // The decoy's salt need not be secret or even random: nothing ever matches it.
        let _ = getrandom::getrandom(&mut salt);
        let hash = vec![0u8; 64];
        match rounds.into_iter().max_by_key(|&(n, count)| (count, n)) {
            Some((iterations, _)) => Some(Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            }),
            None if any => Some(Hash::Sha512 { salt, hash }),
            None => None,
        }
    }
}

/// Users and their password hashes.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
    /// What a user name not in the file is checked against ([`Hash::decoy_for`]).
    decoy: Option<Hash>,
}

impl PasswordFile {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        PasswordFile::parse(&text)
    }

    /// Parses the text of a password file. Blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let bad = |why| PasswordFileError::Line { line: line_no, why };
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .rsplit_once(':')
                .ok_or(bad("no ':' between user and hash"))?;
            if user.is_empty() {
                return Err(bad("empty user name"));
            }
            let fields: Vec<&str> = hash.split('$').collect();
            let decode = |s: &str| {
                STANDARD
                    .decode(s)
                    .map_err(|_| bad("salt or hash is not base64"))
            };
            let hash = match fields.as_slice() {
                ["", "7", iterations, salt, hash] => Hash::Pbkdf2Sha512 {
                    iterations: iterations
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or(bad("bad iteration count"))?,
                    salt: decode(salt)?,
                    hash: decode(hash)?,
                },
                ["", "6", salt, hash] => Hash::Sha512 {
                    salt: decode(salt)?,
                    hash: decode(hash)?,
                },
                _ => return Err(bad("hash is neither $7$ (PBKDF2-SHA512) nor $6$ (SHA512)")),
            };
            users.insert(user.to_string(), hash);
        }
        let decoy = Hash::decoy_for(users.values());
        Ok(PasswordFile { users, decoy })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when there is no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s password. Slow on purpose (PBKDF2): call it off the
    /// broker's actors, e.g. through [`Authenticator`](super::Authenticator). A user the file
    /// does not have costs as much as a wrong password (the module doc).
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match (self.users.get(user), &self.decoy) {
            (Some(hash), _) => hash.matches(password),
            (None, Some(decoy)) => {
                // Kept from being optimised away: its time is the point.
                std::hint::black_box(decoy.matches(password));
                false
            }
            (None, None) => false,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A password-file line for `user` (PBKDF2-SHA512, random 12-byte salt, `iterations` rounds), as
/// `mosquitto_passwd` writes them.
pub fn hash_line(user: &str, password: &[u8], iterations: u32) -> Result<String, getrandom::Error> {
    let mut salt = [0u8; 12];
    getrandom::getrandom(&mut salt)?;
    let mut hash = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut hash);
    Ok(format!(
        "{user}:$7${iterations}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(hash)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `mosquitto_passwd -b -c FILE alice s3cret` (Mosquitto 2.0.11).
    const MOSQUITTO_LINE: &str = "alice:$7$101$KkuAleRaWpH/W1vd$mcZbfAMv/O/YmRFUKsggMGcwepJcy/SpAw0aj3qmYLqiJpSnyOBWgR+ApMfuF+oeMfEGIFZbnsv+fCyJODFeqQ==";

    #[test]
    fn reads_what_mosquitto_passwd_writes() {
        let file = PasswordFile::parse(MOSQUITTO_LINE).unwrap();
        assert!(file.verify("alice", b"s3cret"));
        assert!(!file.verify("alice", b"s3cret!"));
        assert!(!file.verify("bob", b"s3cret"));
    }

    #[test]
    fn writes_what_it_reads() {
        let line = hash_line("1AB.ENTER.DETRD", b"radar-pw", 1000).unwrap();
        let file = PasswordFile::parse(&format!("# fleet\n\n{line}\n")).unwrap();
        assert_eq!(file.len(), 1);
        assert!(file.verify("1AB.ENTER.DETRD", b"radar-pw"));
        assert!(!file.verify("1AB.ENTER.DETRD", b"radar"));
    }

    #[test]
    fn sha512_lines() {
        // $6$: SHA512(password + salt).
        let salt = b"0123456789ab";
        let mut d = Sha512::new();
        d.update(b"pw");
        d.update(salt);
        let line = format!(
            "u:$6${}${}",
            STANDARD.encode(salt),
            STANDARD.encode(d.finalize())
        );
        assert!(PasswordFile::parse(&line).unwrap().verify("u", b"pw"));
    }

    fn decoy_rounds(file: &PasswordFile) -> Option<u32> {
        match file.decoy.as_ref()? {
            Hash::Pbkdf2Sha512 { iterations, .. } => Some(*iterations),
            Hash::Sha512 { .. } => Some(0),
        }
    }

    #[test]
    fn unknown_users_are_checked_against_the_files_usual_rounds() {
        let text = [
            hash_line("a", b"pw", 20).unwrap(),
            hash_line("b", b"pw", 30).unwrap(),
            hash_line("c", b"pw", 20).unwrap(),
            MOSQUITTO_LINE.to_string(),
        ]
        .join("\n");
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(decoy_rounds(&file), Some(20), "most lines have 20 rounds");
        assert!(!file.verify("nobody", b"pw"));
        let tie = PasswordFile::parse(
            &[
                hash_line("a", b"pw", 20).unwrap(),
                hash_line("b", b"pw", 30).unwrap(),
            ]
            .join("\n"),
        )
        .unwrap();
        assert_eq!(decoy_rounds(&tie), Some(30), "the higher on a tie");
        let salted = PasswordFile::parse("u:$6$AA==$AA==").unwrap();
        assert_eq!(decoy_rounds(&salted), Some(0), "SHA512 only");
        assert!(!salted.verify("nobody", b""));
        assert_eq!(
            decoy_rounds(&PasswordFile::parse("# none\n").unwrap()),
            None
        );
        assert!(!PasswordFile::default().verify("nobody", b""));
    }

    #[test]
    fn bad_lines_name_their_number() {
        let err = PasswordFile::parse("ok:$6$AA==$AA==\nnocolon\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(PasswordFile::parse("u:$1$md5$x").is_err());
        assert!(PasswordFile::parse("u:$7$0$AA==$AA==").is_err());
    }
}
