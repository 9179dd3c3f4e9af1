//! How a Session answers each packet from its client (CONNECT in `connecting.rs`).

use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::join_all;
use tracing::{debug, info, warn};

use super::peer::write_ack_coded;
use super::refusal_lines::{Refusal, RefusedFilters};
use super::{AckResult, Phase, Session};
use crate::auth::{AclFile, SubscribeAccess};
use crate::codec::{self, Ack, OversizedPublish, Packet, Publish as PublishPacket};
use crate::hooks::{
    AuthorizePublish, AuthorizeSubscribe, DisconnectReason, PublishDecision, SubscribeDecision,
};
use crate::message::{Message, QoS, SubscriptionOptions};
use crate::registry;
use crate::topic::{parse_shared, validate_filter, validate_topic_name};

/// MQTT 5 reason codes the Session sends (section 2.4).
pub(super) mod reason {
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const UNSPECIFIED: u8 = 0x80;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
}

/// What a SUBSCRIBE filter becomes: granted with options, or refused with a reason code.
type SubscribeRequest = Result<(String, SubscriptionOptions), u8>;

impl Session {
    pub(super) fn on_packet(&mut self, packet: Packet, ctx: &mut Context<Self>) {
        let key = match (&self.phase, packet) {
            (Phase::AwaitingConnect, Packet::Connect(connect)) => {
                return self.on_connect(*connect, ctx)
            }
            (Phase::AwaitingConnect, other) => {
                return self.violation(
                    ctx,
                    other.name(),
                    "first packet must be CONNECT [MQTT-3.1.0-1]",
                )
            }
            (Phase::Connecting, other) => {
                // The stream is paused while connecting, so this cannot happen; refuse anyway.
                return self.violation(ctx, other.name(), "packet before CONNACK");
            }
            (Phase::Connected { .. }, Packet::Connect(_)) => {
                return self.violation(ctx, "CONNECT", "second CONNECT [MQTT-3.1.0-2]")
            }
            (Phase::Connected { key, .. }, packet) => (*key, packet),
        };
        let (key, packet) = key;
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, ctx),
            Packet::OversizedPublish(head) => self.publish_too_large(head, ctx),
            Packet::PubAck(pid) => {
                let (result, kept) = self.outbound.puback_kept(pid);
                if let Some(id) = kept {
                    self.settle_delivery(id);
                }
                self.on_ack(pid, result, "PUBACK")
            }
            Packet::PubRec(pid, code) if code >= 0x80 => {
                // (5.0) an error PUBREC ends the QoS 2 flow: no PUBREL (section 4.3.3).
                if self.outbound.discard(pid) {
                    self.pump();
                }
            }
            Packet::PubRec(pid, _) => match self.outbound.pubrec(pid) {
                AckResult::SendPubRel => self.release_outbound(pid, ctx),
                // An id not in flight (the client's session state and this one disagree):
                // PUBREL all the same, so that the client can finish; (5.0) with 0x92 Packet
                // Identifier not found (section 3.6.2.1) unless it is a resumed session's
                // recovery.
                AckResult::Unknown => self.answer_unknown_id(Ack::PubRel, pid),
                result => self.on_ack(pid, result, "PUBREC"),
            },
            Packet::PubComp(pid) => {
                let result = self.outbound.pubcomp(pid);
                self.on_ack(pid, result, "PUBCOMP")
            }
            Packet::PubRel(pid) => {
                // [MQTT-4.3.3-2] discard the stored id, answer PUBCOMP (also for unknown ids;
                // (5.0) with 0x92 Packet Identifier not found, but in a resumed session's
                // recovery).
                if self.inbound_qos2.remove(pid) {
                    self.complete_inbound(pid, ctx);
                } else {
                    self.answer_unknown_id(Ack::PubComp, pid);
                }
            }
            Packet::Subscribe { pid, filters } => self.on_subscribe(key, pid, filters, ctx),
            Packet::Unsubscribe { pid, filters } => self.on_unsubscribe(key, pid, filters, ctx),
            Packet::PingReq => codec::write_pingresp(&mut self.out), // [MQTT-3.12.4-1]
            Packet::Disconnect {
                reason,
                session_expiry,
            } => self.on_disconnect(reason, session_expiry, ctx),
            Packet::Connect(_) => {}
        }
    }

    /// DISCONNECT from the client `[MQTT-3.14.4-3]`; (5.0) reason 0x00 drops the will
    /// `[MQTT-3.1.2-10]`, any other code publishes it, and a new Session Expiry Interval may
    /// replace the CONNECT's, but not raise it from 0 (section 3.14.2.2.2).
    fn on_disconnect(&mut self, code: u8, session_expiry: Option<u32>, ctx: &mut Context<Self>) {
        if let Some(expiry) = session_expiry {
            if self.peer_options.session_expiry == 0 && expiry != 0 {
                return self.violation(
                    ctx,
                    "DISCONNECT",
                    "Session Expiry Interval set above 0 after a CONNECT with 0 (section 3.14.2.2.2)",
                );
            }
            self.disconnect_expiry = Some(expiry);
        }
        let reason = match code {
            0 => DisconnectReason::Clean,
            other => DisconnectReason::ClientReason(other),
        };
        self.close(ctx, reason);
    }

    /// Answers a PUBREC or PUBREL for a packet id this side does not hold with the next step of
    /// the flow (`ack`), so that the client can finish its own: (5.0) with 0x92 Packet
    /// Identifier not found and, if the client wants problem information, its reason string.
    ///
    /// On a resumed session it is the client's recovery (MQTT 5 section 3.7.2.1: "not an error
    /// during recovery"): an acknowledgement repeated because the answer to the first was lost
    /// with the connection, or with a broker killed after it recorded the step. The answer is
    /// then a plain success, as Mosquitto gives: clients such as MQTT.js fail the publish on
    /// 0x92, although the message went through exactly once.
    fn answer_unknown_id(&mut self, ack: Ack, pid: u16) {
        let code = match self.peer_options.protocol.is_v5() && self.fresh_session {
            true => reason::PACKET_ID_NOT_FOUND,
            false => 0,
        };
        write_ack_coded(&mut self.out, &self.peer_options, ack, pid, code);
    }

    fn violation(&mut self, ctx: &mut Context<Self>, packet: &str, rule: &'static str) {
        self.shared.metrics.add_protocol_errors(1);
        warn!(addr = %self.peer, client_id = %self.client_id(), packet, rule, "closing connection: protocol violation");
        self.close(ctx, DisconnectReason::ProtocolError(rule.to_string()));
    }

    /// Whether a topic name or filter is within `limits.max_topic_length` and
    /// `limits.max_topic_levels`.
    pub(super) fn topic_within_limits(&self, topic: &str) -> bool {
        self.shared.config.limits.topic_within(topic)
    }

    /// Closes this one connection for going over a configured limit, logged and counted; (5.0)
    /// its DISCONNECT carries reason `code`.
    fn limit_hit_with(&mut self, ctx: &mut Context<Self>, what: &'static str, code: u8) {
        self.disconnect_code = Some(Box::new((code, what.to_string())));
        self.shared.metrics.add_limits_hit(1);
        warn!(addr = %self.peer, client_id = %self.client_id(), limit = what, "closing connection: limit hit");
        self.close(
            ctx,
            DisconnectReason::ProtocolError(format!("limit: {what}")),
        );
    }

    /// A PUBLISH whose topic is over `limits.max_topic_length` or `limits.max_topic_levels`;
    /// counted in `limits_hit`. At QoS 1 or 2 it is refused and the connection stays: a
    /// closed connection would make a client that queues reconnect and send it again, forever,
    /// with what it queued behind it waiting. (5.0) The refusal is PUBACK/PUBREC 0x90 Topic
    /// Name Invalid ("not accepted by this Server"). 3.1.1 has no negative acknowledgement: the
    /// message is acknowledged and dropped, as a publish the ACL denies, and logged as a
    /// warning, since the client cannot tell. At QoS 0 there is no acknowledgement to carry the
    /// refusal and no client sends it again: the connection is closed, (5.0) DISCONNECT 0x90.
    fn topic_over_limits(&mut self, qos: QoS, pid: u16, topic: &str, ctx: &mut Context<Self>) {
        const WHAT: &str = "PUBLISH topic over the topic length or level limit";
        if qos == QoS::AtMostOnce {
            return self.limit_hit_with(ctx, WHAT, reason::TOPIC_NAME_INVALID);
        }
        self.shared.metrics.add_limits_hit(1);
        let (levels, bytes) = (topic.split('/').count(), topic.len());
        if self.peer_options.protocol.is_v5() {
            if let Some(refused) = self.refusal_line(Refusal::Topic, 1) {
                info!(client_id = %self.client_id(), levels, bytes, refused, "publish refused with 0x90: {WHAT}");
            }
        } else if let Some(dropped) = self.refusal_line(Refusal::Dropped, 1) {
            warn!(client_id = %self.client_id(), levels, bytes, dropped, "publish acknowledged and dropped (MQTT 3.1.1 has no refusal): {WHAT}");
        }
        self.refuse_publish(qos, pid, reason::TOPIC_NAME_INVALID, ctx);
    }

    /// Counts `n` refusals of `kind`: whether a line about them may go out now (at most once a
    /// second for each kind over all Sessions), and if so how many it reports.
    fn refusal_line(&self, kind: Refusal, n: u64) -> Option<u64> {
        self.shared.refusal_lines.count(kind, n)
    }

    /// (3.1.1) A QoS 1 or 2 PUBLISH over `limits.max_packet_size`, its head read and the rest
    /// skipped by the codec: acknowledged and dropped, as a publish the ACL denies, counted in
    /// `limits_hit` and warned of (at most once a second). Closing the connection would have
    /// a client that queues reconnect and send it again, forever.
    fn publish_too_large(&mut self, head: OversizedPublish, ctx: &mut Context<Self>) {
        self.shared.metrics.add_limits_hit(1);
        if let Some(dropped) = self.refusal_line(Refusal::Dropped, 1) {
            let max = self.shared.config.limits.max_packet_size;
            // Its first 200 characters: a topic may be 65,535 bytes long.
            let topic: String = head.topic.chars().take(200).collect();
            warn!(client_id = %self.client_id(), topic, size = head.size, max, dropped, "publish acknowledged and dropped (MQTT 3.1.1 has no refusal): larger than limits.max_packet_size");
        }
        self.refuse_publish(head.qos, head.pid, 0, ctx);
    }

    fn on_ack(&mut self, pid: u16, result: AckResult, name: &str) {
        match result {
            // The time the acknowledgement was read (one clock reading per read, shared by a
            // burst's packets), not a reading of its own per acknowledgement.
            AckResult::Completed => self.pump_at(self.last_received.instant()),
            AckResult::SendPubRel => codec::write_ack(&mut self.out, Ack::PubRel, pid),
            AckResult::Unknown => {
                debug!(client_id = %self.client_id(), pid, packet = name, "acknowledgement for an unknown packet id")
            }
        }
    }

    fn on_publish(&mut self, publish: PublishPacket, ctx: &mut Context<Self>) {
        let PublishPacket {
            pid,
            mut message,
            payload_invalid,
            ..
        } = publish;
        message.received_at = Some(self.last_received.instant());
        let qos = message.qos;
        if !self.topic_within_limits(&message.topic) {
            return self.topic_over_limits(qos, pid, &message.topic, ctx);
        }
        if qos == QoS::ExactlyOnce
            && self.inbound_qos2.count() >= self.shared.config.limits.max_inbound_qos2
            && !self.inbound_qos2.contains(pid)
        {
            // (5.0) more than the Receive Maximum announced unacknowledged [MQTT-3.3.4-7]: 0x93.
            return self.limit_hit_with(
                ctx,
                "too many QoS 2 messages awaiting PUBREL",
                reason::RECEIVE_MAXIMUM_EXCEEDED,
            );
        }
        if payload_invalid {
            // (5.0) Payload Format Indicator 1 with a payload that is not UTF-8 (section 3.3.2.3.2).
            if let Some(refused) = self.refusal_line(Refusal::Payload, 1) {
                info!(client_id = %self.client_id(), topic = %message.topic, refused, "publish refused: payload is not the UTF-8 its format indicator claims");
            }
            return self.refuse_publish(qos, pid, reason::PAYLOAD_FORMAT_INVALID, ctx);
        }
        self.refresh_acl();
        if self.publish_denied(&message.topic) {
            // Dropped. 3.1.1 has no negative PUBACK: acknowledged as usual, and a QoS 2 id is
            // remembered so that PUBREL completes the handshake. 5.0: 0x87 Not authorized.
            self.shared.metrics.add_acl_denied(1);
            if let Some(refused) = self.refusal_line(Refusal::Denied, 1) {
                info!(client_id = %self.client_id(), topic = %message.topic, refused, "publish denied: the ACL forbids it, or the topic is the broker's own ($SYS)");
            }
            return self.refuse_publish(qos, pid, reason::NOT_AUTHORIZED, ctx);
        }
        if qos == QoS::ExactlyOnce && !self.inbound_qos2.insert(pid) {
            // A re-sent QoS 2 PUBLISH whose PUBREL has not come: not routed again [MQTT-4.3.3-2].
            // Its PUBREC goes in order, after the first one's (which may wait for the disk).
            return self.acknowledge_unrouted(qos, pid, ctx);
        }
        if qos == QoS::ExactlyOnce {
            self.note_inbound_qos2(pid);
        }
        let Some(interceptor) = self.shared.interceptors.publish.clone() else {
            self.acknowledge_routed(qos, pid);
            return self.forward(Arc::new(message), ctx);
        };
        let question = AuthorizePublish {
            client_id: Arc::from(self.client_id()),
            topic: message.topic.clone(),
            payload: message.payload.clone(),
            qos,
            retain: message.retain,
            properties: message.properties.as_deref().cloned(),
        };
        ctx.wait(interceptor.send(question).into_actor(self).map(
            move |answer, act, ctx| {
                let message = match answer {
                    Ok(PublishDecision::Accept) => Some(message),
                    Ok(PublishDecision::Rewrite { topic, payload }) => match act.judge_rewritten_topic(&topic) {
                        Ok(()) => {
                            // The rewritten message keeps the original's MQTT 5 properties.
                            let mut rewritten = Message::new(topic, payload, message.qos, message.retain);
                            rewritten.properties = message.properties;
                            rewritten.expires_at = message.expires_at;
                            Some(rewritten)
                        }
                        Err(why) => {
                            warn!(client_id = %act.client_id(), topic = %topic, why = %why, "publish interceptor's rewrite refused; message dropped");
                            None
                        }
                    },
                    Ok(PublishDecision::Drop) => None,
                    Err(e) => {
                        warn!(error = %e, "publish interceptor unavailable; message dropped");
                        None
                    }
                };
                match message {
                    Some(message) => {
                        act.acknowledge_routed(qos, pid);
                        act.forward(Arc::new(message), ctx);
                    }
                    None => {
                        debug!(client_id = %act.client_id(), "publish dropped by interceptor");
                        act.acknowledge_unrouted(qos, pid, ctx);
                    }
                }
                act.flush(ctx);
            },
        ));
    }

    /// Answers a PUBLISH the broker drops: (5.0) PUBACK/PUBREC with `code` and a reason string
    /// if the client wants problem information; (3.1.1) a normal acknowledgement. In order
    /// with the acknowledgements of the PUBLISH packets before it `[MQTT-4.6.0-2]`.
    fn refuse_publish(&mut self, qos: QoS, pid: u16, code: u8, ctx: &mut Context<Self>) {
        let v5 = self.peer_options.protocol.is_v5();
        let ack = match qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Ack::PubAck,
            QoS::ExactlyOnce => Ack::PubRec,
        };
        if v5 {
            // An error PUBREC ends the flow: the id is not kept for a PUBREL.
            self.acknowledge_refused(ack, pid, code, ctx);
        } else {
            // 3.1.1 has no negative acknowledgement; a QoS 2 id is kept so that PUBREL completes.
            if qos == QoS::ExactlyOnce {
                self.inbound_qos2.insert(pid);
            }
            self.acknowledge_refused(ack, pid, 0, ctx);
        }
    }

    fn on_subscribe(
        &mut self,
        key: registry::ClientKey,
        pid: u16,
        filters: Vec<(String, SubscriptionOptions)>,
        ctx: &mut Context<Self>,
    ) {
        let client_id: Arc<str> = Arc::from(self.client_id());
        self.refresh_acl();
        let acl = self.acl.1.clone();
        let mut requests: Vec<SubscribeRequest> = Vec::with_capacity(filters.len());
        let mut refused = RefusedFilters::default();
        for (filter, mut options) in filters {
            if self.peer_options.bridge && parse_shared(&filter).is_none() {
                // A bridge's messages do not come back to it, and retained ones stay retained
                // on the other broker (what Mosquitto's bridges expect of a peer).
                options.no_local = true;
                options.retain_as_published = true;
            }
            let refusal = self.judge_filter(&filter, acl.as_deref(), &client_id);
            match refusal {
                None => requests.push(Ok((filter, options))),
                Some((code, why)) => {
                    refused.note(filter, why);
                    requests.push(Err(code));
                }
            }
        }
        refused.log(
            &self.shared.refusal_lines,
            &client_id,
            "subscription refused",
        );
        let Some(interceptor) = self.shared.interceptors.subscribe.clone() else {
            return self.subscribe(key, pid, requests, ctx);
        };
        let asking = client_id.clone();
        let decide = join_all(requests.into_iter().map(move |request| {
            let interceptor = interceptor.clone();
            let client_id = asking.clone();
            async move {
                let (filter, options) = request?;
                let question = AuthorizeSubscribe {
                    client_id,
                    filter: filter.clone(),
                    qos: options.qos,
                };
                match interceptor.send(question).await {
                    Ok(SubscribeDecision::Accept) => Ok((filter, options, false)),
                    Ok(SubscribeDecision::Rewrite { filter, qos }) => {
                        Ok((filter, SubscriptionOptions { qos, ..options }, true))
                    }
                    Ok(SubscribeDecision::Refuse) => Err(reason::NOT_AUTHORIZED),
                    Err(_) => Err(reason::UNSPECIFIED),
                }
            }
        }));
        ctx.wait(decide.into_actor(self).map(move |answers, act, ctx| {
            // A rewritten filter is judged as the client's own was: the interceptor may narrow
            // what the limits and the ACL grant, never widen it.
            let mut refused = RefusedFilters::default();
            let granted = answers
                .into_iter()
                .map(|answer| {
                    let (filter, options, rewritten) = answer?;
                    if rewritten {
                        if let Some((code, why)) =
                            act.judge_filter(&filter, acl.as_deref(), &client_id)
                        {
                            refused.note(filter, why);
                            return Err(code);
                        }
                    }
                    Ok((filter, options))
                })
                .collect();
            refused.log(
                &act.shared.refusal_lines,
                &client_id,
                "subscription refused: the interceptor's rewrite",
            );
            act.subscribe(key, pid, granted, ctx);
            act.flush(ctx);
        }));
    }

    /// Judges one filter of a SUBSCRIBE, or an interceptor's rewrite of it, in order: limits,
    /// syntax, the ACL (on a shared subscription's topic filter). `None` grants it; a refusal
    /// is a reason code and why. A filter that reaches topics the client may not read beside
    /// ones it may turns on the check of each message on its way out (`read_access.rs`).
    fn judge_filter(
        &mut self,
        filter: &str,
        acl: Option<&AclFile>,
        client_id: &str,
    ) -> Option<(u8, String)> {
        let shared = parse_shared(filter);
        if let Some(Ok(_)) = shared {
            self.shared_subscriber = true;
        }
        if !self.topic_within_limits(filter) {
            self.shared.metrics.add_limits_hit(1);
            return Some((
                reason::QUOTA_EXCEEDED,
                "over the topic length or level limit".to_string(),
            ));
        }
        if let Err(e) = validate_filter(filter) {
            return Some((reason::TOPIC_FILTER_INVALID, format!("invalid filter: {e}")));
        }
        let acl_filter = match shared {
            Some(Ok(shared)) => shared.filter,
            Some(Err(e)) => {
                return Some((
                    reason::TOPIC_FILTER_INVALID,
                    format!("invalid shared subscription: {e}"),
                ))
            }
            None => filter,
        };
        match acl.map(|acl| acl.subscribe_access(self.username.as_deref(), client_id, acl_filter)) {
            Some(SubscribeAccess::Refused) => {
                self.shared.metrics.add_acl_denied(1);
                Some((reason::NOT_AUTHORIZED, "denied by the ACL".to_string()))
            }
            Some(SubscribeAccess::Filtered) => {
                self.read_checks = true;
                None
            }
            Some(SubscribeAccess::Granted) | None => None,
        }
    }

    /// Whether this client may not publish to `topic`: the broker's own topics (`$SYS`), or
    /// what the ACL does not let it write.
    fn publish_denied(&self, topic: &str) -> bool {
        crate::topic::reserved_for_broker(topic)
            || self.acl.1.as_ref().is_some_and(|acl| {
                !acl.may_publish(self.username.as_deref(), self.client_id(), topic)
            })
    }

    /// Judges a publish interceptor's new topic as the client's own was: a valid topic name,
    /// within the limits, one the client may publish to. `Err` says why not.
    fn judge_rewritten_topic(&mut self, topic: &str) -> Result<(), String> {
        validate_topic_name(topic).map_err(|e| format!("invalid topic name: {e}"))?;
        if !self.topic_within_limits(topic) {
            self.shared.metrics.add_limits_hit(1);
            return Err("over the topic length or level limit".to_string());
        }
        self.refresh_acl();
        if self.publish_denied(topic) {
            self.shared.metrics.add_acl_denied(1);
            return Err("the ACL forbids it, or the topic is the broker's own ($SYS)".to_string());
        }
        Ok(())
    }

    /// Sends the granted filters to the Registry, which answers with [`registry::Subscribed`];
    /// writes the SUBACK at once if every filter was refused.
    fn subscribe(
        &mut self,
        key: registry::ClientKey,
        pid: u16,
        granted: Vec<SubscribeRequest>,
        ctx: &mut Context<Self>,
    ) {
        let v5 = self.peer_options.protocol.is_v5();
        // [MQTT-3.8.4-5] one return code per filter, in order; (3.1.1) 0x80 for a refused one,
        // (5.0) the reason [MQTT-3.8.4-6] [MQTT-3.9.3-1].
        let codes: Vec<u8> = granted
            .iter()
            .map(|g| match g {
                Ok((_, options)) => options.qos as u8,
                Err(code) if v5 => *code,
                Err(_) => codec::SUBACK_FAILURE,
            })
            .collect();
        let filters: Vec<(usize, String, SubscriptionOptions)> = granted
            .into_iter()
            .enumerate()
            .filter_map(|(position, g)| g.ok().map(|(filter, options)| (position, filter, options)))
            .collect();
        if filters.is_empty() {
            self.write_reply(super::durability::Reply::SubAck { pid, codes });
            return;
        }
        self.hand_over(ctx);
        // Until the Registry answers, this client's bursts go through it, behind the change.
        self.via_registry += 1;
        self.shared.registry.do_send(registry::Subscribe {
            key,
            conn: self.conn,
            pid,
            filters,
            codes,
            quota_code: if v5 {
                reason::QUOTA_EXCEEDED
            } else {
                codec::SUBACK_FAILURE
            },
            on_its_way: Some(self.shared.routes.change_on_its_way()),
        });
    }

    fn on_unsubscribe(
        &mut self,
        key: registry::ClientKey,
        pid: u16,
        filters: Vec<String>,
        ctx: &mut Context<Self>,
    ) {
        self.hand_over(ctx);
        self.via_registry += 1;
        self.shared.registry.do_send(registry::Unsubscribe {
            key,
            conn: self.conn,
            pid,
            filters,
            on_its_way: Some(self.shared.routes.change_on_its_way()),
        });
    }
}
