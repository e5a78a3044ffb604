//! Scored actions -> `recsys.reward.raw`, without losing what was accepted.
//!
//! gRPC handlers reserve room in a bounded lock-free ring ([`TelemetryQueue`], a crossbeam
//! `ArrayQueue` plus an atomic reservation counter) and push records; they never wait, never
//! take a lock, never make a syscall for telemetry. When the ring is full the call is refused
//! (`UNAVAILABLE`), so everything a caller saw accepted is in the ring.
//!
//! One dedicated OS thread (the worker, not a tokio task) pops batches, serializes them and hands
//! them to an rdkafka `ThreadedProducer` (`message.timeout.ms=0`: librdkafka retries until the
//! broker is back). When Kafka is slow or down (more than `max_in_flight` records unacknowledged,
//! librdkafka's queue full, or no acknowledgement for [`KAFKA_STALL`] while records are in
//! flight) the worker appends to the disk [`Spool`] instead; once anything is spooled every newer
//! record goes to the spool too, and the spool is replayed oldest first while Kafka keeps up, so
//! per-key order is kept. Delivery failures come back through the delivery callback and are
//! spooled again. At shutdown the worker drains the ring, replays the spool and flushes for at
//! most the flush timeout, then purges librdkafka and writes what it gave back in front of the
//! spool, which the next start replays.

use crate::affinity::{leave_realtime, pin_current_thread, CpuList};
use crate::exploration::Assignment;
use crate::metrics::Metrics;
use crate::pb::Feedback;
use crate::scoring::{Parts, Score};
use crate::spool::{Frame, Spool, SpoolError};
use crossbeam_queue::{ArrayQueue, SegQueue};
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, PurgeConfig, ThreadedProducer};
use rdkafka::ClientContext;
use serde::Serialize;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

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
    /// Exploration slice (null without an active exploration document).
    pub explore_action: Option<u64>,
    pub explore_probability: Option<f64>,
    pub exploration_version: Option<u64>,
}

impl RewardRecord {
    /// Builds the record from a validated feedback (moved in, no copies) and its score.
    /// `segment` is the feedback's segment with empty mapped to `default`.
    pub fn new(
        f: Feedback,
        segment: String,
        score: &Score,
        weights_version: u64,
        explore: Option<&Assignment<'_>>,
    ) -> Self {
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
            explore_action: explore.and_then(|a| a.action.map(|a| a.id)),
            explore_probability: explore.map(|a| a.probability),
            exploration_version: explore.map(|a| a.version),
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
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("starting the telemetry thread: {0}")]
    Thread(std::io::Error),
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

/// Why a record could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EnqueueError {
    #[error("telemetry queue full (Kafka and the disk spool are not keeping up)")]
    Full,
    #[error("telemetry queue closed (shutting down)")]
    Closed,
}

struct Ring {
    q: ArrayQueue<RewardRecord>,
    /// Records in the ring plus room reserved by handlers that have not pushed yet.
    used: AtomicUsize,
    closed: AtomicBool,
}

/// The handlers' side of the queue. Cheap to clone; lock-free.
#[derive(Clone)]
pub struct TelemetryQueue {
    ring: Arc<Ring>,
    metrics: Arc<Metrics>,
    drop_log: Arc<LogLimiter>,
}

/// Room for `n` records in the queue, taken by [`TelemetryQueue::reserve`]. Unused room is given
/// back on drop.
pub struct Reservation<'a> {
    queue: &'a TelemetryQueue,
    left: usize,
}

impl Reservation<'_> {
    /// Pushes one record into reserved room. Refuses (`Full`) if no room is left in this
    /// reservation, a caller bug; never blocks.
    pub fn push(&mut self, record: RewardRecord) -> Result<(), EnqueueError> {
        if self.left == 0 {
            return Err(EnqueueError::Full);
        }
        // Cannot fail: `used` (reserved + queued) never exceeds the ring's capacity.
        self.queue
            .ring
            .q
            .push(record)
            .map_err(|_| EnqueueError::Full)?;
        self.left -= 1;
        self.queue.metrics.events_enqueued.inc();
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.left > 0 {
            self.queue.ring.used.fetch_sub(self.left, Ordering::SeqCst);
        }
    }
}

