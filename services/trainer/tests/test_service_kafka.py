"""The trainer's Kafka path against a real broker (deploy/local/start.sh, STACK_COMPONENTS="kafka")."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_service import _record

from rewardloop_common.kafka import make_producer
from rewardloop_common.testing import LocalStackError, local_stack
from rewardloop_outer.credit import GatedAttentionModel
from rewardloop_trainer.__main__ import main

REPO = Path(__file__).resolve().parents[3]
# ports and RUN_DIR of this test's own broker (never the stack's defaults)
KAFKA_ENV = {
    "RUN_DIR": str(REPO / ".run" / "trainer-it"),
    "KAFKA_PORT": "29592",
    "KAFKA_CONTROLLER_PORT": "29593",
    "STACK_COMPONENTS": "kafka",
    "START_TIMEOUT": "120",
}


@pytest.fixture(scope="module")
def kafka_bootstrap() -> Iterator[str]:
    """A broker on a clean slate, stopped after the module. Fails (never skips) when it cannot start,
    e.g. the Kafka jars are missing: run deploy/local/install.sh."""
    try:
        with local_stack(REPO, KAFKA_ENV, wipe=("kafka-data",)):
            yield f"127.0.0.1:{KAFKA_ENV['KAFKA_PORT']}"
    except LocalStackError as exc:
        pytest.fail(f"could not start Kafka: {exc}", pytrace=False)


@pytest.mark.integration
def test_kafka_round_writes_a_loadable_artefact(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"recsys.sessions.trainer-it-{uuid.uuid4().hex[:8]}"  # a fresh topic: no records of old runs
    rng = np.random.default_rng(7)
    producer = make_producer(kafka_bootstrap, client_id="trainer-it")
    records = [_record(rng, i) for i in range(40)]
    for rec in records:
        producer.produce(topic, key=rec.session_key.encode(), value=rec.to_json_bytes())
    producer.produce(topic, key=b"bad", value=b'{"not": "a session"}')  # counted and skipped
    assert producer.flush(30) == 0, "records not delivered to the broker"

    model_dir = tmp_path / "models"
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC_SESSIONS": topic,
        "TRAINER_CONSUMER_GROUP": f"trainer-it-{uuid.uuid4().hex[:8]}",
        "TRAINER_BATCH_SESSIONS": "41",  # the 40 records and the invalid one: exactly one round
        "TRAINER_METRICS_PORT": "0",
    }.items():
        monkeypatch.setenv(name, value)
    rc = main(
        [
            "--kafka",
            "--model-dir",
            str(model_dir),
            "--epochs",
            "2",
            "--max-rounds",
            "1",
            "--max-seconds",
            "90",
        ]
    )
    assert rc == 0
    assert "kafka: 1 training round(s)" in capsys.readouterr().out
    model = GatedAttentionModel.load(model_dir / "credit-model-v1.npz")
    assert model.version == 1
    shares = model.shares(records[0].steps)  # type: ignore[arg-type]  # steps carry the Action fields
    assert len(shares) == records[0].n_steps and abs(sum(shares) - 1.0) < 1e-9
