"""The exploration document and its slice assignment (docs/architecture.md, "Redis: exploration slice").

Written by the outer controller (the DRL-PUT tuner), applied by the scorer. :func:`assign` recomputes
exactly what the scorer did for a user (the same hash, :func:`exploration_hash`), so the controller can
check the logged ``explore_action`` / ``explore_probability`` against the document.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .weights import Weights

EXPLORATION_KEY_PREFIX: Final = "rewardloop:exploration:"
EXPLORATION_VERSION_KEY: Final = "rewardloop:exploration-version"
MAX_SLICE: Final = 0.2
MAX_ACTIONS: Final = 256

FNV_OFFSET: Final = 0xCBF29CE484222325
FNV_PRIME: Final = 0x100000001B3
FMIX_C1: Final = 0xFF51AFD7ED558CCD
FMIX_C2: Final = 0xC4CEB9FE1A85EC53
_MASK: Final = (1 << 64) - 1


def fnv1a64(s: str) -> int:
    """64-bit FNV-1a over the UTF-8 bytes of ``s``."""
    h = FNV_OFFSET
    for b in s.encode("utf-8"):
        h = ((h ^ b) * FNV_PRIME) & _MASK
    return h


def fmix64(k: int) -> int:
    """MurmurHash3's 64-bit finaliser (an avalanche: every input bit flips each output bit with p ~ 1/2)."""
    k &= _MASK
    k ^= k >> 33
    k = (k * FMIX_C1) & _MASK
    k ^= k >> 33
    k = (k * FMIX_C2) & _MASK
    k ^= k >> 33
    return k


def exploration_hash(s: str) -> int:
    """The contract's hash: ``fmix64(fnv1a64(utf8(s)))``.

    Plain FNV-1a leaves the high bits poorly mixed for short, similar ids ("u1", "u2", ...); since the
    slice test compares ``h / 2**64`` against the slice, the measured slice share then missed the target
    by up to 30 binomial standard deviations (e.g. 1.2 % instead of 0.5 %), which would make the logged
    propensities wrong. The finaliser fixes the high bits at the cost of 5 integer operations."""
    return fmix64(fnv1a64(s))


def exploration_key(segment: str) -> str:
    return f"{EXPLORATION_KEY_PREFIX}{segment}"


class ExplorationAction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=0)
    weights: Weights


class ExplorationDocument(BaseModel):
    """The JSON document at ``rewardloop:exploration:<segment>``."""

    model_config = ConfigDict(extra="ignore")

    version: int = Field(ge=1)
    slice: Annotated[float, Field(ge=0.0, le=MAX_SLICE, allow_inf_nan=False)]
    actions: list[ExplorationAction] = Field(min_length=1, max_length=MAX_ACTIONS)
    updated_at_ms: int = Field(ge=0)
    source: str = Field(min_length=1, max_length=128)

    @model_validator(mode="after")
    def _unique_ids(self) -> ExplorationDocument:
        ids = [a.id for a in self.actions]
        if len(ids) != len(set(ids)):
            raise ValueError("action ids must be unique")
        return self

    def assign(self, user_id: str) -> tuple[int | None, float]:
        """What the scorer serves ``user_id`` under this document: ``(action id, probability)``, or
        ``(None, 1 - slice)`` for the segment's own weights."""
        return assign(self.version, self.slice, [a.id for a in self.actions], user_id)


def assign(version: int, slice_: float, action_ids: list[int], user_id: str) -> tuple[int | None, float]:
    """The contract's assignment, with ``h = exploration_hash``: in the slice iff ``h("<v>:<u>") / 2**64 <
    slice``; then ``action_ids[h("<v>:<u>:action") % len(action_ids)]`` with probability ``slice / len``."""
    if slice_ > 0 and action_ids and exploration_hash(f"{version}:{user_id}") / 2**64 < slice_:
        action = action_ids[exploration_hash(f"{version}:{user_id}:action") % len(action_ids)]
        return action, slice_ / len(action_ids)
    return None, 1.0 - slice_
