//! Clustering on NATS (`[cluster]`): several Switchboard nodes behind one name, each client
//! connected to any of them, their traffic shared through NATS servers.
//!
//! Each node runs one [`ClusterLink`] (`link.rs`): an in-process client of its own broker that
//! reads what this node's clients publish and publishes what the other nodes send, and a NATS
//! connection ([`nats`]) that carries it. NATS routes by interest: a node subscribes to the
//! subjects of its clients' filters ([`subjects`]), so a message only goes to the nodes that
//! have a subscriber for it. Retained messages go to every node; a starting node takes them
//! from one that runs. `docs/clustering.md` covers what is shared and what stays on a node.

mod asked;
mod barrier;
mod cleared;
mod config;
mod envelope;
mod full_announcement;
mod interest;
mod link;
mod liveness;
pub mod nats;
mod remote;
mod status;
pub mod subjects;

pub use config::ClusterConfig;
pub use envelope::{ClusterMessage, Envelope, EnvelopeError};
pub use link::{ClusterEnvironment, ClusterLink, StopCluster, CLUSTER_CLIENT_ID};
pub use status::{ClusterSnapshot, ClusterStatus, ClusterView};
