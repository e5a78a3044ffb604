from __future__ import annotations

import math

import pytest

from rewardloop_common.testing import make_reward_event
from rewardloop_outer.business_reward import business_reward
from rewardloop_outer.returns import discounted_returns, order_steps


def test_discounted_returns() -> None:
    assert discounted_returns([], 0.99) == []
    assert discounted_returns([2.47], 0.99) == [2.47]
    g = discounted_returns([1.0, 2.0, 3.0], 0.5)
    assert g == [1.0 + 0.5 * (2.0 + 0.5 * 3.0), 2.0 + 0.5 * 3.0, 3.0]
    assert discounted_returns([1.0, 1.0], 0.0) == [1.0, 1.0]
    assert discounted_returns([1.0, 1.0, 1.0], 1.0) == [3.0, 2.0, 1.0]
    with pytest.raises(ValueError):
        discounted_returns([1.0], 1.5)


def test_step_order() -> None:
    evs = [
        make_reward_event("b", event_time_ms=2, position=0),
        make_reward_event("z", event_time_ms=1, position=1),
        make_reward_event("y", event_time_ms=1, position=0),
        make_reward_event("a", event_time_ms=1, position=1),
    ]
    assert [e.event_id for e in order_steps(evs)] == ["y", "a", "z", "b"]


def test_business_reward() -> None:
    assert business_reward(0.0, 0, 0) == 0.0
    assert business_reward(19.99, 0, 0) == pytest.approx(math.log(20.99))
    assert business_reward(19.99, 0, 0) == pytest.approx(3.04, abs=0.005)  # the doc's example
    assert business_reward(0.0, 1, 2) == pytest.approx(2.0)
    assert business_reward(1e9, 3, 3) == 5.0
    assert business_reward(-5.0, 0, 0) == 0.0
