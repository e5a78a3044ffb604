//! The consumer loop's per-message work, natively: grouping a consumed batch by (topic, partition)
//! and applying a partition's queued reward events to its window. Each Kafka message costs a few
//! method calls here instead of a few microseconds of interpreted bookkeeping per message; anything
//! unusual (a record the native parser declines, an empty value) stops the run and is handed back to
//! the Python path (`DurableController.handle`), which decides it exactly as before.

use crate::consumer::{Body, RecordQueue};
use crate::event::{self, Action};
use crate::window::NativeWindow;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use std::sync::Arc;

/// `(groups, errors)`: the consumed messages without an error grouped by `(topic, partition)` in
/// arrival order (a dict of lists), and the messages that carry an error.
#[pyfunction]
pub fn group_messages<'py>(
    py: Python<'py>,
    msgs: &Bound<'py, PyList>,
) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyList>)> {
    let groups = PyDict::new(py);
    let errors = PyList::empty(py);
    let mut cur: Option<(Py<PyAny>, i64, Bound<'py, PyList>)> = None;
    for m in msgs.iter() {
        if !m.call_method0(intern!(py, "error"))?.is_none() {
            errors.append(&m)?;
            continue;
        }
        let topic = m.call_method0(intern!(py, "topic"))?;
        let part: i64 = m.call_method0(intern!(py, "partition"))?.extract()?;
        let same = match &cur {
            Some((t, p, _)) => *p == part && t.bind(py).eq(&topic)?,
            None => false,
        };
        if !same {
            let key = PyTuple::new(py, [topic.clone(), part.into_pyobject(py)?.into_any()])?;
            let list = match groups.get_item(&key)? {
                Some(l) => l.cast_into::<PyList>()?,
                None => {
                    let l = PyList::empty(py);
                    groups.set_item(&key, &l)?;
                    l
                }
            };
            cur = Some((topic.unbind(), part, list));
        }
        cur.as_ref().unwrap().2.append(&m)?;
    }
    Ok((groups, errors))
}

/// Apply queued reward-topic messages `msgs[start:]` of one partition to `window`, in order.
///
/// A message below `next_offset` is already in the state (skipped). Returns
/// `(stop, next_offset, applied, counts, lag_ts)`: `stop` is the index of the first message the
/// native path cannot decide (`len(msgs)` when none: its offset is not consumed yet -- the caller
/// hands it to the Python path and continues after it); `applied` how many were applied (the
/// consumed-events counter); `counts[code]` the window's result codes (added, duplicate,
/// unattributed, amended, pending, late); `lag_ts` the Kafka timestamps of the sampled messages: the
/// first applied and then every `lag_every`-th (every one when `lag_every` is 1).
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn ingest_actions(
    window: &Bound<'_, NativeWindow>,
    msgs: &Bound<'_, PyList>,
    start: usize,
    next_offset: i64,
    now_ms: i64,
    lag_every: u64,
) -> PyResult<(usize, i64, u64, [u64; 6], Vec<i64>)> {
    let py = window.py();
    // 1. with the GIL: each message's offset, a copy of its value (the window keeps one anyway) and,
    //    for the sampled ones, the Kafka timestamp; stop at a message without a bytes value
    let n = msgs.len();
    let mut batch: Vec<(usize, i64, Vec<u8>, Option<i64>)> =
        Vec::with_capacity(n.saturating_sub(start));
    let mut next = next_offset;
    let mut stop = n;
    for i in start..n {
        let m = msgs.get_item(i)?;
        let off: i64 = m.call_method0(intern!(py, "offset"))?.extract()?;
        if off < next {
            continue; // already in the state
        }
        let value = m.call_method0(intern!(py, "value"))?;
        let Ok(raw) = value.cast::<PyBytes>() else {
            stop = i; // None (or not bytes): the Python path reports it
            break;
        };
        let ts = if sampled(batch.len() as u64 + 1, lag_every) {
            let (kind, t): (i64, i64) = m.call_method0(intern!(py, "timestamp"))?.extract()?;
            Some(if kind != 0 { t } else { 0 })
        } else {
            None
        };
        batch.push((i, off, raw.as_bytes().to_vec(), ts));
        next = off + 1;
    }
    // 2. without the GIL (another thread can consume meanwhile): parse and apply, in order, up to the
    //    first record the native parser declines
    let mut guard = window.borrow_mut();
    let w: &mut NativeWindow = &mut guard;
    let (stop, run) = py.detach(move || {
        let mut run = Applied::new(next_offset);
        for (i, off, raw, ts) in batch {
            let Some(a) = event::parse_action(&raw) else {
                return (i, run); // the Python path validates it
            };
            run.apply(w, Arc::new(a), off, now_ms, ts);
        }
        (stop, run)
    });
    Ok((stop, run.next, run.applied, run.counts, run.lag_ts))
}

/// Is the `k`-th applied record (from 1) one whose lag is sampled: the first, then every `every`-th?
fn sampled(k: u64, every: u64) -> bool {
    every <= 1 || k % every == 1
}

/// What a run of records applied to a window adds up to: the next offset to read, how many were
/// applied, the window's result codes, the sampled records' Kafka timestamps.
struct Applied {
    next: i64,
    applied: u64,
    counts: [u64; 6],
    lag_ts: Vec<i64>,
}

impl Applied {
    fn new(next: i64) -> Self {
        Self {
            next,
            applied: 0,
            counts: [0; 6],
            lag_ts: Vec::new(),
        }
    }

    fn apply(
        &mut self,
        w: &mut NativeWindow,
        a: Arc<Action>,
        offset: i64,
        now_ms: i64,
        ts: Option<i64>,
    ) {
        self.counts[w.add(a, now_ms) as usize] += 1;
        self.next = offset + 1;
        self.applied += 1;
        if let Some(t) = ts {
            self.lag_ts.push(t);
        }
    }
}

/// [`ingest_actions`] for a [`RecordQueue`] of the native consumer, whose reward events are parsed
/// already: apply its records to `window` in order, removing them, up to the first the native path
/// cannot decide (no value, declined by the parser), which stays at the head for the Python path
/// (`DurableController.handle`). Returns `(next_offset, applied, counts, lag_ts)` as
/// [`ingest_actions`] does.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn ingest_queue(
    window: &Bound<'_, NativeWindow>,
    queue: &Bound<'_, RecordQueue>,
    next_offset: i64,
    now_ms: i64,
    lag_every: u64,
) -> PyResult<(i64, u64, [u64; 6], Vec<i64>)> {
    let py = window.py();
    let mut guard = window.borrow_mut();
    let w: &mut NativeWindow = &mut guard;
    let q = queue.get();
    let run = py.detach(move || {
        let mut recs = q.lock();
        let mut run = Applied::new(next_offset);
        while let Some(rec) = recs.front() {
            if rec.offset < run.next {
                recs.pop_front(); // already in the state
                continue;
            }
            let Body::Action(a) = &rec.body else {
                break; // the Python path decides it
            };
            let ts = sampled(run.applied + 1, lag_every).then(|| rec.ts_ms());
            run.apply(w, Arc::clone(a), rec.offset, now_ms, ts);
            recs.pop_front();
        }
        run
    });
    Ok((run.next, run.applied, run.counts, run.lag_ts))
}
