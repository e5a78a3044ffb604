//! The outer controller's consumer of `recsys.reward.raw` and the KPI topic: librdkafka through
//! rdkafka, with the consumed records queued here per (topic, partition) instead of one Python
//! `Message` per record. With confluent-kafka every record became a `Message` object (with a copy of
//! its value, its topic as a new `str`), was grouped by partition in Python's containers and read back
//! through three method calls: ~10 % of the loop thread at 10^5 events/s (py-spy). Here a reward
//! event is parsed straight from librdkafka's buffer into the [`Action`] the window keeps, and the
//! engine (`DurableController`) applies a partition's queue in one call ([`crate::ingest::ingest_queue`]).
//!
//! librdkafka is polled, and the records parsed, on a thread of its own ([`poll_loop`], started by the
//! first `consume_into`): that work needs neither the GIL nor the engine's state, and was ~9 % of the
//! loop thread on it. A rebalance still runs its Python callback on the loop thread, inside
//! `consume_into` (or `close`), as confluent-kafka runs it inside `poll`: the polling thread hands it
//! over and waits ([`Ctx::hand_over`]). Records of a revoked partition polled before the revocation are
//! dropped with it (the engine drops its queue of them too), so that a re-assigned partition resumes
//! exactly at the offset its state in Redis says.
//!
//! The Python-facing API is the part of confluent-kafka's `Consumer` the engine uses (`subscribe`
//! with `on_assign`/`on_revoke`, `assign`, `pause`, `resume`, `commit`, `get_watermark_offsets`,
//! `unsubscribe`, `close`), with confluent-kafka's `TopicPartition` objects, so the rebalance and
//! commit code stays one; only consuming differs (`consume_into`).

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use rdkafka::bindings as rdsys;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, Timestamp};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::event::{self, Action};
use crate::producer::{client_config, error_line, log_line};

/// A consumed record's content: a reward event already parsed, or the value as it came (a KPI event,
/// a record the native parser declines, no value at all) for the Python path.
pub enum Body {
    Action(Arc<Action>),
    Raw(Option<Box<[u8]>>),
}

pub struct Rec {
    pub offset: i64,
    /// confluent-kafka's `(type, value)`: type 0 (not available), 1 (create time), 2 (log append)
    pub ts: (i32, i64),
    pub body: Body,
}

impl Rec {
    /// The Kafka timestamp as the engine orders records by it (0 when there is none).
    pub fn ts_ms(&self) -> i64 {
        if self.ts.0 != 0 {
            self.ts.1
        } else {
            0
        }
    }
}

/// A record's [`Body`]: with `parse` (the reward topic) its value parsed as a reward event where the
/// native parser accepts it.
fn body(value: Option<&[u8]>, parse: bool) -> Body {
    match value {
        Some(v) if parse => match event::parse_action(v) {
            Some(a) => Body::Action(Arc::new(a)),
            None => Body::Raw(Some(v.into())),
        },
        v => Body::Raw(v.map(Into::into)),
    }
}

/// One (topic, partition)'s consumed records, oldest first: what the engine's partition queue holds
/// when the consumer is native (a `deque` of `Message`s otherwise). Falsy when empty.
#[pyclass(module = "rewardloop_outer_native", frozen)]
pub struct RecordQueue {
    topic: Py<PyString>,
    partition: i32,
    pub recs: Mutex<VecDeque<Rec>>,
}

