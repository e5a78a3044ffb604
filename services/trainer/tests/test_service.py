from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from rewardloop_common.events import SessionKpi, SessionRecord
from rewardloop_common.testing import make_session_record, make_session_step
from rewardloop_outer.credit import GatedAttentionModel
from rewardloop_trainer.__main__ import main
from rewardloop_trainer.service import TrainerMetrics, TrainerSettings, parse_records, serve_metrics


def _record(rng: np.random.Generator, i: int, revision: int = 0) -> SessionRecord:
    n = int(rng.integers(3, 15))
    bought = rng.random() < 0.4
    cause = int(rng.integers(n))
    steps = []
    for t in range(n):
        caused = t == cause and bought
        clicked = caused or rng.random() < 0.2
        steps.append(
            make_session_step(
                t,
                session=f"u{i}",
                event_time_ms=1_000 * t,
                clicked=clicked,
                dwell_seconds=200.0 if caused else (10.0 if clicked else 0.0),
                skipped=not clicked,
                predicted_relevance=0.9 if caused else 0.3,
                behavior_propensity=0.1,
                reward=1.0 if clicked else -0.1,
            )
        )
    return make_session_record(
        steps,
        user_id=f"u{i}",
        gamma=0.9,
        kpi=SessionKpi(revenue=30.0 if bought else 0.0, purchases=int(bought)),
        business_reward=float(np.log1p(30.0)) if bought else 0.0,
        revision=revision,
    )


@pytest.fixture
def sessions_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    lines = [_record(rng, i).to_json_bytes().decode() for i in range(120)]
    lines.append('{"not": "a session"}')
    p = tmp_path / "sessions.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_parse_keeps_highest_revision_and_counts_invalid() -> None:
    rng = np.random.default_rng(0)
    r0 = _record(rng, 1, revision=0)
    r1 = r0.model_copy(update={"revision": 1, "business_reward": 9.0})
    m = TrainerMetrics()
    out = parse_records([r1.to_json_bytes(), r0.to_json_bytes(), b"garbage", b""], m)
    assert len(out) == 1 and out[0].revision == 1 and out[0].business_reward == 9.0
    assert m.registry.get_sample_value("rewardloop_trainer_invalid_records_total") == 1.0


def test_cli_from_file_writes_loadable_versions(
    sessions_file: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("TRAINER_METRICS_PORT", "0")
    out_dir = tmp_path / "models"
    assert main(["--from-file", str(sessions_file), "--model-dir", str(out_dir), "--epochs", "3"]) == 0
    assert "promoted" in capsys.readouterr().out
    model = GatedAttentionModel.load(out_dir / "credit-model-v1.npz")
    assert model.version == 1
    # a second round resumes from v1 and writes v2 only if it is no worse on the held-out sessions
    assert main(["--from-file", str(sessions_file), "--model-dir", str(out_dir), "--epochs", "3"]) == 0
    second = capsys.readouterr().out
    assert ("promoted" in second and (out_dir / "credit-model-v2.npz").exists()) or "blocked_worse" in second


def test_cli_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TRAINER_METRICS_PORT", "0")
    assert main(["--from-file", str(tmp_path / "missing.jsonl"), "--model-dir", str(tmp_path)]) == 2
    assert "no such sessions file" in capsys.readouterr().err
    monkeypatch.delenv("OUTER_CREDIT_MODEL_DIR", raising=False)
    with pytest.raises(SystemExit):
        main(["--from-file", str(tmp_path / "x.jsonl")])


def test_metrics_endpoint() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = TrainerMetrics()
    m.promotions.labels("promoted").inc()
    m.version.set(3)
    serve_metrics(TrainerSettings(trainer_metrics_port=port), m)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'rewardloop_trainer_promotions_total{decision="promoted"} 1.0' in body
    assert "rewardloop_trainer_checkpoint_version 3.0" in body
