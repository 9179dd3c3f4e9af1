//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5 section 4.8.2): one member per
//! message, round robin or random, unacknowledged QoS 1 messages handed to another member when
//! one leaves, and 3.1.1 clients as members.

mod common;

use common::v5::{connect5, disconnect5, prop, publish5, publish_of, Props};
use common::{broker, broker_with, packets, Raw};
use switchboard::config::SharedStrategy;

async fn publish_n(publisher: &mut Raw, topic: &str, n: u8, qos: u8) {
    for i in 0..n {
        publisher
            .send(&publish5(
                topic,
                &[i],
                qos,
                u16::from(i) + 1,
                false,
                &Props::new(),
            ))
            .await;
        if qos > 0 {
            assert_eq!(publisher.expect().await.byte1, 0x40);
        }
    }
}

#[tokio::test]
async fn each_message_goes_to_one_member_in_turn_and_to_every_plain_subscriber() {
    let broker = broker();
    let addr = broker.local_addr();
    let mut a = Raw::handshake5(addr, "member-a").await;
    let mut b = Raw::handshake5(addr, "member-b").await;
    let mut plain = Raw::handshake5(addr, "plain").await;
    assert_eq!(
        a.subscribe5(1, &Props::new(), &[("$share/workers/jobs/+", 0)])
            .await,
        vec![0]
    );
    assert_eq!(
        b.subscribe5(1, &Props::new(), &[("$share/workers/jobs/+", 0)])
            .await,
        vec![0]
    );
    assert_eq!(
        plain.subscribe5(1, &Props::new(), &[("jobs/+", 0)]).await,
        vec![0]
    );
    let mut publisher = Raw::handshake5(addr, "jobs-pub").await;
    publish_n(&mut publisher, "jobs/1", 6, 0).await;
    assert!(publisher.sync5().await.is_empty());
    let got_a: Vec<u8> = a
        .sync5()
        .await
        .iter()
        .map(|f| publish_of(f).payload[0])
        .collect();
    let got_b: Vec<u8> = b
        .sync5()
        .await
        .iter()
        .map(|f| publish_of(f).payload[0])
        .collect();
    // Round robin: alternating members, each message exactly once.
    assert_eq!((got_a.len(), got_b.len()), (3, 3), "{got_a:?} {got_b:?}");
    let mut all: Vec<u8> = got_a.iter().chain(&got_b).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..6).collect::<Vec<u8>>());
    assert_eq!(
        plain.sync5().await.len(),
        6,
        "a plain subscriber gets every message"
    );
}

#[tokio::test]
async fn random_strategy_delivers_each_message_once() {
    let broker = broker_with(|c| c.sessions.shared_subscription_strategy = SharedStrategy::Random);
    let addr = broker.local_addr();
    let mut members = Vec::new();
    for id in ["r1", "r2", "r3"] {
        let mut m = Raw::handshake5(addr, id).await;
        m.subscribe5(1, &Props::new(), &[("$share/g/rand", 0)])
            .await;
        members.push(m);
    }
    let mut publisher = Raw::handshake5(addr, "rand-pub").await;
    publish_n(&mut publisher, "rand", 30, 0).await;
    assert!(publisher.sync5().await.is_empty());
    let mut total = 0;
    for m in &mut members {
        total += m.sync5().await.len();
    }
    assert_eq!(total, 30);
}

#[tokio::test]
async fn unacknowledged_qos1_messages_go_to_another_member_when_one_leaves() {
    // Section 4.8.2: a QoS 1 message whose member went away unacknowledged goes to another
    // member (the spec's SHOULD); messages the member never got do too.
    let broker = broker();
    let addr = broker.local_addr();
    let mut a = Raw::handshake5(addr, "leaver").await;
    a.subscribe5(1, &Props::new(), &[("$share/g/work", 1)])
        .await;
    let mut publisher = Raw::handshake5(addr, "work-pub").await;
    publish_n(&mut publisher, "work", 3, 1).await;
    for _ in 0..3 {
        assert_eq!(
            publish_of(&a.expect().await).topic,
            "work",
            "sent, never acknowledged"
        );
    }
    let mut b = Raw::handshake5(addr, "stayer").await;
    b.subscribe5(1, &Props::new(), &[("$share/g/work", 1)])
        .await;
    // The leaver drops its connection without acknowledging anything.
    drop(a);
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = publish_of(&b.expect().await);
        b.send(&packets::ack(0x40, p.pkid)).await;
        got.push(p.payload[0]);
    }
    got.sort_unstable();
    assert_eq!(got, vec![0, 1, 2]);
    assert!(b.sync5().await.is_empty(), "each exactly once");
}

