//! The gate barrier: answers status requests, takes open/close commands, reports its state.

use switchboard_mqtt::QoS;
use tracing::{info, warn};

use super::{
    answer_status, command_topic, state_topic, status_request_topic, BarrierState, GateCommand,
    GateStatus,
};
use crate::device::{Device, Outbox};
use crate::events::Received;

/// A parking-gate barrier.
#[derive(Debug, Clone)]
pub struct GateBarrier {
    id: String,
    state: BarrierState,
    commands: u64,
}

impl GateBarrier {
    /// A closed barrier with this id.
    pub fn new(id: impl Into<String>) -> Self {
        GateBarrier {
            id: id.into(),
            state: BarrierState::Closed,
            commands: 0,
        }
    }

    fn status(&self) -> GateStatus {
        GateStatus {
            device: self.id.clone(),
            state: self.state,
            commands: self.commands,
        }
    }

    fn report_state(&self, out: &mut Outbox) {
        match serde_json::to_vec(&self.status()) {
            Ok(json) => out.publish_retained(state_topic(&self.id), json, QoS::AtLeastOnce),
            Err(e) => warn!(error = %e, "cannot encode gate state"),
        }
    }
}

impl Device for GateBarrier {
    fn subscriptions(&self) -> Vec<(String, QoS)> {
        vec![
            (status_request_topic(&self.id), QoS::AtLeastOnce),
            (command_topic(&self.id), QoS::AtLeastOnce),
        ]
    }

    fn on_message(&mut self, message: &Received, out: &mut Outbox) {
        if message.topic == status_request_topic(&self.id) {
            return answer_status(&self.id, message, &self.status(), out);
        }
        match serde_json::from_slice::<GateCommand>(&message.payload) {
            Ok(command) => {
                self.commands += 1;
                self.state = match command {
                    GateCommand::Open => BarrierState::Open,
                    GateCommand::Close => BarrierState::Closed,
                };
                info!(device = %self.id, state = ?self.state, "gate moved");
                self.report_state(out);
            }
            Err(e) => warn!(device = %self.id, error = %e, "unknown gate command ignored"),
        }
    }

    fn on_connected(&mut self, out: &mut Outbox) {
        self.report_state(out);
    }
}
