"""``make bench-producer``: what producing the outbox costs the controller's loop thread, per record,
with confluent-kafka's ``Producer`` (``OUTER_NATIVE_PRODUCER=false``) and with the native core's
``NativeProducer`` (the default), side by side against one real broker.

Starts Kafka (``bench_outer.bench_stack``: deploy/local/start.sh, the outer bench's RUN_DIR and ports),
then alternates the two producers ``--rounds`` times. A round produces ``--records`` session-record-
sized values (``--value-bytes``, keys over 20 000 users) the way ``DurableController`` does: in batches
of ``--batch`` records, as a landing releases them, each batch followed by a ``poll(0)``, and every
delivery report settled against a dict of the records in flight (confluent-kafka: a ``partial``
callback per record; native: one ``produce`` call per batch with tokens, the reports as lists of
tokens); then a flush and the last reports. Measured per record: the calling thread's CPU
(``time.thread_time``: what the loop thread pays) and the whole process's CPU (librdkafka's own
threads included). Both use the service's producer settings (acks=all, idempotent, lz4, linger 10 ms).

Prints one JSON object: per producer the per-round figures, and the median per-record CPU ratio
native / confluent. Stops what it started.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from rewardloop_common.admin import create_topics
from rewardloop_common.kafka import producer_config
from rewardloop_outer_native import NativeProducer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_outer import ENV, bench_stack  # noqa: E402


def values(n: int, size: int, seed: int = 3) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    body = bytes(rng.randrange(32, 127) for _ in range(size * 2))
    return [
        (f"u{rng.randrange(20_000)}".encode(), body[(o := rng.randrange(size)) : o + size]) for _ in range(n)
    ]


def run_confluent(p: Any, topic: str, recs: list[tuple[bytes, bytes]], batch: int) -> int:
    in_flight: dict[str, int] = {}
    failed = 0

    def delivered(rid: str, err: Any, _msg: Any) -> None:
        nonlocal failed
        del in_flight[rid]
        failed += err is not None

    for start in range(0, len(recs), batch):
        for i in range(start, min(start + batch, len(recs))):
            rid = f"s:{i}:0"
            key, value = recs[i]
            p.produce(topic, key=key, value=value, on_delivery=partial(delivered, rid))
            in_flight[rid] = i
        p.poll(0)
    p.flush(60)
    p.poll(0)
    assert not in_flight, len(in_flight)
    return failed


def run_native(p: Any, topic: str, recs: list[tuple[bytes, bytes]], batch: int) -> int:
    tokens: dict[int, str] = {}
    failed = 0

    def settle(reports: tuple[list[int], list[tuple[int, str]]]) -> None:
        nonlocal failed
        for t in reports[0]:
            del tokens[t]
        for t, _err in reports[1]:
            del tokens[t]
            failed += 1

    for start in range(0, len(recs), batch):
        chunk = []
        for i in range(start, min(start + batch, len(recs))):
            tokens[i] = f"s:{i}:0"
            chunk.append((topic, *recs[i], i))
        taken, refused = p.produce(chunk)
        assert refused is None, refused
        settle(p.poll(0))
    p.flush(60)
    settle(p.poll(0))
    assert not tokens, len(tokens)
    return failed


def native_over_confluent(rounds: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """Per CPU figure, the median of the native client's rounds over the median of confluent-kafka's
    (``make bench-producer`` and ``make bench-consumer``)."""

    def med(name: str, k: str) -> float:
        return statistics.median(r[k] for r in rounds[name])

    return {
        k: round(med("native", k) / med("confluent", k), 3)
        for k in ("thread_cpu_us_per_record", "process_cpu_us_per_record")
    }


def process_cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000, help="records per round (default 200000)")
    ap.add_argument("--value-bytes", type=int, default=2_000, help="bytes per value (default 2000)")
    ap.add_argument("--batch", type=int, default=1_000, help="records per produce batch (default 1000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each producer, alternated (default 3)")
    a = ap.parse_args()
    bootstrap = f"127.0.0.1:{ENV['KAFKA_PORT']}"
    with bench_stack("kafka"):
        topic = f"bench.producer.{os.getpid()}"
        create_topics(bootstrap, [topic], partitions=3, wait_s=30)
        recs = values(a.records, a.value_bytes)
        conf = producer_config(bootstrap, "rewardloop-bench-producer")
        impls = {
            "confluent": (Producer(conf), run_confluent),
            "native": (NativeProducer(conf), run_native),
        }
        run_confluent(impls["confluent"][0], topic, recs[:5000], a.batch)  # connect and warm up
        run_native(impls["native"][0], topic, recs[:5000], a.batch)
        out: dict[str, list[dict[str, float]]] = {k: [] for k in impls}
        for _ in range(a.rounds):
            for name, (p, fn) in impls.items():
                t0, c0, w0 = time.thread_time(), process_cpu(), time.perf_counter()
                failed = fn(p, topic, recs, a.batch)
                t1, c1, w1 = time.thread_time(), process_cpu(), time.perf_counter()
                out[name].append(
                    {
                        "thread_cpu_us_per_record": round(1e6 * (t1 - t0) / len(recs), 3),
                        "process_cpu_us_per_record": round(1e6 * (c1 - c0) / len(recs), 3),
                        "seconds": round(w1 - w0, 2),
                        "failed": failed,
                    }
                )

        print(
            json.dumps(
                {
                    "records": a.records,
                    "value_bytes": a.value_bytes,
                    "batch": a.batch,
                    "rounds": out,
                    "native_over_confluent": native_over_confluent(out),
                },
                indent=1,
            )
        )
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
