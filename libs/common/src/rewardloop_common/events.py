"""Pydantic models of the JSON records on the Kafka topics (see docs/architecture.md).

* ``recsys.reward.raw`` -> :class:`RewardEvent` (producer: inner-reward-rs)
* ``recsys.kpi.raw``    -> :class:`KpiEvent` (producer: gateway)
* ``recsys.sessions``   -> :class:`SessionRecord` (producer: outer-controller)

Consumers validate with ``Model.model_validate_json(raw_bytes)``; unknown extra fields are ignored so
producers may add fields without breaking older consumers.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

NonEmptyId = Annotated[str, Field(min_length=1, max_length=256)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
EventTimeMs = Annotated[int, Field(gt=0)]

KpiKind = Literal["purchase", "return_visit", "subscription"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RewardParts(_Record):
    click: FiniteFloat
    dwell: FiniteFloat
    skip: FiniteFloat
    relevance: FiniteFloat


class RewardEvent(_Record):
    """One scored action on ``recsys.reward.raw``."""

    event_id: NonEmptyId
    request_id: str = ""
    user_id: NonEmptyId
    session_id: str = ""
    item_id: NonEmptyId
    position: int = Field(ge=0)
    event_time_ms: EventTimeMs
    clicked: bool
    dwell_seconds: FiniteFloat = Field(ge=0.0)
    skipped: bool
    predicted_relevance: FiniteFloat = Field(ge=0.0, le=1.0)
    behavior_propensity: FiniteFloat = Field(gt=0.0, le=1.0)
    segment: str = "default"
    reward: FiniteFloat
    raw_reward: FiniteFloat
    parts: RewardParts
    weights_version: int = Field(ge=0)
    scored_at_ms: int = Field(ge=0)
    #: exploration slice (docs/architecture.md): the action id served, or None = the segment's weights
    explore_action: int | None = Field(default=None, ge=0)
    #: behaviour probability of what was served (slice / len(actions), or 1 - slice); None = no document
    explore_probability: FiniteFloat | None = Field(default=None, gt=0.0, le=1.0)
    exploration_version: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _default_segment(self) -> RewardEvent:
        if not self.segment:
            self.segment = "default"
        return self


class KpiEventBase(_Record):
    """The fields a client sends for one delayed business event (everything but ``received_at_ms``)."""

    event_id: NonEmptyId
    user_id: NonEmptyId
    session_id: Annotated[str, Field(max_length=256)] | None = None
    kind: KpiKind
    event_time_ms: EventTimeMs
    revenue: FiniteFloat | None = Field(default=None, ge=0.0, validate_default=True)
    item_id: Annotated[str, Field(max_length=256)] | None = None

    @field_validator("revenue", mode="after")
    @classmethod
    def _purchase_needs_revenue(cls, v: float | None, info: ValidationInfo) -> float | None:
        # A field validator (not a model validator) so the error's location names ``revenue``.
        if info.data.get("kind") == "purchase" and (v is None or v <= 0.0):
            raise ValueError("revenue must be > 0 for kind 'purchase'")
        return v


class KpiEvent(KpiEventBase):
    """One delayed business event on ``recsys.kpi.raw``."""

    received_at_ms: int = Field(ge=0)


class SessionStep(_Record):
    event_id: NonEmptyId
    item_id: str
    position: int = Field(ge=0)
    event_time_ms: int
    clicked: bool
    dwell_seconds: FiniteFloat
    skipped: bool
    predicted_relevance: FiniteFloat
    behavior_propensity: FiniteFloat
    reward: FiniteFloat
    weights_version: int = Field(ge=0)
    return_: FiniteFloat = Field(alias="return")
    #: per-step credit (share of the session advantage); absent in records of older controllers
    credit: FiniteFloat | None = None
    request_id: str = ""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, serialize_by_alias=True)


class SessionKpi(_Record):
    revenue: FiniteFloat = 0.0
    purchases: int = Field(default=0, ge=0)
    return_visits: int = Field(default=0, ge=0)
    subscriptions: int = Field(default=0, ge=0)
    event_ids: list[str] = Field(default_factory=list)


class SessionBusiness(_Record):
    """The parts of the blended business reward (outer controller >= 0.2)."""

    revenue: FiniteFloat = 0.0  # ln(1 + revenue)
    ndcg10: FiniteFloat = 0.0  # mean NDCG@10 of the served slates (logged positions, engagement gains)
    engagement: FiniteFloat = 0.0  # mean per-step engagement
    retention: FiniteFloat = 0.0  # 0.5 * return visits + subscriptions
    priorities: dict[str, FiniteFloat] = Field(default_factory=dict)
    value: FiniteFloat = 0.0  # clip(sum priority_k * part_k, -5, 5)


class SessionTuner(_Record):
    """The weight tuner's behaviour for this session: the action (one level per group) and its probability."""

    action: list[int]
    propensity: FiniteFloat
    explore: bool = False
    policy_version: int = 0
    #: from the session's reward events (the scorer's exploration slice): the action id the session
    #: was served with (its first step's; None = the segment's weights) and the document version
    explore_action: int | None = None
    exploration_version: int | None = None
    #: True when action/propensity are the scorer's logged ones (else the controller's own estimate)
    logged: bool = False


class SessionRecord(_Record):
    """One closed session on ``recsys.sessions``.

    Since revision support a session may be emitted more than once: ``revision`` 0 when it closes,
    then 1, 2, ... when late actions or delayed KPI events amend it. Every revision is the complete
    session; consumers keep the highest ``revision`` per ``session_key``.
    """

    session_key: NonEmptyId
    user_id: NonEmptyId
    segment: str
    start_ms: int
    end_ms: int
    closed_at_ms: int
    n_steps: int = Field(ge=1)
    gamma: FiniteFloat = Field(ge=0.0, le=1.0)
    steps: list[SessionStep]
    discounted_return: FiniteFloat
    kpi: SessionKpi
    business_reward: FiniteFloat
    weights_versions: list[int]
    revision: int = Field(default=0, ge=0)
    business: SessionBusiness | None = None
    kappa: FiniteFloat | None = None
    blended_reward: FiniteFloat | None = (
        None  # clip((1 - kappa) * discounted_return + kappa * business.value)
    )
    baseline: FiniteFloat | None = None  # EMA baseline before this session
    advantage: FiniteFloat | None = None  # clip(blended_reward - baseline, -5, 5)
    credit_model: str | None = None  # "discounted" or "gated-attention:v<N>"
    tuner: SessionTuner | None = None

    def to_json_bytes(self) -> bytes:
        # exclude_unset: a record round-trips byte-for-byte; fields a producer did not set stay absent
        return self.model_dump_json(by_alias=True, exclude_unset=True).encode("utf-8")
