//! Scored actions -> `recsys.reward.raw`.
//!
//! gRPC handlers call [`TelemetryQueue::enqueue`], a non-blocking `try_send` into a bounded
//! mpsc queue; they never wait on Kafka. One task drains the queue into an rdkafka
//! `ThreadedProducer` whose delivery callback counts published and failed records.

use crate::metrics::Metrics;
use crate::pb::Feedback;
use crate::scoring::{Parts, Score};
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most records taken off the queue per wake-up.
const BATCH: usize = 512;

/// One `recsys.reward.raw` record (field order as in `docs/architecture.md`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RewardRecord {
    pub event_id: String,
    pub request_id: String,
    pub user_id: String,
    pub session_id: String,
    pub item_id: String,
    pub position: u32,
    pub event_time_ms: i64,
    pub clicked: bool,
    pub dwell_seconds: f64,
    pub skipped: bool,
    pub predicted_relevance: f64,
    pub behavior_propensity: f64,
    pub segment: String,
    pub reward: f64,
    pub raw_reward: f64,
    pub parts: Parts,
    pub weights_version: u64,
    pub scored_at_ms: i64,
}

impl RewardRecord {
    /// Builds the record from a validated feedback (moved in, no copies) and its score.
    /// `segment` is the feedback's segment with empty mapped to `default`.
    pub fn new(f: Feedback, segment: String, score: &Score, weights_version: u64) -> Self {
        Self {
            event_id: f.event_id,
            request_id: f.request_id,
            user_id: f.user_id,
            session_id: f.session_id,
            item_id: f.item_id,
            position: f.position,
            event_time_ms: f.event_time_ms,
            clicked: f.clicked,
            dwell_seconds: f.dwell_seconds,
            skipped: f.skipped,
            predicted_relevance: f.predicted_relevance,
            behavior_propensity: f.behavior_propensity,
            segment,
            reward: score.value,
            raw_reward: score.raw,
            parts: score.parts,
            weights_version,
            scored_at_ms: now_ms(),
        }
    }
}

/// Wall-clock Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Errors setting up the producer.
#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("creating kafka producer: {0}")]
    Producer(#[from] KafkaError),
}

