//! Wires the pieces together: listeners, weights loader, telemetry, gRPC and metrics servers,
//! and the shutdown sequence.

use crate::config::{Config, Telemetry};
use crate::metrics::{self, Metrics, MetricsError};
use crate::pb::inner_reward_server::InnerRewardServer;
use crate::service::InnerRewardService;
use crate::telemetry::{
    KafkaSettings, SpoolSettings, TelemetryError, TelemetryQueue, TelemetryWorker,
};
use crate::weights::{self, LoadError, WeightsStore};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

/// gRPC service name reported by the health service.
pub const SERVICE_NAME: &str = "rewardloop.v1.InnerReward";

/// Fatal errors: the server could not start, or a server loop failed.
#[derive(Debug, Error)]
pub enum AppError {
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("weights loader: {0}")]
    Weights(#[from] LoadError),
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("grpc server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("metrics server: {0}")]
    MetricsServer(std::io::Error),
}

/// A server whose ports are bound but which is not serving yet.
pub struct App {
    config: Config,
    grpc: TcpListener,
    http: TcpListener,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { what, addr, source })
}

impl App {
    /// Binds the gRPC and metrics ports (port 0 picks a free one).
    pub async fn bind(config: Config) -> Result<Self, AppError> {
        let grpc = bind("grpc", config.grpc_addr).await?;
        let http = bind("metrics", config.metrics_addr).await?;
        Ok(Self { config, grpc, http })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.config.grpc_addr)
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.http.local_addr().unwrap_or(self.config.metrics_addr)
    }

    /// Serves until `shutdown` completes, then: health NOT_SERVING, stop accepting and finish
    /// in-flight calls, publish the queued events, flush Kafka (bounded), return.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let App { config, grpc, http } = self;
        let grpc_addr = grpc.local_addr().unwrap_or(config.grpc_addr);
        let metrics_addr = http.local_addr().unwrap_or(config.metrics_addr);
        let metrics = Arc::new(Metrics::new()?);

        // One shutdown broadcast for every task.
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });

        let store = Arc::new(WeightsStore::new());
        for (segment, version) in store.versions() {
            metrics
                .weights_version
                .with_label_values(&[segment.as_str()])
                .set(i64::try_from(version).unwrap_or(i64::MAX));
        }
        let loaders = weights::spawn(
            &config.redis_url,
            Duration::from_secs(config.weights_poll_seconds),
            Arc::clone(&store),
            Arc::clone(&metrics),
            stop_rx.clone(),
        )?;

        let (queue, worker) = match config.telemetry {
            Telemetry::Off => (None, None),
            Telemetry::On => {
                let (queue, rx) = TelemetryQueue::new(
                    usize::try_from(config.queue_capacity).unwrap_or(usize::MAX),
                    Arc::clone(&metrics),
                );
                let worker = TelemetryWorker::start(
                    KafkaSettings {
                        bootstrap_servers: config.kafka_bootstrap_servers.clone(),
                        topic: config.kafka_topic_reward_raw.clone(),
                        flush_timeout: Duration::from_secs(config.shutdown_flush_seconds),
                    },
                    spool_settings(&config, grpc_addr),
                    rx,
                    Arc::clone(&metrics),
                )?;
                (Some(queue), Some(worker))
            }
        };

        let service = InnerRewardService::new(
            Arc::clone(&store),
            queue,
            Arc::clone(&metrics),
            usize::try_from(config.max_slate).unwrap_or(usize::MAX),
        );

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_service_status("", ServingStatus::Serving).await;
        health
            .set_service_status(SERVICE_NAME, ServingStatus::Serving)
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;

        // Metrics / liveness over HTTP; stops with the same broadcast.
        let mut http_stop = stop_rx.clone();
        let http_serve = axum::serve(http, metrics::router(Arc::clone(&metrics)))
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            });
        let http_server = tokio::spawn(async move { http_serve.await });

        tracing::info!(
            %grpc_addr,
            %metrics_addr,
            kafka = %config.kafka_bootstrap_servers,
            topic = %config.kafka_topic_reward_raw,
            redis = %redact(&config.redis_url),
            queue_capacity = config.queue_capacity,
            max_slate = config.max_slate,
            telemetry = ?config.telemetry,
            "inner-reward-rs serving"
        );

        let mut grpc_stop = stop_rx.clone();
        let grpc_health = health.clone();
        let served = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(InnerRewardServer::new(service))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(grpc).with_nodelay(Some(true)),
                async move {
                    let _ = grpc_stop.wait_for(|s| *s).await;
                    tracing::info!("shutting down: health NOT_SERVING, no new calls");
                    grpc_health
                        .set_service_status("", ServingStatus::NotServing)
                        .await;
                    grpc_health
                        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                        .await;
                },
            )
            .await;
        tracing::info!("grpc server stopped; draining the event queue");

        if let Some(worker) = worker {
            worker.shutdown().await;
        }
        for task in loaders {
            task.abort();
        }
        let http_result = match http_server.await {
            Ok(r) => r.map_err(AppError::MetricsServer),
            Err(e) => {
                tracing::error!(error = %e, "metrics server task failed");
                Ok(())
            }
        };
        served?;
        http_result?;
        tracing::info!("inner-reward-rs stopped");
        Ok(())
    }
}

/// The spool directory: the configured one, else one per gRPC port under the temp dir (a
/// throw-away one per process and server when the port is 0, removed when left empty).
fn spool_settings(config: &Config, grpc_addr: SocketAddr) -> SpoolSettings {
    static SERVERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (dir, remove_when_empty) = match &config.spool_dir {
        Some(d) => (d.clone(), false),
        None if config.grpc_addr.port() == 0 => {
            let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (
                std::env::temp_dir().join(format!(
                    "rewardloop-inner-reward-spool-pid{}-{n}",
                    std::process::id()
                )),
                true,
            )
        }
        None => (
            std::env::temp_dir().join(format!(
                "rewardloop-inner-reward-spool-{}",
                grpc_addr.port()
            )),
            false,
        ),
    };
    SpoolSettings {
        dir,
        max_bytes: config.spool_max_bytes,
        segment_bytes: 64 * 1024 * 1024,
        max_in_flight: usize::try_from(config.kafka_max_in_flight).unwrap_or(usize::MAX),
        remove_when_empty,
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Completes on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("redis://u:secret@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact("redis://:secret@h:6379"), "redis://:***@h:6379");
    }
}
