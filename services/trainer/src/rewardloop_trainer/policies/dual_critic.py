"""Dual critic: separate baselines for the immediate and the retention part of the return (torch).

Issue #5's "optional dual critic (immediate + retention)". Two value heads read the same state features
``s_t``:

* ``V_imm(s_t)`` predicts the immediate return ``G_imm_t = Σ_{j≥t} γ^{j-t} r_j`` of the inner, per-step
  reward (clicks, dwell, skips): dense, observed at every step;
* ``V_ret(s_t)`` predicts the retention return ``G_ret_t``: the session's sparse, delayed business reward
  (purchase, next-day return) credited to step ``t`` (e.g. ``share_t · R`` from the credit model).

The policy-gradient weight is ``A_t = (G_imm_t − V_imm(s_t)) + κ · (G_ret_t − V_ret(s_t))``.

Why two heads instead of one value of the weighted sum: the retention part is zero in most sessions and
large in a few, decided after the session ends, so its variance is far above the inner part's and it
depends on other state (the user's loyalty, price resistance) than the clicks do. Its own baseline
removes the predictable part of it without being drowned by the dense head's much larger targets, and
because ``V_ret`` is fitted on the *unweighted* ``G_ret``, the outer loop can move ``κ`` (dual ascent on
a KPI target) without invalidating the critic.

"At its own scale": each head predicts its target in normalised units, ``V = μ + σ · head(s)``, with
``(μ, σ)`` tracked per head from the targets it sees (PopArt, van Hasselt et al. 2016: when the
statistics move, the head's last layer is rescaled so that its predictions are unchanged). The loss is
the sum of the two heads' MSEs in those units, so the shared trunk gets comparable gradients from both.

The advantages are computed under ``torch.no_grad`` and returned detached: the policy loss never
back-propagates into the critic, and the critic's loss reads only detached features and targets.
"""

from __future__ import annotations

import torch
from torch import nn

HEADS = ("imm", "ret")


class DualCritic(nn.Module):
    """Shared tanh trunk (or none: ``hidden=0`` gives two linear heads) + two normalised value heads."""

    def __init__(
        self,
        in_dim: int,
        hidden: int = 32,
        seed: int = 0,
        stats_momentum: float = 0.1,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        if in_dim < 1 or hidden < 0:
            raise ValueError("in_dim must be >= 1 and hidden >= 0")
        if not 0.0 < stats_momentum <= 1.0:
            raise ValueError("stats_momentum must be in (0, 1]")
        g = torch.Generator().manual_seed(
            seed
        )  # own generator: building a critic leaves the global RNG alone
        self.trunk: nn.Module = nn.Identity()
        width = in_dim
        if hidden:
            lin = nn.Linear(in_dim, hidden)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(hidden, in_dim, generator=g) / in_dim**0.5)
                lin.bias.zero_()
            self.trunk = nn.Sequential(lin, nn.Tanh())
            width = hidden
        self.head = nn.Linear(width, len(HEADS))  # column 0: imm, column 1: ret
        with torch.no_grad():
            self.head.weight.copy_(0.01 * torch.randn(len(HEADS), width, generator=g))
            self.head.bias.zero_()
        self.momentum = stats_momentum
        self.min_scale = min_scale
        self.register_buffer("loc", torch.zeros(len(HEADS)))
        self.register_buffer("scale", torch.ones(len(HEADS)))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def normalised(self, features: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, 2) head outputs in normalised units."""
        return self.head(self.trunk(features))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, d) -> ``(V_imm, V_ret)``, each (N,), in the targets' own units."""
        v = self.loc + self.scale * self.normalised(features)
        return v[:, 0], v[:, 1]

    @torch.no_grad()
    def update_stats(self, targets: torch.Tensor) -> None:
        """Move each head's ``(μ, σ)`` towards the batch's, preserving the predictions (PopArt).

        ``targets`` (N, 2): columns ``G_imm``, ``G_ret``. The first call takes the batch's statistics.
        """
        t = targets.detach().to(self.loc.dtype)
        mean, std = t.mean(0), t.std(0, unbiased=False)
        if bool(self.seen):
            new_loc = (1 - self.momentum) * self.loc + self.momentum * mean
            second = (1 - self.momentum) * (self.scale**2 + self.loc**2) + self.momentum * (std**2 + mean**2)
            new_scale = (second - new_loc**2).clamp_min(0.0).sqrt()
        else:
            new_loc, new_scale = mean, std
        new_scale = new_scale.clamp_min(self.min_scale)
        # keep loc + scale·(w h + b) unchanged: w' = w σ/σ', b' = (σ b + μ − μ')/σ'
        self.head.weight.mul_((self.scale / new_scale).unsqueeze(1))
        self.head.bias.copy_((self.scale * self.head.bias + self.loc - new_loc) / new_scale)
        self.loc.copy_(new_loc)
        self.scale.copy_(new_scale)
        self.seen.fill_(True)

    def loss(self, features: torch.Tensor, g_imm: torch.Tensor, g_ret: torch.Tensor) -> torch.Tensor:
        """Σ over heads of the MSE in normalised units (each head at its own scale)."""
        target = (torch.stack([g_imm, g_ret], dim=1).detach() - self.loc) / self.scale
        return ((self.normalised(features.detach()) - target) ** 2).mean(0).sum()


def dual_advantages(
    critic: DualCritic, features: torch.Tensor, g_imm: torch.Tensor, g_ret: torch.Tensor, kappa: float
) -> torch.Tensor:
    """``A_t = (G_imm_t − V_imm(s_t)) + κ (G_ret_t − V_ret(s_t))`` for a batch of steps, (N,), detached."""
    if not g_imm.shape == g_ret.shape == features.shape[:1]:
        raise ValueError(
            f"shapes differ: features {tuple(features.shape)}, {tuple(g_imm.shape)}, {tuple(g_ret.shape)}"
        )
    with torch.no_grad():
        v_imm, v_ret = critic(features)
        return (g_imm - v_imm) + kappa * (g_ret - v_ret)


def fit_critic(
    critic: DualCritic,
    opt: torch.optim.Optimizer,
    features: torch.Tensor,
    g_imm: torch.Tensor,
    g_ret: torch.Tensor,
    steps: int,
) -> list[float]:
    """``steps`` full-batch gradient steps on the batch; returns the losses.

    Call ``critic.update_stats`` on the batch's targets first (it preserves the predictions, so it may
    run before the batch's advantages are computed; its first call centres the heads on that batch).
    """
    losses = []
    for _ in range(steps):
        loss = critic.loss(features, g_imm, g_ret)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
