"""Outer-controller settings (environment variables; see services/outer-controller/README.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field

from rewardloop_common.settings import CommonSettings


class OuterSettings(CommonSettings):
    #: 0.0.0.0 so Prometheus can scrape it inside compose (the contract fixes only the port).
    outer_metrics_host: str = "0.0.0.0"
    outer_metrics_port: int = Field(default=9102, ge=0, le=65535)
    outer_session_gap_seconds: float = Field(default=1800.0, gt=0)
    outer_gamma: float = Field(default=0.99, ge=0.0, le=1.0)
    outer_consumer_group: str = Field(default="rewardloop-outer-controller", min_length=1)
    outer_update_batch_sessions: int = Field(default=200, ge=2)
    outer_learning_rate: float = Field(default=0.1, ge=0.0, allow_inf_nan=False)
    outer_max_step: float = Field(default=0.1, ge=0.0, allow_inf_nan=False)

    # --- state, time and lateness (issue #4) ---
    #: redis = durable state in Redis; memory = the same engine with the state in process memory
    outer_state_store: Literal["redis", "memory"] = "redis"
    #: wall: clock = max(partition watermark, wall clock); event: the partition watermark only
    outer_clock: Literal["wall", "event"] = "wall"
    outer_allowed_lateness_seconds: float = Field(default=300.0, ge=0, allow_inf_nan=False)
    outer_attribution_window_seconds: float = Field(default=7 * 86_400.0, ge=0, allow_inf_nan=False)
    outer_late_topic: str = Field(default="recsys.sessions.late", min_length=1)
    outer_checkpoint_interval_ms: int = Field(default=100, ge=0)
    #: while the loop is behind (three full batches in a row), its checkpoint write runs on a thread of its
    #: own and the loop applies the next records meanwhile; caught up, and with false, it is inline
    outer_checkpoint_pipeline: bool = True
    #: past this many bytes (or the snapshot's size, if larger) a shard's delta log is compacted into
    #: its snapshot, a few users per checkpoint, until it is under half of that (.state_log)
    outer_state_log_max_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    #: ... once at least this share of the log's bytes is dead (superseded by later lines; 0: the size
    #: rule alone): a log of live events is not rewritten into the snapshot for nothing (.state_log)
    outer_state_log_garbage_ratio: float = Field(default=0.5, ge=0.0, le=1.0, allow_inf_nan=False)
    #: lz4: the state's values in Redis are LZ4 frames (~5-8x smaller); none: plain JSON lines
    outer_state_compression: Literal["lz4", "none"] = "lz4"
    #: native window: a retained (closed) session's actions are kept LZ4-compressed in memory -- about
    #: half the controller's memory per stored event, ~1 µs more CPU per event (README: Capacity)
    outer_compress_retained: bool = True
    #: merge of a shard's two input partitions: wait at most this long for an idle, lagging one
    outer_max_idle_ms: int = Field(default=2000, ge=0)
    #: 0 = unlimited; else a cap on consumed records per second (catch-up throttle)
    outer_max_records_per_second: int = Field(default=0, ge=0)
    outer_max_queued: int = Field(default=20_000, ge=10)
    outer_kafka_session_timeout_ms: int = Field(default=45_000, ge=1_000)
    #: a fetch answers once it has this many bytes or waited this long: fewer, fuller fetches (the
    #: broker's CPU at 3*10^4 records/s: 0.86-0.98 cores with librdkafka's defaults 1 B / 500 ms, which
    #: answer every fetch as soon as one record arrives, 0.66-0.67 with 64 KiB / 10 ms)
    outer_fetch_min_bytes: int = Field(default=65_536, ge=1)
    outer_fetch_wait_max_ms: int = Field(default=10, ge=0)
    outer_group_instance_id: str = ""
    #: every this many seconds: collect the objects created since the last time, then gc.freeze() the
    #: survivors (the session state) so the collector stops re-scanning them; CPython's automatic
    #: collections are off meanwhile (engine.automatic_gc_paused); 0 = CPython's default GC
    outer_gc_freeze_interval_s: float = Field(default=0.25, ge=0.0, allow_inf_nan=False)
    #: a full collection (unfreeze + collect) this often, for cycles that died after being frozen
    outer_gc_full_interval_s: float = Field(default=900.0, gt=0.0, allow_inf_nan=False)
    #: the per-event path (parse, session window, state lines, records) in the Rust extension
    #: rewardloop_outer_native; false = the Python reference implementation (same bytes, ~4x slower)
    outer_native: bool = True
    #: outbox records produced by rewardloop_outer_native.NativeProducer (librdkafka from Rust, delivery
    #: reports handed over a batch at a time); false = confluent-kafka's Producer (a callback per record)
    outer_native_producer: bool = True
    #: the input topics consumed by rewardloop_outer_native.NativeConsumer (librdkafka from Rust: records
    #: queued per partition natively, reward events parsed from librdkafka's buffer); false =
    #: confluent-kafka's Consumer (a Python Message per record)
    outer_native_consumer: bool = True

    # --- reward blend and credit ---
    outer_kappa_initial: float = Field(default=0.2, ge=0.0, le=1.0)
    outer_kappa_final: float = Field(default=0.8, ge=0.0, le=1.0)
    outer_kappa_anneal_days: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    #: event time (ms) where the anneal starts; 0 = kappa stays at OUTER_KAPPA_INITIAL
    outer_kappa_anchor_ms: int = Field(default=0, ge=0)
    outer_baseline_alpha: float = Field(default=0.05, gt=0.0, le=1.0)
    outer_credit_model_dir: str = ""
    outer_priorities_refresh_s: float = Field(default=2.0, ge=0.0)

    # --- weight tuner ---
    #: drlput = grouped discrete weights + REINFORCE; correlation = the earlier bounded rule
    outer_tuner: Literal["drlput", "correlation"] = "drlput"
    outer_min_sessions: int = Field(default=10_000, ge=1)
    outer_shadow_mode: bool = True
    #: the scorer's exploration slice (share of users served an exploration action; contract max 0.2;
    #: 0 = no exploration document). OUTER_EXPLORE_FRACTION is the earlier name.
    outer_exploration_slice: float = Field(
        default=0.005,
        ge=0.0,
        le=0.2,
        validation_alias=AliasChoices("outer_exploration_slice", "outer_explore_fraction"),
    )
    outer_kl_max: float = Field(default=0.3, gt=0.0)
    outer_tuner_levels: int = Field(default=10, ge=2, le=100)
    outer_tuner_lr: float = Field(default=0.5, gt=0.0)
    outer_tuner_per_segment: bool = True

    @property
    def gap_ms(self) -> int:
        return max(1, round(self.outer_session_gap_seconds * 1000))

    @property
    def lateness_ms(self) -> int:
        return round(self.outer_allowed_lateness_seconds * 1000)

    @property
    def attribution_ms(self) -> int:
        return round(self.outer_attribution_window_seconds * 1000)
