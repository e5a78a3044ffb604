"""``make bench-tuner``: how many closed sessions the DRL-PUT tuner needs to find and push a better weight
action, as a function of the exploration slice.

The same synthetic world as ``tests/test_outer_exploration.py``: sessions are served exactly as the scorer
would (the contract's hash assigns each user the segment's weights or one of the 27 grid actions of the
document the tuner published); the action with one more click level earns 4 clicks and business value 3,
every other action 0-1 clicks and value 0. The tuner runs with its defaults (batches of 200 sessions,
``OUTER_TUNER_LR`` 0.5, ``OUTER_KL_MAX`` 0.3, min sessions 1, shadow off) against a real Redis (a private
``redis-server`` on a free loopback port). Per slice and seed: the number of sessions until the push, or
"none" within ``--max-batches``. Prints one table; nothing is written.

This measures the *signal* side of the slice trade-off (how fast the tuner learns); the cost side (share
of users served non-default weights) is the slice itself.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import redis
from prometheus_client import CollectorRegistry

from rewardloop_common.events import SessionBusiness, SessionRecord
from rewardloop_common.logging import configure_logging
from rewardloop_common.testing import RedisServer, make_session_record, make_session_step
from rewardloop_common.weights import BUILTIN_WEIGHTS
from rewardloop_common.weights_store import WeightsStore
from rewardloop_outer.metrics import OuterMetrics
from rewardloop_outer.tuner import WeightTuner, encode_action, nearest_action
from rewardloop_outer.weight_update import FirstStep

BATCH = 200
SEGMENT = "default"


def session(i: int, clicks: int, value: float) -> SessionRecord:
    steps = [
        make_session_step(t, session=f"u{i}", item_id="i", position=t, clicked=t < clicks, dwell_seconds=5.0)
        for t in range(4)
    ]
    return make_session_record(
        steps, user_id=f"u{i}", business_reward=value, business=SessionBusiness(value=value), kappa=0.5
    )


def sessions_to_push(store: WeightsStore, slice_: float, seed: int, max_batches: int) -> int | None:
    """Sessions served until the tuner pushes the better action (None: not within ``max_batches``)."""
    store.client.flushall()
    t = WeightTuner(
        store,
        OuterMetrics(CollectorRegistry()),
        batch_sessions=BATCH,
        min_sessions=1,
        shadow=False,
        explore_fraction=slice_,
    )
    t.maybe_publish_exploration(SEGMENT)
    current = nearest_action(BUILTIN_WEIGHTS, t.levels)
    best = encode_action([current[0] + 1, current[1], current[2]], t.levels)
    rng = random.Random(seed)
    for i in range(max_batches * BATCH):
        doc = store.get_exploration(SEGMENT)
        assert doc is not None
        act, prob = doc.assign(f"s{seed}-user-{i}")
        clicks, value = (4, 3.0) if act == best else (rng.randrange(2), 0.0)
        rec = session(i, clicks, value)
        first = FirstStep(act, prob, doc.version)
        rec.tuner = t.behaviour(rec, first)
        d = t.add(rec)
        if d is not None and d.decision == "pushed":
            return i + 1
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=float, nargs="+", default=[0.2, 0.05, 0.02, 0.005])
    ap.add_argument("--seeds", type=int, default=5, help="seeds per slice (0..N-1)")
    ap.add_argument("--max-batches", type=int, default=400, help="give up after this many batches of 200")
    a = ap.parse_args()
    configure_logging(level="WARNING")  # one line per tuner decision otherwise
    t0 = time.time()
    with RedisServer() as srv:
        store = WeightsStore(redis.Redis.from_url(srv.url))
        print(f"{'slice':>7} {'explored/batch':>14} {'sessions to push, per seed':<46} {'median':>8}")
        for s in a.slices:
            found = [sessions_to_push(store, s, seed, a.max_batches) for seed in range(a.seeds)]
            cells = " ".join(f"{n:>8}" if n is not None else f"{'none':>8}" for n in found)
            ok = sorted(n for n in found if n is not None)
            med = f"{statistics.median(ok):>8.0f}" if len(ok) == len(found) else f"{'-':>8}"
            print(f"{s:>7g} {s * BATCH:>14.1f} {cells:<46} {med}", flush=True)
    print(f"({a.seeds} seeds, batches of {BATCH}, at most {a.max_batches} batches; {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