impl RecordQueue {
    pub fn lock(&self) -> MutexGuard<'_, VecDeque<Rec>> {
        self.recs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl RecordQueue {
    #[new]
    fn new(topic: Bound<'_, PyString>, partition: i32) -> Self {
        Self {
            topic: topic.unbind(),
            partition,
            recs: Mutex::new(VecDeque::new()),
        }
    }

    fn __len__(&self) -> usize {
        self.lock().len()
    }

    /// The first record's Kafka timestamp (0: none, or the queue is empty).
    fn head_ts(&self) -> i64 {
        self.lock().front().map_or(0, Rec::ts_ms)
    }

    /// Append a record as `consume_into` does with each one it consumes (a reward event, `parse`, is
    /// parsed here): how a test's fake consumer fills the queues.
    #[pyo3(signature = (offset, timestamp, value, parse))]
    fn append(&self, offset: i64, timestamp: (i32, i64), value: Option<&[u8]>, parse: bool) {
        let rec = Rec {
            offset,
            ts: timestamp,
            body: body(value, parse),
        };
        self.lock().push_back(rec);
    }

    /// Remove the first record and return it as a `Message`-like [`Record`].
    fn popleft(&self, py: Python<'_>) -> PyResult<Record> {
        let rec = self
            .lock()
            .pop_front()
            .ok_or_else(|| pyo3::exceptions::PyIndexError::new_err("pop from an empty queue"))?;
        let value = match rec.body {
            Body::Action(a) => Some(PyBytes::new(py, a.raw()).unbind()),
            Body::Raw(Some(v)) => Some(PyBytes::new(py, &v).unbind()),
            Body::Raw(None) => None,
        };
        Ok(Record {
            topic: self.topic.clone_ref(py),
            partition: self.partition,
            offset: rec.offset,
            ts: rec.ts,
            value,
        })
    }
}

/// One record taken off a [`RecordQueue`], read as confluent-kafka's `Message` is (`topic()`,
/// `partition()`, `offset()`, `value()`, `timestamp()`, `error()`).
#[pyclass(module = "rewardloop_outer_native", frozen)]
pub struct Record {
    topic: Py<PyString>,
    partition: i32,
    offset: i64,
    ts: (i32, i64),
    value: Option<Py<PyBytes>>,
}

#[pymethods]
impl Record {
    fn topic(&self, py: Python<'_>) -> Py<PyString> {
        self.topic.clone_ref(py)
    }
    fn partition(&self) -> i32 {
        self.partition
    }
    fn offset(&self) -> i64 {
        self.offset
    }
    fn value(&self, py: Python<'_>) -> Option<Py<PyBytes>> {
        self.value.as_ref().map(|v| v.clone_ref(py))
    }
    fn timestamp(&self) -> (i32, i64) {
        self.ts
    }
    fn error(&self) -> Option<()> {
        None
    }
}

/// The Python side of a rebalance: the callbacks `subscribe` was given, the consumer object to pass
/// them when they run inside a poll on the calling thread (`close`; set only meanwhile: a reference
/// from the context to its owner would be a cycle) and what went wrong in them then (raised from
/// `close`, as confluent-kafka does); the polling thread hands its rebalances over ([`Ctx::hand_over`]).
#[derive(Default)]
struct Ctx {
    on_assign: Mutex<Option<Py<PyAny>>>,
    on_revoke: Mutex<Option<Py<PyAny>>>,
    owner: Mutex<Option<Py<PyAny>>>,
    error: Mutex<Option<PyErr>>,
    /// the callback assigned (or unassigned) itself: no default assignment after it
    assigned_in_callback: AtomicBool,
    shared: Arc<Shared>,
}

/// What the polling thread and the loop thread share: the records polled and parsed (and any
/// consumer errors) not handed over yet, and a rebalance the polling thread waits on while the loop
/// thread runs its Python callback (callbacks run on the engine's thread, as with confluent-kafka).
#[derive(Default)]
struct Shared {
    inbox: Mutex<Inbox>,
    /// records, errors or a rebalance arrived (the loop thread waits on it)
    arrived: Condvar,
    /// a handed-over rebalance ran (the polling thread waits on it)
    ran: Condvar,
    /// the polling thread ends after its current poll
    stop: AtomicBool,
    /// nobody will run a handed-over rebalance any more (the consumer is dropped)
    abandon: AtomicBool,
}

#[derive(Default)]
struct Inbox {
    runs: VecDeque<Run>,
    count: usize,
    errors: Vec<String>,
    rebalance: Option<Handoff>,
    poller: Option<std::thread::ThreadId>,
    /// revocations run so far, and the partitions of the last one: records of a revoked partition
    /// polled before it are dropped (the engine drops its queue of them; applying the later ones after
    /// a re-assignment would skip the dropped ones)
    revokes: u64,
    last_revoked: Vec<(String, i32)>,
}

impl Inbox {
    /// Drop the records of `parts`' partitions.
    fn drop_records_of(&mut self, parts: &[(String, i32)]) {
        self.count -= drop_runs_of(&mut self.runs, parts);
    }
}

/// A rebalance handed to the loop thread: assignment or revocation, the partitions with their offsets.
struct Handoff {
    assign: bool,
    parts: Vec<(String, i32, i64)>,
    ran: bool,
}

/// Records the polling thread parses ahead of the loop thread at most; then it stops polling until the
/// loop took some (librdkafka's own fetch queue then fills and its fetching pauses).
const MAX_AHEAD: usize = 50_000;

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_line("outer consumer", level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        error_line("outer consumer", error, reason);
    }
}

