from __future__ import annotations

import math

from rewardloop_sim.world import SLATE_SIZE, World


def run_sessions(seed: int, n: int = 50) -> list[tuple[str, int, bool, float, bool]]:
    world = World(n_users=10, seed=seed)
    out = []
    for i in range(n):
        user = world.users[i % 10]
        user.step_no += 1
        for s in world.react(user, world.serve_slate(user)):
            out.append((s.item.item_id, s.position, s.clicked, s.dwell_seconds, s.skipped))
    return out


def test_seeded_and_deterministic() -> None:
    assert run_sessions(1) == run_sessions(1)
    assert run_sessions(1) != run_sessions(2)


def test_slates_are_valid_and_propensities_are_probabilities() -> None:
    world = World(n_users=5, seed=3)
    for user in world.users:
        slate = world.serve_slate(user)
        assert len(slate) == SLATE_SIZE
        assert len({item.item_id for item, _, _ in slate}) == SLATE_SIZE
        for _, rel, propensity in slate:
            assert 0.0 <= rel <= 1.0
            assert 0.0 < propensity <= 1.0


def test_feedback_is_consistent() -> None:
    world = World(n_users=20, seed=4)
    clicks = 0
    for user in world.users:
        for _ in range(20):
            for s in world.react(user, world.serve_slate(user)):
                assert not (s.clicked and s.skipped)
                assert (s.dwell_seconds > 0) == s.clicked
                assert math.isfinite(s.dwell_seconds)
                clicks += s.clicked
    assert 0 < clicks < 20 * 20 * SLATE_SIZE


def test_purchases_follow_engagement() -> None:
    """Deep dwell makes purchases likelier: the signal the outer loop has to discover."""
    world = World(n_users=1, seed=5)
    user = world.users[0]
    user.session_clicked = [world.items[0]]

    def rate(dwell: float) -> float:
        user.session_dwell = dwell
        return sum(world.purchase(user) is not None for _ in range(2000)) / 2000

    assert rate(0.0) < rate(600.0)
    user.session_clicked = []
    assert world.purchase(user) is None


def test_idle_gap_exceeds_session_gap() -> None:
    world = World(n_users=1, seed=6)
    assert all(world.idle_gap_ms(1_800_000) > 1_800_000 for _ in range(100))
