"""Rolling trade-off points for the operator's panel (issue #6): per (weights version, exploration
action) the mean clicks, dwell seconds and business value per session over the last ``window``
sessions of that point.

Labels stay bounded: at most ``max_points`` points are exported; the least recently updated one is
dropped (its series removed) when a new point appears. ``action`` is the scorer's exploration action
id, or ``current`` for sessions served with the segment's weights. The current point (the newest
weights version, ``action="current"``) is marked with ``rewardloop_outer_tradeoff_current = 1``; the
points no other point dominates (at least as good on all three means, better on one) with
``rewardloop_outer_tradeoff_pareto = 1``. The means and the frontier are recomputed at most every
``pareto_interval_s`` (1 s; an O(window) or O(points^2) pass must not run per closed session at 10^4
sessions/s): the gauges trail the sessions by at most that long.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rewardloop_common.events import SessionRecord

from .metrics import OuterMetrics

Means = tuple[float, float, float]  # clicks, dwell seconds, business value per session


def pareto_front(points: dict[tuple[str, str], Means]) -> set[tuple[str, str]]:
    """The keys of the points that no other point dominates (maximising all three means)."""

    def dominates(a: Means, b: Means) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and a != b

    return {k for k, v in points.items() if not any(dominates(o, v) for o in points.values())}


class TradeoffTracker:
    def __init__(
        self,
        metrics: OuterMetrics,
        window: int = 500,
        max_points: int = 30,
        pareto_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.m = metrics
        self.window = window
        self.max_points = max_points
        self.points: OrderedDict[tuple[str, str], deque[tuple[float, float, float]]] = OrderedDict()
        self.means: dict[tuple[str, str], Means] = {}
        self.current: tuple[str, str] | None = None
        self._newest_version = -1
        self.pareto_interval_s = pareto_interval_s
        self._clock = clock
        self._last_pareto = -float("inf")
        self._dirty: set[tuple[str, str]] = set()  # points added to since the last refresh

    def add(self, rec: SessionRecord, first: Any = None) -> None:
        """One closed session (``first``: its first step's event, for the exploration action)."""
        value = rec.business.value if rec.business is not None else rec.business_reward
        self.add_steps(rec.steps, first, value)

    def add_steps(self, steps: Sequence[Any], first: Any, value: float) -> None:
        """One closed session from its steps -- anything with ``weights_version``, ``clicked`` and
        ``dwell_seconds``: a record's steps or the engine's actions (it builds no record model)."""
        self.add_point(
            max((s.weights_version for s in steps), default=0),
            getattr(first, "explore_action", None),
            float(sum(1 for s in steps if s.clicked)),
            float(sum(s.dwell_seconds for s in steps)),
            value,
        )

    def add_point(self, version: int, action: int | None, clicks: float, dwell: float, value: float) -> None:
        """One closed session's point: its newest weights version, exploration action and values.

        The means and their gauges are recomputed (exactly, over the window) for the points changed
        since the last refresh, at most every ``pareto_interval_s``: re-summing a 500-session window
        per closed session was a third of the controller's time at 10^4 sessions/s."""
        self._point(version, action).append((clicks, dwell, value))
        self.maybe_refresh()

    def add_points(self, points: Iterable[tuple[int, int | None, float, float, float]]) -> None:
        """:meth:`add_point` for many sessions, in order (the native close's ``(version, action, clicks,
        dwell, value)`` tuples): the same points and gauges, with a point's bookkeeping done once per
        run of sessions on it (nearly all of a batch are on the current weights) and one refresh check."""
        last: tuple[int, int | None] | None = None
        q: deque[tuple[float, float, float]] | None = None
        for version, action, clicks, dwell, value in points:
            if q is None or (version, action) != last:
                last, q = (version, action), self._point(version, action)
            q.append((clicks, dwell, value))
        self.maybe_refresh()

    def _point(self, version: int, action: int | None) -> deque[tuple[float, float, float]]:
        """The point's window of sessions (created, or moved to the most recently updated end), marked
        changed; the current point follows the newest weights version."""
        key = (str(version), "current" if action is None else str(action))
        q = self.points.get(key)
        if q is None:
            if len(self.points) >= self.max_points:
                old, _ = self.points.popitem(last=False)
                self._remove(old)
            q = self.points[key] = deque(maxlen=self.window)
        else:
            self.points.move_to_end(key)
        self._dirty.add(key)
        if version >= self._newest_version and key[1] == "current" and key != self.current:
            self._newest_version = version
            if self.current is not None:
                self.m.tradeoff_current.labels(*self.current).set(0)
            self.current = key
            self.m.tradeoff_current.labels(*key).set(1)
        return q

    def maybe_refresh(self) -> None:
        """Refresh the changed points' means and the frontier if ``pareto_interval_s`` has passed."""
        if not self._dirty:
            return
        now = self._clock()
        if now - self._last_pareto >= self.pareto_interval_s:
            self._last_pareto = now
            self.refresh()

    def refresh(self) -> None:
        for key in self._dirty:
            q = self.points.get(key)
            if not q:
                continue
            n = len(q)
            means = (sum(x[0] for x in q) / n, sum(x[1] for x in q) / n, sum(x[2] for x in q) / n)
            self.means[key] = means
            self.m.tradeoff_clicks.labels(*key).set(means[0])
            self.m.tradeoff_dwell.labels(*key).set(means[1])
            self.m.tradeoff_business.labels(*key).set(means[2])
            self.m.tradeoff_sessions.labels(*key).set(n)
        self._dirty.clear()
        self.update_pareto()

    def update_pareto(self) -> set[tuple[str, str]]:
        front = pareto_front(self.means)
        for key in self.means:
            self.m.tradeoff_pareto.labels(*key).set(1 if key in front else 0)
        return front

    def _remove(self, key: tuple[str, str]) -> None:
        for g in (
            self.m.tradeoff_clicks,
            self.m.tradeoff_dwell,
            self.m.tradeoff_business,
            self.m.tradeoff_sessions,
            self.m.tradeoff_current,
            self.m.tradeoff_pareto,
        ):
            try:
                g.remove(*key)
            except KeyError:
                pass
        self.means.pop(key, None)
        self._dirty.discard(key)
        if self.current == key:
            self.current = None
