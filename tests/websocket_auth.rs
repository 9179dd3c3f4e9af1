//! Passwords over WebSocket (`ws://` and `wss://`): a client that closes its connection while its
//! password waits to be checked gives up its place, as over plain TCP (`tests/auth.rs`) and TLS
//! (`tests/tls_auth.rs`), and one that sends packets behind its CONNECT before closing is still
//! served.

mod common;

use common::broker_with;
use common::passwords::{
    app_sees_the_one_shot_state, closed_connects_ended_unchecked, gate_1ab, guess,
    one_shot_packets, packets_read, set_password_rounds, CHECK_WAIT,
};
use common::ws::RawWs;
use switchboard::BackgroundBroker;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A broker with WebSocket listeners (`ws://`, and `wss://` with `pki`'s certificate) and a
/// password file holding `gate-1AB` (password `gate-secret`, 20,000 PBKDF2 rounds: some 300 ms
/// a check in a debug build).
fn ws_broker_with_a_gate(pki: &common::pki::Pki) -> (tempfile::TempDir, BackgroundBroker) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("passwords");
    set_password_rounds(&path, "gate-1AB", "gate-secret", 20_000);
    let broker = broker_with(|c| {
        c.auth.password_file = Some(path);
        c.websocket.port = Some(0);
        c.websocket.tls_port = Some(0);
        pki.serve(&mut c.tls, false);
    });
    (dir, broker)
}

/// How the clients of [`ws_closed_while_the_password_waits`] leave.
#[derive(Clone, Copy, PartialEq)]
enum Leaving {
    /// A Close frame, what a WebSocket library sends; the TCP connection stays open for the
    /// server's Close, as a WebSocket client's does.
    Close,
    /// The TCP connection dropped.
    Dropped,
    /// Over `wss://`: a Close frame, then close_notify and end of stream.
    CloseOverTls,
}

/// 20 WebSocket clients send a CONNECT with a wrong password and, once the broker has read it,
/// leave, `leaving` so. Their connections must end without waiting for the checks, and (but
/// for a few begun before the close was seen) none of them is checked and refused. Before the
/// Session read its stream while it waited (src/session/socket.rs, `peer_gone`), each waited
/// for its turn in the address's lane and its check: 20 refusals for nobody.
async fn ws_closed_while_the_password_waits(leaving: Leaving) {
    let pki = common::pki::Pki::new("ws-client");
    let (_dir, broker) = ws_broker_with_a_gate(&pki);
    let ws = broker.websocket_local_addr().expect("ws listener");
    let wss = broker.websocket_tls_local_addr().expect("wss listener");
    let tls = common::tls::client_config(&pki, &tokio_rustls::rustls::version::TLS13, false);
    let metrics = broker.metrics();
    let mut closed = Vec::new();
    let mut closed_over_tls = Vec::new();
    for i in 0..20u64 {
        let client_id = format!("gone-{i}");
        let connect = guess(&client_id).encode();
        if leaving == Leaving::CloseOverTls {
            let tcp = TcpStream::connect(wss).await.expect("connect");
            let connector = tokio_rustls::TlsConnector::from(tls.clone());
            let name = "localhost".try_into().expect("server name");
            let stream = connector.connect(name, tcp).await.expect("TLS handshake");
            let (mut conn, _) = RawWs::open_on(stream, wss, "/mqtt").await;
            conn.binary(&connect).await;
            packets_read(metrics, i + 1).await;
            conn.close().await;
            conn.stream.shutdown().await.expect("close_notify");
            closed_over_tls.push(conn);
            continue;
        }
        let (mut conn, _) = RawWs::open(ws, "/mqtt").await;
        conn.binary(&connect).await;
        packets_read(metrics, i + 1).await;
        if leaving == Leaving::Close {
            conn.close().await;
            closed.push(conn);
        } else {
            drop(conn);
        }
    }
    closed_connects_ended_unchecked(metrics, 20, "WebSocket CONNECTs").await;
}

#[tokio::test]
async fn websocket_connects_closed_while_their_password_waits_are_not_checked() {
    ws_closed_while_the_password_waits(Leaving::Close).await;
}

#[tokio::test]
async fn websocket_connects_dropped_while_their_password_waits_are_not_checked() {
    ws_closed_while_the_password_waits(Leaving::Dropped).await;
}

#[tokio::test]
async fn wss_connects_closed_while_their_password_waits_are_not_checked() {
    ws_closed_while_the_password_waits(Leaving::CloseOverTls).await;
}

/// A one-shot publisher over WebSocket sends its CONNECT and, once the broker has read it, a
/// retained PUBLISH and a DISCONNECT, then a Close frame, while its password is checked: the
/// PUBLISH is still served, as over plain TCP (`tests/auth.rs`) and TLS (`tests/tls_auth.rs`).
#[tokio::test]
async fn packets_sent_after_a_connect_over_websocket_are_served_though_the_client_closed() {
    let pki = common::pki::Pki::new("ws-client");
    let (_dir, broker) = ws_broker_with_a_gate(&pki);
    let ws = broker.websocket_local_addr().expect("ws listener");
    let metrics = broker.metrics();
    let gate = gate_1ab();
    let (mut one_shot, _) = RawWs::open(ws, "/mqtt").await;
    one_shot.binary(&gate.encode()).await;
    packets_read(metrics, 1).await;
    one_shot.binary(&one_shot_packets()).await;
    one_shot.close().await;
    let (opcode, connack) = one_shot.next_within(CHECK_WAIT).await.expect("a CONNACK");
    assert_eq!(
        (opcode, connack.as_slice()),
        (0x2, &[0x20, 0x02, 0x00, 0x00][..]),
        "accepted"
    );
    // The password verified, so the app's CONNECT with it is not checked again.
    app_sees_the_one_shot_state(broker.local_addr(), gate).await;
}
