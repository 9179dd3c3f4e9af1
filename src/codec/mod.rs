//! The codec wrapper: frames and decodes client-to-server packets with mqttbytes, validates what
//! mqttbytes does not (flags, reserved bits, UTF-8 rules, wildcards, lengths), and encodes
//! server-to-client packets.
//!
//! Any error after a frame was recognised is fatal for the connection: the Session closes it.

mod connect;
mod decode;
mod encode;
mod error;

pub use connect::Connect;
pub use decode::{MqttCodec, Packet, Publish};
pub use encode::*;
pub use error::CodecError;
