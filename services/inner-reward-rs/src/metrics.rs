//! Prometheus metrics (one registry per server instance, so tests can run several) and the
//! HTTP endpoint that serves them.

use crate::scoring::{violation_field_label, FieldViolation, Parts, Weights, VIOLATION_FIELDS};
use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use prometheus::{
    Counter, CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;
use thiserror::Error;

/// Sub-millisecond buckets: scoring is pure CPU work, so most requests end well under 1 ms.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Buckets of the logged behavior propensity (valid values are in (0, 1]); `le="0.01"` is the
/// "extreme propensity" threshold of the dashboards and rules.
pub const PROPENSITY_BUCKETS: &[f64] = &[0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0];

/// The `component` label values of `rewardloop_inner_reward_part_abs_total`.
pub const REWARD_COMPONENTS: [&str; 4] = ["click", "dwell", "skip", "relevance"];

#[derive(Debug, Error)]
#[error("registering metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// All metrics of the scorer.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub request_duration: HistogramVec,
    pub requests: IntCounterVec,
    pub events_enqueued: IntCounter,
    pub events_published: IntCounter,
    pub events_failed: IntCounter,
    pub events_dropped: IntCounter,
    pub queue_depth: IntGauge,
    pub spool_bytes: IntGauge,
    pub spool_records: IntGauge,
    pub events_spooled: IntCounter,
    pub events_replayed: IntCounter,
    pub spool_errors: IntCounter,
    pub kafka_in_flight: IntGauge,
    pub weights_version: IntGaugeVec,
    /// The weights in use, by segment and weight name (`click`, `dwell`, `skip`, `relevance`).
    pub weight_value: GaugeVec,
    pub weights_reload_errors: IntCounter,
    pub build_info: IntGaugeVec,
    /// Feedbacks scored (accepted, valid).
    pub scored_events: IntCounter,
    /// |weighted part| summed per component; children in [`REWARD_COMPONENTS`] order.
    pub reward_part_abs: CounterVec,
    part_abs: [Counter; 4],
    pub behavior_propensity: Histogram,
    pub invalid_fields: IntCounterVec,
    /// Feedbacks scored with an exploration action, by segment.
    pub explored: IntCounterVec,
    /// Version of the exploration document in use, by segment (0: none).
    pub exploration_version: IntGaugeVec,
    /// 1 while the latency guardrail is active (handler P99 over budget; optional work shed).
    pub guardrail_active: IntGauge,
    /// Handler-latency P99 over the guardrail's sliding window (seconds).
    pub handler_latency_p99: prometheus::Gauge,
    pub guardrail_activations: IntCounter,
    /// Feedbacks whose optional work (reward-quality metrics) was shed.
    pub guardrail_shed: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "rewardloop_inner_request_duration_seconds",
                "gRPC handler latency of the InnerReward service, by method",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "rewardloop_inner_requests_total",
                "InnerReward requests, by method and gRPC status code",
            ),
            &["method", "code"],
        )?;
        let events_enqueued = IntCounter::new(
            "rewardloop_inner_events_enqueued_total",
            "Scored actions put on the Kafka queue",
        )?;
        let events_published = IntCounter::new(
            "rewardloop_inner_events_published_total",
            "Scored actions acknowledged by Kafka",
        )?;
        let events_failed = IntCounter::new(
            "rewardloop_inner_events_failed_total",
            "Scored actions Kafka did not accept (delivery or produce error)",
        )?;
        let events_dropped = IntCounter::new(
            "rewardloop_inner_events_dropped_total",
            "Scored actions refused (the call failed with UNAVAILABLE) because the telemetry queue was full or closed; accepted events are never dropped",
        )?;
        let queue_depth = IntGauge::new(
            "rewardloop_inner_queue_depth",
            "Scored actions waiting in the in-memory queue for the Kafka producer",
        )?;
        let spool_bytes = IntGauge::new(
            "rewardloop_inner_spool_bytes",
            "Bytes of scored actions in the disk spool waiting to be replayed to Kafka",
        )?;
        let spool_records = IntGauge::new(
            "rewardloop_inner_spool_records",
            "Scored actions in the disk spool (or on their way into or out of it) waiting for Kafka",
        )?;
        let events_spooled = IntCounter::new(
            "rewardloop_inner_events_spooled_total",
            "Scored actions written to the disk spool because Kafka was slow or down",
        )?;
        let events_replayed = IntCounter::new(
            "rewardloop_inner_events_replayed_total",
            "Scored actions read back from the disk spool and handed to Kafka",
        )?;
        let spool_errors = IntCounter::new(
            "rewardloop_inner_spool_errors_total",
            "Disk spool errors (full, write or read failures)",
        )?;
        let kafka_in_flight = IntGauge::new(
            "rewardloop_inner_kafka_in_flight",
            "Scored actions handed to the Kafka producer and not yet acknowledged",
        )?;
        let weights_version = IntGaugeVec::new(
            Opts::new(
                "rewardloop_inner_weights_version",
                "Version of the weights document in use, by segment",
            ),
            &["segment"],
        )?;
        let weight_value = GaugeVec::new(
            Opts::new(
                "rewardloop_inner_weight_value",
                "Value of each inner-reward weight in use, by segment",
            ),
            &["segment", "weight"],
        )?;
        let weights_reload_errors = IntCounter::new(
            "rewardloop_inner_weights_reload_errors_total",
            "Weights documents refused (invalid) or reads from Redis that failed",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "rewardloop_inner_build_info",
                "Build information of the inner-reward scorer (always 1)",
            ),
            &["version"],
        )?;
        let scored_events = IntCounter::new(
            "rewardloop_inner_scored_events_total",
            "Feedbacks scored (valid and accepted), over ScoreAction and ScoreSlate",
        )?;
        let reward_part_abs = CounterVec::new(
            Opts::new(
                "rewardloop_inner_reward_part_abs_total",
                "Sum of the absolute weighted reward parts of scored feedbacks, by component (skip parts are <= 0, hence the absolute value)",
            ),
            &["component"],
        )?;
        let part_abs = REWARD_COMPONENTS.map(|c| reward_part_abs.with_label_values(&[c]));
        let behavior_propensity = Histogram::with_opts(
            HistogramOpts::new(
                "rewardloop_inner_behavior_propensity",
                "Logged behavior-policy propensity of scored feedbacks",
            )
            .buckets(PROPENSITY_BUCKETS.to_vec()),
        )?;
        let invalid_fields = IntCounterVec::new(
            Opts::new(
                "rewardloop_inner_invalid_fields_total",
                "Calls refused with INVALID_ARGUMENT, by the (first) invalid field",
            ),
            &["field"],
        )?;
        let explored = IntCounterVec::new(
            Opts::new(
                "rewardloop_inner_explored_total",
                "Feedbacks scored with an exploration action (the user is in the exploration slice), by segment",
            ),
            &["segment"],
        )?;
        let exploration_version = IntGaugeVec::new(
            Opts::new(
                "rewardloop_inner_exploration_version",
                "Version of the exploration document in use, by segment (0: none)",
            ),
            &["segment"],
        )?;
        let guardrail_active = IntGauge::new(
            "rewardloop_inner_guardrail_active",
            "1 while the handler-latency P99 over the sliding window is over INNER_REWARD_LATENCY_BUDGET_MS (degraded: optional work is shed; still SERVING)",
        )?;
        let handler_latency_p99 = prometheus::Gauge::new(
            "rewardloop_inner_handler_latency_p99_seconds",
            "P99 of the gRPC handler latency over the guardrail's sliding window (upper bucket bound; 0 below the minimum sample count)",
        )?;
        let guardrail_activations = IntCounter::new(
            "rewardloop_inner_guardrail_activations_total",
            "Times the latency guardrail switched to degraded",
        )?;
        let guardrail_shed = IntCounter::new(
            "rewardloop_inner_guardrail_shed_total",
            "Feedbacks scored while degraded, whose optional work (reward-part and propensity metrics) was skipped",
        )?;
        for f in VIOLATION_FIELDS {
            invalid_fields.with_label_values(&[f]);
        }
        for c in [
            Box::new(request_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(requests.clone()),
            Box::new(events_enqueued.clone()),
            Box::new(events_published.clone()),
            Box::new(events_failed.clone()),
            Box::new(events_dropped.clone()),
            Box::new(queue_depth.clone()),
            Box::new(spool_bytes.clone()),
            Box::new(spool_records.clone()),
            Box::new(events_spooled.clone()),
            Box::new(events_replayed.clone()),
            Box::new(spool_errors.clone()),
            Box::new(kafka_in_flight.clone()),
            Box::new(weights_version.clone()),
            Box::new(weight_value.clone()),
            Box::new(weights_reload_errors.clone()),
            Box::new(build_info.clone()),
            Box::new(scored_events.clone()),
            Box::new(reward_part_abs.clone()),
            Box::new(behavior_propensity.clone()),
            Box::new(invalid_fields.clone()),
            Box::new(explored.clone()),
            Box::new(exploration_version.clone()),
            Box::new(guardrail_active.clone()),
            Box::new(handler_latency_p99.clone()),
            Box::new(guardrail_activations.clone()),
            Box::new(guardrail_shed.clone()),
        ] {
            registry.register(c)?;
        }
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(Self {
            registry,
            request_duration,
            requests,
            events_enqueued,
            events_published,
            events_failed,
            events_dropped,
            queue_depth,
            spool_bytes,
            spool_records,
            events_spooled,
            events_replayed,
            spool_errors,
            kafka_in_flight,
            weights_version,
            weight_value,
            weights_reload_errors,
            build_info,
            scored_events,
            reward_part_abs,
            part_abs,
            behavior_propensity,
            invalid_fields,
            explored,
            exploration_version,
            guardrail_active,
            handler_latency_p99,
            guardrail_activations,
            guardrail_shed,
        })
    }

    /// Records one scored feedback: its reward parts and its logged propensity.
    /// A weights document was swapped in for `segment`: its version and every weight's value.
    pub fn set_weights(&self, segment: &str, version: u64, weights: &Weights) {
        self.weights_version
            .with_label_values(&[segment])
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        for (name, value) in [
            ("click", weights.click),
            ("dwell", weights.dwell),
            ("skip", weights.skip),
            ("relevance", weights.relevance),
        ] {
            self.weight_value
                .with_label_values(&[segment, name])
                .set(value);
        }
    }

    pub fn observe_score(&self, parts: &Parts, propensity: f64) {
        self.scored_events.inc();
        let values = [parts.click, parts.dwell, parts.skip, parts.relevance];
        for (counter, v) in self.part_abs.iter().zip(values) {
            let v = v.abs();
            // a counter must never go down or turn NaN; validated input keeps parts finite
            if v.is_finite() && v > 0.0 {
                counter.inc_by(v);
            }
        }
        self.behavior_propensity.observe(propensity);
    }

    /// Records one call refused with INVALID_ARGUMENT, by its invalid field.
    pub fn observe_invalid(&self, v: &FieldViolation) {
        self.invalid_fields
            .with_label_values(&[violation_field_label(&v.field)])
            .inc();
    }

    /// The metric children of one method, resolved once (label lookups take a read lock).
    pub fn method(&self, method: &str) -> MethodMetrics {
        MethodMetrics {
            method: method.to_owned(),
            duration: self.request_duration.with_label_values(&[method]),
            ok: self.requests.with_label_values(&[method, "OK"]),
        }
    }

    /// Records one finished request.
    pub fn observe_request(&self, method: &str, code: tonic::Code, seconds: f64) {
        self.request_duration
            .with_label_values(&[method])
            .observe(seconds);
        self.requests
            .with_label_values(&[method, code_name(code)])
            .inc();
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(8 * 1024);
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Pre-resolved metrics of one gRPC method.
#[derive(Clone)]
pub struct MethodMetrics {
    method: String,
    duration: Histogram,
    ok: IntCounter,
}

impl MethodMetrics {
    /// Records one finished request (label lookup only for non-OK codes).
    pub fn observe(&self, metrics: &Metrics, code: tonic::Code, seconds: f64) {
        self.duration.observe(seconds);
        if code == tonic::Code::Ok {
            self.ok.inc();
        } else {
            metrics
                .requests
                .with_label_values(&[self.method.as_str(), code_name(code)])
                .inc();
        }
    }
}

/// The canonical upper-case gRPC status name (`OK`, `INVALID_ARGUMENT`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `GET /metrics` (Prometheus text) and `GET /healthz` (liveness).
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(healthz))
        .with_state(metrics)
}

