//! `rewardloop-empty-server`: the benchmark's baseline. The same `rewardloop.v1.InnerReward`
//! proto and the same tonic server and runtime settings as the scorer (TCP_NODELAY, the
//! runtime of `INNER_REWARD_WORKER_THREADS` / `INNER_REWARD_SERVING_CPUS`), but every call returns a constant: no validation, no weights, no telemetry. The
//! scorer's latency is compared against this in the same run (`scripts/bench_scorer.sh`).
//!
//! Usage: `rewardloop-empty-server [ADDR]` (default `127.0.0.1:50061`); stops on SIGINT/SIGTERM.

use inner_reward_rs::pb::inner_reward_server::{InnerReward, InnerRewardServer};
use inner_reward_rs::pb::{
    GetConfigRequest, GetConfigResponse, Reward, RewardParts, ScoreActionRequest,
    ScoreActionResponse, ScoreSlateRequest, ScoreSlateResponse,
};
use std::net::SocketAddr;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

struct Empty;

fn constant(event_id: String) -> Reward {
    Reward {
        event_id,
        value: 1.0,
        raw_value: 1.0,
        parts: Some(RewardParts {
            click: 1.0,
            dwell: 0.0,
            skip: 0.0,
            relevance: 0.0,
        }),
        weights_version: 0,
        segment: "default".into(),
        explore_action: None,
        explore_probability: None,
        exploration_version: None,
    }
}

#[tonic::async_trait]
impl InnerReward for Empty {
    async fn score_action(
        &self,
        request: Request<ScoreActionRequest>,
    ) -> Result<Response<ScoreActionResponse>, Status> {
        let id = request
            .into_inner()
            .feedback
            .map(|f| f.event_id)
            .unwrap_or_default();
        Ok(Response::new(ScoreActionResponse {
            reward: Some(constant(id)),
        }))
    }

    async fn score_slate(
        &self,
        request: Request<ScoreSlateRequest>,
    ) -> Result<Response<ScoreSlateResponse>, Status> {
        let rewards = request
            .into_inner()
            .feedbacks
            .into_iter()
            .map(|f| constant(f.event_id))
            .collect();
        Ok(Response::new(ScoreSlateResponse { rewards }))
    }

    async fn get_config(
        &self,
        _: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        Ok(Response::new(GetConfigResponse::default()))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50061".into())
        .parse()?;
    // The same runtime as the scorer's (INNER_REWARD_WORKER_THREADS, INNER_REWARD_SERVING_CPUS).
    let runtime = inner_reward_rs::app::RuntimeSettings::from_env()?;
    runtime.build()?.block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "rewardloop-empty-server listening on {}",
        listener.local_addr()?
    );
    tonic::transport::Server::builder()
        .add_service(InnerRewardServer::new(Empty))
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            inner_reward_rs::app::shutdown_signal(),
        )
        .await?;
    Ok(())
}
