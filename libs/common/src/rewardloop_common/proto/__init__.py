"""Generated gRPC stubs for proto/rewardloop/v1/inner_reward.proto.

The stubs live in ``rewardloop_common/proto/gen/`` (git-ignored) and are produced by ``make proto``
(``.venv/bin/python libs/common/scripts/gen_proto.py``). Usage::

    from rewardloop_common.proto import inner_reward_pb2, inner_reward_pb2_grpc
"""

from __future__ import annotations

try:
    from .gen.rewardloop.v1 import inner_reward_pb2, inner_reward_pb2_grpc
except ImportError as exc:  # pragma: no cover - exercised only without generated stubs
    raise ImportError(
        "rewardloop_common.proto: generated gRPC stubs are missing "
        "(libs/common/src/rewardloop_common/proto/gen). Run `make proto` "
        "(or `.venv/bin/python libs/common/scripts/gen_proto.py`) first."
    ) from exc

__all__ = ["inner_reward_pb2", "inner_reward_pb2_grpc"]
