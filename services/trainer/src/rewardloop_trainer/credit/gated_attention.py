"""The gated-attention credit model (torch): training side of :mod:`rewardloop_outer.credit`.

The outer controller scores sessions with numpy only; this module is the same function in torch so it
can be trained, plus a reconstruction head that is used only for training and never exported:

* ``h_t = tanh(W_in x_t + b_in + W_ctx mean_chunk(x))``  (attention-MIL, Ilse et al. 2018)
* ``a_t = w · (tanh(V h_t + b_v) ⊙ sigmoid(U h_t + b_u)) + c``  -- the sigmoid is the gate
* sessions longer than ``CHUNK`` steps are scored in chunks of 512 overlapping by 64; a step in two
  chunks gets the mean of its logits; ``share = softmax(a)`` over the whole session.

Training objectives (:func:`credit_loss`):

* ``reconstruction`` (no labels; what the service does on ``recsys.sessions``): the session's business
  reward is predicted from the share-weighted pool of step embeddings, ``R̂ = head(Σ_t share_t h_t)``;
  MSE(R̂, R). The shares learn to sit on the steps that predict the reward (multiple-instance learning).
* ``decomposition`` (no labels): return decomposition in the artefact's own form: the session's reward
  is predicted as the *sum* of per-step contributions ``R̂ = Σ_t exp(a_t)``; MSE(R̂, R). The exported
  shares ``softmax(a)_t = exp(a_t) / Σ exp(a)`` are then exactly each step's fraction of the predicted
  reward (a least-squares return decomposition, as RUDDER / RRD, constrained to be non-negative).
  Unlike the pooled reconstruction, a step only gets credit by carrying expected reward itself, which
  makes the shares selective (learning benchmark, section 2).
* ``supervised`` (when per-step targets are known, e.g. the simulator's ground truth): MSE of
  ``share_t · R`` against ``target_t · R``.
* both add ``gate_weight · Σ_t share_t · 1[no engagement at t]``: a penalty that teaches the gate to
  suppress steps where the user neither clicked nor dwelt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rewardloop_outer.credit import CHUNK, FEATURES, OVERLAP, chunks

D_IN = len(FEATURES)
_CLICKED = FEATURES.index("clicked")
_LOG_DWELL = FEATURES.index("log_dwell")
EXPORTED = ("W_in", "b_in", "W_ctx", "V", "b_v", "U", "b_u", "w", "c")


@dataclass(frozen=True)
class SessionBatch:
    """Sessions packed as overlapping chunks, plus the maps back to per-session steps.

    ``x``: (C, L, d) chunk features (zero padded), ``mask``: (C, L) valid positions,
    ``flat_index``: (C, L) index of each valid chunk position in the concatenation of all sessions'
    steps (-1 for padding), ``step_session``: (N,) session of each flat step, ``step_pos``: (N,) step
    index inside its session, ``lengths``: (S,).
    """

    x: torch.Tensor
    mask: torch.Tensor
    flat_index: torch.Tensor
    step_session: torch.Tensor
    step_pos: torch.Tensor
    lengths: torch.Tensor

    @property
    def n_sessions(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.lengths.max().item())


def pack_sessions(
    features: Sequence[np.ndarray],
    size: int = CHUNK,
    overlap: int = OVERLAP,
    dtype: torch.dtype = torch.float32,
) -> SessionBatch:
    """Pack per-session feature arrays ``(T_s, d)`` (T_s >= 1) into chunks as the numpy inference does."""
    if not features:
        raise ValueError("no sessions to pack")
    rows: list[tuple[int, int, int]] = []  # (session, start, end)
    offsets = np.zeros(len(features) + 1, dtype=np.int64)
    for s, f in enumerate(features):
        if f.ndim != 2 or f.shape[1] != D_IN or f.shape[0] < 1:
            raise ValueError(f"session {s}: features must be (T>=1, {D_IN}), got {f.shape}")
        offsets[s + 1] = offsets[s] + f.shape[0]
        rows.extend((s, a, b) for a, b in chunks(f.shape[0], size, overlap))
    width = max(b - a for _, a, b in rows)
    x = np.zeros((len(rows), width, D_IN))
    mask = np.zeros((len(rows), width), dtype=bool)
    flat = np.full((len(rows), width), -1, dtype=np.int64)
    for r, (s, a, b) in enumerate(rows):
        x[r, : b - a] = features[s][a:b]
        mask[r, : b - a] = True
        flat[r, : b - a] = offsets[s] + np.arange(a, b)
    lengths = np.diff(offsets)
    step_session = np.repeat(np.arange(len(features)), lengths)
    step_pos = np.concatenate([np.arange(n) for n in lengths])
    return SessionBatch(
        x=torch.as_tensor(x, dtype=dtype),
        mask=torch.as_tensor(mask),
        flat_index=torch.as_tensor(flat),
        step_session=torch.as_tensor(step_session),
        step_pos=torch.as_tensor(step_pos),
        lengths=torch.as_tensor(lengths),
    )


class GatedAttentionCredit(nn.Module):
    """Parameters named and shaped exactly as the exported artefact (``x @ W`` convention)."""

    def __init__(self, hidden: int = 32, attention: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def init(*shape: int, fan_in: int) -> nn.Parameter:
            return nn.Parameter((torch.rand(*shape, generator=g) * 2 - 1) / fan_in**0.5)

        self.W_in = init(D_IN, hidden, fan_in=D_IN)
        self.b_in = nn.Parameter(torch.zeros(hidden))
        self.W_ctx = init(D_IN, hidden, fan_in=D_IN)
        self.V = init(hidden, attention, fan_in=hidden)
        self.b_v = nn.Parameter(torch.zeros(attention))
        self.U = init(hidden, attention, fan_in=hidden)
        self.b_u = nn.Parameter(torch.zeros(attention))
        self.w = init(attention, fan_in=attention)
        self.c = nn.Parameter(torch.zeros(()))
        # reconstruction head: predicts the session's business reward from the pooled steps; not exported
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        with torch.no_grad():  # a common dtype for the generator-made tensors and the Linear layers
            self.head.to(self.W_in.dtype)

    def _chunk_forward(self, batch: SessionBatch) -> tuple[torch.Tensor, torch.Tensor]:
        x, m = batch.x.to(self.W_in.dtype), batch.mask
        mf = m.to(x.dtype).unsqueeze(-1)
        mean = (x * mf).sum(1, keepdim=True) / mf.sum(1, keepdim=True)  # per-chunk mean (as numpy)
        h = torch.tanh(x @ self.W_in + self.b_in + mean @ self.W_ctx)
        gate = torch.sigmoid(h @ self.U + self.b_u)
        logits = (torch.tanh(h @ self.V + self.b_v) * gate) @ self.w + self.c
        return logits, h

    def forward(self, batch: SessionBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(shares, logits, pooled)``: shares/logits padded to (S, T_max) (0 / -inf past the end)."""
        logits_c, h_c = self._chunk_forward(batch)
        valid = batch.mask
        idx = batch.flat_index[valid]
        n = int(batch.step_session.shape[0])
        dtype = logits_c.dtype
        count = torch.zeros(n, dtype=dtype).index_add(0, idx, torch.ones(idx.shape[0], dtype=dtype))
        z = torch.zeros(n, dtype=dtype).index_add(0, idx, logits_c[valid]) / count
        h = torch.zeros(n, h_c.shape[-1], dtype=dtype).index_add(0, idx, h_c[valid]) / count.unsqueeze(-1)
        s, t = batch.step_session, batch.step_pos
        padded = torch.full((batch.n_sessions, batch.max_len), float("-inf"), dtype=dtype)
        padded = padded.index_put((s, t), z)
        shares = torch.softmax(padded, dim=1)
        pooled = torch.zeros(batch.n_sessions, h.shape[-1], dtype=dtype).index_add(
            0, s, shares[s, t].unsqueeze(-1) * h
        )
        return shares, padded, pooled

    def predict_reward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(pooled).squeeze(-1)

    def shares_numpy(self, features: Sequence[np.ndarray]) -> list[np.ndarray]:
        batch = pack_sessions(features, dtype=self.W_in.dtype)
        with torch.no_grad():
            shares, _, _ = self(batch)
        return [shares[i, :n].cpu().numpy() for i, n in enumerate(batch.lengths.tolist())]

    def export_arrays(self) -> dict[str, np.ndarray]:
        """The arrays :class:`rewardloop_outer.credit.GatedAttentionModel` loads (float64)."""
        out = {k: getattr(self, k).detach().cpu().double().numpy() for k in EXPORTED}
        out["features"] = np.array(FEATURES)
        return out


