//! The `rewardloop.v1.InnerReward` gRPC service.

use crate::guardrail::Guardrail;
use crate::metrics::{MethodMetrics, Metrics};
use crate::pb::inner_reward_server::InnerReward;
use crate::pb::{
    Feedback, GetConfigRequest, GetConfigResponse, Reward, RewardParts, ScoreActionRequest,
    ScoreActionResponse, ScoreSlateRequest, ScoreSlateResponse,
};
use crate::scoring::{self, normalize_segment, FieldViolation, Signals, DEFAULT_SEGMENT};
use crate::telemetry::{EnqueueError, Reservation, RewardRecord, TelemetryQueue};
use crate::weights::WeightsStore;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The scorer: validates, scores with the segment's current weights (or the user's exploration
/// action), queues telemetry.
#[derive(Clone)]
pub struct InnerRewardService {
    store: Arc<WeightsStore>,
    /// None: telemetry off.
    queue: Option<TelemetryQueue>,
    metrics: Arc<Metrics>,
    guardrail: Arc<Guardrail>,
    max_slate: usize,
    /// Per-method metric children resolved once (no label lookup on the hot path).
    action_metrics: MethodMetrics,
    slate_metrics: MethodMetrics,
    config_metrics: MethodMetrics,
}

impl InnerRewardService {
    pub fn new(
        store: Arc<WeightsStore>,
        queue: Option<TelemetryQueue>,
        metrics: Arc<Metrics>,
        guardrail: Arc<Guardrail>,
        max_slate: usize,
    ) -> Self {
        Self {
            action_metrics: metrics.method("ScoreAction"),
            slate_metrics: metrics.method("ScoreSlate"),
            config_metrics: metrics.method("GetConfig"),
            store,
            queue,
            metrics,
            guardrail,
            max_slate,
        }
    }

    /// Scores one validated feedback; `sink` receives its telemetry record (None: telemetry off).
    /// While the latency guardrail is active the per-feedback reward-quality metrics are shed.
    fn score_one(&self, f: Feedback, sink: Option<&mut Reservation<'_>>, shed: bool) -> Reward {
        let doc = self.store.get(normalize_segment(&f.segment));
        let explore = self.store.exploration(&doc.segment);
        let assignment = explore
            .as_deref()
            .filter(|e| e.doc.slice > 0.0)
            .map(|e| (e, e.doc.assign(&f.user_id)));
        let weights = match &assignment {
            Some((e, a)) => match a.action {
                Some(action) => {
                    e.explored.inc();
                    &action.weights
                }
                None => &doc.weights,
            },
            None => &doc.weights,
        };
        let s = scoring::score(Signals::from(&f), weights);
        if !shed {
            self.metrics.observe_score(&s.parts, f.behavior_propensity);
        }
        let assignment = assignment.map(|(_, a)| a);
        let reward = Reward {
            event_id: f.event_id.clone(),
            value: s.value,
            raw_value: s.raw,
            parts: Some(RewardParts {
                click: s.parts.click,
                dwell: s.parts.dwell,
                skip: s.parts.skip,
                relevance: s.parts.relevance,
            }),
            weights_version: doc.version,
            segment: doc.segment.clone(),
            explore_action: assignment.and_then(|a| a.action.map(|a| a.id)),
            explore_probability: assignment.map(|a| a.probability),
            exploration_version: assignment.map(|a| a.version),
        };
        if let Some(r) = sink {
            let segment = if f.segment.is_empty() {
                DEFAULT_SEGMENT.to_owned()
            } else {
                f.segment.clone()
            };
            // Room was reserved for every feedback of the call, so this cannot be refused.
            let _ = r.push(RewardRecord::new(
                f,
                segment,
                &s,
                doc.version,
                assignment.as_ref(),
            ));
        }
        reward
    }

    /// True (and counted) when the guardrail asks to shed optional work for `n` feedbacks.
    fn shedding(&self, n: usize) -> bool {
        let shed = self.guardrail.is_active();
        if shed {
            self.metrics.guardrail_shed.inc_by(n as u64);
        }
        shed
    }

