"""RecoMindEnv: a seeded, RecoMind-style user simulator with ground-truth causes for delayed rewards.

One episode is one session of one user. Each `step` serves a slate; the user examines positions
(position bias), clicks (relevance + clickbait susceptibility - price aversion - long-form effort),
dwells (heavy-tailed log-normal, bimodal: short clips vs long-form content), skips, and decides whether
to continue (satisfaction vs fatigue). Latent interests drift toward what was clicked, across sessions.

Business outcomes are decided at `end_session`, sparse and delayed, and every one of them has known
causes in the session:

* purchase intent accumulates per step from three mechanisms (the hazard of the step that *caused* it):
  - engagement: a satisfied click (dwell >= `engaged_dwell_seconds`, not clickbait) adds a small hazard;
  - category pivot: a satisfied click in a category the session had not engaged with yet, after an
    earlier satisfied click elsewhere, adds a large hazard to the pivot step;
  - price anchor: a premium item (top 20 % price of its category) that was examined at step t, followed
    later by a satisfied click on an item of the same category at <= `anchor_discount` of its price,
    adds the largest hazard to the anchor step t (the step that showed the expensive item, which the
    user mostly did not click).
  P(purchase) = 1 - exp(-H * price_resistance(user) * exp(-distrust * bait_clicks)), where bait_clicks
  counts clicks on items with clickbait >= `bait_threshold`.
* next-day return: every satisfied click adds delight proportional to relevance x dwell; bait clicks
  add regret. P(return) = (1 - exp(-D)) * sigmoid(k (D - threshold) - regret + loyalty): a threshold
  in D, which makes the retention objective non-convex in the slate mix.

`SessionOutcome.step_causal_weight` is the ground-truth share of the business reward per step:
value-weighted hazard shares of the outcomes that happened. The three objectives conflict: clickbait
raises clicks and lowers purchases and returns; anchors need expensive items shown (rarely clicked);
pivots need diversity (lower immediate relevance); delight needs long-form items (clicked less often).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from .catalogue import Catalogue, synthetic_catalogue  # noqa: F401 (re-exported type)

if TYPE_CHECKING:
    from .grounding import GroundedPreferences


@dataclass(frozen=True)
class EnvConfig:
    n_users: int = 1000
    slate_size: int = 10
    n_candidates: int = 100
    max_steps: int = 50
    session_gap_minutes: float = 30.0
    # synthetic world (grounded=False); a grounded world takes items and factors from MovieLens-100k
    n_items: int = 2000
    n_categories: int = 12
    embedding_dim: int = 16
    # relevance: sigmoid(relevance_scale * <user, item> + item_bias + user_bias + relevance_offset)
    relevance_scale: float = 4.0
    relevance_offset: float = -1.0
    # clicks
    position_decay: float = 0.85  # P(examine position p) = position_decay ** p
    click_relevance_slope: float = 5.0
    click_bias: float = -1.5
    clickbait_gain: float = 3.0  # times the user's susceptibility in [0.5, 1.5]
    price_aversion: float = 0.6  # times the user's price sensitivity, per unit of log(price / median)
    long_form_effort: float = 0.6
    click_fatigue: float = 0.01  # per step
    # dwell: log-normal, bimodal by content length, heavy tail (sigma)
    short_dwell_seconds: float = 15.0
    long_dwell_seconds: float = 240.0
    dwell_sigma: float = 0.9
    clickbait_dwell_cut: float = 0.85  # dwell *= 1 - cut * clickbait
    engaged_dwell_seconds: float = 30.0
    # skips (examined, not clicked)
    skip_base: float = 0.2
    skip_irrelevance: float = 0.6
    # continuation
    continue_bias: float = 0.3
    continue_satisfaction: float = 2.5
    continue_fatigue: float = 0.08
    clickbait_regret: float = 0.25  # continuation penalty per unit of clicked clickbait
    bait_threshold: float = 0.5  # clicks on items this click-baity or more count as bait (distrust, regret)
    # drift of latent interests toward clicked items (per step with clicks) and of the observable profile
    drift_rate: float = 0.05
    profile_rate: float = 0.1
    # purchases
    engagement_hazard: float = 0.004
    pivot_hazard: float = 0.08
    anchor_hazard: float = 0.3
    anchor_discount: float = 0.7
    premium_quantile: float = 0.8
    distrust: float = 0.4
    # next-day returns
    delight_per_click: float = 0.25
    delight_reference_seconds: float = 120.0
    return_threshold: float = 2.0
    return_sharpness: float = 3.0
    return_regret: float = 0.5
    # business reward = margin_weight * margin + revenue_weight * revenue + retention_value * returned
    margin_weight: float = 1.0
    revenue_weight: float = 0.0
    retention_value: float = 3.0

    def __post_init__(self) -> None:
        if self.n_users < 1:
            raise ValueError("EnvConfig.n_users must be >= 1")
        if not 1 <= self.slate_size <= self.n_candidates:
            raise ValueError("EnvConfig needs 1 <= slate_size <= n_candidates")
        if self.max_steps < 1:
            raise ValueError("EnvConfig.max_steps must be >= 1")
        if self.n_candidates > self.n_items:
            raise ValueError("EnvConfig.n_candidates must be <= n_items")


@dataclass(slots=True)  # not frozen: its __init__ is on the hot path (frozen costs ~3 us per step)
class StepOutcome:
    step: int  # index of this step in the session, 0-based
    items: np.ndarray  # (K,) int item ids, as served (position 0 first)
    clicks: np.ndarray  # (K,) bool
    dwell_seconds: np.ndarray  # (K,) float, 0 where not clicked
    skips: np.ndarray  # (K,) bool: examined and explicitly passed over
    true_relevance: np.ndarray  # (K,) float in [0, 1]: the oracle's relevance (for NDCG)
    done: bool  # the session ended after this step


@dataclass(frozen=True)
class SessionOutcome:
    n_steps: int
    purchased: bool
    purchased_item: int  # -1 when nothing was bought
    revenue: float
    margin: float
    returned_next_day: bool
    business_reward: float  # margin_weight * margin + revenue_weight * revenue + retention_value * returned
    cause_steps: np.ndarray  # (m,) int, sorted: the steps with a nonzero ground-truth causal share
    step_causal_weight: np.ndarray  # (n_steps,) float: sums to 1 when business_reward > 0, else zeros
    n_clicks: int
    total_dwell_seconds: float


@dataclass
class Session:
    """One user's open session. `history` is what happened; the underscored fields are hidden state."""

    user: int
    step: int = 0
    done: bool = False
    history: list[StepOutcome] = field(default_factory=list)
    _latent_scale: float = 1.0
    _purchase_hazard: list[float] = field(default_factory=list)
    _return_delight: list[float] = field(default_factory=list)
    _best_link: tuple[float, int] = (0.0, -1)  # (largest single purchase hazard, the item it would sell)
    _bait_clicks: int = 0  # clicks on items with clickbait >= bait_threshold
    _engaged_categories: set[int] = field(default_factory=set)
    _anchors: dict[int, tuple[int, float]] = field(default_factory=dict)  # category -> (step, price)
    _satisfaction: float = 0.0


