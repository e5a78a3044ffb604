"""``rewardloop-outer``: run the outer controller."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from pydantic import ValidationError

ENV_HELP = """\
environment variables:
  OUTER_METRICS_HOST / OUTER_METRICS_PORT   Prometheus endpoint (default 0.0.0.0 / 9102; port 0 = off)
  OUTER_SESSION_GAP_SECONDS     session gap in event time, float (default 1800)
  OUTER_GAMMA                   discount for per-step returns (default 0.99)
  OUTER_CONSUMER_GROUP          Kafka consumer group (default rewardloop-outer-controller)
  OUTER_UPDATE_BATCH_SESSIONS   closed sessions per segment per weight update (default 200)
  OUTER_LEARNING_RATE / OUTER_MAX_STEP      correlation rule step size and per-update cap (0.1 / 0.1)
  OUTER_STATE_STORE             redis (durable sharded state, default) | memory (same engine, state in RAM)
  OUTER_STATE_LOG_MAX_BYTES     past this size (or the snapshot's, if larger) a shard's delta log is
                                compacted into its snapshot, a few users per checkpoint, until
                                under half of that (64 MiB) ...
  OUTER_STATE_LOG_GARBAGE_RATIO ... once this share of its bytes is dead, superseded by later
                                lines (default 0.5; 0: the size alone)
  OUTER_CLOCK                   wall (default) | event (per-partition event-time watermark only)
  OUTER_ALLOWED_LATENESS_SECONDS    late actions routed to their closed session (default 300)
  OUTER_ATTRIBUTION_WINDOW_SECONDS  delayed KPIs credited to a closed session (default 604800)
  OUTER_LATE_TOPIC              late/unattributed events (default recsys.sessions.late)
  OUTER_NATIVE / OUTER_NATIVE_PRODUCER / OUTER_NATIVE_CONSUMER   the per-event path in the Rust
                                core / its librdkafka producer for the outbox / its librdkafka
                                consumer of the input topics (all default true; false: the Python
                                reference / confluent-kafka's producer / confluent-kafka's consumer)
  OUTER_COMPRESS_RETAINED       closed sessions' actions LZ4-compressed in memory (default true)
  OUTER_CHECKPOINT_INTERVAL_MS  state checkpoint cadence (default 100)
  OUTER_CHECKPOINT_PIPELINE     while behind (3 full batches in a row), write the checkpoint on
                                a thread of its own as the loop goes on (default true; false: inline)
  OUTER_GC_FREEZE_INTERVAL_S / OUTER_GC_FULL_INTERVAL_S  freeze the state out of the GC (0.25; 0 = off) /
                                full collection cadence (900)
  OUTER_KAPPA_INITIAL / OUTER_KAPPA_FINAL / OUTER_KAPPA_ANNEAL_DAYS / OUTER_KAPPA_ANCHOR_MS
                                KPI weight of the blend (0.2 -> 0.8 over 30 days from the anchor)
  OUTER_BASELINE_ALPHA          EMA baseline rate (default 0.05)
  OUTER_CREDIT_MODEL_DIR        directory of credit-model-v<N>.npz artefacts (default: none)
  OUTER_KAFKA_SESSION_TIMEOUT_MS    consumer group session timeout (default 45000)
  OUTER_GROUP_INSTANCE_ID       static group membership id (a restart takes its partitions back at once)
  OUTER_FETCH_MIN_BYTES / OUTER_FETCH_WAIT_MAX_MS   a fetch answers at this many bytes or after this
                                long (65536 / 10): fewer, fuller fetches, less broker CPU
  OUTER_TUNER                   drlput (default) | correlation
  OUTER_MIN_SESSIONS            sessions before any push (default 10000)
  OUTER_SHADOW_MODE             true (default): log would-be weights, never push
  OUTER_EXPLORATION_SLICE       the scorer's exploration slice, published by the tuner (default 0.005)
  OUTER_KL_MAX                  KL(new||old) above this rolls back (default 0.3)
  OUTER_TUNER_LEVELS / OUTER_TUNER_LR / OUTER_TUNER_PER_SEGMENT   (10 / 0.5 / true)
  KAFKA_BOOTSTRAP_SERVERS       default 127.0.0.1:9092
  KAFKA_TOPIC_REWARD_RAW / KAFKA_TOPIC_KPI_RAW / KAFKA_TOPIC_SESSIONS
                                default recsys.reward.raw / recsys.kpi.raw / recsys.sessions
  REDIS_URL                     default redis://127.0.0.1:6379/0
  LOG_FORMAT / LOG_LEVEL        console|json / INFO

Consumes recsys.reward.raw + recsys.kpi.raw, closes per-user sessions, produces recsys.sessions and
updates the inner-reward weights in Redis with the bounded outer rule (see the service README).
SIGTERM/SIGINT: checkpoint, flush, exit (state is in Redis; kill -9 replays from the checkpoint).
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rewardloop-outer",
        description="rewardloop outer controller: sessions, business reward, bounded weight updates.",
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)

    from prometheus_client import start_http_server

    from rewardloop_common.kafka import consumer_config, producer_config
    from rewardloop_common.logging import configure_logging, get_logger
    from rewardloop_common.weights_store import WeightsStore

    from .engine import DurableController, make_input_consumer, make_outbox_producer, make_tuner
    from .metrics import OuterMetrics
    from .settings import OuterSettings
    from .state_store import MemoryStateStore, RedisStateStore, StateStore

    try:
        settings = OuterSettings()
    except ValidationError as exc:
        print(f"rewardloop-outer: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    log = get_logger("rewardloop.outer")

    metrics = OuterMetrics()
    if settings.outer_metrics_port:
        start_http_server(
            settings.outer_metrics_port, addr=settings.outer_metrics_host, registry=metrics.registry
        )
    overrides: dict[str, Any] = {
        "session.timeout.ms": settings.outer_kafka_session_timeout_ms,
        "fetch.min.bytes": settings.outer_fetch_min_bytes,
        "fetch.wait.max.ms": settings.outer_fetch_wait_max_ms,
    }
    if settings.outer_group_instance_id:
        overrides["group.instance.id"] = settings.outer_group_instance_id  # static membership
    consumer = make_input_consumer(
        settings,
        consumer_config(
            settings.kafka_bootstrap_servers,
            settings.outer_consumer_group,
            client_id="rewardloop-outer",
            **overrides,
        ),
    )
    producer = make_outbox_producer(
        settings, producer_config(settings.kafka_bootstrap_servers, "rewardloop-outer")
    )
    store = WeightsStore.from_url(settings.redis_url, socket_connect_timeout=2.0, socket_timeout=5.0)
    state: StateStore
    if settings.outer_state_store == "memory":
        state = MemoryStateStore(reader=store.client.get)  # KPI priorities stay re-targetable
    else:
        state = RedisStateStore(store.client, settings.outer_consumer_group, settings.outer_state_compression)
    controller = DurableController(
        settings, consumer, producer, state, make_tuner(settings, store, metrics), metrics
    )

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received, stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "outer controller starting",
        kafka=settings.kafka_bootstrap_servers,
        redis=settings.redis_url,
        gap_seconds=settings.outer_session_gap_seconds,
        metrics_port=settings.outer_metrics_port,
    )
    controller.run(stop)
    log.info("outer controller stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
