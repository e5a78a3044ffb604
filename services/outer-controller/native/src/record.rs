//! The session record of one closed session: the native twin of `rewardloop_outer.records`
//! (`compute_record` + `record_json`), with `business_reward.business_parts` / `ndcg_at_k` /
//! `business_reward`, `returns.discounted_returns` and `credit.discounted_shares` inlined.
//!
//! Every float is computed with the operations of the Python code in the same order (C `log1p`,
//! `pow`, left-to-right sums as CPython 3.11's `sum()`, Python's `min`/`max` argument semantics), so
//! the values -- and the record's bytes, written with [`crate::json`] -- are identical. Whatever the
//! Python code sends down its pydantic path (or raises on) returns `None` here: the caller then runs
//! the Python reference, which decides as it always did.
//!
//! [`CreditHistogram`] is a prometheus-style histogram (the `step_credit` metric) that
//! [`session_record`] feeds with every step credit, so the per-step `Histogram.observe` calls leave
//! the Python loop; `rewardloop_outer.native_record` exports it through a prometheus_client collector.

use crate::closed::{Closed, ClosedCore};
use crate::event::{parse_action, Action, Kpi, Segment};
use crate::json::{write_bool, write_f64, write_i64, write_str};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const REWARD_MIN: f64 = -5.0;
const REWARD_MAX: f64 = 5.0;
/// `business_reward.DWELL_NORM` = `math.log1p(300.0)` (the value CPython computes, to the bit)
const DWELL_NORM: f64 = 5.707110264748875;
/// `business_reward._DISCOUNTS` = `math.log2(i + 2)` for i in 0..10 (CPython's values, to the bit)
#[allow(clippy::approx_constant)] // CPython's log2(10), whatever std's LOG2_10 is
const DISCOUNTS: [f64; 10] = [
    1.0,
    1.584962500721156,
    2.0,
    2.321928094887362,
    2.584962500721156,
    2.807354922057604,
    3.0,
    3.169925001442312,
    3.321928094887362,
    3.4594316186372973,
];
/// `business_reward.DEFAULT_PRIORITIES`, in its order (the order `value` sums the parts in)
const DEFAULT_PRIORITIES: [(&str, f64); 4] = [
    ("revenue", 1.0),
    ("ndcg10", 0.5),
    ("engagement", 0.5),
    ("retention", 1.0),
];
/// Priorities beyond this magnitude take the Python path (see `session_record`: int priorities sum
/// exactly in Python, as floats here; only near float overflow could that change a finiteness test).
const PRIORITY_LIMIT: f64 = 1e300;

/// Python's `max(a, b)` for floats: `b` only when `b > a` (the first of equal or unordered ones).
#[inline]
fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

/// Python's `min(a, b)` for floats: `b` only when `b < a`.
#[inline]
fn py_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

/// `business_reward.clip_reward`: `min(5.0, max(-5.0, x))` (NaN -> -5.0, as in Python).
#[inline]
fn clip_reward(x: f64) -> f64 {
    py_min(REWARD_MAX, py_max(REWARD_MIN, x))
}

/// CPython 3.11's `sum()` of floats: `0 + x0` (= `0.0 + x0`), then left to right.
#[inline]
fn py_sum<I: IntoIterator<Item = f64>>(xs: I) -> f64 {
    xs.into_iter().fold(0.0, |acc, x| acc + x)
}

/// `business_reward.step_gain(clicked, dwell, False)`.
#[inline]
fn step_gain(clicked: bool, dwell: f64) -> f64 {
    (if clicked { 1.0 } else { 0.0 }) + py_max(0.0, dwell).ln_1p() / DWELL_NORM
}

/// `credit.discounted_shares(n, gamma)` (`gamma ** k` is C `pow` for a float and an int exponent).
pub fn discounted_shares(n: usize, gamma: f64) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    let w: Vec<f64> = (0..n).map(|t| gamma.powf((n - 1 - t) as f64)).collect();
    let s = py_sum(w.iter().copied());
    if s <= 0.0 {
        let mut out = vec![0.0; n];
        out[n - 1] = 1.0;
        return out;
    }
    w.into_iter().map(|x| x / s).collect()
}

