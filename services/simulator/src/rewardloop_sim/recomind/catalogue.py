"""The item catalogue: what each item is (visible to a policy) and what it does to users (hidden truth)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Catalogue:
    """Items as parallel numpy arrays, indexed by item id 0..n_items-1.

    Visible to a policy (`features()`): the embedding, the category, the log price and long_form.
    Hidden truth that only the simulator uses: `quality`, `clickbait`, `margin` (the seller's margin is not
    shown to the ranking policy: the business reward has to teach it), `item_bias`.
    """

    category: np.ndarray  # (n,) int, 0..n_categories-1
    embedding: np.ndarray  # (n, d) float: the latent item factors the users' preferences are scored against
    quality: np.ndarray  # (n,) float in [0, 1]
    clickbait: np.ndarray  # (n,) float in [0, 1]: raises clicks, lowers dwell, purchases and returns
    price: np.ndarray  # (n,) float > 0, currency units
    margin: np.ndarray  # (n,) float >= 0: the seller's profit if the item is bought (currency units)
    long_form: np.ndarray  # (n,) bool: long content (minutes of dwell) vs short (seconds)
    item_bias: np.ndarray  # (n,) float: additive relevance logit (quality or, when grounded, popularity)
    n_categories: int
    category_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = self.category.shape[0]
        for name in ("quality", "clickbait", "price", "margin", "long_form", "item_bias"):
            arr = getattr(self, name)
            if arr.shape != (n,):
                raise ValueError(f"Catalogue.{name} has shape {arr.shape}, expected ({n},)")
        if self.embedding.ndim != 2 or self.embedding.shape[0] != n:
            raise ValueError(f"Catalogue.embedding has shape {self.embedding.shape}, expected ({n}, d)")
        if n == 0:
            raise ValueError("Catalogue needs at least one item")
        if self.category.min() < 0 or self.category.max() >= self.n_categories:
            raise ValueError(f"Catalogue.category must lie in [0, {self.n_categories})")
        if np.any(self.price <= 0):
            raise ValueError("Catalogue.price must be > 0")
        if np.any((self.clickbait < 0) | (self.clickbait > 1)):
            raise ValueError("Catalogue.clickbait must lie in [0, 1]")

    @property
    def n_items(self) -> int:
        return int(self.category.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def feature_dim(self) -> int:
        return self.embedding_dim + self.n_categories + 2

    def features(self) -> np.ndarray:
        """What a policy may observe per item, (n_items, d + n_categories + 2), float32.

        Columns: the embedding, the one-hot category, log(price) standardised, long_form (0/1).
        Clickbait, quality and margin are deliberately absent: a policy learns them only from outcomes.
        """
        n = self.n_items
        one_hot = np.zeros((n, self.n_categories), dtype=np.float32)
        one_hot[np.arange(n), self.category] = 1.0
        log_price = np.log(self.price)
        log_price = (log_price - log_price.mean()) / (log_price.std() + 1e-9)
        return np.concatenate(
            [
                self.embedding.astype(np.float32),
                one_hot,
                log_price[:, None].astype(np.float32),
                self.long_form[:, None].astype(np.float32),
            ],
            axis=1,
        )


def price_and_margin(
    rng: np.random.Generator, category: np.ndarray, n_categories: int
) -> tuple[np.ndarray, np.ndarray]:
    """Log-normal prices around a per-category level; margins whose rate differs by category.

    Expensive categories are not the high-margin ones on purpose: revenue and margin pull apart.
    """
    category_log_price = rng.normal(3.0, 0.7, size=n_categories)
    category_margin_rate = rng.uniform(0.05, 0.45, size=n_categories)
    n = category.shape[0]
    price = np.exp(category_log_price[category] + rng.normal(0.0, 0.6, size=n))
    price = np.round(np.maximum(price, 0.99), 2)
    rate = np.clip(category_margin_rate[category] + rng.normal(0.0, 0.05, size=n), 0.02, 0.9)
    return price, np.round(price * rate, 2)


def synthetic_catalogue(
    rng: np.random.Generator, n_items: int, n_categories: int, embedding_dim: int
) -> Catalogue:
    """Items clustered by category in latent space; quality, clickbait, price, margin, long_form drawn."""
    if n_items < 1 or n_categories < 1 or embedding_dim < 1:
        raise ValueError("n_items, n_categories and embedding_dim must be >= 1")
    centroids = rng.normal(size=(n_categories, embedding_dim))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    category = rng.integers(0, n_categories, size=n_items)
    embedding = centroids[category] + 0.45 * rng.normal(size=(n_items, embedding_dim)) / np.sqrt(
        embedding_dim
    )
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    quality = rng.beta(2.0, 2.0, size=n_items)
    # most items are honest; a minority are strongly click-baity (the hidden trap for click maximisers)
    clickbait = np.asarray(rng.beta(0.5, 2.5, size=n_items))
    price, margin = price_and_margin(rng, category, n_categories)
    long_share = rng.uniform(0.1, 0.6, size=n_categories)
    long_form = rng.random(n_items) < long_share[category]
    return Catalogue(
        category=category.astype(np.int64),
        embedding=embedding,
        quality=quality,
        clickbait=clickbait,
        price=price,
        margin=margin,
        long_form=long_form,
        item_bias=1.5 * (quality - 0.5),
        n_categories=n_categories,
        category_names=tuple(f"cat-{c}" for c in range(n_categories)),
    )
