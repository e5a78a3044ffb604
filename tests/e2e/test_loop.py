"""End to end, against the real native stack: gRPC in, Kafka through, sessions out, weights back.

The expected numbers are recomputed here from what the test sent, independently of the services' code.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from typing import Any

import grpc
import httpx
import pytest
import redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from rewardloop_common.proto import inner_reward_pb2 as pb
from rewardloop_common.proto import inner_reward_pb2_grpc as pb_grpc

from .conftest import Stack
from .kafka_reader import read_topic

pytestmark = pytest.mark.e2e

DEFAULT_WEIGHTS = {"click": 1.0, "dwell": 0.5, "skip": -0.3, "relevance": 0.8}
RUN = uuid.uuid4().hex[:8]


# ---- independent recomputation (docs/architecture.md) -------------------------------------------
def expected_reward(w: dict[str, float], clicked: bool, dwell: float, skipped: bool, rel: float) -> float:
    raw = w["click"] * clicked + w["dwell"] * math.log1p(dwell) + w["skip"] * skipped + w["relevance"] * rel
    return max(-5.0, min(5.0, raw))


def discounted(rewards: list[float], gamma: float) -> list[float]:
    out, g = [], 0.0
    for r in reversed(rewards):
        g = r + gamma * g
        out.append(g)
    return out[::-1]


def business_reward(revenue: float, subscriptions: int = 0, return_visits: int = 0) -> float:
    return max(-5.0, min(5.0, math.log1p(revenue) + 1.0 * subscriptions + 0.5 * return_visits))


# ---- helpers ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stub(stack: Stack) -> pb_grpc.InnerRewardStub:
    channel = grpc.insecure_channel(stack.grpc_addr)
    grpc.channel_ready_future(channel).result(timeout=30)
    return pb_grpc.InnerRewardStub(channel)


@pytest.fixture(scope="module")
def rds(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.redis_url, decode_responses=True)


def weights_of_version(rds: redis.Redis, version: int, segment: str = "default") -> dict[str, float]:
    if version == 0:
        return DEFAULT_WEIGHTS
    import json

    for raw in rds.lrange(f"rewardloop:weights-history:{segment}", 0, -1):
        doc = json.loads(raw)
        if doc["version"] == version:
            return doc["weights"]
    raise AssertionError(f"weights version {version} not in Redis history")


def feedback(user: str, session: str, step: int, pos: int, t_ms: int, rng: random.Random) -> pb.Feedback:
    clicked = rng.random() < 0.4
    return pb.Feedback(
        event_id=f"{user}-st{step}-p{pos}",
        request_id=f"{user}-st{step}",
        user_id=user,
        session_id=session,
        item_id=f"item-{rng.randrange(100)}",
        position=pos,
        event_time_ms=t_ms,
        clicked=clicked,
        dwell_seconds=round(rng.uniform(1, 300), 3) if clicked else 0.0,
        skipped=(not clicked) and rng.random() < 0.5,
        predicted_relevance=round(rng.random(), 4),
        behavior_propensity=round(rng.uniform(0.05, 1.0), 4),
    )


def bad_request_fields(err: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(err)
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.Status details"
    fields = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            fields.extend(v.field for v in br.field_violations)
    return fields


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


# ---- the loop -----------------------------------------------------------------------------------
N_USERS = 30


@pytest.fixture(scope="module")
def sent(stack: Stack, stub: pb_grpc.InnerRewardStub) -> dict[str, Any]:
    """Send N sessions over gRPC (slates and single actions) and purchases over HTTP; keep the answers."""
    rng = random.Random(2026)
    t0 = int(time.time() * 1000)
    sessions: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=stack.gateway_url, timeout=10) as http:
        for u in range(N_USERS):
            user = f"e2e-{RUN}-user-{u}"
            session = f"{user}-s1"
            feedbacks: list[pb.Feedback] = []
            rewards: list[pb.Reward] = []
            for step in range(rng.randint(2, 5)):
                t_ms = t0 + 200 * step
                if step % 2 == 0:
                    slate = [feedback(user, session, step, pos, t_ms + pos, rng) for pos in range(3)]
                    response = stub.ScoreSlate(pb.ScoreSlateRequest(feedbacks=slate), timeout=5)
                    assert len(response.rewards) == len(slate)
                    feedbacks += slate
                    rewards += response.rewards
                else:
                    fb = feedback(user, session, step, 0, t_ms, rng)
                    response = stub.ScoreAction(pb.ScoreActionRequest(feedback=fb), timeout=5)
                    feedbacks.append(fb)
                    rewards.append(response.reward)
            # purchases follow deep engagement, so the outer rule has a real signal to learn from
            dwell = sum(fb.dwell_seconds for fb in feedbacks)
            kpis = []
            if dwell > 150:
                revenue = round(dwell / 10, 2)
                event = {
                    "event_id": f"{user}-kpi-1",
                    "user_id": user,
                    "session_id": session,
                    "kind": "purchase",
                    "event_time_ms": t0 + 1000,
                    "revenue": revenue,
                }
                r = http.post("/v1/kpi-events", json=event)
                assert r.status_code == 202, r.text
                kpis.append(event)
            sessions[user] = {"feedbacks": feedbacks, "rewards": rewards, "kpis": kpis}
    return {"t0": t0, "sessions": sessions}


def test_every_accepted_event_reaches_kafka_once(stack: Stack, sent: dict[str, Any]) -> None:
    accepted = {fb.event_id for s in sent["sessions"].values() for fb in s["feedbacks"]}

    def ours() -> list[dict[str, Any]] | None:
        records = [r for r in read_topic(stack.kafka, "recsys.reward.raw") if r["event_id"] in accepted]
        return records if {r["event_id"] for r in records} == accepted else None

    records = wait_for(ours, 30, "all accepted event_ids in recsys.reward.raw", interval_s=1.0)
    by_id: dict[str, dict[str, Any]] = {}
    for r in records:
        r = {k: v for k, v in r.items() if k != "_partition"}
        if r["event_id"] in by_id:  # a duplicate is only acceptable as an identical replay
            assert by_id[r["event_id"]] == r
        by_id[r["event_id"]] = r
        assert r["_key"] == r["user_id"], "records are keyed by user_id"
    kpi_ids = {k["event_id"] for s in sent["sessions"].values() for k in s["kpis"]}
    kpi_records = [r for r in read_topic(stack.kafka, "recsys.kpi.raw") if r["event_id"] in kpi_ids]
    assert {r["event_id"] for r in kpi_records} == kpi_ids


def test_rewards_follow_the_formula(rds: redis.Redis, sent: dict[str, Any]) -> None:
    for s in sent["sessions"].values():
        for fb, rw in zip(s["feedbacks"], s["rewards"], strict=True):
            assert rw.event_id == fb.event_id
            w = weights_of_version(rds, rw.weights_version)
            want = expected_reward(w, fb.clicked, fb.dwell_seconds, fb.skipped, fb.predicted_relevance)
            assert rw.value == pytest.approx(want, abs=1e-9)


def test_closed_sessions_match_an_independent_recomputation(stack: Stack, sent: dict[str, Any]) -> None:
    users = set(sent["sessions"])

    def closed() -> dict[str, dict[str, Any]] | None:
        records = {
            r["user_id"]: r for r in read_topic(stack.kafka, "recsys.sessions") if r["user_id"] in users
        }
        return records if set(records) == users else None

    records = wait_for(closed, stack.gap_s + 40, "every test session closed on recsys.sessions", 1.0)
    for user, s in sent["sessions"].items():
        rec = records[user]
        order = sorted(
            zip(s["feedbacks"], s["rewards"], strict=True),
            key=lambda fr: (fr[0].event_time_ms, fr[0].position, fr[0].event_id),
        )
        assert [st["event_id"] for st in rec["steps"]] == [fb.event_id for fb, _ in order]
        assert rec["n_steps"] == len(order)
        rewards = [rw.value for _, rw in order]
        assert [st["reward"] for st in rec["steps"]] == pytest.approx(rewards, abs=1e-9)
        returns = discounted(rewards, rec["gamma"])
        assert rec["gamma"] == pytest.approx(0.99)
        assert [st["return"] for st in rec["steps"]] == pytest.approx(returns, abs=1e-9)
        assert rec["discounted_return"] == pytest.approx(returns[0], abs=1e-9)
        revenue = sum(k["revenue"] for k in s["kpis"])
        assert rec["kpi"]["revenue"] == pytest.approx(revenue)
        assert rec["kpi"]["purchases"] == len(s["kpis"])
        assert sorted(rec["kpi"]["event_ids"]) == sorted(k["event_id"] for k in s["kpis"])
        assert rec["business_reward"] == pytest.approx(business_reward(revenue), abs=1e-9)
        assert rec["start_ms"] == order[0][0].event_time_ms
        assert rec["session_key"] == f"{user}:{rec['start_ms']}"


def test_outer_loop_pushes_weights_and_scorer_switches(
    stack: Stack, stub: pb_grpc.InnerRewardStub, rds: redis.Redis, sent: dict[str, Any]
) -> None:
    import json

    def pushed() -> dict[str, Any] | None:
        for raw in rds.lrange("rewardloop:weights-history:default", 0, -1):
            doc = json.loads(raw)
            if doc["source"] == "outer-controller":
                return doc
        return None

    wait_for(pushed, stack.gap_s + 40, "a weights version pushed by the outer controller", 0.5)
    current = json.loads(rds.get("rewardloop:weights:default"))
    wait_for(
        lambda: stub.GetConfig(pb.GetConfigRequest(), timeout=2).version >= current["version"],
        10,
        f"scorer on weights version {current['version']}",
    )
    # a user in the exploration slice (0.5 %, by hash of the user) is served an exploratory action's
    # weights, not the version's (failed once here): probe until a user outside it answers
    for i in range(20):
        fb = feedback(f"e2e-{RUN}-probe-{i}", "probe-s1", 0, 0, int(time.time() * 1000), random.Random(1))
        reward = stub.ScoreAction(pb.ScoreActionRequest(feedback=fb), timeout=5).reward
        if not reward.HasField("explore_action"):
            break
    assert not reward.HasField("explore_action")
    assert reward.weights_version >= current["version"] > 0
    w = weights_of_version(rds, reward.weights_version)
    assert w != DEFAULT_WEIGHTS
    assert reward.value == pytest.approx(
        expected_reward(w, fb.clicked, fb.dwell_seconds, fb.skipped, fb.predicted_relevance), abs=1e-9
    )


# ---- bad input: clear errors, and the services keep serving -------------------------------------
@pytest.mark.parametrize(
    ("field", "change", "violation"),
    [
        ("dwell_seconds", float("nan"), "feedback.dwell_seconds"),
        ("dwell_seconds", -1.0, "feedback.dwell_seconds"),
        ("dwell_seconds", float("inf"), "feedback.dwell_seconds"),
        ("user_id", "", "feedback.user_id"),
        ("event_id", "", "feedback.event_id"),
        ("behavior_propensity", 0.0, "feedback.behavior_propensity"),
        ("predicted_relevance", 1.5, "feedback.predicted_relevance"),
    ],
)
def test_bad_action_is_invalid_argument_naming_the_field(
    stub: pb_grpc.InnerRewardStub, field: str, change: Any, violation: str
) -> None:
    fb = feedback(f"e2e-{RUN}-bad", "bad-s1", 0, 0, int(time.time() * 1000), random.Random(3))
    setattr(fb, field, change)
    with pytest.raises(grpc.RpcError) as err:
        stub.ScoreAction(pb.ScoreActionRequest(feedback=fb), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violation in bad_request_fields(err.value)
    ok = feedback(f"e2e-{RUN}-bad", "bad-s1", 0, 0, int(time.time() * 1000), random.Random(4))
    assert stub.ScoreAction(pb.ScoreActionRequest(feedback=ok), timeout=5).reward.event_id == ok.event_id


def test_bad_slate_names_the_item(stub: pb_grpc.InnerRewardStub) -> None:
    rng = random.Random(5)
    t = int(time.time() * 1000)
    slate = [feedback(f"e2e-{RUN}-bad-slate", "s", 0, p, t, rng) for p in range(3)]
    slate[1].item_id = ""
    with pytest.raises(grpc.RpcError) as err:
        stub.ScoreSlate(pb.ScoreSlateRequest(feedbacks=slate), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "feedbacks[1].item_id" in bad_request_fields(err.value)
    with pytest.raises(grpc.RpcError) as empty:
        stub.ScoreSlate(pb.ScoreSlateRequest(feedbacks=[]), timeout=5)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_gateway_rejects_bad_input_and_keeps_serving(stack: Stack) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=10) as http:
        bad = {"event_id": "x", "user_id": "u", "kind": "purchase", "event_time_ms": 1, "revenue": -3.0}
        r = http.post("/v1/kpi-events", json=bad)
        assert r.status_code == 422
        assert any(e["loc"][-1] == "revenue" for e in r.json()["detail"])
        new = {"segment": "default", "weights": {**DEFAULT_WEIGHTS, "skip": 1.0}, "reason": "e2e"}
        assert http.put("/v1/weights", json=new).status_code == 401
        wrong = http.put("/v1/weights", json=new, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        r = http.put("/v1/weights", json=new, headers={"Authorization": f"Bearer {stack.admin_token}"})
        assert r.status_code == 422
        assert any("skip" in [str(p) for p in e["loc"]] for e in r.json()["detail"])
        assert http.get("/healthz").status_code == 200


def test_admin_push_is_hot_reloaded(stack: Stack, stub: pb_grpc.InnerRewardStub) -> None:
    weights = {"click": 0.7, "dwell": 0.9, "skip": -0.4, "relevance": 0.6}
    with httpx.Client(base_url=stack.gateway_url, timeout=10) as http:
        r = http.put(
            "/v1/weights",
            json={"segment": "default", "weights": weights, "reason": "e2e hot reload"},
            headers={"Authorization": f"Bearer {stack.admin_token}"},
        )
        assert r.status_code == 200, r.text
        version = r.json()["version"]
        assert http.get("/v1/weights").json()["version"] >= version
    started = time.monotonic()
    config = wait_for(
        lambda: (
            (c := stub.GetConfig(pb.GetConfigRequest(segment="default"), timeout=2)).version >= version and c
        ),
        5,
        f"scorer on admin version {version}",
        interval_s=0.005,
    )
    elapsed = time.monotonic() - started
    if config.version == version:
        assert config.weights.dwell == pytest.approx(0.9)
    assert elapsed < 5


def test_metrics_are_exposed(stack: Stack, sent: dict[str, Any]) -> None:
    inner = httpx.get(stack.inner_metrics_url, timeout=5).text
    for name in (
        "rewardloop_inner_request_duration_seconds_bucket",
        "rewardloop_inner_events_published_total",
        "rewardloop_inner_queue_depth",
        "rewardloop_inner_weights_version",
    ):
        assert name in inner, name
    outer = httpx.get(stack.outer_metrics_url, timeout=5).text
    assert "rewardloop_outer_sessions_closed_total" in outer
    gateway = httpx.get(stack.gateway_url + "/metrics", timeout=5).text
    assert "rewardloop_gateway_kpi_events_total" in gateway
