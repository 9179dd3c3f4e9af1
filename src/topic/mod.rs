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
