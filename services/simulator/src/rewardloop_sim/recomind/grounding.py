"""Ground the simulator's users and items in MovieLens-100k: a seeded logistic matrix factorisation.

What is fitted from the real log: every user's and item's latent factors and biases (the preference
model: P(the user rates the movie >= 4) against everything else, rated-low and unseen), the item categories
(each movie's most specific genre) and the relevance calibration. What stays invented (MovieLens has no
such fields): clickbait, price, margin, long_form and the behaviour parameters of `EnvConfig`.

The fit is full-batch Adam on the dense 943 x 1682 matrix (1.6 M cells: seconds in numpy), deterministic
for a seed; the result is cached as .npz under the dataset cache, keyed by seed, dimension and split.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .catalogue import Catalogue, price_and_margin
from .datasets import MovieLens100k, default_cache_dir, movielens_100k

LIKED_RATING = 4.0
FIT_VERSION = 1  # bump when the fit changes: old cache files are then ignored


@dataclass(frozen=True)
class GroundedPreferences:
    user_factors: np.ndarray  # (n_users, d)
    item_factors: np.ndarray  # (n_items, d)
    user_bias: np.ndarray  # (n_users,)
    item_bias: np.ndarray  # (n_items,)
    global_bias: float
    calibration: float  # added to the logit so that mean P(like) over *rated* pairs = the liked share
    item_genres: np.ndarray  # (n_items, n_genres) bool
    genre_names: tuple[str, ...]
    category: np.ndarray  # (n_items,) int: index into genre_names of the most specific genre
    final_loss: float

    def logit(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Calibrated relevance logit for (user, item) pairs (arrays of equal shape)."""
        return (
            np.einsum("nd,nd->n", self.user_factors[users], self.item_factors[items])
            + self.user_bias[users]
            + self.item_bias[items]
            + self.global_bias
            + self.calibration
        )


def main_genre(item_genres: np.ndarray) -> np.ndarray:
    """Each item's rarest listed genre (the most specific); items with no genre get the rarest overall."""
    counts = item_genres.sum(axis=0).astype(float)
    cost = np.where(item_genres, counts[None, :], np.inf)
    category = np.argmin(cost, axis=1)
    none = ~item_genres.any(axis=1)
    category[none] = int(np.argmin(counts))
    return category


