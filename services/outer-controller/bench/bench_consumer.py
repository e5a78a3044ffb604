"""``make bench-consumer``: what consuming the input costs the controller's loop thread, per record,
with confluent-kafka's ``Consumer`` (``OUTER_NATIVE_CONSUMER=false``) and with the native core's
``NativeConsumer`` (the default), side by side against one real broker.

Starts Kafka (``bench_outer.bench_stack``: deploy/local/start.sh, the outer bench's RUN_DIR and ports),
produces ``--records`` reward events (``--users`` users, as the outer bench's backlog) into a topic of
three partitions, then alternates the two consumers ``--rounds`` times. A round is a fresh
``DurableController`` (the native window, an in-memory state store, a new consumer group) reading the
whole topic from offset 0 with the engine's own consuming code -- ``_enqueue`` (consume, queue per
partition) and ``_process_queues`` (apply each partition's queue to its session window) -- and
nothing else: no close, no checkpoint, so the figures are the consuming and applying alone.
Measured per record: the calling thread's CPU (``time.thread_time``: what the loop thread pays) and
the whole process's CPU (librdkafka's fetch threads included).

Prints one JSON object: per consumer the per-round figures, and the median per-record CPU ratio
native / confluent. Stops what it started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from rewardloop_common.admin import create_topics
from rewardloop_outer.engine import DurableController, make_input_consumer, make_outbox_producer
from rewardloop_outer.metrics import OuterMetrics
from rewardloop_outer.settings import OuterSettings
from rewardloop_outer.state_store import MemoryStateStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_outer import ENV, bench_stack, consumer_conf, events, produce  # noqa: E402
from bench_producer import native_over_confluent, process_cpu  # noqa: E402


def read_all(bootstrap: str, topic: str, native: bool, records: int, batch: int) -> dict[str, float]:
    """One round: a fresh controller consumes ``records`` from offset 0; the loop thread's and the
    process's CPU while it does."""
    s = OuterSettings(
        kafka_bootstrap_servers=bootstrap,
        kafka_topic_reward_raw=topic,
        kafka_topic_kpi_raw=topic + ".kpi",
        outer_consumer_group=f"bench-consumer-{uuid.uuid4().hex[:6]}",
        outer_clock="event",
        outer_native=True,
        outer_native_consumer=native,
        outer_max_queued=10 * batch,
    )
    consumer = make_input_consumer(
        s,
        {
            **consumer_conf(bootstrap, s.outer_consumer_group, s),
            "partition.assignment.strategy": "range",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
        },
    )
    ctl = DurableController(
        s,
        consumer,
        make_outbox_producer(s, {"bootstrap.servers": bootstrap}),  # nothing to produce: no close
        MemoryStateStore(),
        None,
        OuterMetrics(CollectorRegistry()),
        max_batch=batch,
    )
    ctl.subscribe()
    deadline = time.monotonic() + 60
    while not ctl.shards and time.monotonic() < deadline:  # joined the group, partitions assigned
        ctl._enqueue(1)
    applied = 0
    thread_s = proc_s = wall_s = 0.0
    while applied < records and time.monotonic() < deadline:
        t0, c0, w0 = time.thread_time(), process_cpu(), time.perf_counter()
        ctl._enqueue(batch)
        applied += ctl._process_queues()
        thread_s += time.thread_time() - t0
        proc_s += process_cpu() - c0
        wall_s += time.perf_counter() - w0
    consumer.close()  # the revocation's checkpoint (of the in-memory store) runs inside
    assert applied == records, (applied, records)
    return {
        "thread_cpu_us_per_record": round(1e6 * thread_s / records, 3),
        "process_cpu_us_per_record": round(1e6 * proc_s / records, 3),
        "seconds": round(wall_s, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=300_000, help="reward events per round (default 300000)")
    ap.add_argument(
        "--users", type=int, default=20_000, help="users the events are spread over (default 20000)"
    )
    ap.add_argument(
        "--batch", type=int, default=10_000, help="records per consume call (default 10000, as the bench)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each consumer, alternated (default 3)")
    a = ap.parse_args()
    bootstrap = f"127.0.0.1:{ENV['KAFKA_PORT']}"
    with bench_stack("kafka"):
        topic = f"bench.consumer.{os.getpid()}"
        create_topics(bootstrap, [topic, topic + ".kpi"], partitions=3, wait_s=30)
        produce(bootstrap, topic, events(a.records, a.users))
        out: dict[str, list[dict[str, float]]] = {"confluent": [], "native": []}
        read_all(bootstrap, topic, True, a.records, a.batch)  # warm-up: the broker's page cache, JIT
        for r in range(a.rounds):
            order = ("confluent", "native") if r % 2 == 0 else ("native", "confluent")
            for name in order:
                out[name].append(read_all(bootstrap, topic, name == "native", a.records, a.batch))

        result: dict[str, Any] = {
            "records": a.records,
            "users": a.users,
            "batch": a.batch,
            "rounds": out,
            "native_over_confluent": native_over_confluent(out),
        }
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
