//! MQTT 5 connection handling: CONNACK properties and reason codes, assigned client identifiers,
//! server keep-alive, session takeover with DISCONNECT 0x8E, and CONNECTs that break a rule.
//! Raw bytes in, mqttbytes' v5 reader out. (Packets after the CONNECT that break a rule, and
//! the client's DISCONNECT: `tests/v5_errors.rs`.)

mod common;

use std::time::Duration;

use common::v5::{
    connect5, decode5, disconnect_reason, prop, publish5, publish_of, Packet5, Props, Will5,
};
use common::{broker, broker_with, packets, Raw};
use mqttbytes::v5::ConnectReturnCode;

#[tokio::test]
async fn connack_announces_what_the_broker_accepts() {
    let broker = broker_with(|c| {
        c.limits.max_packet_size = 4096;
        c.limits.max_inbound_qos2 = 10;
        c.limits.topic_alias_maximum = 7;
    });
    let (_raw, ack) = Raw::connect5(
        broker.local_addr(),
        &connect5("c1", true, 30, &Props::new(), None),
    )
    .await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    assert!(!ack.session_present);
    let props = ack.properties.expect("CONNACK properties");
    // Receive Maximum, Maximum Packet Size and Topic Alias Maximum announced (section 3.2.2.3):
    // what a client must stay within [MQTT-3.3.4-7] [MQTT-3.2.2-17].
    assert_eq!(props.receive_max, Some(10));
    assert_eq!(props.max_packet_size, Some(4096));
    assert_eq!(props.topic_alias_max, Some(7));
    assert_eq!(
        props.assigned_client_identifier, None,
        "the client chose its id"
    );
    assert_eq!(
        props.server_keep_alive, None,
        "the client's keep-alive is honoured"
    );
}

#[tokio::test]
async fn the_first_packet_back_is_a_connack_whose_reserved_flags_are_clear() {
    // [MQTT-3.2.0-1] the broker's first packet is the CONNACK, [MQTT-3.1.4-5] with reason code
    // 0x00, and [MQTT-3.2.2-1] the reserved bits of its flags byte are 0.
    let broker = broker();
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(&connect5("flags", true, 30, &Props::new(), None))
        .await;
    let frame = raw.expect().await;
    assert_eq!(frame.byte1, 0x20, "CONNACK first, with flags 0000");
    assert_eq!(frame.body[0], 0, "Session Present 0, reserved bits 0");
    assert_eq!(frame.body[1], 0, "reason code 0x00");
}

#[tokio::test]
async fn without_a_server_keep_alive_the_client_keep_alive_applies() {
    // [MQTT-3.2.2-22] no Server Keep Alive in the CONNACK: the client's 1 s keep-alive is the
    // one enforced, 1.5 x 1 s of silence closing the connection with 0x8D [MQTT-3.1.2-22].
    let broker = broker();
    let (mut raw, ack) = Raw::connect5(
        broker.local_addr(),
        &connect5("own-keep-alive", true, 1, &Props::new(), None),
    )
    .await;
    assert_eq!(ack.properties.and_then(|p| p.server_keep_alive), None);
    let frame = raw.expect().await;
    assert_eq!(disconnect_reason(&frame), 0x8D);
    raw.expect_closed().await;
}

#[tokio::test]
async fn a_connect_for_another_protocol_or_level_is_not_taken_as_mqtt_5() {
    // [MQTT-3.1.2-1] a protocol name other than `MQTT`: the connection closes, nothing
    // answered. [MQTT-3.1.2-2] a level the broker does not speak (6): refused with a CONNACK
    // (in the 3.1.1 form, which every level's client reads; code 0x01), then closed.
    let broker = broker();
    let mut named = connect5("named", true, 30, &Props::new(), None);
    named[4..8].copy_from_slice(b"MQTX");
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(&named).await;
    raw.expect_closed().await;
    let mut levelled = connect5("levelled", true, 30, &Props::new(), None);
    assert_eq!(levelled[8], 5, "the protocol level");
    levelled[8] = 6;
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(&levelled).await;
    let frame = raw.expect().await;
    assert_eq!((frame.byte1, &frame.body[..]), (0x20, &[0, 1][..]));
    raw.expect_closed().await;
}

