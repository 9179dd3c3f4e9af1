//! The admin API under `/api/v1` against a real broker over real TCP: clients (paged, searched,
//! one, disconnected with and without their session), subscriptions, retained messages,
//! publishing, the persistence writer's state, and the 4xx answers with JSON errors.

mod common;

use common::http::{get, request};
use common::v5::{self, Props};
use common::{broker_with_hooks, packets, Raw};
use switchboard::hooks::DisconnectReason;

#[tokio::test]
async fn clients_paged_searched_and_one_by_one() {
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let (addr, http) = (broker.local_addr(), broker.http_local_addr().expect("http"));
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    // An offline persistent session with two messages queued for it.
    Raw::leave_subscribed(addr, "gate-away", "gate/+/cmd").await;
    // A subscriber that does not acknowledge: three QoS 1 messages stay in flight.
    let (mut radar, _) = Raw::handshake(addr, "radar-1", true).await;
    radar.subscribe(1, &[("gate/#", 1)], &[1]).await;
    let mut gate = Raw::handshake5(addr, "gate-1AB").await;
    for pid in 1..=3 {
        gate.send(&v5::publish5(
            "gate/1/cmd",
            b"open",
            1,
            pid,
            false,
            &Props::new(),
        ))
        .await;
        assert_eq!(gate.expect().await.byte1, 0x40);
    }
    for _ in 0..3 {
        assert_eq!(radar.expect().await.packet_type(), 3);
    }
    hooks.connected("gate-1AB").await;

    let all = get(http, "/api/v1/clients", None).await;
    assert_eq!(all.status, 200, "{}", all.body);
    let all = all.json();
    assert_eq!(all["total"], 3);
    let ids: Vec<&str> = all["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| c["client_id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        ids,
        vec!["gate-1AB", "gate-away", "radar-1"],
        "sorted by id"
    );

    let page = get(http, "/api/v1/clients?offset=1&limit=1", None)
        .await
        .json();
    assert_eq!(page["total"], 3);
    assert_eq!(page["clients"][0]["client_id"], "gate-away");
    let searched = get(http, "/api/v1/clients?search=GATE", None).await.json();
    assert_eq!(searched["total"], 2, "case-insensitive substring");

    let radar_json = get(http, "/api/v1/clients/radar-1", None).await.json();
    assert_eq!(radar_json["connected"], true);
    assert_eq!(
        radar_json["address"],
        radar.stream.local_addr().expect("addr").to_string()
    );
    assert_eq!(radar_json["protocol"], "3.1.1");
    assert_eq!(radar_json["inflight"], 3);
    assert_eq!(radar_json["queued"], 0);
    assert_eq!(radar_json["subscriptions"][0]["filter"], "gate/#");
    assert_eq!(radar_json["subscriptions"][0]["qos"], 1);
    let since = radar_json["connected_since_ms"].as_u64().expect("since");
    assert!(since >= started_ms, "{since} >= {started_ms}");
    let gate_json = get(http, "/api/v1/clients/gate-1AB", None).await.json();
    assert_eq!(gate_json["protocol"], "5");
    let away_json = get(http, "/api/v1/clients/gate-away", None).await.json();
    assert_eq!(away_json["connected"], false);
    assert_eq!(away_json["address"], serde_json::Value::Null);
    assert_eq!(away_json["queued"], 3, "queued for the offline session");

    let missing = get(http, "/api/v1/clients/nobody", None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "no client \"nobody\"");
    for bad in ["limit=0", "limit=5000", "offset=-1", "colour=red"] {
        let response = get(http, &format!("/api/v1/clients?{bad}"), None).await;
        assert_eq!(response.status, 400, "{bad}");
        assert!(response.json()["error"].is_string(), "{bad}");
    }
    let words = get(http, "/api/v1/clients?limit=ten", None).await;
    assert_eq!(words.status, 400);
    let error = words.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.starts_with("bad query string (offset and limit take whole numbers"),
        "{error}"
    );
}

