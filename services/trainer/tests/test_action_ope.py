"""OPE of the tuner's explored weight actions from logged sessions (action_ope.py)."""

from __future__ import annotations

import numpy as np
import pytest

from rewardloop_common.events import SessionRecord, SessionTuner
from rewardloop_common.testing import make_session_record, make_session_step
from rewardloop_trainer.action_ope import BEHAVIOUR, estimate_actions, logged_decisions
from rewardloop_trainer.service import TrainerMetrics, publish_action_ope


def _session(i: int, reward: float, tuner: SessionTuner | None) -> SessionRecord:
    step = make_session_step(0, session=f"u{i}", clicked=True, dwell_seconds=5.0, reward=1.0, return_=1.0)
    return make_session_record([step], user_id=f"u{i}", business_reward=reward, tuner=tuner)


def _logged(action: int | None, p: float) -> SessionTuner:
    return SessionTuner(
        action=[0, 0, 0], propensity=p, explore_action=action, exploration_version=1, logged=True
    )


def _world(seed: int = 0) -> list[SessionRecord]:
    """Behaviour (p=0.8) earns ~1.0; explored action 7 (p=0.1) earns ~2.0, action 3 (p=0.1) ~0.0."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(4000):
        u = rng.random()
        if u < 0.8:
            out.append(_session(i, 1.0 + rng.normal(0, 0.1), _logged(None, 0.8)))
        elif u < 0.9:
            out.append(_session(i, 2.0 + rng.normal(0, 0.1), _logged(7, 0.1)))
        else:
            out.append(_session(i, 0.0 + rng.normal(0, 0.1), _logged(3, 0.1)))
    return out


def test_logged_decisions_skip_sessions_without_a_logged_propensity() -> None:
    recs = [_session(0, 1.0, None), _session(1, 2.0, _logged(5, 0.25)), _session(2, 0.5, _logged(None, 0.75))]
    unlogged = SessionTuner(action=[1, 1, 1], propensity=0.5, logged=False)
    recs.append(_session(3, 9.0, unlogged))
    acts, probs, rewards = logged_decisions(recs)
    assert acts.tolist() == [5, -1]
    assert probs.tolist() == [0.25, 0.75]
    assert rewards.tolist() == [2.0, 0.5]


def test_estimates_recover_each_actions_value() -> None:
    found = {a.policy: a for a in estimate_actions(_world())}
    assert set(found) == {BEHAVIOUR, "action-7", "action-3"}
    snips7, ips7 = found["action-7"].estimates
    assert snips7.estimator == "snips" and ips7.estimator == "ips"
    assert snips7.value == pytest.approx(2.0, abs=0.02)
    assert ips7.value == pytest.approx(2.0, abs=0.15)  # IPS: unbiased, noisier (counts vary around 10 %)
    assert found["action-3"].estimates[0].value == pytest.approx(0.0, abs=0.02)
    # on-policy mean of everything logged: 0.8*1 + 0.1*2 + 0.1*0
    assert found[BEHAVIOUR].estimates[0].value == pytest.approx(1.0, abs=0.03)
    assert found[BEHAVIOUR].estimates[0].estimator == "on_policy"
    assert snips7.lower > found[BEHAVIOUR].estimates[0].upper  # action 7 clearly beats the behaviour


def test_rare_actions_are_not_estimated() -> None:
    recs = [_session(i, 1.0, _logged(None, 0.9)) for i in range(50)]
    recs += [_session(100 + i, 5.0, _logged(4, 0.1)) for i in range(3)]
    policies = [a.policy for a in estimate_actions(recs, min_sessions=5)]
    assert policies == [BEHAVIOUR]


def test_gauges_are_replaced_each_round() -> None:
    metrics = TrainerMetrics()
    publish_action_ope(_world(), metrics)
    reg = metrics.registry
    v = reg.get_sample_value("rewardloop_trainer_ope_value", {"policy": "action-7", "estimator": "snips"})
    assert v == pytest.approx(2.0, abs=0.02)
    assert reg.get_sample_value("rewardloop_trainer_ope_effective_sample_size", {"policy": "action-7"}) > 300
    # a later round without exploration: the old actions' series disappear
    publish_action_ope([_session(i, 1.0, None) for i in range(20)], metrics)
    assert (
        reg.get_sample_value("rewardloop_trainer_ope_value", {"policy": "action-7", "estimator": "snips"})
        is None
    )
    assert (
        reg.get_sample_value("rewardloop_trainer_ope_value", {"policy": BEHAVIOUR, "estimator": "on_policy"})
        == 1.0
    )
