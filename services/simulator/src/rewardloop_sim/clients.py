"""The simulator's two outputs: slates to the scorer over gRPC, business events to the gateway over HTTP."""

from __future__ import annotations

import uuid

import grpc
import httpx

from rewardloop_common.proto import inner_reward_pb2, inner_reward_pb2_grpc

from .world import Purchase, ShownItem, User


class ScorerClient:
    def __init__(self, addr: str, timeout_s: float = 2.0) -> None:
        self.channel = grpc.insecure_channel(addr)
        self.stub = inner_reward_pb2_grpc.InnerRewardStub(self.channel)
        self.timeout_s = timeout_s

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def score_slate(
        self, user: User, session_id: str, shown: list[ShownItem], t_ms: int
    ) -> inner_reward_pb2.ScoreSlateResponse:
        request_id = uuid.uuid4().hex
        feedbacks = [
            inner_reward_pb2.Feedback(
                event_id=f"{request_id}-{s.position}",
                request_id=request_id,
                user_id=user.user_id,
                session_id=session_id,
                item_id=s.item.item_id,
                position=s.position,
                event_time_ms=t_ms + 100 * s.position,
                clicked=s.clicked,
                dwell_seconds=s.dwell_seconds,
                skipped=s.skipped,
                predicted_relevance=s.predicted_relevance,
                behavior_propensity=max(s.propensity, 1e-6),
                segment=user.segment,
            )
            for s in shown
        ]
        return self.stub.ScoreSlate(
            inner_reward_pb2.ScoreSlateRequest(feedbacks=feedbacks), timeout=self.timeout_s
        )

    def get_config(self, segment: str = "default") -> inner_reward_pb2.GetConfigResponse:
        return self.stub.GetConfig(inner_reward_pb2.GetConfigRequest(segment=segment), timeout=self.timeout_s)

    def close(self) -> None:
        self.channel.close()


class GatewayClient:
    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s)

    def post_purchase(self, user: User, session_id: str, purchase: Purchase, t_ms: int) -> str:
        event_id = f"kpi-{uuid.uuid4().hex}"
        response = self.http.post(
            "/v1/kpi-events",
            json={
                "event_id": event_id,
                "user_id": user.user_id,
                "session_id": session_id,
                "kind": "purchase",
                "event_time_ms": t_ms,
                "revenue": purchase.revenue,
                "item_id": purchase.item.item_id,
            },
        )
        response.raise_for_status()
        return event_id

    def close(self) -> None:
        self.http.close()