#[tokio::test]
async fn delete_disconnects_and_removes_the_session_when_asked() {
    let (broker, mut hooks) = broker_with_hooks(|_| {});
    let (addr, http) = (broker.local_addr(), broker.http_local_addr().expect("http"));
    // MQTT 5, with a session that outlives the connection.
    let connect = v5::connect5("radar-5", false, 60, &Props::new().u32(0x11, 3600), None);
    let (mut radar, _) = Raw::connect5(addr, &connect).await;
    radar
        .subscribe5(1, &Props::new(), &[("detrd/status/request/+", 1)])
        .await;
    let kicked = request(http, "DELETE", "/api/v1/clients/radar-5", None, None).await;
    assert_eq!(kicked.status, 200, "{}", kicked.body);
    let body = kicked.json();
    assert_eq!(
        (
            body["disconnected"].as_bool(),
            body["session_removed"].as_bool()
        ),
        (Some(true), Some(false))
    );
    // [MQTT-3.14.2-1] the Server says why: 0x98 Administrative action; then it closes.
    let disconnect = radar.expect().await;
    assert_eq!(v5::disconnect_reason(&disconnect), 0x98);
    radar.expect_closed().await;
    let event = hooks.disconnected("radar-5").await;
    assert_eq!(event.reason, DisconnectReason::Kicked);
    let kept = get(http, "/api/v1/clients/radar-5", None).await.json();
    assert_eq!(kept["connected"], false);
    assert_eq!(kept["subscriptions"][0]["filter"], "detrd/status/request/+");

    // Offline: `?session=true` removes the session.
    let removed = request(
        http,
        "DELETE",
        "/api/v1/clients/radar-5?session=true",
        None,
        None,
    )
    .await
    .json();
    assert_eq!(removed["session_removed"], true);
    assert_eq!(get(http, "/api/v1/clients/radar-5", None).await.status, 404);

    // Connected, with `?session=true`: disconnected, and the session goes with the connection.
    let (mut gate, _) = Raw::handshake(addr, "gate-3", false).await;
    gate.subscribe(1, &[("gate/3/cmd", 1)], &[1]).await;
    let both = request(
        http,
        "DELETE",
        "/api/v1/clients/gate-3?session=true",
        None,
        None,
    )
    .await
    .json();
    assert_eq!(both["disconnected"], true);
    gate.expect_closed().await; // 3.1.1: no DISCONNECT from the server
    hooks.disconnected("gate-3").await;
    common::eventually(|| async { get(http, "/api/v1/clients/gate-3", None).await.status == 404 })
        .await;
    let (_, present) = Raw::handshake(addr, "gate-3", false).await;
    assert!(!present, "no session left [MQTT-3.2.2-3]");

    let bad = request(
        http,
        "DELETE",
        "/api/v1/clients/x?session=maybe",
        None,
        None,
    )
    .await;
    assert_eq!(bad.status, 400);
    let unknown = request(http, "DELETE", "/api/v1/clients/nobody", None, None).await;
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn subscriptions_show_their_mqtt5_options() {
    let (broker, _hooks) = broker_with_hooks(|_| {});
    let (addr, http) = (broker.local_addr(), broker.http_local_addr().expect("http"));
    let mut radar = Raw::handshake5(addr, "radar-5").await;
    let props = Props::new().var(v5::prop::SUBSCRIPTION_ID, 42);
    radar
        .subscribe5(
            1,
            &props,
            &[("detrd/status/request/+", v5::options(2, true, true, 2))],
        )
        .await;
    let (mut gate, _) = Raw::handshake(addr, "gate-3", true).await;
    gate.subscribe(1, &[("gate/3/cmd", 1)], &[1]).await;
    let want_radar = serde_json::json!({
        "filter": "detrd/status/request/+", "qos": 2, "no_local": true,
        "retain_as_published": true, "retain_handling": 2, "subscription_id": 42,
    });
    // An MQTT 3.1.1 subscription has the defaults.
    let want_gate = serde_json::json!({
        "filter": "gate/3/cmd", "qos": 1, "no_local": false,
        "retain_as_published": false, "retain_handling": 0, "subscription_id": null,
    });
    let radar_json = get(http, "/api/v1/clients/radar-5", None).await.json();
    assert_eq!(radar_json["subscriptions"], serde_json::json!([want_radar]));
    let gate_json = get(http, "/api/v1/clients/gate-3", None).await.json();
    assert_eq!(gate_json["subscriptions"], serde_json::json!([want_gate]));
    let listed = get(http, "/api/v1/subscriptions", None).await.json();
    let mut radar_listed = want_radar.clone();
    radar_listed["client_id"] = "radar-5".into();
    radar_listed["connected"] = true.into();
    assert!(
        listed["subscriptions"]
            .as_array()
            .expect("a list")
            .contains(&radar_listed),
        "{listed}"
    );
}

/// `(client_id, filter)` of each subscription on a page of `/api/v1/subscriptions`.
fn subscription_rows(page: &serde_json::Value) -> Vec<(String, String)> {
    page["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .map(|s| {
            let text = |field: &str| s[field].as_str().expect(field).to_string();
            (text("client_id"), text("filter"))
        })
        .collect()
}

