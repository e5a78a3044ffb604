from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from rewardloop_common.weights import BUILTIN_WEIGHTS, Weights, WeightsDocument, builtin_document


def test_builtin_defaults() -> None:
    assert BUILTIN_WEIGHTS.as_dict() == {"click": 1.0, "dwell": 0.5, "skip": -0.3, "relevance": 0.8}
    doc = builtin_document()
    assert doc.version == 0 and doc.source == "builtin-default" and doc.segment == "default"


@pytest.mark.parametrize(
    "field,value",
    [
        ("click", -0.1),
        ("click", 5.1),
        ("dwell", 6),
        ("skip", 0.1),
        ("skip", -5.5),
        ("relevance", -1),
        ("click", math.nan),
        ("dwell", math.inf),
    ],
)
def test_bounds(field: str, value: float) -> None:
    data = BUILTIN_WEIGHTS.as_dict() | {field: value}
    with pytest.raises(ValidationError) as exc:
        Weights(**data)
    assert field in str(exc.value)


def test_bounds_inclusive_and_clipped() -> None:
    Weights(click=0, dwell=5, skip=-5, relevance=0)
    Weights(click=5, dwell=0, skip=0, relevance=5)
    w = Weights.clipped({"click": 9, "dwell": -1, "skip": 3, "relevance": 0.5})
    assert w.as_dict() == {"click": 5.0, "dwell": 0.0, "skip": 0.0, "relevance": 0.5}


def test_extra_weight_rejected_and_segment_alphabet() -> None:
    with pytest.raises(ValidationError):
        Weights(**(BUILTIN_WEIGHTS.as_dict() | {"novelty": 1.0}))
    with pytest.raises(ValidationError, match="segment"):
        WeightsDocument(
            version=1, segment="bad segment", weights=BUILTIN_WEIGHTS, updated_at_ms=0, source="x"
        )
