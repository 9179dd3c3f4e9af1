//! How MQTT topics and filters become NATS subjects, and the subjects a cluster uses.
//!
//! A topic level becomes one NATS token. NATS tokens may not be empty and may not hold `.`,
//! white space, or the wildcards `*` and `>`, while MQTT levels may hold any UTF-8 but `+`, `#`
//! and NUL; so every byte outside `[A-Za-z0-9_-]` is written `~XX` (its hex value), and an
//! empty level is the token `~` alone. The mapping is one-to-one, and a filter's `+` and `#`
//! become NATS's `*` and `>`: NATS then matches exactly what MQTT would, but for `#` matching
//! its parent level too (`a/#` matches `a` [MQTT-4.7.1-2]), which takes a second subject.

/// The longest subject a message is published on; a longer topic goes on the cluster's
/// broadcast subject instead. NATS refuses a control line over 4 KiB (`max_control_line`), and
/// `MSG <subject> <sid> <reply> <size>` must fit in it.
pub const MAX_SUBJECT: usize = 2048;

/// The subjects of one cluster (`cluster.name`) as seen by one node (`cluster.node`).
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
    node: String,
}

impl Subjects {
    /// The subjects of cluster `name`, for node `node` (both checked as NATS tokens).
    pub fn new(name: &str, node: &str) -> Self {
        Subjects {
            prefix: name.to_string(),
            node: node.to_string(),
        }
    }

    /// Where a message on `topic` is published: its topic subject, or the broadcast subject
    /// if that would be too long.
    pub fn for_topic(&self, topic: &str) -> String {
        let mut subject = format!("{}.m", self.prefix);
        for level in topic.split('/') {
            subject.push('.');
            escape_level(level, &mut subject);
            if subject.len() > MAX_SUBJECT {
                return self.broadcast();
            }
        }
        subject
    }

    /// The subjects a node subscribes to for a local subscription to `filter` (a plain filter,
    /// not `$share/...`). A filter too long for a subject takes every topic subject.
    pub fn for_filter(&self, filter: &str) -> Vec<String> {
        let mut subject = format!("{}.m", self.prefix);
        let mut parent = None;
        for level in filter.split('/') {
            match level {
                "#" => {
                    parent = Some(subject.clone());
                    subject.push_str(".>");
                }
                "+" => subject.push_str(".*"),
                _ => {
                    subject.push('.');
                    escape_level(level, &mut subject);
                }
            }
            if subject.len() > MAX_SUBJECT {
                return vec![format!("{}.m.>", self.prefix)];
            }
        }
        match parent {
            // `#` alone: `<prefix>.m.>` already matches every topic (one level at least).
            Some(parent) if parent.len() > self.prefix.len() + 2 => vec![subject, parent],
            _ => vec![subject],
        }
    }

    /// Every node takes what is published here: retained messages (every node keeps them all)
    /// and topics too long for a subject of their own.
    pub fn broadcast(&self) -> String {
        format!("{}.b", self.prefix)
    }

    /// The nodes' announcements of their clients' filters (`gossip.rs`).
    pub fn interest(&self) -> String {
        format!("{}.i", self.prefix)
    }

    /// Announcements that a client connected on some node (so that no other keeps it).
    pub fn connected(&self) -> String {
        format!("{}.c", self.prefix)
    }

    /// Requests for the retained messages, from a node that starts; one node answers.
    pub fn sync(&self) -> String {
        format!("{}.sync", self.prefix)
    }

    /// The queue group of [`sync`](Self::sync): one answer per request.
    pub fn sync_group(&self) -> String {
        format!("{}.sync", self.prefix)
    }

    /// This node's own inbox: answers to its sync requests.
    pub fn inbox(&self) -> String {
        self.inbox_of(&self.node)
    }

    /// The inbox of node `node`.
    pub fn inbox_of(&self, node: &str) -> String {
        format!("{}.n.{}", self.prefix, node)
    }

    /// The queue group of this node's topic subscriptions: NATS then delivers a message once
    /// to this node however many of its subscriptions match it.
    pub fn node_group(&self) -> String {
        format!("{}.{}", self.prefix, self.node)
    }
}

/// Appends `level` as one NATS token.
fn escape_level(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('~');
        return;
    }
    for byte in level.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(char::from(byte));
        } else {
            out.push('~');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Whether `token` may be a whole NATS token of a subject this cluster builds (a cluster
/// name, a node name): not empty, at most 64 bytes of `[A-Za-z0-9_-]`.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 64
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects() -> Subjects {
        Subjects::new("sb", "n1")
    }

    #[test]
    fn levels_become_tokens_and_odd_bytes_are_escaped() {
        let s = subjects();
        assert_eq!(s.for_topic("gate/1AB/state"), "sb.m.gate.1AB.state");
        assert_eq!(s.for_topic("a.b/c d"), "sb.m.a~2Eb.c~20d");
        assert_eq!(s.for_topic("/a//"), "sb.m.~.a.~.~");
        assert_eq!(s.for_topic("*/>"), "sb.m.~2A.~3E");
        assert_eq!(s.for_topic("~"), "sb.m.~7E");
        assert_eq!(s.for_topic("é"), "sb.m.~C3~A9");
    }

    #[test]
    fn different_topics_never_share_a_subject() {
        let topics = ["a", "a/", "/a", "~", "~7E", "a.b", "a/b", "a~2Eb", "", "/"];
        let subjects: std::collections::BTreeSet<_> =
            topics.iter().map(|t| subjects().for_topic(t)).collect();
        assert_eq!(subjects.len(), topics.len());
    }

    #[test]
    fn wildcards_map_and_a_multi_level_one_covers_its_parent() {
        let s = subjects();
        assert_eq!(s.for_filter("gate/+/state"), ["sb.m.gate.*.state"]);
        // [MQTT-4.7.1-2]: `a/#` matches `a` too.
        assert_eq!(s.for_filter("detrd/#"), ["sb.m.detrd.>", "sb.m.detrd"]);
        assert_eq!(s.for_filter("#"), ["sb.m.>"]);
        assert_eq!(s.for_filter("+/#"), ["sb.m.*.>", "sb.m.*"]);
        assert_eq!(s.for_filter("a.b/c"), [s.for_topic("a.b/c")]);
    }

    #[test]
    fn a_topic_too_long_for_a_subject_is_broadcast() {
        let s = subjects();
        let long = "x/".repeat(MAX_SUBJECT);
        assert_eq!(s.for_topic(&long), "sb.b");
        assert_eq!(s.for_filter(&long), ["sb.m.>"]);
    }

    #[test]
    fn names_are_single_tokens() {
        assert!(valid_token("edge-1_a"));
        assert!(!valid_token(""));
        assert!(!valid_token("a.b"));
        assert!(!valid_token("a*"));
        assert!(!valid_token(&"a".repeat(65)));
    }
}
