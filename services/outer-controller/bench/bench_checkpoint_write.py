"""``make bench-checkpoint``: how long one fenced checkpoint write takes the controller, with redis-py's
pure-Python command packing/reply parsing side by side with hiredis's (the default since hiredis is a
dependency).

The write is the one :class:`~rewardloop_outer.state_store.RedisStateStore` sends at a checkpoint while
compaction runs: one delta blob, ``--users`` compacted user states (each a real native window's state of
a user with ``--actions`` open actions on average, from ``bench_outer.events``, LZ4-compressed as
stored), their snapshot sequence numbers, an outbox batch and the shard's meta. Against a private
``redis-server`` on a free loopback port; the two clients alternate, ``--rounds`` writes each per round.
Prints the median and P90 ms per write of each and their ratio; nothing is kept.

Why it matters: compaction makes a checkpoint carry thousands of user states, and a checkpoint that does
not run on the writer thread blocks the loop for the whole write (at 50 000 events/s the inline write
grew from 5-9 ms to 20-43 ms as compaction started, and the event-to-state lag with it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import redis
from bench_outer import events
from redis._parsers import _RESP2Parser
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer

from rewardloop_common.testing import RedisServer
from rewardloop_outer.native_window import NativeSessionWindow
from rewardloop_outer.state_log import Compaction
from rewardloop_outer.state_store import RedisStateStore, ShardDelta

GAP_MS = 30 * 60_000


def user_states(users: int, actions: int) -> dict[str, bytes]:
    """Each user's durable state from a native window fed the bench's stream (``bench_outer.events``)
    of ``users * actions`` scored actions: ``actions`` of them per user on average, one open session."""
    w = NativeSessionWindow(GAP_MS)
    for _, raw in events(users * actions, users):
        w.add_action_raw(raw, 0)
    states = {u: w.user_state(u) for u in sorted(w.users())}
    return {u: s for u, s in states.items() if s is not None}


def delta(states: dict[str, bytes], log_blob: bytes) -> ShardDelta:
    return ShardDelta(
        0,
        1,
        log_append=log_blob,
        compaction=Compaction(users_set=dict(states), seq=7, log_trim=0),
        meta={"offsets": {"recsys.reward.raw": 123_456}, "log_base": 3, "next_batch": 9},
        outbox_set={"b:9": b"x" * 20_000},
    )


def python_client(url: str) -> redis.Redis:
    """redis-py with its pure-Python packer and parser (what it uses when hiredis is not installed)."""
    enc = Encoder("utf-8", "strict", False)
    return redis.Redis.from_url(
        url, parser_class=_RESP2Parser, command_packer=PythonRespSerializer(6000, enc.encode)
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=3000, help="compacted user states per write")
    ap.add_argument("--actions", type=int, default=8, help="open actions per user")
    ap.add_argument("--rounds", type=int, default=10, help="alternations of the two clients")
    ap.add_argument("--writes", type=int, default=5, help="writes per client per round")
    a = ap.parse_args()
    states = user_states(a.users, a.actions)
    log_blob = b"\n".join(list(states.values())[: max(1, a.users // 6)])
    size = sum(map(len, states.values()))
    each = size / len(states)
    print(f"{len(states)} user states, {each:.0f} bytes each (JSON), delta blob {len(log_blob)} bytes")
    with RedisServer() as srv:
        clients = {"python": python_client(srv.url), "hiredis": redis.Redis.from_url(srv.url)}
        took: dict[str, list[float]] = {k: [] for k in clients}
        for c in clients.values():
            c.set(RedisStateStore(c, "bench").key(0, "epoch"), 1)
            RedisStateStore(c, "bench").checkpoint([delta(states, log_blob)])  # warm-up
        for _ in range(a.rounds):
            for name, c in clients.items():
                store = RedisStateStore(c, "bench")
                for _ in range(a.writes):
                    d = delta(states, log_blob)
                    t0 = time.perf_counter()
                    store.checkpoint([d])
                    took[name].append((time.perf_counter() - t0) * 1000)
    med = {k: statistics.median(v) for k, v in took.items()}
    for k, v in took.items():
        p90 = statistics.quantiles(v, n=10)[-1]
        print(f"{k:>8}: median {med[k]:6.1f} ms   P90 {p90:6.1f} ms   ({len(v)} writes)")
    print(f"hiredis / python (median): {med['hiredis'] / med['python']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
