//! The lines that the two brokers' observations of a step are compared by, read with what the
//! [`Model`] says of each client's subscriptions; where the spec asks more than the lines
//! show, Switchboard's observations are checked against it here too.

use std::collections::BTreeMap;

use super::model::Model;
use super::runner::{Got, Observed};
use super::script::{is_member, MessageProps, Step};

/// The copies of one message that a client got in one step.
#[derive(Default)]
struct Copies {
    /// The highest QoS among them.
    qos: u8,
    /// Their RETAIN flags.
    retain: Vec<bool>,
    /// Their DUP flags: a message sent again to a resumed session has it [MQTT-4.4.0-1].
    dup: Vec<bool>,
    /// Their properties, as [`forwarded`] reads them.
    props: Vec<MessageProps>,
    /// Their Subscription Identifiers.
    identifiers: Vec<Vec<u32>>,
    count: usize,
}

/// A message's properties as a subscriber got them, read for comparing: the Message Expiry
/// Interval is what is left of it, at most what was published [MQTT-3.3.2-6] (an hour in the
/// scripts, and nothing waits a minute), so it is read as present or not.
fn forwarded(props: &MessageProps) -> MessageProps {
    if let Some(left) = props.expiry {
        assert!(
            (3540..=3600).contains(&left),
            "a Message Expiry Interval of 3600 s forwarded as {left} [MQTT-3.3.2-6]"
        );
    }
    MessageProps {
        expiry: props.expiry.map(|_| 3600),
        ..props.clone()
    }
}

/// The step that published a payload: `m{n}` is step `n`'s (an empty one, a retained message
/// cleared, could be anyone's).
fn published_by<'a>(payload: &[u8], steps: &'a [Step]) -> Option<&'a Step> {
    let n: usize = std::str::from_utf8(payload)
        .ok()?
        .strip_prefix('m')?
        .parse()
        .ok()?;
    steps
        .get(n)
        .filter(|step| matches!(step, Step::Publish { .. }))
}

/// The client whose will `payload` is (`w{n}`: the will of step `n`'s CONNECT).
fn will_of(payload: &[u8], steps: &[Step]) -> Option<usize> {
    let n: usize = std::str::from_utf8(payload)
        .ok()?
        .strip_prefix('w')?
        .parse()
        .ok()?;
    match steps.get(n)? {
        Step::Connect {
            client,
            will: Some(_),
            ..
        } => Some(*client),
        _ => None,
    }
}

/// How a step's observations are read: by the model after step `steps[n]`, for MQTT 5 with
/// `v5`, and with `switchboard` for Switchboard's (checked against the spec too).
#[derive(Clone, Copy)]
pub struct Reading<'a> {
    pub model: &'a Model,
    pub steps: &'a [Step],
    pub n: usize,
    pub v5: bool,
    pub switchboard: bool,
}

