"""``rewardloop-admin``: operational one-shots for the native stack scripts and the compose init job.

Subcommands::

    rewardloop-admin create-topics [--partitions 3] [--replication-factor 1] [--wait SECONDS]
                                   [--bootstrap-servers HOST:PORT] [--topic NAME ...]
    rewardloop-admin init-weights  [--segment default] [--redis-url URL] [--wait SECONDS]
    rewardloop-admin show-weights  [--segment default] [--history N] [--redis-url URL]

All are idempotent. Defaults come from the shared environment (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL,
KAFKA_TOPIC_REWARD_RAW, KAFKA_TOPIC_KPI_RAW, KAFKA_TOPIC_SESSIONS). Exit code 0 on success, 1 on
failure (e.g. the broker did not answer within --wait seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from .settings import CommonSettings

# how long create-topics waits at least for the new partitions' leaders (see wait_for_leaders)
LEADER_WAIT_S = 10.0


def _log(msg: str) -> None:
    print(f"rewardloop-admin: {msg}", file=sys.stderr, flush=True)


def _poll_metadata(
    admin: AdminClient,
    wait_s: float,
    ready: Callable[[Any], bool],
    interval_s: float,
    on_error: Callable[[int, KafkaException], None] | None = None,
) -> bool:
    """Ask for cluster metadata until ``ready(metadata)`` or ``wait_s`` seconds passed (at least once)."""
    deadline = time.monotonic() + max(0.0, wait_s)
    attempt = 0
    while True:
        attempt += 1
        try:
            if ready(admin.list_topics(timeout=min(5.0, max(1.0, wait_s)))):
                return True
        except KafkaException as exc:
            if on_error is not None:
                on_error(attempt, exc)
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def wait_for_broker(admin: AdminClient, wait_s: float) -> bool:
    """Poll cluster metadata until a broker answers or ``wait_s`` seconds passed."""

    def log_some(attempt: int, exc: KafkaException) -> None:
        if attempt == 1 or attempt % 10 == 0:
            _log(f"waiting for Kafka: {exc}")

    return _poll_metadata(admin, wait_s, lambda md: bool(md.brokers), 0.5, log_some)


def create_topics(
    bootstrap_servers: str,
    topics: Sequence[str],
    partitions: int = 3,
    replication_factor: int = 1,
    wait_s: float = 0.0,
) -> int:
    # log_level 0: librdkafka's connect-retry noise would drown our own messages while waiting.
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    if not wait_for_broker(admin, wait_s):
        _log(f"Kafka at {bootstrap_servers} did not answer within {wait_s:.0f}s")
        return 1
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor) for t in topics],
        operation_timeout=30,
        request_timeout=30,
    )
    rc = 0
    for topic, fut in futures.items():
        try:
            fut.result()
            _log(f"created topic {topic} (partitions={partitions}, replication={replication_factor})")
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                _log(f"topic {topic} already exists")
            else:
                _log(f"failed to create topic {topic}: {exc}")
                rc = 1
    leader_wait_s = max(wait_s, LEADER_WAIT_S)
    if rc == 0 and not wait_for_leaders(admin, topics, leader_wait_s):
        _log(f"topics {list(topics)} have partitions without a leader after {leader_wait_s:.0f}s")
        rc = 1
    return rc


def wait_for_leaders(admin: AdminClient, topics: Sequence[str], wait_s: float) -> bool:
    """Poll metadata until every partition of ``topics`` has a leader (or ``wait_s`` passed).

    A KRaft controller acknowledges CreateTopics before the broker has applied the new partitions:
    a client that asked for watermarks right after got NOT_LEADER_FOR_PARTITION (seen in CI). Once
    the broker's own metadata names a leader for each partition, the topic is usable."""
    return _poll_metadata(admin, wait_s, lambda md: all(_has_leaders(md, t) for t in topics), 0.2)


