//! Builders shared by the unit tests, the integration tests (`tests/common`) and the
//! benchmarks: one valid feedback, defined once. Public (and hidden from the docs) because
//! integration tests and benches link the library as an ordinary dependency; it is a few lines
//! and allocates only when called, so there is no feature flag to forget.

use crate::pb::Feedback;

/// A valid feedback: the example of `docs/architecture.md` (reward 2.86 with built-in weights).
pub fn feedback(event_id: &str) -> Feedback {
    Feedback {
        event_id: event_id.into(),
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
