"""A small, seeded recommender world: users with drifting interests, items, a stochastic serving policy.

This is the walking-skeleton simulator (issue #2): enough behaviour to exercise every part of the loop
with plausible numbers. It is pure (no I/O): `World.step` returns what the user did; the caller sends it.
The RecoMind-style simulator grounded in real logs is issue #5.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

N_CATEGORIES = 8
SLATE_SIZE = 5
CANDIDATES = 40


@dataclass(frozen=True)
class Item:
    item_id: str
    category: int
    quality: float  # in (0, 1)
    price: float  # currency units
    long_form: bool  # long content: bimodal dwell (long reads vs. short clips)


@dataclass
class User:
    user_id: str
    interests: list[float]  # a distribution over categories; drifts toward what the user engages with
    segment: str = "default"
    in_session: bool = False
    session_no: int = 0
    step_no: int = 0
    session_dwell: float = 0.0
    session_clicked: list[Item] = field(default_factory=list)


@dataclass(frozen=True)
class ShownItem:
    item: Item
    position: int
    predicted_relevance: float
    propensity: float  # pi_beta of this item at this position (Plackett-Luce factor of the serving policy)
    clicked: bool
    dwell_seconds: float
    skipped: bool


@dataclass(frozen=True)
class Purchase:
    item: Item
    revenue: float


class World:
    """Seeded users and items. All randomness comes from one `random.Random(seed)`."""

    def __init__(self, n_users: int, n_items: int = 500, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.items = [self._make_item(i) for i in range(n_items)]
        self.users = [self._make_user(u) for u in range(n_users)]

    def _make_item(self, i: int) -> Item:
        rng = self.rng
        return Item(
            item_id=f"item-{i}",
            category=rng.randrange(N_CATEGORIES),
            quality=rng.betavariate(2.0, 2.0),
            price=round(math.exp(rng.gauss(3.0, 0.8)), 2),
            long_form=rng.random() < 0.3,
        )

    def _make_user(self, u: int) -> User:
        weights = [self.rng.gammavariate(0.5, 1.0) for _ in range(N_CATEGORIES)]
        total = sum(weights) or 1.0
        return User(user_id=f"user-{u}", interests=[w / total for w in weights])

    def relevance(self, user: User, item: Item) -> float:
        """The serving model's relevance estimate in [0, 1]: interest match times quality, plus noise."""
        affinity = min(1.0, user.interests[item.category] * N_CATEGORIES / 2.0)
        noisy = 0.6 * affinity + 0.4 * item.quality + self.rng.gauss(0.0, 0.05)
        return min(1.0, max(0.0, noisy))

    def serve_slate(self, user: User) -> list[tuple[Item, float, float]]:
        """Plackett-Luce sampling from a softmax over candidates; returns (item, relevance, propensity)."""
        candidates = self.rng.sample(self.items, CANDIDATES)
        scored = [(item, self.relevance(user, item)) for item in candidates]
        slate: list[tuple[Item, float, float]] = []
        temperature = 0.15
        while len(slate) < SLATE_SIZE:
            logits = [rel / temperature for _, rel in scored]
            top = max(logits)
            exps = [math.exp(x - top) for x in logits]
            total = sum(exps)
            r = self.rng.random() * total
            acc = 0.0
            chosen = len(exps) - 1
            for idx, e in enumerate(exps):
                acc += e
                if acc >= r:
                    chosen = idx
                    break
            item, rel = scored.pop(chosen)
            slate.append((item, rel, exps[chosen] / total))
        return slate

    def react(self, user: User, slate: list[tuple[Item, float, float]]) -> list[ShownItem]:
        """Cascade-like examination; click from true interest and quality; heavy-tailed bimodal dwell."""
        shown = []
        for position, (item, rel, propensity) in enumerate(slate):
            examined = self.rng.random() < 0.92**position
            true_affinity = min(1.0, user.interests[item.category] * N_CATEGORIES / 2.0)
            p_click = 0.05 + 0.6 * true_affinity * item.quality
            clicked = examined and self.rng.random() < p_click
            dwell = 0.0
            if clicked:
                base = 90.0 if item.long_form else 12.0
                dwell = round(base * math.exp(self.rng.gauss(0.0, 0.9)) * (0.5 + item.quality), 3)
                self._drift(user, item.category)
            skipped = examined and not clicked and self.rng.random() < 0.5
            shown.append(ShownItem(item, position, rel, propensity, clicked, dwell, skipped))
        user.session_dwell += sum(s.dwell_seconds for s in shown)
        user.session_clicked.extend(s.item for s in shown if s.clicked)
        return shown

    def _drift(self, user: User, category: int) -> None:
        user.interests = [0.97 * w + (0.03 if c == category else 0.0) for c, w in enumerate(user.interests)]

    def continues(self, user: User, shown: list[ShownItem]) -> bool:
        engaged = any(s.clicked for s in shown)
        return user.step_no < 30 and self.rng.random() < (0.85 if engaged else 0.7)

    def purchase(self, user: User) -> Purchase | None:
        """Purchases are sparse and driven by deep engagement (dwell), not by click counts."""
        if not user.session_clicked:
            return None
        p = 1.0 / (1.0 + math.exp(-(-3.0 + user.session_dwell / 150.0)))
        if self.rng.random() >= p:
            return None
        item = max(user.session_clicked, key=lambda it: it.quality)
        return Purchase(item=item, revenue=item.price)

    def step_gap_ms(self) -> int:
        return int(self.rng.uniform(5_000, 40_000))

    def idle_gap_ms(self, session_gap_ms: int) -> int:
        """Time between sessions: always longer than the session gap, exponential beyond it."""
        return session_gap_ms + 60_000 + int(self.rng.expovariate(1.0 / (60 * 60_000)))
