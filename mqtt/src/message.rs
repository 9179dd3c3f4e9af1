//! The version-neutral message model shared by the codec, Sessions and the Registry.
//!
//! Nothing here is tied to a wire format: MQTT 5's message properties travel as an optional extra
//! ([`MessageProperties`]) that MQTT 3.1.1 subscribers simply do not get.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::encode_publish_frame;

/// Quality of service of a message or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// At most once (0).
    AtMostOnce = 0,
    /// At least once (1).
    AtLeastOnce = 1,
    /// Exactly once (2).
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for a wire value, `None` for 3 and above.
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// The protocol a client speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// MQTT 3.1 (`MQIsdp`, level 3), served with 3.1.1 semantics.
    V3_1,
    /// MQTT 3.1.1 (`MQTT`, level 4).
    V3_1_1,
    /// MQTT 5.0 (`MQTT`, level 5).
    V5,
}

impl ProtocolVersion {
    /// Whether this is MQTT 5 (properties, reason codes).
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolVersion::V3_1 => f.write_str("MQTT 3.1"),
            ProtocolVersion::V3_1_1 => f.write_str("MQTT 3.1.1"),
            ProtocolVersion::V5 => f.write_str("MQTT 5.0"),
        }
    }
}

/// The MQTT 5 properties of an application message that the broker forwards to MQTT 5
/// subscribers (section 3.3.2.3). The Message Expiry Interval is kept as a deadline on the
/// [`Message`] instead, so that the remaining interval can be forwarded `[MQTT-3.3.2-6]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    /// Payload Format Indicator as sent (1: UTF-8), forwarded unaltered `[MQTT-3.3.2-4]`.
    pub payload_format: Option<u8>,
    /// Content Type, forwarded unaltered `[MQTT-3.3.2-20]`.
    pub content_type: Option<String>,
    /// Response Topic, forwarded unaltered (section 3.3.2.3.5).
    pub response_topic: Option<String>,
    /// Correlation Data, forwarded unaltered `[MQTT-3.3.2-16]`.
    pub correlation_data: Option<Bytes>,
    /// User properties in the order they came `[MQTT-3.3.2-17]` `[MQTT-3.3.2-18]`.
    pub user_properties: Vec<(String, String)>,
}

impl MessageProperties {
    /// Bytes of the strings and data these properties carry.
    pub fn size(&self) -> usize {
        let len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        len(&self.content_type)
            + len(&self.response_topic)
            + self.correlation_data.as_ref().map_or(0, Bytes::len)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// Whether there is nothing to forward.
    pub fn is_empty(&self) -> bool {
        *self == MessageProperties::default()
    }
}

/// An application message as it travels through the broker: built once by the Session that
/// received it and shared (`Arc`) by every delivery.
pub struct Message {
    /// The topic name it was published to.
    pub topic: String,
    /// The payload; points into the frame it was read from.
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// The RETAIN flag it was published with.
    pub retain: bool,
    /// MQTT 5 properties, if the publisher sent any.
    pub properties: Option<Box<MessageProperties>>,
    /// When the message expires (from its Message Expiry Interval); `None` never.
    pub expires_at: Option<Instant>,
    /// When the broker read it from its publisher (`None` for messages the broker made: wills
    /// and `$SYS`), for the in-broker delivery latency.
    pub received_at: Option<Instant>,
    /// The QoS 0, non-retained PUBLISH frame this message was read in, if it can be forwarded
    /// unchanged: set when the message is built, so reading it takes no atomic operation.
    inbound_qos0_frame: Option<Bytes>,
    /// Otherwise that frame, encoded at most once and written byte for byte to every QoS 0
    /// subscriber.
    qos0_frame: OnceLock<Bytes>,
}

impl Message {
    /// A message with no pre-encoded frame.
    pub fn new(topic: impl Into<String>, payload: Bytes, qos: QoS, retain: bool) -> Self {
        Message {
            topic: topic.into(),
            payload,
            qos,
            retain,
            properties: None,
            expires_at: None,
            received_at: None,
            inbound_qos0_frame: None,
            qos0_frame: OnceLock::new(),
        }
    }

    /// Adds MQTT 5 properties and a Message Expiry Interval in seconds, counted from now.
    pub fn with_properties(
        mut self,
        properties: Option<Box<MessageProperties>>,
        expiry_seconds: Option<u32>,
    ) -> Self {
        self.properties = properties.filter(|p| !p.is_empty());
        self.expires_at =
            expiry_seconds.map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
        self
    }

    /// Whether the message expired before `now` and must not be delivered `[MQTT-3.3.2-5]`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The Message Expiry Interval to forward: what remains of it, in whole seconds rounded up
    /// `[MQTT-3.3.2-6]`; `None` if the message never expires.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// What the message weighs in a client's queue (`sessions.max_queued_bytes`): its topic,
    /// payload and MQTT 5 properties, in bytes.
    pub fn size(&self) -> usize {
        self.topic.len()
            + self.payload.len()
            + self
                .properties
                .as_deref()
                .map_or(0, MessageProperties::size)
    }