#[tokio::test]
async fn pages_of_subscriptions_split_a_client_and_searches_count_every_match() {
    // Pages come from the Registry's index in client id order, each client's filters sorted
    // (a page may end inside a client's); a search counts every match, in the client id or in
    // the filter, case-insensitively.
    let (broker, _hooks) = broker_with_hooks(|c| {
        c.sys.interval = std::time::Duration::ZERO;
    });
    let (addr, http) = (broker.local_addr(), broker.http_local_addr().expect("http"));
    let mut kept = Vec::new();
    for (id, filters) in [
        ("b-dev", vec![("z/1", 1), ("m/1", 0), ("b/1", 1)]),
        ("c-Gate", vec![("c2", 0), ("c1", 1)]),
        ("a-app", vec![("x", 1), ("$share/g/s", 1)]),
    ] {
        let (mut client, _) = Raw::handshake(addr, id, true).await;
        let granted: Vec<u8> = filters.iter().map(|(_, qos)| *qos).collect();
        client.subscribe(1, &filters, &granted).await;
        kept.push(client);
    }
    let want: Vec<(String, String)> = [
        ("a-app", "$share/g/s"),
        ("a-app", "x"),
        ("b-dev", "b/1"),
        ("b-dev", "m/1"),
        ("b-dev", "z/1"),
        ("c-Gate", "c1"),
        ("c-Gate", "c2"),
    ]
    .iter()
    .map(|(c, f)| (c.to_string(), f.to_string()))
    .collect();
    let mut paged = Vec::new();
    for offset in (0..8).step_by(2) {
        let page = get(
            http,
            &format!("/api/v1/subscriptions?offset={offset}&limit=2"),
            None,
        )
        .await
        .json();
        assert_eq!(page["total"], 7, "at offset {offset}");
        paged.extend(subscription_rows(&page));
    }
    assert_eq!(
        paged, want,
        "the pages, one after another, are the whole list"
    );
    let gate = get(http, "/api/v1/subscriptions?search=gate", None)
        .await
        .json();
    assert_eq!(subscription_rows(&gate), want[5..].to_vec(), "by client id");
    let second = get(
        http,
        "/api/v1/subscriptions?search=/1&offset=1&limit=1",
        None,
    )
    .await
    .json();
    assert_eq!(second["total"], 3, "by filter");
    assert_eq!(subscription_rows(&second), want[3..4].to_vec());
    let clients = get(http, "/api/v1/clients?search=-&offset=1&limit=1", None)
        .await
        .json();
    assert_eq!(clients["total"], 3);
    assert_eq!(clients["clients"][0]["client_id"], "b-dev");
    drop(kept);
}