def engagement_mask(batch: SessionBatch) -> torch.Tensor:
    """(S, T_max): 1.0 where the step had no click and no dwell (padding counts as engaged)."""
    n = int(batch.step_session.shape[0])
    valid = batch.mask
    flat_x = torch.zeros(n, D_IN, dtype=batch.x.dtype).index_put((batch.flat_index[valid],), batch.x[valid])
    idle = ((flat_x[:, _CLICKED] <= 0) & (flat_x[:, _LOG_DWELL] <= 0)).to(batch.x.dtype)
    out = torch.zeros(batch.n_sessions, batch.max_len, dtype=batch.x.dtype)
    return out.index_put((batch.step_session, batch.step_pos), idle)


OBJECTIVES = ("reconstruction", "decomposition")


def credit_loss(
    model: GatedAttentionCredit,
    batch: SessionBatch,
    reward: torch.Tensor,
    targets: torch.Tensor | None = None,
    gate_weight: float = 0.1,
    objective: str = "reconstruction",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss; ``targets`` (S, T_max) switches from ``objective`` to supervised shares."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown credit objective {objective!r}; expected one of {OBJECTIVES}")
    shares, logits, pooled = model(batch)
    reward = reward.to(shares.dtype)
    parts: dict[str, torch.Tensor] = {}
    if targets is None and objective == "decomposition":
        # padding logits are -inf: exp() = 0 there
        parts["decomposition"] = torch.mean((torch.exp(logits).sum(dim=1) - reward) ** 2)
    elif targets is None:
        parts["reconstruction"] = torch.mean((model.predict_reward(pooled) - reward) ** 2)
    else:
        r = reward.unsqueeze(-1)
        parts["supervised"] = torch.mean(torch.sum((shares * r - targets.to(shares.dtype) * r) ** 2, dim=1))
    if gate_weight > 0:
        parts["gate"] = gate_weight * torch.mean(torch.sum(shares * engagement_mask(batch), dim=1))
    loss = sum(parts.values(), torch.zeros((), dtype=shares.dtype))
    return loss, {k: float(v.detach()) for k, v in parts.items()}