/// Lets through at most one log line per `every_s` seconds for a noisy condition, and counts
/// the lines it held back.
struct LogLimiter {
    every_s: u64,
    last_s: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    fn every(every_s: u64) -> Self {
        Self {
            every_s: every_s.max(1),
            last_s: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines suppressed since the last one let through)` when this line may be logged.
    fn allow(&self) -> Option<u64> {
        let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let last = self.last_s.load(Ordering::Relaxed);
        if now >= last.saturating_add(self.every_s)
            && self
                .last_s
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The handlers' side of the queue. Cheap to clone.
#[derive(Clone)]
pub struct TelemetryQueue {
    tx: mpsc::Sender<RewardRecord>,
    metrics: Arc<Metrics>,
    drop_log: Arc<LogLimiter>,
}

impl TelemetryQueue {
    /// A queue of `capacity` records and its receiving end.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Self, mpsc::Receiver<RewardRecord>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Self {
                tx,
                metrics,
                drop_log: Arc::new(LogLimiter::every(1)),
            },
            rx,
        )
    }

    /// Queues a record without waiting. Returns false (and counts a drop) when the queue is
    /// full or closed.
    pub fn enqueue(&self, record: RewardRecord) -> bool {
        match self.tx.try_send(record) {
            Ok(()) => {
                self.metrics.events_enqueued.inc();
                self.metrics.queue_depth.inc();
                true
            }
            Err(e) => {
                self.metrics.events_dropped.inc();
                if let Some(suppressed) = self.drop_log.allow() {
                    let reason = match e {
                        mpsc::error::TrySendError::Full(_) => "queue full",
                        mpsc::error::TrySendError::Closed(_) => "queue closed",
                    };
                    tracing::warn!(
                        reason,
                        dropped_total = self.metrics.events_dropped.get(),
                        suppressed,
                        "dropping scored event (kafka is not keeping up)"
                    );
                }
                false
            }
        }
    }
}

/// Counts delivery reports and tames librdkafka's logging (a broker that is down is reported
/// several times a second; we log it at most every [`KAFKA_LOG_EVERY_S`] seconds).
pub struct DeliveryCounter {
    metrics: Arc<Metrics>,
    delivery_log: LogLimiter,
    client_log: LogLimiter,
}

/// Least interval between two librdkafka warnings in the log.
pub const KAFKA_LOG_EVERY_S: u64 = 30;

impl ClientContext for DeliveryCounter {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                if let Some(suppressed) = self.client_log.allow() {
                    tracing::warn!(target: "librdkafka", facility = fac, suppressed, "{message}");
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility = fac, "{message}");
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility = fac, "{message}");
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(suppressed) = self.client_log.allow() {
            tracing::warn!(target: "librdkafka", error = %error, suppressed, "kafka client error: {reason}");
        }
    }
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => self.metrics.events_published.inc(),
            Err((e, _)) => {
                self.metrics.events_failed.inc();
                if let Some(suppressed) = self.delivery_log.allow() {
                    tracing::warn!(error = %e, suppressed, failed_total = self.metrics.events_failed.get(), "kafka delivery failed");
                }
            }
        }
    }
}

/// Kafka settings for the producer.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    pub topic: String,
    /// Longest wait for outstanding deliveries at shutdown.
    pub flush_timeout: Duration,
}

type Producer_ = ThreadedProducer<DeliveryCounter>;

fn producer(settings: &KafkaSettings, metrics: Arc<Metrics>) -> Result<Producer_, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .set("client.id", "inner-reward-rs")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .set("compression.type", "lz4")
        .create_with_context(DeliveryCounter {
            metrics,
            delivery_log: LogLimiter::every(1),
            client_log: LogLimiter::every(KAFKA_LOG_EVERY_S),
        })
}

/// The running producer task.
pub struct TelemetryWorker {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
}

impl TelemetryWorker {
    /// Creates the producer and starts draining `rx` into it.
    pub fn start(
        settings: KafkaSettings,
        rx: mpsc::Receiver<RewardRecord>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, TelemetryError> {
        let producer = Arc::new(producer(&settings, Arc::clone(&metrics))?);
        let (stop_tx, stop_rx) = oneshot::channel();
        let handle = tokio::spawn(drain(settings, producer, rx, stop_rx, metrics));
        Ok(Self {
            stop: Some(stop_tx),
            handle,
        })
    }

    /// Stops taking new records, publishes what is queued, flushes the producer (bounded by
    /// the flush timeout) and waits for the task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = self.handle.await {
            tracing::error!(error = %e, "telemetry task failed");
        }
    }
}

async fn drain(
    settings: KafkaSettings,
    producer: Arc<Producer_>,
    mut rx: mpsc::Receiver<RewardRecord>,
    mut stop: oneshot::Receiver<()>,
    metrics: Arc<Metrics>,
) {
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            biased;
            n = rx.recv_many(&mut buf, BATCH) => {
                if n == 0 {
                    break; // every sender is gone
                }
                publish(&settings.topic, &producer, &mut buf, &metrics).await;
            }
            _ = &mut stop => break,
        }
    }
    // Shutdown: refuse new records, then publish everything already queued.
    rx.close();
    while rx.recv_many(&mut buf, BATCH).await > 0 {
        publish(&settings.topic, &producer, &mut buf, &metrics).await;
    }
    let timeout = settings.flush_timeout;
    let flushed = tokio::task::spawn_blocking(move || {
        let result = producer.flush(timeout);
        let left = producer.in_flight_count();
        // Dropping the producer purges what is left; those deliveries count as failed.
        drop(producer);
        (result, left)
    })
    .await;
    match flushed {
        Ok((Ok(()), _)) => tracing::info!(
            published_total = metrics.events_published.get(),
            "kafka producer flushed"
        ),
        Ok((Err(e), left)) => tracing::warn!(
            error = %e,
            undelivered = left,
            "kafka flush did not finish within {timeout:?}; undelivered events counted as failed"
        ),
        Err(e) => tracing::error!(error = %e, "kafka flush task failed"),
    }
}

/// Hands a batch to librdkafka. Its own queue being full means Kafka is slow: wait briefly
/// and retry (back-pressure lands on our bounded queue, which then drops and counts).
async fn publish(
    topic: &str,
    producer: &Producer_,
    buf: &mut Vec<RewardRecord>,
    metrics: &Metrics,
) {
    for record in buf.drain(..) {
        metrics.queue_depth.dec();
        let payload = match serde_json::to_vec(&record) {
            Ok(p) => p,
            Err(e) => {
                metrics.events_failed.inc();
                tracing::error!(error = %e, event_id = %record.event_id, "serializing reward record failed");
                continue;
            }
        };
        let mut attempt = BaseRecord::to(topic)
            .key(record.user_id.as_bytes())
            .payload(payload.as_slice());
        loop {
            match producer.send(attempt) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    attempt = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => {
                    metrics.events_failed.inc();
                    tracing::warn!(error = %e, event_id = %record.event_id, "kafka refused record");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::{score, Signals, Weights};

    fn feedback() -> Feedback {
        Feedback {
            event_id: "e-1".into(),
            request_id: "r-1".into(),
            user_id: "u-1".into(),
            session_id: "s-1".into(),
            item_id: "i-9".into(),
            position: 0,
            event_time_ms: 1_763_888_400_000,
            clicked: true,
            dwell_seconds: 12.5,
            skipped: false,
            predicted_relevance: 0.7,
            behavior_propensity: 0.2,
            segment: String::new(),
        }
    }

    fn record() -> RewardRecord {
        let f = feedback();
        let s = score(Signals::from(&f), &Weights::BUILTIN);
        RewardRecord::new(f, "default".into(), &s, 3)
    }

    #[test]
    fn record_has_the_documented_shape() {
        let v: serde_json::Value = serde_json::to_value(record()).expect("json");
        let obj = v.as_object().expect("object");
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut expected = vec![
            "event_id",
            "request_id",
            "user_id",
            "session_id",
            "item_id",
            "position",
            "event_time_ms",
            "clicked",
            "dwell_seconds",
            "skipped",
            "predicted_relevance",
            "behavior_propensity",
            "segment",
            "reward",
            "raw_reward",
            "parts",
            "weights_version",
            "scored_at_ms",
        ];
        let mut got = keys.clone();
        got.sort_unstable();
        expected.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(v["user_id"], "u-1");
        assert_eq!(v["segment"], "default");
        assert_eq!(v["weights_version"], 3);
        assert!((v["reward"].as_f64().unwrap_or_default() - 2.8613).abs() < 0.001);
        assert_eq!(v["reward"], v["raw_reward"]);
        assert_eq!(v["parts"]["click"], 1.0);
        assert_eq!(v["parts"]["skip"], 0.0);
        assert!(v["scored_at_ms"].as_i64().unwrap_or_default() > 1_700_000_000_000);
    }

    #[test]
    fn log_limiter_lets_one_line_through_per_interval() {
        let l = LogLimiter::every(3600);
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        assert_eq!(l.suppressed.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (q, mut rx) = TelemetryQueue::new(2, Arc::clone(&metrics));
        assert!(q.enqueue(record()));
        assert!(q.enqueue(record()));
        assert!(!q.enqueue(record()));
        assert_eq!(metrics.events_enqueued.get(), 2);
        assert_eq!(metrics.events_dropped.get(), 1);
        assert_eq!(metrics.queue_depth.get(), 2);
        rx.close();
        assert!(!q.enqueue(record()));
        assert_eq!(metrics.events_dropped.get(), 2);
    }

    #[tokio::test]
    async fn worker_drains_and_stops_without_kafka() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (q, rx) = TelemetryQueue::new(16, Arc::clone(&metrics));
        let settings = KafkaSettings {
            // Nothing listens on port 1: deliveries cannot succeed.
            bootstrap_servers: "127.0.0.1:1".into(),
            topic: "recsys.reward.raw".into(),
            flush_timeout: Duration::from_millis(200),
        };
        let worker = TelemetryWorker::start(settings, rx, Arc::clone(&metrics)).expect("producer");
        for _ in 0..3 {
            assert!(q.enqueue(record()));
        }
        tokio::time::timeout(Duration::from_secs(10), worker.shutdown())
            .await
            .expect("shutdown is bounded");
        assert_eq!(metrics.queue_depth.get(), 0);
        assert_eq!(metrics.events_published.get(), 0);
        // Purged on drop: every queued record is reported as failed.
        assert_eq!(metrics.events_failed.get(), 3);
        assert!(!q.enqueue(record()), "closed after shutdown");
    }
}