#[tokio::test]
async fn a_member_that_resumed_its_session_with_expiry_0_still_hands_on_what_it_did_not_ack() {
    // Section 4.8.2, as above, for a member whose `$share` subscription came with its resumed
    // session rather than from this connection: its session now ends with the connection
    // (expiry 0), and the message it got and did not acknowledge still goes to another member.
    let broker = broker();
    let addr = broker.local_addr();
    let kept = Props::new().u32(common::v5::prop::SESSION_EXPIRY, 60);
    let (mut a, _) = Raw::connect5(addr, &connect5("resumer", true, 60, &kept, None)).await;
    a.subscribe5(1, &Props::new(), &[("$share/g/jobs", 1)])
        .await;
    a.send(&disconnect5(0, &Props::new())).await;
    a.expect_closed().await;
    let ends = Props::new().u32(common::v5::prop::SESSION_EXPIRY, 0);
    let (mut a, ack) = Raw::connect5(addr, &connect5("resumer", false, 60, &ends, None)).await;
    assert!(
        ack.session_present,
        "the subscription came back with the session"
    );
    let mut publisher = Raw::handshake5(addr, "jobs-pub").await;
    publish_n(&mut publisher, "jobs", 1, 1).await;
    assert_eq!(
        publish_of(&a.expect().await).topic,
        "jobs",
        "sent, never acknowledged"
    );
    let mut b = Raw::handshake5(addr, "jobs-other").await;
    b.subscribe5(1, &Props::new(), &[("$share/g/jobs", 1)])
        .await;
    drop(a);
    let p = publish_of(&b.expect().await);
    assert_eq!(p.topic, "jobs");
    b.send(&packets::ack(0x40, p.pkid)).await;
    assert!(b.sync5().await.is_empty(), "exactly once");
}

#[tokio::test]
async fn qos2_in_flight_stays_with_its_member_across_a_reconnect() {
    // [MQTT-4.8.2-4] the delivery completes with the same client when it reconnects;
    // [MQTT-4.8.2-5] it is not given to another member.
    let broker = broker();
    let addr = broker.local_addr();
    let session = Props::new().u32(common::v5::prop::SESSION_EXPIRY, 60);
    let (mut a, _) = Raw::connect5(addr, &connect5("q2-member", true, 60, &session, None)).await;
    a.subscribe5(1, &Props::new(), &[("$share/g/q2", 2)]).await;
    let mut publisher = Raw::handshake5(addr, "q2-pub").await;
    publisher
        .send(&publish5("q2", b"once", 2, 1, false, &Props::new()))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x50);
    let first = publish_of(&a.expect().await);
    let mut b = Raw::handshake5(addr, "q2-other").await;
    b.subscribe5(1, &Props::new(), &[("$share/g/q2", 2)]).await;
    a.send(&disconnect5(0, &Props::new())).await;
    a.expect_closed().await;
    assert!(b.sync5().await.is_empty(), "not handed to the other member");
    let (mut a, ack) = Raw::connect5(addr, &connect5("q2-member", false, 60, &session, None)).await;
    assert!(ack.session_present);
    let again = publish_of(&a.expect().await);
    assert!(again.dup && again.pkid == first.pkid && &again.payload[..] == b"once");
}

