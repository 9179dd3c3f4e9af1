//! What the broker sends the connection: CONNACK, deliveries (acknowledged, QoS 2 exactly once),
//! acknowledgements of its own publishes, SUBACK, and a server DISCONNECT.

use actix::prelude::*;
use tracing::{info, warn};

use switchboard_mqtt::codec::{write_ack, Ack};
use switchboard_mqtt::QoS;

use super::{Awaiting, Link, ManagedConnection};
use crate::codec::Incoming;
use crate::events::{ConnectFailure, ConnectionEvent, LinkDown, PendingAck, Received};

impl ManagedConnection {
    pub(super) fn on_packet(&mut self, ctx: &mut Context<Self>, packet: Incoming) {
        match packet {
            Incoming::ConnAck {
                session_present,
                code,
                maximum_packet_size,
            } => {
                // [MQTT-3.2.2-15] nothing larger than this goes to the broker.
                self.server_max_packet = maximum_packet_size.map(|m| m as usize);
                if !matches!(self.link, Link::AwaitingConnAck { .. }) {
                    return self.link_lost(ctx, LinkDown::Protocol("unexpected CONNACK".into()));
                }
                if code == 0 {
                    self.on_connected(ctx, session_present);
                } else {
                    warn!(client_id = %self.options.client_id, code, "broker refused the connection");
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
            Incoming::Disconnect(code) => {
                info!(client_id = %self.options.client_id, code, "the broker closed the connection with DISCONNECT");
                return self.link_lost(ctx, LinkDown::DisconnectedByBroker(code));
            }
        }
        self.pump();
        self.flush(ctx);
        self.check_stop(ctx);
    }
}
