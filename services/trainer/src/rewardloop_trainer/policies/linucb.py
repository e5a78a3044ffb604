"""LinUCB (Li et al. 2010), one shared linear model, with Sherman–Morrison updates of ``A⁻¹``.

``A = λI + Σ x xᵀ``, ``b = Σ r x``, ``θ = A⁻¹ b``, ``UCB(x) = xᵀθ + α √(xᵀ A⁻¹ x)``.
``(A + x xᵀ)⁻¹ = A⁻¹ - A⁻¹x xᵀA⁻¹ / (1 + xᵀA⁻¹x)`` keeps each update O(d²) instead of O(d³).
"""

from __future__ import annotations

import numpy as np


class LinUCB:
    def __init__(self, dim: int, alpha: float = 1.0, ridge: float = 1.0) -> None:
        if dim < 1 or ridge <= 0 or alpha < 0:
            raise ValueError("LinUCB needs dim >= 1, ridge > 0, alpha >= 0")
        self.alpha = alpha
        self.A_inv = np.eye(dim) / ridge
        self.b = np.zeros(dim)
        self.n = 0

    @property
    def theta(self) -> np.ndarray:
        return self.A_inv @ self.b

    def scores(self, x: np.ndarray) -> np.ndarray:
        """(N,) upper confidence bounds for the rows of ``x`` (N, d)."""
        mean = x @ self.theta
        width = np.sqrt(np.einsum("nd,de,ne->n", x, self.A_inv, x))
        return mean + self.alpha * width

    def select(self, x: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` rows with the highest UCB, best first."""
        s = self.scores(x)
        top = np.argpartition(-s, k - 1)[:k]
        return top[np.argsort(-s[top], kind="stable")]

    def update(self, x: np.ndarray, r: float) -> None:
        ax = self.A_inv @ x
        self.A_inv -= np.outer(ax, ax) / (1.0 + x @ ax)
        self.b += r * x
        self.n += 1