    /// A QoS 0, non-retained message whose inbound `frame` can be forwarded unchanged.
    pub fn with_qos0_frame(topic: String, payload: Bytes, frame: Bytes) -> Self {
        Message {
            inbound_qos0_frame: Some(frame),
            ..Message::new(topic, payload, QoS::AtMostOnce, false)
        }
    }

    /// The QoS 0 PUBLISH frame (RETAIN 0, DUP 0) of this message: the one it was read in, or
    /// one encoded on first use.
    pub fn qos0_frame(&self) -> &Bytes {
        match &self.inbound_qos0_frame {
            Some(frame) => frame,
            None => self
                .qos0_frame
                .get_or_init(|| encode_publish_frame(&self.topic, &self.payload)),
        }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("properties", &self.properties)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// One message on its way to one subscriber: the shared message and the QoS and RETAIN flag this
/// subscriber gets it with.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// min(published QoS, granted QoS) `[MQTT-3.8.4-6]`.
    pub qos: QoS,
    /// 1 for retained messages sent because of a new subscription `[MQTT-3.3.1-8]`, and for
    /// subscriptions with Retain As Published `[MQTT-3.3.1-12]`.
    pub retain: bool,
    /// MQTT 5 extras (Subscription Identifiers, shared group), boxed so that the common
    /// delivery stays three words wide: batches of deliveries are moved between actors.
    pub extras: Option<Box<DeliveryExtras>>,
    /// The durable id ([`Delivery::durable_id`]) plus one, its low 32 bits here and the next
    /// 16 in `durable_high`, in the bytes the flags leave free in the third word; zero for
    /// none, or for an id too large for 48 bits, which goes in `extras`. Every delivery to a
    /// persistent session has an id: inline, it costs no allocation.
    durable_low: u32,
    /// See `durable_low`.
    durable_high: u16,
}

/// Durable ids below this are kept in [`Delivery`] itself.
const INLINE_DURABLE_LIMIT: u64 = (1 << 48) - 1;

/// The rarely present parts of a [`Delivery`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryExtras {
    /// Subscription Identifiers of the matching subscriptions `[MQTT-3.3.4-3]` (MQTT 5 only).
    pub subscription_ids: Vec<u32>,
    /// The shared subscription group it was routed through, if any: the Registry gives it to
    /// another member if this one leaves without acknowledging it.
    pub group: Option<u32>,
    /// With persistence, for a persistent session: the id of the record that keeps this
    /// delivery on disk until it is acknowledged (`persistence::Record::Queued`), when it is
    /// too large to be kept in the [`Delivery`] itself (from 2^48 - 1 on).
    pub durable_id: Option<u64>,
}

impl Delivery {
    /// A delivery with no subscription identifiers, not through a shared subscription.
    pub fn new(message: Arc<Message>, qos: QoS, retain: bool) -> Self {
        Delivery {
            message,
            qos,
            retain,
            extras: None,
            durable_low: 0,
            durable_high: 0,
        }
    }

    /// The same delivery with these identifiers and group (allocating only if there are any).
    pub fn with_extras(mut self, subscription_ids: Vec<u32>, group: Option<u32>) -> Self {
        self.extras = (!subscription_ids.is_empty() || group.is_some()).then(|| {
            Box::new(DeliveryExtras {
                subscription_ids,
                group,
                durable_id: None,
            })
        });
        self
    }

    /// Marks the delivery as kept on disk under `id` (or no longer, for `None`).
    pub fn set_durable_id(&mut self, id: Option<u64>) {
        let inline = id.filter(|&id| id < INLINE_DURABLE_LIMIT);
        let plus_one = inline.map_or(0, |id| id + 1);
        // Below 2^48 by the filter: the casts keep every bit.
        self.durable_low = plus_one as u32;
        self.durable_high = (plus_one >> 32) as u16;
        let boxed = if inline.is_some() { None } else { id };
        match (&mut self.extras, boxed) {
            (Some(extras), _) => extras.durable_id = boxed,
            (None, None) => {}
            (None, Some(_)) => {
                self.extras = Some(Box::new(DeliveryExtras {
                    durable_id: boxed,
                    ..DeliveryExtras::default()
                }))
            }
        }
    }

    /// The id of the record that keeps this delivery on disk, if any.
    pub fn durable_id(&self) -> Option<u64> {
        match u64::from(self.durable_high) << 32 | u64::from(self.durable_low) {
            0 => self.extras.as_ref().and_then(|e| e.durable_id),
            plus_one => Some(plus_one - 1),
        }
    }

    /// Subscription Identifiers to send with it.
    pub fn subscription_ids(&self) -> &[u32] {
        self.extras
            .as_ref()
            .map_or(&[][..], |e| &e.subscription_ids[..])
    }

