//! How a Session answers CONNECT: checks, the password, the connect interceptor, registration
//! with the Registry, and CONNACK (or a refusal).

use std::pin::pin;

use actix::prelude::*;
use futures_util::future::{select, Either};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::packets::reason;
use super::{Phase, Session};
use crate::auth::CheckPassword;
use crate::codec::properties::{id, PropertyWriter};
use crate::codec::{self, CodecError, Connect as ConnectPacket};
use crate::hooks::{AuthorizeConnect, ConnectDecision, DisconnectReason};
use crate::message::{ConnectReturnCode, ProtocolVersion};
use crate::registry::{self, ConnectOutcome};

/// The MQTT 5 CONNACK reason code for a 3.1.1 return code (section 3.2.2.2).
fn connack_reason_v5(code: ConnectReturnCode) -> u8 {
    match code {
        ConnectReturnCode::Accepted => 0x00,
        ConnectReturnCode::UnacceptableProtocolVersion => 0x84,
        ConnectReturnCode::IdentifierRejected => 0x85,
        ConnectReturnCode::ServerUnavailable => 0x88,
        ConnectReturnCode::BadUsernameOrPassword => 0x86,
        ConnectReturnCode::NotAuthorized => 0x87,
    }
}

impl Session {
    fn refuse(&mut self, ctx: &mut Context<Self>, code: ConnectReturnCode) {
        if matches!(
            code,
            ConnectReturnCode::BadUsernameOrPassword | ConnectReturnCode::NotAuthorized
        ) {
            self.shared.metrics.add_auth_failures(1);
        }
        let v5 = self.peer_options.protocol.is_v5();
        self.refuse_with(ctx, code, v5.then(|| connack_reason_v5(code)));
    }

    /// Refuses a CONNECT: CONNACK with `code` (3.1.1) or `v5_code` and a reason string (5.0).
    fn refuse_with(
        &mut self,
        ctx: &mut Context<Self>,
        code: ConnectReturnCode,
        v5_code: Option<u8>,
    ) {
        info!(addr = %self.peer, code = code as u8, "connection refused");
        // [MQTT-3.2.2-4] session present is 0 with a non-zero return code.
        match v5_code {
            Some(v5_code) => {
                // (5.0) a refusing CONNACK has a reason code of 0x80 or above and is followed
                // by closing the connection [MQTT-3.2.2-7].
                let mut props = PropertyWriter::new();
                props.string(id::REASON_STRING, &format!("connection refused: {code:?}"));
                codec::write_connack_v5(&mut self.out, false, v5_code, &props);
            }
            None => codec::write_connack(&mut self.out, false, code),
        }
        self.close(
            ctx,
            DisconnectReason::Network(format!("refused with CONNACK {}", code as u8)),
        );
    }

    /// Answers a CONNECT that could not be decoded, where a CONNACK is due, before the caller
    /// closes the connection: an unsupported protocol level gets CONNACK 0x01
    /// [MQTT-3.1.2-2]; an MQTT 5 CONNECT that does not conform gets a CONNACK with the error's
    /// reason code and, as its Reason String, what was wrong (section 4.13). A malformed
    /// MQTT 3.1.1 CONNECT gets none [MQTT-3.1.4-1].
    pub(super) fn refuse_bad_connect(&mut self, error: &CodecError) {
        if error.wants_protocol_version_connack() {
            codec::write_connack(
                &mut self.out,
                false,
                ConnectReturnCode::UnacceptableProtocolVersion,
            );
        } else if let Some(code) = error.v5_connack_code() {
            let mut props = PropertyWriter::new();
            props.string(id::REASON_STRING, &error.to_string());
            codec::write_connack_v5(&mut self.out, false, code, &props);
        }
    }

