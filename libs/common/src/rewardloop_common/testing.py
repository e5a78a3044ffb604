"""Test helpers shared by the packages' test suites and benchmarks (not used at run time).

:class:`RedisServer` starts a throw-away ``redis-server`` (no persistence) on a free port::

    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)

:func:`local_stack` runs the repository's own ``deploy/local/start.sh`` (real Kafka, Redis, the
services) on ports and a RUN_DIR of the caller's, on a clean slate.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from .events import KpiEvent, RewardEvent, SessionKpi, SessionRecord, SessionStep
from .kafka import Delivery, DeliveryError

REDIS_SERVER_CANDIDATES = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")


def find_redis_server() -> str | None:
    env = os.environ.get("REDIS_SERVER_BIN")
    if env and os.path.exists(env):
        return env
    for c in REDIS_SERVER_CANDIDATES:
        if os.path.exists(c):
            return c
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server child process on 127.0.0.1:<free port>; stopped (and waited for) on exit."""

    def __init__(self, binary: str | None = None, port: int | None = None) -> None:
        found = binary or find_redis_server()
        if not found:
            raise RuntimeError("redis-server not found (set REDIS_SERVER_BIN)")
        self.binary = found
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self._dir = tempfile.TemporaryDirectory(prefix="rewardloop-redis-")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited early with code {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class LocalStackError(RuntimeError):
    """``deploy/local/start.sh`` failed; the message has the tail of its output."""


@contextmanager
def local_stack(
    repo: Path,
    env: Mapping[str, str],
    wipe: Sequence[str] = ("kafka-data", "redis"),
    *,
    keep: bool = False,
    timeout_s: float = 300,
) -> Iterator[dict[str, str]]:
    """The local stack (``deploy/local/start.sh`` of ``repo``) with ``env`` on top of the process's
    environment -- RUN_DIR, ports, STACK_COMPONENTS -- on a clean slate: whatever an earlier run left
    in that RUN_DIR is stopped and its ``wipe`` folders (state: topics, Redis data, spool) removed
    first. Yields the environment it ran with; stops the stack afterwards unless ``keep``. Raises
    :class:`LocalStackError` when it does not start (e.g. the Kafka jars are missing: run
    deploy/local/install.sh)."""
    full = {**os.environ, **env}
    stop = ["bash", str(repo / "deploy/local/stop.sh")]
    subprocess.run(stop, env=full, check=False, capture_output=True, timeout=180)
    for sub in wipe:
        shutil.rmtree(Path(full["RUN_DIR"]) / sub, ignore_errors=True)
    started = subprocess.run(
        ["bash", str(repo / "deploy/local/start.sh")],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    try:
        if started.returncode != 0:
            raise LocalStackError(
                f"deploy/local/start.sh failed (RUN_DIR={full['RUN_DIR']}, logs in its logs/):\n"
                f"{started.stdout[-2000:]}\n{started.stderr[-3000:]}"
            )
        yield full
    finally:
        if not keep:
            subprocess.run(stop, env=full, check=False, capture_output=True, timeout=180)


class FakeAsyncProducer:
    """An in-memory :class:`rewardloop_common.kafka.AsyncEventProducer` that records what was produced.

    Set ``fail`` (delivery error), ``hang`` (no report until the timeout) or ``alive`` to steer it.
    """

    def __init__(self) -> None:
        self.records: list[tuple[str, str, bytes]] = []
        self.fail = False
        self.hang = False
        self.started = False
        self.closed = False
        self.alive = True

    def start(self) -> None:
        self.started = True

    async def produce(self, topic: str, key: str, value: bytes, timeout: float = 5.0) -> Delivery:
        if self.hang:
            await asyncio.sleep(timeout)
            raise DeliveryError(f"no delivery report within {timeout:.1f}s")
        if self.fail:
            raise DeliveryError("broker down")
        self.records.append((topic, key, value))
        return Delivery(topic, 0, len(self.records) - 1)

    async def healthy(self) -> bool:
        return self.alive

    async def close(self, flush_timeout: float = 5.0) -> None:
        self.closed = True


def make_reward_event(
    event_id: str,
    user_id: str = "u-1",
    event_time_ms: int = 1_763_888_400_000,
    *,
    position: int = 0,
    clicked: bool = False,
    dwell_seconds: float = 0.0,
    skipped: bool = False,
    predicted_relevance: float = 0.5,
    reward: float = 0.0,
    segment: str = "default",
    weights_version: int = 0,
    **extra: object,
) -> RewardEvent:
    """A valid ``recsys.reward.raw`` record with sensible defaults (for tests)."""
    data: dict[str, object] = {
        "event_id": event_id,
        "request_id": f"r-{event_id}",
        "user_id": user_id,
        "session_id": f"s-{user_id}",
        "item_id": f"i-{event_id}",
        "position": position,
        "event_time_ms": event_time_ms,
        "clicked": clicked,
        "dwell_seconds": dwell_seconds,
        "skipped": skipped,
        "predicted_relevance": predicted_relevance,
        "behavior_propensity": 0.5,
        "segment": segment,
        "reward": reward,
        "raw_reward": reward,
        "parts": {"click": 0.0, "dwell": 0.0, "skip": 0.0, "relevance": 0.0},
        "weights_version": weights_version,
        "scored_at_ms": event_time_ms + 1,
    }
    data.update(extra)
    return RewardEvent.model_validate(data)


def make_kpi_event(
    event_id: str,
    user_id: str = "u-1",
    kind: str = "purchase",
    event_time_ms: int = 1_763_888_400_000,
    revenue: float | None = None,
    **extra: object,
) -> KpiEvent:
    """A valid ``recsys.kpi.raw`` record (purchase revenue defaults to 10.0)."""
    if kind == "purchase" and revenue is None:
        revenue = 10.0
    data: dict[str, object] = {
        "event_id": event_id,
        "user_id": user_id,
        "kind": kind,
        "event_time_ms": event_time_ms,
        "revenue": revenue,
        "received_at_ms": event_time_ms + 1,
    }
    data.update(extra)
    return KpiEvent.model_validate(data)


def make_session_step(t: int, *, session: str = "s", **fields: object) -> SessionStep:
    """Step ``t`` of a ``recsys.sessions`` record: a valid unclicked step; ``fields`` override any field
    (``return`` by its wire name or as ``return_``)."""
    data: dict[str, object] = {
        "event_id": f"{session}-e{t}",
        "item_id": f"i-{t}",
        "position": t % 10,
        "event_time_ms": 1_000 + t,
        "clicked": False,
        "dwell_seconds": 0.0,
        "skipped": False,
        "predicted_relevance": 0.5,
        "behavior_propensity": 0.5,
        "reward": 0.0,
        "weights_version": 1,
        "return": 0.0,
    }
    if "return_" in fields:
        fields["return"] = fields.pop("return_")
    data.update(fields)
    return SessionStep.model_validate(data)


def make_session_record(
    steps: list[SessionStep], user_id: str = "u", business_reward: float = 0.0, **fields: object
) -> SessionRecord:
    """A valid closed session of ``steps`` (revision 0, no KPIs); ``fields`` override any field."""
    start = steps[0].event_time_ms
    end = steps[-1].event_time_ms
    data: dict[str, object] = {
        "session_key": f"{user_id}:{start}",
        "user_id": user_id,
        "segment": "default",
        "start_ms": start,
        "end_ms": end,
        "closed_at_ms": end + 1_000,
        "n_steps": len(steps),
        "gamma": 0.99,
        "steps": steps,
        "discounted_return": 0.0,
        "kpi": SessionKpi(),
        "business_reward": business_reward,
        "weights_versions": sorted({s.weights_version for s in steps}),
    }
    data.update(fields)
    return SessionRecord.model_validate(data)
