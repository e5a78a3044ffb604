"""``make bench-outer``: how fast one outer controller turns real Kafka records into durable session
state, and how long a record takes to get there.

Starts Kafka + Redis with deploy/local/start.sh (STACK_COMPONENTS="redis kafka", own RUN_DIR and
ports), then, with one in-process :class:`DurableController` (event clock, Redis state store):

0. **broker warm-up** (``--warmup-seconds``): records produced at the highest ``--rate`` and consumed
   by a plain consumer. A freshly started JVM compiles the broker's hot code for its first minute: the
   JIT compiler threads took ~23 % of this 2-core machine's CPU during the first lag phases (``perf``)
   and the broker's own CPU fell from ~0.7 to ~0.25 cores at 50 000 records/s once compiled -- a
   production broker is long warm. The compiler threads' CPU is reported per phase (``broker_jit``);
1. **throughput**: N reward events (``--users`` users, requests of ``--slate`` actions: :func:`events`)
   are produced first; the controller consumes them from offset 0; events/s = N / (time until every
   record is in a landed checkpoint);
2. **lag**: for each rate of ``--rate`` (comma-separated), events are produced live at that rate for
   ``--seconds`` by a separate producer process into a new topic; per record, lag = checkpoint landed
   (wall clock) - the record's Kafka timestamp; P50/P99 reported, with the CPU each process used (in
   cores: CPU seconds / wall seconds) -- the broker, the producer and the controller share this
   machine's cores, and the lag is only the controller's while they are not all busy. Redis's
   append-only-file rewrites in the phase are counted (a forked child, not in Redis's CPU), and the
   phase's state is deleted after it.

``--compare OUTER_X=value`` runs every lag phase in a second arm with that setting too, ``--repeat N``
times per rate, the arms alternated A B, B A, ... in one process, and adds a per-rate summary with each
arm's median P99 and loop-thread CPU per event (the A/Bs before it were alternated ``/tmp`` scripts).

``--impl native`` (default) runs the Rust per-event core (``OUTER_NATIVE=true``), ``--impl python`` the
Python reference implementation: run both, alternated, to compare them on the same machine state.

Prints one JSON object. Stops what it started.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Consumer, Producer
from prometheus_client import CollectorRegistry

from rewardloop_common.admin import create_topics
from rewardloop_common.kafka import encode_json
from rewardloop_common.testing import local_stack, make_reward_event
from rewardloop_common.weights_store import WeightsStore
from rewardloop_outer.engine import (
    DurableController,
    automatic_gc_paused,
    make_input_consumer,
    make_outbox_producer,
    make_tuner,
)
from rewardloop_outer.metrics import OuterMetrics
from rewardloop_outer.settings import OuterSettings
from rewardloop_outer.state_store import RedisStateStore

REPO = Path(__file__).resolve().parents[3]
ENV = {
    "RUN_DIR": str(REPO / ".run" / "outer-bench"),
    "KAFKA_PORT": "29392",
    "KAFKA_CONTROLLER_PORT": "29393",
    "REDIS_PORT": "26679",
    "STACK_COMPONENTS": "redis kafka",
}
T0 = 1_763_888_400_000


def events(n: int, users: int, seed: int = 1, slate: int = 1) -> list[tuple[str, bytes]]:
    """``n`` scored actions as the scorer logs them: requests of ``slate`` served items (positions
    0..slate-1, one user, one event time: ``ScoreSlate``), one request every 2 ms of event time to a
    user drawn at random from ``users``. So a user's requests come ~``2 * users`` ms apart (40 s for
    20 000 users) and, with the bench's 60 s session gap, a session has ~4.5 requests (1/e^-1.5) --
    ~4.5 actions with ``slate=1`` (the shape of every figure before 2026-12-07's sixth session), ~22
    with ``slate=5`` (the simulator's traffic: slates of 5, ~4.4 of them a session)."""
    rng = random.Random(seed)
    tmpl = make_reward_event("x", "u", T0)
    out = []
    u = ""
    for i in range(n):
        req, pos = divmod(i, slate)
        if pos == 0:
            u = f"u{rng.randrange(users)}"
        ev = tmpl.model_copy(
            update={
                "event_id": f"e{i}",
                "request_id": f"r{req}",
                "user_id": u,
                "event_time_ms": T0 + req * 2,
                "clicked": rng.random() < 0.3,
                "dwell_seconds": rng.random() * 30,
                "reward": rng.random(),
                "position": i % 5 if slate == 1 else pos,
            }
        )
        out.append((u, encode_json(ev)))
    return out


def consumer_conf(bootstrap: str, group: str, s: OuterSettings) -> dict[str, Any]:
    """A bench consumer from offset 0, with the fetch settings the service gives its consumer
    (rewardloop_outer.__main__)."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.min.bytes": s.outer_fetch_min_bytes,
        "fetch.wait.max.ms": s.outer_fetch_wait_max_ms,
    }


def controller(
    bootstrap: str, redis_url: str, topic: str, kpi: str, native: bool, tuner: str = "drlput"
) -> DurableController:
    """The controller under test; ``tuner``: ``none`` (the path into session state alone) or the
    service's tuner with its defaults (``drlput``: shadow mode, 10 000 sessions before a push)."""
    group = f"bench-{uuid.uuid4().hex[:6]}"
    s = OuterSettings(
        kafka_bootstrap_servers=bootstrap,
        redis_url=redis_url,
        kafka_topic_reward_raw=topic,
        kafka_topic_kpi_raw=kpi,
        kafka_topic_sessions=topic + ".sessions",
        outer_late_topic=topic + ".late",
        outer_consumer_group=group,
        outer_clock="event",
        outer_session_gap_seconds=60,
        outer_checkpoint_interval_ms=50,
        outer_native=native,
        outer_tuner="correlation" if tuner == "correlation" else "drlput",  # unused with "none"
    )
    # OUTER_NATIVE_CONSUMER / OUTER_NATIVE_PRODUCER (default true) pick the clients, as the service does
    consumer = make_input_consumer(
        s,
        {
            **consumer_conf(bootstrap, group, s),
            "partition.assignment.strategy": "range",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
        },
    )
    producer = make_outbox_producer(
        s, {"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "lz4"}
    )
    rds = redis.Redis.from_url(redis_url)
    metrics = OuterMetrics(CollectorRegistry())
    return DurableController(
        s,
        consumer,
        producer,
        RedisStateStore(rds, group, s.outer_state_compression),
        None if tuner == "none" else make_tuner(s, WeightsStore(rds), metrics),
        metrics,
        max_batch=10_000,
    )


def produce(bootstrap: str, topic: str, evs: list[tuple[str, bytes]], rate: float = 0.0) -> None:
    # lz4 batches, as the scorer's telemetry producer writes recsys.reward.raw (services/inner-reward-rs)
    p = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 1_000_000, "compression.type": "lz4"}
    )
    t0 = time.monotonic()
    for i, (k, v) in enumerate(evs):
        while True:
            try:
                p.produce(topic, key=k.encode(), value=v)
                break
            except BufferError:
                p.poll(0.01)
        if rate and i % 100 == 0:
            ahead = i / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
            p.poll(0)
    p.flush(60)


def live_producer(
    bootstrap: str,
    topic: str,
    n: int,
    users: int,
    rate: float,
    ready: Any,
    go: Any,
    cpu: Any,
    slate: int = 1,
) -> None:
    """The lag phase's producer (its own process): generate (:func:`events`), say ready, wait for go,
    produce paced; puts (its CPU seconds, wall seconds) while producing into ``cpu``."""
    evs = events(n, users, seed=2, slate=slate)
    ready.set()
    go.wait(600)
    c0, t0 = time.process_time(), time.monotonic()
    produce(bootstrap, topic, evs, rate)
    cpu.put((time.process_time() - c0, time.monotonic() - t0))


def start_live_producer(
    bootstrap: str, topic: str, n: int, users: int, rate: float, slate: int = 1
) -> tuple[Any, Any, Any]:
    """:func:`live_producer` in a PROCESS of its own, its records generated (a thread would share the
    controller's GIL; spawned, not forked: the controller's librdkafka threads must not be forked):
    (the process, the event that starts it producing, the queue its CPU use arrives in)."""
    mp = multiprocessing.get_context("spawn")
    ready, go, prod_cpu = mp.Event(), mp.Event(), mp.Queue()
    args = (bootstrap, topic, n, users, rate, ready, go, prod_cpu, slate)
    prod = mp.Process(target=live_producer, args=args, daemon=True)
    prod.start()
    ready.wait(600)
    return prod, go, prod_cpu


def warm_up(
    bootstrap: str, topic: str, rate: float, seconds: float, users: int, slate: int = 1
) -> dict[str, Any]:
    """Records at ``rate`` for ``seconds`` through the broker (produced by another process, consumed
    here by a plain consumer with the controller's fetch settings), so that its JIT has compiled the
    produce and fetch paths before anything is measured."""
    n = int(rate * seconds)
    prod, go, _ = start_live_producer(bootstrap, topic, n, users, rate, slate)
    c = Consumer(consumer_conf(bootstrap, f"warmup-{uuid.uuid4().hex[:6]}", OuterSettings()))
    c.subscribe([topic])
    broker = broker_pid()
    j0, t0 = jit_cpu_seconds(broker), time.monotonic()
    go.set()
    got, deadline = 0, t0 + seconds + 60
    while got < n and time.monotonic() < deadline:
        got += sum(1 for m in c.consume(10_000, 0.1) if m.error() is None)
    c.close()
    prod.join(10)
    return {
        "records": got,
        "seconds": round(time.monotonic() - t0, 1),
        "broker_jit_cores": jit_cores_since(j0, t0, broker),
    }


def stack_pid(name: str) -> int:
    """The pid of a stack component (``kafka``, ``redis``) as deploy/local/start.sh recorded it."""
    return int((Path(ENV["RUN_DIR"]) / "pids" / f"{name}.pid").read_text())


def broker_pid() -> int:
    return stack_pid("kafka")


def jit_cpu_seconds(pid: int) -> float:
    """CPU seconds of a JVM's JIT compiler threads (``C1/C2 CompilerThread*``)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if "Compiler" in (task / "comm").read_text():
                total += cpu_seconds(pid, task.name)
        except OSError:
            continue  # the thread ended meanwhile
    return total


def jit_cores_since(jit0: float, t0: float, pid: int) -> float:
    """The JIT threads' CPU since ``jit0`` (:func:`jit_cpu_seconds` at ``t0``), in cores."""
    return round((jit_cpu_seconds(pid) - jit0) / (time.monotonic() - t0), 2)


def consumed(ctl: DurableController) -> int:
    return sum(sum(s.offsets.values()) for s in ctl.shards.values())


def cpu_seconds(pid: int, tid: str | None = None) -> float:
    """User + system CPU seconds of a process and its threads (``/proc/<pid>/stat``), or of one thread."""
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_schedstat() -> tuple[float, float]:
    """The calling thread's CPU seconds and seconds spent runnable but waiting for a CPU
    (``/proc/thread-self/schedstat``: on a saturated machine the second grows)."""
    cpu_ns, wait_ns, _ = Path("/proc/thread-self/schedstat").read_text().split()
    return int(cpu_ns) / 1e9, int(wait_ns) / 1e9


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def lag_phase(
    bootstrap: str, redis_url: str, topic: str, kpi: str, native: bool, rate: float, a: argparse.Namespace
) -> dict[str, Any]:
    """Events produced live at ``rate`` by another process (:func:`start_live_producer`)."""
    n_live = int(rate * a.seconds)
    slate = phase_slate(a)
    prod, go, prod_cpu = start_live_producer(bootstrap, topic, n_live, a.users, rate, slate)
    deadline = time.monotonic() + 120
    ctl = controller(bootstrap, redis_url, topic, kpi, native, a.tuner)
    ctl.record_lag = True
    # one record in 8 (the first of every batch too): observing every record's lag cost ~15 % of the
    # controller's time at 10^5 records/s -- the measurement would slow down what it measures
    ctl.lag_sample_every = 8
    ctl.subscribe()
    while not ctl.shards and time.monotonic() < deadline:
        ctl.run_once()
    broker = broker_pid()
    procs = {"controller": os.getpid(), "broker": broker, "redis": stack_pid("redis")}
    cpu0 = {k: cpu_seconds(pid) for k, pid in procs.items()}
    jit0 = jit_cpu_seconds(broker)
    redis_saved = redis_config(ctl, os.environ.get("BENCH_REDIS_CONFIG", ""))
    main0, busy0 = thread_schedstat(), machine_busy_seconds()
    aof0 = aof_rewrites(ctl)
    go.set()
    t0 = time.monotonic()
    deadline = t0 + a.seconds + 120
    with automatic_gc_paused(ctl.s):  # as DurableController.run loops
        while (prod.is_alive() or consumed(ctl) < n_live) and time.monotonic() < deadline:
            ctl.run_once()
    wall = time.monotonic() - t0
    main1, busy1 = thread_schedstat(), machine_busy_seconds()
    aof1 = aof_rewrites(ctl)
    redis_config(ctl, redis_saved)
    cores = {k: round((cpu_seconds(pid) - cpu0[k]) / wall, 2) for k, pid in procs.items()}
    cores["broker_jit"] = jit_cores_since(jit0, t0, broker)
    p_cpu, p_wall = prod_cpu.get(timeout=60)
    cores["producer"] = round(p_cpu / p_wall, 2)
    prod.join(10)
    ctl.checkpoint()
    ctl.shutdown()
    forget_state(ctl)
    lag = sorted(lag for _, lag in ctl.lag_samples)
    pct = lambda q: percentile(lag, q)  # noqa: E731
    return {
        "rate_per_s": rate,
        "slate": slate,
        "samples": len(lag),
        "p50": pct(0.5),
        "p99": pct(0.99),
        "max": lag[-1] if lag else None,
        "produced_per_s": round(n_live / p_wall),
        "seconds_to_catch_up": round(wall, 1),
        "cpu_cores": cores,
        "machine_busy_cores": round((busy1 - busy0) / wall, 2),
        # Redis rewriting its append-only file (a forked child, a core while it runs: not in its CPU above)
        "redis_aof_rewrites": aof1 - aof0,
        # the controller's loop thread: its CPU per event, and the share of the phase it was ready to
        # run but every core was busy (the bench shares the machine with the broker, Redis and the
        # producer process)
        "controller_main_cpu_us_per_event": round((main1[0] - main0[0]) / n_live * 1e6, 2),
        "controller_main_waiting_for_cpu": round((main1[1] - main0[1]) / wall, 2),
        "p99_per_second": p99_per_second(ctl.lag_samples),
    }


def phase_slate(a: argparse.Namespace) -> int:
    """The phase's slate size: ``BENCH_SLATE`` (set by an arm of ``--compare``) or ``--slate``."""
    raw = os.environ.get("BENCH_SLATE", str(a.slate))
    if not raw.isdigit() or int(raw) < 1:
        raise SystemExit(f"BENCH_SLATE={raw!r}: a positive integer")
    return int(raw)


def aof_rewrites(ctl: DurableController) -> int:
    """Redis's append-only-file rewrites so far (``INFO persistence``)."""
    return int(ctl.state.client.info("persistence").get("aof_rewrites", 0))  # type: ignore[attr-defined]


def redis_config(ctl: DurableController, settings: str) -> str:
    """Apply ``name=value[;name=value]`` to the bench's Redis (``CONFIG SET``: ``BENCH_REDIS_CONFIG``, an
    arm of ``--compare``); returns the same for the values they replaced."""
    client = ctl.state.client  # type: ignore[attr-defined]
    saved = []
    for item in filter(None, settings.split(";")):
        name, value = item.split("=", 1)
        saved.append(f"{name}={client.config_get(name)[name]}")
        client.config_set(name, value)
    return ";".join(saved)


def forget_state(ctl: DurableController) -> None:
    """Delete a finished phase's state (its own consumer group's keys): a phase's Redis then holds
    one controller's state, as a production one would, not every earlier phase's too -- which made
    Redis's append-only-file rewrites (a forked child copying the whole dataset, on the cores the
    phase runs on) longer phase after phase: 0.5 s to 3.2 s in one run."""
    ctl.state.delete_all()  # type: ignore[attr-defined]


def percentile(ordered: list[int], q: float) -> int | None:
    """The ``q``-quantile of an ascending list (``None`` when it is empty)."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def p99_per_second(samples: list[tuple[int, int]]) -> list[int]:
    """The lag P99 of the records that landed in each second of the phase (from its first landing):
    whether a phase's P99 came from a few bursts (a slow checkpoint, a collection) or from a backlog
    that built up and drained."""
    if not samples:
        return []
    t0 = min(t for t, _ in samples)
    per: dict[int, list[int]] = {}
    for t, lag in samples:
        per.setdefault((t - t0) // 1000, []).append(lag)
    out = []
    for sec in range(max(per) + 1):
        out.append(percentile(sorted(per.get(sec, [])), 0.99) or 0)
    return out


def throughput_phase(
    bootstrap: str, redis_url: str, topic: str, kpi: str, native: bool, a: argparse.Namespace
) -> dict[str, Any]:
    """``a.events`` events produced first, then consumed from offset 0 by a fresh controller."""
    produce(bootstrap, topic, events(a.events, a.users, slate=a.slate))
    ctl = controller(bootstrap, redis_url, topic, kpi, native, a.tuner)
    ctl.subscribe()
    deadline = time.monotonic() + 300
    while not ctl.shards and time.monotonic() < deadline:
        ctl.run_once()
    jit0, tj = jit_cpu_seconds(broker_pid()), time.monotonic()
    cpu0, busy0 = cpu_seconds(os.getpid()), machine_busy_seconds()
    t0 = time.perf_counter()
    # the clock runs from the loop that got the first records: before them the consumer joins the
    # group and looks its offsets up (~1 s measured over a 10^6-record topic), which is start-up,
    # not the rate it sustains (reported apart)
    t_first = None
    with automatic_gc_paused(ctl.s):
        while consumed(ctl) < a.events and time.monotonic() < deadline:
            t_loop = time.perf_counter()
            ctl.run_once()
            if t_first is None and consumed(ctl):
                t_first = t_loop
    ctl.checkpoint_and_produce()
    t_end = time.perf_counter()
    elapsed = t_end - (t_first if t_first is not None else t0)
    tput_cpu = (cpu_seconds(os.getpid()) - cpu0) / a.events * 1e6
    tput_busy = (machine_busy_seconds() - busy0) / (t_end - t0)
    tput_jit = jit_cores_since(jit0, tj, broker_pid())
    ctl.shutdown()
    forget_state(ctl)
    return {
        "events": a.events,
        "users": a.users,
        "slate": a.slate,
        "seconds": round(elapsed, 3),
        "events_per_s": round(a.events / elapsed),
        "seconds_to_first_records": round(t_end - t0 - elapsed, 3),
        "controller_cpu_us_per_event": round(tput_cpu, 2),
        "machine_busy_cores": round(tput_busy, 2),
        "broker_jit_cores": tput_jit,
    }


@contextmanager
def bench_stack(components: str = "redis kafka", keep: bool = False) -> Iterator[None]:
    """The benches' Kafka and/or Redis (``components``), started by deploy/local/start.sh with
    ``ENV``'s RUN_DIR and ports, and stopped afterwards unless ``keep``; raises
    ``LocalStackError`` when they do not start."""
    # a fresh broker and Redis every run: state left by earlier runs (GBs of topics, an append-only file
    # Redis reloads at start) made runs slower one after the other
    wipe = [sub for name, sub in (("redis", "redis"), ("kafka", "kafka-data")) if name in components.split()]
    with local_stack(REPO, {**ENV, "STACK_COMPONENTS": components}, wipe, keep=keep):
        yield


@contextmanager
def settings_env(overrides: dict[str, str]) -> Iterator[None]:
    """``overrides`` (``OUTER_*`` variables) in the environment while a phase's controller is built
    (OuterSettings reads it) and runs."""
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def summary(lags: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rate and arm: the phases' lag P99s and loop-thread CPU per event, and their medians."""
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for ph in lags:
        arm = ",".join(f"{k}={v}" for k, v in ph["arm"].items()) or "defaults"
        groups.setdefault((ph["rate_per_s"], arm), []).append(ph)
    return [
        {
            "rate_per_s": rate,
            "arm": arm,
            "p99": [ph["p99"] for ph in phs],
            "median_p99": statistics.median(ph["p99"] for ph in phs if ph["p99"] is not None),
            "cpu_us_per_event": [ph["controller_main_cpu_us_per_event"] for ph in phs],
            "median_cpu_us_per_event": statistics.median(
                ph["controller_main_cpu_us_per_event"] for ph in phs
            ),
        }
        for (rate, arm), phs in groups.items()
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--events",
        type=int,
        default=300_000,
        help="events of the throughput phase's backlog (default %(default)s; 0: no throughput phase, "
        "the lag phases alone -- how the A/Bs of single settings were run, e.g. with OUTER_* env vars)",
    )
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument(
        "--rate",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[5_000.0],
        help="events/s of the lag phase; comma-separated: one lag phase per rate (default 5000)",
    )
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument(
        "--impl",
        choices=["native", "python"],
        default="native",
        help="the per-event path: the Rust core (OUTER_NATIVE=true, the default) or the Python reference",
    )
    ap.add_argument(
        "--warmup-seconds",
        type=float,
        default=40,
        help="seconds of records at the highest --rate through the fresh broker before measuring, so "
        "that its JIT has compiled the hot paths (default 40; 0: none)",
    )
    ap.add_argument(
        "--tuner",
        choices=["none", "drlput", "correlation"],
        default="drlput",
        help="the weight tuner every closed session also goes to: drlput (default, as the service runs: "
        "shadow mode, 10 000 sessions before a push) or correlation; none: Kafka into session state "
        "alone (the figures before 2026-12-01 were measured so)",
    )
    ap.add_argument(
        "--compare",
        type=lambda v: dict(kv.split("=", 1) for kv in v.split(",")),
        default={},
        metavar="VAR=VALUE[,VAR=VALUE]",
        help="A/B in one run: every lag phase also runs with these OUTER_* settings (e.g. "
        "OUTER_NATIVE_PRODUCER=false; also BENCH_SLATE=K, and BENCH_REDIS_CONFIG='name=value;...' for "
        "Redis's CONFIG SET during the phase), the arms alternated A B, B A, ... per rate; the JSON then "
        "has a per-rate summary (medians of P99 and of the loop thread's CPU per event) for each arm",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="lag phases per rate (and arm), alternated (default 1)"
    )
    ap.add_argument(
        "--slate",
        type=int,
        default=5,
        help="served items per request (default %(default)s, the simulator's slate: sessions of ~22 "
        "actions); 1: one action per request, sessions of ~4.5 actions -- five times the closed "
        "sessions per event (every figure before 2026-12-07's sixth session); --compare BENCH_SLATE=1 "
        "runs it as an arm",
    )
    ap.add_argument("--keep-stack", action="store_true")
    a = ap.parse_args()
    arms: list[dict[str, str]] = [{}, a.compare] if a.compare else [{}]
    native = a.impl == "native"
    bootstrap, redis_url = f"127.0.0.1:{ENV['KAFKA_PORT']}", f"redis://127.0.0.1:{ENV['REDIS_PORT']}/0"
    with bench_stack(keep=a.keep_stack):
        run = uuid.uuid4().hex[:6]
        t_topic, kpi = f"bench.{run}.tput", f"bench.{run}.kpi"
        # per rate: A B, B A, A B, ... -- neither arm always runs first (later phases of one process
        # can run slower: the earlier controllers' state is not all freed)
        phases = [
            (rate, arm, f"bench.{run}.lag{i}.{k}.{r}")
            for i, rate in enumerate(a.rate)
            for r in range(a.repeat)
            for k, arm in (reversed(list(enumerate(arms))) if r % 2 else enumerate(arms))
        ]
        lag_topics = [topic for _, _, topic in phases]
        warm_topic = f"bench.{run}.warmup"
        create_topics(bootstrap, [t_topic, kpi, warm_topic, *lag_topics], partitions=3, wait_s=30)
        warm = (
            warm_up(bootstrap, warm_topic, max(a.rate), a.warmup_seconds, a.users, a.slate)
            if a.warmup_seconds
            else None
        )
        # 1. throughput from a backlog (skipped with --events 0: the lag phases alone)
        tput = throughput_phase(bootstrap, redis_url, t_topic, kpi, native, a) if a.events else None
        # 2. lag at steady rates (a topic each); with --compare / --repeat the arms alternate
        lags = []
        for rate, arm, topic in phases:
            with settings_env(arm):
                lags.append({**lag_phase(bootstrap, redis_url, topic, kpi, native, rate, a), "arm": arm})
        out: dict[str, Any] = {
            "impl": a.impl,
            "tuner": a.tuner,
            "warmup": warm,
            "throughput": tput,
            "lag_ms": lags,
        }
        if len(arms) > 1 or a.repeat > 1:
            out["summary"] = summary(lags)
        print(json.dumps(out, indent=1))
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