/// The NDCG@10 of one slate from its `(position, gain)` pairs, already sorted as `sorted()` sorts
/// the tuples (`ideal` is scratch space).
fn ndcg_sorted(ranked: &[(usize, i64, f64)], ideal: &mut Vec<f64>) -> f64 {
    let dcg = py_sum(
        ranked
            .iter()
            .zip(DISCOUNTS.iter())
            .map(|(&(_, _, g), &d)| g / d),
    );
    ideal.clear();
    ideal.extend(ranked.iter().map(|&(_, _, g)| g));
    // sorted(reverse=True): equal gains are equal floats (no NaN, no -0.0), so their order is moot
    ideal.sort_by(|a, b| b.partial_cmp(a).unwrap_or(Ordering::Equal));
    let idcg = py_sum(ideal.iter().zip(DISCOUNTS.iter()).map(|(&g, &d)| g / d));
    if idcg > 0.0 {
        dcg / idcg
    } else {
        0.0
    }
}

/// `business_parts` of the session (`revenue`, `ndcg10`, `engagement`, `retention`, `value`).
struct Parts {
    revenue: f64,
    ndcg10: f64,
    engagement: f64,
    retention: f64,
    value: f64,
}

fn business_parts(
    actions: &[Arc<Action>],
    revenue: f64,
    subscriptions: i64,
    return_visits: i64,
    priorities: &[(String, f64)],
) -> Parts {
    // slates: the steps sharing `request_id or event_id`, numbered in first-seen (dict) order
    let n = actions.len();
    let mut keys: Vec<&str> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let use_index = n > 32;
    let mut entries: Vec<(usize, i64, f64)> = Vec::with_capacity(n);
    let mut eng = 0.0;
    for a in actions {
        let key: &str = if a.request_id().is_empty() {
            a.event_id()
        } else {
            a.request_id()
        };
        let slate = if use_index {
            let next = keys.len();
            let i = *index.entry(key).or_insert(next);
            if i == next {
                keys.push(key);
            }
            i
        } else {
            match keys.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    keys.push(key);
                    keys.len() - 1
                }
            }
        };
        let g = step_gain(a.clicked, a.dwell_seconds);
        if a.skipped {
            entries.push((slate, a.position, 0.0));
            eng += g - 0.5;
        } else {
            entries.push((slate, a.position, g));
            eng += g;
        }
    }
    // per slate, sorted((position, gain)); gains are finite and >= 0 (never NaN), so the order of
    // equal tuples (equal values) does not matter; sort_by is stable anyway
    entries.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.partial_cmp(&b.2).unwrap_or(Ordering::Equal))
    });
    let mut ideal = Vec::new();
    let mut ndcg_sum = 0.0;
    let mut i = 0;
    while i < entries.len() {
        let s = entries[i].0;
        let mut j = i + 1;
        while j < entries.len() && entries[j].0 == s {
            j += 1;
        }
        ndcg_sum += ndcg_sorted(&entries[i..j], &mut ideal);
        i = j;
    }
    let ndcg10 = if keys.is_empty() {
        0.0
    } else {
        ndcg_sum / keys.len() as f64
    };
    let engagement = if n > 0 { eng / n as f64 } else { 0.0 };
    let mut p = Parts {
        revenue: py_max(0.0, revenue).ln_1p(),
        ndcg10,
        engagement,
        retention: 0.5 * return_visits as f64 + 1.0 * subscriptions as f64,
        value: 0.0,
    };
    // pr = {**DEFAULT_PRIORITIES, **priorities}; value = sum(pr[k] * parts[k] for k in DEFAULT_PRIORITIES)
    let pr = |k: &str, default: f64| -> f64 {
        priorities
            .iter()
            .rev()
            .find(|(name, _)| name == k)
            .map_or(default, |&(_, v)| v)
    };
    let vals = [p.revenue, p.ndcg10, p.engagement, p.retention];
    let value = py_sum(
        DEFAULT_PRIORITIES
            .iter()
            .zip(vals)
            .map(|(&(k, d), part)| pr(k, d) * part),
    );
    p.value = py_min(REWARD_MAX, py_max(REWARD_MIN, value));
    p
}

/// `business_reward.business_reward(revenue, subscriptions, return_visits)`.
fn business_reward(revenue: f64, subscriptions: i64, return_visits: i64) -> f64 {
    let revenue = py_max(0.0, revenue);
    let raw = revenue.ln_1p() + 1.0 * subscriptions as f64 + 0.5 * return_visits as f64;
    py_min(REWARD_MAX, py_max(REWARD_MIN, raw))
}

