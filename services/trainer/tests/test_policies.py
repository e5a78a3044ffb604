from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rewardloop_trainer.policies.linucb import LinUCB
from rewardloop_trainer.policies.softmax import (
    SoftmaxRanker,
    capped_importance_weight,
    discounted_returns,
    exp_weights,
    kl_old_new,
    plackett_luce_log_likelihood,
    reinforce_loss,
    sample_slate,
    topk_correction,
)


def test_discounted_returns_by_hand() -> None:
    g = discounted_returns(torch.tensor([[1.0, 0.0, 2.0]]), gamma=0.5)
    torch.testing.assert_close(g, torch.tensor([[1.5, 1.0, 2.0]]))


def test_importance_weights_are_capped() -> None:
    w = capped_importance_weight(torch.tensor([0.9, 0.2, 0.5]), torch.tensor([0.05, 0.4, 0.5]), cap=5.0)
    torch.testing.assert_close(w, torch.tensor([5.0, 0.5, 1.0]))
    with pytest.raises(ValueError):
        capped_importance_weight(torch.tensor([0.5]), torch.tensor([0.0]), cap=5.0)


def test_topk_factor_is_the_derivative_of_inclusion_probability() -> None:
    pi = torch.tensor([0.0, 0.1, 0.5, 1.0])
    torch.testing.assert_close(topk_correction(pi, 1), torch.ones(4))
    torch.testing.assert_close(topk_correction(pi, 3), 3 * (1 - pi) ** 2)
    # d/dπ [1 - (1-π)^K] = K (1-π)^{K-1}
    p = torch.tensor(0.3, requires_grad=True)
    (1 - (1 - p) ** 4).backward()
    assert p.grad is not None and float(p.grad) == pytest.approx(float(topk_correction(torch.tensor(0.3), 4)))


def test_reinforce_gradient_matches_hand_formula() -> None:
    logits = torch.tensor([[0.0, 1.0, -1.0]], requires_grad=True)
    loss = reinforce_loss(logits, torch.tensor([1]), torch.tensor([2.0]), torch.tensor([0.1]), k=2, cap=3.0)
    loss.backward()
    pi = torch.softmax(logits.detach(), -1)[0]
    w = min(3.0, float(pi[1]) / 0.1) * 2 * (1 - float(pi[1]))
    expected = -w * 2.0 * (torch.nn.functional.one_hot(torch.tensor(1), 3).float() - pi)
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad[0], expected)


def test_entropy_bonus_pushes_towards_uniform() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0]], requires_grad=True)
    reinforce_loss(logits, torch.tensor([0]), torch.tensor([0.0]), entropy_coef=1.0).backward()
    assert logits.grad is not None and logits.grad[0, 0] > 0  # descending lowers the dominant logit


def test_plackett_luce_probabilities_sum_to_one() -> None:
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.5]])
    total = 0.0
    for perm in itertools.permutations(range(4), 2):
        total += float(plackett_luce_log_likelihood(logits, torch.tensor([perm])).exp())
    assert total == pytest.approx(1.0, abs=1e-6)
    p = torch.softmax(logits[0], 0)
    first, second = 2, 3
    by_hand = p[first] * p[second] / (1 - p[first])
    got = plackett_luce_log_likelihood(logits, torch.tensor([[first, second]])).exp()
    assert float(got) == pytest.approx(float(by_hand), rel=1e-6)


def test_exp_weights_and_sft_limit() -> None:
    r = torch.tensor([0.0, 1.0, 2.0])
    torch.testing.assert_close(exp_weights(r, float("inf")), torch.ones(3))
    w = exp_weights(r, 1.0)
    assert float(w.mean()) == pytest.approx(1.0)
    assert float(w[2] / w[1]) == pytest.approx(math.e, rel=1e-5)


def test_kl_and_sampling() -> None:
    a = torch.tensor([[0.0, 1.0, 2.0]])
    assert kl_old_new(a, a) == pytest.approx(0.0, abs=1e-7)
    assert kl_old_new(a, torch.zeros(1, 3)) > 0
    slate = sample_slate(torch.zeros(2, 10), 4, torch.Generator().manual_seed(0))
    assert slate.shape == (2, 4) and all(len(set(row.tolist())) == 4 for row in slate)
    m = SoftmaxRanker(5, 3)
    assert m(torch.zeros(2, 5), torch.zeros(2, 7, 3)).shape == (2, 7)


def test_linucb_sherman_morrison_equals_direct_inverse() -> None:
    rng = np.random.default_rng(0)
    bandit = LinUCB(dim=4, alpha=0.5, ridge=2.0)
    xs, rs = rng.normal(size=(30, 4)), rng.normal(size=30)
    for x, r in zip(xs, rs, strict=True):
        bandit.update(x, float(r))
    a = 2.0 * np.eye(4) + xs.T @ xs
    np.testing.assert_allclose(bandit.A_inv, np.linalg.inv(a), atol=1e-10)
    np.testing.assert_allclose(bandit.theta, np.linalg.solve(a, xs.T @ rs), atol=1e-10)
    cand = rng.normal(size=(6, 4))
    ucb = cand @ bandit.theta + 0.5 * np.sqrt(np.einsum("nd,de,ne->n", cand, np.linalg.inv(a), cand))
    np.testing.assert_allclose(bandit.scores(cand), ucb, atol=1e-10)
    assert list(bandit.select(cand, 3)) == list(np.argsort(-ucb)[:3])
