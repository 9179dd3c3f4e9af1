//! Listeners behind a load balancer (`proxy_protocol = true`): the PROXY protocol header
//! (HAProxy's, versions 1 and 2) names the client, whose address then stands in the lifecycle
//! hooks, the admin API and the per-address connection rate, and (with use_identity_as_username)
//! whose verified certificate name is its user name. Raw headers over real TCP, then
//! Debian's HAProxy in front of the plain, TLS and WebSocket listeners, with stock clients
//! (mosquitto_pub, paho_c_pub) behind it.

mod common;

use std::net::SocketAddr;

use common::haproxy::{Frontend, HaProxy};
use common::http::get;
use common::pki::Pki;
use common::{
    broker_with, broker_with_hooks, haproxy_available, mosquitto_clients_available, packets,
    paho_c_available, Raw, WAIT,
};

/// A version 2 header (command PROXY, TCP over IPv4) naming `source` as the client, with a TLV
/// after the addresses as proxies add them.
fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    v2_header_with(source, destination, &[0x05, 0x00, 0x03, b'a', b'b', b'c'])
}

/// An SSL TLV as a proxy that terminated TLS sends it: the client connected over TLS and
/// presented a certificate, verified (or not), with this Common Name.
fn ssl_tlv(common_name: &str, verified: bool) -> Vec<u8> {
    let mut ssl = vec![0x03];
    ssl.extend_from_slice(&u32::from(!verified).to_be_bytes());
    ssl.push(0x22);
    ssl.extend_from_slice(&(common_name.len() as u16).to_be_bytes());
    ssl.extend_from_slice(common_name.as_bytes());
    let mut tlv = vec![0x20];
    tlv.extend_from_slice(&(ssl.len() as u16).to_be_bytes());
    tlv.extend_from_slice(&ssl);
    tlv
}

/// [`v2_header`] with these TLVs after the addresses.
fn v2_header_with(source: SocketAddr, destination: SocketAddr, tlv: &[u8]) -> Vec<u8> {
    let (SocketAddr::V4(source), SocketAddr::V4(destination)) = (source, destination) else {
        panic!("IPv4 addresses");
    };
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11]);
    header.extend_from_slice(&(12 + tlv.len() as u16).to_be_bytes());
    header.extend_from_slice(&source.ip().octets());
    header.extend_from_slice(&destination.ip().octets());
    header.extend_from_slice(&source.port().to_be_bytes());
    header.extend_from_slice(&destination.port().to_be_bytes());
    header.extend_from_slice(tlv);
    header
}

/// Connects to `addr`, sends `header` and a CONNECT for `client_id` in one write (so the broker
/// must take the header and leave the CONNECT), and returns the connection and whether a
/// CONNACK 0 came (false: the connection was closed).
async fn connect_behind(addr: SocketAddr, header: &[u8], client_id: &str) -> (Raw, bool) {
    let mut raw = Raw::connect(addr).await;
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(&packets::connect(client_id, true, 60));
    raw.send(&bytes).await;
    let accepted = match raw.recv().await {
        Some(connack) => {
            assert_eq!((connack.byte1, connack.body[1]), (0x20, 0), "CONNACK 0");
            true
        }
        None => false,
    };
    (raw, accepted)
}

#[tokio::test]
async fn the_header_names_the_client_to_hooks_and_the_admin_api() {
    let (broker, mut hooks) = broker_with_hooks(|c| c.listener.proxy_protocol = true);
    let addr = broker.local_addr();
    let http = broker.http_local_addr().expect("HTTP server");

    let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883\r\n";
    let (_gate, accepted) = connect_behind(addr, v1, "gate-v1").await;
    assert!(accepted);
    let named: SocketAddr = "203.0.113.7:51234".parse().unwrap();
    assert_eq!(hooks.connected("gate-v1").await.peer, named);
    let listed = get(http, "/api/v1/clients/gate-v1", None).await.json();
    assert_eq!(listed["address"], named.to_string());

    let v1_six = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 1883\r\n";
    let (_radar, accepted) = connect_behind(addr, v1_six, "radar-v1").await;
    assert!(accepted);
    let named: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    assert_eq!(hooks.connected("radar-v1").await.peer, named);

    let named: SocketAddr = "198.51.100.20:61000".parse().unwrap();
    let (_app, accepted) = connect_behind(addr, &v2_header(named, addr), "app-v2").await;
    assert!(accepted);
    assert_eq!(hooks.connected("app-v2").await.peer, named);

    // UNKNOWN (v1) and LOCAL (v2, a proxy's health check): the connection's own address.
    let (unknown, accepted) = connect_behind(addr, b"PROXY UNKNOWN\r\n", "unknown").await;
    assert!(accepted);
    let own = unknown.stream.local_addr().expect("local address");
    assert_eq!(hooks.connected("unknown").await.peer, own);
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    let (check, accepted) = connect_behind(addr, local, "health-check").await;
    assert!(accepted);
    let own = check.stream.local_addr().expect("local address");
    assert_eq!(hooks.connected("health-check").await.peer, own);
}