/// One broker's observation of step `steps[n]` as lines to compare. With `switchboard`, it
/// also checks what the spec requires where the lines leave something out. Left out:
/// - where a client's subscriptions overlap (for a message routed live or queued for it), the
///   QoS (and with MQTT 5 the RETAIN flag, which Retain As Published sets per subscription):
///   Switchboard sends one copy at the highest QoS they grant ([MQTT-3.3.5-1], in MQTT 5
///   [MQTT-3.3.4-2]), Mosquitto 2.0.11 one copy at the QoS of one of them, not always the
///   highest (with MQTT 5, a copy for each may come); and the message altogether where it
///   comes again to a resumed session, since whether it was in flight or queued depends on
///   that QoS (a will too: it is routed like a publish);
/// - a message to a client through a subscription whose No Local or Retain As Published was
///   changed by subscribing again (see `model.rs`), and the message again where it comes
///   again to a resumed session, with the RETAIN flag it was routed with, even once that
///   subscription is gone;
/// - how a taken-over MQTT 5 connection ends: Switchboard sends DISCONNECT 0x8E Session taken
///   over, Mosquitto 2.0.11 closes it without a word; and at a restart, DISCONNECT 0x8B
///   Server shutting down, where Mosquitto again says nothing;
/// - the PUBACK of a message that only its publisher's own subscriptions match, one of them
///   with No Local: where nobody gets it, Switchboard says 0x10 No matching subscribers and
///   Mosquitto 0x00 (a subscription matched).
pub fn normalise(observed: &Observed, reading: Reading) -> Vec<String> {
    let Reading {
        model,
        steps,
        n,
        v5,
        switchboard,
    } = reading;
    let mut lines = Vec::new();
    let own_no_local_alone = match &steps[n] {
        Step::Publish { client, topic, .. } => model
            .only_own_no_local(*client, topic)
            .then_some((*client, topic)),
        _ => None,
    };
    for line in &observed.acks {
        if let (Some((publisher, topic)), true) = (own_no_local_alone, line.contains(" PUBACK ")) {
            if switchboard {
                // 0x10 when nobody gets it.
                let nobody = model.matching(publisher, topic, Some(publisher)).is_empty();
                assert_eq!(line.ends_with("0x10"), nobody, "{line}");
            }
            lines.push("PUBACK: only the publisher's own No Local subscription matched".into());
            continue;
        }
        // A connection the broker ends, at a restart or a takeover ([MQTT-3.1.4-2]): an MQTT 5
        // client hears why from Switchboard, 0x8B Server shutting down or 0x8E Session taken
        // over [MQTT-3.1.4-3]; Mosquitto 2.0.11 closes it without a word.
        let ended = [(" shut down: ", "0x8b"), (" taken over: ", "0x8e")]
            .into_iter()
            .find_map(|(marker, reason)| Some((line.split_once(marker)?, marker, reason)));
        match ended {
            Some(((client, how), marker, reason)) => {
                if switchboard {
                    let expected = if v5 {
                        format!("DISCONNECT {reason}, closed")
                    } else {
                        "closed".to_string()
                    };
                    assert_eq!(how, expected, "{client}{marker}");
                }
                lines.push(format!("{client}{}", marker.trim_end_matches(": ")));
            }
            None => lines.push(line.clone()),
        }
    }
    for (client, got) in &observed.deliveries {
        if !is_member(*client) {
            deliveries(*client, got, reading, &mut lines);
        }
    }
    let members = observed
        .deliveries
        .iter()
        .filter(|(client, _)| is_member(*client))
        .flat_map(|(_, got)| got);
    shared_deliveries(members, reading, &mut lines);
    lines
}

/// A copy of a message that a member of shared subscriptions got: its QoS, RETAIN and DUP,
/// and its properties (as [`forwarded`] reads them) and Subscription Identifiers (none: a
/// member's SUBSCRIBE has none).
type MemberCopy = (u8, bool, bool, String);

