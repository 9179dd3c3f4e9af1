//! The radar detector: answers status requests and reports vehicle detections periodically.

use std::time::Duration;

use switchboard_mqtt::QoS;

use super::{
    answer_status, detection_topic, state_topic, status_request_topic, Detection, RadarStatus,
};
use crate::device::{Device, Outbox};
use crate::events::Received;

/// A vehicle radar.
#[derive(Debug, Clone)]
pub struct RadarDetector {
    id: String,
    period: Duration,
    detections: u64,
    rng: fastrand::Rng,
}

impl RadarDetector {
    /// A radar with this id reporting one detection every `period`.
    pub fn new(id: impl Into<String>, period: Duration) -> Self {
        RadarDetector {
            id: id.into(),
            period,
            detections: 0,
            rng: fastrand::Rng::new(),
        }
    }
}

impl RadarDetector {
    fn status(&self) -> RadarStatus {
        RadarStatus {
            device: self.id.clone(),
            healthy: true,
            detections: self.detections,
        }
    }
}

impl Device for RadarDetector {
    fn subscriptions(&self) -> Vec<(String, QoS)> {
        vec![(status_request_topic(&self.id), QoS::AtLeastOnce)]
    }

    fn on_message(&mut self, message: &Received, out: &mut Outbox) {
        answer_status(&self.id, message, &self.status(), out);
    }

    fn on_connected(&mut self, out: &mut Outbox) {
        // Announce the radar (retained), after its subscriptions on the same connection.
        match serde_json::to_vec(&self.status()) {
            Ok(json) => out.publish_retained(state_topic(&self.id), json, QoS::AtLeastOnce),
            Err(e) => tracing::warn!(error = %e, "cannot encode radar state"),
        }
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(self.period)
    }

    fn on_tick(&mut self, out: &mut Outbox) {
        self.detections += 1;
        let detection = Detection {
            device: self.id.clone(),
            sequence: self.detections,
            speed_kmh: self.rng.u32(5..=40),
            length_cm: self.rng.u32(350..=1200),
        };
        out.publish_json(detection_topic(&self.id), &detection, QoS::AtMostOnce);
    }
}
