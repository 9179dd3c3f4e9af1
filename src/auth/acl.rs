//! The ACL file format Mosquitto reads (`acl_file`), read as it is:
//!
//! ```text
//! # anonymous clients: topic lines before the first user line
//! topic read public/#
//! user app
//! topic readwrite detrd/#
//! # every client, %u = user name, %c = client id
//! pattern readwrite detrd/status/request/%c
//! pattern write detrd/status/response/%c
//! ```
//!
//! Access is `read`, `write`, `readwrite` (the default when omitted) or `deny`. A deny rule that
//! matches wins over any grant. A subscription is judged by [`AclFile::subscribe_access`]: granted
//! outright when a read rule covers every topic its filter can match and no deny rule overlaps it;
//! granted with each message checked ([`AclFile::may_read`]) when it reaches some readable topics
//! but not only those (a dashboard's `#` beside a `deny` line, as Mosquitto grants it); refused
//! when no read rule reaches it or a deny rule covers it all.

use std::collections::HashMap;
use std::path::Path;

use thiserror::Error;

/// Why an ACL file could not be used.
#[derive(Debug, Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("cannot read ACL file {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not `user`, `topic` or `pattern`.
    #[error("ACL file line {line}: {why}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

#[derive(Debug, Clone)]
struct Rule {
    access: Access,
    topic: String,
    /// The topic holds `%u` / `%c` (found once, at parse time; they mean something in
    /// `pattern` rules only).
    has_user: bool,
    has_client: bool,
}

/// What a SUBSCRIBE to a filter may have ([`AclFile::subscribe_access`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeAccess {
    /// Every topic the filter can match is readable: nothing to check per message.
    Granted,
    /// Some topics it can match are readable and some are not (or may not be): granted, and
    /// each message is checked with [`AclFile::may_read`] before it goes to the client.
    Filtered,
    /// No topic it can match is readable (no read rule reaches it, or a deny rule covers it).
    Refused,
}

/// Per-user, anonymous and pattern rules.
#[derive(Debug, Clone, Default)]
pub struct AclFile {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
    /// Lines (1-based) of rules without an access keyword whose topic holds a space, as
    /// `topic raed gate/#` has: read as Mosquitto reads them, one `readwrite` rule for the
    /// topic `raed gate/#`, and listed for a warning ([`AclFile::doubtful_rules`]).
    doubtful: Vec<usize>,
}

