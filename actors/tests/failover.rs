//! A managed connection with several brokers (`ConnectionOptions::failover`), over loopback TCP
//! to real Switchboard brokers: it moves to the next broker at once when the one it is on goes,
//! subscribes there again, sends what it queued meanwhile, stays there, and backs off only
//! after a whole round of brokers failed.

mod common;

use std::time::Duration;

use actix::Actor;
use common::*;
use switchboard_actors::{
    BrokerAddress, ConnectFailure, ConnectionEvent, Enqueue, QoS, Received, Subscribe,
};

/// Waits for the next `Connected` and returns the broker it names and its session flag.
async fn connected_to(events: &mut Inbox<ConnectionEvent>) -> (BrokerAddress, bool) {
    events
        .find(|e| match e {
            ConnectionEvent::Connected {
                session_present,
                broker,
            } => Some((broker.clone(), *session_present)),
            _ => None,
        })
        .await
}

/// Waits for the next `ConnectFailed`: what failed, the delay before the next attempt, and the
/// broker it names.
async fn next_failure(
    events: &mut Inbox<ConnectionEvent>,
) -> (ConnectFailure, Duration, BrokerAddress) {
    events
        .find(|e| match e {
            ConnectionEvent::ConnectFailed {
                failure,
                retry_in,
                broker,
            } => Some((failure.clone(), *retry_in, broker.clone())),
            _ => None,
        })
        .await
}

/// [`next_failure`]'s broker and delay.
async fn failed_at(events: &mut Inbox<ConnectionEvent>) -> (BrokerAddress, Duration) {
    let (_, retry_in, broker) = next_failure(events).await;
    (broker, retry_in)
}

fn at(port: u16) -> BrokerAddress {
    BrokerAddress::new("127.0.0.1", port)
}

/// Enqueues QoS 1 messages `range` on `topic` (payload: the number).
async fn enqueue_numbered(
    device: &actix::Addr<switchboard_actors::ManagedConnection>,
    topic: &str,
    range: std::ops::Range<u32>,
) {
    for n in range {
        device
            .send(Enqueue::new(topic, format!("{n}"), QoS::AtLeastOnce))
            .await
            .expect("the connection")
            .expect("queued");
    }
}

/// The app publishes `payload` on `request` (QoS 1), and the device's consumer `inbox` gets it:
/// the device is subscribed on the app's broker.
async fn ask(
    app: &actix::Addr<switchboard_actors::ManagedConnection>,
    request: &str,
    payload: &str,
    inbox: &mut Inbox<Received>,
) {
    app.send(Enqueue::new(request, payload.to_string(), QoS::AtLeastOnce))
        .await
        .expect("the app's connection")
        .expect("queued");
    assert_eq!(receive(inbox, 1).await, [payload]);
}

fn numbered(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| n.to_string()).collect()
}