/// The worker's side of the queue.
pub struct QueueReceiver {
    ring: Arc<Ring>,
}

impl QueueReceiver {
    /// Pops up to `max` records into `out`; returns how many.
    pub fn pop_batch(&self, max: usize, out: &mut Vec<RewardRecord>) -> usize {
        let mut n = 0;
        while n < max {
            match self.ring.q.pop() {
                Some(r) => {
                    out.push(r);
                    n += 1;
                }
                None => break,
            }
        }
        if n > 0 {
            self.ring.used.fetch_sub(n, Ordering::SeqCst);
        }
        n
    }

    /// Refuses new reservations from now on.
    pub fn close(&self) {
        self.ring.closed.store(true, Ordering::SeqCst);
    }

    /// Records queued or reserved.
    pub fn len(&self) -> usize {
        self.ring.used.load(Ordering::SeqCst)
    }

    /// True when nothing is queued or reserved.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TelemetryQueue {
    /// A queue of `capacity` records and its receiving end.
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Self, QueueReceiver) {
        let ring = Arc::new(Ring {
            q: ArrayQueue::new(capacity.max(1)),
            used: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        });
        (
            Self {
                ring: Arc::clone(&ring),
                metrics,
                drop_log: Arc::new(LogLimiter::every(1)),
            },
            QueueReceiver { ring },
        )
    }

    /// Reserves room for `n` records, all or nothing, without waiting. A refusal is counted in
    /// `rewardloop_inner_events_dropped_total` (n events) and logged (rate-limited).
    pub fn reserve(&self, n: usize) -> Result<Reservation<'_>, EnqueueError> {
        let ring = &self.ring;
        let before = ring.used.fetch_add(n, Ordering::SeqCst);
        let refused = if ring.closed.load(Ordering::SeqCst) {
            Some(EnqueueError::Closed)
        } else if before + n > ring.q.capacity() {
            Some(EnqueueError::Full)
        } else {
            None
        };
        match refused {
            None => Ok(Reservation {
                queue: self,
                left: n,
            }),
            Some(e) => {
                ring.used.fetch_sub(n, Ordering::SeqCst);
                self.metrics.events_dropped.inc_by(n as u64);
                if let Some(suppressed) = self.drop_log.allow() {
                    tracing::warn!(
                        reason = %e,
                        refused_total = self.metrics.events_dropped.get(),
                        suppressed,
                        "refusing scored events: telemetry queue cannot take them"
                    );
                }
                Err(e)
            }
        }
    }

    /// Queues one record without waiting.
    pub fn enqueue(&self, record: RewardRecord) -> Result<(), EnqueueError> {
        self.reserve(1)?.push(record)
    }

    /// Records queued or reserved.
    pub fn len(&self) -> usize {
        self.ring.used.load(Ordering::Relaxed)
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// No delivery acknowledgement for this long while records are in flight = Kafka is down.
pub const KAFKA_STALL: Duration = Duration::from_secs(2);

/// Counts delivery reports, hands failed records back to the worker, and tames librdkafka's
/// logging (a broker that is down is reported several times a second; we log it at most every
/// [`KAFKA_LOG_EVERY_S`] seconds).
pub struct DeliveryCounter {
    metrics: Arc<Metrics>,
    delivery_log: LogLimiter,
    client_log: LogLimiter,
    /// Failed deliveries (key, payload), in report order, for the worker to spool.
    rescued: Arc<SegQueue<Frame>>,
    /// Wall-clock ms of the last acknowledgement.
    last_ack_ms: Arc<AtomicI64>,
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
            Ok(_) => {
                self.metrics.events_published.inc();
                self.last_ack_ms.store(now_ms(), Ordering::Relaxed);
            }
            Err((e, msg)) => {
                self.metrics.events_failed.inc();
                self.rescued.push((
                    msg.key().unwrap_or_default().to_vec(),
                    msg.payload().unwrap_or_default().to_vec(),
                ));
                let purged = matches!(
                    e,
                    KafkaError::MessageProduction(
                        RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight
                    )
                );
                if !purged {
                    if let Some(suppressed) = self.delivery_log.allow() {
                        tracing::warn!(error = %e, suppressed, failed_total = self.metrics.events_failed.get(), "kafka delivery failed; the record goes back to the spool");
                    }
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

/// Where and how much to spool, and when Kafka counts as "not keeping up".
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    /// Records handed to librdkafka and not yet acknowledged above which new records are
    /// spooled instead.
    pub max_in_flight: usize,
    /// Remove the directory at a clean shutdown when it is empty (throw-away default dirs).
    pub remove_when_empty: bool,
}

type Producer_ = ThreadedProducer<DeliveryCounter>;

fn producer(
    settings: &KafkaSettings,
    max_in_flight: usize,
    ctx: DeliveryCounter,
) -> Result<Producer_, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .set("client.id", "inner-reward-rs")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        // Batching: up to 10 ms or 10 000 records / 1 MB per partition batch, lz4-compressed
        // (JSON records compress ~3-4x), so the broker sees few large requests.
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        // Never give up on a record: outages are bounded by max_in_flight + the spool.
        .set("message.timeout.ms", "0")
        .set(
            "queue.buffering.max.messages",
            (max_in_flight.saturating_mul(2).clamp(1000, 10_000_000)).to_string(),
        )
        .create_with_context(ctx)
}

/// Most records taken off the ring or the spool per step.
const BATCH: usize = 1024;

/// The running worker thread.
pub struct TelemetryWorker {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl TelemetryWorker {
    /// Opens the spool and starts the worker thread draining `rx`. The thread pins itself to
    /// `cpus` (when given) *before* it creates the Kafka producer, so librdkafka's threads
    /// inherit that affinity and stay off the serving CPUs.
    pub fn start(
        settings: KafkaSettings,
        spool: SpoolSettings,
        rx: QueueReceiver,
        metrics: Arc<Metrics>,
        cpus: Option<CpuList>,
    ) -> Result<Self, TelemetryError> {
        let opened = Spool::open(&spool.dir, spool.max_bytes, spool.segment_bytes)?;
        if !opened.is_empty() {
            tracing::info!(
                dir = %spool.dir.display(),
                records = opened.records(),
                bytes = opened.bytes(),
                "spool from a previous run found; replaying it before new events"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), KafkaError>>(1);
        let handle = std::thread::Builder::new()
            .name("telemetry".into())
            .spawn(move || {
                match leave_realtime() {
                    Ok(true) => tracing::info!("telemetry thread runs at normal priority (the server runs at a real-time one)"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot leave real-time scheduling for the telemetry thread"),
                }
                if let Some(cpus) = &cpus {
                    match pin_current_thread(cpus) {
                        Ok(()) => tracing::info!(%cpus, "telemetry thread and librdkafka pinned"),
                        Err(e) => tracing::warn!(%cpus, error = %e, "cannot pin the telemetry thread; running unpinned"),
                    }
                }
                let rescued = Arc::new(SegQueue::new());
                let last_ack_ms = Arc::new(AtomicI64::new(now_ms()));
                let producer = match producer(
                    &settings,
                    spool.max_in_flight,
                    DeliveryCounter {
                        metrics: Arc::clone(&metrics),
                        delivery_log: LogLimiter::every(1),
                        client_log: LogLimiter::every(KAFKA_LOG_EVERY_S),
                        rescued: Arc::clone(&rescued),
                        last_ack_ms: Arc::clone(&last_ack_ms),
                    },
                ) {
                    Ok(p) => {
                        let _ = ready_tx.send(Ok(()));
                        p
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let mut worker = Worker {
                    topic: settings.topic.clone(),
                    flush_timeout: settings.flush_timeout,
                    producer,
                    rx,
                    spooling: !opened.is_empty(),
                    spool: opened,
                    remove_when_empty: spool.remove_when_empty,
                    rescued,
                    last_ack_ms,
                    pending: VecDeque::new(),
                    unspooled: VecDeque::new(),
                    metrics,
                    max_in_flight: spool.max_in_flight.max(1),
                    spool_log: LogLimiter::every(5),
                    payload: Vec::with_capacity(1024),
                };
                worker.run(&thread_stop);
            })
            .map_err(TelemetryError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                stop,
                handle: Some(handle),
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(TelemetryError::Producer(e))
            }
            Err(_) => {
                let _ = handle.join();
                Err(TelemetryError::Thread(std::io::Error::other(
                    "telemetry thread ended before creating the producer",
                )))
            }
        }
    }

    /// Stops taking new records, publishes what is queued and spooled (bounded by the flush
    /// timeout), saves the rest to the spool, and waits for the thread to end.
    pub async fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            match tokio::task::spawn_blocking(move || handle.join()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => tracing::error!("telemetry thread panicked"),
                Err(e) => tracing::error!(error = %e, "joining the telemetry thread failed"),
            }
        }
    }
}

impl Drop for TelemetryWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

struct Worker {
    topic: String,
    flush_timeout: Duration,
    producer: Producer_,
    rx: QueueReceiver,
    spool: Spool,
    remove_when_empty: bool,
    /// True while anything is (or must be) in the spool: new records go behind it.
    spooling: bool,
    rescued: Arc<SegQueue<Frame>>,
    last_ack_ms: Arc<AtomicI64>,
    /// Read from the spool, not yet accepted by librdkafka (oldest first).
    pending: VecDeque<Frame>,
    /// Newer than everything spooled, waiting for room in the spool.
    unspooled: VecDeque<Frame>,
    metrics: Arc<Metrics>,
    max_in_flight: usize,
    spool_log: LogLimiter,
    /// Reused serialization buffer: librdkafka copies the payload, so the direct path allocates
    /// nothing per record (an owned copy is made only for records that go to the spool).
    payload: Vec<u8>,
}

enum Sent {
    Ok,
    /// librdkafka's queue is full: the frame comes back.
    Full(Frame),
}

impl Worker {
    fn in_flight(&self) -> usize {
        usize::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }

    /// No acknowledgement for [`KAFKA_STALL`] while records were continuously in flight.
    fn kafka_stalled(&self, in_flight: usize) -> bool {
        if in_flight == 0 {
            self.last_ack_ms.store(now_ms(), Ordering::Relaxed);
            return false;
        }
        now_ms() - self.last_ack_ms.load(Ordering::Relaxed)
            > i64::try_from(KAFKA_STALL.as_millis()).unwrap_or(i64::MAX)
    }

    /// Room in librdkafka for this many more records now.
    fn kafka_room(&self) -> usize {
        let in_flight = self.in_flight();
        if self.kafka_stalled(in_flight) {
            0
        } else {
            self.max_in_flight.saturating_sub(in_flight)
        }
    }

    fn send(&self, frame: Frame) -> Sent {
        if self.send_slices(&frame.0, &frame.1) {
            Sent::Ok
        } else {
            Sent::Full(frame)
        }
    }

    /// Hands one record to librdkafka (which copies it); false when it was not taken.
    fn send_slices(&self, key: &[u8], payload: &[u8]) -> bool {
        let r = self.producer.send(
            BaseRecord::<[u8], [u8]>::to(&self.topic)
                .key(key)
                .payload(payload),
        );
        match r {
            Ok(()) => true,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => false,
            Err((e, _)) => {
                // Not retryable by librdkafka (e.g. an unknown topic): keep it, retry later.
                self.metrics.events_failed.inc();
                if let Some(suppressed) = self.spool_log.allow() {
                    tracing::warn!(error = %e, suppressed, "kafka refused a record; spooling it");
                }
                false
            }
        }
    }

    /// Puts a record behind everything spooled.
    fn spill(&mut self, frame: Frame) {
        self.spooling = true;
        self.unspooled.push_back(frame);
    }

    /// Moves `unspooled` into the spool while it has room.
    fn spool_unspooled(&mut self) {
        let mut wrote = 0u64;
        while let Some((k, p)) = self.unspooled.front() {
            match self.spool.append(k, p) {
                Ok(()) => {
                    self.unspooled.pop_front();
                    wrote += 1;
                }
                Err(e) => {
                    if let Some(suppressed) = self.spool_log.allow() {
                        tracing::warn!(error = %e, suppressed, waiting = self.unspooled.len(), "cannot spool; holding records in memory (new calls are refused once the queue is full)");
                    }
                    self.metrics.spool_errors.inc();
                    break;
                }
            }
        }
        if wrote > 0 {
            self.metrics.events_spooled.inc_by(wrote);
            if let Err(e) = self.spool.flush() {
                self.metrics.spool_errors.inc();
                tracing::warn!(error = %e, "flushing the spool failed");
            }
        }
    }

    /// Feeds spooled records to Kafka while it keeps up. Returns how many were handed over.
    fn replay(&mut self) -> usize {
        let mut room = self.kafka_room();
        let mut n = 0;
        while room > 0 {
            if self.pending.is_empty() {
                match self.spool.read(BATCH.min(room), &mut self.pending) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        self.metrics.spool_errors.inc();
                        if let Some(suppressed) = self.spool_log.allow() {
                            tracing::error!(error = %e, suppressed, "reading the spool failed");
                        }
                        break;
                    }
                }
            }
            let Some(frame) = self.pending.pop_front() else {
                break;
            };
            match self.send(frame) {
                Sent::Ok => {
                    n += 1;
                    room -= 1;
                }
                Sent::Full(frame) => {
                    self.pending.push_front(frame);
                    break;
                }
            }
        }
        if n > 0 {
            self.metrics.events_replayed.inc_by(n as u64);
        }
        n
    }

    fn update_gauges(&self) {
        let depth = i64::try_from(self.rx.len()).unwrap_or(i64::MAX);
        self.metrics.queue_depth.set(depth);
        let waiting = self.pending.len() + self.unspooled.len();
        self.metrics
            .spool_records
            .set(i64::try_from(self.spool.records() + waiting as u64).unwrap_or(i64::MAX));
        self.metrics
            .spool_bytes
            .set(i64::try_from(self.spool.bytes()).unwrap_or(i64::MAX));
        self.metrics
            .kafka_in_flight
            .set(i64::try_from(self.in_flight()).unwrap_or(i64::MAX));
    }

    /// One step: rescued records, the ring, the spool. Returns the amount of work done.
    fn step(&mut self, buf: &mut Vec<RewardRecord>) -> usize {
        let mut work = 0;
        while let Some(frame) = self.rescued.pop() {
            self.spill(frame);
            work += 1;
        }
        // Do not take more from the ring while records wait for spool room: the ring then
        // fills up and calls are refused, instead of memory growing.
        if self.unspooled.len() < BATCH {
            let n = self.rx.pop_batch(BATCH, buf);
            work += n;
            let mut room = if self.spooling { 0 } else { self.kafka_room() };
            let mut payload = std::mem::take(&mut self.payload);
            for record in buf.drain(..) {
                payload.clear();
                if let Err(e) = serde_json::to_writer(&mut payload, &record) {
                    // Unreachable for this plain struct; never silently lost.
                    self.metrics.events_failed.inc();
                    tracing::error!(error = %e, event_id = %record.event_id, "serializing reward record failed");
                    continue;
                }
                let key = record.user_id.into_bytes();
                if !self.spooling && room > 0 {
                    if self.send_slices(&key, &payload) {
                        room -= 1;
                    } else {
                        self.spill((key, payload.clone()));
                    }
                } else {
                    let frame = (key, payload.clone());
                    if !self.spooling {
                        tracing::info!(
                            in_flight = self.in_flight(),
                            "kafka is not keeping up; spooling events to disk"
                        );
                    }
                    self.spill(frame);
                }
            }
            self.payload = payload;
        }
        if !self.unspooled.is_empty() {
            self.spool_unspooled();
        }
        if self.spooling {
            work += self.replay();
            if self.spool.is_empty() && self.pending.is_empty() && self.unspooled.is_empty() {
                self.spooling = false;
                tracing::info!(
                    replayed_total = self.metrics.events_replayed.get(),
                    "spool replayed; publishing directly again"
                );
            }
        }
        work
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut buf = Vec::with_capacity(BATCH);
        let mut ticks = 0u32;
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            if stopping {
                self.rx.close();
            }
            let work = self.step(&mut buf);
            ticks = ticks.wrapping_add(1);
            if work == 0 || ticks.is_multiple_of(64) {
                self.update_gauges();
            }
            if stopping && self.rx.is_empty() {
                break;
            }
            if work == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.finish();
    }

    /// Shutdown after the ring is drained: replay and flush until the deadline, then give back
    /// to the spool what Kafka has not acknowledged, and close it.
    fn finish(&mut self) {
        let deadline = std::time::Instant::now() + self.flush_timeout;
        let mut buf = Vec::new();
        loop {
            let work = self.step(&mut buf);
            let done = !self.spooling && self.in_flight() == 0 && self.rescued.is_empty();
            if done || std::time::Instant::now() >= deadline {
                break;
            }
            if work == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let in_flight = self.in_flight();
        if in_flight > 0 {
            tracing::warn!(
                in_flight,
                "kafka did not acknowledge everything within {:?}; returning unacknowledged events to the spool",
                self.flush_timeout
            );
            self.producer
                .purge(PurgeConfig::default().queue().inflight());
            let _ = self.producer.flush(Duration::from_secs(2));
        }
        // Order: unacknowledged (oldest), read-but-unsent, rest of the spool, unspooled.
        let mut front: Vec<Frame> = Vec::new();
        while let Some(f) = self.rescued.pop() {
            front.push(f);
        }
        front.extend(self.pending.drain(..));
        let mut saved = 0usize;
        if let Err(e) = self.spool.prepend(&front) {
            tracing::error!(error = %e, records = front.len(), "writing unacknowledged events to the spool failed; they are lost");
        } else {
            saved += front.len();
        }
        self.spool.unbounded();
        let left = self.unspooled.len();
        self.spool_unspooled();
        saved += left - self.unspooled.len();
        if !self.unspooled.is_empty() {
            tracing::error!(
                records = self.unspooled.len(),
                "events could not be written to the spool; they are lost"
            );
        }
        self.update_gauges();
        let left_in_spool = self.spool.records();
        let dir = self.spool.dir().to_path_buf();
        if let Err(e) = self.spool.close() {
            tracing::error!(error = %e, "closing the spool failed");
        }
        if left_in_spool == 0 {
            if self.remove_when_empty {
                let _ = std::fs::remove_dir_all(&dir);
            }
            tracing::info!(
                published_total = self.metrics.events_published.get(),
                "telemetry drained: everything acknowledged by kafka"
            );
        } else {
            tracing::warn!(
                spool = %dir.display(),
                records = left_in_spool,
                returned = saved,
                "telemetry stopped with events in the spool; the next start replays them"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::{score, Signals, Weights};

    fn feedback() -> Feedback {
        crate::test_support::feedback("e-1")
    }

    fn record() -> RewardRecord {
        let f = feedback();
        let s = score(Signals::from(&f), &Weights::BUILTIN);
        RewardRecord::new(f, "default".into(), &s, 3, None)
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
            "explore_action",
            "explore_probability",
            "exploration_version",
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
        // No exploration document: the fields are present and null.
        assert!(v["explore_action"].is_null() && v["explore_probability"].is_null());
        assert!(v["exploration_version"].is_null());
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
    fn full_queue_refuses_and_counts() {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (q, rx) = TelemetryQueue::new(3, Arc::clone(&metrics));
        assert_eq!(q.enqueue(record()), Ok(()));
        assert_eq!(q.enqueue(record()), Ok(()));
        // all or nothing: 2 do not fit into the 1 left
        assert_eq!(q.reserve(2).err(), Some(EnqueueError::Full));
        {
            let mut r = q.reserve(1).expect("room for one");
            assert_eq!(
                q.enqueue(record()),
                Err(EnqueueError::Full),
                "reserved room is taken"
            );
            assert!(r.push(record()).is_ok());
            assert!(r.push(record()).is_err(), "only what was reserved");
        }
        assert_eq!(metrics.events_enqueued.get(), 3);
        assert_eq!(metrics.events_dropped.get(), 3);
        assert_eq!(rx.len(), 3);
        let mut buf = Vec::new();
        assert_eq!(rx.pop_batch(10, &mut buf), 3);
        assert!(rx.is_empty());
        drop(q.reserve(2).expect("room again")); // unused room is given back
        assert!(rx.is_empty());
        rx.close();
        assert_eq!(q.enqueue(record()), Err(EnqueueError::Closed));
        assert_eq!(metrics.events_dropped.get(), 4);
    }

    fn spool_settings(dir: &std::path::Path) -> SpoolSettings {
        SpoolSettings {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 30,
            segment_bytes: 1 << 20,
            max_in_flight: 1000,
            remove_when_empty: false,
        }
    }

    fn kafka_down() -> KafkaSettings {
        KafkaSettings {
            // Nothing listens on port 1: deliveries cannot succeed.
            bootstrap_servers: "127.0.0.1:1".into(),
            topic: "recsys.reward.raw".into(),
            flush_timeout: Duration::from_millis(300),
        }
    }

    fn spooled_event_ids(dir: &std::path::Path) -> Vec<String> {
        let mut s = Spool::open(dir, 1 << 30, 1 << 20).expect("reopen spool");
        let mut out = VecDeque::new();
        while s.read(100, &mut out).expect("read") > 0 {}
        out.into_iter()
            .map(|(_, p)| {
                let v: serde_json::Value = serde_json::from_slice(&p).expect("json");
                v["event_id"].as_str().unwrap_or_default().to_owned()
            })
            .collect()
    }

    fn numbered(i: usize) -> RewardRecord {
        let mut r = record();
        r.event_id = format!("e-{i}");
        r
    }

    #[tokio::test]
    async fn without_kafka_shutdown_leaves_everything_in_the_spool_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (q, rx) = TelemetryQueue::new(16, Arc::clone(&metrics));
        let worker = TelemetryWorker::start(
            kafka_down(),
            spool_settings(dir.path()),
            rx,
            Arc::clone(&metrics),
            None,
        )
        .expect("producer");
        for i in 0..3 {
            assert_eq!(q.enqueue(numbered(i)), Ok(()));
        }
        tokio::time::timeout(Duration::from_secs(10), worker.shutdown())
            .await
            .expect("shutdown is bounded");
        assert_eq!(metrics.queue_depth.get(), 0);
        assert_eq!(metrics.events_published.get(), 0);
        assert_eq!(metrics.spool_records.get(), 3);
        assert_eq!(q.enqueue(record()), Err(EnqueueError::Closed));
        assert_eq!(spooled_event_ids(dir.path()), ["e-0", "e-1", "e-2"]);
    }

    #[tokio::test]
    async fn stalled_kafka_overflows_to_the_spool_and_a_restart_keeps_the_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (q, rx) = TelemetryQueue::new(64, Arc::clone(&metrics));
        let mut settings = spool_settings(dir.path());
        settings.max_in_flight = 5; // the 6th record onwards overflows to disk
        let worker = TelemetryWorker::start(kafka_down(), settings, rx, Arc::clone(&metrics), None)
            .expect("producer");
        for i in 0..50 {
            assert_eq!(q.enqueue(numbered(i)), Ok(()));
        }
        let spooled = async {
            while metrics.events_spooled.get() < 45 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), spooled)
            .await
            .expect("overflow is spooled");
        tokio::time::timeout(Duration::from_secs(10), worker.shutdown())
            .await
            .expect("shutdown is bounded");
        let expected: Vec<String> = (0..50).map(|i| format!("e-{i}")).collect();
        assert_eq!(spooled_event_ids(dir.path()), expected);
    }
}
