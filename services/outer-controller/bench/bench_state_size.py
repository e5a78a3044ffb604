"""``make bench-state``: how much memory the outer controller's session state takes per stored event,
in the controller's process and in Redis, and what that means for a deployment's attribution window.

Every action a user's open or retained sessions hold stays in the state until the session leaves the
attribution window (``OUTER_ATTRIBUTION_WINDOW_SECONDS``, 7 days by default): an amendment re-emits the
complete session, its steps included. So the state holds about ``rate x (attribution window + gap)``
events, and its size is that times the bytes per stored event measured here.

In process, without Kafka or Redis: ``--events`` of the bench's stream (``bench_outer.events``: the
scored-action records the scorer writes, ``--users`` users, 2 ms apart, sessions closing after a 60 s gap
and retained for the whole window) go into one window; then the controller's RSS growth per event, and
the durable forms' sizes: the delta lines of a checkpoint every 5 000 events (the Redis log) and every
user's full state at the end (the Redis snapshot hash), raw and LZ4-compressed as the store writes
them. Prints the figures and a sizing table; nothing is kept. Settings come from the environment as
the service reads them (``OUTER_ATTRIBUTION_WINDOW_SECONDS``, ``OUTER_COMPRESS_RETAINED``).
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
from pathlib import Path

from bench_outer import events

from rewardloop_outer.fastevents import parse_action
from rewardloop_outer.native_window import NativeSessionWindow
from rewardloop_outer.session_window import SessionWindow
from rewardloop_outer.settings import OuterSettings
from rewardloop_outer.state_store import pack

GAP_MS = 60_000
CHECKPOINT_EVERY = 5_000  # events between checkpoints: close_due, the delta written and committed


def rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    m = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert m is not None
    return int(m.group(1)) * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--impl", choices=["native", "python"], default="native")
    ap.add_argument(
        "--rates", type=float, nargs="+", default=[100, 1_000, 10_000], help="events/s for the sizing table"
    )
    a = ap.parse_args()
    settings = OuterSettings()  # OUTER_ATTRIBUTION_WINDOW_SECONDS, OUTER_COMPRESS_RETAINED
    window_s = settings.outer_attribution_window_seconds
    raws = [raw for _, raw in events(a.events, a.users)]
    raw_bytes = sum(map(len, raws)) / a.events
    attribution_ms = round(window_s * 1000)
    w: NativeSessionWindow | SessionWindow
    if a.impl == "native":
        w = NativeSessionWindow(
            GAP_MS, attribution_window_ms=attribution_ms, compress_retained=settings.outer_compress_retained
        )
    else:
        w = SessionWindow(GAP_MS, attribution_window_ms=attribution_ms)
    log_raw = log_lz4 = 0

    def checkpoint() -> None:  # as the engine's: what closed, then the delta written and committed
        nonlocal log_raw, log_lz4
        w.close_due(0)
        delta = w.delta()
        log_raw += len(delta)
        log_lz4 += len(pack(delta))
        w.commit_delta()

    gc.collect()
    before = rss_bytes()
    for i, raw in enumerate(raws):
        if isinstance(w, NativeSessionWindow):
            w.add_action_raw(raw, 0)
        else:
            w.add_action(parse_action(raw), 0)
        if i % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1:
            checkpoint()
    checkpoint()
    gc.collect()
    per_event = (rss_bytes() - before) / a.events
    snapshot = [s for s in (w.user_state(u) for u in w.users()) if s is not None]
    log_raw, log_lz4 = log_raw / a.events, log_lz4 / a.events
    snap_raw = sum(map(len, snapshot)) / a.events
    snap_lz4 = sum(len(pack(s)) for s in snapshot) / a.events
    what = a.impl if a.impl == "python" else f"native (compress_retained={settings.outer_compress_retained})"
    print(f"{a.events} events ({raw_bytes:.0f} bytes of JSON each), {a.users} users, {what} window:")
    print(f"  stored: {w.open_count} open and {w.retained_count} retained sessions")
    print(f"  controller RSS per stored event: {per_event:,.0f} bytes")
    print(f"  Redis log (delta lines) per event: {log_raw:,.0f} bytes raw, {log_lz4:,.0f} LZ4")
    print(f"  Redis snapshot (full user states) per event: {snap_raw:,.0f} bytes raw, {snap_lz4:,.0f} LZ4")
    # Redis holds the snapshot plus a log of at most max(OUTER_STATE_LOG_MAX_BYTES, snapshot) before
    # compaction trims it: up to about twice the snapshot
    redis_hi = 2 * snap_lz4
    days = window_s / 86_400
    print(f"\nsizing, attribution window {days:g} days (OUTER_ATTRIBUTION_WINDOW_SECONDS={window_s:g}):")
    print(f"{'events/s':>10} {'stored events':>15} {'controller RAM':>15} {'Redis (up to)':>14}")
    for rate in a.rates:
        n = rate * (window_s + GAP_MS / 1000)
        print(f"{rate:>10,.0f} {n:>15,.0f} {n * per_event / 1e9:>12,.1f} GB {n * redis_hi / 1e9:>11,.1f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