#[tokio::test]
async fn connections_handed_to_other_workers_keep_the_named_address() {
    // Two workers, one listener dealing connections out in turn: the header is read on the
    // worker each connection is handed to.
    let (broker, mut hooks) = broker_with_hooks(|c| {
        c.listener.proxy_protocol = true;
        c.listener.workers = 2;
    });
    let mut clients = Vec::new();
    for n in 1..=4u8 {
        let named = SocketAddr::from(([198, 51, 100, n], 40000 + u16::from(n)));
        let header = v2_header(named, broker.local_addr());
        let id = format!("device-{n}");
        let (raw, accepted) = connect_behind(broker.local_addr(), &header, &id).await;
        assert!(accepted);
        assert_eq!(hooks.connected(&id).await.peer, named);
        clients.push(raw);
    }
}

#[tokio::test]
async fn a_header_split_across_writes_is_read_whole() {
    // The broker takes only the header's bytes, however they arrive: here the CR and LF of a
    // v1 header in two writes, the CONNECT behind the LF (TCP may still bring them together;
    // src/proxy_protocol.rs's tests hold the reader between the two).
    let (broker, mut hooks) = broker_with_hooks(|c| c.listener.proxy_protocol = true);
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 1883\r")
        .await;
    let mut rest = b"\n".to_vec();
    rest.extend_from_slice(&packets::connect("split", true, 60));
    raw.send(&rest).await;
    assert_eq!(raw.expect().await.byte1, 0x20);
    let named: SocketAddr = "192.0.2.1:1000".parse().unwrap();
    assert_eq!(hooks.connected("split").await.peer, named);
}

#[tokio::test]
async fn connections_without_a_good_header_are_refused_and_others_go_on() {
    let broker = broker_with(|c| {
        c.listener.proxy_protocol = true;
        c.limits.connect_timeout = std::time::Duration::from_secs(1);
    });
    let addr = broker.local_addr();
    let too_long_v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x10\x01";
    // 108 bytes before its CRLF: longer than a v1 header may be.
    let too_long_v1 = [&b"PROXY UNKNOWN "[..], &[b'x'; 94], b"\r\n"].concat();
    for header in [
        &b""[..],
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51234\r\n",
        b"PROXY TCP4 not.an.address 10.0.0.1 1 2\r\n",
        &too_long_v1,
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
        too_long_v2,
    ] {
        let (_, accepted) = connect_behind(addr, header, "refused").await;
        assert!(!accepted, "{:?}", String::from_utf8_lossy(header));
    }
    // Each is a protocol error; the empty one too (12 bytes of CONNECT where the header was).
    // (Counted once each socket is closed: a counter, with no event of its own.)
    common::eventually(|| async { broker.metrics().snapshot().protocol_errors == 6 }).await;
    // A connection that closes before sending anything (a bare TCP health check) is not one.
    let probe = Raw::connect(addr).await;
    drop(probe);
    // Half a header, then nothing: closed at the CONNECT deadline.
    let mut stalled = Raw::connect(addr).await;
    stalled.send(b"PROXY TCP4 203.0.").await;
    stalled.expect_closed().await;
    let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883\r\n";
    let (_, accepted) = connect_behind(addr, v1, "still-served").await;
    assert!(accepted);
    assert_eq!(broker.metrics().snapshot().protocol_errors, 6);
}

#[tokio::test]
async fn the_connection_rate_counts_the_named_address() {
    // Every socket comes from loopback, which the rate leaves alone by default: what it limits
    // is the address in the header.
    let broker = broker_with(|c| {
        c.listener.proxy_protocol = true;
        c.limits.max_connection_rate = 5;
    });
    let addr = broker.local_addr();
    let crowded = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883\r\n";
    let mut sockets = Vec::new();
    for _ in 0..10 {
        let mut raw = Raw::connect(addr).await;
        raw.send(crowded).await;
        sockets.push(raw);
    }
    let accepted = common::connects_accepted(&mut sockets).await;
    // A burst of 5; one token may have come back if the ten took over 200 ms.
    assert!((5..=6).contains(&accepted), "{accepted} accepted");
    let other = b"PROXY TCP4 203.0.113.8 10.0.0.1 51234 1883\r\n";
    let (_, accepted) = connect_behind(addr, other, "another-address").await;
    assert!(accepted, "another address has its own bucket");
}