#[tokio::test]
async fn a_lone_member_gets_what_it_did_not_ack_again_as_it_was() {
    // With no other member to take them, a leaving member's messages stay in its session as
    // they were: the one in flight is sent again with DUP and its packet identifier
    // [MQTT-4.4.0-1] [MQTT-3.3.1-1], and the queued ones keep their place in the session's
    // queue. (They were put back behind the plain subscription's, the one in flight as a new
    // message.)
    let broker = broker_with(|c| c.sessions.max_inflight = 1);
    let addr = broker.local_addr();
    let session = Props::new().u32(common::v5::prop::SESSION_EXPIRY, 60);
    let (mut member, _) =
        Raw::connect5(addr, &connect5("lone-member", true, 60, &session, None)).await;
    member
        .subscribe5(
            1,
            &Props::new(),
            &[("$share/g/lone/shared", 1), ("lone/plain", 1)],
        )
        .await;
    let mut publisher = Raw::handshake5(addr, "lone-pub").await;
    for (pid, topic) in [(1, "lone/shared"), (2, "lone/shared"), (3, "lone/plain")] {
        let payload = [pid as u8];
        publisher
            .send(&publish5(topic, &payload, 1, pid, false, &Props::new()))
            .await;
        assert_eq!(publisher.expect().await.byte1, 0x40);
    }
    // The window holds one: the first is in flight, the other two queued behind it.
    let first = publish_of(&member.expect().await);
    assert_eq!(&first.payload[..], [1]);
    member.send(&disconnect5(0, &Props::new())).await;
    member.expect_closed().await;
    let (mut member, ack) =
        Raw::connect5(addr, &connect5("lone-member", false, 60, &session, None)).await;
    assert!(ack.session_present);
    let again = publish_of(&member.expect().await);
    assert!(again.dup, "sent again, with DUP");
    assert_eq!((again.pkid, &again.payload[..]), (first.pkid, &[1u8][..]));
    member.send(&packets::ack(0x40, again.pkid)).await;
    let mut rest = Vec::new();
    for _ in 0..2 {
        let next = publish_of(&member.expect().await);
        assert!(!next.dup);
        rest.push(next.payload[0]);
        member.send(&packets::ack(0x40, next.pkid)).await;
    }
    assert_eq!(rest, [2, 3], "in the order they were published");
}

#[tokio::test]
async fn mqtt311_clients_can_be_members() {
    let broker = broker();
    let addr = broker.local_addr();
    let (mut old, _) = Raw::handshake(addr, "v311-member", true).await;
    old.subscribe(1, &[("$share/mixed/m", 0)], &[0]).await;
    let mut new = Raw::handshake5(addr, "v5-member").await;
    new.subscribe5(1, &Props::new(), &[("$share/mixed/m", 0)])
        .await;
    let mut publisher = Raw::handshake5(addr, "m-pub").await;
    publish_n(&mut publisher, "m", 4, 0).await;
    assert!(publisher.sync5().await.is_empty());
    assert_eq!(old.sync().await.len() + new.sync5().await.len(), 4);
}

#[tokio::test]
async fn shared_subscriptions_get_no_retained_messages_and_leave_with_unsubscribe() {
    let broker = broker();
    let addr = broker.local_addr();
    let mut publisher = Raw::handshake5(addr, "ret-pub").await;
    publisher
        .send(&publish5("kept/1", b"r", 1, 1, true, &Props::new()))
        .await;
    assert_eq!(publisher.expect().await.byte1, 0x40);
    let mut member = Raw::handshake5(addr, "ret-member").await;
    member
        .subscribe5(1, &Props::new(), &[("$share/g/kept/#", 1)])
        .await;
    assert!(
        member.sync5().await.is_empty(),
        "no retained message for a shared subscription"
    );
    member
        .send(&common::v5::unsubscribe5(2, &["$share/g/kept/#"]))
        .await;
    let unsuback = member.expect().await;
    assert_eq!(common::v5::ack_codes(&unsuback), vec![0]);
    publisher
        .send(&publish5("kept/1", b"x", 0, 0, false, &Props::new()))
        .await;
    assert!(publisher.sync5().await.is_empty());
    assert!(member.sync5().await.is_empty(), "left the group");
    let stats = broker
        .registry()
        .send(switchboard::registry::GetStats)
        .await
        .expect("registry");
    assert_eq!(stats.subscriptions, 0);
}

