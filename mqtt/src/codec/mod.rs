//! The codec wrapper: frames and decodes client-to-server packets with mqttbytes, validates what
//! mqttbytes does not (flags, reserved bits, UTF-8 rules, wildcards, lengths), and encodes
//! server-to-client packets; for the client side it also reads a server's MQTT 5 PUBLISH
//! ([`decode_server_publish_v5`]).
//!
//! Any error after a frame was recognised is fatal for the connection: the Session closes it.

mod connect;
mod decode;
mod decode_v5;
mod encode;
mod encode_v5;
mod error;
mod oversized;
pub mod properties;
mod server_publish;

pub use connect::{Connect, ConnectProperties};
pub use decode::{
    reserve_for_frame, MqttCodec, Packet, Publish, BURST_READ_BUFFER, MAX_RESERVE_AHEAD,
};
pub use encode::*;
pub use encode_v5::*;
pub use error::CodecError;
pub use oversized::{read_oversized_head, skip_rest, OversizedHead, OversizedPublish};
pub use server_publish::{decode_server_publish_v5, ServerPublish};
