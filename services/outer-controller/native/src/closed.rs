//! A closed session (or an amended revision of one) as the window hands it out: the native twin of
//! `rewardloop_outer.session_window.ClosedSession`. Events are shared with the window (`Arc`), so a
//! snapshot costs no copy of them; Python sees them only when it asks (`action_raws`, the slow paths).

use crate::event::{Action, Kpi, Segment};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct ClosedCore {
    /// the window's key of the user (shared)
    pub user_id: Arc<str>,
    pub segment: Segment,
    pub start_ms: i64,
    pub end_ms: i64,
    pub closed_at_ms: i64,
    /// ordered by (event_time_ms, position, event_id)
    pub actions: Vec<Arc<Action>>,
    /// ordered by (event_time_ms, event_id)
    pub kpis: Vec<Arc<Kpi>>,
    pub revision: i64,
    /// the start_ms that names the session (0: start_ms)
    pub key_ms: i64,
    /// revision 0's reward baseline (set for amendments)
    pub baseline: Option<f64>,
    /// revision 0's tuner behaviour as orjson bytes of the dict (set for amendments)
    pub tuner: Option<Vec<u8>>,
}

impl ClosedCore {
    /// `"<user_id>:<key_ms or start_ms>"`
    pub fn session_key(&self) -> String {
        let k = if self.key_ms != 0 {
            self.key_ms
        } else {
            self.start_ms
        };
        format!("{}:{}", self.user_id, k)
    }

    /// The first step's exploration fields `(explore_action, explore_probability, exploration_version)`
    /// (the tuner's behaviour and the trade-off point need only these); `None` without steps.
    pub fn first_explore(&self) -> Option<(Option<i64>, Option<f64>, Option<i64>)> {
        self.actions.first().map(|a| {
            (
                a.explore_action(),
                a.explore_probability(),
                a.exploration_version(),
            )
        })
    }
}

#[pyclass(frozen, module = "rewardloop_outer_native")]
pub struct Closed {
    pub core: ClosedCore,
}

#[pymethods]
impl Closed {
    #[getter]
    fn user_id(&self) -> &str {
        &self.core.user_id
    }
    #[getter]
    fn segment(&self) -> &str {
        self.core.segment.as_str()
    }
    #[getter]
    fn start_ms(&self) -> i64 {
        self.core.start_ms
    }
    #[getter]
    fn end_ms(&self) -> i64 {
        self.core.end_ms
    }
    #[getter]
    fn closed_at_ms(&self) -> i64 {
        self.core.closed_at_ms
    }
    #[getter]
    fn revision(&self) -> i64 {
        self.core.revision
    }
    #[getter]
    fn key_ms(&self) -> i64 {
        self.core.key_ms
    }
    #[getter]
    fn baseline(&self) -> Option<f64> {
        self.core.baseline
    }
    #[getter]
    fn session_key(&self) -> String {
        self.core.session_key()
    }
    #[getter]
    fn n_actions(&self) -> usize {
        self.core.actions.len()
    }
    /// The tuner dict's orjson bytes (`None`: not set).
    #[getter]
    fn tuner_json<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.core.tuner.as_ref().map(|t| PyBytes::new(py, t))
    }
    /// A copy with another baseline (`dataclasses.replace(closed, baseline=...)`).
    fn with_baseline(&self, baseline: Option<f64>) -> Closed {
        let mut core = self.core.clone();
        core.baseline = baseline;
        Closed { core }
    }
    /// The actions' JSON bytes, in step order.
    fn action_raws<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(
            py,
            self.core.actions.iter().map(|a| PyBytes::new(py, a.raw())),
        )
    }
    /// The KPI events' JSON bytes, in (event_time_ms, event_id) order.
    fn kpi_raws<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.core.kpis.iter().map(|k| PyBytes::new(py, &k.raw)))
    }
    /// [`ClosedCore::first_explore`].
    fn first_explore(&self) -> Option<(Option<i64>, Option<f64>, Option<i64>)> {
        self.core.first_explore()
    }
}