impl AclFile {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<AclFile, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
            path: path.display().to_string(),
            source,
        })?;
        AclFile::parse(&text)
    }

    /// Parses the text of an ACL file.
    pub fn parse(text: &str) -> Result<AclFile, AclError> {
        let mut acl = AclFile::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let bad = |why| AclError::Line { line: i + 1, why };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line
                .split_once(char::is_whitespace)
                .ok_or(bad("a keyword needs a value"))?;
            let rest = rest.trim();
            match keyword {
                "user" => {
                    acl.users.entry(rest.to_string()).or_default();
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let (access, topic) = match rest.split_once(char::is_whitespace) {
                        Some(("read", t)) => (Access::Read, t.trim()),
                        Some(("write", t)) => (Access::Write, t.trim()),
                        Some(("readwrite", t)) => (Access::ReadWrite, t.trim()),
                        Some(("deny", t)) => (Access::Deny, t.trim()),
                        _ => {
                            if rest.contains(char::is_whitespace) {
                                acl.doubtful.push(i + 1);
                            }
                            (Access::ReadWrite, rest)
                        }
                    };
                    if topic.is_empty() {
                        return Err(bad("a rule needs a topic"));
                    }
                    let rule = Rule {
                        access,
                        topic: topic.to_string(),
                        has_user: topic.contains("%u"),
                        has_client: topic.contains("%c"),
                    };
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(u)) => acl.users.entry(u.clone()).or_default().push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                _ => return Err(bad("expected `user`, `topic` or `pattern`")),
            }
        }
        Ok(acl)
    }

    /// The lines of rules that name no access and whose topic holds a space: most likely a
    /// misspelt access word (`topic raed gate/#`), read as a `readwrite` rule for a topic with
    /// a space in it, as Mosquitto reads it. [`AccessControl`](super::AccessControl) warns of
    /// them when it loads the file.
    pub fn doubtful_rules(&self) -> &[usize] {
        &self.doubtful
    }

    /// The rules that apply to a client: its user's (or the anonymous ones), then every
    /// pattern with who substitutes its `%u` and `%c`. Nothing is copied: a PUBLISH is checked
    /// against the rules where they are. A pattern whose substitution would contain a wildcard
    /// or a level separator does not apply.
    fn rules_for<'a>(
        &'a self,
        username: Option<&'a str>,
        client_id: &'a str,
    ) -> impl Iterator<Item = (&'a Rule, Option<Who<'a>>)> + 'a {
        let own = match username {
            Some(u) => self.users.get(u).map_or(&[][..], Vec::as_slice),
            None => self.anonymous.as_slice(),
        };
        let who = Who {
            username,
            client_id,
        };
        let unsafe_value = |v: &str| v.contains(['+', '#', '/']);
        let patterns = self.patterns.iter().filter(move |p| {
            let bad_user = p.has_user && username.is_none_or(unsafe_value);
            let bad_id = p.has_client && unsafe_value(client_id);
            !bad_user && !bad_id
        });
        own.iter()
            .map(|r| (r, None))
            .chain(patterns.map(move |p| (p, Some(who))))
    }

    /// Whether the client may publish to `topic`: a write rule matches it and no deny rule
    /// does (one pass over the rules).
    pub fn may_publish(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.topic_allowed(username, client_id, topic, Access::writes)
    }

    /// Whether a rule whose access `grants` matches `topic` and no deny rule does, in one pass
    /// over the client's rules (a deny found first answers at once).
    fn topic_allowed(
        &self,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
        grants: impl Fn(Access) -> bool,
    ) -> bool {
        let mut allowed = false;
        for (rule, who) in self.rules_for(username, client_id) {
            match rule.access {
                Access::Deny if intersects(&rule.topic, topic, who) => return false,
                access if !allowed && grants(access) && intersects(&rule.topic, topic, who) => {
                    allowed = true
                }
                _ => {}
            }
        }
        allowed
    }

    /// What the client may have of a subscription to `filter` (one pass over the rules):
    /// - refused when a deny rule covers the whole filter, or no read rule overlaps it;
    /// - granted outright when a read rule covers it and no deny rule overlaps it;
    /// - otherwise granted with each message checked ([`SubscribeAccess::Filtered`]).
    pub fn subscribe_access(
        &self,
        username: Option<&str>,
        client_id: &str,
        filter: &str,
    ) -> SubscribeAccess {
        let (mut covered, mut reached, mut denied_in_part) = (false, false, false);
        for (rule, who) in self.rules_for(username, client_id) {
            match rule.access {
                Access::Deny if covers(&rule.topic, filter, who) => {
                    return SubscribeAccess::Refused
                }
                Access::Deny => denied_in_part |= intersects(&rule.topic, filter, who),
                access if access.reads() && !covered => {
                    covered = covers(&rule.topic, filter, who);
                    reached |= covered || intersects(&rule.topic, filter, who);
                }
                _ => {}
            }
        }
        match (covered && !denied_in_part, reached) {
            (true, _) => SubscribeAccess::Granted,
            (false, true) => SubscribeAccess::Filtered,
            (false, false) => SubscribeAccess::Refused,
        }
    }

    /// Whether the client may receive a message published to `topic`: a read rule matches it
    /// and no deny rule does (one pass over the rules). Checked for each message of a
    /// [`SubscribeAccess::Filtered`] subscription.
    pub fn may_read(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.topic_allowed(username, client_id, topic, Access::reads)
    }
}

/// What `%u` and `%c` stand for in a pattern rule.
#[derive(Debug, Clone, Copy)]
struct Who<'a> {
    username: Option<&'a str>,
    client_id: &'a str,
}

/// Whether the rule's level `rule_level`, with `%u` and `%c` substituted by `who` (pattern
/// rules; `None` for the others, where they are plain text), is `level`. Compared piece by
/// piece, without building the substituted text.
fn level_is(rule_level: &str, level: &str, who: Option<Who>) -> bool {
    let Some(who) = who.filter(|_| rule_level.contains('%')) else {
        return rule_level == level;
    };
    let (mut rule, mut rest) = (rule_level, level);
    loop {
        let token = [rule.find("%u"), rule.find("%c")]
            .into_iter()
            .flatten()
            .min();
        let Some(at) = token else {
            return rule == rest;
        };
        let value = match &rule[at..at + 2] {
            "%u" => who.username.unwrap_or(""),
            _ => who.client_id,
        };
        match rest
            .strip_prefix(&rule[..at])
            .and_then(|r| r.strip_prefix(value))
        {
            Some(r) => rest = r,
            None => return false,
        }
        rule = &rule[at + 2..];
    }
}

