"""RecoMindEnv behind the live-stack driver's `World` interface (`rewardloop-sim --world recomind`).

The driver (`run.py`) asks a world for a slate, the users' reactions, whether the session goes on and,
when it ends, whether a purchase follows. Here the slate is a Plackett-Luce sample from a softmax over the
observable features (the logged propensities are its per-position factors, as in `World.serve_slate`),
the reactions and the delayed outcome come from `RecoMindEnv`.
"""

from __future__ import annotations

import random

import numpy as np

from .recomind import EnvConfig, RecoMindEnv, Session, SessionOutcome
from .world import Item, Purchase, ShownItem, User


class RecoMindWorld:
    def __init__(self, n_users: int, seed: int = 7, grounded: bool = False, temperature: float = 0.5) -> None:
        self.env = RecoMindEnv(seed, EnvConfig(n_users=n_users), grounded=grounded)
        # the driver's own scheduling randomness (start times, gaps), separate from the env's stream
        self.rng = random.Random(seed)
        self._policy_rng = np.random.default_rng(seed + 1)
        self.temperature = temperature
        cat = self.env.catalogue
        self.items = [
            Item(
                item_id=f"item-{i}",
                category=int(cat.category[i]),
                quality=float(cat.quality[i]),
                price=float(cat.price[i]),
                long_form=bool(cat.long_form[i]),
            )
            for i in range(cat.n_items)
        ]
        self.users = [User(user_id=f"user-{u}", interests=[]) for u in range(n_users)]
        self._sessions: dict[int, Session] = {}
        self._last_outcome: dict[int, SessionOutcome] = {}
        self._d = cat.embedding_dim

    def _index(self, user: User) -> int:
        return int(user.user_id.rsplit("-", 1)[1])

    def serve_slate(self, user: User) -> list[tuple[Item, float, float]]:
        """(item, predicted relevance in [0, 1], propensity of this item at this position)."""
        u = self._index(user)
        if u not in self._sessions:
            self._sessions[u] = self.env.start_session(u)
        cands = self.env.candidates(u)
        scores = self.env.item_features(cands)[:, : self._d] @ self.env.user_context(u)[: self._d]
        logits = scores / self.temperature
        predicted = 1.0 / (1.0 + np.exp(-scores))
        slate: list[tuple[Item, float, float]] = []
        remaining = np.ones(cands.size, dtype=bool)
        for _ in range(self.env.config.slate_size):
            z = np.where(remaining, logits, -np.inf)
            p = np.exp(z - z.max())
            p /= p.sum()
            j = int(self._policy_rng.choice(cands.size, p=p))
            remaining[j] = False
            slate.append((self.items[int(cands[j])], float(predicted[j]), float(p[j])))
        return slate

    def react(self, user: User, slate: list[tuple[Item, float, float]]) -> list[ShownItem]:
        u = self._index(user)
        session = self._sessions[u]
        ids = np.array([int(item.item_id.rsplit("-", 1)[1]) for item, _, _ in slate], dtype=np.int64)
        o = self.env.step(session, ids)
        shown = [
            ShownItem(
                item=item,
                position=p,
                predicted_relevance=rel,
                propensity=propensity,
                clicked=bool(o.clicks[p]),
                dwell_seconds=round(float(o.dwell_seconds[p]), 3),
                skipped=bool(o.skips[p]),
            )
            for p, (item, rel, propensity) in enumerate(slate)
        ]
        user.session_dwell += float(o.dwell_seconds.sum())
        user.session_clicked.extend(s.item for s in shown if s.clicked)
        return shown

    def continues(self, user: User, shown: list[ShownItem]) -> bool:
        session = self._sessions[self._index(user)]
        return not session.done

    def purchase(self, user: User) -> Purchase | None:
        """Ends the env session (the driver calls this once, when `continues` said no)."""
        u = self._index(user)
        session = self._sessions.pop(u)
        outcome = self.env.end_session(session)
        self._last_outcome[u] = outcome
        if not outcome.purchased:
            return None
        return Purchase(item=self.items[outcome.purchased_item], revenue=round(outcome.revenue, 2))

    def last_outcome(self, user: User) -> SessionOutcome | None:
        return self._last_outcome.get(self._index(user))

    def step_gap_ms(self) -> int:
        return int(self.rng.uniform(5_000, 40_000))

    def idle_gap_ms(self, session_gap_ms: int) -> int:
        return session_gap_ms + 60_000 + int(self.rng.expovariate(1.0 / (60 * 60_000)))