impl ConsumerContext for Ctx {
    /// confluent-kafka's semantics: the Python callback gets the consumer and the partitions (as
    /// `TopicPartition`s); when it did not assign itself, an assignment is assigned and a revocation
    /// unassigned after it (eager protocol; the incremental calls under the cooperative one).
    fn rebalance(
        &self,
        base: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let assign = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => true,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => false,
            other => {
                eprintln!("rdkafka (outer consumer) rebalance error: {other:?}");
                false
            }
        };
        self.assigned_in_callback.store(false, Ordering::SeqCst);
        let has_cb = locked(if assign {
            &self.on_assign
        } else {
            &self.on_revoke
        })
        .is_some();
        let on_poller = locked(&self.shared.inbox).poller == Some(std::thread::current().id());
        if has_cb && on_poller {
            self.hand_over(assign, tpl);
        }
        // (no callback -- e.g. after close, or dropped without it -- needs no Python at all)
        (has_cb && !on_poller).then(|| {
            Python::attach(|py| {
                let owner = locked(&self.owner)
                    .as_ref()
                    .map_or_else(|| py.None(), |o| o.clone_ref(py));
                if let Err(e) = self.run_callback(py, assign, owner, &tpl_parts(tpl)) {
                    locked(&self.error).get_or_insert(e);
                }
            })
        });
        if self.assigned_in_callback.load(Ordering::SeqCst) {
            return;
        }
        let cooperative = matches!(
            base.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        let r = match (assign, cooperative) {
            (true, false) => base.assign(tpl),
            (true, true) => base.incremental_assign(tpl),
            (false, false) => base.unassign(),
            (false, true) => base.incremental_unassign(tpl),
        };
        if let Err(e) = r {
            eprintln!("rdkafka (outer consumer) rebalance: {e}");
        }
    }
}

impl Ctx {
    /// Run the rebalance's Python callback (if one is set) with the consumer object and the partitions.
    fn run_callback(
        &self,
        py: Python<'_>,
        assign: bool,
        owner: Py<PyAny>,
        parts: &[(String, i32, i64)],
    ) -> PyResult<()> {
        let cb = locked(if assign {
            &self.on_assign
        } else {
            &self.on_revoke
        })
        .as_ref()
        .map(|c| c.clone_ref(py));
        match cb {
            Some(cb) => to_py_partitions(py, parts)
                .and_then(|ps| cb.call1(py, (owner, ps)))
                .map(|_| ()),
            None => Ok(()),
        }
    }

    /// On the polling thread: give the rebalance to the loop thread (`consume_into`, `close`) and wait
    /// until its callback ran there (or the consumer stops).
    fn hand_over(&self, assign: bool, tpl: &TopicPartitionList) {
        let parts = tpl_parts(tpl);
        let sh = &self.shared;
        let mut inbox = locked(&sh.inbox);
        inbox.rebalance = Some(Handoff {
            assign,
            parts,
            ran: false,
        });
        sh.arrived.notify_all();
        while inbox.rebalance.as_ref().is_some_and(|h| !h.ran) && !sh.abandon.load(Ordering::SeqCst)
        {
            inbox = sh
                .ran
                .wait_timeout(inbox, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        inbox.rebalance = None;
    }
}

/// A partition list's (topic, partition, offset)s.
fn tpl_parts(tpl: &TopicPartitionList) -> Vec<(String, i32, i64)> {
    tpl.elements()
        .iter()
        .map(|e| {
            let off = e
                .offset()
                .to_raw()
                .unwrap_or(rdsys::RD_KAFKA_OFFSET_INVALID as i64);
            (e.topic().to_string(), e.partition(), off)
        })
        .collect()
}

/// `[TopicPartition(topic, partition, offset)]` (confluent-kafka's class).
fn to_py_partitions<'py>(
    py: Python<'py>,
    parts: &[(String, i32, i64)],
) -> PyResult<Bound<'py, PyList>> {
    let cls = py.import("confluent_kafka")?.getattr("TopicPartition")?;
    let out = PyList::empty(py);
    for (topic, partition, off) in parts {
        out.append(cls.call1((topic, *partition, *off))?)?;
    }
    Ok(out)
}

