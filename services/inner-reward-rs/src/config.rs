//! Command-line flags, each also readable from the environment variable named in
//! `docs/architecture.md` (the flag wins over the variable).

use crate::affinity::CpuList;
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Telemetry switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Telemetry {
    /// Publish every scored action to Kafka (spooling to disk when Kafka is slow or down).
    On,
    /// Publish nothing (benchmarks; a scorer whose output nobody consumes).
    Off,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Console,
    /// One JSON object per line.
    Json,
}

/// rewardloop inner-reward scorer: scores immediate feedback over gRPC with weights
/// hot-reloaded from Redis, and publishes every scored action to Kafka.
#[derive(Debug, Clone, Parser)]
#[command(name = "inner-reward-rs", version, about, long_about = None)]
pub struct Config {
    /// Kafka bootstrap servers (comma-separated host:port) for the reward topic.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_bootstrap_servers: String,

    /// Kafka topic that receives one JSON record per scored action (key: user_id).
    #[arg(
        long,
        env = "KAFKA_TOPIC_REWARD_RAW",
        default_value = "recsys.reward.raw"
    )]
    pub kafka_topic_reward_raw: String,

    /// Redis URL holding the weights documents (`rewardloop:weights:<segment>`) and the
    /// `rewardloop:weights-updates` channel. If Redis is down the scorer serves built-in
    /// defaults and keeps retrying.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/0")]
    pub redis_url: String,

    /// Address the gRPC server (InnerReward, grpc.health.v1, reflection v1) listens on.
    #[arg(
        long,
        env = "INNER_REWARD_GRPC_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server for Prometheus (`GET /metrics`) and liveness (`GET /healthz`).
    #[arg(
        long,
        env = "INNER_REWARD_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_addr: SocketAddr,

    /// Capacity (records) of the lock-free in-memory queue between the gRPC handlers and the
    /// Kafka/spool worker. When it is full the call fails with UNAVAILABLE and is counted in
    /// rewardloop_inner_events_dropped_total: an accepted event is never dropped.
    #[arg(long, env = "INNER_REWARD_QUEUE_CAPACITY", default_value_t = 65536,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub queue_capacity: u32,

    /// Largest accepted slate in ScoreSlate; larger requests get INVALID_ARGUMENT.
    #[arg(long, env = "INNER_REWARD_MAX_SLATE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_slate: u32,

    /// Seconds between full re-reads of all weights documents (safety net for missed
    /// pub/sub messages); also the Redis reconnect interval.
    #[arg(long, env = "INNER_REWARD_WEIGHTS_POLL_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub weights_poll_seconds: u64,

    /// Longest wait, in seconds, for Kafka to acknowledge queued events at shutdown.
    #[arg(long, env = "INNER_REWARD_SHUTDOWN_FLUSH_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=600))]
    pub shutdown_flush_seconds: u64,

    /// Directory of the disk spool that holds scored actions while Kafka is slow or down (and
    /// across restarts; replayed in order). One scorer per directory (a lock file enforces it).
    /// Default: `<tmp>/rewardloop-inner-reward-spool-<grpc port>` (a throw-away directory per
    /// process when the port is 0).
    #[arg(long, env = "INNER_REWARD_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Most bytes the disk spool may hold; when it is full the in-memory queue fills up and calls
    /// are refused with UNAVAILABLE.
    #[arg(long, env = "INNER_REWARD_SPOOL_MAX_BYTES", default_value_t = 1 << 30,
          value_parser = clap::value_parser!(u64).range(4096..))]
    pub spool_max_bytes: u64,

    /// Records handed to the Kafka producer and not yet acknowledged above which new events go
    /// to the disk spool instead (also: no acknowledgement for 2 s while records are in flight).
    #[arg(long, env = "INNER_REWARD_KAFKA_MAX_IN_FLIGHT", default_value_t = 200_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub kafka_max_in_flight: u32,

    /// `on`: publish every scored action to Kafka; `off`: publish nothing.
    #[arg(long, env = "INNER_REWARD_TELEMETRY", value_enum, default_value = "on")]
    pub telemetry: Telemetry,

    /// PEM certificate chain for gRPC over TLS (with INNER_REWARD_TLS_KEY; both or neither).
    /// Unset: plaintext gRPC (loopback / inside a mesh that terminates TLS).
    #[arg(long, env = "INNER_REWARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of INNER_REWARD_TLS_CERT.
    #[arg(long, env = "INNER_REWARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Largest accepted request message (bytes, after decompression); larger calls get
    /// RESOURCE_EXHAUSTED before anything is decoded.
    #[arg(long, env = "INNER_REWARD_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_message_bytes: u32,

    /// Latency guardrail: budget (ms) for the P99 of the handler latency over the sliding
    /// window; above it the scorer reports degraded (metric, log, /healthz body; still SERVING)
    /// and sheds the per-feedback reward-quality metrics until the P99 is under 80 % of it.
    #[arg(long, env = "INNER_REWARD_LATENCY_BUDGET_MS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub latency_budget_ms: u64,

    /// Length of the guardrail's sliding window, in seconds (one-second slots).
    #[arg(long, env = "INNER_REWARD_LATENCY_WINDOW_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(2..=600))]
    pub latency_window_seconds: u64,

    /// Threads of the gRPC runtime: 0 = one per CPU this process may use (after
    /// INNER_REWARD_SERVING_CPUS); 1 = a single-threaded runtime (no cross-thread scheduling;
    /// the choice for one serving core); n = a multi-thread runtime with n workers.
    #[arg(long, env = "INNER_REWARD_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// CPUs (Linux list, e.g. `0` or `0-3`) for the gRPC runtime threads; unset = no pinning.
    #[arg(long, env = "INNER_REWARD_SERVING_CPUS")]
    pub serving_cpus: Option<CpuList>,

    /// CPUs for the telemetry worker and librdkafka's threads (serialization, compression,
    /// broker I/O), so they do not compete with the serving threads; unset = no pinning.
    #[arg(long, env = "INNER_REWARD_TELEMETRY_CPUS")]
    pub telemetry_cpus: Option<CpuList>,

    /// Log format: `console` or `json`. The level is read from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "console")]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Config::command().debug_assert();
    }

    #[test]
    fn flags_parse() {
        let c = Config::try_parse_from([
            "inner-reward-rs",
            "--grpc-addr",
            "127.0.0.1:0",
            "--max-slate",
            "7",
            "--log-format",
            "json",
        ])
        .expect("parses");
        assert_eq!(c.grpc_addr.port(), 0);
        assert_eq!(c.max_slate, 7);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.serving_cpus, None);
        let c = Config::try_parse_from([
            "inner-reward-rs",
            "--serving-cpus",
            "0",
            "--telemetry-cpus",
            "1-2",
        ])
        .expect("parses");
        assert_eq!(c.serving_cpus, Some(CpuList(vec![0])));
        assert_eq!(c.telemetry_cpus, Some(CpuList(vec![1, 2])));
        assert!(Config::try_parse_from(["inner-reward-rs", "--serving-cpus", "x"]).is_err());
        // TLS needs both files.
        assert!(Config::try_parse_from(["inner-reward-rs", "--tls-cert", "c.pem"]).is_err());
        assert!(Config::try_parse_from(["inner-reward-rs", "--tls-key", "k.pem"]).is_err());
        assert!(Config::try_parse_from([
            "inner-reward-rs",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem"
        ])
        .is_ok());
        assert!(Config::try_parse_from(["inner-reward-rs", "--queue-capacity", "0"]).is_err());
    }
}
