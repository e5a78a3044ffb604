//! Closing a shard's due sessions and building their records in one call: what the engine's
//! `close_due` loop does per session (`DurableController._emit` for the native window with discounted
//! credit), without a Python round trip per session -- except one call for revision 0's tuner
//! behaviour when a tuner runs (its state lives in Python). A session the native record
//! path cannot decide (see `record::build_record`) stops the batch: it and the sessions after it go
//! back to the Python loop, in order, with the baselines computed so far.

use crate::closed::{Closed, ClosedCore};
use crate::event::Segment;
use crate::record::{build_record, dict_items, CreditHistogram};
use crate::window::NativeWindow;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::collections::HashMap;

/// What revision 0's behaviour depends on in one batch: the segment and the first step's logged
/// (explore_action, explore_probability as bits, exploration_version).
type BehaviourKey = (Segment, Option<(Option<i64>, Option<u64>, Option<i64>)>);

/// `KappaSchedule.at(t_ms, override)`; `None` where f64 arithmetic could differ from CPython's
/// (integers beyond 2^53).
fn kappa_at(
    t_ms: i64,
    (k0, k1, anneal_ms, anchor_ms, over): (f64, f64, i64, i64, Option<f64>),
) -> Option<f64> {
    if let Some(o) = over {
        // min(1.0, max(0.0, o)) with Python's argument order (a NaN stays out)
        let m = if o > 0.0 { o } else { 0.0 };
        return Some(if m < 1.0 { m } else { 1.0 });
    }
    let frac = if anchor_ms != 0 {
        let d = t_ms.checked_sub(anchor_ms)?;
        const EXACT: i64 = 1 << 53;
        if d.abs() > EXACT || anneal_ms.abs() > EXACT {
            return None;
        }
        let q = d as f64 / anneal_ms as f64;
        let m = if q > 0.0 { q } else { 0.0 };
        if m < 1.0 {
            m
        } else {
            1.0
        }
    } else {
        0.0
    };
    Some(k0 + (k1 - k0) * frac)
}