    /// Reserves telemetry room for `n` records (Ok(None) when telemetry is off).
    fn reserve(&self, n: usize) -> Result<Option<Reservation<'_>>, Status> {
        match &self.queue {
            None => Ok(None),
            Some(q) => q.reserve(n).map(Some).map_err(|e| match e {
                EnqueueError::Full => Status::unavailable(
                    "scorer overloaded: telemetry queue full (Kafka and the disk spool are not keeping up); retry with backoff",
                ),
                EnqueueError::Closed => Status::unavailable("scorer shutting down; retry on another instance"),
            }),
        }
    }

    /// Counts the violation (`rewardloop_inner_invalid_fields_total`) and builds its status.
    fn invalid(&self, v: &FieldViolation) -> Status {
        self.metrics.observe_invalid(v);
        invalid_argument(v)
    }

    fn finish<T>(
        &self,
        method: &MethodMetrics,
        started: Instant,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let elapsed = started.elapsed();
        self.guardrail.record(elapsed);
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        method.observe(&self.metrics, code, elapsed.as_secs_f64());
        result
    }
}

/// INVALID_ARGUMENT with a `BadRequest` detail naming the field.
pub fn invalid_argument(v: &FieldViolation) -> Status {
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(v.field.clone(), v.description.clone());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid {}: {}", v.field, v.description),
        details,
    )
}

#[tonic::async_trait]
impl InnerReward for InnerRewardService {
    async fn score_action(
        &self,
        request: Request<ScoreActionRequest>,
    ) -> Result<Response<ScoreActionResponse>, Status> {
        let started = Instant::now();
        let result = match request.into_inner().feedback {
            None => Err(self.invalid(&FieldViolation::new("feedback", "is required"))),
            Some(f) => match scoring::validate_feedback("feedback", &f) {
                Err(v) => Err(self.invalid(&v)),
                Ok(()) => self.reserve(1).map(|mut sink| {
                    let shed = self.shedding(1);
                    Response::new(ScoreActionResponse {
                        reward: Some(self.score_one(f, sink.as_mut(), shed)),
                    })
                }),
            },
        };
        self.finish(&self.action_metrics, started, result)
    }

    async fn score_slate(
        &self,
        request: Request<ScoreSlateRequest>,
    ) -> Result<Response<ScoreSlateResponse>, Status> {
        let started = Instant::now();
        let feedbacks = request.into_inner().feedbacks;
        let result = match scoring::validate_slate(&feedbacks, self.max_slate) {
            Err(v) => Err(self.invalid(&v)),
            Ok(()) => self.reserve(feedbacks.len()).map(|mut sink| {
                let shed = self.shedding(feedbacks.len());
                Response::new(ScoreSlateResponse {
                    rewards: feedbacks
                        .into_iter()
                        .map(|f| self.score_one(f, sink.as_mut(), shed))
                        .collect(),
                })
            }),
        };
        self.finish(&self.slate_metrics, started, result)
    }

    async fn get_config(
        &self,
        request: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let doc = self.store.get(normalize_segment(&req.segment));
        let result = Ok(Response::new(GetConfigResponse {
            segment: doc.segment.clone(),
            weights: Some(crate::pb::Weights {
                click: doc.weights.click,
                dwell: doc.weights.dwell,
                skip: doc.weights.skip,
                relevance: doc.weights.relevance,
            }),
            version: doc.version,
            source: doc.source.clone(),
            updated_at_ms: doc.updated_at_ms,
        }));
        self.finish(&self.config_metrics, started, result)
    }
}

#[cfg(test)]
mod properties {
    //! Whole requests through the real handlers (no network): any request is either scored in
    //! full, with finite rewards in [-5, 5] in request order, or refused with INVALID_ARGUMENT
    //! naming the first invalid field — never a panic, never a partial answer — with and without
    //! an exploration document in force.
    use super::*;
    use crate::exploration::{Action, ExplorationDoc};
    use crate::scoring::properties::{any_feedback, in_bounds_weights};
    use crate::scoring::{validate_feedback, SlateItem, Weights};
    use proptest::prelude::*;
    use std::time::Duration;

    fn service(explore: Option<(f64, Vec<Weights>)>) -> InnerRewardService {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let store = Arc::new(WeightsStore::new());
        if let Some((slice, weights)) = explore {
            let doc = ExplorationDoc {
                version: 3,
                segment: "default".into(),
                slice,
                actions: weights
                    .into_iter()
                    .enumerate()
                    .map(|(i, weights)| Action {
                        id: i as u64,
                        weights,
                    })
                    .collect(),
                updated_at_ms: 1,
                source: "test".into(),
            };
            store.offer_exploration(doc, metrics.explored.with_label_values(&["default"]));
        }
        let guardrail = Arc::new(Guardrail::new(
            Duration::from_secs(10),
            Duration::from_millis(5),
            200,
            Instant::now(),
        ));
        InnerRewardService::new(store, None, metrics, guardrail, 8)
    }

