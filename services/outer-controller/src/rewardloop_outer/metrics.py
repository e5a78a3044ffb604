"""Prometheus metrics of the outer controller (own registry; served on OUTER_METRICS_PORT)."""

from __future__ import annotations

import platform
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from . import __version__
from .native_record import NativeHistogram


class OuterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if registry is None:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        self.events_consumed = Counter(
            "rewardloop_outer_events_consumed_total", "Records consumed, by topic.", ["topic"], registry=r
        )
        self.invalid_records = Counter(
            "rewardloop_outer_invalid_records_total",
            "Records that were not valid JSON or failed schema validation, by topic.",
            ["topic"],
            registry=r,
        )
        self.duplicates = Counter(
            "rewardloop_outer_duplicate_events_total", "Events ignored as duplicates (event_id).", registry=r
        )
        self.sessions_closed = Counter(
            "rewardloop_outer_sessions_closed_total", "Sessions closed and emitted.", registry=r
        )
        self.open_sessions = Gauge("rewardloop_outer_open_sessions", "Currently open sessions.", registry=r)
        self.kpi_unattributed = Counter(
            "rewardloop_outer_kpi_unattributed_total",
            "KPI events for users without an open session.",
            registry=r,
        )
        self.business_reward = NativeHistogram(
            "rewardloop_outer_business_reward",
            "Business reward per closed session.",
            buckets=(-5, -2, -1, 0, 0.5, 1, 1.5, 2, 3, 4, 5),
            registry=r,
        )
        self.business_reward_native = self.business_reward.native
        # credit stats: which shares split each session's advantage, and how large per-step credits are
        self.sessions_credited = Counter(
            "rewardloop_outer_sessions_credited_total",
            "Closed sessions by credit model (discounted fallback or the trainer's gated attention).",
            ["model"],
            registry=r,
        )
        self.credit_model_version = Gauge(
            "rewardloop_outer_credit_model_version",
            "Version of the gated-attention credit model in use (0 = discounted shares).",
            registry=r,
        )
        self._credited: dict[str, tuple[Any, int]] = {}  # observe_credit: model name -> (child, version)
        # a collector over a native histogram: the native core observes every step's credit itself
        # (one Python observe() per step was a visible cost at 10^5 steps/s)
        self.step_credit = NativeHistogram(
            "rewardloop_outer_step_credit",
            "Per-step credit (share x session advantage) written into recsys.sessions.",
            buckets=(-2, -1, -0.5, -0.2, -0.05, 0, 0.05, 0.2, 0.5, 1, 2),
            registry=r,
        )
        self.step_credit_native = self.step_credit.native
        self.weight_updates = Counter(
            "rewardloop_outer_weight_updates_total", "Weights documents pushed by the outer rule.", registry=r
        )
        self.weights_version = Gauge(
            "rewardloop_outer_weights_version",
            "Version of the last weights document the controller wrote or read, by segment.",
            ["segment"],
            registry=r,
        )
        self.session_produce_errors = Counter(
            "rewardloop_outer_session_produce_errors_total",
            "Session records whose delivery failed (they are retried).",
            registry=r,
        )
        # --- issue #4: lateness, amendments, durability ---
        self.routed_late = Counter(
            "rewardloop_outer_late_events_routed_total",
            "Out-of-order events routed to an already closed session (which is amended), by kind.",
            ["kind"],
            registry=r,
        )
        self.too_late = Counter(
            "rewardloop_outer_events_too_late_total",
            "Actions beyond the allowed lateness (written to the late-events topic), by kind.",
            ["kind"],
            registry=r,
        )
        self.late_records = Counter(
            "rewardloop_outer_late_records_total",
            "Records written to the late-events topic, by reason (beyond_allowed_lateness, unattributed).",
            ["reason"],
            registry=r,
        )
        self.kpi_pending = Counter(
            "rewardloop_outer_kpi_pending_total",
            "KPI events parked until the watermark passed them (attributed or reported later).",
            registry=r,
        )
        self.amendments = Counter(
            "rewardloop_outer_session_amendments_total",
            "Session records re-emitted with a higher revision (late actions, delayed KPIs).",
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "rewardloop_outer_checkpoint_seconds",
            "Duration of one state checkpoint (Redis MULTI/EXEC).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.checkpoint_errors = Counter(
            "rewardloop_outer_checkpoint_errors_total",
            "Checkpoints that did not land, by reason (redis, fenced).",
            ["reason"],
            registry=r,
        )
        self.state_bytes = Gauge(
            "rewardloop_outer_state_bytes",
            "A shard's durable state before compression: its delta log and its snapshot (part); "
            "log_dead: the log's bytes made dead by later lines (a compaction pass waits for them).",
            ["partition", "part"],
            registry=r,
        )
        self.compacted_users = Counter(
            "rewardloop_outer_state_compacted_users_total",
            "User states written into (or removed from) the snapshot by the incremental compaction.",
            registry=r,
        )
        self.state_lag = Histogram(
            "rewardloop_outer_event_to_state_lag_seconds",
            "Kafka record timestamp -> its effect durable in the session state.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.tuner_decisions = Counter(
            "rewardloop_outer_tuner_decisions_total",
            "Weight tuner decisions, by segment and decision (pushed, shadow, rollback, "
            "blocked_min_sessions, blocked_diversity, blocked_relative_gain, no_change, superseded).",
            ["segment", "decision"],
            registry=r,
        )
        self.tuner_errors = Counter(
            "rewardloop_outer_tuner_errors_total",
            "Closed sessions the weight tuner could not use, by reason (redis, invalid_segment, error); "
            "the sessions themselves are already on recsys.sessions.",
            ["reason"],
            registry=r,
        )
        self.tuner_explored = Counter(
            "rewardloop_outer_tuner_explored_sessions_total",
            "Sessions whose behaviour action was drawn uniformly (the exploration slice).",
            registry=r,
        )
        self.tuner_kl = Gauge(
            "rewardloop_outer_tuner_kl",
            "KL(new || old) of the tuner's last candidate policy, by segment.",
            ["segment"],
            registry=r,
        )
        self.exploration_version = Gauge(
            "rewardloop_outer_exploration_version",
            "Version of the exploration document the tuner last published, by segment.",
            ["segment"],
            registry=r,
        )
        self.exploration_slice = Gauge(
            "rewardloop_outer_exploration_slice",
            "Exploration slice (share of users) of the document the tuner last published, by segment.",
            ["segment"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "rewardloop_outer_consumer_lag_messages",
            "Records behind the high watermark per input partition (high watermark - position).",
            ["topic", "partition"],
            registry=r,
        )
        # trade-off panel: rolling means per (weights version, exploration action) -- bounded labels
        self.tradeoff_clicks = Gauge(
            "rewardloop_outer_tradeoff_clicks",
            "Rolling mean clicks per session, by weights version and exploration action.",
            ["version", "action"],
            registry=r,
        )
        self.tradeoff_dwell = Gauge(
            "rewardloop_outer_tradeoff_dwell_seconds",
            "Rolling mean dwell seconds per session, by weights version and exploration action.",
            ["version", "action"],
            registry=r,
        )
        self.tradeoff_business = Gauge(
            "rewardloop_outer_tradeoff_business_reward",
            "Rolling mean business value per session, by weights version and exploration action.",
            ["version", "action"],
            registry=r,
        )
        self.tradeoff_sessions = Gauge(
            "rewardloop_outer_tradeoff_sessions",
            "Sessions in the rolling window of each trade-off point.",
            ["version", "action"],
            registry=r,
        )
        self.tradeoff_current = Gauge(
            "rewardloop_outer_tradeoff_current",
            "1 for the trade-off point of the current weights (newest version, action=current).",
            ["version", "action"],
            registry=r,
        )
        self.tradeoff_pareto = Gauge(
            "rewardloop_outer_tradeoff_pareto",
            "1 when no other trade-off point has at least as many clicks, dwell and business value "
            "per session and more of one (the live Pareto frontier), else 0.",
            ["version", "action"],
            registry=r,
        )
        self.build_info = Gauge(
            "rewardloop_outer_build_info", "Build information (always 1).", ["version", "python"], registry=r
        )
        self.build_info.labels(version=__version__, python=platform.python_version()).set(1)

    def observe_credit(self, credit_model: str | None, credits: Any, sessions: int = 1) -> None:
        """Closed sessions' credit model (``discounted`` or ``gated-attention:v<N>``) and step credits."""
        name = credit_model or "discounted"
        # the labelled child and the version per model name, resolved once (once per closed session)
        resolved = self._credited.get(name)
        if resolved is None:
            kind, _, version = name.partition(":v")
            resolved = self._credited[name] = (
                self.sessions_credited.labels(model=kind),
                int(version) if version.isdigit() else 0,
            )
        child, version_n = resolved
        child.inc(sessions)
        self.credit_model_version.set(version_n)
        for c in credits:
            self.step_credit.observe(c)
