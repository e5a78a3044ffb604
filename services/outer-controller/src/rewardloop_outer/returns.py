"""Discounted returns over a session's steps."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Protocol, TypeVar


class StepLike(Protocol):
    @property
    def event_time_ms(self) -> int: ...
    @property
    def position(self) -> int: ...
    @property
    def event_id(self) -> str: ...


S = TypeVar("S", bound=StepLike)


def step_order_key(ev: StepLike) -> tuple[int, int, str]:
    """Steps are ordered by ``(event_time_ms, position, event_id)`` (docs/architecture.md)."""
    return (ev.event_time_ms, ev.position, ev.event_id)


#: step_order_key as a C-level getter (the same tuples; a Python key function per step is measurable)
_order_key = attrgetter("event_time_ms", "position", "event_id")


def order_steps(events: Sequence[S]) -> list[S]:
    return sorted(events, key=_order_key)


def discounted_returns(rewards: Sequence[float], gamma: float) -> list[float]:
    """``G_t = r_t + gamma * G_{t+1}`` with ``G_T = 0``; returns ``[G_0, ..., G_{T-1}]``."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    out = [0.0] * len(rewards)
    g = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = float(rewards[t]) + gamma * g
        out[t] = g
    return out
