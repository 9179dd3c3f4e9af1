//! How a Session answers each packet from its client.

use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::join_all;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::{AckResult, Phase, Session};
use crate::auth::CheckPassword;
use crate::codec::{self, Ack, Connect as ConnectPacket, Packet, Publish as PublishPacket};
use crate::hooks::{
    AuthorizeConnect, AuthorizePublish, AuthorizeSubscribe, ConnectDecision, DisconnectReason,
    PublishDecision, SubscribeDecision,
};
use crate::message::{ConnectReturnCode, Message, ProtocolVersion, QoS};
use crate::registry::{self, ConnectOutcome};
use crate::topic::{validate_filter, validate_topic_name};

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
            Packet::PubAck(pid) => {
                let result = self.outbound.puback(pid);
                self.on_ack(pid, result, "PUBACK")
            }
            Packet::PubRec(pid) => {
                let result = self.outbound.pubrec(pid);
                self.on_ack(pid, result, "PUBREC")
            }
            Packet::PubComp(pid) => {
                let result = self.outbound.pubcomp(pid);
                self.on_ack(pid, result, "PUBCOMP")
            }
            Packet::PubRel(pid) => {
                // [MQTT-4.3.3-2] discard the stored id, answer PUBCOMP (also for unknown ids).
                self.inbound_qos2.remove(&pid);
                codec::write_ack(&mut self.out, Ack::PubComp, pid);
            }
            Packet::Subscribe { pid, filters } => self.on_subscribe(key, pid, filters, ctx),
            Packet::Unsubscribe { pid, filters } => self.on_unsubscribe(key, pid, filters, ctx),
            Packet::PingReq => codec::write_pingresp(&mut self.out), // [MQTT-3.12.4-1]
            Packet::Disconnect => self.close(ctx, DisconnectReason::Clean), // [MQTT-3.14.4-3]
            Packet::Connect(_) => {}
        }
    }

    fn violation(&mut self, ctx: &mut Context<Self>, packet: &str, rule: &'static str) {
        self.shared.metrics.add_protocol_errors(1);
        warn!(addr = %self.peer, client_id = %self.client_id(), packet, rule, "closing connection: protocol violation");
        self.close(ctx, DisconnectReason::ProtocolError(rule.to_string()));
    }

    /// Whether a topic name or filter is within `limits.max_topic_length` and
    /// `limits.max_topic_levels`.
    fn topic_within_limits(&self, topic: &str) -> bool {
        let limits = &self.shared.config.limits;
        topic.len() <= limits.max_topic_length
            && topic.bytes().filter(|&b| b == b'/').count() < limits.max_topic_levels
    }

    /// Closes this one connection for going over a configured limit; logged and counted.
    fn limit_hit(&mut self, ctx: &mut Context<Self>, what: &'static str) {
        self.shared.metrics.add_limits_hit(1);
        warn!(addr = %self.peer, client_id = %self.client_id(), limit = what, "closing connection: limit hit");
        self.close(
            ctx,
            DisconnectReason::ProtocolError(format!("limit: {what}")),
        );
    }

    fn on_ack(&mut self, pid: u16, result: AckResult, name: &str) {
        match result {
            AckResult::Completed => self.pump(),
            AckResult::SendPubRel => codec::write_ack(&mut self.out, Ack::PubRel, pid),
            AckResult::Unknown => {
                debug!(client_id = %self.client_id(), pid, packet = name, "acknowledgement for an unknown packet id")
            }
        }
    }

    fn refuse(&mut self, ctx: &mut Context<Self>, code: ConnectReturnCode) {
        info!(addr = %self.peer, code = code as u8, "connection refused");
        // [MQTT-3.2.2-4] session present is 0 with a non-zero return code.
        codec::write_connack(&mut self.out, false, code);
        self.close(
            ctx,
            DisconnectReason::Network(format!("refused with CONNACK {}", code as u8)),
        );
    }

    fn on_connect(&mut self, connect: ConnectPacket, ctx: &mut Context<Self>) {
        self.phase = super::Phase::Connecting;
        let open = self.shared.metrics.snapshot().connections_current;
        if open > self.shared.config.limits.max_connections as u64 {
            return self.refuse(ctx, ConnectReturnCode::ServerUnavailable);
        }
        if connect.client_id.is_empty() && !connect.clean_session {
            // [MQTT-3.1.3-8] zero-length id with clean session 0.
            return self.refuse(ctx, ConnectReturnCode::IdentifierRejected);
        }
        if connect.protocol == ProtocolVersion::V3_1
            && !(1..=23).contains(&connect.client_id.chars().count())
        {
            // MQTT 3.1 (section 3.1, "Client Identifier"): 1 to 23 characters, else CONNACK 2;
            // empty and longer ids came with 3.1.1.
            return self.refuse(ctx, ConnectReturnCode::IdentifierRejected);
        }
        let access = self.shared.access.clone();
        match (&connect.username, access.authenticator()) {
            (None, _) if !access.allow_anonymous() => {
                info!(addr = %self.peer, client_id = %connect.client_id, "anonymous connection refused");
                self.refuse(ctx, ConnectReturnCode::NotAuthorized)
            }
            (Some(username), Some(authenticator)) => {
                let check = CheckPassword {
                    username: username.clone(),
                    password: connect.password.clone().unwrap_or_default(),
                };
                ctx.wait(authenticator.send(check).into_actor(self).map(move |answer, act, ctx| {
                    match answer {
                        Ok(true) => act.intercept_connect(connect, ctx),
                        Ok(false) => {
                            info!(addr = %act.peer, username = ?connect.username, "wrong user name or password");
                            act.refuse(ctx, ConnectReturnCode::BadUsernameOrPassword)
                        }
                        Err(e) => {
                            warn!(error = %e, "authenticator unavailable");
                            act.refuse(ctx, ConnectReturnCode::ServerUnavailable)
                        }
                    }
                    act.flush(ctx);
                }));
            }
            _ => self.intercept_connect(connect, ctx),
        }
    }

    /// Asks the connect interceptor, if there is one, then registers.
    fn intercept_connect(&mut self, connect: ConnectPacket, ctx: &mut Context<Self>) {
        let Some(interceptor) = self.shared.interceptors.connect.clone() else {
            return self.register(connect, ctx);
        };
        let question = AuthorizeConnect {
            client_id: connect.client_id.clone(),
            peer: self.peer,
            protocol: connect.protocol,
            username: connect.username.clone(),
            password: connect.password.clone(),
        };
        ctx.wait(
            interceptor
                .send(question)
                .into_actor(self)
                .map(move |answer, act, ctx| {
                    match answer {
                        Ok(ConnectDecision::Accept) => act.register(connect, ctx),
                        Ok(ConnectDecision::Refuse(code))
                            if code != ConnectReturnCode::Accepted =>
                        {
                            act.refuse(ctx, code)
                        }
                        Ok(ConnectDecision::Refuse(_)) => act.register(connect, ctx),
                        Err(e) => {
                            warn!(error = %e, "connect interceptor unavailable");
                            act.refuse(ctx, ConnectReturnCode::ServerUnavailable)
                        }
                    }
                    act.flush(ctx);
                }),
        );
    }

    fn register(&mut self, mut connect: ConnectPacket, ctx: &mut Context<Self>) {
        let (reply, answer) = oneshot::channel();
        let keep_alive = connect.keep_alive;
        self.username = connect.username.clone();
        self.refresh_acl();
        if let (Some(will), Some(acl)) = (&connect.will, self.acl.1.clone()) {
            if !acl.may_publish(self.username.as_deref(), &connect.client_id, &will.topic) {
                self.shared.metrics.add_acl_denied(1);
                warn!(client_id = %connect.client_id, topic = %will.topic, "will dropped: the ACL denies publishing to its topic");
                connect.will = None;
            }
        }
        let request = registry::Connect {
            conn: self.conn,
            session: ctx.address(),
            peer: self.peer,
            protocol: connect.protocol,
            client_id: connect.client_id,
            clean_session: connect.clean_session,
            will: connect.will,
            reply,
        };
        let registry = self.shared.registry.clone();
        let ask = async move {
            registry.send(request).await.ok()?;
            answer.await.ok()
        };
        ctx.wait(ask.into_actor(self).map(move |outcome, act, ctx| {
            match outcome {
                Some(ConnectOutcome {
                    key,
                    client_id,
                    session_present,
                    state,
                }) => {
                    act.phase = Phase::Connected { key, client_id };
                    codec::write_connack(
                        &mut act.out,
                        session_present,
                        ConnectReturnCode::Accepted,
                    );
                    act.outbound.restore(state.inflight, state.queue);
                    act.inbound_qos2 = state.inbound_qos2;
                    act.resend_inflight();
                    act.pump();
                    act.start_keep_alive(ctx, keep_alive);
                }
                None => {
                    // A newer connection with the same id won before this one was attached.
                    act.close(ctx, DisconnectReason::TakenOver);
                }
            }
            act.flush(ctx);
        }));
    }

    fn on_publish(&mut self, publish: PublishPacket, ctx: &mut Context<Self>) {
        self.publishes_unreported += 1;
        let PublishPacket { pid, message, .. } = publish;
        let qos = message.qos;
        if !self.topic_within_limits(&message.topic) {
            return self.limit_hit(ctx, "PUBLISH topic over the topic length or level limit");
        }
        if qos == QoS::ExactlyOnce
            && self.inbound_qos2.len() >= self.shared.config.limits.max_inbound_qos2
            && !self.inbound_qos2.contains(&pid)
        {
            return self.limit_hit(ctx, "too many QoS 2 messages awaiting PUBREL");
        }
        self.refresh_acl();
        let denied = self.acl.1.as_ref().is_some_and(|acl| {
            !acl.may_publish(self.username.as_deref(), self.client_id(), &message.topic)
        });
        if denied {
            // Dropped, but acknowledged as the spec requires (3.1.1 has no negative PUBACK);
            // a QoS 2 id is remembered so that PUBREL completes the handshake.
            self.shared.metrics.add_acl_denied(1);
            info!(client_id = %self.client_id(), topic = %message.topic, "publish denied by the ACL");
            if qos == QoS::ExactlyOnce {
                self.inbound_qos2.insert(pid);
            }
            self.acknowledge_publish(qos, pid);
            return;
        }
        if qos == QoS::ExactlyOnce && !self.inbound_qos2.insert(pid) {
            // A re-sent QoS 2 PUBLISH whose PUBREL has not come: not routed again [MQTT-4.3.3-2].
            codec::write_ack(&mut self.out, Ack::PubRec, pid);
            return;
        }
        let Some(interceptor) = self.shared.interceptors.publish.clone() else {
            self.forward(Arc::new(message), ctx);
            return self.acknowledge_publish(qos, pid);
        };
        let question = AuthorizePublish {
            client_id: Arc::from(self.client_id()),
            topic: message.topic.clone(),
            payload: message.payload.clone(),
            qos,
            retain: message.retain,
        };
        ctx.wait(interceptor.send(question).into_actor(self).map(
            move |answer, act, ctx| {
                let message = match answer {
                    Ok(PublishDecision::Accept) => Some(message),
                    Ok(PublishDecision::Rewrite { topic, payload }) => match validate_topic_name(&topic) {
                        Ok(()) => Some(Message::new(topic, payload, message.qos, message.retain)),
                        Err(e) => {
                            warn!(client_id = %act.client_id(), error = %e, "publish interceptor rewrote to an invalid topic; dropped");
                            None
                        }
                    },
                    Ok(PublishDecision::Drop) => None,
                    Err(e) => {
                        warn!(error = %e, "publish interceptor unavailable; message dropped");
                        None
                    }
                };
                if let Some(message) = message {
                    act.forward(Arc::new(message), ctx);
                } else {
                    debug!(client_id = %act.client_id(), "publish dropped by interceptor");
                }
                act.acknowledge_publish(qos, pid);
                act.flush(ctx);
            },
        ));
    }

    /// PUBACK once the broker owns the message (it is queued for the Registry) [MQTT-4.3.2-2];
    /// PUBREC for QoS 2 [MQTT-4.3.3-2].
    fn acknowledge_publish(&mut self, qos: QoS, pid: u16) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => codec::write_ack(&mut self.out, Ack::PubAck, pid),
            QoS::ExactlyOnce => codec::write_ack(&mut self.out, Ack::PubRec, pid),
        }
    }

    /// Queues a message for the Registry. A burst read from the socket goes over as one
    /// [`registry::Publish`] at the end of the read turn (or every [`super::PUBLISH_BATCH`]).
    fn forward(&mut self, message: Arc<Message>, ctx: &mut Context<Self>) {
        self.to_route.push(message);
        if self.to_route.len() >= super::PUBLISH_BATCH {
            self.hand_over(ctx);
        } else if !self.route_scheduled {
            self.route_scheduled = true;
            // Runs once the stream handler yields, after the packets of this read turn.
            ctx.spawn(actix::fut::ready(()).map(|(), act: &mut Session, ctx| {
                act.route_scheduled = false;
                act.hand_over(ctx);
            }));
        }
    }

    /// Sends the queued messages to the Registry. When its mailbox is full the message is still
    /// queued in order, and the Session waits for room without reading its socket, so TCP slows
    /// the publisher down. Called before any other message to the Registry, to keep order.
    pub(super) fn hand_over(&mut self, ctx: &mut Context<Self>) {
        use actix::dev::SendError;
        self.report_publishes();
        if self.to_route.is_empty() {
            return;
        }
        let publish = registry::Publish {
            messages: std::mem::take(&mut self.to_route),
        };
        match self.shared.registry.try_send(publish) {
            Ok(()) => {}
            Err(SendError::Full(publish)) => {
                let send = self.shared.registry.send(publish);
                ctx.wait(send.into_actor(self).map(|result, act, ctx| {
                    if result.is_err() {
                        act.close(ctx, DisconnectReason::Network("registry stopped".into()));
                    }
                }));
            }
            Err(SendError::Closed(_)) => {
                self.close(ctx, DisconnectReason::Network("registry stopped".into()));
            }
        }
    }

    fn on_subscribe(
        &mut self,
        key: registry::ClientKey,
        pid: u16,
        filters: Vec<(String, QoS)>,
        ctx: &mut Context<Self>,
    ) {
        let client_id: Arc<str> = Arc::from(self.client_id());
        self.refresh_acl();
        let acl = self.acl.1.clone();
        let mut requests = Vec::with_capacity(filters.len());
        for (filter, qos) in filters {
            // In order: limits, syntax, ACL. Each refusal is a 0x80 for that filter only.
            let refusal = if !self.topic_within_limits(&filter) {
                self.shared.metrics.add_limits_hit(1);
                Some("over the topic length or level limit".to_string())
            } else if let Err(e) = validate_filter(&filter) {
                Some(format!("invalid filter: {e}"))
            } else if acl.as_ref().is_some_and(|acl| {
                !acl.may_subscribe(self.username.as_deref(), &client_id, &filter)
            }) {
                self.shared.metrics.add_acl_denied(1);
                Some("denied by the ACL".to_string())
            } else {
                None
            };
            match refusal {
                None => requests.push(Some((filter, qos))),
                Some(why) => {
                    info!(client_id = %client_id, filter = %filter, why = %why, "subscription refused");
                    requests.push(None);
                }
            }
        }
        let Some(interceptor) = self.shared.interceptors.subscribe.clone() else {
            return self.subscribe(key, pid, requests, ctx);
        };
        let decide = join_all(requests.into_iter().map(move |request| {
            let interceptor = interceptor.clone();
            let client_id = client_id.clone();
            async move {
                let (filter, qos) = request?;
                let question = AuthorizeSubscribe {
                    client_id,
                    filter: filter.clone(),
                    qos,
                };
                match interceptor.send(question).await {
                    Ok(SubscribeDecision::Accept) => Some((filter, qos)),
                    Ok(SubscribeDecision::Rewrite { filter, qos }) => {
                        validate_filter(&filter).ok().map(|()| (filter, qos))
                    }
                    Ok(SubscribeDecision::Refuse) | Err(_) => None,
                }
            }
        }));
        ctx.wait(decide.into_actor(self).map(move |granted, act, ctx| {
            act.subscribe(key, pid, granted, ctx);
            act.flush(ctx);
        }));
    }

    /// Sends the granted filters to the Registry, which answers with [`registry::Subscribed`];
    /// writes the SUBACK at once if every filter was refused.
    fn subscribe(
        &mut self,
        key: registry::ClientKey,
        pid: u16,
        granted: Vec<Option<(String, QoS)>>,
        ctx: &mut Context<Self>,
    ) {
        // [MQTT-3.8.4-5] one return code per filter, in order; 0x80 for a refused one.
        let codes: Vec<u8> = granted
            .iter()
            .map(|g| {
                g.as_ref()
                    .map_or(codec::SUBACK_FAILURE, |(_, qos)| *qos as u8)
            })
            .collect();
        let filters: Vec<(usize, String, QoS)> = granted
            .into_iter()
            .enumerate()
            .filter_map(|(position, g)| g.map(|(filter, qos)| (position, filter, qos)))
            .collect();
        if filters.is_empty() {
            codec::write_suback(&mut self.out, pid, &codes);
            return;
        }
        self.hand_over(ctx);
        self.shared.registry.do_send(registry::Subscribe {
            key,
            conn: self.conn,
            pid,
            filters,
            codes,
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
        self.shared.registry.do_send(registry::Unsubscribe {
            key,
            conn: self.conn,
            pid,
            filters,
        });
    }
}
