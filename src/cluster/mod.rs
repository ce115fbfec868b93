//! More than one node (PROTOCOL.md 6.6, `[cluster]`): the nodes share a PostgreSQL store
//! and a NATS server with JetStream, and write no cluster protocol of their own.
//!
//! - [`config`]: the `[cluster]` section (parsed in every build).
//! - [`node`]: the connection, the stream and bucket names, heartbeats in a JetStream
//!   key-value bucket and the list of live nodes (`GET /v1/cluster`), readiness.
//! - [`bus`]: every session's frames on a JetStream stream (a subject per tenant and
//!   session), written by the node running the session's run with an
//!   expected-last-subject-sequence guard, and followed from any node.
//!
//! Runs of a node whose heartbeat stops are taken over by the others from their last stored
//! turn (`Core::take_over_runs`).

pub mod config;

#[cfg(feature = "nats")]
pub mod bus;
#[cfg(feature = "nats")]
pub mod node;

#[cfg(feature = "nats")]
pub use node::{Cluster, ClusterError, NodeInfo};
