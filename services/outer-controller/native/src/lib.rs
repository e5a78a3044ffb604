//! `rewardloop_outer_native._core`: the outer controller's per-event path in Rust.
//!
//! The Python package `rewardloop_outer` stays the reference implementation (and the home of every
//! rare path: pydantic validation, the gated-attention credit model, the tuner's decisions); this
//! extension does what runs per event at 10^5 events/s -- parsing scored actions, the session window
//! with its durable state lines, and building session records -- with byte-identical output (the
//! tests run both side by side), and the tuner's learning step (~60 a second at that rate).

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

pub mod closed;
pub mod consumer;
pub mod emit;
pub mod event;
pub mod ingest;
pub mod json;
pub mod outbox;
pub mod producer;
pub mod record;
pub mod tuner_step;
pub mod uncovered;
pub mod window;

/// Every Rust allocation of the extension (Python objects stay with CPython's allocator): the per-event
/// path allocates and frees a handful of small strings per record, where mimalloc is several times
/// faster than glibc's malloc. Its transparent huge pages are turned off (`MIMALLOC_ALLOW_THP=0`, set by
/// the Python package before this library loads): see `python/rewardloop_outer_native/__init__.py`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `orjson.dumps(x)` for a finite float (differential tests of the JSON writer).
#[pyfunction]
fn dumps_f64(py: Python<'_>, x: f64) -> Py<PyBytes> {
    let mut out = Vec::new();
    json::write_f64(&mut out, x);
    PyBytes::new(py, &out).unbind()
}

/// `orjson.dumps(s)` for a str (differential tests of the JSON writer).
#[pyfunction]
fn dumps_str(py: Python<'_>, s: &str) -> Py<PyBytes> {
    let mut out = Vec::new();
    json::write_str(&mut out, s);
    PyBytes::new(py, &out).unbind()
}

/// The fields the native parser reads from a reward event (`None`: not the common shape; the
/// Python path decides). For the differential tests against `fastevents._fast_action`.
#[pyfunction]
fn parse_action_fields<'py>(py: Python<'py>, raw: &[u8]) -> PyResult<Option<Bound<'py, PyDict>>> {
    let Some(a) = event::parse_action(raw) else {
        return Ok(None);
    };
    let d = PyDict::new(py);
    d.set_item("event_id", a.event_id())?;
    d.set_item("request_id", a.request_id())?;
    d.set_item("user_id", a.user_id())?;
    d.set_item("item_id", a.item_id())?;
    d.set_item("position", a.position)?;
    d.set_item("event_time_ms", a.event_time_ms)?;
    d.set_item("clicked", a.clicked)?;
    d.set_item("dwell_seconds", a.dwell_seconds)?;
    d.set_item("skipped", a.skipped)?;
    d.set_item("predicted_relevance", a.predicted_relevance)?;
    d.set_item("behavior_propensity", a.behavior_propensity)?;
    d.set_item("segment", a.segment())?;
    d.set_item("reward", a.reward)?;
    d.set_item("weights_version", a.weights_version)?;
    d.set_item("explore_action", a.explore_action())?;
    d.set_item("explore_probability", a.explore_probability())?;
    d.set_item("exploration_version", a.exploration_version())?;
    d.set_item("raw", PyBytes::new(py, a.raw()))?;
    Ok(Some(d))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<closed::Closed>()?;
    m.add_class::<window::NativeWindow>()?;
    m.add_class::<producer::NativeProducer>()?;
    m.add_class::<consumer::NativeConsumer>()?;
    m.add_class::<consumer::RecordQueue>()?;
    m.add_class::<consumer::Record>()?;
    m.add_function(wrap_pyfunction!(emit::close_records, m)?)?;
    m.add_function(wrap_pyfunction!(ingest::group_messages, m)?)?;
    m.add_function(wrap_pyfunction!(ingest::ingest_actions, m)?)?;
    m.add_function(wrap_pyfunction!(ingest::ingest_queue, m)?)?;
    m.add_function(wrap_pyfunction!(outbox::outbox_batch, m)?)?;
    m.add_function(wrap_pyfunction!(dumps_f64, m)?)?;
    m.add_function(wrap_pyfunction!(dumps_str, m)?)?;
    m.add_function(wrap_pyfunction!(parse_action_fields, m)?)?;
    m.add_function(wrap_pyfunction!(tuner_step::drlput_step, m)?)?;
    record::register(m)?;
    Ok(())
}
