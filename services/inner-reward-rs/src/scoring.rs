//! The inner-reward formula and request validation, as pure functions.
//!
//! ```text
//! raw   = w_click·1[clicked] + w_dwell·ln(1 + dwell_seconds) + w_skip·1[skipped] + w_rel·predicted_relevance
//! value = clip(raw, −5, 5)
//! ```
//!
//! Nothing in here allocates on the success path or can panic on any input.

use crate::pb::Feedback;
use std::fmt::Display;
use thiserror::Error;

/// Lower bound of the clipped reward.
pub const REWARD_MIN: f64 = -5.0;
/// Upper bound of the clipped reward.
pub const REWARD_MAX: f64 = 5.0;
/// Longest accepted identifier (`event_id`, `user_id`, ...), in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Segment used when a feedback names none.
pub const DEFAULT_SEGMENT: &str = "default";

/// The four reward weights.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Weights {
    pub click: f64,
    pub dwell: f64,
    pub skip: f64,
    pub relevance: f64,
}

impl Weights {
    /// Built-in defaults, used at version 0 when Redis has no document.
    pub const BUILTIN: Weights = Weights {
        click: 1.0,
        dwell: 0.5,
        skip: -0.3,
        relevance: 0.8,
    };
}

impl Default for Weights {
    fn default() -> Self {
        Self::BUILTIN
    }
}

/// The weighted contribution of each term.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Parts {
    pub click: f64,
    pub dwell: f64,
    pub skip: f64,
    pub relevance: f64,
}

/// The result of scoring one feedback.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Clipped to `[REWARD_MIN, REWARD_MAX]`.
    pub value: f64,
    /// Before clipping.
    pub raw: f64,
    pub parts: Parts,
}

/// The immediate-feedback signals the formula reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signals {
    pub clicked: bool,
    pub dwell_seconds: f64,
    pub skipped: bool,
    pub predicted_relevance: f64,
}

impl From<&Feedback> for Signals {
    fn from(f: &Feedback) -> Self {
        Signals {
            clicked: f.clicked,
            dwell_seconds: f.dwell_seconds,
            skipped: f.skipped,
            predicted_relevance: f.predicted_relevance,
        }
    }
}

/// Scores validated signals with `weights`.
///
/// For validated input (finite, `dwell_seconds >= 0`, relevance in `[0, 1]`) and finite weights
/// every output is finite. For anything else the result is still computed without panicking; a
/// NaN raw value clips to NaN, which is why callers validate first.
pub fn score(s: Signals, w: &Weights) -> Score {
    let parts = Parts {
        click: if s.clicked { w.click } else { 0.0 },
        dwell: w.dwell * s.dwell_seconds.ln_1p(),
        skip: if s.skipped { w.skip } else { 0.0 },
        relevance: w.relevance * s.predicted_relevance,
    };
    let raw = parts.click + parts.dwell + parts.skip + parts.relevance;
    Score {
        value: raw.clamp(REWARD_MIN, REWARD_MAX),
        raw,
        parts,
    }
}

/// One invalid field of a request: the field path and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {description}")]
pub struct FieldViolation {
    /// Path of the field in the request, e.g. `feedback.dwell_seconds` or `feedbacks[3].user_id`.
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Path of the `i`-th feedback of a slate: `feedbacks[i]` (formatted only on error).
#[derive(Debug, Clone, Copy)]
pub struct SlateItem(pub usize);

impl Display for SlateItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "feedbacks[{}]", self.0)
    }
}

