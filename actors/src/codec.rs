//! The client side of the wire: decoding server-to-client packets with mqttbytes, and encoding
//! client-to-server packets (mqttbytes for CONNECT/SUBSCRIBE/UNSUBSCRIBE, the broker's own
//! infallible writers for PUBLISH and acknowledgements).

use bytes::BytesMut;
use mqttbytes::v4;
use thiserror::Error;
use tokio_util::codec::Decoder;

/// Why the broker's byte stream could not be decoded; ends the link.
#[derive(Debug, Error)]
pub enum ClientCodecError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// mqttbytes rejected a packet.
    #[error("malformed packet from the broker: {0:?}")]
    Malformed(mqttbytes::Error),
}

/// Decodes MQTT 3.1.1 packets sent by a broker.
#[derive(Debug, Clone)]
pub struct ClientCodec {
    max_packet_size: usize,
}

impl ClientCodec {
    /// A codec refusing packets larger than `max_packet_size`.
    pub fn new(max_packet_size: usize) -> Self {
        ClientCodec { max_packet_size }
    }
}

impl Decoder for ClientCodec {
    type Item = v4::Packet;
    type Error = ClientCodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<v4::Packet>, ClientCodecError> {
        if src.is_empty() {
            return Ok(None);
        }
        match v4::read(src, self.max_packet_size) {
            Ok(packet) => Ok(Some(packet)),
            Err(mqttbytes::Error::InsufficientBytes(more)) => {
                src.reserve(more);
                Ok(None)
            }
            Err(e) => Err(ClientCodecError::Malformed(e)),
        }
    }
}

/// Converts between the broker's QoS and mqttbytes'.
pub(crate) fn to_mqttbytes(qos: switchboard::QoS) -> mqttbytes::QoS {
    match qos {
        switchboard::QoS::AtMostOnce => mqttbytes::QoS::AtMostOnce,
        switchboard::QoS::AtLeastOnce => mqttbytes::QoS::AtLeastOnce,
        switchboard::QoS::ExactlyOnce => mqttbytes::QoS::ExactlyOnce,
    }
}

/// Converts mqttbytes' QoS to the broker's.
pub(crate) fn from_mqttbytes(qos: mqttbytes::QoS) -> switchboard::QoS {
    match qos {
        mqttbytes::QoS::AtMostOnce => switchboard::QoS::AtMostOnce,
        mqttbytes::QoS::AtLeastOnce => switchboard::QoS::AtLeastOnce,
        mqttbytes::QoS::ExactlyOnce => switchboard::QoS::ExactlyOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_split_packets() {
        let mut codec = ClientCodec::new(1024);
        let mut buf = BytesMut::from(&[0x20u8, 0x02, 0x01][..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&[0x00, 0x90, 0x03, 0x00, 0x01, 0x80]);
        assert!(
            matches!(codec.decode(&mut buf).unwrap(), Some(v4::Packet::ConnAck(a)) if a.session_present)
        );
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(v4::Packet::SubAck(_))
        ));
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(codec
            .decode(&mut BytesMut::from(&[0x00u8, 0x00][..]))
            .is_err());
    }
}