/// `records.session_kpi`: (revenue, purchases, return_visits, subscriptions).
fn session_kpi(kpis: &[Arc<Kpi>]) -> (f64, i64, i64, i64) {
    let (mut revenue, mut purchases, mut visits, mut subs) = (0.0, 0i64, 0i64, 0i64);
    for k in kpis {
        match k.kind.as_str() {
            "purchase" => {
                // `k.revenue or 0.0`: None and zeros count as 0.0
                revenue += match k.revenue {
                    Some(r) if r != 0.0 => r,
                    _ => 0.0,
                };
                purchases += 1;
            }
            "return_visit" => visits += 1,
            "subscription" => subs += 1,
            _ => {}
        }
    }
    (revenue, purchases, visits, subs)
}

/// What one record yields besides its bytes.
pub struct RecordOut {
    pub json: Vec<u8>,
    pub credits: Vec<f64>,
    pub blended: f64,
    pub baseline: f64,
    pub value: f64,
    pub business_reward: f64,
    pub clicks: f64,
    pub dwell: f64,
    pub max_weights_version: i64,
    /// the weight tuner's step features (`weight_update.session_features`, summed in step order):
    /// click rate, mean ln(1 + dwell), skip rate, mean predicted relevance
    pub features: [f64; 4],
}

/// `record_json(compute_record(...), tuner)` for one closed session; `None` where the Python code
/// raises or takes its pydantic path. See [`session_record`] for the arguments.
#[allow(clippy::too_many_arguments)]
pub fn build_record(
    c: &ClosedCore,
    gamma: f64,
    kappa: f64,
    priorities: &[(String, f64)],
    base: Option<f64>,
    shares: Option<&[f64]>,
    credit_model: &str,
    tuner_json: Option<&[u8]>,
) -> Option<RecordOut> {
    let actions = &c.actions;
    let n = actions.len();
    // discounted_returns raises; record_json sends these to the model (which rejects them)
    if n == 0 || !(0.0..=1.0).contains(&gamma) {
        return None;
    }
    let user_len = c.user_id.chars().count();
    if user_len == 0 || user_len > 256 {
        return None;
    }
    let skey = c.session_key();
    if skey.chars().count() > 256 {
        return None;
    }
    if priorities.iter().any(|&(_, p)| p.abs() > PRIORITY_LIMIT) {
        return None; // (NaN passes: the finiteness test below catches it, as in Python)
    }
    // G_t = r_t + gamma * G_{t+1}
    let mut returns = vec![0.0; n];
    let mut g = 0.0;
    for t in (0..n).rev() {
        g = actions[t].reward + gamma * g;
        returns[t] = g;
    }
    let (revenue, purchases, visits, subs) = session_kpi(&c.kpis);
    if !revenue.is_finite() {
        return None; // session_kpi raises the model's ValidationError
    }
    let parts = business_parts(actions, revenue, subs, visits, priorities);
    let g0 = returns[0];
    let blended = clip_reward((1.0 - kappa) * g0 + kappa * parts.value);
    let baseline = base.unwrap_or(blended);
    let advantage = clip_reward(blended - baseline);
    let owned_shares;
    let shares: &[f64] = match shares {
        Some(s) => s,
        None => {
            owned_shares = discounted_shares(n, gamma);
            &owned_shares
        }
    };
    if shares.len() != n {
        return None; // compute_record raises ValueError
    }
    let credits: Vec<f64> = shares.iter().map(|&sh| sh * advantage).collect();
    let breward = business_reward(revenue, subs, visits);
    // records._finite, term for term in its order
    let total = py_sum(returns.iter().copied())
        + py_sum(credits.iter().copied())
        + revenue
        + breward
        + parts.revenue
        + parts.ndcg10
        + parts.engagement
        + parts.retention
        + parts.value
        + py_sum(priorities.iter().map(|&(_, p)| p))
        + kappa
        + blended
        + baseline
        + advantage;
    if !total.is_finite() {
        return None;
    }

    let raw_len: usize = actions.iter().map(|a| a.raw().len()).sum();
    let mut o: Vec<u8> =
        Vec::with_capacity(raw_len + 64 * n + 640 + tuner_json.map_or(0, |t| t.len()));
    o.extend_from_slice(b"{\"session_key\":");
    write_str(&mut o, &skey);
    o.extend_from_slice(b",\"user_id\":");
    write_str(&mut o, &c.user_id);
    o.extend_from_slice(b",\"segment\":");
    write_str(&mut o, c.segment.as_str());
    o.extend_from_slice(b",\"start_ms\":");
    write_i64(&mut o, c.start_ms);
    o.extend_from_slice(b",\"end_ms\":");
    write_i64(&mut o, c.end_ms);
    o.extend_from_slice(b",\"closed_at_ms\":");
    write_i64(&mut o, c.closed_at_ms);
    o.extend_from_slice(b",\"n_steps\":");
    write_i64(&mut o, n as i64);
    o.extend_from_slice(b",\"gamma\":");
    write_f64(&mut o, gamma);
    o.extend_from_slice(b",\"steps\":[");
    let mut clicks = 0i64;
    let mut dwell = 0.0;
    let mut max_wv = i64::MIN;
    let (mut skips, mut log_dwell, mut relevance) = (0i64, 0.0f64, 0.0f64);
    for (i, a) in actions.iter().enumerate() {
        if i > 0 {
            o.push(b',');
        }
        o.extend_from_slice(b"{\"event_id\":");
        write_str(&mut o, a.event_id());
        o.extend_from_slice(b",\"item_id\":");
        write_str(&mut o, a.item_id());
        o.extend_from_slice(b",\"position\":");
        write_i64(&mut o, a.position);
        o.extend_from_slice(b",\"event_time_ms\":");
        write_i64(&mut o, a.event_time_ms);
        o.extend_from_slice(b",\"clicked\":");
        write_bool(&mut o, a.clicked);
        o.extend_from_slice(b",\"dwell_seconds\":");
        write_f64(&mut o, a.dwell_seconds);
        o.extend_from_slice(b",\"skipped\":");
        write_bool(&mut o, a.skipped);
        o.extend_from_slice(b",\"predicted_relevance\":");
        write_f64(&mut o, a.predicted_relevance);
        o.extend_from_slice(b",\"behavior_propensity\":");
        write_f64(&mut o, a.behavior_propensity);
        o.extend_from_slice(b",\"reward\":");
        write_f64(&mut o, a.reward);
        o.extend_from_slice(b",\"weights_version\":");
        write_i64(&mut o, a.weights_version);
        o.extend_from_slice(b",\"return\":");
        write_f64(&mut o, returns[i]);
        o.extend_from_slice(b",\"credit\":");
        write_f64(&mut o, credits[i]);
        o.extend_from_slice(b",\"request_id\":");
        write_str(&mut o, a.request_id());
        o.push(b'}');
        // tradeoff.add_steps: clicks counted, dwell summed left to right, the newest weights version
        clicks += a.clicked as i64;
        dwell += a.dwell_seconds;
        max_wv = max_wv.max(a.weights_version);
        skips += a.skipped as i64;
        // max(0.0, d) as Python evaluates it (0.0 unless d is greater)
        log_dwell += (if a.dwell_seconds > 0.0 {
            a.dwell_seconds
        } else {
            0.0
        })
        .ln_1p();
        relevance += a.predicted_relevance;
    }
    o.extend_from_slice(b"],\"discounted_return\":");
    write_f64(&mut o, g0);
    o.extend_from_slice(b",\"kpi\":{\"revenue\":");
    write_f64(&mut o, revenue);
    o.extend_from_slice(b",\"purchases\":");
    write_i64(&mut o, purchases);
    o.extend_from_slice(b",\"return_visits\":");
    write_i64(&mut o, visits);
    o.extend_from_slice(b",\"subscriptions\":");
    write_i64(&mut o, subs);
    o.extend_from_slice(b",\"event_ids\":[");
    for (i, k) in c.kpis.iter().enumerate() {
        if i > 0 {
            o.push(b',');
        }
        write_str(&mut o, &k.event_id);
    }
    o.extend_from_slice(b"]},\"business_reward\":");
    write_f64(&mut o, breward);
    o.extend_from_slice(b",\"weights_versions\":[");
    let mut wvs: Vec<i64> = actions.iter().map(|a| a.weights_version).collect();
    wvs.sort_unstable();
    wvs.dedup();
    for (i, wv) in wvs.iter().enumerate() {
        if i > 0 {
            o.push(b',');
        }
        write_i64(&mut o, *wv);
    }
    o.extend_from_slice(b"],\"revision\":");
    write_i64(&mut o, c.revision);
    o.extend_from_slice(b",\"business\":{\"revenue\":");
    write_f64(&mut o, parts.revenue);
    o.extend_from_slice(b",\"ndcg10\":");
    write_f64(&mut o, parts.ndcg10);
    o.extend_from_slice(b",\"engagement\":");
    write_f64(&mut o, parts.engagement);
    o.extend_from_slice(b",\"retention\":");
    write_f64(&mut o, parts.retention);
    o.extend_from_slice(b",\"priorities\":{");
    for (i, (k, p)) in priorities.iter().enumerate() {
        if i > 0 {
            o.push(b',');
        }
        write_str(&mut o, k);
        o.push(b':');
        write_f64(&mut o, *p);
    }
    o.extend_from_slice(b"},\"value\":");
    write_f64(&mut o, parts.value);
    o.extend_from_slice(b"},\"kappa\":");
    write_f64(&mut o, kappa);
    o.extend_from_slice(b",\"blended_reward\":");
    write_f64(&mut o, blended);
    o.extend_from_slice(b",\"baseline\":");
    write_f64(&mut o, baseline);
    o.extend_from_slice(b",\"advantage\":");
    write_f64(&mut o, advantage);
    o.extend_from_slice(b",\"credit_model\":");
    write_str(&mut o, credit_model);
    if let Some(t) = tuner_json {
        o.extend_from_slice(b",\"tuner\":");
        o.extend_from_slice(t);
    }
    o.push(b'}');
    Some(RecordOut {
        json: o,
        credits,
        blended,
        baseline,
        value: parts.value,
        business_reward: breward,
        clicks: clicks as f64,
        dwell,
        max_weights_version: max_wv,
        features: [
            clicks as f64 / n as f64,
            log_dwell / n as f64,
            skips as f64 / n as f64,
            relevance / n as f64,
        ],
    })
}