fn check_id(
    prefix: impl Display,
    name: &str,
    value: &str,
    required: bool,
) -> Result<(), FieldViolation> {
    if required && value.is_empty() {
        return Err(FieldViolation::new(
            format!("{prefix}.{name}"),
            "must be non-empty",
        ));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(FieldViolation::new(
            format!("{prefix}.{name}"),
            format!(
                "must be at most {MAX_ID_BYTES} bytes, got {} bytes",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Validates one feedback; `prefix` is its path in the request (`feedback`, or
/// [`SlateItem`] for `feedbacks[3]`). Returns the first violation found, in field order.
pub fn validate_feedback(prefix: impl Display + Copy, f: &Feedback) -> Result<(), FieldViolation> {
    check_id(prefix, "event_id", &f.event_id, true)?;
    check_id(prefix, "request_id", &f.request_id, false)?;
    check_id(prefix, "user_id", &f.user_id, true)?;
    check_id(prefix, "session_id", &f.session_id, true)?;
    check_id(prefix, "item_id", &f.item_id, true)?;
    if f.event_time_ms <= 0 {
        return Err(FieldViolation::new(
            format!("{prefix}.event_time_ms"),
            format!(
                "must be > 0 (Unix epoch milliseconds), got {}",
                f.event_time_ms
            ),
        ));
    }
    if !f.dwell_seconds.is_finite() || f.dwell_seconds < 0.0 {
        return Err(FieldViolation::new(
            format!("{prefix}.dwell_seconds"),
            format!("must be finite and >= 0, got {}", f.dwell_seconds),
        ));
    }
    if !f.predicted_relevance.is_finite() || !(0.0..=1.0).contains(&f.predicted_relevance) {
        return Err(FieldViolation::new(
            format!("{prefix}.predicted_relevance"),
            format!(
                "must be finite and in [0, 1], got {}",
                f.predicted_relevance
            ),
        ));
    }
    if !f.behavior_propensity.is_finite()
        || f.behavior_propensity <= 0.0
        || f.behavior_propensity > 1.0
    {
        return Err(FieldViolation::new(
            format!("{prefix}.behavior_propensity"),
            format!(
                "must be finite and in (0, 1], got {}",
                f.behavior_propensity
            ),
        ));
    }
    check_id(prefix, "segment", &f.segment, false)?;
    Ok(())
}

/// Validates a slate: non-empty, at most `max_slate` feedbacks, each one valid.
pub fn validate_slate(feedbacks: &[Feedback], max_slate: usize) -> Result<(), FieldViolation> {
    if feedbacks.is_empty() {
        return Err(FieldViolation::new("feedbacks", "must be non-empty"));
    }
    if feedbacks.len() > max_slate {
        return Err(FieldViolation::new(
            "feedbacks",
            format!(
                "must hold at most {max_slate} feedbacks (INNER_REWARD_MAX_SLATE), got {}",
                feedbacks.len()
            ),
        ));
    }
    for (i, f) in feedbacks.iter().enumerate() {
        validate_feedback(SlateItem(i), f)?;
    }
    Ok(())
}

/// Bounded label values for `rewardloop_inner_invalid_fields_total{field}`: the feedback's field
/// names, `feedback` (missing in ScoreAction) and `feedbacks` (empty or oversized slate).
pub const VIOLATION_FIELDS: &[&str] = &[
    "feedback",
    "feedbacks",
    "event_id",
    "request_id",
    "user_id",
    "session_id",
    "item_id",
    "event_time_ms",
    "dwell_seconds",
    "predicted_relevance",
    "behavior_propensity",
    "segment",
    "other",
];

/// The metric label of a violation's field path: its last component (`feedbacks[3].user_id` is
/// `user_id`), one of [`VIOLATION_FIELDS`]; anything unknown is `other`.
pub fn violation_field_label(path: &str) -> &'static str {
    let last = path.rsplit('.').next().unwrap_or(path);
    VIOLATION_FIELDS
        .iter()
        .copied()
        .find(|f| *f == last)
        .unwrap_or("other")
}

/// The segment a feedback asks for: its own, or `default` when empty.
pub fn normalize_segment(segment: &str) -> &str {
    if segment.is_empty() {
        DEFAULT_SEGMENT
    } else {
        segment
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn valid() -> Feedback {
        crate::test_support::feedback("e-1")
    }

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn violation_field_labels_are_bounded() {
        assert_eq!(
            violation_field_label("feedback.behavior_propensity"),
            "behavior_propensity"
        );
        assert_eq!(violation_field_label("feedbacks[3].user_id"), "user_id");
        assert_eq!(violation_field_label("feedbacks"), "feedbacks");
        assert_eq!(violation_field_label("feedback"), "feedback");
        assert_eq!(violation_field_label("feedback.nope"), "other");
        assert_eq!(violation_field_label(""), "other");
        let mut f = valid();
        f.behavior_propensity = 1.5;
        let v = validate_feedback(SlateItem(2), &f).expect_err("propensity > 1");
        assert_eq!(violation_field_label(&v.field), "behavior_propensity");
    }

    #[test]
    fn formula_matches_doc_example() {
        let s = score(Signals::from(&valid()), &Weights::BUILTIN);
        assert!(approx(s.parts.click, 1.0));
        assert!(approx(s.parts.dwell, 0.5 * 13.5_f64.ln()));
        assert!(approx(s.parts.skip, 0.0));
        assert!(approx(s.parts.relevance, 0.8 * 0.7));
        let expected = 1.0 + 0.5 * 13.5_f64.ln() + 0.56;
        assert!(approx(s.raw, expected));
        assert!(approx(s.value, expected));
        // The example record in docs/architecture.md: click 1.0, dwell 1.30, relevance 0.56 = 2.86.
        assert!((s.parts.dwell - 1.31).abs() < 0.01);
        assert!((s.value - 2.87).abs() < 0.01);
    }

    #[test]
    fn skip_and_no_click() {
        let mut f = valid();
        f.clicked = false;
        f.skipped = true;
        f.dwell_seconds = 0.0;
        f.predicted_relevance = 0.0;
        let s = score(Signals::from(&f), &Weights::BUILTIN);
        assert_eq!(s.parts.click, 0.0);
        assert_eq!(s.parts.dwell, 0.0);
        assert!(approx(s.parts.skip, -0.3));
        assert!(approx(s.value, -0.3));
    }

    #[test]
    fn clips_high_and_low() {
        let w = Weights {
            click: 5.0,
            dwell: 5.0,
            skip: -5.0,
            relevance: 5.0,
        };
        let mut f = valid();
        f.dwell_seconds = 1e6;
        let hi = score(Signals::from(&f), &w);
        assert!(hi.raw > 5.0);
        assert_eq!(hi.value, 5.0);

        let w = Weights {
            click: 0.0,
            dwell: 0.0,
            skip: -5.0,
            relevance: 0.0,
        };
        let mut f = valid();
        f.skipped = true;
        f.clicked = false;
        let lo = score(Signals::from(&f), &w);
        assert_eq!(lo.raw, -5.0);
        assert_eq!(lo.value, -5.0);
    }

    #[test]
    fn clips_below_minimum() {
        // raw below -5 is only reachable with out-of-bounds weights; clipping still holds.
        let w = Weights {
            click: 0.0,
            dwell: 0.0,
            skip: -9.0,
            relevance: 0.0,
        };
        let mut f = valid();
        f.skipped = true;
        f.clicked = false;
        f.predicted_relevance = 0.0;
        f.dwell_seconds = 0.0;
        let s = score(Signals::from(&f), &w);
        assert_eq!(s.raw, -9.0);
        assert_eq!(s.value, -5.0);
    }

    #[test]
    fn valid_feedback_passes() {
        assert_eq!(validate_feedback("feedback", &valid()), Ok(()));
    }

    fn violation(f: Feedback) -> FieldViolation {
        validate_feedback("feedback", &f).expect_err("should be invalid")
    }

    #[test]
    fn required_ids() {
        for (name, set) in [
            (
                "event_id",
                (|f: &mut Feedback| f.event_id.clear()) as fn(&mut Feedback),
            ),
            ("user_id", |f| f.user_id.clear()),
            ("session_id", |f| f.session_id.clear()),
            ("item_id", |f| f.item_id.clear()),
        ] {
            let mut f = valid();
            set(&mut f);
            let v = violation(f);
            assert_eq!(v.field, format!("feedback.{name}"));
            assert!(v.description.contains("non-empty"), "{v}");
        }
    }

    #[test]
    fn optional_ids_may_be_empty() {
        let mut f = valid();
        f.request_id.clear();
        f.segment.clear();
        assert_eq!(validate_feedback("feedback", &f), Ok(()));
    }

    #[test]
    fn ids_at_most_256_bytes() {
        let mut f = valid();
        f.user_id = "x".repeat(256);
        assert_eq!(validate_feedback("feedback", &f), Ok(()));
        f.user_id = "x".repeat(257);
        let v = violation(f);
        assert_eq!(v.field, "feedback.user_id");
        assert!(v.description.contains("256"));

        let mut f = valid();
        f.item_id = "é".repeat(129); // 258 bytes, 129 chars
        assert_eq!(violation(f).field, "feedback.item_id");
    }

    #[test]
    fn event_time_must_be_positive() {
        for t in [0, -1, i64::MIN] {
            let mut f = valid();
            f.event_time_ms = t;
            assert_eq!(violation(f).field, "feedback.event_time_ms");
        }
    }

    #[test]
    fn dwell_finite_non_negative() {
        for d in [-0.001, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut f = valid();
            f.dwell_seconds = d;
            assert_eq!(violation(f).field, "feedback.dwell_seconds");
        }
        let mut f = valid();
        f.dwell_seconds = 0.0;
        assert_eq!(validate_feedback("feedback", &f), Ok(()));
    }

    #[test]
    fn relevance_in_unit_interval() {
        for r in [-0.1, 1.0001, f64::NAN, f64::INFINITY] {
            let mut f = valid();
            f.predicted_relevance = r;
            assert_eq!(violation(f).field, "feedback.predicted_relevance");
        }
        for r in [0.0, 1.0] {
            let mut f = valid();
            f.predicted_relevance = r;
            assert_eq!(validate_feedback("feedback", &f), Ok(()));
        }
    }

    #[test]
    fn propensity_in_half_open_interval() {
        for p in [0.0, -0.5, 1.5, f64::NAN, f64::NEG_INFINITY] {
            let mut f = valid();
            f.behavior_propensity = p;
            assert_eq!(violation(f).field, "feedback.behavior_propensity");
        }
        let mut f = valid();
        f.behavior_propensity = 1.0;
        assert_eq!(validate_feedback("feedback", &f), Ok(()));
    }

    #[test]
    fn slate_rules() {
        let v = validate_slate(&[], 10).expect_err("empty");
        assert_eq!(v.field, "feedbacks");
        let many = vec![valid(); 11];
        let v = validate_slate(&many, 10).expect_err("too many");
        assert_eq!(v.field, "feedbacks");
        assert!(v.description.contains("at most 10"));
        assert_eq!(validate_slate(&many[..10], 10), Ok(()));

        let mut slate = vec![valid(); 5];
        slate[3].user_id.clear();
        let v = validate_slate(&slate, 10).expect_err("bad element");
        assert_eq!(v.field, "feedbacks[3].user_id");
    }

    #[test]
    fn segment_normalization() {
        assert_eq!(normalize_segment(""), "default");
        assert_eq!(normalize_segment("vip"), "vip");
    }
}

#[cfg(test)]
pub(crate) mod properties {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn any_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MAX),
            Just(f64::MIN),
            Just(f64::MIN_POSITIVE),
            Just(-0.0),
            Just(0.0),
            Just(1.0),
            -1e308..1e308f64,
            -10.0..10.0f64,
            0.0..1.0f64,
            any::<f64>(),
        ]
    }

    pub(crate) fn any_id() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9-]{1,16}",
            ".{0,300}",
            Just("x".repeat(300)),
        ]
    }

    prop_compose! {
        pub(crate) fn any_feedback()(
            event_id in any_id(), user_id in any_id(), session_id in any_id(), item_id in any_id(),
            request_id in any_id(), segment in any_id(),
            position in any::<u32>(), event_time_ms in any::<i64>(),
            clicked in any::<bool>(), skipped in any::<bool>(),
            dwell_seconds in any_f64(), predicted_relevance in any_f64(),
            behavior_propensity in any_f64(),
        ) -> Feedback {
            Feedback { event_id, request_id, user_id, session_id, item_id, position, event_time_ms,
                clicked, dwell_seconds, skipped, predicted_relevance, behavior_propensity, segment }
        }
    }

    prop_compose! {
        pub(crate) fn in_bounds_weights()(
            click in 0.0..=5.0f64, dwell in 0.0..=5.0f64, skip in -5.0..=0.0f64, relevance in 0.0..=5.0f64,
        ) -> Weights {
            Weights { click, dwell, skip, relevance }
        }
    }

    prop_compose! {
        fn any_weights()(
            click in any_f64(), dwell in any_f64(), skip in any_f64(), relevance in any_f64(),
        ) -> Weights {
            Weights { click, dwell, skip, relevance }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any input at all: validation and scoring never panic.
        #[test]
        fn never_panics(f in any_feedback(), w in any_weights()) {
            let _ = validate_feedback("feedback", &f);
            let _ = validate_slate(std::slice::from_ref(&f), 1);
            let _ = score(Signals::from(&f), &w);
        }

        /// Valid input with in-bounds weights: finite value in [-5, 5], finite parts.
        #[test]
        fn valid_inputs_give_bounded_finite_values(f in any_feedback(), w in in_bounds_weights()) {
            if validate_feedback("feedback", &f).is_ok() {
                let s = score(Signals::from(&f), &w);
                prop_assert!(s.value.is_finite());
                prop_assert!(s.raw.is_finite());
                prop_assert!((REWARD_MIN..=REWARD_MAX).contains(&s.value));
                prop_assert!(s.parts.click.is_finite() && s.parts.dwell.is_finite());
                prop_assert!(s.parts.skip.is_finite() && s.parts.relevance.is_finite());
            }
        }

        /// Valid signals generated directly (so the property is not vacuous).
        #[test]
        fn generated_valid_signals_are_bounded(
            clicked in any::<bool>(), skipped in any::<bool>(),
            dwell in prop_oneof![0.0..1e6f64, Just(f64::MAX), 0.0..f64::MAX],
            rel in 0.0..=1.0f64, w in in_bounds_weights(),
        ) {
            let s = score(Signals { clicked, dwell_seconds: dwell, skipped, predicted_relevance: rel }, &w);
            prop_assert!(s.value.is_finite() && s.raw.is_finite());
            prop_assert!((REWARD_MIN..=REWARD_MAX).contains(&s.value));
        }
    }
}
