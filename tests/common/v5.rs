//! MQTT 5 helpers: packet builders byte by byte from the spec, and decoding of what the broker
//! sends with mqttbytes' v5 module (a parser independent of the broker's).

use std::net::SocketAddr;

use bytes::BytesMut;
pub use mqttbytes::v5::Packet as Packet5;

use super::packets::frame;
use super::{Frame, Raw};

/// Property identifiers used by the tests.
pub mod prop {
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_ID: u8 = 0x0B;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const AUTH_METHOD: u8 = 0x15;
    pub const REQUEST_PROBLEM_INFO: u8 = 0x17;
    pub const WILL_DELAY: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFO: u8 = 0x19;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
}

fn var_int(mut value: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return;
        }
    }
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// Asserts that `p` are the properties of a status request as the tests send it: payload format
/// 1, content type `application/json`, response topic `detrd/status/response/1AB`,
/// correlation data `req-42`, and these user properties in this order.
pub fn assert_status_request_properties(
    p: &mqttbytes::v5::PublishProperties,
    users: &[(&str, &str)],
) {
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    let response = p.response_topic.as_deref();
    assert_eq!(response, Some("detrd/status/response/1AB"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"req-42"[..]));
    let got: Vec<(&str, &str)> = p
        .user_properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, users);
}

/// A property block under construction.
#[derive(Debug, Clone, Default)]
pub struct Props(Vec<u8>);

impl Props {
    pub fn new() -> Self {
        Props::default()
    }
    pub fn byte(mut self, id: u8, v: u8) -> Self {
        self.0.extend([id, v]);
        self
    }
    pub fn u16(mut self, id: u8, v: u16) -> Self {
        self.0.push(id);
        self.0.extend(v.to_be_bytes());
        self
    }
    pub fn u32(mut self, id: u8, v: u32) -> Self {
        self.0.push(id);
        self.0.extend(v.to_be_bytes());
        self
    }
    pub fn var(mut self, id: u8, v: u32) -> Self {
        self.0.push(id);
        var_int(v as usize, &mut self.0);
        self
    }
    pub fn str(mut self, id: u8, v: &str) -> Self {
        self.0.push(id);
        self.0.extend(string(v.as_bytes()));
        self
    }
    pub fn user(mut self, k: &str, v: &str) -> Self {
        self.0.push(prop::USER_PROPERTY);
        self.0.extend(string(k.as_bytes()));
        self.0.extend(string(v.as_bytes()));
        self
    }
    /// Length and content.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        var_int(self.0.len(), &mut out);
        out.extend_from_slice(&self.0);
        out
    }
}

/// A will in an MQTT 5 CONNECT.
pub struct Will5<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    pub props: Props,
}

/// An MQTT 5 CONNECT.
pub fn connect5(
    client_id: &str,
    clean_start: bool,
    keep_alive: u16,
    props: &Props,
    will: Option<&Will5<'_>>,
) -> Vec<u8> {
    let mut flags = u8::from(clean_start) << 1;
    if let Some(w) = will {
        flags |= 0x04 | (w.qos << 3) | (u8::from(w.retain) << 5);
    }
    let mut body = string(b"MQTT");
    body.push(5);
    body.push(flags);
    body.extend(keep_alive.to_be_bytes());
    body.extend(props.encode());
    body.extend(string(client_id.as_bytes()));
    if let Some(w) = will {
        body.extend(w.props.encode());
        body.extend(string(w.topic.as_bytes()));
        body.extend(string(w.payload));
    }
    frame(0x10, &body)
}

/// An MQTT 5 PUBLISH.
pub fn publish5(
    topic: &str,
    payload: &[u8],
    qos: u8,
    pid: u16,
    retain: bool,
    props: &Props,
) -> Vec<u8> {
    let byte1 = 0x30 | (qos << 1) | u8::from(retain);
    let mut body = string(topic.as_bytes());
    if qos > 0 {
        body.extend(pid.to_be_bytes());
    }
    body.extend(props.encode());
    body.extend_from_slice(payload);
    frame(byte1, &body)
}