/// Dedupe the priorities as the dict they came from would be (a repeated key keeps its first place
/// and its last value).
pub(crate) fn dict_items(items: Vec<(String, f64)>) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::with_capacity(items.len());
    for (k, v) in items {
        match out.iter_mut().find(|(name, _)| *name == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    out
}

/// The record of one closed session: `records.record_json(records.compute_record(...), tuner)`.
///
/// The caller resolves what depends on its state: `kappa` (`ctx.kappa.at(end_ms, override)`), `base`
/// (`closed.baseline` for a revision > 0 that has one, else the shard's EMA of the segment, or None),
/// `priorities` (`ctx.priorities.items()`), `shares` (None: the discounted shares of `gamma`, computed
/// here), `credit_model` (`ctx.credit.name`) and `tuner_json` (orjson of the tuner's
/// `model_dump(mode="json", exclude_unset=True)`, or None). Returns None where the Python code raises
/// or takes its pydantic path (the caller then runs it); else `(record_bytes, blended, baseline,
/// business_value, business_reward, clicks, dwell, max_weights_version)` -- `baseline` is the record's
/// (`base`, or `blended` when None). With `credit_hist`, every step credit of a returned record is
/// observed into it (nothing is observed when None is returned).
#[pyfunction]
#[pyo3(signature = (closed, gamma, kappa, priorities, base, shares, credit_model, tuner_json, credit_hist=None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn session_record<'py>(
    py: Python<'py>,
    closed: &Bound<'py, Closed>,
    gamma: f64,
    kappa: f64,
    priorities: Vec<(String, f64)>,
    base: Option<f64>,
    shares: Option<Vec<f64>>,
    credit_model: &str,
    tuner_json: Option<&[u8]>,
    credit_hist: Option<&Bound<'py, CreditHistogram>>,
) -> Option<(Bound<'py, PyBytes>, f64, f64, f64, f64, f64, f64, i64)> {
    let priorities = dict_items(priorities);
    let r = build_record(
        &closed.get().core,
        gamma,
        kappa,
        &priorities,
        base,
        shares.as_deref(),
        credit_model,
        tuner_json,
    )?;
    if let Some(h) = credit_hist {
        h.get().observe_all(&r.credits);
    }
    Some((
        PyBytes::new(py, &r.json),
        r.blended,
        r.baseline,
        r.value,
        r.business_reward,
        r.clicks,
        r.dwell,
        r.max_weights_version,
    ))
}

