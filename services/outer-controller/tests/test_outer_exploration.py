"""The exploration-slice contract (Python half) and the DRL-PUT tuner learning from logged propensities."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
import structlog
from prometheus_client import CollectorRegistry

from rewardloop_common.events import SessionBusiness, SessionRecord, SessionTuner
from rewardloop_common.exploration import (
    ExplorationDocument,
    assign,
    exploration_hash,
    exploration_key,
)
from rewardloop_common.testing import make_session_record, make_session_step
from rewardloop_common.weights import BUILTIN_WEIGHTS
from rewardloop_common.weights_store import WeightsStore
from rewardloop_outer import tuner as tuner_mod
from rewardloop_outer.metrics import OuterMetrics
from rewardloop_outer.tuner import (
    MAX_IW,
    MAX_KEPT_DECISIONS,
    UNSET_KAPPA,
    Policy,
    WeightTuner,
    action_weights,
    batch_rewards,
    decode_action,
    encode_action,
    learning_step,
    learning_step_py,
    nearest_action,
    reinforce_gradient,
)
from rewardloop_outer.weight_update import SessionFeatures, TunerSession
from rewardloop_outer_native import drlput_step

# shared with the scorer (docs/architecture.md, "Assignment"): the same strings, the same hashes
HASH_VECTORS = {
    "": 0xEFD01F60BA992926,
    "3:u-1": 0xACE6EA11C30161F0,
    "7:user-42:action": 0x59C6B2E157462214,
}


def test_exploration_hash_test_vectors() -> None:
    for s, h in HASH_VECTORS.items():
        assert exploration_hash(s) == h, s


def test_assignment_matches_the_contract() -> None:
    ids = [10, 11, 12]
    assert assign(3, 0.0, ids, "u-1") == (None, 1.0)  # slice 0: nobody explores
    users = [f"user-{i}" for i in range(5000)]
    got = [assign(3, 0.2, ids, u) for u in users]
    assert any(a is not None for a, _ in got) and any(a is None for a, _ in got)
    for u, (a, p) in zip(users, got, strict=True):
        in_slice = exploration_hash(f"3:{u}") / 2**64 < 0.2
        assert (a is not None) == in_slice
        if a is not None:
            assert a == ids[exploration_hash(f"3:{u}:action") % 3] and p == pytest.approx(0.2 / 3)
        else:
            assert p == pytest.approx(0.8)


def test_action_ids_round_trip() -> None:
    for a in ([0, 0, 0], [9, 9, 9], [3, 0, 7]):
        assert decode_action(encode_action(a, 10), 10) == a
    assert encode_action([3, 0, 7], 10) == 307


def tuner(store: WeightsStore, **kw: object) -> WeightTuner:
    args: dict[str, object] = {
        "batch_sessions": 200,
        "min_sessions": 1,
        "shadow": False,
        "explore_fraction": 0.1,
        "levels": 10,
        "lr": 5.0,
    }
    args.update(kw)
    return WeightTuner(store, OuterMetrics(CollectorRegistry()), **args)  # type: ignore[arg-type]


def test_exploration_document_is_published_with_the_weights(store: WeightsStore) -> None:
    t = tuner(store)
    t.maybe_publish_exploration("default")
    doc = store.get_exploration("default")
    assert doc is not None and doc.slice == 0.1 and doc.source == "outer-controller"
    centre = nearest_action(BUILTIN_WEIGHTS, 10)
    assert len(doc.actions) == 27 and encode_action(centre, 10) in {a.id for a in doc.actions}
    raw = store.client.get(exploration_key("default"))
    assert ExplorationDocument.model_validate_json(raw) == doc  # type: ignore[arg-type]
    t.maybe_publish_exploration("default")  # unchanged centre: no new version
    assert store.get_exploration("default").version == doc.version  # type: ignore[union-attr]
    # a push writes the weights and a re-centred grid in one script
    new = t.exploration_actions([5, 5, 5])[0][1]
    t.publish_exploration("default", new, "test")
    doc2 = store.get_exploration("default")
    assert doc2 is not None and doc2.version == doc.version + 1
    assert store.get("default").weights == new


def test_the_exploration_centre_follows_weights_moved_by_another_writer(store: WeightsStore) -> None:
    """The per-session check is skipped while the cached weights are the ones last checked; weights
    another writer pushed are checked (and the grid re-centred) once the cache has them."""
    t = tuner(store)
    t.maybe_publish_exploration("default")
    v1 = store.get_exploration("default").version  # type: ignore[union-attr]
    admin = action_weights([1, 1, 1], 10)
    store.push("default", admin, source="gateway", reason="admin re-targeting")
    t.maybe_publish_exploration("default")  # still the cached built-ins: nothing to do
    assert store.get_exploration("default").version == v1  # type: ignore[union-attr]
    t._wcache.clear()  # the 5-second cache expired
    t.maybe_publish_exploration("default")
    doc = store.get_exploration("default")
    assert doc is not None and doc.version == v1 + 1
    assert encode_action([1, 1, 1], 10) in {a.id for a in doc.actions}
    t._wcache.clear()  # re-read, the same weights: no new version
    t.maybe_publish_exploration("default")
    assert store.get_exploration("default").version == v1 + 1  # type: ignore[union-attr]


def _session(i: int, explore: int | None, prob: float, clicks: int, value: float) -> SessionRecord:
    steps = [
        make_session_step(t, session=f"u{i}", item_id="i", position=t, clicked=t < clicks, dwell_seconds=5.0)
        for t in range(4)
    ]
    return make_session_record(
        steps, user_id=f"u{i}", business_reward=value, business=SessionBusiness(value=value), kappa=0.5
    )


def _serve(
    t: WeightTuner,
    store: WeightsStore,
    i: int,
    outcome: Callable[[int | None], tuple[int, float]],
    users: str = "user",
    check: bool = True,
) -> Any:
    """One synthetic session served exactly as the scorer would: the user's action and propensity come
    from the segment's current exploration document (the contract's hash), the outcome from ``outcome``
    (``check``: the tuner's propensity is the marginal one under the weights in Redis)."""
    doc = store.get_exploration("default")
    assert doc is not None
    act, prob = doc.assign(f"{users}-{i}")
    clicks, value = outcome(act)
    rec = _session(i, act, prob, clicks=clicks, value=value)
    first = SimpleNamespace(explore_action=act, explore_probability=prob, exploration_version=doc.version)
    rec.tuner = t.behaviour(rec, first)
    assert rec.tuner.logged
    if check:
        assert rec.tuner.propensity == pytest.approx(marginal(doc, store, rec.tuner.action))
    return t.add(rec)


def test_memoised_behaviour_follows_the_documents_and_the_weights(store: WeightsStore) -> None:
    """behaviour_json memoises behaviour_for: it must answer as behaviour_for does after a new
    exploration document and after the segment's weights moved (the memo key carries both)."""
    t = tuner(store)

    def check(first: tuple[int | None, float | None, int | None] | None) -> SessionTuner:
        raw = t.behaviour_json("default", first)
        got = t.behaviour_of(raw)
        want = t.behaviour_for(
            "default",
            None
            if first is None
            else SimpleNamespace(
                explore_action=first[0], explore_probability=first[1], exploration_version=first[2]
            ),
        )
        assert got == want and orjson.loads(raw) == want.model_dump(mode="json", exclude_unset=True)
        return got

    firsts = [None, (None, None, None), (None, 0.9, 1), (3, 0.01, 1), (3, 0.01, 2), (None, 0.9, 2)]
    before = [check(f) for f in firsts]  # no document published yet: the logged values stand
    t.maybe_publish_exploration("default")  # version 1, centred on the current weights
    after_doc = [check(f) for f in firsts]
    assert after_doc[2].propensity != before[2].propensity  # the document's correction applies now
    t.publish_exploration("default", t.exploration_actions([7, 7, 7])[0][1], "moved")  # new weights, v2
    t._wcache.clear()  # the 5-second weights cache: read the moved weights now
    after_move = [check(f) for f in firsts]
    assert after_move[0].action != after_doc[0].action  # the current action followed the weights


def marginal(doc: ExplorationDocument, store: WeightsStore, action: list[int]) -> float:
    """The behaviour's probability of serving ``action``: the segment's weights with 1 - slice, each grid
    action with slice / n (the grid contains the current weights' action)."""
    a = encode_action(action, 10)
    current = encode_action(nearest_action(store.get("default").weights, 10), 10)
    in_grid = a in {x.id for x in doc.actions}
    return (1.0 - doc.slice if a == current else 0.0) + (doc.slice / len(doc.actions) if in_grid else 0.0)


def test_propensity_is_the_marginal_probability_of_the_served_weights(store: WeightsStore) -> None:
    t = tuner(store)
    t.maybe_publish_exploration("default")
    doc = store.get_exploration("default")
    assert doc is not None and doc.slice == 0.1
    centre = encode_action(nearest_action(store.get("default").weights, 10), 10)
    other = next(a.id for a in doc.actions if a.id != centre)
    rec = _session(0, None, 1.0, 1, 0.0)

    def beh(act: int | None, prob: float, version: int = doc.version) -> Any:
        first = SimpleNamespace(explore_action=act, explore_probability=prob, exploration_version=version)
        return t.behaviour(rec, first)

    # the segment's weights (logged 1 - slice) and an exploration draw of the centre (logged slice / n)
    # are the same action, served with probability (1 - slice) + slice / n
    for b in (beh(None, 0.9), beh(centre, 0.1 / 27)):
        assert b.action == decode_action(centre, 10) and b.propensity == pytest.approx(0.9 + 0.1 / 27)
    assert beh(centre, 0.1 / 27).explore and not beh(None, 0.9).explore
    b = beh(other, 0.1 / 27)
    assert b.explore and b.propensity == pytest.approx(0.1 / 27)
    # a document this tuner did not publish (e.g. before a restart): the logged value stands
    assert beh(None, 0.9, version=doc.version + 7).propensity == 0.9
    assert beh(centre, 0.1 / 27, version=doc.version + 7).propensity == 0.1 / 27


@pytest.mark.parametrize("seed", [3, 11])
def test_reinforce_learns_from_logged_actions_and_propensities(store: WeightsStore, seed: int) -> None:
    """Synthetic sessions under a 20 % slice: 80 % get the current action by the segment's weights, the
    rest one of the 27 grid actions (the current one too: p(current) = 0.8 + 0.2 / 27, p(other) = 0.2 / 27);
    one explored action (one level more click weight) earns clearly more. With the default learning rate
    and KL guard the tuner must move its policy towards it, pass the gates and push it within 8 batches of
    200 sessions (it took 2-5 over seeds 0-15; 3-7 before the marginal propensity)."""
    t = tuner(store, explore_fraction=0.2, lr=0.5)  # default lr and kl_max (0.3)
    t.maybe_publish_exploration("default")
    current = nearest_action(BUILTIN_WEIGHTS, 10)
    best = encode_action([current[0] + 1, current[1], current[2]], 10)
    rng = random.Random(seed)

    def outcome(act: int | None) -> tuple[int, float]:
        return (4, 3.0) if act == best else (rng.randrange(2), 0.0)

    decisions = []
    for i in range(8 * 200):
        d = _serve(t, store, i, outcome, users=f"s{seed}-user")
        if d is not None:
            decisions.append(d)
            if d.decision == "pushed":
                break
    assert [d.decision for d in decisions].count("pushed") == 1, [d.reason for d in decisions]
    assert all(d.decision in ("no_change", "pushed") for d in decisions), [d.reason for d in decisions]
    assert nearest_action(decisions[-1].weights, 10) == decode_action(best, 10)  # type: ignore[arg-type]
    assert store.get("default").weights.click > BUILTIN_WEIGHTS.click
    # the exploration grid was re-centred on the pushed action with the weights
    doc = store.get_exploration("default")
    assert doc is not None and doc.version == 2 and best in {a.id for a in doc.actions}


def test_a_push_never_overwrites_weights_moved_after_the_step_read_them(store: WeightsStore) -> None:
    """A learning step reads the served weights from the tuner's 5-second cache; an admin push in that
    window must not be overwritten by a candidate computed from the older weights: the push re-reads
    Redis, drops the candidate (``superseded``, counted) and the next step re-centres on the admin's."""
    t = tuner(store, explore_fraction=0.2, lr=0.5)  # the learning test's setting: it pushes in 2-5 batches
    t.maybe_publish_exploration("default")
    current = nearest_action(BUILTIN_WEIGHTS, 10)
    best = encode_action([current[0] + 1, current[1], current[2]], 10)
    rng = random.Random(3)

    def outcome(act: int | None) -> tuple[int, float]:
        return (4, 3.0) if act == best else (rng.randrange(2), 0.0)

    i, first = 0, None
    while first is None:  # one batch: the cache holds the built-ins now
        first, i = _serve(t, store, i, outcome), i + 1
    assert first.decision == "no_change"
    admin = action_weights([1, 1, 1], 10)
    store.push("default", admin, source="gateway", reason="admin re-targeting")
    t._wcache["default"] = (math.inf, BUILTIN_WEIGHTS)  # still cached, however long the test takes
    decisions = []
    while not decisions or decisions[-1].decision == "no_change":
        assert i < 9 * 200, [d.reason for d in decisions]
        if (d := _serve(t, store, i, outcome, check=False)) is not None:
            decisions.append(d)
        i += 1
    assert decisions[-1].decision == "superseded", decisions[-1]
    assert store.get("default").weights == admin and store.get("default").source == "gateway"
    assert t.metrics.tuner_decisions.labels(segment="default", decision="superseded")._value.get() == 1
    assert t._wcache["default"][1] == admin
    while _serve(t, store, i, outcome, check=False) is None:  # the next step starts from the admin's
        i += 1
    assert t.segments["default"].centre == nearest_action(admin, 10) == [1, 1, 1]


def test_the_tuner_keeps_a_bounded_list_of_recent_decisions(store: WeightsStore) -> None:
    """Every decision is logged and counted; the tuner keeps only the latest MAX_KEPT_DECISIONS (a
    long-lived controller makes ~40 a second at 50 000 events/s)."""
    t = tuner(store, batch_sessions=1, shadow=True)
    n = MAX_KEPT_DECISIONS + 50
    for i in range(n):
        t.add(_session(i, None, 1.0, clicks=i % 3, value=float(i % 5)))
    assert len(t.decisions) == MAX_KEPT_DECISIONS
    counted = sum(
        s.value for m in t.metrics.tuner_decisions.collect() for s in m.samples if s.name.endswith("_total")
    )
    assert counted == n


def test_repeated_routine_decisions_are_summed_into_the_next_log_line(
    store: WeightsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decision that repeats the segment's last logged one and changes nothing is logged at most
    every ROUTINE_LOG_INTERVAL_S, and the next line says how many went unlogged; a different decision
    is logged at once. Every decision is still counted and kept."""
    clock = [1000.0]
    monkeypatch.setattr(tuner_mod.time, "monotonic", lambda: clock[0])
    t = tuner(store, batch_sessions=1, min_sessions=10**6, strategy="correlation")
    with structlog.testing.capture_logs() as logs:
        for i in range(5):  # blocked_min_sessions five times within the interval
            t.add(_session(i, None, 1.0, clicks=i % 3, value=float(i % 5)))
        clock[0] += tuner_mod.ROUTINE_LOG_INTERVAL_S
        t.add(_session(5, None, 1.0, clicks=1, value=2.0))
        t.min_sessions = 1  # a batch of one has no correlation: no_change, another decision
        t.add(_session(6, None, 1.0, clicks=2, value=4.0))
    lines = [e for e in logs if e["event"] == "tuner decision"]
    assert [(e["decision"], e["unlogged_repeats"]) for e in lines] == [
        ("blocked_min_sessions", 0),
        ("blocked_min_sessions", 4),
        ("no_change", 0),
    ]
    assert [d.decision for d in t.decisions] == ["blocked_min_sessions"] * 6 + ["no_change"]


def test_reinforce_does_not_push_when_no_action_is_better(store: WeightsStore) -> None:
    """The same setting with rewards independent of the action: 10 batches, no push."""
    t = tuner(store, explore_fraction=0.2, lr=0.5)
    t.maybe_publish_exploration("default")
    rng = random.Random(7)
    decisions = [
        d
        for i in range(10 * 200)
        if (d := _serve(t, store, i, lambda _a: (rng.randrange(3), rng.choice([0.0, 0.0, 0.0, 3.0]))))
        is not None
    ]
    assert len(decisions) == 10 and not any(d.decision == "pushed" for d in decisions)
    assert nearest_action(store.get("default").weights, 10) == nearest_action(BUILTIN_WEIGHTS, 10)


def test_reinforce_gradient_points_to_the_better_action() -> None:
    """One step from a uniform policy, on-policy data (mu = pi): the better action's levels go up."""
    levels = 3
    policy = Policy(np.zeros((3, levels)))
    actions = [list(a) for a in itertools.product(range(levels), repeat=3)]
    mus = np.full(len(actions), 1 / len(actions))
    rewards = np.array([1.0 if a == [2, 0, 1] else 0.0 for a in actions])
    grad = reinforce_gradient(policy, actions, mus, rewards)
    assert [int(i) for i in grad.argmax(axis=1)] == [2, 0, 1]
    assert np.allclose(grad.sum(axis=1), 0.0)  # softmax gradients sum to zero per group
    assert not reinforce_gradient(policy, actions, mus, np.full(len(actions), 0.3)).any()


def test_the_batched_gradient_equals_the_per_session_sum() -> None:
    """reinforce_gradient / probs_of do the batch at once; the per-session loop they replaced (the
    formula as written) gives the same numbers."""

    def per_session(policy: Policy, actions: list[list[int]], mus: np.ndarray, r: np.ndarray) -> np.ndarray:
        probs = policy.probs()
        iw = np.minimum(MAX_IW, np.array([policy.prob(a) for a in actions]) / mus)
        baseline = float((iw * r).sum()) / float(iw.sum())
        adv = (r - baseline) / (float(r.std()) + 1e-6)
        grad = np.zeros_like(policy.theta)
        for a, w, ad in zip(actions, iw, adv, strict=True):
            grad -= w * ad * probs
            for g, lvl in enumerate(a):
                grad[g, lvl] += w * ad
        return grad / float(iw.sum())

    rng = np.random.default_rng(3)
    for n in (1, 7, 200):
        policy = Policy(rng.normal(size=(3, 10)))
        actions = [[int(x) for x in rng.integers(0, 10, size=3)] for _ in range(n)]
        mus = rng.uniform(0.001, 1.0, size=n)
        rewards = rng.uniform(size=n)
        want = per_session(policy, actions, mus, rewards)
        assert np.allclose(reinforce_gradient(policy, actions, mus, rewards), want, rtol=1e-12, atol=1e-15)
        got = policy.probs_of(np.asarray(actions))
        assert np.array_equal(got, [policy.prob(a) for a in actions])


def _random_batch(rng: np.random.Generator, n: int, levels: int, explored: float) -> list[TunerSession]:
    """Sessions as the tuner gets them: mostly the centre action, ``explored`` of them elsewhere, some
    without a behaviour or kappa, business value mostly 0."""
    centre = [int(x) for x in rng.integers(0, levels, size=3)]
    out = []
    for i in range(n):
        action = [int(x) for x in rng.integers(0, levels, size=3)] if rng.uniform() < explored else centre
        mu = 0.99 if action == centre else float(rng.uniform(0.0005, 0.01))
        tuner = None if rng.uniform() < 0.1 else SessionTuner(action=action, propensity=mu)
        kappa = None if rng.uniform() < 0.1 else float(rng.choice([0.2, 0.5, 0.9]))
        value = float(rng.uniform(-5, 5)) if rng.uniform() < 0.3 else 0.0
        feats = SessionFeatures(
            float(rng.uniform()), float(rng.uniform(0, 3)), float(rng.choice([0.0, 0.25, 0.5])), 0.5
        )
        out.append(TunerSession(f"u{i}:1", "default", tuner, kappa, value, value, feats))
    return out


def test_the_native_learning_step_agrees_with_the_reference() -> None:
    """learning_step (Rust, summing in order) and learning_step_py (numpy, summing pairwise) agree to
    ~1e-9 on random batches and policies, and on the decisions' inputs (mode, distinct actions)."""
    rng = np.random.default_rng(7)
    for trial in range(300):
        levels = int(rng.choice([3, 10]))
        n = int(rng.choice([2, 7, 200, 1000]))
        batch = _random_batch(rng, n, levels, explored=float(rng.choice([0.0, 0.01, 0.5])))
        if trial % 10 == 0:  # no spread: min-max gives 0.5
            batch = [b._replace(value=1.0, features=batch[0].features) for b in batch]
        centre = [int(x) for x in rng.integers(0, levels, size=3)]
        old = Policy(rng.normal(scale=float(rng.choice([0.1, 2.0])), size=(3, levels)), version=trial)
        lr = float(rng.choice([0.5, 5.0]))
        got, want = learning_step(batch, centre, old, lr), learning_step_py(batch, centre, old, lr)
        assert got.policy.version == want.policy.version == trial + 1
        # atol: with rewards that do not vary, both steps are rounding noise (~1e-16) divided by the
        # std's 1e-6 guard
        assert np.allclose(got.policy.theta, want.policy.theta, rtol=1e-10, atol=1e-8)
        for a, b in ((got.kl, want.kl), (got.v_new, want.v_new), (got.v_beh, want.v_beh)):
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
        assert got.entropy == pytest.approx(want.entropy, rel=1e-9)
        assert (got.mode, got.distinct) == (want.mode, want.distinct)


def test_the_native_learning_step_leaves_what_it_cannot_read_to_the_reference() -> None:
    """A level outside ``0..levels`` or an action of the wrong length is declined natively and goes to
    the reference, which raises as before (the tuner counts the batch as an error)."""
    rng = np.random.default_rng(8)
    old = Policy(rng.normal(size=(3, 10)))
    for bad, error in (([0, -1, 0], ValueError), ([0, 10, 0], IndexError), ([1, 2], ValueError)):
        batch = _random_batch(rng, 50, 10, explored=0.5)
        batch[3] = batch[3]._replace(tuner=SessionTuner(action=bad, propensity=0.01))
        assert drlput_step(batch, [1, 1, 1], old.theta.tobytes(), 0.5, MAX_IW, UNSET_KAPPA) is None
        with pytest.raises(error):
            learning_step_py(batch, [1, 1, 1], old, 0.5)
        with pytest.raises(error):
            learning_step(batch, [1, 1, 1], old, 0.5)


def test_batch_rewards_are_the_formula_per_session() -> None:
    """batch_rewards computes over arrays; each session's reward is exactly the documented formula
    (min-max over the batch, kappa blend) evaluated one session at a time."""

    def mm(xs: list[float]) -> list[float]:
        lo, hi = min(xs), max(xs)
        return [0.5] * len(xs) if hi - lo <= 1e-12 else [(x - lo) / (hi - lo) for x in xs]

    rng = random.Random(11)
    for n in (2, 9, 200):
        batch = [
            TunerSession(
                f"u{i}:1",
                "default",
                None,
                rng.choice([None, 0.2, 0.7]),
                v,
                v,
                SessionFeatures(rng.random(), rng.random() * 3, rng.choice([0.0, 0.25, 0.5]), rng.random()),
            )
            for i, v in enumerate(rng.uniform(-5, 5) for _ in range(n))
        ]
        kappa = [s.kappa if s.kappa is not None else 0.2 for s in batch]
        b, c, d, sk = (
            mm([getattr(s.features, k) if k != "value" else s.value for s in batch])
            for k in ("value", "click", "dwell", "skip")
        )
        want = [
            k * bi + (1 - k) * (ci + di + (1 - si)) / 3
            for k, bi, ci, di, si in zip(kappa, b, c, d, sk, strict=True)
        ]
        assert batch_rewards(batch).tolist() == want
    same = [TunerSession("u:1", "default", None, 0.5, 1.0, 1.0, SessionFeatures(0.1, 0.2, 0.3, 0.4))] * 3
    assert batch_rewards(same).tolist() == [0.5 * 0.5 + 0.5 * (0.5 + 0.5 + 0.5) / 3] * 3


def test_relative_gain_gate_blocks_a_move_the_logged_data_does_not_support(store: WeightsStore) -> None:
    t = tuner(store)
    t.maybe_publish_exploration("default")
    current = nearest_action(BUILTIN_WEIGHTS, 10)
    rng = random.Random(5)
    decision = None
    for i in range(200):
        # only the current action was ever served: nothing supports another one
        rec = _session(i, None, 0.9, clicks=rng.randrange(3), value=rng.random())
        rec.tuner = t.behaviour(
            rec, SimpleNamespace(explore_action=None, explore_probability=0.9, exploration_version=1)
        )
        decision = t.add(rec) or decision
    assert decision is not None and decision.decision in ("no_change", "blocked_diversity")
    assert nearest_action(store.get("default").weights, 10) == current


def test_sessions_without_a_document_count_as_current_with_propensity_one(store: WeightsStore) -> None:
    t = tuner(store)
    rec = _session(0, None, 1.0, 1, 0.0)
    beh = t.behaviour(
        rec, SimpleNamespace(explore_action=None, explore_probability=None, exploration_version=None)
    )
    assert beh.propensity == 1.0 and not beh.logged and not beh.explore


def test_an_update_larger_than_the_kl_bound_is_rolled_back(store: WeightsStore) -> None:
    t = tuner(store, explore_fraction=0.2, lr=0.5, kl_max=1e-6)
    t.maybe_publish_exploration("default")
    rng = random.Random(1)
    decisions = [
        d
        for i in range(3 * 200)
        if (d := _serve(t, store, i, lambda _a: (rng.randrange(3), rng.random()))) is not None
    ]
    assert [d.decision for d in decisions] == ["rollback"] * 3, [d.reason for d in decisions]
    theta = t.segments["default"].policy.theta  # type: ignore[union-attr]
    assert np.array_equal(theta, Policy.centred(nearest_action(BUILTIN_WEIGHTS, 10), 10).theta)