/// Subscription options byte (section 3.8.3.1).
pub fn options(qos: u8, no_local: bool, retain_as_published: bool, retain_handling: u8) -> u8 {
    qos | (u8::from(no_local) << 2) | (u8::from(retain_as_published) << 3) | (retain_handling << 4)
}

/// An MQTT 5 SUBSCRIBE of (filter, options byte) pairs.
pub fn subscribe5(pid: u16, props: &Props, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    body.extend(props.encode());
    for (filter, opts) in filters {
        body.extend(string(filter.as_bytes()));
        body.push(*opts);
    }
    frame(0x82, &body)
}

/// An MQTT 5 UNSUBSCRIBE.
pub fn unsubscribe5(pid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    body.push(0);
    for filter in filters {
        body.extend(string(filter.as_bytes()));
    }
    frame(0xA2, &body)
}

/// An MQTT 5 DISCONNECT with a reason code and properties.
pub fn disconnect5(reason: u8, props: &Props) -> Vec<u8> {
    let mut body = vec![reason];
    body.extend(props.encode());
    frame(0xE0, &body)
}

/// Decodes a frame the broker sent with mqttbytes' v5 reader.
pub fn decode5(frame: &Frame) -> Packet5 {
    let mut bytes = BytesMut::from(&super::packets::frame(frame.byte1, &frame.body)[..]);
    mqttbytes::v5::read(&mut bytes, 1 << 20)
        .unwrap_or_else(|e| panic!("mqttbytes cannot read {frame:?}: {e:?}"))
}

/// The reason code of a DISCONNECT frame.
pub fn disconnect_reason(frame: &Frame) -> u8 {
    assert_eq!(frame.byte1, 0xE0, "DISCONNECT expected, got {frame:?}");
    frame.body.first().copied().unwrap_or(0)
}

/// Each PUBACK, PUBREC or PUBCOMP among `frames` as (packet type byte, packet id, reason code:
/// 0 when omitted).
pub fn ack_reasons(frames: &[Frame]) -> Vec<(u8, u16, u8)> {
    frames
        .iter()
        .filter(|f| matches!(f.byte1, 0x40 | 0x50 | 0x70))
        .map(|f| (f.byte1, f.pid(), f.body.get(2).copied().unwrap_or(0)))
        .collect()
}

/// The reason codes of a SUBACK or UNSUBACK (after packet id and property block).
pub fn ack_codes(frame: &Frame) -> Vec<u8> {
    let (len, at) = props_len(&frame.body[2..]);
    frame.body[2 + at + len..].to_vec()
}

/// The Reason String of a SUBACK or UNSUBACK, if it has one.
pub fn ack_reason_string(frame: &Frame) -> Option<String> {
    let (len, at) = props_len(&frame.body[2..]);
    let props = &frame.body[2 + at..2 + at + len];
    // The broker puts at most the Reason String (0x1F) here.
    (props.first() == Some(&0x1F)).then(|| String::from_utf8_lossy(&props[3..]).into_owned())
}

/// A property block's length and the bytes its length field takes.
fn props_len(bytes: &[u8]) -> (usize, usize) {
    let mut len = 0usize;
    for (i, b) in bytes.iter().enumerate().take(4) {
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return (len, i + 1);
        }
    }
    panic!("bad property length in {bytes:?}")
}

/// A decoded MQTT 5 PUBLISH from the broker.
pub fn publish_of(frame: &Frame) -> mqttbytes::v5::Publish {
    match decode5(frame) {
        Packet5::Publish(p) => p,
        other => panic!("PUBLISH expected, got {other:?}"),
    }
}

