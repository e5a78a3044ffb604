//! rewardloop inner-reward scorer.
//!
//! A tonic gRPC service that scores immediate feedback on served items with per-segment weights
//! hot-reloaded from Redis, and publishes every scored action to Kafka (`recsys.reward.raw`).
//! Contracts (names, keys, ports, record shapes) live in `docs/architecture.md`.

pub mod affinity;
pub mod app;
pub mod config;
pub mod exploration;
pub mod guardrail;
pub mod logging;
pub mod metrics;
pub mod scoring;
pub mod service;
pub mod spool;
pub mod telemetry;
#[doc(hidden)]
pub mod test_support;
pub mod weights;

/// Generated `rewardloop.v1` messages, server and client.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("rewardloop.v1");

    /// Encoded file descriptor set of `rewardloop/v1/inner_reward.proto`, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("rewardloop_v1_descriptor");
}
