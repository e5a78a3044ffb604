from __future__ import annotations

import pytest
import torch

from rewardloop_trainer.policies.dual_critic import DualCritic, dual_advantages, fit_critic
from rewardloop_trainer.policies.softmax import SoftmaxRanker, reinforce_loss


def linear_problem(n: int = 256, d: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets at very different scales: a dense one ~10 and a sparse-sized one ~0.05."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    g_imm = 10.0 + x @ torch.tensor([3.0, -2.0, 1.0, 0.5])
    g_ret = 0.05 + x @ torch.tensor([0.0, 0.02, -0.03, 0.01])
    return x, g_imm, g_ret


def test_shapes() -> None:
    critic = DualCritic(in_dim=5, hidden=8)
    v_imm, v_ret = critic(torch.zeros(7, 5))
    assert v_imm.shape == v_ret.shape == (7,)
    a = dual_advantages(critic, torch.zeros(7, 5), torch.ones(7), torch.ones(7), kappa=2.0)
    assert a.shape == (7,)
    with pytest.raises(ValueError):
        dual_advantages(critic, torch.zeros(7, 5), torch.ones(7), torch.ones(6), kappa=1.0)


def test_both_heads_fit_a_linear_problem_at_their_own_scale() -> None:
    x, g_imm, g_ret = linear_problem()
    critic = DualCritic(in_dim=4, hidden=0)
    opt = torch.optim.Adam(critic.parameters(), lr=0.05)
    critic.update_stats(torch.stack([g_imm, g_ret], 1))
    losses = fit_critic(critic, opt, x, g_imm, g_ret, steps=400)
    assert losses[-1] < 0.01 * losses[0]
    with torch.no_grad():
        v_imm, v_ret = critic(x)
    # relative to each target's own spread: the small head is fitted as well as the large one
    assert float((v_imm - g_imm).abs().max()) < 0.05 * float(g_imm.std())
    assert float((v_ret - g_ret).abs().max()) < 0.05 * float(g_ret.std())


def test_stats_update_preserves_predictions() -> None:
    x, g_imm, g_ret = linear_problem()
    critic = DualCritic(in_dim=4, hidden=8, stats_momentum=0.5)
    critic.update_stats(torch.stack([g_imm, g_ret], 1))
    before = torch.stack(critic(x), 1)
    critic.update_stats(torch.stack([5 * g_imm + 3, g_ret - 1], 1))
    torch.testing.assert_close(torch.stack(critic(x), 1), before, rtol=1e-5, atol=1e-5)
    assert critic.scale[0] > 2 * float(g_imm.std())  # and the statistics did move


def test_advantage_is_the_formula() -> None:
    critic = DualCritic(in_dim=3, hidden=4, seed=3)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    critic.update_stats(torch.tensor([[4.0, 0.2], [8.0, 0.0], [6.0, 0.4], [2.0, 0.0], [5.0, 0.1]]))
    g_imm = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    g_ret = torch.tensor([0.0, 0.0, 0.9, 0.0, 0.3])
    v_imm, v_ret = (v.detach() for v in critic(x))
    kappa = 1.7
    expected = torch.stack([(g_imm[i] - v_imm[i]) + kappa * (g_ret[i] - v_ret[i]) for i in range(5)])
    torch.testing.assert_close(dual_advantages(critic, x, g_imm, g_ret, kappa), expected)


def test_perfect_critic_gives_zero_advantage() -> None:
    critic = DualCritic(in_dim=3, hidden=0)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    v_imm, v_ret = (v.detach() for v in critic(x))
    a = dual_advantages(critic, x, v_imm.clone(), v_ret.clone(), kappa=3.0)
    torch.testing.assert_close(a, torch.zeros(6))


def test_no_gradient_flows_between_critic_and_policy() -> None:
    policy = SoftmaxRanker(user_dim=3, item_dim=2, seed=0)
    critic = DualCritic(in_dim=3, hidden=4)
    user = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    items = torch.randn(4, 6, 2, generator=torch.Generator().manual_seed(1))
    logits = policy(user, items)
    # features that depend on the policy's output: still no path from the advantage back to either model
    feats = user + logits[:, :3]
    adv = dual_advantages(critic, feats, torch.ones(4), torch.zeros(4), kappa=1.0)
    assert not adv.requires_grad
    reinforce_loss(logits, torch.tensor([0, 1, 2, 3]), adv).backward()
    assert all(p.grad is None for p in critic.parameters())
    assert policy.W.grad is not None
    policy.zero_grad(set_to_none=True)
    critic.loss(policy(user, items)[:, :3], torch.ones(4), torch.zeros(4)).backward()
    assert all(p.grad is None for p in policy.parameters())
    assert critic.head.weight.grad is not None