/// [`normalise`] for the copies the members of shared subscriptions got, `got`, as lines onto
/// `lines`: which member got a copy is each broker's choice, so a line says only what copies
/// of a message the members got together (QoS, RETAIN, DUP), which must be one per shared
/// subscription matching it (MQTT 5 section 4.8.2), at the QoS it grants [MQTT-4.8.2-3].
/// Left out:
/// - what a member gets at its SUBSCRIBE. A shared subscription gets no retained messages
///   (section 4.8.2), and Switchboard sends none; Mosquitto 2.0.11 sends them (2.0.13
///   stopped);
/// - with MQTT 3.1.1, the copies of a message that several shared subscriptions match:
///   Switchboard sends one for each, as MQTT 5 has it, and Mosquitto one to each member
///   client it picks, however many of its subscriptions match (3.1.1 allows either: one copy
///   at the highest QoS, and it MAY send one for each further subscription [MQTT-3.3.5-1]).
fn shared_deliveries<'a>(
    got: impl Iterator<Item = &'a Got>,
    reading: Reading,
    lines: &mut Vec<String>,
) {
    let Reading {
        model,
        steps,
        n,
        v5,
        switchboard,
    } = reading;
    let mut by_message: BTreeMap<(&str, &[u8]), Vec<MemberCopy>> = BTreeMap::new();
    for got in got {
        let publish = &got.publish;
        let details = format!("{:?} {:?}", forwarded(&got.props), got.identifiers);
        by_message
            .entry((&publish.topic, &publish.payload))
            .or_default()
            .push((publish.qos, publish.retain, publish.dup, details));
    }
    if let Step::Subscribe { .. } = &steps[n] {
        if switchboard {
            assert!(
                by_message.is_empty(),
                "step {n}: a shared subscription gets no retained messages (section 4.8.2): \
                 {by_message:?}"
            );
        }
        return;
    }
    if let (
        true,
        Step::Publish {
            topic,
            qos,
            retain,
            payload,
            props,
            ..
        },
    ) = (switchboard, &steps[n])
    {
        let mut got = by_message
            .get(&(topic.as_str(), payload.as_bytes()))
            .cloned()
            .unwrap_or_default();
        got.sort_unstable();
        let mut expected: Vec<MemberCopy> = model
            .shared_matching(topic)
            .values()
            .map(|o| {
                let rap = v5 && o.retain_as_published;
                let details = format!("{props:?} {:?}", Vec::<u32>::new());
                ((*qos).min(o.qos), rap && *retain, false, details)
            })
            .collect();
        expected.sort_unstable();
        assert_eq!(
            got, expected,
            "the members' copies (QoS, RETAIN, DUP) of {topic} in step {n}: one per matching \
             shared subscription, at the QoS it grants [MQTT-4.8.2-3]"
        );
    }
    for ((topic, payload), mut copies) in by_message {
        copies.sort_unstable();
        if !v5 && model.shared_matching(topic).len() > 1 {
            lines.push(format!(
                "members got {topic} through several shared subscriptions"
            ));
            continue;
        }
        lines.push(format!(
            "members got {topic} {:?} {copies:?}",
            String::from_utf8_lossy(payload)
        ));
    }
}