/// A partition list from Python `TopicPartition`-likes (`.topic`, `.partition`, `.offset`; an offset
/// below zero other than the logical ones reads as "the committed offset").
fn from_py_partitions(
    parts: &Bound<'_, PyAny>,
    with_offsets: bool,
) -> PyResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for p in parts.try_iter()? {
        let p = p?;
        let topic: String = p.getattr("topic")?.extract()?;
        let partition: i32 = p.getattr("partition")?.extract()?;
        let mut e = tpl.add_partition(&topic, partition);
        if with_offsets {
            let off: i64 = p.getattr("offset")?.extract()?;
            e.set_offset(Offset::from_raw(off))
                .map_err(|err| PyValueError::new_err(format!("offset {off}: {err}")))?;
        }
    }
    Ok(tpl)
}

fn kafka_err(what: &str, e: KafkaError) -> PyErr {
    PyRuntimeError::new_err(format!("{what}: {e}"))
}

/// A librdkafka consumer for Python: the engine's subset of confluent-kafka's `Consumer`, and
/// `consume_into`, which fills the engine's partition queues.
#[pyclass(module = "rewardloop_outer_native", frozen)]
pub struct NativeConsumer {
    consumer: Arc<BaseConsumer<Ctx>>,
    shared: Arc<Shared>,
    /// the thread that polls librdkafka and parses (started by the first `consume_into`)
    poller: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
}

/// Consecutive records of one (topic, partition), in order.
struct Run {
    topic: String,
    partition: i32,
    recs: Vec<Rec>,
}

impl Run {
    fn is(&self, topic: &str, partition: i32) -> bool {
        self.partition == partition && self.topic == topic
    }
}

/// Drop the runs of `parts`' partitions; how many records they held.
fn drop_runs_of(runs: &mut VecDeque<Run>, parts: &[(String, i32)]) -> usize {
    let mut dropped = 0;
    runs.retain(|r| {
        let gone = parts.iter().any(|(t, p)| r.is(t, *p));
        if gone {
            dropped += r.recs.len();
        }
        !gone
    });
    dropped
}

/// Append a run's records to the last run when it is the same partition's, else start a new one.
fn push_run(runs: &mut VecDeque<Run>, run: Run) {
    match runs.back_mut() {
        Some(last) if last.is(&run.topic, run.partition) => last.recs.extend(run.recs),
        _ => runs.push_back(run),
    }
}

/// Append a record to the last run, or start a run when it is another partition's.
fn push_rec(runs: &mut VecDeque<Run>, topic: &str, partition: i32, rec: Rec) {
    match runs.back_mut() {
        Some(run) if run.is(topic, partition) => run.recs.push(rec),
        _ => runs.push_back(Run {
            topic: topic.to_string(),
            partition,
            recs: vec![rec],
        }),
    }
}

/// The polling thread: polls librdkafka (a rebalance is handed to the loop thread inside the poll,
/// [`Ctx::hand_over`]), parses the records of `action_topic` and hands them over a batch at a time.
/// Why a thread: polling and parsing were ~9 % of the loop thread at 10^5 events/s (py-spy), work that
/// needs neither the GIL nor the engine's state.
fn poll_loop(consumer: Arc<BaseConsumer<Ctx>>, shared: Arc<Shared>, action_topic: String) {
    locked(&shared.inbox).poller = Some(std::thread::current().id());
    let mut runs: VecDeque<Run> = VecDeque::new();
    let mut errors: Vec<String> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        if locked(&shared.inbox).count >= MAX_AHEAD {
            std::thread::sleep(Duration::from_millis(2)); // the loop thread is behind: let it catch up
            continue;
        }
        let mut n = 0usize;
        let mut wait = Duration::from_millis(100);
        while n < 1000 {
            let revokes = locked(&shared.inbox).revokes;
            let polled = consumer.poll(wait);
            {
                // a revocation ran inside that poll: what this batch holds of its partitions is stale
                let inbox = locked(&shared.inbox);
                if inbox.revokes != revokes {
                    n -= drop_runs_of(&mut runs, &inbox.last_revoked);
                }
            }
            let Some(r) = polled else { break };
            wait = Duration::ZERO;
            match r {
                Ok(m) => {
                    let ts = match m.timestamp() {
                        Timestamp::NotAvailable => (0, -1),
                        Timestamp::CreateTime(t) => (1, t),
                        Timestamp::LogAppendTime(t) => (2, t),
                    };
                    let rec = Rec {
                        offset: m.offset(),
                        ts,
                        body: body(m.payload(), m.topic() == action_topic),
                    };
                    push_rec(&mut runs, m.topic(), m.partition(), rec);
                    n += 1;
                }
                Err(KafkaError::PartitionEOF(_)) => {}
                Err(e) => errors.push(e.to_string()),
            }
        }
        if n > 0 || !errors.is_empty() {
            let mut inbox = locked(&shared.inbox);
            for run in runs.drain(..) {
                inbox.count += run.recs.len();
                push_run(&mut inbox.runs, run);
            }
            inbox.errors.append(&mut errors);
            shared.arrived.notify_all();
        }
    }
}