/// Whether some topic matches both the rule's `rule` (substituted by `who`) and `filter` (a
/// topic name is a filter without wildcards).
fn intersects(rule: &str, filter: &str, who: Option<Who>) -> bool {
    let (mut a, mut b) = (rule.split('/'), filter.split('/'));
    loop {
        match (a.next(), b.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => continue,
            (Some(x), Some(y)) if level_is(x, y, who) => continue,
            _ => return false,
        }
    }
}

/// Whether every topic matching `filter` also matches the rule's `rule` (substituted by `who`).
fn covers(rule: &str, filter: &str, who: Option<Who>) -> bool {
    let (mut p, mut f) = (rule.split('/'), filter.split('/'));
    loop {
        match (p.next(), f.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(level)) if level != "#" => continue,
            (Some(x), Some(y)) if x != "+" && y != "+" && y != "#" && level_is(x, y, who) => {
                continue
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = "
# anonymous: read the public board only
topic read public/#
user app
topic readwrite detrd/#
topic deny detrd/secret/#
user 1AB.ENTER.DETRD
pattern read detrd/status/request/%c
pattern write detrd/status/response/%c
pattern readwrite devices/%u/#
";

    use SubscribeAccess::{Filtered, Granted, Refused};

    #[test]
    fn a_device_is_confined_to_its_own_topics() {
        let acl = AclFile::parse(FLEET).unwrap();
        let (user, id) = (Some("1AB.ENTER.DETRD"), "1AB.ENTER.DETRD");
        let access = |filter| acl.subscribe_access(user, id, filter);
        assert_eq!(access("detrd/status/request/1AB.ENTER.DETRD"), Granted);
        assert!(acl.may_publish(user, id, "detrd/status/response/1AB.ENTER.DETRD"));
        assert_eq!(access("detrd/status/request/2CD.EXIT.DETRD"), Refused);
        assert_eq!(
            access("detrd/status/request/+"),
            Filtered,
            "a wildcard reaches others: each message is checked"
        );
        assert!(acl.may_read(user, id, "detrd/status/request/1AB.ENTER.DETRD"));
        assert!(!acl.may_read(user, id, "detrd/status/request/2CD.EXIT.DETRD"));
        assert_eq!(access("detrd/status/response/+"), Refused, "write only");
        assert!(!acl.may_publish(user, id, "detrd/status/response/2CD.EXIT.DETRD"));
        assert!(
            !acl.may_publish(user, id, "detrd/status/request/1AB.ENTER.DETRD"),
            "read only"
        );
        assert_eq!(access("devices/1AB.ENTER.DETRD/#"), Granted);
        assert_eq!(access("gates/#"), Refused, "no rule reaches it");
    }

    #[test]
    fn users_anonymous_and_deny() {
        let acl = AclFile::parse(FLEET).unwrap();
        let app = |filter| acl.subscribe_access(Some("app"), "x", filter);
        assert_eq!(app("detrd/#"), Filtered, "overlaps the deny rule");
        assert!(acl.may_read(Some("app"), "x", "detrd/status/response/1AB"));
        assert!(!acl.may_read(Some("app"), "x", "detrd/secret/key"));
        assert_eq!(app("detrd/secret/+"), Refused, "all of it denied");
        assert_eq!(app("detrd/status/#"), Granted);
        assert!(acl.may_publish(Some("app"), "x", "detrd/status/request/1AB"));
        assert!(!acl.may_publish(Some("app"), "x", "detrd/secret/key"));
        assert_eq!(acl.subscribe_access(None, "x", "public/board"), Granted);
        assert!(!acl.may_publish(None, "x", "public/board"));
        assert_eq!(
            acl.subscribe_access(Some("stranger"), "x", "public/board"),
            Refused,
            "users get no anonymous rules"
        );
        assert!(!acl.may_read(Some("stranger"), "x", "public/board"));
    }

    #[test]
    fn a_dashboard_reads_everything_but_what_is_denied() {
        // What Mosquitto users write for a monitoring client, and what paho's interoperability
        // suite needs (`test_subscribe_failure`).
        let acl = AclFile::parse("topic readwrite #\ntopic deny test/nosubscribe\n").unwrap();
        let access = |filter| acl.subscribe_access(None, "dash", filter);
        assert_eq!(access("#"), Filtered);
        assert_eq!(access("+/+"), Filtered);
        assert_eq!(access("test/nosubscribe"), Refused);
        assert_eq!(access("test/other"), Granted);
        assert!(acl.may_read(None, "dash", "test/other"));
        assert!(!acl.may_read(None, "dash", "test/nosubscribe"));
        // Mosquitto's 09-acl-access-variants: a deny beneath a readwrite subtree.
        let acl =
            AclFile::parse("topic readwrite topic/global/#\ntopic deny topic/global/except\n")
                .unwrap();
        assert_eq!(acl.subscribe_access(None, "c", "topic/global"), Granted);
        assert_eq!(
            acl.subscribe_access(None, "c", "topic/global/except"),
            Refused
        );
        assert_eq!(acl.subscribe_access(None, "c", "topic/global/#"), Filtered);
    }

    #[test]
    fn substitutions_cannot_widen_access() {
        let acl = AclFile::parse("pattern readwrite devices/%c/#\npattern read users/%u").unwrap();
        assert!(acl.may_publish(None, "a", "devices/a/x"));
        assert!(
            !acl.may_publish(None, "+", "devices/b/x"),
            "client id '+' does not apply"
        );
        assert!(!acl.may_publish(None, "a/b", "devices/a/b/x"));
        assert!(!acl.may_read(None, "+", "devices/b/x"));
        assert_eq!(
            acl.subscribe_access(None, "a", "users/"),
            Refused,
            "no user name: %u rules do not apply"
        );
        assert_eq!(acl.subscribe_access(None, "a", "devices/+/x"), Filtered);
        assert!(!acl.may_read(None, "a", "devices/b/x"));
        assert!(acl.may_read(None, "a", "devices/a/x"));
    }

    #[test]
    fn substitutions_within_a_level_and_only_in_patterns() {
        let acl = AclFile::parse("topic read plain/%c\npattern readwrite site/%u-%c/x").unwrap();
        let access = |user, id, filter| acl.subscribe_access(user, id, filter);
        assert!(acl.may_publish(Some("u1"), "dev", "site/u1-dev/x"));
        assert_eq!(access(Some("u1"), "dev", "site/u1-dev/x"), Granted);
        assert!(!acl.may_publish(Some("u1"), "dev", "site/u1-other/x"));
        assert!(!acl.may_publish(Some("u1"), "dev", "site/u1-dev2/x"));
        assert!(!acl.may_publish(Some("u1"), "dev", "site/u1-/x"));
        assert_eq!(
            access(Some("u1"), "dev", "site/+/x"),
            Filtered,
            "a wildcard reaches other clients' levels"
        );
        assert!(!acl.may_read(Some("u1"), "dev", "site/u1-other/x"));
        assert_eq!(
            access(None, "dev", "plain/%c"),
            Granted,
            "a topic rule's %c is text"
        );
        assert_eq!(access(None, "dev", "plain/dev"), Refused);
    }

    #[test]
    fn filter_relations() {
        assert!(covers("a/#", "a/b/+", None));
        assert!(covers("a/+/c", "a/b/c", None));
        assert!(!covers("a/+/c", "a/#", None));
        assert!(!covers("a/b", "a/+", None));
        assert!(intersects("a/+", "a/b", None));
        assert!(intersects("a/#", "a", None));
        assert!(!intersects("a/b", "a/c", None));
        assert!(!intersects("a/b", "a/b/c", None));
    }

    #[test]
    fn bad_lines_name_their_number() {
        let err = AclFile::parse("user a\ntopic\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(AclFile::parse("allow all").is_err());
    }

    #[test]
    fn a_rule_whose_first_word_is_no_access_is_read_as_mosquitto_reads_it_and_listed() {
        let acl = AclFile::parse(
            "user gate\ntopic raed gate/#\ntopic read gate/state\ntopic gate/a b\ntopic gate/c\n",
        )
        .unwrap();
        assert_eq!(acl.doubtful_rules(), &[2, 4]);
        // `raed gate/#` is one topic with a space: it grants nothing under `gate/`.
        assert!(!acl.may_read(Some("gate"), "c1", "gate/1"));
        assert!(acl.may_publish(Some("gate"), "c1", "raed gate/#"));
        assert!(acl.may_read(Some("gate"), "c1", "gate/state"));
        assert!(AclFile::parse("topic readwrite a b\n")
            .unwrap()
            .doubtful_rules()
            .is_empty());
    }
}