    /// The shared subscription group it came through.
    pub fn group(&self) -> Option<u32> {
        self.extras.as_ref().and_then(|e| e.group)
    }
}

/// What a subscription asked for (MQTT 5 subscription options, section 3.8.3.1; MQTT 3.1.1
/// subscriptions have only the QoS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// Maximum QoS granted.
    pub qos: QoS,
    /// No Local: never send the subscriber its own messages `[MQTT-3.8.3-3]`.
    pub no_local: bool,
    /// Retain As Published: keep the RETAIN flag of forwarded messages `[MQTT-3.3.1-12]`.
    pub retain_as_published: bool,
    /// Retain Handling: 0 send retained messages at subscribe, 1 only for a new subscription,
    /// 2 never `[MQTT-3.3.1-9]` `[MQTT-3.3.1-10]` `[MQTT-3.3.1-11]` (5.0 numbering).
    pub retain_handling: u8,
    /// Subscription Identifier, if the SUBSCRIBE carried one.
    pub id: Option<u32>,
}

impl SubscriptionOptions {
    /// MQTT 3.1.1 options: the QoS, nothing else.
    pub fn qos(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            id: None,
        }
    }
}

/// The will a client registered in its CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Topic the will is published to.
    pub topic: String,
    /// Will payload.
    pub payload: Bytes,
    /// QoS of the will message.
    pub qos: QoS,
    /// Whether the will is published as retained.
    pub retain: bool,
    /// MQTT 5 will properties forwarded with it.
    pub properties: Option<Box<MessageProperties>>,
    /// MQTT 5 Message Expiry Interval of the will, in seconds.
    pub expiry: Option<u32>,
    /// MQTT 5 Will Delay Interval in seconds (0 publishes at once) `[MQTT-3.1.3-9]`.
    pub delay: u32,
}

impl LastWill {
    /// A will without MQTT 5 properties.
    pub fn new(topic: impl Into<String>, payload: Bytes, qos: QoS, retain: bool) -> Self {
        LastWill {
            topic: topic.into(),
            payload,
            qos,
            retain,
            properties: None,
            expiry: None,
            delay: 0,
        }
    }

    /// The will as an application message.
    pub fn to_message(&self) -> Message {
        Message::new(
            self.topic.clone(),
            self.payload.clone(),
            self.qos,
            self.retain,
        )
        .with_properties(self.properties.clone(), self.expiry)
    }
}

/// CONNACK return codes of MQTT 3.1.1 (section 3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReturnCode {
    /// 0x00 Connection accepted.
    Accepted = 0,
    /// 0x01 The server does not support the protocol level requested.
    UnacceptableProtocolVersion = 1,
    /// 0x02 The client identifier is not allowed.
    IdentifierRejected = 2,
    /// 0x03 The MQTT service is unavailable.
    ServerUnavailable = 3,
    /// 0x04 The user name or password is malformed or wrong.
    BadUsernameOrPassword = 4,
    /// 0x05 The client is not authorized to connect.
    NotAuthorized = 5,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery() -> Delivery {
        let message = Message::new("t", Bytes::new(), QoS::AtLeastOnce, false);
        Delivery::new(Arc::new(message), QoS::AtLeastOnce, false)
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_delivery_stays_three_words_wide() {
        assert_eq!(
            std::mem::size_of::<Delivery>(),
            3 * std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn durable_ids_round_trip_inline_and_boxed() {
        let mut d = delivery();
        assert_eq!(d.durable_id(), None);
        for id in [0, 1, 0x1234_5678_9abc, INLINE_DURABLE_LIMIT - 1] {
            d.set_durable_id(Some(id));
            assert_eq!(d.durable_id(), Some(id));
            assert!(d.extras.is_none(), "{id} is kept inline, no allocation");
        }
        for id in [INLINE_DURABLE_LIMIT, u64::MAX] {
            d.set_durable_id(Some(id));
            assert_eq!(d.durable_id(), Some(id), "{id} goes in the extras");
        }
        d.set_durable_id(Some(7));
        assert_eq!(d.durable_id(), Some(7));
        assert_eq!(
            d.extras.as_ref().and_then(|e| e.durable_id),
            None,
            "inline again: the boxed id is cleared"
        );
        d.set_durable_id(None);
        assert_eq!(d.durable_id(), None);
    }

    #[test]
    fn a_durable_id_keeps_the_mqtt5_extras() {
        let mut d = delivery().with_extras(vec![3, 9], Some(2));
        d.set_durable_id(Some(42));
        assert_eq!(d.durable_id(), Some(42));
        assert_eq!(d.subscription_ids(), &[3, 9]);
        assert_eq!(d.group(), Some(2));
        d.set_durable_id(Some(u64::MAX));
        assert_eq!(d.durable_id(), Some(u64::MAX));
        assert_eq!(d.subscription_ids(), &[3, 9]);
    }
}