#[tokio::test]
async fn subscriptions_retained_and_publish() {
    let (broker, mut hooks) = broker_with_hooks(|c| {
        c.sys.interval = std::time::Duration::ZERO;
    });
    let (addr, http) = (broker.local_addr(), broker.http_local_addr().expect("http"));
    let (mut app, _) = Raw::handshake(addr, "app", true).await;
    app.subscribe(1, &[("detrd/status/response/+", 1), ("gate/#", 0)], &[1, 0])
        .await;
    let (mut radar, _) = Raw::handshake(addr, "radar", true).await;
    radar
        .subscribe(1, &[("detrd/status/request/radar", 1)], &[1])
        .await;
    let subs = get(http, "/api/v1/subscriptions", None).await.json();
    assert_eq!(subs["total"], 3);
    assert_eq!(subs["subscriptions"][0]["client_id"], "app");
    assert_eq!(
        subs["subscriptions"][0]["filter"],
        "detrd/status/response/+"
    );
    assert_eq!(subs["subscriptions"][0]["qos"], 1);
    let searched = get(http, "/api/v1/subscriptions?search=request", None)
        .await
        .json();
    assert_eq!(searched["total"], 1);
    assert_eq!(searched["subscriptions"][0]["client_id"], "radar");

    // POST /publish reaches a subscriber, as the broker's own message.
    let published = request(
        http,
        "POST",
        "/api/v1/publish",
        None,
        Some(r#"{"topic": "detrd/status/request/radar", "payload": "status?", "qos": 1}"#),
    )
    .await;
    assert_eq!(published.status, 200, "{}", published.body);
    assert_eq!(published.json()["deliveries"], 1);
    let frame = radar.expect().await;
    let got = packets::parse_publish(&frame);
    assert_eq!(
        (got.topic.as_str(), got.payload.as_slice(), got.qos),
        ("detrd/status/request/radar", &b"status?"[..], 1)
    );
    radar.send(&packets::ack(0x40, got.pid)).await;
    // Retained, with a binary payload.
    for (topic, payload) in [("gate/1/state", "Y2xvc2Vk"), ("gate/2/state", "AP8=")] {
        let body =
            format!(r#"{{"topic": "{topic}", "payload_base64": "{payload}", "retain": true}}"#);
        let response = request(http, "POST", "/api/v1/publish", None, Some(&body)).await;
        assert_eq!(response.status, 200, "{}", response.body);
    }
    assert_eq!(
        app.sync().await.len(),
        2,
        "the retained publishes went out live too"
    );
    hooks
        .subscribed("radar", "detrd/status/request/radar")
        .await;
    let retained = get(http, "/api/v1/retained?filter=gate/%2B/state", None)
        .await
        .json();
    assert_eq!(retained["total"], 2);
    assert_eq!(retained["messages"][0]["topic"], "gate/1/state");
    assert_eq!(retained["messages"][0]["payload"], "closed");
    assert_eq!(
        retained["messages"][1]["payload"],
        serde_json::Value::Null,
        "not UTF-8"
    );
    assert_eq!(retained["messages"][1]["payload_base64"], "AP8=");
    let none = get(http, "/api/v1/retained?filter=radar/%23", None)
        .await
        .json();
    assert_eq!(none["total"], 0);

    // What is wrong, said in JSON.
    let bad_filter = get(http, "/api/v1/retained?filter=gate/%23/x", None).await;
    assert_eq!(bad_filter.status, 400);
    assert!(bad_filter.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("not a valid topic filter")));
    for (body, says) in [
        ("not json", "the body must be JSON"),
        (r#"{"payload": "x"}"#, "missing field `topic`"),
        (r#"{"topic": "gate/+/cmd", "payload": "x"}"#, "wildcard"),
        (
            r#"{"topic": "gate/1/cmd", "qos": 3}"#,
            "qos must be 0, 1 or 2",
        ),
        (r#"{"topic": "$SYS/broker/uptime"}"#, "$SYS"),
        (
            r#"{"topic": "gate/1/cmd", "payload_base64": "***"}"#,
            "not base64",
        ),
        (
            r#"{"topic": "gate/1/cmd", "colour": "red"}"#,
            "unknown field",
        ),
    ] {
        let response = request(http, "POST", "/api/v1/publish", None, Some(body)).await;
        assert_eq!(response.status, 400, "{body}");
        assert_eq!(response.headers["content-type"], "application/json");
        let error = response.json()["error"].as_str().map(str::to_string);
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.to_lowercase().contains(&says.to_lowercase())),
            "{body}: {error:?}"
        );
    }
    // A body over the limit: 413, in JSON like every other error.
    let huge = format!(
        r#"{{"topic": "gate/1/cmd", "payload": "{}"}}"#,
        "x".repeat(1_600_000)
    );
    let response = request(http, "POST", "/api/v1/publish", None, Some(&huge)).await;
    assert_eq!(response.status, 413);
    assert!(response.json()["error"]
        .as_str()
        .is_some_and(|e| e.contains("over")));
}

#[tokio::test]
async fn the_token_guards_every_api_route() {
    let (broker, _hooks) = broker_with_hooks(|c| c.http.token = Some("t0ken".into()));
    let http = broker.http_local_addr().expect("http");
    for (method, path) in [
        ("GET", "/api/v1/clients"),
        ("GET", "/api/v1/clients/x"),
        ("DELETE", "/api/v1/clients/x"),
        ("GET", "/api/v1/subscriptions"),
        ("GET", "/api/v1/retained"),
        ("POST", "/api/v1/publish"),
        ("GET", "/api/v1/persistence"),
    ] {
        let response = request(http, method, path, None, None).await;
        assert_eq!(response.status, 401, "{method} {path}");
        assert!(response.json()["error"].is_string());
        let wrong = request(http, method, path, Some("t0keN"), None).await;
        assert_eq!(wrong.status, 401, "{method} {path}");
    }
    assert_eq!(
        get(http, "/api/v1/clients", Some("t0ken")).await.status,
        200
    );
}

#[tokio::test]
async fn persistence_says_what_the_writer_does() {
    let in_memory = common::broker();
    let http = in_memory.http_local_addr().expect("http");
    let off = get(http, "/api/v1/persistence", None).await;
    assert_eq!(off.status, 200);
    assert_eq!(off.json(), serde_json::json!({ "enabled": false }));

    let dir = tempfile::tempdir().expect("tempdir");
    let broker = common::broker_with(|c| {
        c.persistence.dir = Some(dir.path().join("state"));
        c.persistence.fsync = switchboard::config::FsyncPolicy::Always;
    });
    let http = broker.http_local_addr().expect("http");
    let (mut gate, _) = Raw::handshake(broker.local_addr(), "gate-1AB", true).await;
    // A retained QoS 1 message is acknowledged once its record is synced (`always`).
    gate.publish_acked("gate/1AB/state", b"closed", 1, true)
        .await;
    let record = "gate/1AB/state".len() + "closed".len();
    // The writer sets the log's size after it reports the commit: the PUBACK may come first.
    common::eventually(|| async move {
        let on = get(http, "/api/v1/persistence", None).await;
        on.json()["log_bytes"].as_u64() >= Some(record as u64)
    })
    .await;
    let on = get(http, "/api/v1/persistence", None).await;
    assert_eq!(on.status, 200, "{}", on.body);
    let status = on.json();
    assert_eq!(status["enabled"], true, "{status}");
    assert_eq!(status["fsync"], "always", "{status}");
    assert!(status["commits_total"].as_u64() >= Some(1), "{status}");
    assert!(status["syncs_total"].as_u64() >= Some(1), "{status}");
    assert!(
        status["log_bytes"].as_u64() >= Some(record as u64),
        "{status}"
    );
    for counter in ["write_failures_total", "sync_failures_total"] {
        assert_eq!(status[counter], 0, "{counter}: {status}");
    }
    for healthy in ["writes_failing", "syncs_failing", "durability_lost"] {
        assert_eq!(status[healthy], false, "{healthy}: {status}");
    }
}