    fn check_reward(f: &Feedback, r: &Reward, explore: bool) -> Result<(), TestCaseError> {
        prop_assert_eq!(&r.event_id, &f.event_id);
        prop_assert!(r.value.is_finite() && (-5.0..=5.0).contains(&r.value));
        prop_assert!(r.raw_value.is_finite());
        let p = r.parts.as_ref().expect("parts");
        prop_assert!((p.click + p.dwell + p.skip + p.relevance - r.raw_value).abs() < 1e-9);
        prop_assert_eq!(r.exploration_version.is_some(), explore);
        prop_assert_eq!(r.explore_probability.is_some(), explore);
        if let Some(p) = r.explore_probability {
            prop_assert!(p > 0.0 && p <= 1.0);
        }
        Ok(())
    }

    fn any_slate() -> impl Strategy<Value = Vec<Feedback>> {
        // Mostly valid feedbacks (so whole slates get scored), some random ones.
        let one = prop_oneof![
            3 => (any_feedback(), "[a-z0-9-]{1,12}").prop_map(|(mut f, id)| {
                f.event_id = id.clone();
                f.user_id = id.clone();
                f.session_id = id.clone();
                f.item_id = id;
                f.request_id = f.request_id.chars().take(8).collect();
                f.segment.clear();
                f.event_time_ms = f.event_time_ms.unsigned_abs().max(1).min(i64::MAX as u64) as i64;
                f.dwell_seconds = if f.dwell_seconds.is_finite() { f.dwell_seconds.abs().min(1e6) } else { 1.0 };
                f.predicted_relevance = if f.predicted_relevance.is_finite() { f.predicted_relevance.abs().fract() } else { 0.5 };
                f.behavior_propensity = 0.5;
                f
            }),
            1 => any_feedback(),
        ];
        proptest::collection::vec(one, 0..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn whole_requests_are_scored_in_full_or_refused_naming_the_field(
            slate in any_slate(),
            explore in proptest::option::of((0.0..=0.2f64, proptest::collection::vec(in_bounds_weights(), 1..5))),
        ) {
            let explore_on = explore.as_ref().is_some_and(|(slice, _)| *slice > 0.0);
            let svc = service(explore);
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            // ScoreSlate (max slate 8 in this service).
            let answer = rt.block_on(svc.score_slate(Request::new(ScoreSlateRequest { feedbacks: slate.clone() })));
            let first_invalid = slate.iter().enumerate().find_map(|(i, f)| validate_feedback(SlateItem(i), f).err());
            match answer {
                Ok(r) => {
                    let rewards = r.into_inner().rewards;
                    prop_assert!(!slate.is_empty() && slate.len() <= 8 && first_invalid.is_none());
                    prop_assert_eq!(rewards.len(), slate.len());
                    for (f, r) in slate.iter().zip(&rewards) {
                        check_reward(f, r, explore_on)?;
                    }
                }
                Err(status) => {
                    prop_assert_eq!(status.code(), Code::InvalidArgument);
                    let expected = if slate.is_empty() || slate.len() > 8 {
                        "feedbacks".to_owned()
                    } else {
                        first_invalid.expect("refused only when something is invalid").field
                    };
                    let details = status.get_error_details();
                    let bad = details.bad_request().expect("BadRequest detail");
                    prop_assert_eq!(&bad.field_violations[0].field, &expected);
                }
            }
            // ScoreAction with the first feedback (or none).
            let f = slate.first().cloned();
            let answer = rt.block_on(svc.score_action(Request::new(ScoreActionRequest { feedback: f.clone() })));
            match (f, answer) {
                (None, Err(s)) => prop_assert_eq!(s.code(), Code::InvalidArgument),
                (Some(f), Ok(r)) => {
                    prop_assert!(validate_feedback("feedback", &f).is_ok());
                    check_reward(&f, &r.into_inner().reward.expect("reward"), explore_on)?;
                }
                (Some(f), Err(s)) => {
                    prop_assert_eq!(s.code(), Code::InvalidArgument);
                    let v = validate_feedback("feedback", &f).expect_err("refused only when invalid");
                    prop_assert!(s.message().contains(&v.field));
                }
                (None, Ok(_)) => prop_assert!(false, "a missing feedback was scored"),
            }
        }
    }
}