#[tokio::test]
async fn a_client_id_of_letters_and_digits_is_taken_and_a_reserved_one_refused_with_0x85() {
    // [MQTT-3.1.3-3] [MQTT-3.1.3-4] the client id, the payload's first field, a UTF-8 string;
    // [MQTT-3.1.3-5] 1 to 23 letters and digits are accepted. [MQTT-3.1.3-8] one the broker
    // refuses (the prefix of its own internal clients, here from the network) gets CONNACK
    // 0x85, Client Identifier not valid, and the connection closes.
    let broker = broker();
    let (_raw, ack) = Raw::connect5(
        broker.local_addr(),
        &connect5("Gate1AB2345678901234567", true, 30, &Props::new(), None)[..],
    )
    .await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let reserved = format!("{}x", switchboard::session::INTERNAL_CLIENT_PREFIX);
    let (mut raw, ack) = Raw::connect5(
        broker.local_addr(),
        &connect5(&reserved, true, 30, &Props::new(), None),
    )
    .await;
    assert_eq!(ack.code, ConnectReturnCode::ClientIdentifierNotValid);
    raw.expect_closed().await;
}

#[tokio::test]
async fn empty_client_id_gets_an_assigned_identifier_even_without_clean_start() {
    // [MQTT-3.1.3-6] [MQTT-3.1.3-7] [MQTT-3.2.2-16]
    let broker = broker();
    let (_raw, ack) = Raw::connect5(
        broker.local_addr(),
        &connect5("", false, 30, &Props::new(), None),
    )
    .await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let assigned = ack.properties.and_then(|p| p.assigned_client_identifier);
    assert!(assigned.is_some_and(|id| !id.is_empty()), "an assigned id");
}

#[tokio::test]
async fn server_keep_alive_replaces_a_keep_alive_above_the_maximum_and_expires_with_0x8d() {
    // [MQTT-3.2.2-21] [MQTT-3.1.2-22] the Server Keep Alive is announced and applied.
    let broker = broker_with(|c| c.limits.max_keep_alive = Duration::from_secs(1));
    let (mut raw, ack) = Raw::connect5(
        broker.local_addr(),
        &connect5("ka", true, 0, &Props::new(), None),
    )
    .await;
    assert_eq!(ack.properties.and_then(|p| p.server_keep_alive), Some(1));
    // Silence for 1.5 x 1 s: the broker says why it closes (0x8D Keep Alive timeout).
    let frame = raw.expect().await;
    assert_eq!(disconnect_reason(&frame), 0x8D);
    raw.expect_closed().await;
}

#[tokio::test]
async fn response_information_and_capped_session_expiry_are_announced() {
    let broker = broker_with(|c| c.sessions.max_session_expiry = Some(Duration::from_secs(60)));
    let props = Props::new()
        .byte(prop::REQUEST_RESPONSE_INFO, 1)
        .u32(prop::SESSION_EXPIRY, u32::MAX);
    let (_raw, ack) =
        Raw::connect5(broker.local_addr(), &connect5("rr", true, 30, &props, None)).await;
    let props = ack.properties.expect("CONNACK properties");
    assert_eq!(props.response_information.as_deref(), Some("response/rr"));
    assert_eq!(
        props.session_expiry_interval,
        Some(60),
        "cut to the configured maximum"
    );
    // Request Response Information 0 (and absent, which means 0): none [MQTT-3.1.2-28]. A
    // CONNECT without an Authentication Method gets none back [MQTT-4.12.0-6].
    for props in [
        Props::new().byte(prop::REQUEST_RESPONSE_INFO, 0),
        Props::new(),
    ] {
        let (_raw, ack) = Raw::connect5(
            broker.local_addr(),
            &connect5("rr0", true, 30, &props, None),
        )
        .await;
        let props = ack.properties.expect("CONNACK properties");
        assert_eq!(props.response_information, None);
        assert_eq!(props.authentication_method, None);
    }
}

#[tokio::test]
async fn refusals_carry_mqtt5_reason_codes_and_a_reason_string() {
    // [MQTT-3.2.2-6] [MQTT-3.2.2-7] a refusing CONNACK has a code >= 0x80, then the connection closes;
    // here an authorisation check that failed [MQTT-3.1.4-2].
    let broker = broker_with(|c| c.auth.allow_anonymous = Some(false));
    let (mut raw, ack) = Raw::connect5(
        broker.local_addr(),
        &connect5("anon", true, 30, &Props::new(), None),
    )
    .await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    assert!(ack.properties.and_then(|p| p.reason_string).is_some());
    raw.expect_closed().await;

    // An extended authentication method the broker does not support: 0x8C, then the
    // connection closes [MQTT-4.12.0-1].
    let broker = common::broker();
    let props = Props::new().str(prop::AUTH_METHOD, "SCRAM-SHA-1");
    let (mut raw, ack) = Raw::connect5(
        broker.local_addr(),
        &connect5("scram", true, 30, &props, None),
    )
    .await;
    assert_eq!(ack.code, ConnectReturnCode::BadAuthenticationMethod);
    raw.expect_closed().await;
}

