//! Passwords over TLS: a client that closes its connection while its password waits to be
//! checked gives up its place, as over plain TCP (`tests/auth.rs`), and one that sends packets
//! behind its CONNECT before closing is still served (src/session/socket.rs, `peer_gone`: a
//! waiting Session reads its TLS stream once, where a clean close is a close_notify alert).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use common::broker_with;
use common::passwords::{
    app_sees_the_one_shot_state, closed_connects_ended_unchecked, gate_1ab, guess,
    one_shot_packets, packets_read, set_password_rounds, CHECK_WAIT,
};
use common::pki::Pki;
use common::tls::client_config;
use switchboard::BackgroundBroker;
use tokio::io::AsyncWriteExt;
use tokio_rustls::rustls::version::{TLS12, TLS13};
use tokio_rustls::rustls::{ClientConfig, SupportedProtocolVersion};

/// A broker with a TLS listener and a password file holding `gate-1AB` (password
/// `gate-secret`, 20,000 PBKDF2 rounds: some 300 ms a check in a debug build).
fn tls_broker_with_a_gate(pki: &Pki) -> (tempfile::TempDir, BackgroundBroker) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("passwords");
    set_password_rounds(&path, "gate-1AB", "gate-secret", 20_000);
    let broker = broker_with(|c| {
        c.auth.password_file = Some(path);
        c.tls.port = Some(0);
        pki.serve(&mut c.tls, false);
    });
    (dir, broker)
}

