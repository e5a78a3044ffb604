"""A softmax ranking policy over candidates and the losses that train it (torch).

* The policy scores each candidate from the user context and item features; ``π(a|s) =
  softmax(score)``, always through ``log_softmax`` (numerically stable log-probabilities).
* A slate of ``K`` is a Plackett-Luce sample without replacement (Gumbel top-K).
* **REINFORCE with the top-K off-policy correction** (Chen et al., WSDM 2019, YouTube):
  ``∇J ≈ E_β[ min(c, π/β) · λ_K(a|s) · R · ∇log π(a|s) ]`` with ``λ_K = K (1 - π)^{K-1}`` (the
  derivative of the probability that ``a`` appears in a slate of K independent draws), capped importance
  weights, plus an entropy bonus. ``λ_K`` and the weight are constants for the gradient (detached).
* **exp(r/λ)-weighted fine-tuning** (advantage-weighted regression style): ``-Σ w_i log π(a_i|s_i)``
  with ``w = softmax(r/λ)·n``; λ → ∞ is plain supervised fine-tuning on the logged actions.
* **Plackett-Luce** log-likelihood of a ranking; weighted by the session's advantage it is the
  RL-aligned ranking loss.
"""

from __future__ import annotations

import torch
from torch import nn


class SoftmaxRanker(nn.Module):
    """``score(u, i) = (u W) · i + b · i`` (bilinear + item prior)."""

    def __init__(self, user_dim: int, item_dim: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(0.01 * torch.randn(user_dim, item_dim, generator=g))
        self.b = nn.Parameter(torch.zeros(item_dim))

    def forward(self, user: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``user`` (B, du), ``items`` (B, N, di) -> logits (B, N)."""
        return torch.einsum("bd,de,bne->bn", user, self.W, items) + items @ self.b


def log_policy(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1)


def sample_slate(logits: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, k) candidate indices: a Plackett-Luce sample without replacement (Gumbel top-k)."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).clamp_(1e-12, 1 - 1e-12)
    gumbel = -torch.log(-torch.log(u))
    return torch.topk(logits.detach() + gumbel, k, dim=-1).indices


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = r_t + γ G_{t+1}`` along the last axis."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + gamma * running
        out[..., t] = running
    return out


def capped_importance_weight(pi: torch.Tensor, beta: torch.Tensor, cap: float) -> torch.Tensor:
    if cap <= 0:
        raise ValueError("cap must be > 0")
    if (beta <= 0).any():
        raise ValueError("behaviour probabilities must be > 0")
    return torch.clamp(pi / beta, max=cap)


def topk_correction(pi: torch.Tensor, k: int) -> torch.Tensor:
    """``λ_K(a|s) = K (1 - π(a|s))^{K-1}``."""
    if k < 1:
        raise ValueError("k must be >= 1")
    return k * (1.0 - pi) ** (k - 1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    lp = log_policy(logits)
    return -(lp.exp() * lp).sum(-1)


def reinforce_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    returns: torch.Tensor,
    behaviour_prob: torch.Tensor | None = None,
    *,
    k: int = 1,
    cap: float = 10.0,
    entropy_coef: float = 0.0,
) -> torch.Tensor:
    """``logits`` (B, N), ``actions`` (B,) chosen candidate, ``returns`` (B,) (advantages).

    ``behaviour_prob`` None means on-policy (weight 1).
    """
    lp = log_policy(logits)
    lp_a = lp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    pi_a = lp_a.exp().detach()
    weight = torch.ones_like(pi_a)
    if behaviour_prob is not None:
        weight = capped_importance_weight(pi_a, behaviour_prob, cap)
    if k > 1:
        weight = weight * topk_correction(pi_a, k)
    loss = -(weight.detach() * returns.detach() * lp_a).mean()
    if entropy_coef:
        loss = loss - entropy_coef * entropy(logits).mean()
    return loss


def exp_weights(returns: torch.Tensor, lam: float) -> torch.Tensor:
    """``n · softmax(r/λ)`` (mean 1); λ = inf gives uniform weights (plain SFT)."""
    if lam <= 0:
        raise ValueError("lambda must be > 0")
    if lam == float("inf"):
        return torch.ones_like(returns)
    return torch.softmax(returns / lam, dim=0) * returns.shape[0]


def exp_weighted_loss(
    logits: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor, lam: float
) -> torch.Tensor:
    lp_a = log_policy(logits).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return -(exp_weights(returns.detach(), lam) * lp_a).mean()


def plackett_luce_log_likelihood(logits: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
    """``log P(ranking)`` for ``logits`` (B, N), ``ranking`` (B, K) candidate indices, best first.

    ``Σ_k [s_{r_k} - logsumexp(s over the candidates not yet placed)]``.
    """
    s = logits
    placed = torch.zeros_like(s, dtype=torch.bool)
    total = torch.zeros(s.shape[0], dtype=s.dtype)
    neg_inf = torch.finfo(s.dtype).min
    for j in range(ranking.shape[1]):
        idx = ranking[:, j : j + 1]
        remaining = s.masked_fill(placed, neg_inf)
        total = total + s.gather(-1, idx).squeeze(-1) - torch.logsumexp(remaining, dim=-1)
        placed = placed.scatter(-1, idx, True)
    return total


def plackett_luce_loss(logits: torch.Tensor, ranking: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """RL-aligned ranking loss: the slate's log-likelihood weighted by its (detached) advantage."""
    return -(advantage.detach() * plackett_luce_log_likelihood(logits, ranking)).mean()


def kl_old_new(old_logits: torch.Tensor, new_logits: torch.Tensor) -> float:
    """Mean over states of ``KL(π_old ‖ π_new)``."""
    lo, ln = log_policy(old_logits), log_policy(new_logits)
    return float((lo.exp() * (lo - ln)).sum(-1).mean())