#[tokio::test]
async fn a_taken_over_session_gets_disconnect_0x8e() {
    // [MQTT-3.1.4-3] the existing connection gets DISCONNECT with 0x8E, then is closed.
    let broker = broker();
    let mut first = Raw::handshake5(broker.local_addr(), "same").await;
    let _second = Raw::handshake5(broker.local_addr(), "same").await;
    let frame = first.expect().await;
    assert_eq!(disconnect_reason(&frame), 0x8E);
    // A server's DISCONNECT never carries a Session Expiry Interval [MQTT-3.14.2-2].
    let Packet5::Disconnect(disconnect) = decode5(&frame) else {
        panic!("DISCONNECT expected, got {frame:?}");
    };
    assert_eq!(
        disconnect
            .properties
            .and_then(|p| p.session_expiry_interval),
        None
    );
    first.expect_closed().await;
}

#[tokio::test]
async fn rumqttc_v5_client_connects_and_round_trips() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let broker = broker();
    let addr = broker.local_addr();
    let mut options = MqttOptions::new("rumqttc-v5", addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .subscribe("r/1", QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    let run = async {
        let mut published = false;
        loop {
            match eventloop.poll().await.expect("event loop") {
                Event::Incoming(Packet::SubAck(_)) if !published => {
                    published = true;
                    client
                        .publish("r/1", QoS::AtLeastOnce, false, "v5")
                        .await
                        .expect("publish queued");
                }
                Event::Incoming(Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    };
    let publish = tokio::time::timeout(common::WAIT, run)
        .await
        .expect("round trip");
    assert_eq!(
        (&publish.topic[..], &publish.payload[..]),
        (&b"r/1"[..], &b"v5"[..])
    );
}

/// A connect interceptor admitting only clients that say `fleet: detrd` in a user property.
struct FleetOnly;

impl actix::Actor for FleetOnly {
    type Context = actix::Context<Self>;
}

impl actix::Handler<switchboard::hooks::AuthorizeConnect> for FleetOnly {
    type Result = switchboard::hooks::ConnectDecision;

    fn handle(
        &mut self,
        q: switchboard::hooks::AuthorizeConnect,
        _: &mut Self::Context,
    ) -> Self::Result {
        use switchboard::hooks::ConnectDecision;
        let member = q
            .user_properties
            .iter()
            .any(|(k, v)| k == "fleet" && v == "detrd");
        if member {
            ConnectDecision::Accept
        } else {
            ConnectDecision::Refuse(switchboard::ConnectReturnCode::NotAuthorized)
        }
    }
}

#[tokio::test]
async fn the_connect_interceptor_sees_the_connect_user_properties() {
    use actix::Actor;
    let broker = switchboard::BackgroundBroker::start_with(common::test_config(), |b| {
        b.interceptors(switchboard::hooks::Interceptors {
            connect: Some(FleetOnly.start().recipient()),
            ..Default::default()
        })
    })
    .expect("broker starts");
    let addr = broker.local_addr();
    let member = Props::new().user("fleet", "detrd");
    let (_ok, ack) = Raw::connect5(addr, &connect5("member", true, 30, &member, None)).await;
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let (mut refused, ack) =
        Raw::connect5(addr, &connect5("stranger", true, 30, &Props::new(), None)).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    refused.expect_closed().await;
}

#[tokio::test]
async fn a_will_payload_that_is_not_the_utf8_it_claims_is_refused_with_0x99() {
    // Section 3.1.3.2.3: the broker may check a will's payload against its format indicator.
    let broker = broker();
    let will = Will5 {
        topic: "wills/x",
        payload: &[0xFF, 0xFE],
        qos: 0,
        retain: false,
        props: Props::new().byte(prop::PAYLOAD_FORMAT, 1),
    };
    let (mut raw, ack) = Raw::connect5(
        broker.local_addr(),
        &connect5("bad-will", true, 30, &Props::new(), Some(&will)),
    )
    .await;
    assert_eq!(ack.code, ConnectReturnCode::PayloadFormatInvalid);
    raw.expect_closed().await;
}

#[tokio::test]
async fn a_connect_that_does_not_conform_gets_a_connack_saying_why_then_the_connection_closes() {
    // [MQTT-3.1.4-1] a CONNECT that does not conform to section 3.1 closes the connection.
    // MQTT 5 lets the server say why first (section 4.13): a CONNACK with a reason code from
    // its table [MQTT-3.2.2-8], Session Present 0 [MQTT-3.2.2-6], then the connection closes
    // [MQTT-3.2.2-7]; never a DISCONNECT, as no CONNACK of success came [MQTT-3.14.0-1].
    let broker = broker();
    let will_on_a_wildcard = Will5 {
        topic: "gate/+/state",
        payload: b"gone",
        qos: 0,
        retain: false,
        props: Props::new(),
    };
    let cases = [
        (
            connect5(
                "rm0",
                true,
                30,
                &Props::new().u16(prop::RECEIVE_MAXIMUM, 0),
                None,
            ),
            ConnectReturnCode::ProtocolError,
            "Receive Maximum of 0",
        ),
        (
            connect5(
                "mps0",
                true,
                30,
                &Props::new().u32(prop::MAXIMUM_PACKET_SIZE, 0),
                None,
            ),
            ConnectReturnCode::ProtocolError,
            "Maximum Packet Size of 0",
        ),
        (
            connect5(
                "twice",
                true,
                30,
                &Props::new()
                    .u32(prop::SESSION_EXPIRY, 1)
                    .u32(prop::SESSION_EXPIRY, 2),
                None,
            ),
            ConnectReturnCode::ProtocolError,
            "more than once",
        ),
        (
            // Payload Format Indicator belongs to PUBLISH and the will, not to CONNECT.
            connect5(
                "misplaced",
                true,
                30,
                &Props::new().byte(prop::PAYLOAD_FORMAT, 1),
                None,
            ),
            ConnectReturnCode::MalformedPacket,
            "not allowed",
        ),
        (
            connect5(
                "wildcard-will",
                true,
                30,
                &Props::new(),
                Some(&will_on_a_wildcard),
            ),
            ConnectReturnCode::TopicNameInvalid,
            "wildcard",
        ),
    ];
    for (connect, code, why) in cases {
        let (mut raw, ack) = Raw::connect5(broker.local_addr(), &connect).await;
        assert_eq!(ack.code, code, "{why}");
        assert!(!ack.session_present);
        let reason = ack.properties.and_then(|p| p.reason_string);
        assert!(
            reason.as_deref().is_some_and(|r| r.contains(why)),
            "the reason string names the fault ({why}): {reason:?}"
        );
        raw.expect_closed().await;
    }
    // None of them became a client.
    let stats = broker
        .registry()
        .send(switchboard::registry::GetStats)
        .await
        .unwrap();
    assert_eq!(stats.clients_online + stats.sessions_offline, 0);
}

#[tokio::test]
async fn an_mqtt_3_1_1_connect_that_does_not_conform_closes_without_a_connack() {
    // [MQTT-3.1.4-1] (3.1.1: "close the Network Connection without sending a CONNACK"); the
    // same fault as above (an unknown property is not possible in 3.1.1, so a will on a
    // wildcard topic) gets no answer in MQTT 3.1.1.
    let broker = broker();
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x06, 0, 30];
    for field in [&b"wildcard-will"[..], b"gate/+/state", b"gone"] {
        body.extend((field.len() as u16).to_be_bytes());
        body.extend(field);
    }
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(&packets::frame(0x10, &body)).await;
    raw.expect_closed().await;
}

#[tokio::test]
async fn a_connect_above_the_maximum_packet_size_gets_connack_0x95_in_mqtt_5_and_nothing_in_3_1_1()
{
    // Refused on its announced length, before it is read whole: MQTT 5 answers with 0x95
    // Packet too large (a CONNACK reason code [MQTT-3.2.2-8]) and closes [MQTT-3.2.2-7];
    // MQTT 3.1.1 closes without a CONNACK [MQTT-3.1.4-1].
    let broker = broker_with(|c| c.limits.max_packet_size = 1024);
    let big_will = Will5 {
        topic: "gate/1/status",
        payload: &[b'x'; 2000],
        qos: 0,
        retain: false,
        props: Props::new(),
    };
    let (mut raw, ack) = Raw::connect5(
        broker.local_addr(),
        &connect5("big", true, 30, &Props::new(), Some(&big_will)),
    )
    .await;
    assert_eq!(ack.code, ConnectReturnCode::PacketTooLarge);
    assert!(!ack.session_present);
    raw.expect_closed().await;
    let spec = packets::ConnectSpec {
        client_id: "big-3",
        will: Some(("gate/1/status", &[b'x'; 2000], 0, false)),
        ..Default::default()
    };
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(&spec.encode()).await;
    raw.expect_closed().await;
}

#[tokio::test]
async fn connect_flags_that_break_the_rules_get_0x81_or_0x82() {
    // MQTT 5 calls a set reserved flag [MQTT-3.1.2-3] and a Will QoS of 3 [MQTT-3.1.2-12] a
    // Malformed Packet (0x81), as is a CONNECT that ends inside a field; Will QoS or Will
    // Retain without the Will Flag break
    // [MQTT-3.1.2-11] and [MQTT-3.1.2-13] (0x82). Each gets its CONNACK, then the connection
    // closes [MQTT-3.1.4-1] [MQTT-3.2.2-7].
    let broker = broker();
    let will = [&[0u8, 0][..], &[0, 1, b't'], &[0, 1, b'm']].concat(); // no properties, topic, payload
    let cases: [(u8, &[u8], ConnectReturnCode); 6] = [
        (0x02 | 0x01, &[], ConnectReturnCode::MalformedPacket),
        // A byte after the last field the flags announce: malformed too.
        (0x02, &[0xFF], ConnectReturnCode::MalformedPacket),
        // The Password Flag, and the packet ends before a password [MQTT-3.1.2-19]: malformed.
        (0x02 | 0x40, &[], ConnectReturnCode::MalformedPacket),
        (
            0x02 | 0x04 | 0x18,
            &will,
            ConnectReturnCode::MalformedPacket,
        ),
        (0x02 | 0x08, &[], ConnectReturnCode::ProtocolError),
        (0x02 | 0x20, &[], ConnectReturnCode::ProtocolError),
    ];
    for (flags, will, code) in cases {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 30, 0, 0, 1, b'f'];
        body.extend_from_slice(will);
        let (mut raw, ack) = Raw::connect5(broker.local_addr(), &packets::frame(0x10, &body)).await;
        assert_eq!(ack.code, code, "flags {flags:#04x}");
        raw.expect_closed().await;
    }
}

#[tokio::test]
async fn a_byte_order_mark_in_an_mqtt_5_topic_is_kept() {
    // [MQTT-1.5.4-3] 0xEF 0xBB 0xBF is U+FEFF wherever it appears and is not stripped: the
    // subscriber of the topic that starts with it gets the message with it (topics are not
    // normalised [MQTT-4.7.3-4]).
    let broker = broker();
    let addr = broker.local_addr();
    let mut sub = Raw::handshake5(addr, "bom5").await;
    assert_eq!(
        sub.subscribe5(1, &Props::new(), &[("\u{feff}radar/1", 0)])
            .await,
        [0]
    );
    let mut publisher = Raw::handshake5(addr, "bom5-pub").await;
    publisher
        .send(&publish5(
            "\u{feff}radar/1",
            b"x",
            0,
            0,
            false,
            &Props::new(),
        ))
        .await;
    let got = publish_of(&sub.expect().await);
    assert_eq!(got.topic, "\u{feff}radar/1");
}

#[tokio::test]
async fn nothing_behind_a_refused_mqtt_5_connect_is_processed() {
    // [MQTT-3.1.4-6] a refused CONNECT: nothing the client sent after it is processed, here a
    // retained PUBLISH written in the same segment as a CONNECT the broker refuses (no
    // anonymous clients: 0x87), then the connection closes [MQTT-3.2.2-7].
    let broker = broker_with(|c| c.auth.allow_anonymous = Some(false));
    let addr = broker.local_addr();
    let mut bytes = connect5("anon", true, 30, &Props::new(), None);
    bytes.extend(publish5(
        "refused/state",
        b"kept?",
        0,
        0,
        true,
        &Props::new(),
    ));
    let (mut raw, ack) = Raw::connect5(addr, &bytes).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    raw.expect_closed().await;
    // Had it been processed, the retained message would have gone to the Registry before the
    // connection closed, ahead of this question.
    let stored = broker
        .registry()
        .send(switchboard::registry::ListRetained {
            filter: "refused/#".into(),
            offset: 0,
            limit: 10,
        })
        .await
        .expect("registry")
        .total;
    assert_eq!(stored, 0, "no retained message was stored");
}
