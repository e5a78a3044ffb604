"""The trainer service: closed sessions in, versioned credit-model artefacts out.

Sources: ``recsys.sessions`` on Kafka (``--kafka``; manual commits after each round's artefact is
written) or a JSON-lines file of session records (``--from-file``). Records are validated with
:class:`rewardloop_common.events.SessionRecord`; for every ``session_key`` the highest ``revision``
wins. A round trains the gated-attention credit model on the session's step features
(:func:`rewardloop_outer.credit.step_features`) against the session's ``business_reward``
(``TRAINER_OBJECTIVE``: decomposition or reconstruction; no labels needed), resuming from the newest
checkpoint, and writes version N+1 into
``OUTER_CREDIT_MODEL_DIR`` -- but only when its held-out error on that objective is no worse than the
current version's (``rewardloop_trainer_promotions_total{decision}``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Info, start_http_server
from pydantic import Field, ValidationError
from pydantic_settings import SettingsConfigDict

from rewardloop_common.events import SessionRecord
from rewardloop_common.logging import get_logger
from rewardloop_common.settings import CommonSettings
from rewardloop_outer.credit import step_features

from . import checkpoints
from .action_ope import ActionEstimates, estimate_actions
from .credit.gated_attention import GatedAttentionCredit, credit_loss, pack_sessions, train_credit_model

log = get_logger("rewardloop.trainer")


class TrainerSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    trainer_metrics_port: int = Field(default=9103, ge=0, le=65535)
    trainer_metrics_host: str = "127.0.0.1"
    trainer_consumer_group: str = Field(default="rewardloop-trainer", min_length=1)
    trainer_batch_sessions: int = Field(default=500, ge=10)
    trainer_epochs: int = Field(default=20, ge=1)
    trainer_lr: float = Field(default=1e-2, gt=0)
    trainer_gate_weight: float = Field(default=0.0, ge=0)
    #: decomposition beat the pooled reconstruction on the simulator's ground truth (learning benchmark §2)
    trainer_objective: Literal["decomposition", "reconstruction"] = "decomposition"
    trainer_holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    trainer_seed: int = 0
    outer_credit_model_dir: str = ""


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build = Info("rewardloop_trainer_build", "trainer build", registry=r)
        self.build.info({"version": "0.1.0", "torch": torch.__version__})
        self.loss = Gauge("rewardloop_trainer_loss", "last training epoch's mean loss", registry=r)
        self.holdout_mse = Gauge(
            "rewardloop_trainer_holdout_mse", "held-out MSE of the training objective", ["model"], registry=r
        )
        self.promotions = Counter(
            "rewardloop_trainer_promotions_total", "promotion decisions", ["decision"], registry=r
        )
        self.sessions = Counter("rewardloop_trainer_sessions_total", "session records consumed", registry=r)
        self.invalid = Counter(
            "rewardloop_trainer_invalid_records_total", "records that failed validation", registry=r
        )
        self.version = Gauge("rewardloop_trainer_checkpoint_version", "newest written checkpoint", registry=r)
        self.ope_value = Gauge(
            "rewardloop_trainer_ope_value",
            "off-policy value (business reward/session) of the behaviour and each explored weight action",
            ["policy", "estimator"],
            registry=r,
        )
        self.ope_lower = Gauge(
            "rewardloop_trainer_ope_lower",
            "95 % lower bound of rewardloop_trainer_ope_value",
            ["policy", "estimator"],
            registry=r,
        )
        self.ope_ess = Gauge(
            "rewardloop_trainer_ope_effective_sample_size",
            "effective sample size (sum w)^2/sum w^2 of each policy's importance weights",
            ["policy"],
            registry=r,
        )
        self.round_seconds = Gauge(
            "rewardloop_trainer_round_seconds", "last training round's duration", registry=r
        )


def publish_action_ope(records: list[SessionRecord], metrics: TrainerMetrics) -> list[ActionEstimates]:
    """Estimate the explored weight actions (action_ope.py) and replace the OPE gauges with them."""
    found = estimate_actions(records)
    for g in (metrics.ope_value, metrics.ope_lower, metrics.ope_ess):
        g.clear()  # actions of an older exploration document must not linger
    for a in found:
        for e in a.estimates:
            metrics.ope_value.labels(a.policy, e.estimator).set(e.value)
            metrics.ope_lower.labels(a.policy, e.estimator).set(e.lower)
        metrics.ope_ess.labels(a.policy).set(a.estimates[0].ess)
    return found


def parse_records(lines: Iterable[bytes | str], metrics: TrainerMetrics | None = None) -> list[SessionRecord]:
    """Valid records, highest revision per session_key; invalid lines are logged, counted, skipped."""
    best: dict[str, SessionRecord] = {}
    for i, line in enumerate(lines):
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        if not line.strip():
            continue
        try:
            rec = SessionRecord.model_validate_json(line)
        except ValidationError as exc:
            if metrics is not None:
                metrics.invalid.inc()
            log.warning("invalid session record skipped", line=i + 1, error=str(exc.errors()[:1]))
            continue
        old = best.get(rec.session_key)
        if old is None or rec.revision >= old.revision:
            best[rec.session_key] = rec
    if metrics is not None:
        metrics.sessions.inc(len(best))
    return list(best.values())


def dataset(records: list[SessionRecord]) -> tuple[list[np.ndarray], np.ndarray]:
    feats = [step_features(r.steps) for r in records if r.steps]  # type: ignore[arg-type]
    rewards = np.array([r.business_reward for r in records if r.steps], dtype=np.float64)
    return feats, rewards


def holdout_mse(
    model: GatedAttentionCredit,
    feats: list[np.ndarray],
    rewards: np.ndarray,
    objective: str = "reconstruction",
) -> float:
    """The held-out error of the training objective (reward reconstruction or decomposition MSE)."""
    with torch.no_grad():
        _, parts = credit_loss(
            model, pack_sessions(feats), torch.as_tensor(rewards), gate_weight=0.0, objective=objective
        )
    return parts[objective]


@dataclass(frozen=True)
class RoundResult:
    decision: str  # "promoted" | "blocked_worse" | "skipped_too_few"
    version: int | None
    loss: float | None
    holdout_new: float | None
    holdout_old: float | None
    n_sessions: int


def train_round(
    records: list[SessionRecord], settings: TrainerSettings, metrics: TrainerMetrics
) -> RoundResult:
    model_dir = settings.outer_credit_model_dir
    if not model_dir:
        raise ValueError("OUTER_CREDIT_MODEL_DIR (or --model-dir) must name the artefact directory")
    t0 = time.monotonic()
    publish_action_ope(records, metrics)
    feats, rewards = dataset(records)
    n = len(feats)
    if n < 10:
        metrics.promotions.labels("skipped_too_few").inc()
        return RoundResult("skipped_too_few", None, None, None, None, n)
    rng = np.random.default_rng(settings.trainer_seed)
    order = rng.permutation(n)
    n_hold = max(2, int(n * settings.trainer_holdout_fraction))
    hold, train = order[:n_hold], order[n_hold:]
    prev = checkpoints.load_latest(model_dir)
    start = None
    if prev is not None:
        start = GatedAttentionCredit(hidden=prev[0].V.shape[0], attention=prev[0].V.shape[1])
        start.load_state_dict(prev[0].state_dict())
    res = train_credit_model(
        [feats[i] for i in train],
        rewards[train],
        epochs=settings.trainer_epochs,
        lr=settings.trainer_lr,
        gate_weight=settings.trainer_gate_weight,
        seed=settings.trainer_seed,
        model=start,
        progress=True,
        objective=settings.trainer_objective,
    )
    hold_feats, hold_r = [feats[i] for i in hold], rewards[hold]
    obj = settings.trainer_objective
    new_mse = holdout_mse(res.model, hold_feats, hold_r, obj)
    old_mse = holdout_mse(prev[0], hold_feats, hold_r, obj) if prev is not None else None
    metrics.loss.set(res.losses[-1])
    metrics.holdout_mse.labels("candidate").set(new_mse)
    if old_mse is not None:
        metrics.holdout_mse.labels("current").set(old_mse)
    metrics.round_seconds.set(time.monotonic() - t0)
    if old_mse is not None and new_mse > old_mse:
        metrics.promotions.labels("blocked_worse").inc()
        log.info("candidate credit model not promoted", holdout_new=new_mse, holdout_old=old_mse)
        return RoundResult("blocked_worse", None, res.losses[-1], new_mse, old_mse, n)
    meta = {
        "sessions": n,
        "objective": obj,
        "holdout_mse": new_mse,
        "loss": res.losses[-1],
        "written_at": time.time(),
    }
    ck = checkpoints.save(res.model, model_dir, meta)
    metrics.version.set(ck.version)
    metrics.promotions.labels("promoted").inc()
    log.info("credit model written", artefact=str(ck.artefact), holdout_mse=new_mse, sessions=n)
    return RoundResult("promoted", ck.version, res.losses[-1], new_mse, old_mse, n)


def read_file(path: Path) -> Iterator[str]:
    if not path.is_file():
        raise FileNotFoundError(f"no such sessions file: {path}")
    with path.open("r", encoding="utf-8") as f:
        yield from f


def run_kafka(
    settings: TrainerSettings,
    metrics: TrainerMetrics,
    max_rounds: int | None = None,
    max_seconds: float | None = None,
) -> int:
    """Consume ``recsys.sessions``; train a round every ``TRAINER_BATCH_SESSIONS`` records. Stops after
    ``max_rounds`` rounds or ``max_seconds`` (checked between polls; a round in progress finishes and
    records not yet trained on stay uncommitted). Returns the number of rounds."""
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    from rewardloop_common.kafka import make_consumer

    consumer = make_consumer(
        settings.kafka_bootstrap_servers,
        settings.trainer_consumer_group,
        [settings.kafka_topic_sessions],
        client_id="rewardloop-trainer",
    )
    rounds = 0
    buffer: list[bytes] = []
    try:
        while (max_rounds is None or rounds < max_rounds) and (
            deadline is None or time.monotonic() < deadline
        ):
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                log.warning("kafka error", error=str(msg.error()))
                continue
            value = msg.value()
            if value:
                buffer.append(value)
            if len(buffer) >= settings.trainer_batch_sessions:
                result = train_round(parse_records(buffer, metrics), settings, metrics)
                log.info("training round", **json.loads(json.dumps(result.__dict__)))
                consumer.commit(asynchronous=False)
                buffer = []
                rounds += 1
    finally:
        consumer.close()
    return rounds


def serve_metrics(settings: TrainerSettings, metrics: TrainerMetrics) -> None:
    start_http_server(
        settings.trainer_metrics_port, addr=settings.trainer_metrics_host, registry=metrics.registry
    )