    pub(super) fn on_connect(&mut self, connect: ConnectPacket, ctx: &mut Context<Self>) {
        self.phase = super::Phase::Connecting;
        self.peer_options.protocol = connect.protocol;
        self.peer_options.bridge = connect.bridge;
        if connect.bridge {
            info!(addr = %self.peer, client_id = %connect.client_id, "a bridge connects (protocol level with the bridge bit): no echo of its own messages, RETAIN kept");
        }
        let internal = self.trust == super::Trust::Internal;
        if connect.client_id.starts_with(super::INTERNAL_CLIENT_PREFIX) != internal {
            // Broker-internal client ids are reserved, and internal clients use nothing else.
            info!(addr = %self.peer, client_id = %connect.client_id, "refusing a client id reserved for the broker's bridges");
            return self.refuse(ctx, ConnectReturnCode::IdentifierRejected);
        }
        let open = self.shared.metrics.snapshot().connections_current;
        if open > self.shared.config.limits.max_connections as u64 && !internal {
            let v5 = connect.protocol.is_v5().then_some(reason::QUOTA_EXCEEDED);
            return self.refuse_with(ctx, ConnectReturnCode::ServerUnavailable, v5);
        }
        if connect.client_id.is_empty() && !connect.clean_session && !connect.protocol.is_v5() {
            // [MQTT-3.1.3-8] (3.1.1) zero-length id with clean session 0. MQTT 5 assigns an id
            // whatever Clean Start says [MQTT-3.1.3-6].
            return self.refuse(ctx, ConnectReturnCode::IdentifierRejected);
        }
        if connect.will_payload_invalid {
            // (5.0) a will whose Payload Format Indicator says UTF-8 and whose payload is not:
            // 0x99 Payload format invalid (section 3.1.3.2.3).
            info!(addr = %self.peer, client_id = %connect.client_id, "refusing a will payload that is not the UTF-8 it claims");
            let v5 = Some(reason::PAYLOAD_FORMAT_INVALID);
            return self.refuse_with(ctx, ConnectReturnCode::NotAuthorized, v5);
        }
        if let Some(will) = connect
            .will
            .as_ref()
            .filter(|w| !self.topic_within_limits(&w.topic))
        {
            // A will's topic is held to the limits of a PUBLISH's (it is published as one, and
            // may be retained): refused with 0x90 Topic Name invalid (5.0), or 5 Not authorized
            // (3.1.1, which has no closer code), rather than accepted with its will dropped.
            self.shared.metrics.add_limits_hit(1);
            warn!(addr = %self.peer, client_id = %connect.client_id, levels = will.topic.split('/').count(), bytes = will.topic.len(), "refusing a will topic over limits.max_topic_length or limits.max_topic_levels");
            let v5 = connect
                .protocol
                .is_v5()
                .then_some(reason::TOPIC_NAME_INVALID);
            return self.refuse_with(ctx, ConnectReturnCode::NotAuthorized, v5);
        }
        if connect.properties.authentication_method.is_some() {
            // No extended authentication method is supported (section 4.12).
            info!(addr = %self.peer, "refusing an extended authentication method");
            let v5 = Some(reason::BAD_AUTHENTICATION_METHOD);
            return self.refuse_with(ctx, ConnectReturnCode::NotAuthorized, v5);
        }
        if connect.protocol == ProtocolVersion::V3_1
            && !(1..=23).contains(&connect.client_id.chars().count())
        {
            // MQTT 3.1 (section 3.1, "Client Identifier"): 1 to 23 characters, else CONNACK 2;
            // empty and longer ids came with 3.1.1.
            return self.refuse(ctx, ConnectReturnCode::IdentifierRejected);
        }
        let access = self.shared.access.clone();
        match self.trust {
            super::Trust::Internal => return self.intercept_connect(connect, ctx),
            super::Trust::Certificate => return self.connect_certified(connect, ctx),
            super::Trust::Password => {}
        }
        match (&connect.username, access.authenticator()) {
            (None, _) if !access.allow_anonymous() => {
                info!(addr = %self.peer, client_id = %connect.client_id, "anonymous connection refused");
                self.refuse(ctx, ConnectReturnCode::NotAuthorized)
            }
            (Some(username), Some(_))
                if access.password_verified_before(
                    username,
                    connect.password.as_deref().unwrap_or_default(),
                ) =>
            {
                // A device reconnecting: its password verified before, so it does not wait in
                // the Authenticator's queue behind slow checks (wrong passwords in a flood).
                self.intercept_connect(connect, ctx)
            }
            (Some(username), Some(authenticator)) => {
                let check = CheckPassword {
                    username: username.clone(),
                    password: connect.password.clone().unwrap_or_default(),
                };
                // In this address's lane (`auth/lanes.rs`): a flood from one address does not
                // hold back the checks of others.
                let place = access.check_lanes().enter(self.peer.ip());
                let authenticator = authenticator.clone();
                let checked = async move {
                    let place = place.await;
                    let answer = authenticator.send(check).await;
                    drop(place);
                    answer
                };
                // A client that closed its connection meanwhile gives up its place in the
                // lane (or the check, if the Authenticator has not begun it): a flood of
                // CONNECTs closed at once does not keep connections or PBKDF2 runs.
                let checked = self.unless_peer_gone(checked);
                ctx.wait(checked.into_actor(self).map(move |answer, act, ctx| {
                    let Some(answer) = answer else {
                        return act.close_peer_gone(ctx, "its password was checked");
                    };
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

    /// `wait`'s output, or `None` if the client closes its connection first
    /// ([`SharedStream::peer_gone`](super::socket::SharedStream::peer_gone)): for what a
    /// Session waits on before its CONNACK, reading nothing meanwhile.
    fn unless_peer_gone<T>(
        &self,
        wait: impl std::future::Future<Output = T>,
    ) -> impl std::future::Future<Output = Option<T>> {
        let gone = self.stream.peer_gone();
        async move {
            match select(pin!(wait), pin!(gone)).await {
                Either::Left((answer, _)) => Some(answer),
                Either::Right(((), _)) => None,
            }
        }
    }

    /// Closes a connection whose client went away before `what` (its CONNECT never answered).
    fn close_peer_gone(&mut self, ctx: &mut Context<Self>, what: &str) {
        let why = format!("connection closed by peer before {what}");
        self.close(ctx, DisconnectReason::Network(why));
    }

    /// `tls.use_identity_as_username`: the certificate's Common Name is the user name, in place
    /// of the CONNECT's (which is not checked, nor is its password); a certificate without one
    /// is refused.
    fn connect_certified(&mut self, mut connect: ConnectPacket, ctx: &mut Context<Self>) {
        let Some(identity) = self.username.as_deref() else {
            info!(addr = %self.peer, client_id = %connect.client_id, "client certificate without a Common Name refused (use_identity_as_username)");
            return self.refuse(ctx, ConnectReturnCode::NotAuthorized);
        };
        connect.username = Some(identity.to_owned());
        connect.password = None;
        self.intercept_connect(connect, ctx)
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
            user_properties: connect.properties.user_properties.clone(),
        };
        // A client that closed its connection meanwhile is not waited for: the interceptor
        // (user code, perhaps asking a service of its own) may take its time.
        ctx.wait(
            self.unless_peer_gone(interceptor.send(question))
                .into_actor(self)
                .map(move |answer, act, ctx| {
                    let Some(answer) = answer else {
                        return act.close_peer_gone(ctx, "the connect interceptor answered");
                    };
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

    /// The Session Expiry Interval granted: (3.1.1) 0 for a clean session, "never" for a
    /// persistent one; (5.0) as asked; both capped by `sessions.max_session_expiry`.
    fn granted_session_expiry(&self, connect: &ConnectPacket) -> u32 {
        let asked = match connect.protocol {
            ProtocolVersion::V5 => connect.properties.session_expiry,
            _ if connect.clean_session => 0,
            _ => u32::MAX,
        };
        match self.shared.config.sessions.max_session_expiry {
            Some(max) => asked.min(u32::try_from(max.as_secs()).unwrap_or(u32::MAX - 1)),
            None => asked,
        }
    }

    fn register(&mut self, mut connect: ConnectPacket, ctx: &mut Context<Self>) {
        let (reply, answer) = oneshot::channel();
        let keep_alive = connect.keep_alive;
        let session_expiry = self.granted_session_expiry(&connect);
        let asked_expiry = connect.properties.session_expiry;
        let asked_empty_id = connect.client_id.is_empty();
        let props = connect.properties.clone();
        self.peer_options.max_packet_size = props.maximum_packet_size;
        self.peer_options.problem_information = props.request_problem_information;
        self.peer_options.session_expiry = session_expiry;
        self.username = connect.username.as_deref().map(Box::from);
        self.refresh_acl();
        if let Some(will) = &connect.will {
            let acl = self.acl.1.clone();
            let denied = crate::topic::reserved_for_broker(&will.topic)
                || acl.is_some_and(|acl| {
                    !acl.may_publish(self.username.as_deref(), &connect.client_id, &will.topic)
                });
            if denied {
                self.shared.metrics.add_acl_denied(1);
                warn!(client_id = %connect.client_id, topic = %will.topic, "will dropped: the ACL denies publishing to its topic, or it is the broker's own ($SYS)");
                connect.will = None;
            }
        }
        let request = registry::Connect {
            conn: self.conn,
            session: std::sync::Arc::new(ctx.address()),
            peer: self.peer,
            protocol: connect.protocol,
            client_id: connect.client_id,
            username: self
                .acl
                .1
                .as_ref()
                .and(self.username.as_deref())
                .map(std::sync::Arc::from),
            clean_session: connect.clean_session,
            session_expiry,
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
                    act.phase = Phase::Connected {
                        key,
                        client_id: client_id.clone(),
                    };
                    act.fresh_session = !session_present;
                    // The resumed subscriptions were granted to an earlier connection, perhaps
                    // of another user: what they bring is checked per message.
                    act.read_checks |= session_present;
                    act.shared.metrics.add_connects(1);
                    let applied_keep_alive = act.start_keep_alive(ctx, keep_alive);
                    if act.peer_options.protocol.is_v5() {
                        let mut connack = act.connack_properties();
                        if asked_empty_id {
                            // [MQTT-3.1.3-7] the id the broker assigned.
                            connack.string(id::ASSIGNED_CLIENT_ID, &client_id);
                        }
                        if applied_keep_alive != keep_alive {
                            // [MQTT-3.2.2-21] the client must use the Server Keep Alive.
                            connack.u16(id::SERVER_KEEP_ALIVE, applied_keep_alive);
                        }
                        if session_expiry != asked_expiry {
                            connack.u32(id::SESSION_EXPIRY, session_expiry);
                        }
                        if props.request_response_information {
                            let prefix = &act.shared.config.sessions.response_topic_prefix;
                            connack.string(id::RESPONSE_INFO, &format!("{prefix}{client_id}"));
                        }
                        codec::write_connack_v5(&mut act.out, session_present, 0, &connack);
                        act.aliases = super::OutboundAliases::new(
                            props
                                .topic_alias_maximum
                                .min(act.shared.config.limits.outbound_topic_alias_maximum),
                        );
                        act.outbound.limit_window(props.receive_maximum);
                    } else {
                        // MQTT 3.1's CONNACK has no Session Present flag: that byte is reserved
                        // (0). The session is resumed all the same.
                        let v3_1 = act.peer_options.protocol == ProtocolVersion::V3_1;
                        codec::write_connack(
                            &mut act.out,
                            session_present && !v3_1,
                            ConnectReturnCode::Accepted,
                        );
                    }
                    act.outbound.restore(state.inflight, state.queue);
                    act.inbound_qos2.restore(state.inbound_qos2);
                    act.resend_inflight();
                    act.pump();
                }
                None => {
                    // A newer connection with the same id won before this one was attached.
                    act.close(ctx, DisconnectReason::TakenOver);
                }
            }
            act.flush(ctx);
        }));
    }

    /// The CONNACK properties every accepted MQTT 5 client gets: what the broker accepts.
    fn connack_properties(&self) -> PropertyWriter {
        let limits = &self.shared.config.limits;
        let mut props = PropertyWriter::new();
        // Receive Maximum: inbound QoS 2 messages awaiting PUBREL (QoS 1 is acknowledged at
        // once) [MQTT-3.3.4-7].
        let receive_maximum = u16::try_from(limits.max_inbound_qos2).unwrap_or(u16::MAX);
        if receive_maximum != u16::MAX {
            props.u16(id::RECEIVE_MAXIMUM, receive_maximum);
        }
        // Maximum Packet Size: the whole packet; the limit is on the remaining length, so a
        // packet of that size always passes.
        let max_packet = u32::try_from(limits.max_packet_size).unwrap_or(u32::MAX);
        props.u32(id::MAXIMUM_PACKET_SIZE, max_packet);
        props.u16(id::TOPIC_ALIAS_MAXIMUM, limits.topic_alias_maximum);
        props
    }
}