#[actix_rt::test]
async fn a_device_moves_to_the_next_broker_when_its_own_goes_and_back_when_that_one_goes() {
    let (broker_a, broker_b) = (broker_on(0), broker_on(0));
    // The device reaches each broker through a proxy, so the test decides when one is gone
    // (a cut proxy closes every connection, and each new one at once).
    let mut proxy_a = Proxy::start(0, broker_a.local_addr()).await;
    let mut proxy_b = Proxy::start(0, broker_b.local_addr()).await;
    let response = "detrd/status/response/1AB.ENTER.DETRD";
    let request = "detrd/status/request/1AB.ENTER.DETRD";
    let (app_a, mut at_a, _) =
        consumer_with(options(broker_a.local_addr().port(), "app-a"), response).await;
    let (app_b, mut at_b, _) =
        consumer_with(options(broker_b.local_addr().port(), "app-b"), response).await;

    let mut radar_options = options(proxy_a.port, "1AB.ENTER.DETRD");
    radar_options.failover = vec![at(proxy_b.port)];
    radar_options.clean_session = false;
    let (radar, mut events) = connection(radar_options);
    let (requests, mut radar_inbox) = probe::<Received>();
    switchboard_actors::Consumer::new(
        radar.clone(),
        vec![(request.to_string(), QoS::AtLeastOnce)],
        requests,
    )
    .start();
    assert_eq!(connected_to(&mut events).await, (at(proxy_a.port), false));
    granted(&mut events, request).await;
    enqueue_numbered(&radar, response, 0..20).await;
    assert_eq!(receive(&mut at_a, 20).await, numbered(0..20));
    events
        .find(|e| matches!(e, ConnectionEvent::MessageDelivered(20)).then_some(()))
        .await;

    // Broker A goes: one attempt at it, then at once broker B, where the device has no session
    // and subscribes again; what it queued meanwhile goes there, each message once, in order.
    proxy_a.cut();
    disconnected(&mut events).await;
    enqueue_numbered(&radar, response, 20..40).await;
    assert_eq!(
        failed_at(&mut events).await,
        (at(proxy_a.port), Duration::ZERO),
        "the next broker is tried at once"
    );
    assert_eq!(connected_to(&mut events).await, (at(proxy_b.port), false));
    granted(&mut events, request).await;
    assert_eq!(receive(&mut at_b, 20).await, numbered(20..40));
    ask(&app_b, request, "{}", &mut radar_inbox).await;

    // A is back, but the device stays where it is until B goes: then B is tried first (it is
    // where the device was), and A right after it.
    proxy_a.resume();
    proxy_b.cut();
    disconnected(&mut events).await;
    assert_eq!(
        failed_at(&mut events).await,
        (at(proxy_b.port), Duration::ZERO)
    );
    let (back_at, session_present) = connected_to(&mut events).await;
    assert_eq!(back_at, at(proxy_a.port));
    assert!(
        session_present,
        "broker A kept the device's session (clean session 0)"
    );
    enqueue_numbered(&radar, response, 40..50).await;
    assert_eq!(receive(&mut at_a, 10).await, numbered(40..50));
    ask(&app_a, request, "again", &mut radar_inbox).await;
    assert!(
        at_b.drain_ready().is_empty(),
        "nothing went to broker B after the device left it"
    );
}