#[pymethods]
impl NativeConsumer {
    /// `config`: librdkafka properties, as for confluent-kafka's `Consumer` (a `logger` is ignored).
    #[new]
    fn new(config: HashMap<String, Bound<'_, PyAny>>) -> PyResult<Self> {
        let shared = Arc::new(Shared::default());
        let ctx = Ctx {
            shared: Arc::clone(&shared),
            ..Ctx::default()
        };
        let consumer = client_config(config)?
            .create_with_context(ctx)
            .map_err(|e| PyValueError::new_err(format!("consumer config: {e}")))?;
        Ok(Self {
            consumer: Arc::new(consumer),
            shared,
            poller: Mutex::new(None),
            closed: AtomicBool::new(false),
        })
    }

    /// (Re)subscribe. The polling thread is stopped first (a rebalance it hands over meanwhile runs
    /// here) and started again by the next `consume_into`: librdkafka's subscribe and unsubscribe
    /// must not wait on a rebalance whose callback waits for this very thread.
    #[pyo3(signature = (topics, on_assign=None, on_revoke=None))]
    fn subscribe(
        slf: &Bound<'_, Self>,
        topics: Vec<String>,
        on_assign: Option<Py<PyAny>>,
        on_revoke: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let this = slf.get();
        this.stop_poller(Some(slf))?;
        let ctx = this.consumer.context();
        *locked(&ctx.on_assign) = on_assign;
        *locked(&ctx.on_revoke) = on_revoke;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        this.consumer
            .subscribe(&names)
            .map_err(|e| kafka_err("subscribe", e))
    }

    /// Leave the subscription (the revocation's callback runs in a later `consume_into`).
    fn unsubscribe(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        this.stop_poller(Some(slf))?;
        this.consumer.unsubscribe();
        Ok(())
    }

    fn assign(&self, partitions: &Bound<'_, PyAny>) -> PyResult<()> {
        let tpl = from_py_partitions(partitions, true)?;
        self.consumer
            .context()
            .assigned_in_callback
            .store(true, Ordering::SeqCst);
        self.consumer
            .assign(&tpl)
            .map_err(|e| kafka_err("assign", e))
    }

    fn pause(&self, partitions: &Bound<'_, PyAny>) -> PyResult<()> {
        let tpl = from_py_partitions(partitions, false)?;
        self.consumer.pause(&tpl).map_err(|e| kafka_err("pause", e))
    }

    fn resume(&self, partitions: &Bound<'_, PyAny>) -> PyResult<()> {
        let tpl = from_py_partitions(partitions, false)?;
        self.consumer
            .resume(&tpl)
            .map_err(|e| kafka_err("resume", e))
    }

    /// Commit the given offsets (the next offset to read, per partition).
    #[pyo3(signature = (offsets, asynchronous=true))]
    fn commit(
        &self,
        py: Python<'_>,
        offsets: &Bound<'_, PyAny>,
        asynchronous: bool,
    ) -> PyResult<()> {
        let tpl = from_py_partitions(offsets, true)?;
        let mode = if asynchronous {
            CommitMode::Async
        } else {
            CommitMode::Sync
        };
        py.detach(|| self.consumer.commit(&tpl, mode))
            .map_err(|e| kafka_err("commit", e))
    }

