"""Reward weights and the weights document stored in Redis (see docs/architecture.md, "Redis: weights")."""

from __future__ import annotations

import math
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Inclusive bounds of every weight; validated by every writer and by the scorer on read.
WEIGHT_BOUNDS: Final[dict[str, tuple[float, float]]] = {
    "click": (0.0, 5.0),
    "dwell": (0.0, 5.0),
    "skip": (-5.0, 0.0),
    "relevance": (0.0, 5.0),
}
WEIGHT_NAMES: Final[tuple[str, ...]] = ("click", "dwell", "skip", "relevance")

DEFAULT_SEGMENT: Final = "default"
BUILTIN_SOURCE: Final = "builtin-default"

#: A segment name: it becomes part of a Redis key, so keep it to a safe alphabet.
Segment = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]


class Weights(BaseModel):
    """The four inner-reward weights. Every value is finite and within :data:`WEIGHT_BOUNDS`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    click: float = Field(ge=0.0, le=5.0, allow_inf_nan=False)
    dwell: float = Field(ge=0.0, le=5.0, allow_inf_nan=False)
    skip: float = Field(ge=-5.0, le=0.0, allow_inf_nan=False)
    relevance: float = Field(ge=0.0, le=5.0, allow_inf_nan=False)

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in WEIGHT_NAMES}

    @classmethod
    def clipped(cls, values: dict[str, float]) -> Weights:
        """Build weights from arbitrary finite values, clipping each one into its bounds."""
        out: dict[str, float] = {}
        for name in WEIGHT_NAMES:
            lo, hi = WEIGHT_BOUNDS[name]
            v = float(values[name])
            if not math.isfinite(v):
                raise ValueError(f"weight {name} is not finite: {v!r}")
            out[name] = min(hi, max(lo, v))
        return cls(**out)


BUILTIN_WEIGHTS: Final = Weights(click=1.0, dwell=0.5, skip=-0.3, relevance=0.8)


class WeightsDocument(BaseModel):
    """The JSON document at ``rewardloop:weights:<segment>`` (and in its history list)."""

    model_config = ConfigDict(extra="ignore")

    version: int = Field(ge=0)
    segment: Segment
    weights: Weights
    updated_at_ms: int = Field(ge=0)
    source: str = Field(min_length=1, max_length=128)
    reason: str = Field(default="", max_length=2000)

    @field_validator("reason", mode="before")
    @classmethod
    def _none_reason(cls, v: object) -> object:
        return "" if v is None else v


def builtin_document(segment: str = DEFAULT_SEGMENT) -> WeightsDocument:
    """The built-in defaults (version 0, source ``builtin-default``) used when Redis has no document."""
    return WeightsDocument(
        version=0,
        segment=segment,
        weights=BUILTIN_WEIGHTS,
        updated_at_ms=0,
        source=BUILTIN_SOURCE,
        reason="built-in defaults (no document in Redis)",
    )