/// A `Closed` from event JSON, without the window (tests): actions parsed by `event::parse_action`
/// (a record it does not accept raises ValueError) and kept in the order given, as are the KPIs
/// `(event_id, user_id, kind, event_time_ms, revenue, raw)`.
#[pyfunction]
#[pyo3(signature = (user_id, segment, start_ms, end_ms, closed_at_ms, action_raws, kpis, revision=0, key_ms=0, baseline=None, tuner_json=None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn closed_for_tests(
    user_id: String,
    segment: String,
    start_ms: i64,
    end_ms: i64,
    closed_at_ms: i64,
    action_raws: Vec<Vec<u8>>,
    kpis: Vec<(String, String, String, i64, Option<f64>, Vec<u8>)>,
    revision: i64,
    key_ms: i64,
    baseline: Option<f64>,
    tuner_json: Option<Vec<u8>>,
) -> PyResult<Closed> {
    let mut actions = Vec::with_capacity(action_raws.len());
    for (i, raw) in action_raws.iter().enumerate() {
        let a = parse_action(raw).ok_or_else(|| {
            PyValueError::new_err(format!("action {i} is not of the native parser's shape"))
        })?;
        actions.push(Arc::new(a));
    }
    let kpis = kpis
        .into_iter()
        .map(|(event_id, user_id, kind, event_time_ms, revenue, raw)| {
            Arc::new(Kpi {
                event_id,
                user_id,
                kind,
                event_time_ms,
                revenue,
                raw,
            })
        })
        .collect();
    Ok(Closed {
        core: ClosedCore {
            user_id: user_id.into(),
            segment: Segment::new(&segment),
            start_ms,
            end_ms,
            closed_at_ms,
            actions,
            kpis,
            revision,
            key_ms,
            baseline,
            tuner: tuner_json,
        },
    })
}

