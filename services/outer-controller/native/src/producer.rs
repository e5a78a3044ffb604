//! The outer controller's producer of outbox records (`recsys.sessions`, the late-events topic):
//! librdkafka through rdkafka, with delivery reports collected here and handed to Python a batch at a
//! time. With confluent-kafka every record cost a `produce` call with a callback object, and every
//! delivery report a `Message` (with a copy of the value) and a Python call: ~12 % of the loop thread at
//! 10^5 events/s (py-spy). The engine (`DurableController`) keeps the outbox itself: what to produce,
//! and what an acknowledgement or a failure means for the durable state.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

/// Delivery reports since the last [`NativeProducer::poll`]: the tokens acknowledged, and the tokens
/// that failed with their error.
#[derive(Default)]
struct Reports {
    delivered: Vec<u64>,
    failed: Vec<(u64, String)>,
}

#[derive(Default)]
struct Ctx {
    reports: Mutex<Reports>,
}

/// librdkafka's own log lines (warnings and worse) on stderr, as its default logger writes them:
/// nothing installs a Rust logger in the Python process, so the `log` crate's default would drop them.
pub fn log_line(client: &str, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
    use RDKafkaLogLevel::*;
    if matches!(level, Emerg | Alert | Critical | Error | Warning) {
        eprintln!("rdkafka ({client}) {level:?} {fac}: {log_message}");
    }
}

/// librdkafka's error events on stderr, but for the transport ones (a broker down, its connection
/// refused): they are in its log lines already, and come again at every poll while the broker is away.
pub fn error_line(client: &str, error: KafkaError, reason: &str) {
    use RDKafkaErrorCode::{AllBrokersDown, BrokerTransportFailure};
    if !matches!(
        error.rdkafka_error_code(),
        Some(AllBrokersDown | BrokerTransportFailure)
    ) {
        eprintln!("rdkafka ({client}) error: {error}: {reason}");
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_line("outer producer", level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        error_line("outer producer", error, reason);
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, token: usize) {
        let mut r = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => r.delivered.push(token as u64),
            Err((e, _)) => r.failed.push((token as u64, e.to_string())),
        }
    }
}

/// A librdkafka producer for Python: `produce` a batch of `(topic, key, value, token)`, `poll` for
/// the tokens delivered and failed since, `flush`, `len()` = records not yet reported.
#[pyclass(module = "rewardloop_outer_native")]
pub struct NativeProducer {
    producer: BaseProducer<Ctx>,
}

/// librdkafka properties from a confluent-kafka style config dict: values as str (`bool`/`int`/`float`
/// written as librdkafka reads them); a Python `logger` entry (confluent-kafka's) is ignored.
pub fn client_config(config: HashMap<String, Bound<'_, PyAny>>) -> PyResult<ClientConfig> {
    let mut cc = ClientConfig::new();
    for (k, v) in config {
        if k == "logger" {
            continue;
        }
        let value = if let Ok(b) = v.extract::<bool>() {
            b.to_string()
        } else if let Ok(s) = v.cast::<PyString>() {
            s.to_str()?.to_string()
        } else {
            v.str()?.to_str()?.to_string()
        };
        cc.set(k, value);
    }
    Ok(cc)
}

/// What a `send` refused: the queue is full (try again after a poll) or another error.
fn refusal(e: &KafkaError) -> String {
    match e {
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => "queue full".to_string(),
        other => other.to_string(),
    }
}

#[pymethods]
impl NativeProducer {
    /// What the engine looks for: `produce` takes a batch with tokens, `poll` returns the reports.
    #[classattr]
    fn batch_reports() -> bool {
        true
    }

    /// `config`: librdkafka properties, as for confluent-kafka's `Producer` (see [`client_config`]).
    #[new]
    fn new(config: HashMap<String, Bound<'_, PyAny>>) -> PyResult<Self> {
        let producer = client_config(config)?
            .create_with_context(Ctx::default())
            .map_err(|e| PyValueError::new_err(format!("producer config: {e}")))?;
        Ok(Self { producer })
    }

    /// Enqueue `records` (`[(topic: str, key: bytes, value: bytes, token: int)]`) in order; stops at
    /// the first one librdkafka refuses. Returns how many were taken and, when one was refused, why
    /// ("queue full": poll and try again).
    fn produce(&self, records: &Bound<'_, PyList>) -> PyResult<(usize, Option<String>)> {
        for (i, rec) in records.iter().enumerate() {
            let rec = rec.cast_into::<PyTuple>()?;
            let topic = rec.get_item(0)?;
            let key = rec.get_item(1)?;
            let value = rec.get_item(2)?;
            let token: usize = rec.get_item(3)?.extract()?;
            let record = BaseRecord::with_opaque_to(topic.cast::<PyString>()?.to_str()?, token)
                .key(key.cast::<PyBytes>()?.as_bytes())
                .payload(value.cast::<PyBytes>()?.as_bytes());
            if let Err((e, _)) = self.producer.send(record) {
                return Ok((i, Some(refusal(&e))));
            }
        }
        Ok((records.len(), None))
    }

    /// Serve librdkafka's events (up to `timeout_s` waiting for the first) and return the delivery
    /// reports since the last call: `(delivered tokens, [(failed token, error)])`.
    fn poll(&self, py: Python<'_>, timeout_s: f64) -> (Vec<u64>, Vec<(u64, String)>) {
        let wait = Duration::from_secs_f64(timeout_s.max(0.0));
        py.detach(|| {
            self.producer.poll(wait);
            // one poll serves one event (a produce request's reports): serve what else is queued
            for _ in 0..1000 {
                let before = self.pending_reports();
                self.producer.poll(Duration::ZERO);
                if self.pending_reports() == before {
                    break;
                }
            }
        });
        let mut r = self
            .producer
            .context()
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (
            std::mem::take(&mut r.delivered),
            std::mem::take(&mut r.failed),
        )
    }

    /// Wait up to `timeout_s` for every enqueued record to be reported (collect the reports with
    /// `poll`); returns how many are still not.
    fn flush(&self, py: Python<'_>, timeout_s: f64) -> usize {
        let wait = Duration::from_secs_f64(timeout_s.max(0.0));
        let _ = py.detach(|| self.producer.flush(wait)); // a timeout: the count says so
        self.__len__()
    }

    /// Records enqueued or in flight, not yet reported.
    fn __len__(&self) -> usize {
        self.producer.in_flight_count().max(0) as usize
    }
}

impl NativeProducer {
    fn pending_reports(&self) -> usize {
        let r = self
            .producer
            .context()
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        r.delivered.len() + r.failed.len()
    }
}
