"""The exploration hash and slice assignment (docs/architecture.md, "Redis: exploration slice")."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from rewardloop_common.exploration import (
    ExplorationDocument,
    assign,
    exploration_hash,
    fmix64,
    fnv1a64,
)

# The same strings and outputs are in docs/architecture.md; the scorer must reproduce them exactly.
EXPLORATION_HASH_VECTORS = {
    "": 0xEFD01F60BA992926,
    "3:u-1": 0xACE6EA11C30161F0,
    "7:user-42:action": 0x59C6B2E157462214,
}
FNV1A64_VECTORS = {
    "": 0xCBF29CE484222325,
    "a": 0xAF63DC4C8601EC8C,
    "3:u-1": 0xDBC4C20AAD1EA87D,
    "7:user-42:action": 0x82EE6421E532BCB8,
}

# short, similar ids: the case where plain FNV-1a's high bits are poorly mixed
ID_FORMATS = ("u{}", "user-{}", "{}")
N_IDS = 100_000


def test_hash_vectors() -> None:
    for s, h in FNV1A64_VECTORS.items():
        assert fnv1a64(s) == h, s
    for s, h in EXPLORATION_HASH_VECTORS.items():
        assert exploration_hash(s) == h, s
        assert exploration_hash(s) == fmix64(fnv1a64(s))
    assert fmix64(0) == 0  # the finaliser's fixed point; FNV's offset basis keeps inputs away from it
    assert exploration_hash("é") == fmix64(fnv1a64("é")) != exploration_hash("e")  # UTF-8 bytes


def _worst_slice_z(hash_fn: Callable[[str], int]) -> tuple[float, str]:
    """The largest |z| of the measured slice share against the binomial expectation, over id formats,
    versions and the slices 0.5 % (the default) and 20 % (the contract's maximum)."""
    worst, where = 0.0, ""
    for fmt in ID_FORMATS:
        for version in (1, 3, 7):
            fractions = [hash_fn(f"{version}:{fmt.format(i)}") / 2**64 for i in range(N_IDS)]
            for slice_ in (0.005, 0.2):
                share = sum(f < slice_ for f in fractions) / N_IDS
                z = (share - slice_) / math.sqrt(slice_ * (1 - slice_) / N_IDS)
                if abs(z) > abs(worst):
                    worst, where = z, f"{fmt!r} v{version} slice {slice_}: share {share:.5f}"
    return worst, where


def test_measured_slice_share_matches_the_target() -> None:
    # Binomial noise over 100k ids is ~4.5 % (relative) at 0.005 and ~1 % at 0.2; 4 sigma allows for the
    # 18 draws. Measured: |z| <= 2.4 (0.455 %..0.554 % at 0.005, 19.86 %..20.17 % at 0.2).
    z, where = _worst_slice_z(exploration_hash)
    assert abs(z) < 4.0, where
    # the check has teeth: plain FNV-1a (the contract's first draft) misses by up to ~30 sigma
    z_plain, where_plain = _worst_slice_z(fnv1a64)
    assert abs(z_plain) > 10.0, where_plain


def test_actions_are_uniform_within_the_slice() -> None:
    ids = list(range(27))
    counts: Counter[int] = Counter()
    for i in range(N_IDS):
        action, p = assign(5, 0.2, ids, f"u{i}")
        if action is not None:
            counts[action] += 1
            assert p == pytest.approx(0.2 / 27)
    n = sum(counts.values())
    chi2 = sum((counts[a] - n / 27) ** 2 / (n / 27) for a in ids)
    assert chi2 < 60.0, counts  # 26 degrees of freedom: P(chi2 > 60) < 1e-4


def test_assignment_is_sticky_per_version_and_reshuffled_by_a_new_one() -> None:
    ids = [10, 11, 12]
    users = [f"u{i}" for i in range(2000)]
    v3 = [assign(3, 0.2, ids, u) for u in users]
    assert v3 == [assign(3, 0.2, ids, u) for u in users]
    v4 = [assign(4, 0.2, ids, u) for u in users]
    assert v3 != v4
    assert assign(3, 0.0, ids, "u-1") == (None, 1.0)
    assert assign(3, 0.2, [], "u-1") == (None, pytest.approx(0.8))


def _doc(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "version": 1,
        "slice": 0.05,
        "actions": [{"id": 0, "weights": {"click": 1.0, "dwell": 0.5, "skip": -0.3, "relevance": 0.8}}],
        "updated_at_ms": 1,
        "source": "test",
    }
    return base | kw


@pytest.mark.parametrize(
    "bad",
    [
        {"version": 0},
        {"slice": 0.21},
        {"slice": math.nan},
        {"actions": []},
        {"actions": [{"id": 1, "weights": {"click": 9, "dwell": 0.5, "skip": -0.3, "relevance": 0.8}}]},
        {
            "actions": [
                {"id": 1, "weights": {"click": 1, "dwell": 0.5, "skip": -0.3, "relevance": 0.8}},
                {"id": 1, "weights": {"click": 2, "dwell": 0.5, "skip": -0.3, "relevance": 0.8}},
            ]
        },
    ],
)
def test_invalid_documents_are_refused(bad: dict[str, object]) -> None:
    ExplorationDocument.model_validate(_doc())
    with pytest.raises(ValidationError):
        ExplorationDocument.model_validate(_doc(**bad))
