//! Topic names and topic filters: validation to the MQTT 3.1.1 / 5.0 rules, the subscription trie,
//! and the retained-message store.
//!
//! mqttbytes' own topic helpers are not used (see `docs/architecture.md`): they panic on multi-byte
//! characters and get the `$`-topic rules wrong.

mod levels;
mod retained;
mod shared;
mod subscribers;
mod trie;
mod validate;

pub use retained::RetainedStore;
pub use shared::{parse_shared, SharedFilter, SHARED_PREFIX};
pub use trie::SubscriptionTrie;
pub use validate::{validate_filter, validate_topic_name, TopicError};

/// Topics under `$SYS/` are the broker's own statistics: clients may read them, and may not
/// publish to them (the specification reserves `$` topics for the Server's use and says the
/// Server SHOULD prevent clients from using them to exchange messages, section 4.7.2).
pub fn reserved_for_broker(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// Whether the topic name `topic` matches the (valid) filter `filter`: `+` is one level, `#`
/// the rest (the parent level included, [MQTT-4.7.1-2]), and a filter that starts with a
/// wildcard does not match a topic that starts with `$` [MQTT-4.7.2-1]. For one-off checks;
/// routing uses the [`SubscriptionTrie`].
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        if level == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(name) if level == "+" || level == name => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Runs `test` on a thread with a 256 KiB stack, for the tests of the trie and the retained
/// store that hold topics of 32,768 levels: a frame per level would overflow it.
#[cfg(test)]
fn on_a_small_stack(test: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(test)
        .expect("spawn")
        .join()
        .expect("no stack overflow");
}

/// A small deterministic random source for the model tests of the trie and the retained store:
/// each call gives a number below its bound.
#[cfg(test)]
fn test_random(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |bound| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % bound
    }
}

#[cfg(test)]
mod tests {
    use super::filter_matches;

    #[test]
    fn filters_match_as_the_trie_does() {
        for (filter, topic, expected) in [
            ("gate/#", "gate/1/state", true),
            ("gate/#", "gate", true),
            ("gate/+/state", "gate/1/state", true),
            ("gate/+/state", "gate/1/2/state", false),
            ("gate/+", "gate/", true),
            ("+/+", "/x", true),
            ("#", "$SYS/uptime", false),
            ("+/uptime", "$SYS/uptime", false),
            ("$SYS/#", "$SYS/uptime", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
        ] {
            assert_eq!(filter_matches(filter, topic), expected, "{filter} {topic}");
        }
    }
}
