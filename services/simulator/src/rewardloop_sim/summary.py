"""What the loop did during a run, read back from the real Kafka topics, Redis and the scorer."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rewardloop_common.weights_store import WeightsStore

from .clients import ScorerClient
from .topics import count_since, session_revisions_since

if TYPE_CHECKING:
    from .run import RunStats, SimSettings


@dataclass
class Summary:
    actions_scored: int
    slates: int
    sessions_simulated: int
    purchases: int
    topic_events: dict[str, int]
    sessions_closed: int  # revision 0 records: sessions this run closed
    amendments: int = 0  # higher revisions: late events / delayed KPIs for already closed sessions
    pushes: list[dict[str, object]] = field(default_factory=list)
    redis_version: int = 0
    scorer_version: int = 0
    scorer_weights: dict[str, float] = field(default_factory=dict)
    versions_scored_with: list[int] = field(default_factory=list)

    @property
    def scorer_on_newest(self) -> bool:
        return self.scorer_version == self.redis_version

    @property
    def ok(self) -> bool:
        return (
            self.actions_scored > 0
            and self.sessions_closed > 0
            and bool(self.pushes)
            and self.scorer_on_newest
        )


def collect_summary(settings: SimSettings, stats: RunStats, *, since_ms: int, settle_s: float) -> Summary:
    """Wait (bounded) for the outer loop to settle, then read back the topics, Redis and the scorer."""
    store = WeightsStore.from_url(settings.redis_url)
    scorer = ScorerClient(settings.inner_reward_grpc_addr)
    deadline = time.monotonic() + settle_s
    previous_sessions = -1
    try:
        while True:
            sessions = count_since(settings.kafka_bootstrap_servers, settings.kafka_topic_sessions, since_ms)
            redis_doc = store.get("default")
            config = scorer.get_config("default")
            stable = sessions == previous_sessions and config.version == redis_doc.version
            if stable or time.monotonic() >= deadline:
                break
            previous_sessions = sessions
            time.sleep(2.0)
        topics = {
            topic: count_since(settings.kafka_bootstrap_servers, topic, since_ms)
            for topic in (
                settings.kafka_topic_reward_raw,
                settings.kafka_topic_kpi_raw,
                settings.kafka_topic_sessions,
            )
        }
        closed, amended = session_revisions_since(
            settings.kafka_bootstrap_servers, settings.kafka_topic_sessions, since_ms
        )
        pushes = [
            {"version": d.version, "source": d.source, "weights": d.weights.model_dump(), "reason": d.reason}
            for d in reversed(store.history("default", 100))
            if d.updated_at_ms >= since_ms
        ]
        return Summary(
            actions_scored=stats.actions_scored,
            slates=stats.slates,
            sessions_simulated=stats.sessions_ended,
            purchases=stats.purchases,
            topic_events=topics,
            sessions_closed=closed,
            amendments=amended,
            pushes=pushes,
            redis_version=redis_doc.version,
            scorer_version=config.version,
            scorer_weights={
                "click": config.weights.click,
                "dwell": config.weights.dwell,
                "skip": config.weights.skip,
                "relevance": config.weights.relevance,
            },
            versions_scored_with=sorted(stats.versions_seen or ()),
        )
    finally:
        scorer.close()


def print_summary(s: Summary) -> None:
    def fmt(w: dict[str, float]) -> str:
        return " ".join(f"{k}={v:+.3f}" for k, v in w.items())

    lines = [
        "",
        "rewardloop run summary",
        "======================",
        f"actions scored (gRPC)        {s.actions_scored:>8}  in {s.slates} slates",
        f"sessions simulated           {s.sessions_simulated:>8}  with {s.purchases} purchases",
        "events on Kafka (this run):",
        *(f"  {topic:<27}{n:>8}" for topic, n in s.topic_events.items()),
        f"sessions closed (outer loop) {s.sessions_closed:>8}",
        f"  + amendments               {s.amendments:>8}  (late events or delayed KPIs for closed sessions)",
        f"weight versions pushed       {len(s.pushes):>8}",
        *(f"  v{p['version']:<4} by {p['source']:<17} {fmt(p['weights'])}" for p in s.pushes),  # type: ignore[arg-type]
        f"newest version in Redis      {s.redis_version:>8}",
        f"scorer now scoring with      {s.scorer_version:>8}  {fmt(s.scorer_weights)}",
        f"versions in this run's scores: {s.versions_scored_with}",
        "",
        "OK: the scorer picked up the outer loop's newest weights without a restart"
        if s.ok
        else "NOT OK: see above (no sessions closed, no push, or the scorer is not on the newest version)",
    ]
    print("\n".join(lines))
