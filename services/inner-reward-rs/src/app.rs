//! Wires the pieces together: listeners, weights loader, telemetry, gRPC and metrics servers,
//! and the shutdown sequence.

use crate::affinity::{self, CpuList};
use crate::config::{Config, Telemetry};
use crate::guardrail::Guardrail;
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
use std::time::{Duration, Instant};
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
    #[error("reading TLS {what} {path}: {source}")]
    TlsFile {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A server whose ports are bound but which is not serving yet.
pub struct App {
    config: Config,
    grpc: TcpListener,
    http: TcpListener,
    /// Certificate chain and key (PEM) when gRPC is served over TLS.
    tls: Option<tonic::transport::Identity>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { what, addr, source })
}

impl App {
    /// Binds the gRPC and metrics ports (port 0 picks a free one).
    pub async fn bind(config: Config) -> Result<Self, AppError> {
        let read = |what: &'static str, path: &std::path::PathBuf| {
            std::fs::read(path).map_err(|source| AppError::TlsFile {
                what,
                path: path.clone(),
                source,
            })
        };
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tonic::transport::Identity::from_pem(
                read("certificate", cert)?,
                read("key", key)?,
            )),
            _ => None,
        };
        let grpc = bind("grpc", config.grpc_addr).await?;
        let http = bind("metrics", config.metrics_addr).await?;
        Ok(Self {
            config,
            grpc,
            http,
            tls,
        })
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
        let App {
            config,
            grpc,
            http,
            tls,
        } = self;
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
            metrics.set_weights(&segment, version, &store.get(&segment).weights);
        }
        // Before the loaders start: they may set it first.
        metrics
            .exploration_version
            .with_label_values(&[crate::scoring::DEFAULT_SEGMENT])
            .set(0);
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
                    config.telemetry_cpus.clone(),
                )?;
                (Some(queue), Some(worker))
            }
        };

        let guardrail = Arc::new(Guardrail::new(
            Duration::from_secs(config.latency_window_seconds),
            Duration::from_millis(config.latency_budget_ms),
            GUARDRAIL_MIN_SAMPLES,
            Instant::now(),
        ));
        let guardrail_task = tokio::spawn(guardrail_loop(
            Arc::clone(&guardrail),
            Arc::clone(&metrics),
            stop_rx.clone(),
        ));

        let service = InnerRewardService::new(
            Arc::clone(&store),
            queue,
            Arc::clone(&metrics),
            guardrail,
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
            tls = config.tls_cert.is_some(),
            "inner-reward-rs serving"
        );

        let mut grpc_stop = stop_rx.clone();
        let grpc_health = health.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(identity) = tls {
            builder =
                builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
        }
        let served = builder
            .layer(tower::util::MapResponseLayer::new(
                oversized_is_resource_exhausted,
            ))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                InnerRewardServer::new(service)
                    .max_decoding_message_size(config.max_message_bytes as usize),
            )
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
        guardrail_task.abort();
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

/// Fewest calls in the guardrail's window for a verdict (a quiet server is never degraded).
const GUARDRAIL_MIN_SAMPLES: u64 = 200;

/// Ticks the guardrail every second, mirrors it into the metrics and logs state changes.
async fn guardrail_loop(
    guardrail: Arc<Guardrail>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = ticker.tick() => {}
        }
        let e = guardrail.tick(Instant::now());
        metrics
            .handler_latency_p99
            .set(e.p99.map_or(0.0, |p| p.as_secs_f64()));
        metrics.guardrail_active.set(i64::from(e.active));
        if e.changed && e.active {
            metrics.guardrail_activations.inc();
            tracing::warn!(
                p99_ms = e.p99.map_or(0.0, |p| p.as_secs_f64() * 1e3),
                budget_ms = guardrail.budget().as_secs_f64() * 1e3,
                calls_in_window = e.samples,
                "degraded: handler P99 over the latency budget; shedding reward-quality metrics (still serving)"
            );
        } else if e.changed {
            tracing::info!(
                p99_ms = e.p99.map_or(0.0, |p| p.as_secs_f64() * 1e3),
                "handler P99 back under the latency budget; guardrail off"
            );
        }
    }
}

/// How the server's tokio runtime is built (see `Config::worker_threads`, `Config::serving_cpus`).
#[derive(Debug, Clone, Default)]
pub struct RuntimeSettings {
    /// 0: one worker per CPU this process may use (after pinning); 1: a `current_thread`
    /// runtime (everything on the main thread); n > 1: a multi-thread runtime with n workers.
    pub worker_threads: usize,
    /// Pin the main thread, hence every runtime thread, to these CPUs.
    pub serving_cpus: Option<CpuList>,
}

impl RuntimeSettings {
    /// From `INNER_REWARD_WORKER_THREADS` and `INNER_REWARD_SERVING_CPUS` (for the benchmark's
    /// empty server, which has no flags).
    pub fn from_env() -> Result<Self, String> {
        let worker_threads = match std::env::var("INNER_REWARD_WORKER_THREADS") {
            Ok(v) => v
                .parse()
                .map_err(|_| format!("INNER_REWARD_WORKER_THREADS={v:?} is not a number"))?,
            Err(_) => 0,
        };
        let serving_cpus = match std::env::var("INNER_REWARD_SERVING_CPUS") {
            Ok(v) => Some(
                v.parse()
                    .map_err(|e| format!("INNER_REWARD_SERVING_CPUS: {e}"))?,
            ),
            Err(_) => None,
        };
        Ok(Self {
            worker_threads,
            serving_cpus,
        })
    }

    /// Pins the calling thread (when asked) and builds the runtime.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        if let Some(cpus) = &self.serving_cpus {
            affinity::pin_current_thread(cpus)?;
        }
        let workers = match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        if workers == 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
        }
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

/// tonic refuses a request bigger than `max_decoding_message_size` with OUT_OF_RANGE ("Error,
/// decoded message length too large: found N bytes, the limit is: M bytes"); gRPC's own
/// implementations (and clients' retry policies) use RESOURCE_EXHAUSTED for that, so the
/// answer is rewritten to RESOURCE_EXHAUSTED with a message that names the setting.
fn oversized_is_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    const MARK: &str = "decoded%20message%20length%20too%20large";
    let headers = response.headers();
    let is_oversized = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| m.contains(MARK));
    if !is_oversized {
        return response;
    }
    let original = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default();
    let decoded = percent_decode(original);
    let numbers: Vec<&str> = decoded
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .collect();
    let message = match numbers.as_slice() {
        [found, limit, ..] => format!(
            "request message of {found} bytes is larger than INNER_REWARD_MAX_MESSAGE_BYTES ({limit} bytes); split the slate or raise the limit"
        ),
        _ => "request message larger than INNER_REWARD_MAX_MESSAGE_BYTES".to_owned(),
    };
    let headers = response.headers_mut();
    headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    if let Ok(v) = http::HeaderValue::from_str(&message) {
        headers.insert("grpc-message", v);
    }
    response
}

/// Decodes the `%XX` escapes of a `grpc-message` (anything malformed is kept as is).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
    fn decodes_grpc_messages() {
        assert_eq!(
            super::percent_decode("found%205064%20bytes,%20100%25"),
            "found 5064 bytes, 100%"
        );
        assert_eq!(super::percent_decode("50%"), "50%");
        assert_eq!(super::percent_decode("%zz"), "%zz");
    }

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