#[tokio::test]
async fn a_shared_subscription_needs_a_share_name_without_wildcards_and_a_filter() {
    // [MQTT-4.8.2-1] `$share/`, then a ShareName of at least one character; [MQTT-4.8.2-2]
    // without `/`, `+` or `#`, followed by `/` and a Topic Filter. Those that are not get
    // SUBACK 0x8F Topic Filter invalid, each in its place [MQTT-3.9.3-1]; the good one is granted.
    let broker = broker();
    let mut member = Raw::handshake5(broker.local_addr(), "names").await;
    let codes = member
        .subscribe5(
            1,
            &Props::new(),
            &[
                ("$share//jobs/#", 1),
                ("$share/g+/jobs/#", 1),
                ("$share/g#/jobs", 1),
                ("$share/workers", 1),
                ("$share/workers/", 1),
                ("$share/workers/jobs/#", 1),
            ],
        )
        .await;
    assert_eq!(codes, [0x8F, 0x8F, 0x8F, 0x8F, 0x8F, 1]);
    let stats = broker
        .registry()
        .send(switchboard::registry::GetStats)
        .await
        .expect("registry");
    assert_eq!(stats.subscriptions, 1, "only the good one");
}

#[tokio::test]
async fn a_shared_and_a_plain_subscription_of_one_client_each_get_a_copy_with_their_identifier() {
    // [MQTT-3.3.4-5] where the broker sends several PUBLISH packets for one message (one for
    // the plain subscription, one for the shared one), each carries the Subscription Identifier
    // of the subscription it is for.
    let broker = broker();
    let addr = broker.local_addr();
    let mut client = Raw::handshake5(addr, "both").await;
    client
        .subscribe5(
            1,
            &Props::new().var(prop::SUBSCRIPTION_ID, 7),
            &[("ids/1", 1)],
        )
        .await;
    client
        .subscribe5(
            2,
            &Props::new().var(prop::SUBSCRIPTION_ID, 9),
            &[("$share/g/ids/1", 1)],
        )
        .await;
    let mut publisher = Raw::handshake5(addr, "both-pub").await;
    publish_n(&mut publisher, "ids/1", 1, 1).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let copy = publish_of(&client.expect().await);
        client.send(&packets::ack(0x40, copy.pkid)).await;
        ids.push(copy.properties.map(|p| p.subscription_identifiers));
    }
    ids.sort();
    assert_eq!(ids, vec![Some(vec![7]), Some(vec![9])]);
    assert!(client.sync5().await.is_empty(), "two copies, no more");
}

#[tokio::test]
async fn a_message_a_member_refuses_with_a_reason_code_is_not_handed_to_another() {
    // [MQTT-4.8.2-6] a PUBACK with a reason code of 0x80 or above: the message is discarded,
    // not sent to another member, even once the refusing member has gone.
    let (broker, mut hooks) = common::broker_with_hooks(|_| {});
    let addr = broker.local_addr();
    let mut refuser = Raw::handshake5(addr, "refuser").await;
    refuser
        .subscribe5(1, &Props::new(), &[("$share/g/jobs", 1)])
        .await;
    let mut publisher = Raw::handshake5(addr, "jobs-pub").await;
    publish_n(&mut publisher, "jobs", 1, 1).await;
    let job = publish_of(&refuser.expect().await);
    // PUBACK 0x83, Implementation specific error (packet id, reason code, no properties).
    let [hi, lo] = job.pkid.to_be_bytes();
    refuser.send(&packets::frame(0x40, &[hi, lo, 0x83])).await;
    assert!(refuser.sync5().await.is_empty());
    let mut other = Raw::handshake5(addr, "other-member").await;
    other
        .subscribe5(1, &Props::new(), &[("$share/g/jobs", 1)])
        .await;
    refuser.send(&disconnect5(0, &Props::new())).await;
    refuser.expect_closed().await;
    // The Registry has ended its session (where what it left unacknowledged is handed on)
    // before the hook; the barrier then comes after anything handed to `other`.
    hooks.disconnected("refuser").await;
    assert!(
        other.sync5().await.is_empty(),
        "the refused job went nowhere"
    );
}