/// [`normalise`] for one client's deliveries, `got`, as lines onto `lines`.
fn deliveries(client: usize, got: &[Got], reading: Reading, lines: &mut Vec<String>) {
    let Reading {
        model,
        steps,
        n,
        v5,
        switchboard,
    } = reading;
    if model.held_diverged[client] {
        // A connection whose Receive Maximum is full holds other messages with each broker,
        // as long as it lasts, once it resumed a session (Switchboard sends again as many of
        // its unacknowledged messages as the window allows [MQTT-3.3.4-9], checked in the
        // runner; Mosquitto 2.0.11 all of them) or got a message through overlapping
        // subscriptions (Switchboard sends one copy [MQTT-3.3.4-2], Mosquitto one for each
        // subscription, each taking its room) or through a subscription whose No Local the
        // brokers differ on (see `Model`).
        return;
    }
    let subscribing = matches!(steps[n], Step::Subscribe { .. });
    let live = matches!(steps[n], Step::Publish { .. });
    let mut by_message: BTreeMap<(&str, &[u8]), Copies> = BTreeMap::new();
    for got in got {
        let publish = &got.publish;
        let copies = by_message
            .entry((&publish.topic, &publish.payload))
            .or_default();
        copies.qos = copies.qos.max(publish.qos);
        copies.retain.push(publish.retain);
        copies.dup.push(publish.dup);
        copies.props.push(forwarded(&got.props));
        copies.identifiers.push(got.identifiers.clone());
        copies.count += 1;
    }
    for ((topic, payload), copies) in by_message {
        let Copies {
            qos,
            mut retain,
            mut dup,
            mut props,
            mut identifiers,
            count: copies,
        } = copies;
        retain.dedup();
        dup.dedup();
        props.dedup();
        identifiers.dedup();
        let publisher = published_by(payload, steps);
        let matching = model.matching(client, topic, publisher.and_then(Step::client));
        // Switchboard routes a message once per client [MQTT-3.3.5-1]. (A SUBSCRIBE of
        // several filters is handled as several SUBSCRIBEs [MQTT-3.8.4-4], so a retained
        // message may come once per filter; and a resumed session gets again every delivery
        // left unacknowledged, which may be two of one retained message.)
        assert!(
            !switchboard || !live || copies == 1,
            "c{client} got {copies} copies of {topic} {payload:?} in step {n} ({:?})",
            steps[n]
        );
        // A will comes in the step that ends its connection, routed then like a publish.
        let will_now = matches!(
            steps[n],
            Step::Disconnect { client: ended, .. } if will_of(payload, steps) == Some(ended)
        );
        let resent = !live && !subscribing && !will_now;
        if resent && model.overlapped.contains(&(client, payload.to_vec())) {
            // Sent again to a resumed session, or queued for it: Mosquitto's copy may have
            // been QoS 0, neither in flight nor queued.
            continue;
        }
        if resent && model.diverged_routed.contains(&(client, payload.to_vec())) {
            // Sent again, or queued, with the RETAIN flag each broker routed it with: by
            // Retain As Published as Mosquitto kept it from the first SUBSCRIBE of its filter
            // (see `Model`), checked for Switchboard where it was routed.
            continue;
        }
        if !subscribing && model.diverged_matches(client, topic) {
            // Checked where it is routed: a message sent again to a resumed session was routed
            // by the options of its time.
            if switchboard && live {
                assert!(
                    !matching.is_empty(),
                    "c{client} got its own {topic} through a No Local subscription \
                         [MQTT-3.8.3-3]"
                );
                if let (
                    [only],
                    Some(Step::Publish {
                        retain: published, ..
                    }),
                ) = (&matching[..], publisher)
                {
                    assert_eq!(
                        retain,
                        [only.retain_as_published && *published],
                        "c{client}: RETAIN of {topic} by Retain As Published \
                             [MQTT-3.3.1-12] [MQTT-3.3.1-13]"
                    );
                }
            }
            continue;
        }
        let publisher_id = publisher.and_then(Step::client);
        if let (true, true, Some(Step::Publish { props: sent, .. })) =
            (switchboard, live, publisher)
        {
            // Forwarded unaltered: [MQTT-3.3.2-4] (Payload Format Indicator), [MQTT-3.3.2-15]
            // (Response Topic), [MQTT-3.3.2-16] (Correlation Data), [MQTT-3.3.2-17] and
            // [MQTT-3.3.2-18] (User Properties, in order), [MQTT-3.3.2-20] (Content Type).
            assert_eq!(
                props,
                std::slice::from_ref(sent),
                "c{client}: the properties of {topic}"
            );
            // One copy carries the identifiers of every matching subscription that has one
            // [MQTT-3.3.4-3] [MQTT-3.3.4-4].
            let expected = model.matching_identifiers(client, topic, publisher_id);
            assert_eq!(
                identifiers,
                [expected],
                "c{client}: the Subscription Identifiers of {topic}"
            );
        }
        let (mut shown_qos, mut shown_retain) = (qos.to_string(), format!("{retain:?}"));
        let mut shown_identifiers = format!("{identifiers:?}");
        let mut shown_dup = format!("{dup:?}");
        if let Step::Connect { client: c, .. } = steps[n] {
            if c == client && model.resumed_diverged[client] {
                // Sent again after a full window (see `Model::held_diverged`): a message one
                // broker held in flight comes with DUP, one the other held queued without.
                shown_dup = "either".into();
            }
        }
        if !subscribing && matching.len() > 1 {
            shown_qos = "overlapping".into();
            if v5 {
                // Mosquitto may send a copy for each subscription, each with its identifier
                // (allowed too, [MQTT-3.3.4-5]).
                shown_retain = "overlapping".into();
                shown_identifiers = "overlapping".into();
            }
            if let (true, true, Some(Step::Publish { qos: sent, .. })) =
                (switchboard, live, publisher)
            {
                let highest = matching.iter().map(|o| o.qos).max().unwrap_or(0);
                // [MQTT-3.3.5-1] in 3.1.1, [MQTT-3.3.4-2] in 5.
                assert_eq!(
                    qos,
                    highest.min(*sent),
                    "c{client}: {topic} at the highest QoS of its matching subscriptions"
                );
            }
        }
        lines.push(format!(
            "c{client} got {topic} {:?} qos={shown_qos} retain={shown_retain} dup={shown_dup} \
             props={props:?} identifiers={shown_identifiers}",
            String::from_utf8_lossy(payload),
        ));
    }
}
