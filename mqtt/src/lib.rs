//! MQTT 3.1.1 and 5.0 as Switchboard speaks it, apart from the broker so that the broker and
//! the device-client actors (and the broker's bridges, built on those actors) share one codec
//! and one message type without depending on each other.
//!
//! | module | its job |
//! | --- | --- |
//! | [`codec`] | packets: decoding what clients send, encoding what the broker sends |
//! | [`message`] | the application message, deliveries, wills and subscription options |
//! | [`topic`] | topic and filter validation, the subscription trie, the retained store, shared filters |

#![warn(missing_docs)]

pub mod codec;
pub mod message;
pub mod topic;

pub use message::{
    ConnectReturnCode, MessageProperties, ProtocolVersion, QoS, SubscriptionOptions,
};