/// Liveness: always 200; the body says `degraded` while the latency guardrail is active.
async fn healthz(State(metrics): State<Arc<Metrics>>) -> &'static str {
    if metrics.guardrail_active.get() > 0 {
        "degraded: handler P99 over INNER_REWARD_LATENCY_BUDGET_MS; shedding optional work\n"
    } else {
        "ok\n"
    }
}

async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_all_families() {
        let m = Metrics::new().expect("metrics");
        m.observe_request("ScoreAction", tonic::Code::Ok, 0.0001);
        m.observe_request("ScoreAction", tonic::Code::InvalidArgument, 0.0001);
        m.set_weights(
            "default",
            3,
            &Weights {
                click: 1.25,
                dwell: 0.5,
                skip: -0.3,
                relevance: 0.8,
            },
        );
        m.observe_score(
            &Parts {
                click: 1.0,
                dwell: 0.5,
                skip: -0.3,
                relevance: 0.0,
            },
            0.005,
        );
        m.observe_invalid(&FieldViolation::new(
            "feedbacks[2].behavior_propensity",
            "bad",
        ));
        m.observe_invalid(&FieldViolation::new("feedback.unknown", "bad"));
        let text = m.render();
        for name in [
            "rewardloop_inner_request_duration_seconds_bucket{method=\"ScoreAction\",le=\"0.00005\"}",
            "rewardloop_inner_requests_total{code=\"INVALID_ARGUMENT\",method=\"ScoreAction\"} 1",
            "rewardloop_inner_events_enqueued_total 0",
            "rewardloop_inner_events_published_total 0",
            "rewardloop_inner_events_failed_total 0",
            "rewardloop_inner_events_dropped_total 0",
            "rewardloop_inner_queue_depth 0",
            "rewardloop_inner_spool_bytes 0",
            "rewardloop_inner_spool_records 0",
            "rewardloop_inner_events_spooled_total 0",
            "rewardloop_inner_events_replayed_total 0",
            "rewardloop_inner_spool_errors_total 0",
            "rewardloop_inner_kafka_in_flight 0",
            "rewardloop_inner_weights_version{segment=\"default\"} 3",
            "rewardloop_inner_weight_value{segment=\"default\",weight=\"click\"} 1.25",
            "rewardloop_inner_weight_value{segment=\"default\",weight=\"skip\"} -0.3",
            "rewardloop_inner_weights_reload_errors_total 0",
            "rewardloop_inner_build_info{version=",
            "rewardloop_inner_scored_events_total 1",
            "rewardloop_inner_reward_part_abs_total{component=\"click\"} 1",
            "rewardloop_inner_reward_part_abs_total{component=\"dwell\"} 0.5",
            "rewardloop_inner_reward_part_abs_total{component=\"skip\"} 0.3",
            "rewardloop_inner_reward_part_abs_total{component=\"relevance\"} 0",
            "rewardloop_inner_behavior_propensity_bucket{le=\"0.001\"} 0",
            "rewardloop_inner_behavior_propensity_bucket{le=\"0.01\"} 1",
            "rewardloop_inner_behavior_propensity_count 1",
            "rewardloop_inner_invalid_fields_total{field=\"behavior_propensity\"} 1",
            "rewardloop_inner_invalid_fields_total{field=\"other\"} 1",
            "rewardloop_inner_invalid_fields_total{field=\"event_id\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
