//! ACL files: a device confined to its own request/response topics; denied publishes dropped (and
//! still acknowledged), denied subscriptions refused with 0x80.

mod common;

use common::packets::{self, parse_publish, ConnectSpec};
use common::{broker_with, Raw};

const ACL: &str = "
user app
topic readwrite detrd/#
pattern read detrd/status/request/%c
pattern write detrd/status/response/%c
";

async fn login(addr: std::net::SocketAddr, id: &str, user: &str) -> Raw {
    let spec = ConnectSpec {
        client_id: id,
        username: Some(user),
        ..Default::default()
    };
    let (raw, code) = Raw::connect_with(addr, spec).await;
    assert_eq!(code, 0);
    raw
}

#[tokio::test]
async fn a_device_is_confined_to_its_own_request_and_response_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL).expect("write");
    let broker = broker_with(|c| c.auth.acl_file = Some(acl));
    let addr = broker.local_addr();
    let mut app = login(addr, "detrd-app", "app").await;
    app.subscribe(1, &[("detrd/status/response/+", 1)], &[1])
        .await;

    let id = "1AB.ENTER.DETRD";
    let mut radar = login(addr, id, id).await;
    radar
        .subscribe(
            1,
            &[
                ("detrd/status/request/1AB.ENTER.DETRD", 1),
                ("detrd/status/request/2CD.EXIT.DETRD", 1),
                ("detrd/status/request/+", 1),
                ("#", 0),
            ],
            &[1, 0x80, 0x80, 0x80],
        )
        .await;
    // Its own response goes through; a forged one for another device is acknowledged and dropped.
    radar
        .send(&packets::publish(
            "detrd/status/response/1AB.ENTER.DETRD",
            b"mine",
            1,
            1,
            false,
            false,
        ))
        .await;
    assert_eq!(radar.expect().await.byte1, 0x40);
    radar
        .send(&packets::publish(
            "detrd/status/response/2CD.EXIT.DETRD",
            b"forged",
            1,
            2,
            false,
            false,
        ))
        .await;
    assert_eq!(
        radar.expect().await.byte1,
        0x40,
        "a denied publish is still acknowledged"
    );
    radar.sync().await;
    let got: Vec<_> = app.sync().await.iter().map(parse_publish).collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"mine".to_vec());
    // The app's request reaches the device.
    app.send(&packets::publish(
        "detrd/status/request/1AB.ENTER.DETRD",
        b"status?",
        1,
        1,
        false,
        false,
    ))
    .await;
    app.expect().await;
    app.sync().await;
    let requests: Vec<_> = radar.sync().await.iter().map(parse_publish).collect();
    assert_eq!(requests.len(), 1);
    assert_eq!(broker.metrics().snapshot().acl_denied, 4);
}

#[tokio::test]
async fn clients_without_rules_get_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user app\ntopic readwrite detrd/#\n").expect("write");
    let broker = broker_with(|c| c.auth.acl_file = Some(acl));
    let (mut anonymous, _) = Raw::handshake(broker.local_addr(), "anon", true).await;
    anonymous.subscribe(1, &[("detrd/#", 0)], &[0x80]).await;
}