    /// `(low, high)` of a partition: the client's cached values (refreshed with every fetch, no broker
    /// round trip) or, with `cached=False`, asked of the broker (`timeout` seconds).
    #[pyo3(signature = (partition, cached=false, timeout=5.0))]
    fn get_watermark_offsets(
        &self,
        py: Python<'_>,
        partition: &Bound<'_, PyAny>,
        cached: bool,
        timeout: f64,
    ) -> PyResult<(i64, i64)> {
        let topic: String = partition.getattr("topic")?.extract()?;
        let p: i32 = partition.getattr("partition")?.extract()?;
        if !cached {
            let wait = Duration::from_secs_f64(timeout.max(0.0));
            return py
                .detach(|| self.consumer.fetch_watermarks(&topic, p, wait))
                .map_err(|e| kafka_err("watermarks", e));
        }
        let name = CString::new(topic).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let (mut lo, mut hi) = (0i64, 0i64);
        // SAFETY: a live client handle, a NUL-terminated topic name and two out-parameters
        let err = unsafe {
            rdsys::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                name.as_ptr(),
                p,
                &mut lo,
                &mut hi,
            )
        };
        if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            let code: RDKafkaErrorCode = err.into();
            return Err(PyRuntimeError::new_err(format!("watermarks: {code}")));
        }
        Ok((lo, hi))
    }

    /// Take up to `n` records into `queues` (`{(topic, partition): RecordQueue}`; a missing queue is
    /// created): what the polling thread has parsed already, without waiting; when it has none, wait
    /// at most `timeout` seconds (without the GIL) and take what came. The polling thread (started by
    /// the first call) parses the records of `action_topic` as reward events from librdkafka's buffer;
    /// the others, and those the parser declines, keep their value for the Python path.
    ///
    /// Returns `(records, [(topic, partition)] of the queues that got some, [consumer errors])`.
    /// A rebalance runs its Python callback here, on the calling thread (an exception in it is raised
    /// here, after the polling thread was let go on).
    #[allow(clippy::type_complexity)]
    fn consume_into(
        slf: &Bound<'_, Self>,
        queues: &Bound<'_, PyDict>,
        n: usize,
        timeout: f64,
        action_topic: &str,
    ) -> PyResult<(usize, Vec<(String, i32)>, Vec<String>)> {
        let py = slf.py();
        let this = slf.get();
        this.start_poller(action_topic)?;
        Self::run_handoff(slf)?;
        let (mut count, mut runs, mut errors) = this.take(n);
        if count == 0 && errors.is_empty() && timeout > 0.0 {
            let wait = Duration::from_secs_f64(timeout);
            py.detach(|| this.wait_for_arrival(wait));
            Self::run_handoff(slf)?;
            (count, runs, errors) = this.take(n);
        }
        let mut touched: Vec<(String, i32)> = Vec::new();
        for run in runs {
            let key = PyTuple::new(
                py,
                [
                    PyString::new(py, &run.topic).into_any(),
                    run.partition.into_pyobject(py)?.into_any(),
                ],
            )?;
            let q = match queues.get_item(&key)? {
                Some(q) => q.cast_into::<RecordQueue>()?,
                None => {
                    let q = Bound::new(
                        py,
                        RecordQueue::new(PyString::new(py, &run.topic), run.partition),
                    )?;
                    queues.set_item(&key, &q)?;
                    q
                }
            };
            if !touched.iter().any(|(t, p)| run.is(t, *p)) {
                touched.push((run.topic.clone(), run.partition));
            }
            q.get().lock().extend(run.recs);
        }
        Ok((count, touched, errors))
    }

    /// Leave the group: the revocation's callback runs here (as in confluent-kafka's `close`).
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let (py, this) = (slf.py(), slf.get());
        if this.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        this.stop_poller(Some(slf))?;
        let ctx = this.consumer.context();
        *locked(&ctx.owner) = Some(slf.clone().into_any().unbind());
        let closed = this.consumer.close_queue();
        if closed.is_ok() {
            for _ in 0..300 {
                if this.consumer.closed() {
                    break;
                }
                py.detach(|| this.consumer.poll(Duration::from_millis(100)));
            }
        }
        *locked(&ctx.owner) = None;
        *locked(&ctx.on_assign) = None;
        *locked(&ctx.on_revoke) = None;
        if let Some(e) = locked(&ctx.error).take() {
            return Err(e);
        }
        closed.map_err(|e| kafka_err("close", e))
    }
}

