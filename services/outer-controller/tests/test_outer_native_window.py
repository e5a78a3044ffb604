"""The native session window (``rewardloop_outer_native.NativeWindow`` behind
:class:`~rewardloop_outer.native_window.NativeSessionWindow`) against the Python reference
(:class:`~rewardloop_outer.session_window.SessionWindow`), side by side on randomized streams: the same
result per event, the same closed sessions and late events, the same counters and byte-identical state
lines (per user), through commits, restores from snapshots and from delta logs; plus the reference's own
window tests run against the native window."""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import test_outer_lateness
import test_outer_session_window

from rewardloop_common.events import KpiEvent, RewardEvent
from rewardloop_common.testing import make_kpi_event
from rewardloop_outer.fastevents import Kpi, kpi_from_model, parse_action
from rewardloop_outer.native_window import NativeClosed, NativeSessionWindow
from rewardloop_outer.session_window import AddResult, ClosedSession, OpenSession, SessionWindow
from rewardloop_outer.state_log import StateLog, restore_log

T0 = 1_763_888_400_000

# ------------------------------------------------------------------------------ the reference's tests

_REFERENCE_TESTS = [
    (mod, name, fn)
    for mod in (test_outer_session_window, test_outer_lateness)
    for name, fn in inspect.getmembers(mod, inspect.isfunction)
    if name.startswith("test_") and fn.__module__ == mod.__name__
]


#: the window's counters (restored from the shard meta by the engine, so settable too)
COUNTERS = (
    "max_event_ms",
    "duplicates",
    "late_actions",
    "too_late_actions",
    "unattributed_kpis",
    "amendments",
    "kpis_pending",
)


