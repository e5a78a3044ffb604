"""A reproducible input stream for the durability / scale-out tests (shared by the fake-Kafka and
the real-Kafka tests): many users' sessions interleaved in event time, with local disorder,
duplicates, KPIs (in-session, after the close, much later), late-but-allowed and too-late actions."""

from __future__ import annotations

import json
import random
from typing import Any

from rewardloop_common.kafka import encode_json
from rewardloop_common.testing import make_kpi_event, make_reward_event

R, K = "recsys.reward.raw", "recsys.kpi.raw"
T0 = 1_763_888_400_000


def stream_items(seed: int, users: int, gap: int, r: str = R, k: str = K) -> list[tuple[str, str, bytes]]:
    rng = random.Random(seed)
    items: list[tuple[float, str, str, bytes]] = []
    for u in range(users):
        user = f"u{u}"
        t = T0 + rng.randint(0, 5 * gap)
        for s in range(3):
            n = rng.randint(1, 6)
            for i in range(n):
                ev = make_reward_event(
                    f"{user}-{s}-{i}",
                    user,
                    t + i * gap // 4,
                    position=i % 3,
                    request_id=f"{user}-{s}-r{i // 3}",
                    clicked=rng.random() < 0.4,
                    dwell_seconds=round(rng.random() * 60, 3),
                    reward=round(rng.random(), 3),
                )
                arrival = t + i * gap // 4 + rng.randint(0, gap // 3)  # out of order within the session
                items.append((arrival, r, user, encode_json(ev)))
                if rng.random() < 0.1:  # a duplicate
                    items.append((arrival + 5, r, user, encode_json(ev)))
            end = t + (n - 1) * gap // 4
            if rng.random() < 0.5:
                kp = make_kpi_event(f"{user}-k{s}", user, "purchase", end + 1, revenue=10.0)
                delay = rng.choice([10, 2 * gap, 20 * gap])  # in-session, after the close, much later
                items.append((end + delay, k, user, encode_json(kp)))
            if rng.random() < 0.2:  # a late action within the allowed lateness -> amendment
                ev = make_reward_event(f"{user}-{s}-late", user, t - gap // 4, reward=0.5)
                items.append((end + 3 * gap // 2, r, user, encode_json(ev)))
            if rng.random() < 0.1:  # far too late -> late-events record
                ev = make_reward_event(f"{user}-{s}-toolate", user, t - 30 * gap, reward=0.5)
                items.append((end + gap, r, user, encode_json(ev)))
            t += 4 * gap + rng.randint(0, gap)
    items.sort(key=lambda x: x[0])
    return [(topic, user, value) for _, topic, user, value in items]


def tick_event(partition: int, gap: int) -> bytes:
    """A far-future action that moves a partition's watermark past every session."""
    return encode_json(make_reward_event(f"tick-{partition}", f"tick-{partition}", T0 + 1000 * gap))


#: Fields that legitimately depend on processing timing, left out of "the same sessions":
#: when the session was closed / how many amendments it took, and the running EMA baseline (with
#: the advantage and the per-step credit derived from it), which depends on whether a delayed KPI
#: made it into a session's first revision -- that is decided by the cross-topic interleaving.
TIMING_FIELDS = ("closed_at_ms", "revision", "baseline", "advantage")


def final_sessions(records: list[bytes]) -> dict[str, dict[str, Any]]:
    """Highest revision per session_key, without :data:`TIMING_FIELDS` (credits checked for sanity)."""
    best: dict[str, dict[str, Any]] = {}
    for v in records:
        rec = json.loads(v)
        cur = best.get(rec["session_key"])
        if cur is None or rec["revision"] >= cur["revision"]:
            best[rec["session_key"]] = rec
    out = {}
    for k, r in best.items():
        credits = [st.pop("credit") for st in r["steps"]]
        assert abs(sum(credits) - r["advantage"]) < 1e-6, (k, credits, r["advantage"])
        out[k] = {x: y for x, y in r.items() if x not in TIMING_FIELDS}
    return out