#[actix_rt::test]
async fn with_return_to_first_a_device_goes_back_to_its_first_broker_once_it_answers() {
    let broker_a = broker_on(0);
    let port_a = broker_a.local_addr().port();
    let broker_b = broker_on(0);
    let response = "detrd/status/response/1AB.ENTER.DETRD";
    let (_app_b, mut at_b, _) =
        consumer_with(options(broker_b.local_addr().port(), "app-b"), response).await;
    let mut radar_options = options(port_a, "1AB.ENTER.DETRD");
    radar_options.failover = vec![at(broker_b.local_addr().port())];
    radar_options.return_to_first = Some(Duration::from_millis(100));
    let (radar, mut events) = connection(radar_options);
    assert_eq!(connected_to(&mut events).await, (at(port_a), false));

    // A goes: the radar is on B, and looks at A now and then (refused meanwhile).
    drop(broker_a);
    disconnected(&mut events).await;
    assert_eq!(
        connected_to(&mut events).await.0,
        at(broker_b.local_addr().port())
    );
    enqueue_numbered(&radar, response, 0..5).await;
    assert_eq!(receive(&mut at_b, 5).await, numbered(0..5));
    events
        .find(|e| matches!(e, ConnectionEvent::MessageDelivered(5)).then_some(()))
        .await;

    // A is back on its port: the radar leaves B and connects there.
    let _broker_a = broker_on(port_a);
    let (_app_a, mut at_a, _) = consumer_with(options(port_a, "app-a"), response).await;
    let reason = events
        .find(|e| match e {
            ConnectionEvent::Disconnected(reason) => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert_eq!(reason, switchboard_actors::LinkDown::BackToFirstBroker);
    assert_eq!(connected_to(&mut events).await, (at(port_a), false));
    enqueue_numbered(&radar, response, 5..10).await;
    assert_eq!(receive(&mut at_a, 5).await, numbered(5..10));
    assert!(at_b.drain_ready().is_empty(), "nothing more went to B");
}

#[actix_rt::test]
async fn a_round_that_fails_at_every_broker_backs_off_then_starts_again() {
    let broker = broker_on(0);
    // Three brokers that close every connection before CONNACK, the second of which opens later.
    let mut proxies = Vec::new();
    for _ in 0..3 {
        let mut proxy = Proxy::start(0, broker.local_addr()).await;
        proxy.cut();
        proxies.push(proxy);
    }
    let ports: Vec<u16> = proxies.iter().map(|p| p.port).collect();
    let mut device_options = options(ports[0], "gate-1AB");
    device_options.failover = vec![at(ports[1]), at(ports[2])];
    let (_device, mut events) = connection(device_options);
    for _round in 0..2 {
        assert_eq!(failed_at(&mut events).await, (at(ports[0]), Duration::ZERO));
        assert_eq!(failed_at(&mut events).await, (at(ports[1]), Duration::ZERO));
        let (last, backoff) = failed_at(&mut events).await;
        assert_eq!(last, at(ports[2]));
        // The test's backoff starts at 20 ms, with jitter down to half of it.
        assert!(backoff >= Duration::from_millis(10), "{backoff:?}");
    }
    let (failure, _, _) = next_failure(&mut events).await;
    assert!(
        matches!(failure, ConnectFailure::Network(_)),
        "closed before CONNACK: {failure:?}"
    );
    proxies[1].resume();
    assert_eq!(connected_to(&mut events).await, (at(ports[1]), false));
}

#[actix_rt::test]
async fn a_broker_that_refuses_the_connect_counts_as_down() {
    // Broker A is full (one connection, taken), so it answers CONNACK 0x03 (server
    // unavailable); B takes the device.
    let mut full = switchboard::Config::default();
    full.listener.port = 0;
    full.listener.workers = 1;
    full.http.port = 0;
    full.limits.max_connections = 1;
    let broker_a = switchboard::BackgroundBroker::start(full).expect("broker starts");
    let (_first, mut first_events) = connection(options(broker_a.local_addr().port(), "first"));
    connected(&mut first_events).await;
    let broker_b = broker_on(0);
    let mut device_options = options(broker_a.local_addr().port(), "gate-1AB");
    device_options.failover = vec![at(broker_b.local_addr().port())];
    let (device, mut events) = connection(device_options);
    let failure = next_failure(&mut events).await;
    assert_eq!(
        failure,
        (
            ConnectFailure::Refused(3),
            Duration::ZERO,
            at(broker_a.local_addr().port())
        )
    );
    assert_eq!(
        connected_to(&mut events).await,
        (at(broker_b.local_addr().port()), false)
    );
    device
        .send(Subscribe {
            filter: "gate/1AB/cmd".into(),
            qos: QoS::AtLeastOnce,
        })
        .await
        .expect("the connection");
    granted(&mut events, "gate/1AB/cmd").await;
}

#[actix_rt::test]
async fn switchboard_pub_delivers_through_its_failover_broker() {
    use actix::Actor;
    const BIN: &str = env!("CARGO_BIN_EXE_switchboard-pub");
    let broker = broker_on(0);
    let (conn, mut events) = connection(options(broker.local_addr().port(), "app"));
    let (sink, mut received) = probe::<Received>();
    switchboard_actors::Consumer::new(
        conn,
        vec![("gate/1AB/state".into(), QoS::AtLeastOnce)],
        sink,
    )
    .start();
    granted(&mut events, "gate/1AB/state").await;
    let mut down = Proxy::start(0, broker.local_addr()).await;
    down.cut();
    let failover = format!("127.0.0.1:{}", broker.local_addr().port());
    let run = tokio::process::Command::new(BIN)
        .args(["--port", &down.port.to_string(), "--failover", &failover])
        .args(["--topic", "gate/1AB/state", "--message", "closed"])
        .args(["--count", "3", "--wait", "10"])
        .output()
        .await
        .expect("switchboard-pub runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(receive(&mut received, 3).await, vec!["closed"; 3]);

    let refused = tokio::process::Command::new(BIN)
        .args(["--topic", "t", "--failover", "central.example"])
        .output()
        .await
        .expect("switchboard-pub runs");
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        "switchboard-pub: --failover: `central.example` is not host:port"
    );
}

/// Reads one MQTT packet from a fake broker's socket.
async fn read_packet(socket: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut head = vec![0u8; 2];
    socket.read_exact(&mut head).await.expect("a packet");
    let (mut len, mut shift, mut last) = ((head[1] & 0x7F) as usize, 7, head[1]);
    while last & 0x80 != 0 {
        let mut b = [0u8; 1];
        socket.read_exact(&mut b).await.expect("a length byte");
        len |= ((b[0] & 0x7F) as usize) << shift;
        (shift, last) = (shift + 7, b[0]);
    }
    let mut body = vec![0u8; len];
    socket.read_exact(&mut body).await.expect("a body");
    body
}

/// An MQTT 5 CONNACK or DISCONNECT (`first_byte` 0x20 or 0xE0) with this reason code and a
/// Server Reference property (0x1C).
fn with_server_reference(first_byte: u8, code: u8, reference: &str) -> Vec<u8> {
    let mut properties = vec![0x1C];
    properties.extend_from_slice(&(reference.len() as u16).to_be_bytes());
    properties.extend_from_slice(reference.as_bytes());
    let mut body = if first_byte == 0x20 {
        vec![0x00, code]
    } else {
        vec![code]
    };
    body.push(properties.len() as u8);
    body.extend(properties);
    let mut packet = vec![first_byte, body.len() as u8];
    packet.extend(body);
    packet
}

/// A fake MQTT 5 broker that takes one connection and answers its CONNECT with `answer`.
async fn fake_broker_answering(
    answer: Vec<u8>,
) -> (u16, tokio::task::JoinHandle<tokio::net::TcpStream>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let port = listener.local_addr().expect("addr").port();
    let fake = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("a connection");
        let connect = read_packet(&mut socket).await;
        assert_eq!(&connect[..6], b"\x00\x04MQTT", "a CONNECT");
        socket.write_all(&answer).await.expect("answered");
        socket // the listener is dropped: a second attempt here would be refused
    });
    (port, fake)
}