/// `credit.discounted_shares(n, gamma)` (differential tests).
#[pyfunction]
#[pyo3(name = "discounted_shares")]
pub fn py_discounted_shares(n: usize, gamma: f64) -> Vec<f64> {
    discounted_shares(n, gamma)
}

struct HistState {
    /// per bucket (not cumulative), as prometheus_client keeps them
    counts: Vec<u64>,
    sum: f64,
}

/// A histogram with prometheus_client's `Histogram` semantics: `x` goes into the first bucket whose
/// upper bound is `>= x` (+Inf implied last; a NaN lands in none but is added to the sum), the sum is
/// added to in observation order.
#[pyclass(frozen, module = "rewardloop_outer_native")]
pub struct CreditHistogram {
    bounds: Vec<f64>,
    state: Mutex<HistState>,
}

impl CreditHistogram {
    pub(crate) fn observe_all(&self, xs: &[f64]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for &x in xs {
            st.sum += x;
            if let Some(i) = self.bounds.iter().position(|&b| x <= b) {
                st.counts[i] += 1;
            }
        }
    }
}

#[pymethods]
impl CreditHistogram {
    /// `buckets`: the upper bounds in ascending order (+Inf appended unless last), as
    /// `prometheus_client.Histogram(buckets=...)` takes them.
    #[new]
    fn new(buckets: Vec<f64>) -> PyResult<Self> {
        let mut bounds = buckets;
        if bounds
            .windows(2)
            .any(|w| matches!(w[0].partial_cmp(&w[1]), None | Some(Ordering::Greater)))
        {
            return Err(PyValueError::new_err("Buckets not in sorted order"));
        }
        if bounds.last().is_some_and(|&b| b != f64::INFINITY) {
            bounds.push(f64::INFINITY);
        }
        if bounds.len() < 2 {
            return Err(PyValueError::new_err("Must have at least two buckets"));
        }
        let counts = vec![0; bounds.len()];
        Ok(CreditHistogram {
            bounds,
            state: Mutex::new(HistState { counts, sum: 0.0 }),
        })
    }

    fn observe(&self, x: f64) {
        self.observe_all(&[x]);
    }

    /// The upper bounds, +Inf included.
    #[getter]
    fn buckets(&self) -> Vec<f64> {
        self.bounds.clone()
    }

    /// `(cumulative counts per bucket, +Inf included; sum; count)`.
    fn snapshot(&self) -> (Vec<u64>, f64, u64) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut acc = 0u64;
        let cum: Vec<u64> = st
            .counts
            .iter()
            .map(|&c| {
                acc += c;
                acc
            })
            .collect();
        (cum, st.sum, acc)
    }
}

/// Adds this module's classes and functions to `_core` (`add_class` / `add_function` also append
/// their names to the module's `__all__`, which the module function sets before calling this).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CreditHistogram>()?;
    m.add_function(wrap_pyfunction!(session_record, m)?)?;
    m.add_function(wrap_pyfunction!(closed_for_tests, m)?)?;
    m.add_function(wrap_pyfunction!(py_discounted_shares, m)?)?;
    Ok(())
}