#[tokio::test]
async fn stock_clients_behind_haproxy_are_seen_by_their_own_address() {
    // HAProxy connects from 127.0.0.3 (`PROXY_SOURCE`); the clients from 127.0.0.1. Plain TCP
    // with a v2 header (mosquitto_pub), TLS with a v1 header (mosquitto_pub, OpenSSL; the
    // certificate is checked against the CA, not the name, as HAProxy's address is not in it),
    // WebSocket with a v2 header (paho_c_pub).
    if !haproxy_available() || !mosquitto_clients_available() || !paho_c_available() {
        return;
    }
    let pki = Pki::new("gate");
    let ca = pki.dir.path().join("ca.pem");
    let (broker, mut hooks) = broker_with_hooks(|c| {
        c.listener.proxy_protocol = true;
        c.tls.port = Some(0);
        c.tls.proxy_protocol = true;
        c.websocket.port = Some(0);
        c.websocket.proxy_protocol = true;
        pki.serve(&mut c.tls, false);
    });
    let haproxy = HaProxy::start(&[
        Frontend::tcp(broker.local_addr(), "send-proxy-v2"),
        Frontend::tcp(broker.tls_local_addr().expect("TLS listener"), "send-proxy"),
        Frontend::tcp(
            broker.websocket_local_addr().expect("WebSocket listener"),
            "send-proxy-v2",
        ),
    ]);
    // Straight to the broker, without a header: refused. Through HAProxy: served.
    let (_, accepted) = connect_behind(broker.local_addr(), b"", "watcher").await;
    assert!(!accepted);
    let (mut watcher, accepted) = connect_behind(haproxy.fronts[0], b"", "watcher").await;
    assert!(accepted);
    let peer = hooks.connected("watcher").await.peer;
    assert_eq!(peer.ip(), std::net::Ipv4Addr::LOCALHOST);
    watcher.subscribe(1, &[("gate/#", 1)], &[1]).await;

    let (tcp, tls) = (haproxy.fronts[0].port(), haproxy.fronts[1].port());
    let (tcp, tls) = (tcp.to_string(), tls.to_string());
    let ws = format!("ws://127.0.0.2:{}/mqtt", haproxy.fronts[2].port());
    let ca = ca.to_str().expect("path");
    let publish = ["-q", "1", "-t", "gate/1AB/state", "-m", "closed"];
    let clients: [(&str, &str, Vec<&str>); 3] = [
        (
            "pub-tcp",
            "mosquitto_pub",
            vec!["-h", "127.0.0.2", "-p", &tcp],
        ),
        (
            "pub-tls",
            "mosquitto_pub",
            vec!["-h", "127.0.0.2", "-p", &tls, "--cafile", ca, "--insecure"],
        ),
        ("pub-ws", "paho_c_pub", vec!["-c", &ws]),
    ];
    for (id, program, args) in clients {
        let run = tokio::process::Command::new(program)
            .args(&args)
            .args(["-i", id])
            .args(publish)
            .kill_on_drop(true)
            .output();
        let out = finished(run).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{id}: {stderr}");
        let peer = hooks.connected(id).await.peer;
        assert_eq!(peer.ip(), std::net::Ipv4Addr::LOCALHOST, "{id}");
        assert_eq!(watcher.expect().await.packet_type(), 3, "{id}'s message");
    }
}

/// An ACL for the identity tests: each device reads its requests and writes its answers (`%u`,
/// its user name); `watcher` reads them all.
fn device_acl(dir: &std::path::Path) -> std::path::PathBuf {
    let acl = dir.join("acl");
    let rules =
        "pattern read detrd/status/request/%u\npattern readwrite detrd/status/response/%u\n\
                 user watcher\ntopic read detrd/#\n";
    std::fs::write(&acl, rules).expect("acl");
    acl
}

#[tokio::test]
async fn a_verified_certificate_name_in_the_header_is_the_user_name() {
    // listener.use_identity_as_username: the Common Name a TLS-terminating balancer verified
    // is the user name the ACL's %u sees, whatever the CONNECT says; without one (no SSL TLV,
    // or a certificate that did not verify) the CONNECT is refused as not authorised.
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = device_acl(dir.path());
    let broker = broker_with(|c| {
        c.listener.proxy_protocol = true;
        c.listener.use_identity_as_username = true;
        c.auth.acl_file = Some(acl.clone());
    });
    let addr = broker.local_addr();
    let client: SocketAddr = "203.0.113.7:51234".parse().unwrap();
    let vouched = v2_header_with(client, addr, &ssl_tlv("1AB.ENTER.DETRD", true));
    let mut raw = Raw::connect(addr).await;
    let connect = packets::ConnectSpec {
        client_id: "radar",
        username: Some("watcher"),
        password: Some(b"ignored"),
        ..Default::default()
    };
    raw.send(&[vouched, connect.encode()].concat()).await;
    assert_eq!(raw.expect().await.body[1], 0, "CONNACK 0");
    raw.subscribe(1, &[("detrd/status/request/1AB.ENTER.DETRD", 1)], &[1])
        .await;
    // Not another device's: under the CONNECT's user name (watcher) this would be granted.
    raw.subscribe(2, &[("detrd/status/request/other", 1)], &[0x80])
        .await;

    for header in [
        v2_header(client, addr),
        v2_header_with(client, addr, &ssl_tlv("1AB.ENTER.DETRD", false)),
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883\r\n".to_vec(),
    ] {
        let mut refused = Raw::connect(addr).await;
        refused
            .send(&[header, packets::connect("nameless", true, 60)].concat())
            .await;
        let connack = refused.expect().await;
        assert_eq!(
            (connack.byte1, connack.body[1]),
            (0x20, 5),
            "not authorised"
        );
    }
}