/// Close the due sessions of `window` and build their records.
///
/// Arguments as `session_record`, plus: `kappa` = the schedule `(initial, final, anneal_ms,
/// anchor_ms, override)`, `baselines` = the shard's segment -> EMA dict (updated for revision 0 with
/// `alpha`), `business_hist` = where revision 0's business rewards are observed, `behaviour` =
/// `None` (no tuner) or `f(segment, first step's (explore_action, explore_probability,
/// exploration_version) or None) -> bytes | None`: revision 0's tuner field (the dict's orjson bytes).
/// Returns `(records, points, n_sessions, n_amendments, rest, fresh, fresh_tuners)`: `records` =
/// `(record id, user_id, value, tuned)` (`tuned`: revision 0's `(segment, kappa, business_reward,
/// business value, click rate, mean ln(1 + dwell), skip rate, mean relevance)`, else `None`); `points` = the trade-off points `(max weights_version, explore_action, clicks,
/// dwell, business value)` of revision-0 sessions; `rest` = the closed sessions left to the Python
/// path (in order); `fresh` = session_key -> baseline of the revision-0 sessions done here,
/// `fresh_tuners` = their (session_key, tuner bytes).
#[pyfunction]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn close_records<'py>(
    py: Python<'py>,
    window: &Bound<'py, NativeWindow>,
    now_ms: i64,
    gamma: f64,
    kappa: (f64, f64, i64, i64, Option<f64>),
    priorities: Vec<(String, f64)>,
    baselines: &Bound<'py, PyDict>,
    alpha: f64,
    credit_model: &str,
    credit_hist: &Bound<'py, CreditHistogram>,
    business_hist: &Bound<'py, CreditHistogram>,
    behaviour: Option<&Bound<'py, PyAny>>,
) -> PyResult<(
    Bound<'py, PyList>,
    Vec<(i64, Option<i64>, f64, f64, f64)>,
    u64,
    u64,
    Vec<Closed>,
    Bound<'py, PyDict>,
    Vec<(String, Bound<'py, PyBytes>)>,
)> {
    let priorities = dict_items(priorities);
    // the shard's baselines as (insertion-ordered) pairs: written back in the dict's order, new
    // segments appended as Python's dict would
    let mut base_map: Vec<(String, f64)> = Vec::with_capacity(baselines.len());
    for (k, v) in baselines.iter() {
        base_map.push((k.extract()?, v.extract()?));
    }
    let (ch, bh) = (credit_hist.get(), business_hist.get());
    let mut guard = window.borrow_mut();
    let w: &mut NativeWindow = &mut guard;
    // without the GIL (another thread can consume meanwhile)
    let closed = py.detach(|| w.close_due_core(now_ms));
    // revision 0's tuner behaviour comes from Python (the tuner's state: exploration documents,
    // current weights): one call per distinct (segment, first step's exploration fields) in this
    // batch -- the answer depends on nothing else the batch could change, and a few distinct keys
    // cover most sessions (the Python call per session was ~1-2 % of the loop thread)
    let mut tuners: Vec<Option<Vec<u8>>> = Vec::with_capacity(closed.len());
    let mut asked: HashMap<BehaviourKey, Option<Vec<u8>>> = HashMap::new();
    for c in &closed {
        let t = match behaviour {
            Some(f) if c.revision == 0 => {
                let first = c.first_explore();
                let key = (
                    c.segment.clone(),
                    first.map(|(a, p, v)| (a, p.map(f64::to_bits), v)),
                );
                match asked.get(&key) {
                    Some(t) => t.clone(),
                    None => {
                        let out = f.call1((c.segment.as_str(), first))?;
                        let t = if out.is_none() {
                            None
                        } else {
                            Some(out.cast::<PyBytes>()?.as_bytes().to_vec())
                        };
                        asked.insert(key, t.clone());
                        t
                    }
                }
            }
            _ => None,
        };
        tuners.push(t);
    }
    let b = py.detach(move || {
        close_batch(
            w,
            closed,
            tuners,
            gamma,
            kappa,
            &priorities,
            base_map,
            alpha,
            credit_model,
            ch,
            bh,
        )
    });
    for (k, v) in &b.baselines {
        baselines.set_item(k, *v)?;
    }
    let records = PyList::empty(py);
    for (rid, user, json, tuned) in b.records {
        records.append((rid, &*user, PyBytes::new(py, &json), tuned))?;
    }
    let fresh = PyDict::new(py);
    for (k, v) in &b.fresh {
        fresh.set_item(k, *v)?;
    }
    let rest = b.rest.into_iter().map(|core| Closed { core }).collect();
    let fresh_tuners = b
        .fresh_tuners
        .iter()
        .map(|(k, t)| (k.clone(), PyBytes::new(py, t)))
        .collect();
    Ok((records, b.points, b.n0, b.n1, rest, fresh, fresh_tuners))
}

/// What the weight tuner reads of a revision-0 session (`weight_update.TunerSession` without the
/// tuner): segment, kappa, business_reward, business value, click rate, mean ln(1 + dwell), skip rate,
/// mean relevance.
type Tuned = (String, f64, f64, f64, f64, f64, f64, f64);

/// (record id, user_id, value, revision 0's tuner fields)
type RecordItem = (String, std::sync::Arc<str>, Vec<u8>, Option<Tuned>);

struct Batch {
    records: Vec<RecordItem>,
    points: Vec<(i64, Option<i64>, f64, f64, f64)>,
    n0: u64,
    n1: u64,
    rest: Vec<ClosedCore>,
    fresh: Vec<(String, f64)>,
    fresh_tuners: Vec<(String, Vec<u8>)>,
    baselines: Vec<(String, f64)>,
}

#[allow(clippy::too_many_arguments)]
fn close_batch(
    w: &mut NativeWindow,
    closed: Vec<ClosedCore>,
    tuners: Vec<Option<Vec<u8>>>,
    gamma: f64,
    kappa: (f64, f64, i64, i64, Option<f64>),
    priorities: &[(String, f64)],
    mut baselines: Vec<(String, f64)>,
    alpha: f64,
    credit_model: &str,
    credit_hist: &CreditHistogram,
    business_hist: &CreditHistogram,
) -> Batch {
    let mut b = Batch {
        records: Vec::with_capacity(closed.len()),
        points: Vec::new(),
        n0: 0,
        n1: 0,
        rest: Vec::new(),
        fresh: Vec::new(),
        fresh_tuners: Vec::new(),
        baselines: Vec::new(),
    };
    let mut fresh: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
    let mut fresh_t: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut it = closed.into_iter().zip(tuners);
    while let Some((mut c, tuner0)) = it.next() {
        let skey = c.session_key();
        if c.revision > 0 && c.baseline.is_none() {
            if let Some(&f) = fresh.get(&skey) {
                c.baseline = Some(f);
            }
        }
        // the record's tuner field: the behaviour for revision 0; revision 0's for an amendment
        // (stored on the session, or closed in this same batch)
        let tuner: Option<Vec<u8>> = if c.revision == 0 {
            tuner0
        } else {
            c.tuner
                .clone()
                .or_else(|| fresh_t.get(&skey).map(|&i| b.fresh_tuners[i].1.clone()))
        };
        let seg = c.segment.as_str();
        let slot = baselines.iter().position(|(k, _)| k == seg);
        let base: Option<f64> = match c.baseline {
            Some(v) if c.revision > 0 => Some(v),
            _ => slot.map(|i| baselines[i].1),
        };
        let k_at = kappa_at(c.end_ms, kappa);
        let out = k_at.and_then(|k| {
            build_record(
                &c,
                gamma,
                k,
                priorities,
                base,
                None,
                credit_model,
                tuner.as_deref(),
            )
        });
        let Some(r) = out else {
            b.rest.push(c);
            b.rest.extend(it.map(|(c, _)| c));
            break;
        };
        if c.revision == 0 {
            let ema = match base {
                None => r.blended,
                Some(v) => (1.0 - alpha) * v + alpha * r.blended,
            };
            match slot {
                Some(i) => baselines[i].1 = ema,
                None => baselines.push((seg.to_string(), ema)),
            }
            let key_ms = if c.key_ms != 0 { c.key_ms } else { c.start_ms };
            w.set_baseline(&c.user_id, key_ms, r.baseline);
            if let Some(t) = tuner {
                w.set_tuner(&c.user_id, key_ms, &t);
                match fresh_t.get(&skey) {
                    Some(&i) => b.fresh_tuners[i].1 = t,
                    None => {
                        fresh_t.insert(skey.clone(), b.fresh_tuners.len());
                        b.fresh_tuners.push((skey.clone(), t));
                    }
                }
            }
            if fresh.insert(skey.clone(), r.baseline).is_none() {
                b.fresh.push((skey.clone(), r.baseline));
            } else if let Some(e) = b.fresh.iter_mut().find(|(k, _)| *k == skey) {
                e.1 = r.baseline;
            }
            credit_hist.observe_all(&r.credits);
            business_hist.observe_all(&[r.business_reward]);
            let first = c.actions.first().and_then(|a| a.explore_action());
            b.points
                .push((r.max_weights_version, first, r.clicks, r.dwell, r.value));
            b.n0 += 1;
        } else {
            b.n1 += 1;
        }
        let tuned = (c.revision == 0).then(|| {
            let [click, dwell, skip, rel] = r.features;
            (
                seg.to_string(),
                k_at.unwrap_or_default(),
                r.business_reward,
                r.value,
                click,
                dwell,
                skip,
                rel,
            )
        });
        b.records.push((
            format!("s:{}:{}", skey, c.revision),
            c.user_id.clone(),
            r.json,
            tuned,
        ));
    }
    b.baselines = baselines;
    b
}