/// A TLS connection to `addr` from the loopback address `source`, its handshake done.
async fn tls_from(
    addr: SocketAddr,
    source: Ipv4Addr,
    config: &Arc<ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind a loopback source address");
    let tcp = socket.connect(addr).await.expect("tcp connect");
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let name = "localhost".try_into().expect("server name");
    tokio::time::timeout(common::WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// How the clients of [`closed_while_the_password_waits`] leave.
#[derive(Clone, Copy)]
enum Leaving {
    /// close_notify and end of stream right behind the CONNECT: what a TLS library sends on a
    /// clean close. The broker's TLS layer mostly reads it with the CONNECT.
    CloseNotifyAtOnce,
    /// The same once the broker has read the CONNECT (a device that gave up waiting for its
    /// CONNACK): the close_notify then waits alone in the socket.
    CloseNotifyOnceRead,
    /// The TCP connection dropped without a close_notify (a reset where the server's TLS 1.3
    /// session tickets are unread, an end of stream otherwise).
    Dropped,
}

/// 20 clients from one address over TLS `version` send a CONNECT with a wrong password and
/// leave at once, `leaving` so. Their connections must end without waiting for the checks, and
/// (but for a few begun before the close was seen) none of them is checked and refused.
/// Before 5c7f3aa, each TLS connection waited for its turn in the address's
/// lane and its check: 20 refusals for nobody, and a flood of such CONNECTs kept connections
/// open for as long as the checks took.
async fn closed_while_the_password_waits(
    version: &'static SupportedProtocolVersion,
    leaving: Leaving,
    source: Ipv4Addr,
) {
    let pki = Pki::new("1AB.ENTER.DETRD");
    let (_dir, broker) = tls_broker_with_a_gate(&pki);
    let addr = broker.tls_local_addr().expect("TLS listener");
    let metrics = broker.metrics();
    let config = client_config(&pki, version, false);
    // Clients that sent their close_notify keep their side open to read, as one waiting for
    // the server's close does: dropped, a TLS 1.3 client resets the connection (the server's
    // session tickets unread), which is [`Leaving::Dropped`]'s case.
    let mut closed_cleanly = Vec::new();
    for i in 0..20u64 {
        let client_id = format!("gone-{i}");
        let spec = guess(&client_id);
        let mut tls = tls_from(addr, source, &config).await;
        tls.write_all(&spec.encode()).await.expect("CONNECT sent");
        tls.flush().await.expect("CONNECT flushed");
        if let Leaving::CloseNotifyOnceRead = leaving {
            packets_read(metrics, i + 1).await;
        }
        match leaving {
            Leaving::CloseNotifyAtOnce | Leaving::CloseNotifyOnceRead => {
                tls.shutdown()
                    .await
                    .expect("close_notify and end of stream");
                closed_cleanly.push(tls);
            }
            Leaving::Dropped => {
                let (tcp, _) = tls.into_inner();
                drop(tcp);
            }
        }
    }
    closed_connects_ended_unchecked(metrics, 20, "TLS CONNECTs").await;
}

#[tokio::test]
async fn tls_1_3_connects_closed_at_once_while_their_password_waits_are_not_checked() {
    let source = Ipv4Addr::new(127, 0, 0, 5);
    closed_while_the_password_waits(&TLS13, Leaving::CloseNotifyAtOnce, source).await;
}

/// The close_notify alone in the socket.
#[tokio::test]
async fn tls_1_3_connects_closed_after_a_wait_while_their_password_waits_are_not_checked() {
    let source = Ipv4Addr::new(127, 0, 0, 6);
    closed_while_the_password_waits(&TLS13, Leaving::CloseNotifyOnceRead, source).await;
}

/// The same under TLS 1.2.
#[tokio::test]
async fn tls_1_2_connects_closed_after_a_wait_while_their_password_waits_are_not_checked() {
    let source = Ipv4Addr::new(127, 0, 0, 7);
    closed_while_the_password_waits(&TLS12, Leaving::CloseNotifyOnceRead, source).await;
}

#[tokio::test]
async fn tls_connects_dropped_while_their_password_waits_are_not_checked() {
    let source = Ipv4Addr::new(127, 0, 0, 9);
    closed_while_the_password_waits(&TLS13, Leaving::Dropped, source).await;
}

/// A one-shot publisher over TLS sends its CONNECT, then a retained PUBLISH and a DISCONNECT,
/// and closes at once (close_notify, end of stream) while its password is checked: the PUBLISH
/// is still served, as over plain TCP (`tests/auth.rs`). In one write with the CONNECT, the
/// broker's TLS layer reads them with it; sent `once_read`, after the broker has read the
/// CONNECT, they wait in the socket before the close_notify, more bytes than it alone.
async fn packets_behind_a_connect_served_though_the_client_closed(
    once_read: bool,
    source: Ipv4Addr,
) {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new("1AB.ENTER.DETRD");
    let (_dir, broker) = tls_broker_with_a_gate(&pki);
    let addr = broker.tls_local_addr().expect("TLS listener");
    let config = client_config(&pki, &TLS13, false);
    let gate = gate_1ab();
    let metrics = broker.metrics();
    let mut one_shot = tls_from(addr, source, &config).await;
    let mut bytes = gate.encode();
    if once_read {
        one_shot.write_all(&bytes).await.expect("CONNECT sent");
        one_shot.flush().await.expect("CONNECT flushed");
        packets_read(metrics, 1).await;
        bytes.clear();
    }
    bytes.extend(one_shot_packets());
    one_shot.write_all(&bytes).await.expect("packets sent");
    one_shot
        .shutdown()
        .await
        .expect("close_notify and end of stream");
    let mut connack = [0u8; 4];
    tokio::time::timeout(CHECK_WAIT, one_shot.read_exact(&mut connack))
        .await
        .expect("a CONNACK within the wait")
        .expect("a CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "accepted");

    // The password verified, so the app's CONNECT with it is not checked again.
    app_sees_the_one_shot_state(broker.local_addr(), gate).await;
}

#[tokio::test]
async fn packets_sent_with_a_connect_over_tls_are_served_though_the_client_closed() {
    packets_behind_a_connect_served_though_the_client_closed(false, Ipv4Addr::new(127, 0, 0, 10))
        .await;
}

#[tokio::test]
async fn packets_sent_after_a_connect_over_tls_are_served_though_the_client_closed() {
    packets_behind_a_connect_served_though_the_client_closed(true, Ipv4Addr::new(127, 0, 0, 11))
        .await;
}