impl Drop for NativeConsumer {
    /// Dropped without `close` (a test, an error on the way up): BaseConsumer's own drop leaves the
    /// group, without calling back into Python.
    fn drop(&mut self) {
        self.shared.abandon.store(true, Ordering::SeqCst);
        let _ = self.stop_poller(None);
        let ctx = self.consumer.context();
        *locked(&ctx.on_assign) = None;
        *locked(&ctx.on_revoke) = None;
    }
}

impl NativeConsumer {
    fn start_poller(&self, action_topic: &str) -> PyResult<()> {
        let mut poller = locked(&self.poller);
        if poller.is_none() && !self.closed.load(Ordering::SeqCst) {
            let (consumer, shared) = (Arc::clone(&self.consumer), Arc::clone(&self.shared));
            let topic = action_topic.to_string();
            let handle = std::thread::Builder::new()
                .name("outer-consumer".into())
                .spawn(move || poll_loop(consumer, shared, topic))
                .map_err(|e| PyRuntimeError::new_err(format!("consumer thread: {e}")))?;
            *poller = Some(handle);
        }
        Ok(())
    }

    /// End the polling thread; with `slf` (the loop thread, `close`) a rebalance it hands over
    /// meanwhile runs here first (an exception in its callback is raised after the thread ended).
    fn stop_poller(&self, slf: Option<&Bound<'_, Self>>) -> PyResult<()> {
        let Some(handle) = locked(&self.poller).take() else {
            return Ok(());
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        let mut failed = None;
        while !handle.is_finished() {
            match slf {
                Some(slf) => {
                    if let Err(e) = Self::run_handoff(slf) {
                        failed.get_or_insert(e);
                    }
                    slf.py()
                        .detach(|| std::thread::sleep(Duration::from_millis(5)));
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let _ = handle.join();
        locked(&self.shared.inbox).poller = None;
        self.shared.stop.store(false, Ordering::SeqCst); // a later consume_into starts it again
        failed.map_or(Ok(()), Err)
    }

    /// Run the Python callback of a rebalance the polling thread handed over (if one waits), then
    /// let the polling thread go on.
    fn run_handoff(slf: &Bound<'_, Self>) -> PyResult<()> {
        let (py, this) = (slf.py(), slf.get());
        let sh = &this.shared;
        let pending = locked(&sh.inbox)
            .rebalance
            .as_ref()
            .filter(|h| !h.ran)
            .map(|h| (h.assign, h.parts.clone()));
        let Some((assign, parts)) = pending else {
            return Ok(());
        };
        let owner = slf.clone().into_any().unbind();
        let called = this
            .consumer
            .context()
            .run_callback(py, assign, owner, &parts);
        let mut inbox = locked(&sh.inbox);
        if let Some(h) = inbox.rebalance.as_mut() {
            h.ran = true;
        }
        if !assign {
            let revoked: Vec<(String, i32)> = parts.into_iter().map(|(t, p, _)| (t, p)).collect();
            inbox.drop_records_of(&revoked);
            inbox.last_revoked = revoked;
            inbox.revokes += 1;
        }
        sh.ran.notify_all();
        called
    }

    /// Up to `n` of the records handed over (whole runs, the last one split), and the errors.
    fn take(&self, n: usize) -> (usize, Vec<Run>, Vec<String>) {
        let mut inbox = locked(&self.shared.inbox);
        let mut out = Vec::new();
        let mut count = 0;
        while count < n {
            let Some(mut run) = inbox.runs.pop_front() else {
                break;
            };
            if count + run.recs.len() > n {
                let rest = run.recs.split_off(n - count);
                inbox.runs.push_front(Run {
                    topic: run.topic.clone(),
                    partition: run.partition,
                    recs: rest,
                });
            }
            count += run.recs.len();
            out.push(run);
        }
        inbox.count -= count;
        (count, out, std::mem::take(&mut inbox.errors))
    }

    /// Wait at most `wait` for records, errors or a rebalance to run.
    fn wait_for_arrival(&self, wait: Duration) {
        let sh = &self.shared;
        let inbox = locked(&sh.inbox);
        let idle = |i: &mut Inbox| {
            i.count == 0 && i.errors.is_empty() && i.rebalance.as_ref().is_none_or(|h| h.ran)
        };
        let _ = sh.arrived.wait_timeout_while(inbox, wait, idle);
    }
}