@pytest.mark.parametrize(
    ("mod", "fn"), [(m, f) for m, _, f in _REFERENCE_TESTS], ids=[n for _, n, _ in _REFERENCE_TESTS]
)
def test_reference_window_tests_pass_on_the_native_window(
    mod: Any, fn: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(_REFERENCE_TESTS) >= 15
    monkeypatch.setattr(mod, "SessionWindow", NativeSessionWindow)
    fn()


# ----------------------------------------------------------------------------------- explicit cases


def _raw(eid: str, user: str, t: int, **extra: Any) -> bytes:
    d: dict[str, Any] = {
        "event_id": eid,
        "request_id": f"r-{eid}",
        "user_id": user,
        "session_id": f"s-{user}",
        "item_id": f"i-{eid}",
        "position": 0,
        "event_time_ms": t,
        "clicked": False,
        "dwell_seconds": 0.0,
        "skipped": False,
        "predicted_relevance": 0.5,
        "behavior_propensity": 0.5,
        "segment": "default",
        "reward": 0.25,
        "raw_reward": 0.25,
        "parts": {"click": 0.0, "dwell": 0.0, "skip": 0.0, "relevance": 0.0},
        "weights_version": 1,
        "scored_at_ms": t + 1,
    }
    d.update(extra)
    return orjson.dumps(d)


def test_a_record_with_a_raw_newline_takes_the_python_path() -> None:
    raw = _raw("e1", "u1", T0).replace(b',"user_id"', b',\n"user_id"')
    nw, w = NativeSessionWindow(1_000), SessionWindow(1_000)
    assert nw.core.add_action_raw(raw, 0) == -1  # not the common shape: the caller validates in Python
    assert nw.core.open_count == 0 and nw.core.max_event_ms == 0  # and nothing changed
    assert nw.add_action_raw(raw, 0) is AddResult.ADDED  # the wrapper does: re-encoded without newline
    assert w.add_action(parse_action(raw), 0) is AddResult.ADDED
    assert nw.user_state("u1") == w.user_state("u1")
    assert b"\n" not in nw.delta().split(b"\n", 1)[1]


def test_an_integer_beyond_64_bits_is_a_value_error_naming_the_field() -> None:
    raw = _raw("e1", "u1", T0, position=2**63)
    ev = parse_action(raw)  # valid for the schema (an unbounded int)
    nw = NativeSessionWindow(1_000)
    assert nw.core.add_action_raw(raw, 0) == -1
    with pytest.raises(ValueError, match="position"):
        nw.add_action(ev, 0)
    with pytest.raises(ValueError, match="position"):
        nw.add_action_raw(raw, 0)
    k = kpi_from_model(make_kpi_event("k1", "u1", event_time_ms=2**64))
    with pytest.raises(ValueError, match="event_time_ms"):
        nw.add_kpi(k, 0)
    assert nw.open_count == 0 and nw.users() == set()


def test_invalid_settings_raise_like_the_reference() -> None:
    for kw in (
        {"gap_ms": 0},
        {"gap_ms": 5, "allowed_lateness_ms": -1},
        {"gap_ms": 5, "attribution_window_ms": -1},
    ):
        with pytest.raises(ValueError) as ref:
            SessionWindow(**kw)
        with pytest.raises(ValueError) as nat:
            NativeSessionWindow(**kw)
        assert str(ref.value) == str(nat.value)


def test_result_codes_and_closed_wrapper() -> None:
    core = NativeSessionWindow(1_000).core
    assert [core.ADDED, core.DUPLICATE, core.UNATTRIBUTED, core.AMENDED, core.PENDING, core.LATE] == list(
        range(6)
    )
    nw = NativeSessionWindow(1_000, allowed_lateness_ms=500)
    assert nw.add_action_raw(_raw("e1", "u1", T0), 0) is AddResult.ADDED
    [c] = nw.close_all(0)
    assert isinstance(c, NativeClosed) and c._actions is None  # nothing materialized yet
    assert c.native.n_actions == 1 and [a.event_id for a in c.actions] == ["e1"] and c.tuner is None
    nw.set_tuner("u1", T0, {"x": 0.1, "s": 'é"\n'})
    nw.set_baseline("u1", T0, 0.3)
    assert nw.retained_sessions("u1")[0].tuner == {"x": 0.1, "s": 'é"\n'}
    assert c.with_baseline(0.5).baseline == 0.5 and c.baseline is None


# ------------------------------------------------------------------------- the differential scenarios

USERS = ["u1", "u2", "u10", "ü-ser", 'q"x', "a\\b", "z\u2028"]
SEGMENTS = ["default", "news", "", "sport"]
KINDS = ["purchase", "return_visit", "subscription"]


def _closed_view(c: ClosedSession | NativeClosed) -> tuple[Any, ...]:
    return (
        c.user_id,
        c.segment,
        c.start_ms,
        c.end_ms,
        c.closed_at_ms,
        c.revision,
        c.key_ms,
        c.baseline,
        c.tuner,
        c.session_key,
        [(a.event_id, a.raw) for a in c.actions],
        [(k.event_id, k.raw, k.kind, k.revenue, k.event_time_ms) for k in c.kpis],
    )


def _session_view(s: OpenSession | None) -> Any:
    if s is None:
        return None
    return (
        s.meta(),
        [(a.event_id, a.raw) for a in s.actions.values()],
        [(k.event_id, k.raw) for k in s.kpis.values()],
    )


def _by_user(blob: bytes) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    if blob:
        for line in blob.split(b"\n"):
            out.setdefault(orjson.loads(line)[1], []).append(line)
    return out


class Pair:
    """The reference and the native window, fed the same inputs, compared after every step."""

    def __init__(self, rng: random.Random, gap: int, lateness: int | None, attr: int) -> None:
        self.rng = rng
        self.kw = {"allowed_lateness_ms": lateness, "attribution_window_ms": attr}
        self.gap = gap
        self.py = SessionWindow(gap, **self.kw)  # type: ignore[arg-type]
        # retained sessions' actions compressed (the default) or kept parsed: either, per seed
        self.nkw = {**self.kw, "compress_retained": rng.random() < 0.7}
        self.nw = NativeSessionWindow(gap, **self.nkw)  # type: ignore[arg-type]
        self.py_log: list[bytes] = []  # every committed delta since the last snapshot (the restore input)
        self.nw_log: list[bytes] = []
        self.closed_keys: list[tuple[str, int]] = []
        self.steps = 0
        self.dead_seen = 0  # commits whose delta superseded earlier lines
        self.removed_seen = 0  # ... and of them, those with events gone from the state

    # ------------------------------------------------------------------------------------ checks

    def check(self) -> None:
        py, nw = self.py, self.nw
        self.steps += 1
        for name in (*COUNTERS, "open_count", "retained_count", "pending_kpi_count"):
            assert getattr(py, name) == getattr(nw, name), name
        assert py.dirty == nw.dirty
        assert len(py._open_due) == nw.core.due_len()  # the same queue entries, stale ones included
        users = py.users()
        assert users == nw.users()
        for u in [*USERS, "nobody"]:
            assert py.user_state(u) == nw.user_state(u), u
            assert _session_view(py.open_session(u)) == _session_view(nw.open_session(u)), u
            assert [_session_view(r) for r in py.retained_sessions(u)] == [
                _session_view(r) for r in nw.retained_sessions(u)
            ], u
        assert _by_user(py.delta()) == _by_user(nw.delta())
        assert py.delta_garbage == nw.delta_garbage
        some = self.rng.sample(USERS, 3)
        assert py.delta(some) == nw.delta(some)  # explicit users: the same order, the same bytes
        assert py.delta_garbage == nw.delta_garbage

    def same_closed(self, a: list[ClosedSession], b: list[NativeClosed]) -> None:
        assert [_closed_view(x) for x in a] == [_closed_view(x) for x in b]
        for c in a:
            if c.revision == 0:
                self.closed_keys.append((c.user_id, c.key_ms or c.start_ms))

    # ---------------------------------------------------------------------------------- actions

    def add_action(self, raw: bytes, now: int, as_model: bool = False) -> None:
        if as_model:  # a validated model: its canonical JSON is what both windows keep
            m = RewardEvent.model_validate_json(raw)
            r1, r2 = self.py.add_action(m, now), self.nw.add_action(m, now)
            assert r1 is r2, (r1, r2)
            return
        r1 = self.py.add_action(parse_action(raw), now)
        r2 = self.nw.add_action_raw(raw, now)
        assert r1 is r2, (r1, r2)

    def add_kpi(self, k: Kpi, now: int, as_model: bool) -> None:
        r1 = self.py.add_kpi(k, now)
        r2 = self.nw.add_kpi(KpiEvent.model_validate_json(k.raw) if as_model else k, now)
        assert r1 is r2, (r1, r2)

    def close_due(self, now: int) -> None:
        self.same_closed(self.py.close_due(now), self.nw.close_due(now))
        assert self.py.drain_late() == self.nw.drain_late()

    def close_all(self, now: int) -> None:
        self.same_closed(self.py.close_all(now), self.nw.close_all(now))
        assert self.py.drain_late() == self.nw.drain_late()

    def commit(self) -> None:
        d1, d2 = self.py.delta(), self.nw.delta()
        assert _by_user(d1) == _by_user(d2)
        # the bytes made dead: the superseding lines as the delta is written and as a restore reads
        # them back from the blob, plus (the take alone knows them) the lines of what left the state
        dead = restore_log([d1], 0, {}, {})[1].dead_bytes
        assert self.py.delta_garbage == self.nw.delta_garbage == dead + self.py._removed
        self.dead_seen += self.py.delta_garbage > 0
        self.removed_seen += self.py._removed > 0
        self.py_log.append(d1)
        self.nw_log.append(d2)
        self.py.commit_delta()
        self.nw.commit_delta()
        if self.rng.random() < 0.5:
            self.replays()

    def replays(self) -> None:
        """The committed log, replayed as it is (no close_due first), is the live state -- retained
        sessions amended but not yet re-emitted included: every delta carries what changed (an ``o``
        header line only when no retained session's metadata did)."""
        users = sorted(self.py.users())
        py2 = SessionWindow(self.gap, **self.kw)  # type: ignore[arg-type]
        nw2 = NativeSessionWindow(self.gap, **self.nkw)  # type: ignore[arg-type]
        assert py2.restore(self.py_log) == nw2.restore(self.nw_log) == len(users)
        for u in users:
            assert py2.user_state(u) == self.py.user_state(u), u
            assert nw2.user_state(u) == self.nw.user_state(u), u

    def restore(self, from_snapshot: bool) -> None:
        """What the engine does after a restart: a fresh window from the durable state, counters set."""
        self.close_due(0)  # the closed-but-not-returned queue and late events are not state
        self.commit()
        py, nw = self.py, self.nw
        users = sorted(py.users())
        if from_snapshot:
            py_blobs = [b for u in users if (b := py.user_state(u)) is not None]
            nw_blobs = [b for u in users if (b := nw.user_state(u)) is not None]
            assert len(py_blobs) == len(users)
            assert py_blobs == nw_blobs
        else:
            py_blobs, nw_blobs = list(self.py_log), list(self.nw_log)
        py2 = SessionWindow(self.gap, **self.kw)  # type: ignore[arg-type]
        nw2 = NativeSessionWindow(self.gap, **self.nkw)  # type: ignore[arg-type]
        assert py2.restore(py_blobs) == nw2.restore(nw_blobs) == len(users)
        if self.rng.random() < 0.3:  # and the native window restores the reference's lines too
            nw3 = NativeSessionWindow(self.gap, **self.nkw)  # type: ignore[arg-type]
            assert nw3.restore(py_blobs) == len(users)
            assert [nw3.user_state(u) for u in users] == [py.user_state(u) for u in users]
        for name in COUNTERS:
            setattr(py2, name, getattr(py, name))
            setattr(nw2, name, getattr(nw, name))
        for u in users:
            assert py2.user_state(u) == py.user_state(u) == nw2.user_state(u) == nw.user_state(u)
        assert py2.dirty == nw2.dirty == set()
        self.py, self.nw = py2, nw2
        if from_snapshot:
            self.py_log, self.nw_log = py_blobs, nw_blobs


def _action_raw(rng: random.Random, eid: str, user: str, t: int) -> bytes:
    extra: dict[str, Any] = {
        "position": rng.randrange(4),
        "clicked": rng.random() < 0.4,
        "dwell_seconds": rng.choice([0.0, 1.5, round(rng.random() * 60, 3), 7]),
        "segment": rng.choice(SEGMENTS),
        "reward": rng.choice([0.0, 0.1, 1e-7, -0.5, 1e20, round(rng.random(), 6)]),
        "predicted_relevance": rng.choice([0.0, 0.5, 1, 0.333]),
    }
    x = rng.random()
    if x < 0.15:
        extra.update(explore_action=rng.randrange(3), explore_probability=0.25, exploration_version=2)
    elif x < 0.2:
        extra.update(explore_action=None, explore_probability=None)
    elif x < 0.25:
        extra["extra_field"] = {"nested": [1, 2.5, "x"]}
    raw = _raw(eid, user, t, **extra)
    y = rng.random()
    if y < 0.04:  # a lax value: the pydantic path (canonical JSON kept)
        raw = raw.replace(b'"position":', b'"position":"', 1).replace(
            b',"event_time_ms"', b'","event_time_ms"', 1
        )
    elif y < 0.07:  # pretty-printed: re-encoded by the Python path
        raw = json.dumps(orjson.loads(raw), indent=1, ensure_ascii=False).encode()
    elif y < 0.1:  # json module spacing (not orjson's): still the common shape, bytes kept as they are
        raw = json.dumps(orjson.loads(raw), ensure_ascii=False).encode()
    return raw


def _near(rng: random.Random, x: int) -> int:
    """``x`` or one off: the boundaries of every comparison (``<=`` vs ``<``) get hit."""
    return x + rng.choice((-1, 0, 0, 1))


def _scenario(seed: int) -> tuple[int, int, int]:
    rng = random.Random(seed)
    gap = rng.choice([1_000, 2_000, 5_000, 999])  # 999: gap // 2 rounds down
    lateness = rng.choice([None, None, 0, gap // 2, 3 * gap, 20 * gap])
    attr = rng.choice([0, 0, gap, 10 * gap, 60 * gap])
    p = Pair(rng, gap, lateness, attr)
    half, late = gap // 2, lateness or 0
    retention, settle = max(gap + late, attr), 2 * gap + late
    users = rng.sample(USERS, rng.randint(1, len(USERS)))
    cursor = T0
    sent: list[bytes] = []
    kpis: list[Kpi] = []
    times: dict[str, list[int]] = {u: [] for u in users}  # each user's action times so far
    ktimes: dict[str, list[int]] = {u: [] for u in users}  # and KPI times
    n_ops = rng.randint(30, 110)
    for i in range(n_ops):
        op = rng.random()
        cursor += rng.choice([0, 1, 10, gap // 10, gap // 3, gap, 3 * gap // 2]) if rng.random() < 0.7 else 0
        user = rng.choice(users)
        ref = rng.choice(times[user]) if times[user] else cursor  # one of the user's action times
        x = rng.random()
        if x < 0.6:
            now = 0  # the event-time clock
        elif x < 0.8:
            now = cursor + rng.randrange(-gap, 4 * gap)
        else:  # on a boundary of the due, retention or settle test for one of the user's events
            now = _near(rng, ref + rng.choice([gap, retention, settle, gap + late]))
        if op < 0.55:
            z = rng.random()
            if z < 0.08 and sent:  # a duplicate (sometimes long after)
                raw = rng.choice(sent)
            else:
                if z < 0.13:
                    t = cursor - rng.randint(2 * gap, 50 * gap)  # very late
                elif z < 0.25:
                    t = cursor - rng.randint(0, 3 * gap)  # out of order
                elif z < 0.28:
                    t = ref  # a tie in time
                elif z < 0.4:  # the edges of a session's span +- gap
                    t = _near(rng, ref + rng.choice([gap, -gap]))
                elif z < 0.45:  # the edge of the allowed lateness
                    t = _near(rng, max(p.py.max_event_ms, now) - gap - late)
                elif z < 0.52 and ktimes[user]:  # a session edge half a gap from a (pending) KPI
                    t = _near(rng, rng.choice(ktimes[user]) + rng.choice([half, -half]))
                else:
                    t = cursor + rng.randint(0, gap // 2)
                t = max(t, 1)
                times[user].append(t)
                raw = _action_raw(rng, f"e{i}-{rng.randrange(3)}", user, t)
                sent.append(raw)
            p.add_action(raw, now, as_model=rng.random() < 0.05)
        elif op < 0.72:
            z = rng.random()
            if z < 0.1 and kpis:
                k = rng.choice(kpis)  # a duplicate
            else:
                off = rng.choice([-3 * gap, -gap, -half, 0, gap // 3, half, gap, attr, 5 * gap, 70 * gap])
                tk = max(1, _near(rng, ref + off))
                ktimes[user].append(tk)
                kind = rng.choice(KINDS)
                rev = rng.choice([10.0, 0.5, 1e-3]) if kind == "purchase" else rng.choice([None, 0.0, 2.5])
                k = kpi_from_model(make_kpi_event(f"k{i}", user, kind, tk, revenue=rev))
                kpis.append(k)
            p.add_kpi(k, now, as_model=rng.random() < 0.2)
        elif op < 0.84:
            p.close_due(now)
        elif op < 0.9 and p.closed_keys:
            user, key = rng.choice(p.closed_keys)
            if rng.random() < 0.5:
                b = rng.choice([0.0, -0.0, 0.1 + 0.2, 1e-7, 1e16, 123456.789, -2.5])
                p.py.set_baseline(user, key, b)
                p.nw.set_baseline(user, key, b)
            else:
                tuner = {
                    "segment": user,
                    "w": [0.1, 1e-7, 1e20, rng.random()],
                    "n": rng.randrange(9),
                    "ok": True,
                }
                p.py.set_tuner(user, key, tuner)
                p.nw.set_tuner(user, key, tuner)
        elif op < 0.96:
            p.commit()
        else:
            p.restore(from_snapshot=rng.random() < 0.5)
        p.check()
    p.close_all(0 if rng.random() < 0.5 else cursor + 100 * gap)
    p.check()
    p.close_due(cursor + 10_000 * gap)  # everything retained expires
    p.check()
    p.restore(from_snapshot=False)
    p.check()
    return p.steps, p.dead_seen, p.removed_seen


@pytest.mark.parametrize("block", range(6))
def test_native_window_matches_the_reference_on_random_streams(block: int) -> None:
    steps = dead_seen = removed_seen = 0
    for seed in range(block * 50, block * 50 + 50):
        try:
            n, dead, removed = _scenario(seed)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}") from exc
        steps, dead_seen, removed_seen = steps + n, dead_seen + dead, removed_seen + removed
    assert steps > 50 * 30 and dead_seen > 50 and removed_seen > 5, (steps, dead_seen, removed_seen)


def test_bench_like_stream_matches_the_reference() -> None:
    """Many users, increasing times (the due queue's sorted run), sessions closing by the gap."""
    gap = 60_000
    py, nw = SessionWindow(gap), NativeSessionWindow(gap)
    for i in range(6_000):
        raw = _raw(f"e{i}", f"u{i % 500}", T0 + i * 150)
        assert py.add_action(parse_action(raw), 0) is nw.add_action_raw(raw, 0)
        if i % 700 == 0:
            assert [_closed_view(c) for c in py.close_due(0)] == [_closed_view(c) for c in nw.close_due(0)]
    assert _by_user(py.delta()) == _by_user(nw.delta())
    assert [_closed_view(c) for c in py.close_all(0)] == [_closed_view(c) for c in nw.close_all(0)]
    assert py.open_count == nw.open_count == 0


def test_native_take_and_compaction_match_the_python_bookkeeping() -> None:
    """``take_delta`` + the native uncovered users (``StateLog.keep_natively``) against the Python
    bookkeeping (``delta``, ``StateLog.appended`` with the dirty users in the same order,
    ``commit_delta``) on two windows fed the same stream: the same blobs, compactions (states written,
    users removed, log trimmed) and log bookkeeping after every checkpoint."""
    gap = 60_000
    py_w, nat_w = NativeSessionWindow(gap), NativeSessionWindow(gap)
    py_log, nat_log = StateLog(), StateLog()
    nat_log.keep_natively(nat_w.core)
    rng = random.Random(7)
    removed = compacted = 0
    for i in range(8_000):
        raw = _raw(f"e{i}", f"u{i // 400 * 20 + rng.randrange(60)}", T0 + i * 40)  # a drifting crowd
        assert py_w.add_action_raw(raw, 0) is nat_w.add_action_raw(raw, 0)
        if i % 97:
            continue
        py_w.close_due(0)
        nat_w.close_due(0)
        dirty = py_w.core.dirty_users()  # the order the native window marks them in
        py_blob = py_w.delta() if dirty else b""
        if py_blob:
            py_log.appended(len(py_blob), dirty)
        nat_blob = nat_w.core.take_delta(nat_log.next_seq)
        if nat_blob:
            nat_log.appended(len(nat_blob))
        assert nat_blob == py_blob
        c_py = py_log.compact(py_w.user_state, len(py_blob), 20_000)
        c_nat = nat_log.compact(nat_w.user_state, len(nat_blob), 20_000)
        py_w.commit_delta()
        assert c_nat == c_py
        assert nat_log.uncovered.items() == py_log.uncovered.items()
        assert (nat_log.base, nat_log.sizes, nat_log.log_bytes, nat_log.snap_bytes, nat_log.compacting) == (
            py_log.base,
            py_log.sizes,
            py_log.log_bytes,
            py_log.snap_bytes,
            py_log.compacting,
        )
        assert not nat_w.dirty
        removed += len(c_nat.users_del)
        compacted += len(c_nat.users_set)
    assert removed >= 20 and compacted >= 200, (removed, compacted)
    assert len(nat_log.uncovered) == nat_w.core.uncovered_len > 0


def test_keep_natively_moves_the_uncovered_users_oldest_first() -> None:
    log = StateLog(base=4)
    log.appended(10, ["a", "b"])
    log.appended(10, ["c", "a"])
    log.appended(10, [])
    log.appended(10, ["d"])
    want = [("a", 4), ("b", 4), ("c", 5), ("d", 7)]
    assert log.uncovered.items() == want
    w = NativeSessionWindow(60_000)
    log.keep_natively(w.core)
    assert log.uncovered.items() == want and len(log.uncovered) == 4
    assert log.uncovered.front() == 4
