from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from rewardloop_common import admin
from rewardloop_common.logging import configure_logging, get_logger
from rewardloop_common.settings import CommonSettings

REPO = Path(__file__).resolve().parents[3]
GEN_SCRIPT = REPO / "libs/common/scripts/gen_proto.py"


def test_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "KAFKA_TOPIC_SESSIONS", "LOG_FORMAT"):
        monkeypatch.delenv(var, raising=False)
    s = CommonSettings()
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.all_topics == ["recsys.reward.raw", "recsys.kpi.raw", "recsys.sessions", "recsys.sessions.late"]
    assert s.log_format == "console"
    monkeypatch.setenv("KAFKA_TOPIC_SESSIONS", "x.sessions")
    monkeypatch.setenv("LOG_FORMAT", "json")
    s = CommonSettings()
    assert s.kafka_topic_sessions == "x.sessions" and s.log_format == "json"


def test_logging_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "INFO")
    get_logger("t").info("hello", n=1)
    err = capsys.readouterr().err
    assert '"event": "hello"' in err and '"n": 1' in err
    configure_logging("console", "INFO")


def test_admin_help_and_unreachable_broker(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        admin.main(["create-topics", "--help"])
    assert exc.value.code == 0
    assert "--partitions" in capsys.readouterr().out
    assert admin.main(["create-topics", "--bootstrap-servers", "127.0.0.1:1", "--wait", "0"]) == 1


def test_admin_init_and_show_weights(redis_server, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert admin.main(["init-weights", "--redis-url", redis_server.url]) == 0
    assert admin.main(["init-weights", "--redis-url", redis_server.url]) == 0
    assert admin.main(["show-weights", "--redis-url", redis_server.url, "--history", "5"]) == 0
    out = capsys.readouterr().out
    assert '"source": "bootstrap"' in out


def test_gen_proto_into_tmp_dir(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    subprocess.run([sys.executable, str(GEN_SCRIPT), "--out-dir", str(out)], check=True, capture_output=True)
    grpc_file = out / "rewardloop/v1/inner_reward_pb2_grpc.py"
    assert (out / "__init__.py").exists() and (out / "rewardloop/v1/__init__.py").exists()
    assert "from rewardloop_common.proto.gen.rewardloop.v1 import inner_reward_pb2" in grpc_file.read_text()


def test_proto_stubs_import() -> None:
    gen = REPO / "libs/common/src/rewardloop_common/proto/gen/rewardloop/v1/inner_reward_pb2.py"
    if not gen.exists():
        subprocess.run([sys.executable, str(GEN_SCRIPT)], check=True, capture_output=True)
        importlib.invalidate_caches()
    from rewardloop_common.proto import inner_reward_pb2, inner_reward_pb2_grpc

    fb = inner_reward_pb2.Feedback(event_id="e", user_id="u", dwell_seconds=1.5)
    assert inner_reward_pb2.Feedback.FromString(fb.SerializeToString()).dwell_seconds == 1.5
    assert hasattr(inner_reward_pb2_grpc, "InnerRewardStub")
