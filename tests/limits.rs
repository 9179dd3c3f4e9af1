//! Per-client limits (`[limits]`): each is configurable, logged and counted, and affects only the
//! client that hit it.

mod common;

use std::time::{Duration, Instant};

use common::packets::{self, parse_publish};
use common::{broker_with, broker_with_hooks, Raw};
use switchboard::hooks::DisconnectReason;

#[tokio::test]
async fn subscriptions_over_the_per_client_limit_get_0x80() {
    let broker = broker_with(|c| c.limits.max_subscriptions_per_client = 2);
    let (mut raw, _) = Raw::handshake(broker.local_addr(), "many", true).await;
    raw.subscribe(1, &[("a", 0), ("b", 1), ("c", 2)], &[0, 1, 0x80])
        .await;
    // Re-subscribing to a filter it holds replaces it: not a new subscription.
    raw.subscribe(2, &[("b", 2)], &[2]).await;
    raw.subscribe(3, &[("d", 0)], &[0x80]).await;
    // After an unsubscribe there is room again.
    raw.send(&packets::unsubscribe(4, &["a"])).await;
    assert_eq!(raw.expect().await.byte1, 0xB0);
    raw.subscribe(5, &[("d", 0)], &[0]).await;
    assert_eq!(broker.metrics().snapshot().limits_hit, 2);
}

#[tokio::test]
async fn topics_over_the_length_or_level_limit() {
    let broker = broker_with(|c| {
        c.limits.max_topic_length = 16;
        c.limits.max_topic_levels = 3;
    });
    let addr = broker.local_addr();
    let (mut witness, _) = Raw::handshake(addr, "witness", true).await;
    // Filters over a limit are refused, and the connection stays.
    witness
        .subscribe(
            1,
            &[
                ("a/b/c", 0),
                ("a/b/c/d", 0),
                ("this/filter/is/way/too/long", 0),
            ],
            &[0, 0x80, 0x80],
        )
        .await;
    // A PUBLISH over a limit closes only that connection.
    let (mut deep, _) = Raw::handshake(addr, "deep", true).await;
    deep.send(&packets::publish("a/b/c/d", b"x", 0, 0, false, false))
        .await;
    deep.expect_closed().await;
    let (mut long, _) = Raw::handshake(addr, "long", true).await;
    long.send(&packets::publish(
        "abcdefghijklmnopq",
        b"x",
        0,
        0,
        false,
        false,
    ))
    .await;
    long.expect_closed().await;
    let (mut fine, _) = Raw::handshake(addr, "fine", true).await;
    fine.send(&packets::publish("a/b/c", b"ok", 0, 0, false, false))
        .await;
    fine.sync().await;
    let got: Vec<_> = witness.sync().await.iter().map(parse_publish).collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"ok".to_vec());
    assert_eq!(broker.metrics().snapshot().limits_hit, 4);
}

#[tokio::test]
async fn too_many_qos2_messages_awaiting_pubrel_close_the_connection() {
    let broker = broker_with(|c| c.limits.max_inbound_qos2 = 2);
    let (mut raw, _) = Raw::handshake(broker.local_addr(), "hoarder", true).await;
    for pid in [1u16, 2] {
        raw.send(&packets::publish("q2", b"x", 2, pid, false, false))
            .await;
        assert_eq!(raw.expect().await.byte1, 0x50);
    }
    // A re-sent one is still answered: it is not a new message.
    raw.send(&packets::publish("q2", b"x", 2, 1, false, true))
        .await;
    assert_eq!(raw.expect().await.byte1, 0x50);
    // Releasing one makes room.
    raw.send(&packets::ack(0x62, 1)).await;
    assert_eq!(raw.expect().await.byte1, 0x70);
    raw.send(&packets::publish("q2", b"x", 2, 3, false, false))
        .await;
    assert_eq!(raw.expect().await.byte1, 0x50);
    // Now 2 and 3 await PUBREL: a third closes the connection.
    raw.send(&packets::publish("q2", b"x", 2, 4, false, false))
        .await;
    raw.expect_closed().await;
    assert_eq!(broker.metrics().snapshot().limits_hit, 1);
}

#[tokio::test]
async fn keep_alive_is_capped_at_the_maximum() {
    // [MQTT-3.1.2-24] applied with the broker's maximum when the client asks for none (0).
    let (broker, mut hooks) =
        broker_with_hooks(|c| c.limits.max_keep_alive = Duration::from_secs(1));
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(&packets::connect("forever", true, 0)).await;
    assert_eq!(raw.expect().await.body, vec![0, 0]);
    let connected = Instant::now();
    raw.expect_closed().await;
    assert!(connected.elapsed() >= Duration::from_millis(1400));
    assert_eq!(
        hooks.disconnected("forever").await.reason,
        DisconnectReason::KeepAliveTimeout
    );
}

#[tokio::test]
async fn connections_over_the_per_address_rate_are_refused() {
    let broker = broker_with(|c| {
        c.limits.max_connection_rate = 5;
        c.limits.rate_limit_loopback = true;
    });
    // Ten connections back to back: a burst of 5 is allowed, the rest are closed at once.
    let mut sockets = Vec::new();
    for _ in 0..10 {
        sockets.push(Raw::connect(broker.local_addr()).await);
    }
    let accepted = common::connects_accepted(&mut sockets).await;
    // One token may have come back if the ten connects took over 200 ms.
    assert!((5..=6).contains(&accepted), "{accepted} accepted");
    assert_eq!(broker.metrics().snapshot().limits_hit, 10 - accepted);
}