/// What a client run printed, once it ended (within [`WAIT`]).
async fn finished(
    run: impl std::future::Future<Output = std::io::Result<std::process::Output>>,
) -> std::process::Output {
    tokio::time::timeout(WAIT, run)
        .await
        .expect("the client ends in time")
        .expect("the client runs")
}

#[tokio::test]
async fn haproxy_terminating_tls_vouches_for_the_device_certificate() {
    // HAProxy terminates TLS and checks the device's certificate against the CA (`verify
    // optional`), then passes the connection on with `send-proxy-v2-ssl-cn`: mosquitto_pub
    // (OpenSSL) with the gate's certificate publishes as 1AB.ENTER.DETRD, within its ACL;
    // without a certificate it is refused (CONNACK 5).
    if !haproxy_available() || !mosquitto_clients_available() {
        return;
    }
    let pki = Pki::new("1AB.ENTER.DETRD");
    let file = |name: &str| pki.dir.path().join(name);
    let acl = device_acl(pki.dir.path());
    let (broker, mut hooks) = broker_with_hooks(|c| {
        c.listener.proxy_protocol = true;
        c.listener.use_identity_as_username = true;
        c.auth.acl_file = Some(acl.clone());
    });
    let server = std::fs::read_to_string(file("server.pem")).expect("server.pem");
    let key = std::fs::read_to_string(file("server.key")).expect("server.key");
    std::fs::write(file("haproxy.pem"), format!("{server}{key}")).expect("haproxy.pem");
    std::fs::write(file("gate.pem"), &pki.client.0).expect("gate.pem");
    std::fs::write(file("gate.key"), &pki.client.1).expect("gate.key");
    let terminating = Frontend {
        to: broker.local_addr(),
        header: "send-proxy-v2-ssl-cn",
        bind: format!(
            "ssl crt {} ca-file {} verify optional",
            file("haproxy.pem").display(),
            file("ca.pem").display()
        ),
    };
    let haproxy = HaProxy::start(&[
        Frontend::tcp(broker.local_addr(), "send-proxy-v2"),
        terminating,
    ]);
    let watcher_header = v2_header_with(
        "127.0.0.1:1".parse().unwrap(),
        broker.local_addr(),
        &ssl_tlv("watcher", true),
    );
    let mut watcher = Raw::connect(broker.local_addr()).await;
    watcher
        .send(&[watcher_header, packets::connect("watcher", true, 60)].concat())
        .await;
    assert_eq!(watcher.expect().await.body[1], 0);
    watcher.subscribe(1, &[("detrd/#", 1)], &[1]).await;

    let port = haproxy.fronts[1].port().to_string();
    let publish = |id: &str, topic: &str, with_certificate: bool| {
        let mut command = tokio::process::Command::new("mosquitto_pub");
        command
            .args(["-h", "127.0.0.2", "-p", &port, "--insecure", "--cafile"])
            .arg(file("ca.pem"))
            .args(["-i", id, "-q", "1", "-t", topic, "-m", id])
            .kill_on_drop(true);
        if with_certificate {
            command.arg("--cert").arg(file("gate.pem"));
            command.arg("--key").arg(file("gate.key"));
        }
        command.output()
    };
    // Another device's topic: PUBACKed, dropped by the ACL. Then its own: delivered, next.
    let sneak = finished(publish("sneak", "detrd/status/response/other", true)).await;
    assert!(
        sneak.status.success(),
        "{}",
        String::from_utf8_lossy(&sneak.stderr)
    );
    let own = "detrd/status/response/1AB.ENTER.DETRD";
    let answer = finished(publish("answer", own, true)).await;
    assert!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    let delivered = watcher.expect().await;
    assert_eq!(delivered.packet_type(), 3);
    assert!(delivered.body.ends_with(b"answer"), "{delivered:?}");
    assert_eq!(
        hooks.connected("answer").await.peer.ip(),
        std::net::Ipv4Addr::LOCALHOST
    );

    let nameless = finished(publish("nameless", own, false)).await;
    assert!(!nameless.status.success());
    let said = String::from_utf8_lossy(&nameless.stderr);
    assert!(said.contains("not authorised"), "{said}");
}
