//! What the broker sends the connection: CONNACK, deliveries (acknowledged, QoS 2 exactly once),
//! acknowledgements of its own publishes, SUBACK, and a server DISCONNECT.

use actix::prelude::*;
use tracing::{info, warn};

use switchboard_mqtt::codec::{write_ack, Ack, OversizedPublish};
use switchboard_mqtt::QoS;

use super::{Awaiting, Link, ManagedConnection};
use crate::codec::Incoming;
use crate::events::{ConnectFailure, ConnectionEvent, LinkDown, PendingAck, Received};
use crate::options::BrokerAddress;
use crate::transport::Transport;

impl ManagedConnection {
    pub(super) fn on_packet(&mut self, ctx: &mut Context<Self>, packet: Incoming) {
        match packet {
            Incoming::ConnAck {
                session_present,
                code,
                maximum_packet_size,
                server_reference,
            } => {
                // [MQTT-3.2.2-15] nothing larger than this goes to the broker.
                self.server_max_packet = maximum_packet_size.map(|m| m as usize);
                if !matches!(self.link, Link::AwaitingConnAck { .. }) {
                    return self.link_lost(ctx, LinkDown::Protocol("unexpected CONNACK".into()));
                }
                if code == 0 {
                    self.on_connected(ctx, session_present);
                } else {
                    if !self.follow_redirect(code, server_reference.as_deref()) {
                        warn!(client_id = %self.options.client_id, code, "broker refused the connection");
                    }
                    self.drop_link(ctx, None, Some(ConnectFailure::Refused(code)));
                }
            }
            Incoming::Publish {
                topic,
                payload,
                qos,
                retain,
                pid,
                properties,
                expiry,
            } => {
                let fresh = qos != QoS::ExactlyOnce || self.inbound_qos2.insert(pid);
                // With manual acks the listener acknowledges a new QoS 1/2 message once it is
                // safe; a QoS 2 duplicate was handed over already and is acknowledged now.
                let manual = self.options.manual_acks && qos != QoS::AtMostOnce && fresh;
                match qos {
                    _ if manual => {}
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => write_ack(&mut self.out, Ack::PubAck, pid),
                    QoS::ExactlyOnce => write_ack(&mut self.out, Ack::PubRec, pid),
                }
                if fresh {
                    let received = Received {
                        topic,
                        payload,
                        qos,
                        retain,
                        properties,
                        expiry,
                    };
                    self.emit(match manual {
                        true => {
                            let token = PendingAck {
                                generation: self.generation,
                                pid,
                                qos,
                            };
                            ConnectionEvent::MessageToAcknowledge(received, token)
                        }
                        false => ConnectionEvent::MessageReceived(received),
                    });
                }
            }
            Incoming::OversizedPublish(head) => self.too_large_from_broker(head),
            Incoming::PubAck(pid, code) if code >= 0x80 => self.refused(pid, code),
            Incoming::PubAck(pid, _) => self.complete(pid, Awaiting::Ack),
            Incoming::PubRec(pid, code) if code >= 0x80 => self.refused(pid, code),
            Incoming::PubRec(pid, _) => {
                if let Some(entry) = self.inflight.iter_mut().find(|e| e.pid == pid) {
                    entry.stage = Awaiting::Comp;
                    write_ack(&mut self.out, Ack::PubRel, pid);
                }
            }
            Incoming::PubRel(pid) => {
                self.inbound_qos2.remove(&pid);
                write_ack(&mut self.out, Ack::PubComp, pid);
            }
            Incoming::PubComp(pid) => self.complete(pid, Awaiting::Comp),
            Incoming::SubAck(pid, codes) => {
                let filters = self.awaiting_suback.remove(&pid).unwrap_or_default();
                for (filter, granted) in filters.into_iter().zip(codes) {
                    if granted.is_none() {
                        warn!(client_id = %self.options.client_id, filter = %filter, "subscription refused by the broker");
                    }
                    if let Some(state) = self.subscriptions.get_mut(&filter) {
                        state.granted = Some(granted);
                    }
                    self.emit(ConnectionEvent::SubscriptionGranted { filter, granted });
                }
            }
            Incoming::UnsubAck | Incoming::PingResp => {}
            Incoming::Disconnect(code, server_reference) => {
                if !self.follow_redirect(code, server_reference.as_deref()) {
                    info!(client_id = %self.options.client_id, code, "the broker closed the connection with DISCONNECT");
                }
                return self.link_lost(ctx, LinkDown::DisconnectedByBroker(code));
            }
        }
        self.pump();
        self.flush(ctx);
        self.check_stop(ctx);
    }

    /// (3.1.1) A QoS 1/2 message from the broker over `max_packet_size`, its rest skipped by
    /// the codec: acknowledged, so that the broker does not send it again after every
    /// reconnect, and dropped; the listeners hear of it. (An MQTT 5 broker was told the
    /// maximum in CONNECT [MQTT-3.1.2-24] and sends nothing larger.)
    fn too_large_from_broker(&mut self, head: OversizedPublish) {
        warn!(client_id = %self.options.client_id, topic = %head.topic, size = head.size, max = self.options.max_packet_size, "a message from the broker over max_packet_size was acknowledged and dropped (MQTT 3.1.1 has no refusal)");
        if head.qos == QoS::ExactlyOnce {
            // Its PUBREL is answered as any other's.
            self.inbound_qos2.insert(head.pid);
            write_ack(&mut self.out, Ack::PubRec, head.pid);
        } else {
            write_ack(&mut self.out, Ack::PubAck, head.pid);
        }
        self.emit(ConnectionEvent::MessageTooLarge {
            topic: head.topic,
            size: head.size,
        });
    }

    /// MQTT 5 server redirection (section 4.11): with 0x9C Use another server or 0x9D Server
    /// moved and a Server Reference, the next attempt goes there at once (0x9D: for good, in
    /// place of the broker in use). Returns whether it is followed (not over MQTT 3.1.1, nor
    /// with a custom transport, nor with a reference that names no server, nor beyond a few
    /// redirects in a row).
    fn follow_redirect(&mut self, code: u8, server_reference: Option<&str>) -> bool {
        let (USE_ANOTHER_SERVER | SERVER_MOVED) = code else {
            return false;
        };
        if !self.options.protocol.is_v5() || matches!(self.options.transport, Transport::Custom(_))
        {
            return false;
        }
        let Some(to) = server_reference
            .and_then(|r| BrokerAddress::from_server_reference(r, self.attempt_broker.port))
        else {
            return false;
        };
        let from = self.attempt_broker.clone();
        let permanent = code == SERVER_MOVED;
        if !self.brokers.redirect(to.clone(), permanent) {
            warn!(client_id = %self.options.client_id, %from, %to, "too many redirects in a row; not followed");
            return false;
        }
        info!(client_id = %self.options.client_id, %from, %to, code, permanent, "the broker sends the connection to another server");
        true
    }
}

/// MQTT 5 reason code 0x9C Use another server.
const USE_ANOTHER_SERVER: u8 = 0x9C;
/// MQTT 5 reason code 0x9D Server moved.
const SERVER_MOVED: u8 = 0x9D;
