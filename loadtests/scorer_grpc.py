"""Locust scenario: the inner-reward scorer over gRPC (ScoreAction + ScoreSlate).

A custom ``User`` holds one gRPC channel and reports every call to Locust as a ``request``
event (request_type ``grpc``), so Locust's statistics, CSV and web UI cover it. With
``--p99-budget-ms`` the run exits non-zero when the overall P99 exceeds the budget or any call
failed, so it can gate CI.

    make install   # locust is in the root dev group; generates the stubs in rewardloop_common.proto
    .venv/bin/locust -f loadtests/scorer_grpc.py --headless -u 20 -r 20 -t 30s \
        --host 127.0.0.1:50051 --p99-budget-ms 5

Locust is a closed-loop Python generator: good for scenario/regression checks and CI gates,
not for the sub-millisecond latency targets of issue #3 (those come from
``scripts/bench_scorer.sh`` with the open-loop Rust ``rewardloop-loadgen``).
"""

from __future__ import annotations

import itertools
import os
import random
import time

import budget  # loadtests/budget.py: the shared --p99-budget-ms gate
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, between, events, task

from rewardloop_common.proto import inner_reward_pb2 as pb
from rewardloop_common.proto import inner_reward_pb2_grpc as pb_grpc

# grpcio must cooperate with gevent, which Locust runs on.
grpc_gevent.init_gevent()
budget.install("scorer_grpc")

_ids = itertools.count()
_run = f"{os.getpid()}-{int(time.time())}"


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    parser.add_argument("--slate-size", type=int, default=20, help="feedbacks per ScoreSlate call")


def _feedback(position: int = 0) -> pb.Feedback:
    n = next(_ids)
    user = random.randrange(10_000)
    return pb.Feedback(
        event_id=f"locust-{_run}-{n}",
        request_id=f"r-{n}",
        user_id=f"u-{user}",
        session_id=f"s-{user}",
        item_id=f"i-{random.randrange(100_000)}",
        position=position,
        event_time_ms=int(time.time() * 1000),
        clicked=random.random() < 0.3,
        dwell_seconds=random.uniform(0, 60),
        skipped=random.random() < 0.2,
        predicted_relevance=random.random(),
        behavior_propensity=random.uniform(0.01, 1.0),
    )


class ScorerUser(User):
    """One gRPC channel per simulated serving process."""

    wait_time = between(0.001, 0.01)

    def on_start(self) -> None:
        target = (self.host or "127.0.0.1:50051").removeprefix("http://")
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.InnerRewardStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def _call(self, name: str, fn, request) -> None:
        start = time.perf_counter()
        exc: Exception | None = None
        length = 0
        try:
            length = fn(request, timeout=5).ByteSize()
        except grpc.RpcError as e:  # reported to Locust as a failure
            exc = e
        events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            response_length=length,
            exception=exc,
            context={},
        )

    @task(10)
    def score_action(self) -> None:
        self._call("ScoreAction", self.stub.ScoreAction, pb.ScoreActionRequest(feedback=_feedback()))

    @task(1)
    def score_slate(self) -> None:
        size = self.environment.parsed_options.slate_size if self.environment.parsed_options else 20
        req = pb.ScoreSlateRequest(feedbacks=[_feedback(i) for i in range(size)])
        self._call(f"ScoreSlate[{size}]", self.stub.ScoreSlate, req)