def _has_leaders(md: Any, topic: str) -> bool:
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        return False
    return all(p.leader >= 0 and p.error is None for p in t.partitions.values())


def _redis_store(url: str, wait_s: float):  # type: ignore[no-untyped-def]
    import redis

    from .weights_store import WeightsStore

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        try:
            client.ping()
            return WeightsStore(client)
        except redis.RedisError as exc:
            if time.monotonic() >= deadline:
                _log(f"Redis at {url} did not answer: {exc}")
                return None
            time.sleep(0.5)


def init_weights(redis_url: str, segment: str, wait_s: float) -> int:
    store = _redis_store(redis_url, wait_s)
    if store is None:
        return 1
    created, doc = store.init_segment(segment)
    _log(
        ("wrote" if created else "kept existing") + f" weights for segment {segment} (version {doc.version})"
    )
    print(doc.model_dump_json())
    return 0


def show_weights(redis_url: str, segment: str, history: int) -> int:
    store = _redis_store(redis_url, 0.0)
    if store is None:
        return 1
    out = {"current": store.get(segment).model_dump(mode="json")}
    if history > 0:
        out["history"] = [d.model_dump(mode="json") for d in store.history(segment, history)]
    print(json.dumps(out, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    env = CommonSettings()
    parser = argparse.ArgumentParser(
        prog="rewardloop-admin",
        description="rewardloop operational commands (idempotent; safe to re-run).",
        epilog=(
            "Environment: KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092), REDIS_URL "
            "(default redis://127.0.0.1:6379/0), KAFKA_TOPIC_REWARD_RAW / KAFKA_TOPIC_KPI_RAW / "
            "KAFKA_TOPIC_SESSIONS / OUTER_LATE_TOPIC (topic names). Flags override the environment."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ct = sub.add_parser(
        "create-topics",
        help="create the rewardloop topics (ok if they exist)",
        description="Create recsys.reward.raw, recsys.kpi.raw, recsys.sessions and recsys.sessions.late "
        "(or --topic ...). "
        "Waits up to --wait seconds for the broker to answer first. Existing topics are left as they are.",
    )
    ct.add_argument("--bootstrap-servers", default=env.kafka_bootstrap_servers, help="default: %(default)s")
    ct.add_argument("--partitions", type=int, default=3, help="partitions per topic (default: %(default)s)")
    ct.add_argument("--replication-factor", type=int, default=1, help="default: %(default)s")
    ct.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for the broker to answer (default: %(default)s = one attempt)",
    )
    ct.add_argument(
        "--topic",
        action="append",
        dest="topics",
        metavar="NAME",
        help=f"topic to create (repeatable; default: {', '.join(env.all_topics)})",
    )

    iw = sub.add_parser(
        "init-weights",
        help="write the built-in default weights for a segment if it has no document yet",
        description="Bootstrap rewardloop:weights:<segment> with the built-in defaults (1.0/0.5/-0.3/0.8) "
        "through the atomic weights script, only if no document exists.",
    )
    iw.add_argument("--redis-url", default=env.redis_url, help="default: %(default)s")
    iw.add_argument("--segment", default="default", help="default: %(default)s")
    iw.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait for Redis (default: 0)")

    sw = sub.add_parser("show-weights", help="print a segment's current weights document (and history)")
    sw.add_argument("--redis-url", default=env.redis_url, help="default: %(default)s")
    sw.add_argument("--segment", default="default", help="default: %(default)s")
    sw.add_argument("--history", type=int, default=0, metavar="N", help="also print N history entries")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "create-topics":
        topics = ns.topics or CommonSettings().all_topics
        return create_topics(ns.bootstrap_servers, topics, ns.partitions, ns.replication_factor, ns.wait)
    if ns.command == "init-weights":
        return init_weights(ns.redis_url, ns.segment, ns.wait)
    if ns.command == "show-weights":
        return show_weights(ns.redis_url, ns.segment, ns.history)
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    raise SystemExit(main())
