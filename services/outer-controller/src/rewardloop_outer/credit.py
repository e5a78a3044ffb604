"""Per-step credit: how a session's advantage is shared among its steps.

``credit_t = share_t * advantage`` with shares that sum to 1 over the session:

* **discounted** (the baseline, always available): ``share_t ∝ gamma^(T-1-t)`` -- the session-level
  outcome is observed at its end and discounted back to each step;
* **gated attention** (once the trainer publishes a model): attention-MIL pooling (Ilse et al. 2018)
  ``h_t = tanh(W_in x_t + b_in + W_ctx mean_chunk(x))``,
  ``a_t = w · (tanh(V h_t + b_v) ⊙ sigmoid(U h_t + b_u)) + c``, ``share = softmax(a)``.
  Inference is numpy only (no torch in this service).

Sessions longer than ``CHUNK`` (512) steps are scored in chunks of 512 with 64 steps of overlap; a
step in two chunks gets the mean of its two logits; the softmax runs over the whole session.

Model artefacts: ``<OUTER_CREDIT_MODEL_DIR>/credit-model-v<N>.npz`` (the highest ``N`` wins), arrays
``W_in (d_in, h)``, ``b_in (h)``, ``W_ctx (d_in, h)``, ``V (h, a)``, ``b_v (a)``, ``U (h, a)``, ``b_u (a)``,
``w (a)``, ``c ()``, ``features`` (names, must equal :data:`FEATURES`). A missing, unreadable or
mismatched artefact is logged and the discounted shares are used.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rewardloop_common.events import RewardEvent
from rewardloop_common.logging import get_logger

from .fastevents import Action

log = get_logger("rewardloop.outer.credit")

CHUNK = 512
OVERLAP = 64
FEATURES: tuple[str, ...] = (
    "clicked",
    "log_dwell",
    "skipped",
    "predicted_relevance",
    "reward",
    "position",
    "progress",
)
_ARTEFACT = re.compile(r"^credit-model-v(\d+)\.npz$")


def discounted_shares(n: int, gamma: float) -> list[float]:
    if n == 0:
        return []
    w = [gamma ** (n - 1 - t) for t in range(n)]
    s = sum(w)
    if s <= 0:  # gamma == 0: all weight on the last step
        return [0.0] * (n - 1) + [1.0]
    return [x / s for x in w]


def step_features(actions: Sequence[Action | RewardEvent]) -> np.ndarray:
    n = len(actions)
    x = np.empty((n, len(FEATURES)), dtype=np.float64)
    for i, a in enumerate(actions):
        x[i] = (
            1.0 if a.clicked else 0.0,
            math.log1p(a.dwell_seconds),
            1.0 if a.skipped else 0.0,
            a.predicted_relevance,
            a.reward,
            a.position / 10.0,
            i / max(1, n - 1),
        )
    return x


def chunks(n: int, size: int = CHUNK, overlap: int = OVERLAP) -> list[tuple[int, int]]:
    """``[start, end)`` ranges covering ``range(n)``: windows of ``size`` overlapping by ``overlap``."""
    if n <= size:
        return [(0, n)]
    stride = size - overlap
    out = []
    start = 0
    while True:
        end = min(n, start + size)
        out.append((start, end))
        if end == n:
            return out
        start += stride


@dataclass(frozen=True)
class GatedAttentionModel:
    version: int
    W_in: np.ndarray
    b_in: np.ndarray
    W_ctx: np.ndarray
    V: np.ndarray
    b_v: np.ndarray
    U: np.ndarray
    b_u: np.ndarray
    w: np.ndarray
    c: float

    @property
    def name(self) -> str:
        return f"gated-attention:v{self.version}"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GatedAttentionModel:
        m = _ARTEFACT.match(Path(path).name)
        if m is None:
            raise ValueError(f"not a credit model artefact name: {path}")
        with np.load(path, allow_pickle=False) as z:
            feats = tuple(str(f) for f in z["features"])
            if feats != FEATURES:
                raise ValueError(f"feature mismatch: {feats} != {FEATURES}")
            arrs = {
                k: np.asarray(z[k], dtype=np.float64)
                for k in ("W_in", "b_in", "W_ctx", "V", "b_v", "U", "b_u", "w")
            }
            c = float(z["c"])
        d, h = arrs["W_in"].shape
        a = arrs["V"].shape[1]
        shapes = {
            "W_ctx": (d, h),
            "b_in": (h,),
            "V": (h, a),
            "U": (h, a),
            "b_v": (a,),
            "b_u": (a,),
            "w": (a,),
        }
        for k, shape in shapes.items():
            if arrs[k].shape != shape:
                raise ValueError(f"{k} has shape {arrs[k].shape}, expected {shape}")
        if d != len(FEATURES):
            raise ValueError(f"W_in expects {d} features, have {len(FEATURES)}")
        if not all(np.isfinite(v).all() for v in arrs.values()) or not math.isfinite(c):
            raise ValueError("non-finite parameters")
        return cls(int(m.group(1)), c=c, **arrs)

    def logits(self, x: np.ndarray) -> np.ndarray:
        ctx = x.mean(axis=0, keepdims=True) @ self.W_ctx
        h = np.tanh(x @ self.W_in + self.b_in + ctx)
        gate = 1.0 / (1.0 + np.exp(-(h @ self.U + self.b_u)))
        return (np.tanh(h @ self.V + self.b_v) * gate) @ self.w + self.c

    def shares(self, actions: Sequence[Action | RewardEvent]) -> list[float]:
        n = len(actions)
        if n == 0:
            return []
        x = step_features(actions)
        total = np.zeros(n)
        count = np.zeros(n)
        for start, end in chunks(n):
            total[start:end] += self.logits(x[start:end])
            count[start:end] += 1
        z = total / count
        z = np.exp(z - z.max())
        return [float(v) for v in z / z.sum()]


class CreditAssigner:
    """Discounted shares, or the newest gated-attention artefact in ``model_dir`` when there is one."""

    def __init__(self, gamma: float, model_dir: str | None = None, reload_every_s: float = 30.0) -> None:
        self.gamma = gamma
        self.model_dir = model_dir
        self.reload_every_s = reload_every_s
        self.model: GatedAttentionModel | None = None
        self._last_check = -math.inf
        self._failed: set[str] = set()

    def maybe_reload(self, now_s: float) -> None:
        if not self.model_dir or now_s - self._last_check < self.reload_every_s:
            return
        self._last_check = now_s
        try:
            names = os.listdir(self.model_dir)
        except OSError:
            return
        found = sorted(((int(m.group(1)), n) for n in names if (m := _ARTEFACT.match(n))), reverse=True)
        for version, name in found:
            if self.model is not None and version <= self.model.version:
                return
            if name in self._failed:
                continue
            try:
                self.model = GatedAttentionModel.load(os.path.join(self.model_dir, name))
                log.info("credit model loaded", model=self.model.name)
                return
            except Exception as exc:  # noqa: BLE001 - any bad artefact -> keep the fallback
                self._failed.add(name)
                log.error("credit model rejected; keeping the current one", artefact=name, error=str(exc))

    @property
    def name(self) -> str:
        return self.model.name if self.model is not None else "discounted"

    def shares(self, actions: Sequence[Action | RewardEvent]) -> list[float]:
        if self.model is not None:
            try:
                return self.model.shares(actions)
            except Exception as exc:  # noqa: BLE001
                log.error("credit model failed; discounted shares used", error=str(exc))
        return discounted_shares(len(actions), self.gamma)
