"""Validate the grounded simulator against held-out MovieLens-100k logs.

    python -m rewardloop_sim.recomind.validation [--seed 0] [--sessions 3000] [--json PATH]

1. Click-model AUC on held-out interactions. Each user's last 20 % of ratings (by time) are held out; the
   preference model is fitted on the rest. Positives: held-out ratings >= 4; negatives: one movie per
   positive that the user never rated (seeded). Scored by the env's relevance (the fitted preference
   model), by the env's full click model at position 0 (relevance + the invented clickbait, price and
   long-form terms), and, for scale, by training-set popularity. A second AUC ranks held-out liked (>= 4)
   against held-out disliked (<= 3) ratings: can the model tell what a user will like among what they watch.
2. KS distances between simulated and real sessions. Real: a user's ratings split where two are more
   than 30 minutes apart (the session gap). Simulated: sessions of the grounded env (train-split
   preferences) under a softmax logging policy over the observable profile; only sessions with at least
   one click count, like a real session has at least one rating. Compared: session length (ratings per
   real session vs clicks per simulated one) and engagement (share of liked ratings vs share of
   satisfied clicks: dwell >= `engaged_dwell_seconds` and not clickbait).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import MovieLens100k, default_cache_dir, movielens_100k
from .env import EnvConfig, RecoMindEnv
from .grounding import LIKED_RATING, GroundedPreferences, grounded_preferences

HOLDOUT_SHARE = 0.2


@dataclass(frozen=True)
class Distribution:
    n: int
    mean: float
    median: float
    p90: float


@dataclass(frozen=True)
class CalibrationResult:
    """Session-shape parameters fitted on half the users (even ids), KS measured on the other half."""

    params: dict[str, Any]
    fit_objective: float  # KS(length) + KS(engagement) on the fitting users
    heldout_ks_length_default: float
    heldout_ks_engagement_default: float
    heldout_ks_length_calibrated: float
    heldout_ks_engagement_calibrated: float


@dataclass(frozen=True)
class ValidationReport:
    seed: int
    n_test_positives: int
    auc_relevance: float  # held-out liked vs never-rated, by the env's preference model
    auc_click_model: float  # same pairs, by the env's full P(click) at position 0
    auc_popularity: float  # same pairs, by the number of training ratings (a baseline)
    auc_like_vs_dislike: float  # held-out ratings >= 4 vs <= 3, by the env's preference model
    ks_session_length: float
    ks_session_length_pvalue: float
    ks_engagement: float
    ks_engagement_pvalue: float
    real_session_length: Distribution
    sim_session_length: Distribution
    real_engagement: Distribution
    sim_engagement: Distribution
    n_sim_sessions_without_click: int
    calibration: CalibrationResult | None = None

    def table(self) -> str:
        rows = [
            ("click-model AUC, preference model (held-out liked vs unrated)", f"{self.auc_relevance:.4f}"),
            ("click-model AUC, full P(click) at position 0", f"{self.auc_click_model:.4f}"),
            ("  baseline: popularity AUC", f"{self.auc_popularity:.4f}"),
            ("AUC held-out liked (>=4) vs disliked (<=3)", f"{self.auc_like_vs_dislike:.4f}"),
            ("held-out positives", f"{self.n_test_positives}"),
            (
                "KS session length (real ratings vs sim clicks)",
                _ks(self.ks_session_length, self.ks_session_length_pvalue),
            ),
            (
                "KS engagement (liked share vs satisfied-click share)",
                _ks(self.ks_engagement, self.ks_engagement_pvalue),
            ),
        ]
        lines = [f"RecoMind validation against MovieLens-100k (seed {self.seed})", ""]
        width = max(len(k) for k, _ in rows)
        lines += [f"  {k:<{width}}  {v}" for k, v in rows]
        lines += ["", f"  {'distribution':<28} {'n':>7} {'mean':>8} {'median':>8} {'p90':>8}"]
        for name, d in (
            ("real session length", self.real_session_length),
            ("sim session length", self.sim_session_length),
            ("real engagement", self.real_engagement),
            ("sim engagement", self.sim_engagement),
        ):
            lines.append(f"  {name:<28} {d.n:>7} {d.mean:>8.3f} {d.median:>8.3f} {d.p90:>8.3f}")
        lines.append(f"  simulated sessions without a click (left out): {self.n_sim_sessions_without_click}")
        c = self.calibration
        if c is not None:
            chosen = ", ".join(f"{k}={v:g}" for k, v in c.params.items())
            lines += [
                "",
                "  session calibration: grid search on even user ids, KS on odd user ids (held out)",
                f"  chosen: {chosen}",
                f"  {'held-out KS':<28} {'default':>9} {'calibrated':>11}",
                f"  {'session length':<28} {c.heldout_ks_length_default:>9.4f}"
                f" {c.heldout_ks_length_calibrated:>11.4f}",
                f"  {'engagement':<28} {c.heldout_ks_engagement_default:>9.4f}"
                f" {c.heldout_ks_engagement_calibrated:>11.4f}",
            ]
        return "\n".join(lines)


def _ks(d: float, p: float) -> str:
    return f"D = {d:.4f}  (p = {p:.2g})"


# ------------------------------------------------------------------------------------------ statistics
def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties: P(score(pos) > score(neg)) + 0.5 P(tie)."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if positive.size == 0 or negative.size == 0:
        raise ValueError("auc needs at least one positive and one negative score")
    scores = np.concatenate([positive, negative])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # average rank of each distinct value: ranks start at 1
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    n_pos, n_neg = positive.size, negative.size
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov D = sup |F_a - F_b| and its asymptotic p-value."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if a.size == 0 or b.size == 0:
        raise ValueError("ks_two_sample needs two non-empty samples")
    grid = np.concatenate([a, b])
    d = float(
        np.max(
            np.abs(np.searchsorted(a, grid, "right") / a.size - np.searchsorted(b, grid, "right") / b.size)
        )
    )
    n_eff = a.size * b.size / (a.size + b.size)
    lam = (math.sqrt(n_eff) + 0.12 + 0.11 / math.sqrt(n_eff)) * d
    if lam < 1e-3:
        return d, 1.0
    p = 2.0 * sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return d, float(min(1.0, max(0.0, p)))


def _distribution(x: np.ndarray) -> Distribution:
    x = np.asarray(x, float)
    return Distribution(
        n=int(x.size), mean=float(x.mean()), median=float(np.median(x)), p90=float(np.quantile(x, 0.9))
    )


# ------------------------------------------------------------------------------------------ real logs
def temporal_split(ml: MovieLens100k, holdout: float = HOLDOUT_SHARE) -> np.ndarray:
    """Boolean mask over ratings: True for each user's last `holdout` share (by timestamp, then index)."""
    order = np.lexsort((np.arange(ml.user_id.size), ml.timestamp, ml.user_id))
    users = ml.user_id[order]
    counts = np.bincount(ml.user_id, minlength=ml.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(order.size) - starts[users]
    n_test = np.floor(counts * holdout).astype(np.int64)
    test = np.zeros(ml.user_id.size, dtype=bool)
    test[order] = rank >= counts[users] - n_test[users]
    return test


def real_sessions(ml: MovieLens100k, gap_minutes: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """(ratings per session, liked share per session) with sessions split by a gap > `gap_minutes`."""
    order = np.lexsort((ml.timestamp, ml.user_id))
    users, times, liked = ml.user_id[order], ml.timestamp[order], ml.rating[order] >= LIKED_RATING
    new = np.ones(order.size, dtype=bool)
    new[1:] = (users[1:] != users[:-1]) | (times[1:] - times[:-1] > gap_minutes * 60)
    session = np.cumsum(new) - 1
    lengths = np.bincount(session)
    return lengths, np.bincount(session, weights=liked) / lengths


# ------------------------------------------------------------------------------------------ sessions
def simulate_sessions(
    env: RecoMindEnv, n_sessions: int, users: np.ndarray, seed: int, temperature: float = 0.5
) -> tuple[np.ndarray, np.ndarray, int]:
    """(clicks per session, satisfied-click share per session, sessions without a click) for sessions of
    users drawn from `users`, served by a Plackett-Luce softmax over the observable profile."""
    cfg, cat = env.config, env.catalogue
    rng = np.random.default_rng(seed)
    d = cat.embedding_dim
    embedding = env.item_features()[:, :d]
    lengths, engaged, empty = [], [], 0
    for _ in range(n_sessions):
        user = int(users[rng.integers(users.size)])
        session = env.start_session(user)
        clicks = satisfied = 0
        while not session.done:
            cands = env.candidates(user)
            logits = embedding[cands] @ env.user_context(user)[:d] / temperature
            slate = cands[np.argsort(-(logits + rng.gumbel(size=cands.size)))[: cfg.slate_size]]
            o = env.step(session, slate)
            clicks += int(o.clicks.sum())
            bait = cat.clickbait[o.items] >= cfg.bait_threshold
            satisfied += int((o.clicks & (o.dwell_seconds >= cfg.engaged_dwell_seconds) & ~bait).sum())
        env.end_session(session)
        if clicks == 0:
            empty += 1
            continue
        lengths.append(clicks)
        engaged.append(satisfied / clicks)
    return np.array(lengths, dtype=float), np.array(engaged), empty


# the session-shape parameters `calibrate_sessions` searches (the rest of EnvConfig stays as given)
SESSION_GRID: Mapping[str, Sequence[float]] = {
    "continue_bias": (0.3, 1.5, 2.5, 3.5),
    "continue_fatigue": (0.03, 0.08, 0.15),
    "engaged_dwell_seconds": (5.0, 10.0, 20.0, 30.0),
}


def calibrate_sessions(
    prefs: GroundedPreferences,
    ml: MovieLens100k,
    users: np.ndarray,
    *,
    seed: int = 0,
    n_sessions: int = 600,
    base: EnvConfig | None = None,
    grid: Mapping[str, Sequence[float]] | None = None,
) -> tuple[dict[str, Any], float]:
    """Grid search (default SESSION_GRID) minimising KS(length) + KS(engagement) vs `users`' real sessions.

    Returns (the chosen parameters, the objective there). Only the given users' logs are looked at.
    """
    base = base or EnvConfig(n_users=ml.n_users)
    in_group = np.isin(ml.user_id, users)
    real_length, real_engaged = real_sessions(_subset(ml, in_group), base.session_gap_minutes)
    best: tuple[float, dict[str, Any]] = (math.inf, {})
    grid = grid or SESSION_GRID
    names = list(grid)
    for values in itertools.product(*(grid[n] for n in names)):
        params: dict[str, Any] = dict(zip(names, values, strict=True))
        env = RecoMindEnv(seed, replace(base, **params), grounded=True, preferences=prefs)
        length, engaged, _ = simulate_sessions(env, n_sessions, users, seed + 2)
        if length.size == 0:
            continue
        objective = ks_two_sample(real_length, length)[0] + ks_two_sample(real_engaged, engaged)[0]
        if objective < best[0]:
            best = (objective, params)
    return best[1], best[0]


def movielens_session_config(seed: int = 0, base: EnvConfig | None = None) -> EnvConfig:
    """`base` (default EnvConfig()) with the session-shape parameters calibrated on MovieLens-100k
    (all users, preferences fitted on all ratings); cached as JSON next to the grounding cache."""
    base = base or EnvConfig()
    grid_key = hashlib.sha256(json.dumps(SESSION_GRID, sort_keys=True).encode()).hexdigest()[:10]
    path = default_cache_dir() / "grounding" / f"sessions-seed{seed}-{grid_key}.json"
    if path.exists():
        params = json.loads(path.read_text())
    else:
        ml = movielens_100k()
        prefs = grounded_preferences(seed, ml=ml)
        params, _ = calibrate_sessions(
            prefs, ml, np.arange(ml.n_users), seed=seed, base=replace(base, n_users=ml.n_users)
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(params, indent=2) + "\n")
    return replace(base, **params)


def _subset(ml: MovieLens100k, mask: np.ndarray) -> MovieLens100k:
    return replace(
        ml,
        user_id=ml.user_id[mask],
        item_id=ml.item_id[mask],
        rating=ml.rating[mask],
        timestamp=ml.timestamp[mask],
    )


# ------------------------------------------------------------------------------------------ validation
def validate(
    seed: int = 0, n_sessions: int = 3000, config: EnvConfig | None = None, calibrate: bool = True
) -> ValidationReport:
    ml = movielens_100k()
    test = temporal_split(ml)
    prefs = grounded_preferences(seed, train=~test, ml=ml)
    cfg = config or EnvConfig(n_users=ml.n_users)
    env = RecoMindEnv(seed, cfg, grounded=True, preferences=prefs)
    rng = np.random.default_rng(seed + 1)

    # --- click-model AUC on the held-out ratings
    rated = np.zeros((ml.n_users, ml.n_items), dtype=bool)
    rated[ml.user_id, ml.item_id] = True
    pos = np.flatnonzero(test & (ml.rating >= LIKED_RATING))
    pos_users, pos_items = ml.user_id[pos], ml.item_id[pos]
    neg_items = rng.integers(0, ml.n_items, size=pos.size)
    for _ in range(100):  # resample the negatives that the user did rate
        clash = rated[pos_users, neg_items]
        if not clash.any():
            break
        neg_items[clash] = rng.integers(0, ml.n_items, size=int(clash.sum()))
    popularity = np.bincount(ml.item_id[~test], minlength=ml.n_items).astype(float)
    auc_rel = auc(prefs.logit(pos_users, pos_items), prefs.logit(pos_users, neg_items))
    click_pos = np.array(
        [env.click_probability(int(u), np.array([i]))[0] for u, i in zip(pos_users, pos_items, strict=True)]
    )
    click_neg = np.array(
        [env.click_probability(int(u), np.array([i]))[0] for u, i in zip(pos_users, neg_items, strict=True)]
    )
    auc_click = auc(click_pos, click_neg)
    auc_pop = auc(popularity[pos_items], popularity[neg_items])
    disliked = np.flatnonzero(test & (ml.rating < LIKED_RATING))
    auc_like = auc(prefs.logit(pos_users, pos_items), prefs.logit(ml.user_id[disliked], ml.item_id[disliked]))

    # --- sessions: the given config on all users; then calibrated on even users, evaluated on odd ones
    all_users = np.arange(ml.n_users)
    sim_length, sim_engaged, empty = simulate_sessions(env, n_sessions, all_users, seed + 2)
    real_length, real_engaged = real_sessions(ml, cfg.session_gap_minutes)
    ks_len, p_len = ks_two_sample(real_length, sim_length)
    ks_eng, p_eng = ks_two_sample(real_engaged, sim_engaged)
    calibration: CalibrationResult | None = None
    if calibrate:
        fit_users, eval_users = all_users[0::2], all_users[1::2]
        params, objective = calibrate_sessions(prefs, ml, fit_users, seed=seed, base=cfg)
        eval_real_length, eval_real_engaged = real_sessions(
            _subset(ml, np.isin(ml.user_id, eval_users)), cfg.session_gap_minutes
        )
        results = {}
        for name, c in (("default", cfg), ("calibrated", replace(cfg, **params))):
            e = RecoMindEnv(seed, c, grounded=True, preferences=prefs)
            length, engaged, _ = simulate_sessions(e, n_sessions, eval_users, seed + 3)
            results[name] = (
                ks_two_sample(eval_real_length, length)[0],
                ks_two_sample(eval_real_engaged, engaged)[0],
            )
        calibration = CalibrationResult(
            params=params,
            fit_objective=objective,
            heldout_ks_length_default=results["default"][0],
            heldout_ks_engagement_default=results["default"][1],
            heldout_ks_length_calibrated=results["calibrated"][0],
            heldout_ks_engagement_calibrated=results["calibrated"][1],
        )
    return ValidationReport(
        seed=seed,
        n_test_positives=int(pos.size),
        auc_relevance=auc_rel,
        auc_click_model=auc_click,
        auc_popularity=auc_pop,
        auc_like_vs_dislike=auc_like,
        ks_session_length=ks_len,
        ks_session_length_pvalue=p_len,
        ks_engagement=ks_eng,
        ks_engagement_pvalue=p_eng,
        real_session_length=_distribution(real_length),
        sim_session_length=_distribution(sim_length),
        real_engagement=_distribution(real_engaged),
        sim_engagement=_distribution(sim_engaged),
        n_sim_sessions_without_click=empty,
        calibration=calibration,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Validate the grounded RecoMind simulator on MovieLens-100k."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sessions", type=int, default=3000, help="simulated sessions to compare")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--no-calibration", action="store_true", help="skip the session-shape calibration")
    args = parser.parse_args(argv)
    if args.sessions < 1:
        parser.error("--sessions must be >= 1")
    report = validate(seed=args.seed, n_sessions=args.sessions, calibrate=not args.no_calibration)
    print(report.table())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")


if __name__ == "__main__":
    main()
