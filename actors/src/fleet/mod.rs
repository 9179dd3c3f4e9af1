//! The first users' devices: a parking-gate barrier and a vehicle radar, their topics and JSON
//! payloads. Ids look like `1AB.ENTER.DETRD`: lane, direction, device kind.

mod gate;
mod radar;

pub use gate::GateBarrier;
pub use radar::RadarDetector;

use serde::{Deserialize, Serialize};
use switchboard_mqtt::{MessageProperties, QoS};

use crate::connection::Enqueue;
use crate::device::Outbox;
use crate::events::Received;
use crate::request::{Envelope, Request};

/// Where the app asks device `id` for its status.
pub fn status_request_topic(id: &str) -> String {
    format!("detrd/status/request/{id}")
}

/// Where device `id` answers status requests.
pub fn status_response_topic(id: &str) -> String {
    format!("detrd/status/response/{id}")
}

/// Where the app sends commands to device `id`.
pub fn command_topic(id: &str) -> String {
    format!("detrd/command/{id}")
}

/// Where device `id` reports its state (retained).
pub fn state_topic(id: &str) -> String {
    format!("detrd/state/{id}")
}

/// Where a radar reports detections.
pub fn detection_topic(id: &str) -> String {
    format!("detrd/detection/{id}")
}

/// Position of a gate barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BarrierState {
    /// Raised: vehicles pass.
    Open,
    /// Lowered.
    Closed,
}

/// A command to a gate barrier (payload of [`command_topic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum GateCommand {
    /// Raise the barrier.
    Open,
    /// Lower the barrier.
    Close,
}

/// A gate barrier's status and state report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateStatus {
    /// Device id.
    pub device: String,
    /// Position.
    pub state: BarrierState,
    /// Commands executed since start.
    pub commands: u64,
}

/// A radar's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RadarStatus {
    /// Device id.
    pub device: String,
    /// Self-test result.
    pub healthy: bool,
    /// Vehicles detected since start.
    pub detections: u64,
}

/// One vehicle seen by a radar (payload of [`detection_topic`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detection {
    /// Device id.
    pub device: String,
    /// Running number.
    pub sequence: u64,
    /// Measured speed.
    pub speed_kmh: u32,
    /// Measured vehicle length.
    pub length_cm: u32,
}

/// A status request to device `id`, answered on its response topic.
pub fn status_request(id: &str) -> Request {
    Request::new(status_request_topic(id), serde_json::json!({}))
        .answer_on(status_response_topic(id))
}

/// Answers a status request, copying the request's correlation id (a request that is not a JSON
/// envelope, e.g. a plain `mosquitto_pub -m data`, is answered too, without one). An MQTT 5
/// request's Response Topic and Correlation Data are honoured: the answer goes to that topic
/// with that data (section 4.10); otherwise it goes to the device's response topic.
pub fn answer_status<T: Serialize>(id: &str, request: &Received, status: &T, out: &mut Outbox) {
    let correlation_id = serde_json::from_slice::<Envelope>(&request.payload)
        .ok()
        .and_then(|e| e.correlation_id);
    let body = serde_json::to_value(status).unwrap_or_default();
    let payload = serde_json::to_vec(&Envelope {
        correlation_id,
        body,
    })
    .unwrap_or_default();
    let props = request.properties.as_ref();
    let topic = props
        .and_then(|p| p.response_topic.clone())
        .unwrap_or_else(|| status_response_topic(id));
    let mut answer = Enqueue::new(topic, payload, QoS::AtLeastOnce);
    if let Some(data) = props.and_then(|p| p.correlation_data.clone()) {
        answer = answer.with_properties(MessageProperties {
            payload_format: Some(1),
            content_type: Some("application/json".into()),
            correlation_data: Some(data),
            ..MessageProperties::default()
        });
    }
    out.push(answer);
}
