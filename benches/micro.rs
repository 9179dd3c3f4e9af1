//! Micro-benchmarks of the pure hot-path parts: the subscription trie with 100k subscriptions
//! (exact, `+` and `#` filters), the codec on PUBLISH at 16 B, 1 KB and 64 KB, and routing one
//! message to a shared group of 8 connected members, without and with an ACL (each member
//! asked whether it may read the topic), and to 4 such groups with the ACL.
//!
//! `cargo bench --bench micro` (add a filter, e.g. `-- trie`, to run a subset).

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use switchboard::codec::{write_publish, MqttCodec, PublishHeader};
use switchboard::topic::SubscriptionTrie;
use switchboard::QoS;
use tokio_util::codec::Decoder;

const SUBSCRIPTIONS: u32 = 100_000;

/// 100k filters of one kind: `kind(i)` is the filter of subscriber i.
fn trie_of(kind: fn(u32) -> String) -> SubscriptionTrie<u32, QoS> {
    let mut trie = SubscriptionTrie::new();
    for i in 0..SUBSCRIPTIONS {
        trie.insert(&kind(i), i, QoS::AtMostOnce);
    }
    trie
}

fn exact(i: u32) -> String {
    format!("site/{}/lane/{}/detrd", i % 100, i)
}

fn plus(i: u32) -> String {
    format!("site/{}/lane/+/detrd{}", i % 100, i)
}

fn hash(i: u32) -> String {
    format!("site/{}/lane/{}/#", i % 100, i)
}

fn trie(c: &mut Criterion) {
    let mut group = c.benchmark_group("trie");
    group
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    for (name, kind, topic) in [
        (
            "exact",
            exact as fn(u32) -> String,
            "site/42/lane/4242/detrd",
        ),
        ("plus", plus, "site/42/lane/anything/detrd4242"),
        ("hash", hash, "site/42/lane/4242/detrd/status/x"),
    ] {
        let trie = trie_of(kind);
        group.bench_function(format!("match_{name}_100k"), |b| {
            b.iter(|| {
                let mut n = 0u32;
                trie.for_each_match(black_box(topic), |_, _| n += 1);
                assert_eq!(n, 1);
                n
            })
        });
        // Steady state at 100k: add one subscription and take it away again.
        let mut trie = trie;
        let extra = kind(SUBSCRIPTIONS + 1);
        group.bench_function(format!("insert_remove_{name}_at_100k"), |b| {
            b.iter(|| {
                trie.insert(black_box(&extra), SUBSCRIPTIONS + 1, QoS::AtLeastOnce);
                trie.remove(black_box(&extra), SUBSCRIPTIONS + 1)
            })
        });
    }
    group.finish();
}

/// The header of every PUBLISH benchmarked: QoS 1, packet id 7.
fn header() -> PublishHeader {
    PublishHeader {
        qos: QoS::AtLeastOnce,
        retain: false,
        dup: false,
        pid: 7,
    }
}

fn publish_frame(payload: usize) -> BytesMut {
    let mut out = BytesMut::new();
    let header = header();
    write_publish(
        &mut out,
        "detrd/status/response/1AB.ENTER.DETRD",
        &vec![0xA5; payload],
        header,
    );
    out
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    for (name, size) in [("16B", 16), ("1KB", 1024), ("64KB", 64 * 1024)] {
        let frame = publish_frame(size);
        group.throughput(Throughput::Bytes(frame.len() as u64));
        let mut first = true;
        group.bench_function(format!("decode_publish_{name}"), |b| {
            b.iter_batched(
                || {
                    // A codec that has seen its CONNECT, and the frame to decode.
                    let mut codec = MqttCodec::new(1024 * 1024);
                    let mut connect =
                        BytesMut::from(&b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c"[..]);
                    if codec.decode(&mut connect).ok().flatten().is_none() && first {
                        first = false;
                        panic!("CONNECT did not decode");
                    }
                    (codec, frame.clone())
                },
                |(mut codec, mut buf)| codec.decode(&mut buf),
                BatchSize::SmallInput,
            )
        });
        let payload = vec![0xA5u8; size];
        group.bench_function(format!("encode_publish_{name}"), |b| {
            let mut out = BytesMut::with_capacity(size + 64);
            b.iter(|| {
                out.clear();
                let header = header();
                write_publish(
                    &mut out,
                    black_box("detrd/status/response/1AB.ENTER.DETRD"),
                    &payload,
                    header,
                );
                out.len()
            })
        });
    }
    group.finish();
}

/// A member's inbox that drops what it is sent: routing alone is measured.
struct Nowhere;

impl switchboard::routing::SessionInbox for Nowhere {
    fn deliver(&self, _: switchboard::routing::Deliver) {}
}

/// A route table with `groups` shared groups of the same 8 connected members (`$share/g0/jobs/#`,
/// ...), half of them users that may read only `jobs/public/#` when `acl` is set.
fn shared_table(acl: Option<&std::path::Path>, groups: u32) -> switchboard::routing::RouteTable {
    use switchboard::routing::{ClientKey, Reader, RouteTable, Target};
    let access = acl.map(|path| {
        let config = switchboard::config::AuthConfig {
            acl_file: Some(path.to_path_buf()),
            ..Default::default()
        };
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        Arc::new(switchboard::auth::AccessControl::load(&config, loopback).expect("the ACL"))
    });
    let mut table = RouteTable::new(switchboard::config::SharedStrategy::RoundRobin, access);
    let options = switchboard::message::SubscriptionOptions::qos(QoS::AtLeastOnce);
    for k in 0..8u32 {
        let key = ClientKey(k);
        table.set_target(key, Some(Target::Online(Arc::new(Nowhere))));
        let user = if k % 2 == 0 { "worker" } else { "intern" };
        table.set_reader(
            key,
            Some(Reader {
                username: Some(Arc::from(user)),
                client_id: Arc::from(format!("{user}-{k}").as_str()),
            }),
        );
        for g in 0..groups {
            table.subscribe(&format!("$share/g{g}/jobs/#"), key, options);
        }
    }
    table
}

fn shared(c: &mut Criterion) {
    let mut group = c.benchmark_group("shared");
    group
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "user worker\ntopic read jobs/#\nuser intern\ntopic read jobs/public/#\n",
    )
    .expect("write the ACL");
    let message = Arc::new(switchboard::message::Message::new(
        "jobs/secret/7",
        bytes::Bytes::from_static(b"job"),
        QoS::AtLeastOnce,
        false,
    ));
    for (name, table, groups) in [
        ("route_to_one_of_8_without_acl", shared_table(None, 1), 1),
        ("route_to_one_of_8_with_acl", shared_table(Some(&acl), 1), 1),
        (
            "route_to_4_groups_of_8_with_acl",
            shared_table(Some(&acl), 4),
            4,
        ),
    ] {
        let mut scratch = Vec::new();
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0u32;
                table.route(black_box(&message), None, &mut scratch, |_, _| n += 1);
                assert_eq!(n, groups);
                n
            })
        });
    }
    group.finish();
}

criterion_group!(benches, trie, codec, shared);
criterion_main!(benches);
