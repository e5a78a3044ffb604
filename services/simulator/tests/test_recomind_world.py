"""RecoMindWorld: RecoMindEnv behind the live driver's World interface, driven without the stack."""

from __future__ import annotations

import pytest

from rewardloop_sim.recomind_world import RecoMindWorld
from rewardloop_sim.run import build_parser, main


def drive(world: RecoMindWorld, n_sessions: int) -> list[tuple[int, int, float | None]]:
    """The driver's loop (run._step_user) without the network: (user, steps, revenue or None)."""
    out = []
    for i in range(n_sessions):
        user = world.users[i % len(world.users)]
        steps = 0
        while True:
            shown = world.react(user, world.serve_slate(user))
            steps += 1
            for s in shown:
                assert 0.0 < s.propensity <= 1.0 and 0.0 <= s.predicted_relevance <= 1.0
                assert not (s.clicked and s.skipped) and (s.dwell_seconds > 0) == s.clicked
            if not world.continues(user, shown):
                break
        purchase = world.purchase(user)
        outcome = world.last_outcome(user)
        assert outcome is not None and outcome.n_steps == steps
        assert (purchase is not None) == outcome.purchased
        if purchase is not None:
            assert purchase.revenue == pytest.approx(outcome.revenue, abs=0.01)
            assert purchase.item.item_id == f"item-{outcome.purchased_item}"
        out.append((i % len(world.users), steps, None if purchase is None else purchase.revenue))
    return out


def test_recomind_world_drives_sessions_deterministically() -> None:
    a = drive(RecoMindWorld(n_users=20, seed=3), 200)
    b = drive(RecoMindWorld(n_users=20, seed=3), 200)
    assert a == b
    assert any(revenue is not None for _, _, revenue in a)  # purchases happen (sparse)
    assert sum(steps for _, steps, _ in a) > 200


def test_world_flag_parses_and_grounded_needs_recomind() -> None:
    args = build_parser().parse_args(["--world", "recomind", "--grounded"])
    assert (args.world, args.grounded) == ("recomind", True)
    assert build_parser().parse_args([]).world == "basic"
    with pytest.raises(SystemExit):
        main(["--grounded"])
