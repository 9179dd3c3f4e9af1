//! The listening sockets (`src/listener.rs`): with `listener.reuse_port = true` each worker
//! listens on the broker's port itself and accepts its own connections; a second broker on a port
//! in use is refused either way.

mod common;

use common::packets::{self, parse_publish};
use common::{broker_with, test_config, Raw};

/// Sockets in state LISTEN on `port` (any address), from `/proc/net/tcp` and `/proc/net/tcp6`.
fn listening_sockets(port: u16) -> usize {
    let wanted = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1).and_then(|a| a.rsplit(':').next());
                    local_port == Some(wanted.as_str()) && fields.get(3) == Some(&"0A")
                })
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .count()
}

#[tokio::test]
async fn each_worker_listens_on_the_port_and_every_connection_is_served() {
    let broker = broker_with(|c| {
        c.listener.workers = 2;
        c.listener.reuse_port = true;
    });
    let addr = broker.local_addr();
    assert_eq!(listening_sockets(addr.port()), 2, "one listener per worker");
    // Connections land on either worker; each subscriber hears the publisher of the next one,
    // whichever workers the two are on.
    let mut clients = Vec::new();
    for i in 0..40 {
        let (mut raw, _) = Raw::handshake(addr, &format!("spread-{i}"), true).await;
        raw.subscribe(1, &[(&format!("spread/{i}"), 1)], &[1]).await;
        clients.push(raw);
    }
    for i in 0..40usize {
        let to = (i + 1) % 40;
        let publish = packets::publish(&format!("spread/{to}"), b"hop", 1, 1, false, false);
        clients[i].send(&publish).await;
        assert_eq!(clients[i].expect().await.byte1, 0x40, "PUBACK");
        let got = parse_publish(&clients[to].expect().await);
        assert_eq!(got.topic, format!("spread/{to}"));
        clients[to].send(&packets::ack(0x40, got.pid)).await;
    }
}

#[tokio::test]
async fn without_reuse_port_one_socket_listens() {
    let broker = broker_with(|c| {
        c.listener.workers = 2;
        c.listener.reuse_port = false;
    });
    assert_eq!(listening_sockets(broker.local_addr().port()), 1);
    let (mut raw, _) = Raw::handshake(broker.local_addr(), "single", true).await;
    raw.ping().await;
}

#[test]
fn a_second_broker_on_a_port_in_use_is_refused() {
    let first = broker_with(|c| {
        c.listener.workers = 2;
        c.listener.reuse_port = true;
    });
    let port = first.local_addr().port();
    for reuse_port in [true, false] {
        let mut config = test_config();
        config.listener.port = port;
        config.listener.workers = 2;
        config.listener.reuse_port = reuse_port;
        let second = switchboard::BackgroundBroker::start(config);
        let error = second.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains("cannot listen on"),
            "reuse_port = {reuse_port}: expected a bind error, got {error:?}"
        );
    }
    assert_eq!(
        listening_sockets(port),
        2,
        "the first broker keeps its port"
    );
}