impl Raw {
    /// Connects with an MQTT 5 CONNECT and returns the connection and the decoded CONNACK.
    pub async fn connect5(addr: SocketAddr, connect: &[u8]) -> (Raw, mqttbytes::v5::ConnAck) {
        let mut raw = Raw::connect(addr).await;
        raw.send(connect).await;
        let frame = raw.expect().await;
        match decode5(&frame) {
            Packet5::ConnAck(ack) => (raw, ack),
            other => panic!("CONNACK expected, got {other:?}"),
        }
    }

    /// An MQTT 5 client with clean start, keep-alive 60 and no properties, asserting success.
    pub async fn handshake5(addr: SocketAddr, client_id: &str) -> Raw {
        let (raw, ack) =
            Raw::connect5(addr, &connect5(client_id, true, 60, &Props::new(), None)).await;
        assert_eq!(ack.code, mqttbytes::v5::ConnectReturnCode::Success);
        raw
    }

    /// Subscribes (MQTT 5) and returns the SUBACK reason codes.
    pub async fn subscribe5(&mut self, pid: u16, props: &Props, filters: &[(&str, u8)]) -> Vec<u8> {
        self.send(&subscribe5(pid, props, filters)).await;
        let suback = self.expect().await;
        assert_eq!(suback.byte1, 0x90, "SUBACK expected, got {suback:?}");
        assert_eq!(suback.pid(), pid);
        ack_codes(&suback)
    }

    /// The MQTT 5 form of [`Raw::sync`]: a barrier through the Registry.
    pub async fn sync5(&mut self) -> Vec<Frame> {
        self.send(&unsubscribe5(0xFFFF, &["test/sync/barrier"]))
            .await;
        let mut before = Vec::new();
        loop {
            let frame = self.expect().await;
            if frame.byte1 == 0xB0 && frame.pid() == 0xFFFF {
                return before;
            }
            before.push(frame);
        }
    }
}

/// A rumqttc v5 client whose event loop runs in a task and reports incoming packets.
pub struct Peer5 {
    pub client: rumqttc::v5::AsyncClient,
    pub events: tokio::sync::mpsc::UnboundedReceiver<Result<rumqttc::v5::Incoming, String>>,
}

/// Connects a rumqttc v5 client to `addr` and waits for a successful CONNACK.
pub async fn peer5(addr: SocketAddr, client_id: &str) -> Peer5 {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as Code, Packet};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(std::time::Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(packet)) => {
                    if tx.send(Ok(packet)).is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(_)) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    loop {
        match tokio::time::timeout(super::WAIT, events.recv()).await {
            Ok(Some(Ok(Packet::ConnAck(ack)))) => {
                assert_eq!(ack.code, Code::Success);
                break;
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no CONNACK: {other:?}"),
        }
    }
    Peer5 { client, events }
}

impl Peer5 {
    /// The next incoming packet.
    pub async fn next(&mut self) -> rumqttc::v5::Incoming {
        tokio::time::timeout(super::WAIT, self.events.recv())
            .await
            .expect("an event within the timeout")
            .expect("event loop alive")
            .unwrap_or_else(|e| panic!("connection failed: {e}"))
    }

    /// The next PUBLISH received.
    pub async fn next_publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        loop {
            if let rumqttc::v5::Incoming::Publish(p) = self.next().await {
                return p;
            }
        }
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::v5::mqttbytes::QoS) {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("subscribe queued");
        loop {
            if let rumqttc::v5::Incoming::SubAck(_) = self.next().await {
                return;
            }
        }
    }
}

/// A subscriber with the given CONNECT properties, subscribed to `filter` at QoS `qos`.
pub async fn subscriber5(
    addr: std::net::SocketAddr,
    id: &str,
    props: Props,
    filter: &str,
    qos: u8,
) -> Raw {
    let (mut raw, ack) = Raw::connect5(addr, &connect5(id, true, 60, &props, None)).await;
    assert_eq!(ack.code, mqttbytes::v5::ConnectReturnCode::Success);
    assert_eq!(
        raw.subscribe5(1, &Props::new(), &[(filter, qos)]).await,
        vec![qos]
    );
    raw
}
