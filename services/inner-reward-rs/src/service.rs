//! The `rewardloop.v1.InnerReward` gRPC service.

use crate::metrics::Metrics;
use crate::pb::inner_reward_server::InnerReward;
use crate::pb::{
    Feedback, GetConfigRequest, GetConfigResponse, Reward, RewardParts, ScoreActionRequest,
    ScoreActionResponse, ScoreSlateRequest, ScoreSlateResponse,
};
use crate::scoring::{self, normalize_segment, FieldViolation, Signals};
use crate::telemetry::{EnqueueError, Reservation, RewardRecord, TelemetryQueue};
use crate::weights::WeightsStore;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The scorer: validates, scores with the segment's current weights, queues telemetry.
#[derive(Clone)]
pub struct InnerRewardService {
    store: Arc<WeightsStore>,
    /// None: telemetry off.
    queue: Option<TelemetryQueue>,
    metrics: Arc<Metrics>,
    max_slate: usize,
}

impl InnerRewardService {
    pub fn new(
        store: Arc<WeightsStore>,
        queue: Option<TelemetryQueue>,
        metrics: Arc<Metrics>,
        max_slate: usize,
    ) -> Self {
        Self {
            store,
            queue,
            metrics,
            max_slate,
        }
    }

    /// Scores one validated feedback; `sink` receives its telemetry record (None: telemetry off).
    fn score_one(&self, f: Feedback, sink: Option<&mut Reservation<'_>>) -> Reward {
        let segment = normalize_segment(&f.segment).to_owned();
        let doc = self.store.get(&segment);
        let s = scoring::score(Signals::from(&f), &doc.weights);
        self.metrics.observe_score(&s.parts, f.behavior_propensity);
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
        };
        if let Some(r) = sink {
            // Room was reserved for every feedback of the call, so this cannot be refused.
            let _ = r.push(RewardRecord::new(f, segment, &s, doc.version));
        }
        reward
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
        method: &str,
        started: Instant,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        self.metrics
            .observe_request(method, code, started.elapsed().as_secs_f64());
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
                    Response::new(ScoreActionResponse {
                        reward: Some(self.score_one(f, sink.as_mut())),
                    })
                }),
            },
        };
        self.finish("ScoreAction", started, result)
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
                Response::new(ScoreSlateResponse {
                    rewards: feedbacks
                        .into_iter()
                        .map(|f| self.score_one(f, sink.as_mut()))
                        .collect(),
                })
            }),
        };
        self.finish("ScoreSlate", started, result)
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
        self.finish("GetConfig", started, result)
    }
}