def fit_preferences(
    ml: MovieLens100k,
    train: np.ndarray | None = None,
    *,
    seed: int = 0,
    dim: int = 16,
    iterations: int = 300,
    learning_rate: float = 0.05,
    l2: float = 0.02,
    positive_weight: float = 10.0,
) -> GroundedPreferences:
    """Weighted logistic MF: target 1 where rating >= 4 in `train` (a boolean mask or index array over
    the ratings; all when None), 0 elsewhere; positives weigh `positive_weight`, the rest 1."""
    idx = np.arange(ml.rating.shape[0]) if train is None else np.asarray(train)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    if idx.size == 0:
        raise ValueError("fit_preferences needs at least one training rating")
    users, items, ratings = ml.user_id[idx], ml.item_id[idx], ml.rating[idx]
    n_u, n_i = ml.n_users, ml.n_items
    target = np.zeros((n_u, n_i))
    liked = ratings >= LIKED_RATING
    target[users[liked], items[liked]] = 1.0
    weight = np.ones((n_u, n_i))
    weight[users[liked], items[liked]] = positive_weight
    weight /= weight.sum()

    rng = np.random.default_rng(seed)
    params = {
        "U": 0.1 * rng.standard_normal((n_u, dim)),
        "V": 0.1 * rng.standard_normal((n_i, dim)),
        "bu": np.zeros(n_u),
        "bi": np.zeros(n_i),
        "b0": np.zeros(1),
    }
    m = {k: np.zeros_like(v) for k, v in params.items()}
    s = {k: np.zeros_like(v) for k, v in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    scale_l2 = l2 / (n_u * n_i) * 1e3  # l2 per parameter, comparable across split sizes
    loss = float("nan")
    for step in range(1, iterations + 1):
        U, V, bu, bi, b0 = params["U"], params["V"], params["bu"], params["bi"], params["b0"]
        logits = U @ V.T + bu[:, None] + bi[None, :] + b0
        prob = 1.0 / (1.0 + np.exp(-logits))
        if step == iterations or step == 1:
            log_p = -np.logaddexp(0.0, -logits)
            log_q = -np.logaddexp(0.0, logits)
            loss = float(-(weight * (target * log_p + (1 - target) * log_q)).sum())
        g = weight * (prob - target)
        grads = {
            "U": g @ V + scale_l2 * U,
            "V": g.T @ U + scale_l2 * V,
            "bu": g.sum(axis=1),
            "bi": g.sum(axis=0),
            "b0": np.array([g.sum()]),
        }
        for k, grad in grads.items():
            m[k] = beta1 * m[k] + (1 - beta1) * grad
            s[k] = beta2 * s[k] + (1 - beta2) * grad * grad
            m_hat = m[k] / (1 - beta1**step)
            s_hat = s[k] / (1 - beta2**step)
            params[k] = params[k] - learning_rate * m_hat / (np.sqrt(s_hat) + eps)

    prefs = GroundedPreferences(
        user_factors=params["U"],
        item_factors=params["V"],
        user_bias=params["bu"],
        item_bias=params["bi"],
        global_bias=float(params["b0"][0]),
        calibration=0.0,
        item_genres=ml.item_genres,
        genre_names=ml.genre_names,
        category=main_genre(ml.item_genres),
        final_loss=loss,
    )
    return _calibrated(prefs, users, items, float(liked.mean()))


def _calibrated(
    prefs: GroundedPreferences, users: np.ndarray, items: np.ndarray, liked_share: float
) -> GroundedPreferences:
    """Shift the logit so that the mean predicted P(like) over rated pairs equals the liked share.

    The MF models P(rated and liked) against all cells, far below P(liked | watched): the simulator
    serves a movie, so it needs the second. A bisection on one offset keeps the ranking unchanged.
    """
    base = prefs.logit(users, items)
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(np.mean(1.0 / (1.0 + np.exp(-(base + mid))))) < liked_share:
            lo = mid
        else:
            hi = mid
    from dataclasses import replace

    return replace(prefs, calibration=0.5 * (lo + hi))


def _cache_key(seed: int, dim: int, iterations: int, train: np.ndarray | None) -> str:
    split = "all" if train is None else hashlib.sha256(np.asarray(train).tobytes()).hexdigest()[:12]
    return f"mf-v{FIT_VERSION}-seed{seed}-d{dim}-it{iterations}-{split}"


def grounded_preferences(
    seed: int = 0,
    *,
    dim: int = 16,
    iterations: int = 300,
    train: np.ndarray | None = None,
    cache_dir: Path | None = None,
    ml: MovieLens100k | None = None,
) -> GroundedPreferences:
    """`fit_preferences` on MovieLens-100k, cached as .npz (keyed by seed, dim and the split)."""
    cache = (cache_dir or default_cache_dir()) / "grounding"
    path = cache / f"{_cache_key(seed, dim, iterations, train)}.npz"
    ml = ml or movielens_100k(cache_dir)
    if path.exists():
        with np.load(path) as z:
            return GroundedPreferences(
                user_factors=z["user_factors"],
                item_factors=z["item_factors"],
                user_bias=z["user_bias"],
                item_bias=z["item_bias"],
                global_bias=float(z["global_bias"]),
                calibration=float(z["calibration"]),
                item_genres=ml.item_genres,
                genre_names=ml.genre_names,
                category=main_genre(ml.item_genres),
                final_loss=float(z["final_loss"]),
            )
    prefs = fit_preferences(ml, train, seed=seed, dim=dim, iterations=iterations)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(
        tmp,
        user_factors=prefs.user_factors,
        item_factors=prefs.item_factors,
        user_bias=prefs.user_bias,
        item_bias=prefs.item_bias,
        global_bias=prefs.global_bias,
        calibration=prefs.calibration,
        final_loss=prefs.final_loss,
    )
    tmp.replace(path)
    return prefs


def grounded_catalogue(prefs: GroundedPreferences, rng: np.random.Generator) -> Catalogue:
    """Movies as items: fitted factors and biases, genre categories; invented clickbait, price, margin."""
    n_items = prefs.item_factors.shape[0]
    n_categories = len(prefs.genre_names)
    ib = prefs.item_bias
    quality = (np.argsort(np.argsort(ib)) + 0.5) / n_items  # percentile of the fitted item bias
    clickbait = np.asarray(rng.beta(0.5, 2.5, size=n_items))
    price, margin = price_and_margin(rng, prefs.category, n_categories)
    long_share = rng.uniform(0.1, 0.6, size=n_categories)
    long_form = rng.random(n_items) < long_share[prefs.category]
    return Catalogue(
        category=prefs.category.astype(np.int64),
        embedding=prefs.item_factors,
        quality=quality,
        clickbait=clickbait,
        price=price,
        margin=margin,
        long_form=long_form,
        item_bias=prefs.item_bias,
        n_categories=n_categories,
        category_names=prefs.genre_names,
    )


def grounded_world(
    rng: np.random.Generator,
    n_users: int,
    seed: int,
    cache_dir: Path | None = None,
    preferences: GroundedPreferences | None = None,
) -> tuple[Catalogue, np.ndarray, np.ndarray, float, float]:
    """(catalogue, user latent (n_users, d), user bias, relevance_scale, relevance_offset) for the env.

    Simulated user j is MovieLens user j mod 943; copies beyond the first get a small seeded jitter so
    that they are distinct people with the same tastes.
    """
    prefs = preferences or grounded_preferences(seed, cache_dir=cache_dir)
    catalogue = grounded_catalogue(prefs, rng)
    n_real = prefs.user_factors.shape[0]
    source = np.arange(n_users) % n_real
    latent = prefs.user_factors[source].copy()
    copies = np.arange(n_users) >= n_real
    if copies.any():
        spread = prefs.user_factors.std(axis=0)
        latent[copies] += 0.2 * spread * rng.standard_normal((int(copies.sum()), latent.shape[1]))
    bias = prefs.user_bias[source].copy()
    return catalogue, latent, bias, 1.0, prefs.global_bias + prefs.calibration
