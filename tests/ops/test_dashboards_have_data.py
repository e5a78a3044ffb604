"""Every Grafana panel has data on a real stack: native stack + Prometheus + simulated traffic.

Starts its own native stack (deploy/local/start.sh, WITH_PROMETHEUS=1, RUN_DIR=.run/ops, ports of its
own, 2 s scrapes), drives the simulator at a high speedup so sessions close and KPIs flow, makes one
invalid scoring call (so the error panels have a series), then evaluates the PromQL of every target
in deploy/grafana/dashboards/*.json through Prometheus' HTTP API, with Grafana's variables replaced
by fixed windows. Fails listing every target that returns no series (or only NaN). The stack is
always stopped afterwards. Takes about a minute and a half.
"""

from __future__ import annotations

import math
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from rewardloop_common.testing import local_stack

from .dashboards import Target, targets

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

OPS_ENV = {
    "RUN_DIR": str(REPO / ".run" / "ops"),
    "KAFKA_PORT": "19192",
    "KAFKA_CONTROLLER_PORT": "19193",
    "REDIS_PORT": "16479",
    "INNER_REWARD_GRPC_ADDR": "127.0.0.1:15151",
    "INNER_REWARD_METRICS_ADDR": "127.0.0.1:19564",
    "GATEWAY_PORT": "18100",
    "OUTER_METRICS_PORT": "19202",
    # the trainer (its own env .venv-trainer, `make install-trainer`) trains a round every 20 sessions
    "WITH_TRAINER": "1",
    "TRAINER_METRICS_PORT": "19203",
    "TRAINER_BATCH_SESSIONS": "20",
    # a wide exploration slice so the 100 simulated users include explored ones (Exploration panel)
    "OUTER_EXPLORATION_SLICE": "0.2",
    "PROMETHEUS_PORT": "19090",
    "WITH_PROMETHEUS": "1",
    "PROMETHEUS_SCRAPE_INTERVAL": "2s",
    "OUTER_SESSION_GAP_SECONDS": "1800",
    "OUTER_UPDATE_BATCH_SESSIONS": "20",
    "GATEWAY_ADMIN_TOKEN": "ops-admin-token",
    "REWARDLOOP_ENV": "local",
}
SIM_ARGS = ["--duration", "25", "--speedup", "600", "--users", "100", "--settle", "10", "--no-progress"]
# after the load: how long to keep re-querying while the last scrapes / rule evaluations land
DATA_DEADLINE_S = 30.0


@dataclass(frozen=True)
class OpsStack:
    env: dict[str, str]
    prometheus: str
    gateway: str
    grpc_addr: str


@pytest.fixture(scope="module")
def ops_stack() -> Iterator[OpsStack]:
    # a clean slate: Kafka, Redis, spool and the Prometheus TSDB are this test's own
    with local_stack(REPO, OPS_ENV, wipe=("kafka-data", "redis", "spool", "prometheus/data")) as env:
        yield OpsStack(
            env=env,
            prometheus=f"http://127.0.0.1:{env['PROMETHEUS_PORT']}",
            gateway=f"http://127.0.0.1:{env['GATEWAY_PORT']}",
            grpc_addr=env["INNER_REWARD_GRPC_ADDR"],
        )


def _query(prometheus: str, promql: str) -> tuple[int, str | None]:
    """(number of series with a finite value, error or None) of an instant query now."""
    r = httpx.post(f"{prometheus}/api/v1/query", data={"query": promql}, timeout=10)
    body = r.json()
    if body.get("status") != "success":
        return 0, f"{body.get('errorType')}: {body.get('error')}"
    finite = 0
    for series in body["data"]["result"]:
        value = series.get("value", [0, "NaN"])[1]
        if math.isfinite(float(value)):
            finite += 1
    return finite, None


def _drive_traffic(stack: OpsStack) -> None:
    from rewardloop_common.proto import inner_reward_pb2 as pb
    from rewardloop_common.proto import inner_reward_pb2_grpc as pb_grpc

    # one invalid call: the scorer answers INVALID_ARGUMENT, so the non-OK panels have a series
    with grpc.insecure_channel(stack.grpc_addr) as ch:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.InnerRewardStub(ch).ScoreAction(pb.ScoreActionRequest(feedback=pb.Feedback()), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # weights reads through the gateway (Serving: gateway latency by route)
    with httpx.Client(base_url=stack.gateway, timeout=5) as http:
        for _ in range(5):
            http.get("/v1/weights", params={"segment": "default"}).raise_for_status()
        kpi = {
            "event_id": f"ops-{uuid.uuid4().hex}",
            "user_id": "ops-user",
            "kind": "return_visit",
            "event_time_ms": int(time.time() * 1000),
        }
        assert http.post("/v1/kpi-events", json=kpi).status_code == 202

    # the stack's effective environment (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL... derived by start.sh)
    sim = subprocess.run(
        [
            "bash",
            "-c",
            'set -a; source "$RUN_DIR/stack.env"; set +a; exec "$0" -m rewardloop_sim.run "$@"',
            str(REPO / ".venv/bin/python"),
            *SIM_ARGS,
        ],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    # the simulator's own verdict (weights pushed, ...) is the e2e tests' business, not this test's
    print(sim.stdout[-3000:], sim.stderr[-3000:])


def test_every_dashboard_panel_has_data(ops_stack: OpsStack) -> None:
    t0 = time.monotonic()
    all_targets = targets()
    assert all_targets, "no dashboard targets found"
    _drive_traffic(ops_stack)

    deadline = time.monotonic() + DATA_DEADLINE_S
    missing: dict[Target, str] = {}
    while True:
        missing = {}
        for t in all_targets:
            n, error = _query(ops_stack.prometheus, t.promql())
            if error or n == 0:
                missing[t] = error or "no series (or only NaN)"
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)

    report = "\n".join(f"  {t.name}: {why}\n      {t.promql()}" for t, why in missing.items())
    assert not missing, f"{len(missing)} of {len(all_targets)} dashboard targets have no data:\n{report}"

    # the rules loaded from deploy/prometheus/rules evaluate cleanly against the real series
    rules = httpx.get(f"{ops_stack.prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = [r for g in rules for r in g["rules"]]
    assert loaded, "Prometheus loaded no rules (rule_files wiring in deploy/local/start.sh)"
    broken = [f"{r['name']}: {r.get('lastError')}" for r in loaded if r.get("health") != "ok"]
    assert not broken, f"rules with evaluation errors: {broken}"
    print(f"{len(all_targets)} targets with data, {len(loaded)} rules ok, {time.monotonic() - t0:.0f}s")
