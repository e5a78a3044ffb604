from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import random_session

from rewardloop_outer.credit import CHUNK, CreditAssigner, GatedAttentionModel, step_features
from rewardloop_trainer import checkpoints
from rewardloop_trainer.credit.gated_attention import (
    GatedAttentionCredit,
    credit_loss,
    engagement_mask,
    pack_sessions,
    train_credit_model,
)

LENGTHS = [1, 2, 7, 60, CHUNK, CHUNK + 1, 1100]  # 1100 -> three overlapping chunks


def test_pack_sessions_matches_chunking() -> None:
    feats = [np.ones((n, 7)) * n for n in (3, CHUNK + 10)]
    b = pack_sessions(feats)
    assert b.x.shape == (3, CHUNK, 7)  # 1 chunk + 2 chunks, padded to the widest
    assert b.mask.sum().item() == 3 + CHUNK + (CHUNK + 10 - (CHUNK - 64))
    assert b.lengths.tolist() == [3, CHUNK + 10]
    with pytest.raises(ValueError, match="features must be"):
        pack_sessions([np.ones((0, 7))])


def test_shares_are_a_distribution_per_session(rng: np.random.Generator) -> None:
    model = GatedAttentionCredit(seed=3)
    feats = [step_features(random_session(rng, n)) for n in LENGTHS]
    shares = model.shares_numpy(feats)
    for n, s in zip(LENGTHS, shares, strict=True):
        assert s.shape == (n,)
        assert np.all(s > 0)
        assert s.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_exported_artefact_matches_numpy_inference(tmp_path, rng: np.random.Generator, dtype) -> None:
    """The outer controller's numpy model, loaded from the artefact, gives the torch model's shares."""
    model = GatedAttentionCredit(hidden=24, attention=12, seed=5).to(dtype)
    with torch.no_grad():  # non-trivial biases and offsets so every parameter matters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ck = checkpoints.save(model, tmp_path, {"test": True})
    assert ck.version == 1 and ck.artefact.name == "credit-model-v1.npz"
    loaded = GatedAttentionModel.load(ck.artefact)
    sessions = [random_session(rng, n) for n in LENGTHS]
    torch_shares = model.shares_numpy([step_features(s) for s in sessions])
    for sess, ts in zip(sessions, torch_shares, strict=True):
        np.testing.assert_allclose(np.array(loaded.shares(sess)), ts, atol=1e-5, rtol=0)
    # and the controller's assigner picks the artefact up from the directory
    assigner = CreditAssigner(gamma=0.9, model_dir=str(tmp_path))
    assigner.maybe_reload(now_s=0.0)
    assert assigner.name == "gated-attention:v1"


def test_checkpoint_versions_increase_and_resume(tmp_path) -> None:
    m1 = GatedAttentionCredit(seed=1)
    m2 = GatedAttentionCredit(seed=2)
    assert checkpoints.save(m1, tmp_path, {"n": 1}).version == 1
    assert checkpoints.save(m2, tmp_path, {"n": 2}).version == 2
    assert checkpoints.versions(tmp_path) == [1, 2]
    loaded = checkpoints.load_latest(tmp_path)
    assert loaded is not None
    model, version, meta = loaded
    assert version == 2 and meta == {"n": 2}
    torch.testing.assert_close(model.W_in, m2.W_in)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_engagement_mask_marks_idle_steps() -> None:
    x = np.zeros((3, 7))
    x[0, 0] = 1.0  # clicked
    x[1, 1] = 0.5  # dwell without a recorded click
    b = pack_sessions([x, x[:1]])
    m = engagement_mask(b)
    assert m.tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]  # padding counts as engaged (0)


def _planted(
    rng: np.random.Generator, n_sessions: int
) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Sessions whose reward is caused by the one step with a high 'predicted_relevance' and a click."""
    feats, rewards, causes = [], [], []
    for _ in range(n_sessions):
        n = int(rng.integers(5, 30))
        x = step_features(random_session(rng, n))
        x[:, 3] = rng.random(n) * 0.5
        cause = np.zeros(n)
        if rng.random() < 0.5:
            t = int(rng.integers(n))
            x[t, 0], x[t, 1], x[t, 3] = 1.0, 4.0, 0.95
            cause[t] = 1.0
            rewards.append(2.0)
        else:
            rewards.append(0.0)
        feats.append(x)
        causes.append(cause)
    return feats, np.array(rewards), causes


@pytest.mark.parametrize("mode", ["reconstruction", "decomposition", "supervised"])
def test_training_finds_the_planted_cause(rng: np.random.Generator, mode: str) -> None:
    feats, rewards, causes = _planted(rng, 300)
    res = train_credit_model(
        feats,
        rewards,
        causes if mode == "supervised" else None,
        epochs=25,
        lr=2e-2,
        seed=0,
        objective="decomposition" if mode == "decomposition" else "reconstruction",
    )
    assert res.losses[-1] < res.losses[0]
    test_feats, test_rewards, test_causes = _planted(np.random.default_rng(99), 100)
    shares = res.model.shares_numpy(test_feats)
    pos = [i for i, r in enumerate(test_rewards) if r > 0]
    hits = np.mean([np.argmax(shares[i]) == np.argmax(test_causes[i]) for i in pos])
    assert hits > 0.8, hits


def test_loss_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="rewards"):
        train_credit_model([np.zeros((2, 7))], np.zeros(2))
    b = pack_sessions([np.zeros((2, 7))])
    loss, parts = credit_loss(GatedAttentionCredit(), b, torch.zeros(1))
    assert set(parts) == {"reconstruction", "gate"} and torch.isfinite(loss)


def test_decomposition_loss_is_the_sum_of_exp_logits_against_the_reward() -> None:
    """Hand-computed: with every logit parameter zero but the bias c, each step contributes e^c."""
    model = GatedAttentionCredit(seed=0)
    with torch.no_grad():
        model.w.zero_()
        model.c.fill_(math.log(0.5))
    b = pack_sessions([np.zeros((2, 7)), np.zeros((4, 7))])
    loss, parts = credit_loss(model, b, torch.tensor([1.0, 0.0]), gate_weight=0.0, objective="decomposition")
    # predictions 2 * 0.5 = 1.0 and 4 * 0.5 = 2.0: errors 0 and 2 -> mean squared error 2
    assert parts == {"decomposition": pytest.approx(2.0)}
    assert loss.item() == pytest.approx(2.0)


def test_unknown_objective_is_rejected() -> None:
    with pytest.raises(ValueError, match="objective"):
        train_credit_model([np.zeros((2, 7))], np.zeros(1), objective="bogus")
    with pytest.raises(ValueError, match="objective"):
        credit_loss(GatedAttentionCredit(), pack_sessions([np.zeros((2, 7))]), torch.zeros(1), objective="x")