#[actix_rt::test]
async fn an_mqtt5_broker_that_answers_use_another_server_sends_the_device_there() {
    let broker = broker_on(0);
    let real = at(broker.local_addr().port());
    let connack = with_server_reference(0x20, 0x9C, &format!("127.0.0.1:{}", real.port));
    let (fake_port, fake) = fake_broker_answering(connack).await;
    let mut device_options = options(fake_port, "gate-1AB");
    device_options.protocol = switchboard_actors::ProtocolVersion::V5;
    let (_device, mut events) = connection(device_options);
    let failure = next_failure(&mut events).await;
    assert_eq!(
        failure,
        (ConnectFailure::Refused(0x9C), Duration::ZERO, at(fake_port)),
        "the server it names is tried at once (section 4.11)"
    );
    assert_eq!(connected_to(&mut events).await, (real, false));
    drop(fake);
}

#[actix_rt::test]
async fn an_mqtt5_broker_that_disconnects_with_server_moved_is_replaced_for_good() {
    use tokio::io::AsyncWriteExt;
    let broker = broker_on(0);
    let mut proxy = Proxy::start(0, broker.local_addr()).await;
    let moved_to = at(proxy.port);
    let (fake_port, fake) = fake_broker_answering(vec![0x20, 0x03, 0x00, 0x00, 0x00]).await;
    let mut device_options = options(fake_port, "gate-1AB");
    device_options.protocol = switchboard_actors::ProtocolVersion::V5;
    let (_device, mut events) = connection(device_options);
    assert_eq!(connected_to(&mut events).await, (at(fake_port), false));
    let mut socket = fake.await.expect("the fake broker");
    let disconnect = with_server_reference(0xE0, 0x9D, &format!("127.0.0.1:{}", proxy.port));
    socket.write_all(&disconnect).await.expect("sent");
    let reason = events
        .find(|e| match e {
            ConnectionEvent::Disconnected(reason) => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        reason,
        switchboard_actors::LinkDown::DisconnectedByBroker(0x9D)
    );
    assert_eq!(connected_to(&mut events).await, (moved_to.clone(), false));

    // The server moved for good: after losing it, the device tries it again, never the old one.
    proxy.cut();
    for _ in 0..3 {
        let (failed_at, _) = failed_at(&mut events).await;
        assert_eq!(failed_at, moved_to);
    }
    proxy.resume();
    assert_eq!(connected_to(&mut events).await, (moved_to, false));
}
