from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest


@dataclass(frozen=True)
class Action:
    """The fields of a ``RewardEvent`` / ``SessionStep`` that the credit features read."""

    clicked: bool
    dwell_seconds: float
    skipped: bool
    predicted_relevance: float
    reward: float
    position: int


def random_session(rng: np.random.Generator, n: int) -> list[Action]:
    out = []
    for i in range(n):
        clicked = bool(rng.random() < 0.3)
        out.append(
            Action(
                clicked=clicked,
                dwell_seconds=float(rng.exponential(40.0)) if clicked else 0.0,
                skipped=not clicked and bool(rng.random() < 0.5),
                predicted_relevance=float(rng.random()),
                reward=float(rng.normal()),
                position=i % 10,
            )
        )
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
