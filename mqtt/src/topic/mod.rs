//! Topic names and topic filters: validation to the MQTT 3.1.1 / 5.0 rules, the subscription trie,
//! and the retained-message store.
//!
//! mqttbytes' own topic helpers are not used (see `docs/architecture.md`): they panic on multi-byte
//! characters and get the `$`-topic rules wrong.

mod retained;
mod shared;
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
