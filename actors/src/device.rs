//! The Device pattern: a device model is a struct implementing [`Device`]; [`DeviceActor`] gives it
//! its own managed connection, subscribes to what it declares, and publishes what it puts in its
//! [`Outbox`].

use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use serde::Serialize;
use switchboard_mqtt::QoS;
use tracing::warn;

use crate::connection::{Enqueue, ManagedConnection, Subscribe};
use crate::events::{ConnectionEvent, Received};
use crate::options::ConnectionOptions;

/// What a device publishes in answer to a message or a tick.
#[derive(Debug, Default)]
pub struct Outbox {
    messages: Vec<Enqueue>,
}

impl Outbox {
    /// Publishes raw bytes.
    pub fn publish(&mut self, topic: impl Into<String>, payload: impl Into<Bytes>, qos: QoS) {
        self.messages.push(Enqueue::new(topic, payload, qos));
    }

    /// Publishes a retained message (e.g. a device's current state).
    pub fn publish_retained(
        &mut self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
    ) {
        let mut message = Enqueue::new(topic, payload, qos);
        message.retain = true;
        self.messages.push(message);
    }

    /// Publishes `value` as JSON.
    pub fn publish_json<T: Serialize>(&mut self, topic: impl Into<String>, value: &T, qos: QoS) {
        match serde_json::to_vec(value) {
            Ok(json) => self.publish(topic, json, qos),
            Err(e) => warn!(error = %e, "cannot encode JSON payload; not published"),
        }
    }

    /// Publishes a message built in full (e.g. with MQTT 5 properties).
    pub fn push(&mut self, message: Enqueue) {
        self.messages.push(message);
    }

    /// Takes the messages out.
    pub fn take(&mut self) -> Vec<Enqueue> {
        std::mem::take(&mut self.messages)
    }
}

/// A device model. Implement it on a plain struct; [`DeviceActor::start`] runs it.
///
/// ```
/// use std::time::Duration;
/// use switchboard_actors::fleet::{answer_status, status_request_topic};
/// use switchboard_actors::{Device, Outbox, QoS, Received};
///
/// /// A ticket printer: answers status requests, prints on command, reports its paper level.
/// struct TicketPrinter {
///     id: String,
///     paper_left: u32,
/// }
///
/// impl Device for TicketPrinter {
///     fn subscriptions(&self) -> Vec<(String, QoS)> {
///         vec![
///             (status_request_topic(&self.id), QoS::AtLeastOnce),
///             (format!("detrd/print/{}", self.id), QoS::AtLeastOnce),
///         ]
///     }
///
///     fn on_message(&mut self, message: &Received, out: &mut Outbox) {
///         if message.topic == status_request_topic(&self.id) {
///             let status = serde_json::json!({ "device": self.id, "paper_left": self.paper_left });
///             answer_status(&self.id, message, &status, out);
///         } else {
///             self.paper_left = self.paper_left.saturating_sub(1);
///         }
///     }
///
///     fn tick_interval(&self) -> Option<Duration> {
///         Some(Duration::from_secs(60))
///     }
///
///     fn on_tick(&mut self, out: &mut Outbox) {
///         out.publish_json(format!("detrd/paper/{}", self.id), &self.paper_left, QoS::AtMostOnce);
///     }
/// }
///
/// // Without a broker: feed it a status request and look at what it would publish.
/// let mut printer = TicketPrinter { id: "1AB.PRINTER".into(), paper_left: 3 };
/// let mut out = Outbox::default();
/// let request = Received {
///     topic: status_request_topic("1AB.PRINTER"),
///     payload: r#"{"correlation_id":"c-1","body":{}}"#.into(),
///     qos: QoS::AtLeastOnce,
///     retain: false,
///     properties: None,
///     expiry: None,
/// };
/// printer.on_message(&request, &mut out);
/// let sent = out.take();
/// assert_eq!(sent[0].topic, "detrd/status/response/1AB.PRINTER");
/// assert!(String::from_utf8_lossy(&sent[0].payload).contains(r#""correlation_id":"c-1""#));
/// ```
///
/// With a broker: `DeviceActor::start(printer, ConnectionOptions::new("127.0.0.1", 1883,
/// "1AB.PRINTER"))`. `docs/devices.md` walks through it.
pub trait Device: Unpin + 'static {
    /// The filters the device listens to, with the QoS to ask for.
    fn subscriptions(&self) -> Vec<(String, QoS)>;

    /// A message arrived on one of them; answer through `out`.
    fn on_message(&mut self, message: &Received, out: &mut Outbox);

    /// How often [`Device::on_tick`] runs; `None` for never (the default).
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Periodic work, e.g. reporting a measurement.
    fn on_tick(&mut self, _out: &mut Outbox) {}

    /// The connection came up (after a reconnect as well): e.g. publish the current state.
    fn on_connected(&mut self, _out: &mut Outbox) {}
}

/// Runs a [`Device`] on its own [`ManagedConnection`].
pub struct DeviceActor<D: Device> {
    device: D,
    connection_options: Option<ConnectionOptions>,
    connection: Option<Addr<ManagedConnection>>,
}

impl<D: Device> DeviceActor<D> {
    /// Starts `device` with a connection built from `options` (its client id is the device's).
    pub fn start(device: D, options: ConnectionOptions) -> Addr<Self> {
        DeviceActor {
            device,
            connection_options: Some(options),
            connection: None,
        }
        .start()
    }

    fn send(&self, mut out: Outbox) {
        if let Some(connection) = &self.connection {
            for message in out.take() {
                connection.do_send(message);
            }
        }
    }
}

impl<D: Device> Actor for DeviceActor<D> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(options) = self.connection_options.take() else {
            return;
        };
        let me = ctx.address().recipient();
        let connection = ManagedConnection::start_with(options, vec![me]);
        for (filter, qos) in self.device.subscriptions() {
            connection.do_send(Subscribe { filter, qos });
        }
        self.connection = Some(connection);
        if let Some(every) = self.device.tick_interval() {
            ctx.run_interval(every, |act, _| {
                let mut out = Outbox::default();
                act.device.on_tick(&mut out);
                act.send(out);
            });
        }
    }
}

impl<D: Device> Handler<ConnectionEvent> for DeviceActor<D> {
    type Result = ();

    fn handle(&mut self, event: ConnectionEvent, _: &mut Context<Self>) {
        let mut out = Outbox::default();
        match event {
            ConnectionEvent::MessageReceived(received) => {
                self.device.on_message(&received, &mut out)
            }
            ConnectionEvent::Connected { .. } => self.device.on_connected(&mut out),
            _ => return,
        }
        self.send(out);
    }
}

/// Sent by anyone to a [`DeviceActor`]: its connection, e.g. to read `PendingCount` or `Stop` it.
#[derive(Message)]
#[rtype(result = "Option<Addr<ManagedConnection>>")]
pub struct GetConnection;

impl<D: Device> Handler<GetConnection> for DeviceActor<D> {
    type Result = Option<Addr<ManagedConnection>>;

    fn handle(&mut self, _: GetConnection, _: &mut Context<Self>) -> Self::Result {
        self.connection.clone()
    }
}