@dataclass(frozen=True)
class TrainResult:
    model: GatedAttentionCredit
    losses: list[float]


def train_credit_model(
    features: Sequence[np.ndarray],
    rewards: np.ndarray,
    targets: Sequence[np.ndarray] | None = None,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-2,
    gate_weight: float = 0.1,
    hidden: int = 32,
    attention: int = 16,
    seed: int = 0,
    model: GatedAttentionCredit | None = None,
    progress: bool = False,
    objective: str = "reconstruction",
) -> TrainResult:
    """Adam on mini-batches of sessions; deterministic for a given seed (CPU)."""
    if len(features) != len(rewards):
        raise ValueError(f"{len(features)} sessions but {len(rewards)} rewards")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown credit objective {objective!r}; expected one of {OBJECTIVES}")
    if targets is not None and len(targets) != len(features):
        raise ValueError(f"{len(features)} sessions but {len(targets)} target vectors")
    torch.manual_seed(seed)
    if model is None:
        model = GatedAttentionCredit(hidden=hidden, attention=attention, seed=seed)
        if objective == "decomposition" and targets is None:
            # start with Σ_t exp(a_t) ≈ the mean reward: otherwise the first epochs only shrink the scale
            per_step = max(float(np.mean(rewards)), 1e-3) / float(np.mean([len(f) for f in features]))
            with torch.no_grad():
                model.c.fill_(float(np.log(per_step)))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    rewards = np.asarray(rewards, dtype=np.float64)
    losses: list[float] = []
    epoch_iter: Iterable[int] = range(epochs)
    if progress:
        from tqdm import tqdm

        epoch_iter = tqdm(range(epochs), desc="credit model", unit="epoch")
    for _ in epoch_iter:
        order = rng.permutation(len(features))
        total, seen = 0.0, 0
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            batch = pack_sessions([features[i] for i in idx])
            tgt = None
            if targets is not None:
                tgt = torch.zeros(len(idx), batch.max_len)
                for j, i in enumerate(idx):
                    tgt[j, : len(targets[i])] = torch.as_tensor(targets[i])
            loss, _ = credit_loss(model, batch, torch.as_tensor(rewards[idx]), tgt, gate_weight, objective)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        losses.append(total / max(1, seen))
    return TrainResult(model=model, losses=losses)