@dataclass
class _Users:
    latent: np.ndarray  # (n, d) true preferences, drift
    bias: np.ndarray  # (n,)
    susceptibility: np.ndarray  # (n,) clickbait susceptibility
    price_sensitivity: np.ndarray  # (n,)
    price_resistance: np.ndarray  # (n,) multiplies purchase hazard
    patience: np.ndarray  # (n,) added to the continuation logit
    loyalty: np.ndarray  # (n,) added to the return logit
    profile: np.ndarray  # (n, d) observable: EMA of clicked item embeddings (starts as a noisy survey)
    category_share: np.ndarray  # (n, n_categories) observable: EMA of clicked categories
    n_sessions: np.ndarray  # (n,) int
    last_satisfaction: np.ndarray  # (n,)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class RecoMindEnv:
    """Seeded simulator; every random draw comes from one `np.random.Generator(seed)`."""

    def __init__(
        self,
        seed: int,
        config: EnvConfig | None = None,
        grounded: bool = True,
        *,
        preferences: GroundedPreferences | None = None,
    ) -> None:
        """`grounded=True`: MovieLens-100k users and movies (`preferences` fitted on all ratings unless
        given, e.g. fitted on a training split for validation); `grounded=False`: a synthetic world."""
        if preferences is not None and not grounded:
            raise ValueError("preferences only apply to a grounded env")
        self.config = config or EnvConfig()
        self.seed = seed
        self.grounded = grounded
        self.rng = np.random.default_rng(seed)
        cfg = self.config
        if grounded:
            from .grounding import grounded_world  # local import: needs the MovieLens download

            self.catalogue, latent, bias, relevance_scale, relevance_offset = grounded_world(
                self.rng, n_users=cfg.n_users, seed=seed, preferences=preferences
            )
            self.config = cfg = replace(
                cfg,
                n_items=self.catalogue.n_items,
                relevance_scale=relevance_scale,
                relevance_offset=relevance_offset,
                n_categories=self.catalogue.n_categories,
                embedding_dim=self.catalogue.embedding_dim,
            )
        else:
            self.catalogue = synthetic_catalogue(self.rng, cfg.n_items, cfg.n_categories, cfg.embedding_dim)
            latent, bias = self._synthetic_users()
        self.n_users = cfg.n_users
        self._users = self._make_users(latent, bias)
        cat = self.catalogue
        self._log_price_rel = np.log(cat.price / np.median(cat.price))
        self._premium = np.zeros(cat.n_items, dtype=bool)
        for c in range(cat.n_categories):
            members = cat.category == c
            if members.any():
                self._premium[members] = cat.price[members] >= np.quantile(
                    cat.price[members], cfg.premium_quantile
                )
        self._examine = cfg.position_decay ** np.arange(cfg.slate_size)
        self._skip_top = cfg.skip_base + cfg.skip_irrelevance
        self._features = cat.features()
        permutation = self.rng.permutation(cat.n_items)
        self._permutation = np.concatenate([permutation, permutation])
        self._permuted_embedding = cat.embedding[self._permutation]
        # hot-path tables: one gather per step; Python lists for per-clicked-item scalars
        self._scaled_embedding = cfg.relevance_scale * cat.embedding
        self._item_table = np.stack(
            [
                cat.item_bias + cfg.relevance_offset,
                cat.clickbait,
                self._log_price_rel,
                cfg.click_bias - cfg.long_form_effort * cat.long_form.astype(float),
            ],
            axis=1,
        )
        # per-user constants of the hot path: click coefficients over table columns 1..3, Python floats
        users = self._users
        self._user_click_coef = np.stack(
            [
                cfg.clickbait_gain * users.susceptibility,
                -cfg.price_aversion * users.price_sensitivity,
                np.ones(cfg.n_users),
            ],
            axis=1,
        )
        self._user_bias: list[float] = users.bias.tolist()
        self._user_patience: list[float] = users.patience.tolist()
        self._clickbait = cat.clickbait.tolist()
        self._long_mu = np.where(
            cat.long_form, math.log(cfg.long_dwell_seconds), math.log(cfg.short_dwell_seconds)
        ).tolist()
        self._dwell_quality = (1.0 - cfg.clickbait_dwell_cut * cat.clickbait).tolist()
        self._category = cat.category.tolist()
        self._price = cat.price.tolist()

    # ------------------------------------------------------------------ construction
    def _synthetic_users(self) -> tuple[np.ndarray, np.ndarray]:
        cfg, cat, rng = self.config, self.catalogue, self.rng
        # a user likes a few categories: a sparse Dirichlet mix of the category centroids
        centroids = np.zeros((cat.n_categories, cat.embedding_dim))
        for c in range(cat.n_categories):
            members = cat.embedding[cat.category == c]
            centroids[c] = members.mean(axis=0) if len(members) else rng.normal(size=cat.embedding_dim)
        mix = rng.dirichlet(np.full(cat.n_categories, 0.3), size=cfg.n_users)
        latent = mix @ centroids + 0.3 * rng.normal(size=(cfg.n_users, cat.embedding_dim)) / np.sqrt(
            cat.embedding_dim
        )
        latent /= np.linalg.norm(latent, axis=1, keepdims=True)
        return latent, rng.normal(0.0, 0.3, size=cfg.n_users)

    def _make_users(self, latent: np.ndarray, bias: np.ndarray) -> _Users:
        rng = self.rng
        n, d = latent.shape
        scale = np.linalg.norm(latent, axis=1, keepdims=True) + 1e-9
        survey = latent / scale + 0.5 * rng.normal(size=(n, d)) / np.sqrt(d)
        return _Users(
            latent=latent.copy(),
            bias=bias.astype(float),
            susceptibility=np.asarray(rng.uniform(0.5, 1.5, size=n)),
            price_sensitivity=np.asarray(rng.uniform(0.3, 1.7, size=n)),
            price_resistance=np.asarray(rng.uniform(0.5, 1.5, size=n)),
            patience=np.asarray(rng.normal(0.0, 0.5, size=n)),
            loyalty=np.asarray(rng.normal(0.0, 0.5, size=n)),
            profile=survey,
            category_share=np.full((n, self.catalogue.n_categories), 1.0 / self.catalogue.n_categories),
            n_sessions=np.zeros(n, dtype=np.int64),
            last_satisfaction=np.zeros(n),
        )

    # ------------------------------------------------------------------ observation
    @property
    def user_context_dim(self) -> int:
        return self.catalogue.embedding_dim + self.catalogue.n_categories + 2

    @property
    def item_feature_dim(self) -> int:
        return self._features.shape[1]

    def item_features(self, items: np.ndarray | None = None) -> np.ndarray:
        """`catalogue.features()` (cached), optionally for a subset of item ids."""
        return self._features if items is None else self._features[items]

    def user_context(self, user: int) -> np.ndarray:
        """Observable user features (d_user,): clicked-embedding profile, category shares, history.

        It drifts: both profiles are moving averages of what the user clicked.
        """
        self._check_user(user)
        u = self._users
        return np.concatenate(
            [
                u.profile[user],
                u.category_share[user],
                [np.log1p(u.n_sessions[user]), u.last_satisfaction[user]],
            ]
        ).astype(np.float32)

    def candidates(self, user: int) -> np.ndarray:
        """(n_candidates,) distinct item ids, shuffled: half retrieved by the observable profile, half random.

        Cheap on purpose (a window of a fixed random permutation at a random offset is distinct by
        construction): retrieval scores ~8x the retrieved count, not the whole catalogue.
        """
        self._check_user(user)
        cfg = self.config
        n_random = cfg.n_candidates // 2
        n_retrieved = cfg.n_candidates - n_random
        window = min(self.catalogue.n_items, max(cfg.n_candidates, 8 * n_retrieved + n_random))
        offset = int(self.rng.integers(self.catalogue.n_items))
        n_scored = window - n_random
        # contiguous slices of the doubled permutation: no gather, no copy of the scored embeddings
        scores = self._permuted_embedding[offset : offset + n_scored] @ self._users.profile[user]
        if n_retrieved < n_scored:
            retrieved = self._permutation[offset + np.argpartition(-scores, n_retrieved - 1)[:n_retrieved]]
        else:
            retrieved = self._permutation[offset : offset + n_scored]
        out = np.concatenate([retrieved, self._permutation[offset + n_scored : offset + window]])
        self.rng.shuffle(out)
        return out

    def true_relevance(self, user: int, items: np.ndarray) -> np.ndarray:
        """The oracle's relevance in [0, 1] (no clickbait, no position): what NDCG is scored against."""
        cfg, cat, u = self.config, self.catalogue, self._users
        logit = (
            cfg.relevance_scale * (cat.embedding[items] @ u.latent[user])
            + cat.item_bias[items]
            + u.bias[user]
            + cfg.relevance_offset
        )
        return _sigmoid(logit)

    def ideal_slate(self, user: int, candidates: np.ndarray, k: int = 10) -> np.ndarray:
        """The k candidates with the highest true relevance, best first (the NDCG oracle)."""
        candidates = np.asarray(candidates)
        rel = self.true_relevance(user, candidates)
        k = min(k, candidates.shape[0])
        top = np.argpartition(-rel, k - 1)[:k]
        return candidates[top[np.argsort(-rel[top], kind="stable")]]

    # ------------------------------------------------------------------ dynamics
    def start_session(self, user: int) -> Session:
        self._check_user(user)
        return Session(user=user)

    def step(self, session: Session, slate: np.ndarray) -> StepOutcome:
        """Serve `slate` ((slate_size,) distinct-or-not item ids, position 0 first) and observe the user.

        Written for speed (tens of microseconds): one gather of the per-item table, one draw of uniforms,
        and plain Python for the few clicked items.
        """
        cfg, u = self.config, self._users
        if session.done:
            raise ValueError("step() on a session that is done; call end_session()")
        items = np.asarray(slate)
        k = cfg.slate_size
        if items.shape != (k,) or items.dtype.kind not in "iu":
            raise ValueError(
                f"slate must be ({k},) integer item ids, got shape {items.shape} dtype {items.dtype}"
            )
        item_list = items.tolist()
        if min(item_list) < 0 or max(item_list) >= self.catalogue.n_items:
            raise ValueError(f"slate item ids must lie in [0, {self.catalogue.n_items})")
        user, t = session.user, session.step

        table = self._item_table[items]
        rel = 1.0 / (
            1.0
            + np.exp(-(self._scaled_embedding[items] @ u.latent[user] + table[:, 0] + self._user_bias[user]))
        )
        click_logit = self._click_logit(user, table, rel, t)
        draws = self.rng.random(3 * k + 1)
        examined = draws[:k] < self._examine
        clicks = examined & (draws[k : 2 * k] * (1.0 + np.exp(-click_logit)) < 1.0)
        skips = examined & ~clicks & (draws[2 * k : 3 * k] < self._skip_top - cfg.skip_irrelevance * rel)
        dwell = np.zeros(k)
        anchors = examined & self._premium[items]  # examined premium items: candidate price anchors
        satisfaction = self._account(session, item_list, rel, anchors, clicks, dwell, skips)

        # continuation: satisfied users stay, tired or annoyed ones leave
        session._satisfaction = 0.7 * session._satisfaction + satisfaction
        logit = (
            cfg.continue_bias
            + self._user_patience[user]
            + cfg.continue_satisfaction * math.tanh(session._satisfaction)
            - cfg.continue_fatigue * t
        )
        done = draws[3 * k] * (1.0 + math.exp(-logit)) >= 1.0 or t + 1 >= cfg.max_steps
        outcome = StepOutcome(
            step=t,
            items=items.copy(),
            clicks=clicks,
            dwell_seconds=dwell,
            skips=skips,
            true_relevance=rel,
            done=done,
        )
        session.history.append(outcome)
        session.step = t + 1
        session.done = done
        return outcome

    def _click_logit(self, user: int, table: np.ndarray, rel: np.ndarray, t: int) -> np.ndarray:
        cfg = self.config
        click_logit = table[:, 1:4] @ self._user_click_coef[user] + cfg.click_relevance_slope * rel
        click_logit -= 0.5 * cfg.click_relevance_slope + cfg.click_fatigue * t
        return click_logit

    def click_probability(self, user: int, items: np.ndarray, position: int = 0, step: int = 0) -> np.ndarray:
        """The oracle P(click) of each item if shown at `position` in step `step` (what `step` samples)."""
        self._check_user(user)
        items = np.asarray(items)
        rel = self.true_relevance(user, items)
        p_examine = self.config.position_decay**position
        return p_examine / (1.0 + np.exp(-self._click_logit(user, self._item_table[items], rel, step)))

    def _account(
        self,
        session: Session,
        items: list[int],
        rel: np.ndarray,
        anchors: np.ndarray,
        clicks: np.ndarray,
        dwell: np.ndarray,
        skips: np.ndarray,
    ) -> float:
        """Dwell (filled in place), drift, purchase hazards, delight; returns the step's satisfaction."""
        cfg, cat, u = self.config, self.catalogue, self._users
        t, user = session.step, session.user
        hazard = 0.0
        delight = 0.0
        satisfaction = -0.05 * int(np.count_nonzero(skips))
        clicked = clicks.nonzero()[0].tolist()
        if clicked:
            noise = self.rng.standard_normal(len(clicked)).tolist()
            rel_list = rel.tolist()
            targets = []
            for z, j in zip(noise, clicked, strict=True):
                item = items[j]
                cb, long_mu, dwell_quality = (
                    self._clickbait[item],
                    self._long_mu[item],
                    self._dwell_quality[item],
                )
                r = rel_list[j]
                seconds = math.exp(long_mu + cfg.dwell_sigma * z) * (0.3 + 0.7 * r) * dwell_quality
                dwell[j] = seconds
                targets.append(item)
                if cb >= cfg.bait_threshold:
                    session._bait_clicks += 1
                depth = min(seconds / cfg.delight_reference_seconds, 3.0)
                value = r * (1.0 - cb)
                satisfaction += value * min(depth, 1.0) - cfg.clickbait_regret * cb
                if seconds < cfg.engaged_dwell_seconds or cb >= cfg.bait_threshold:
                    continue
                # a satisfied click: delight for tomorrow, purchase intent today
                delight += cfg.delight_per_click * value * depth
                c = self._category[item]
                h = cfg.engagement_hazard * r
                hazard += h
                self._link(session, h, item)
                if session._engaged_categories and c not in session._engaged_categories:
                    h = cfg.pivot_hazard * r  # category pivot: this step caused it
                    hazard += h
                    self._link(session, h, item)
                session._engaged_categories.add(c)
                anchor = session._anchors.get(c)
                if (
                    anchor is not None
                    and 0 <= anchor[0] < t
                    and self._price[item] <= cfg.anchor_discount * anchor[1]
                ):
                    h = cfg.anchor_hazard * r  # price anchor: the earlier step caused it
                    session._purchase_hazard[anchor[0]] += h
                    self._link(session, h, item)
                    session._anchors[c] = (-1, math.inf)  # an anchor works once per category and session
            # latent drift toward the clicked items (exposure shapes taste); the observable profile follows
            target = (
                cat.embedding[targets[0]]
                if len(targets) == 1
                else cat.embedding[targets].sum(axis=0) / len(targets)
            )
            latent = u.latent[user]
            stretch = math.sqrt(float(latent @ latent) / (float(target @ target) + 1e-12))
            latent *= 1.0 - cfg.drift_rate
            latent += (cfg.drift_rate * stretch) * target
            profile = u.profile[user]
            profile *= 1.0 - cfg.profile_rate
            profile += cfg.profile_rate * target
            share = u.category_share[user]
            share *= 1.0 - cfg.profile_rate
            for item in targets:
                share[self._category[item]] += cfg.profile_rate / len(targets)
        # remember examined premium items as anchors for later cheaper items of their category
        for j in anchors.nonzero()[0].tolist():
            item = items[j]
            c, price = self._category[item], self._price[item]
            anchor = session._anchors.get(c)
            if anchor is None or (anchor[0] >= 0 and anchor[1] < price):
                session._anchors[c] = (t, price)
        session._purchase_hazard.append(hazard)
        session._return_delight.append(delight)
        return satisfaction

    @staticmethod
    def _link(session: Session, hazard: float, item: int) -> None:
        if hazard > session._best_link[0]:
            session._best_link = (hazard, item)

    def end_session(self, session: Session) -> SessionOutcome:
        """Decide the delayed outcomes (purchase, next-day return) and their ground-truth causes."""
        cfg, cat, u, rng = self.config, self.catalogue, self._users, self.rng
        user, n = session.user, session.step
        hazard = np.asarray(session._purchase_hazard, dtype=float)
        delight = np.asarray(session._return_delight, dtype=float)
        h_total = float(hazard.sum())
        d_total = float(delight.sum())
        p_buy = 1.0 - np.exp(
            -h_total * u.price_resistance[user] * np.exp(-cfg.distrust * session._bait_clicks)
        )
        p_return = (1.0 - np.exp(-d_total)) * float(
            _sigmoid(
                np.asarray(
                    cfg.return_sharpness * (d_total - cfg.return_threshold)
                    - cfg.return_regret * session._bait_clicks
                    + u.loyalty[user]
                )
            )
        )
        draws = rng.random(2)
        purchased = bool(h_total > 0 and draws[0] < p_buy)
        returned = bool(d_total > 0 and draws[1] < p_return)
        item = session._best_link[1] if purchased else -1
        revenue = float(cat.price[item]) if purchased else 0.0
        margin = float(cat.margin[item]) if purchased else 0.0
        purchase_value = cfg.margin_weight * margin + cfg.revenue_weight * revenue
        return_value = cfg.retention_value if returned else 0.0
        business = purchase_value + return_value
        weight = np.zeros(n)
        if purchased and purchase_value > 0:
            weight += purchase_value * hazard / h_total
        if returned and return_value > 0:
            weight += return_value * delight / d_total
        if business > 0:
            weight /= weight.sum()
        dwell_total = float(sum(float(o.dwell_seconds.sum()) for o in session.history))
        clicks_total = sum(int(np.count_nonzero(o.clicks)) for o in session.history)
        # the observable profile learns how the session went
        u.n_sessions[user] += 1
        u.last_satisfaction[user] = session._satisfaction
        session.done = True
        return SessionOutcome(
            n_steps=n,
            purchased=purchased,
            purchased_item=int(item),
            revenue=revenue,
            margin=margin,
            returned_next_day=returned,
            business_reward=float(business),
            cause_steps=np.flatnonzero(weight > 0),
            step_causal_weight=weight,
            n_clicks=clicks_total,
            total_dwell_seconds=dwell_total,
        )

    def _check_user(self, user: int) -> None:
        if not 0 <= user < self.n_users:
            raise ValueError(f"user must lie in [0, {self.n_users}), got {user}")
