"""A shard's delta log and its *incremental* compaction into the snapshot hash (:mod:`.state_store`).

Every checkpoint appends one blob of delta lines to the shard's log; blob ``i`` of the Redis list has
the sequence number ``log_base + i`` (``log_base`` is in the shard's meta). Compaction writes a user's
full state into the snapshot hash together with the sequence number it reflects (``snapseq``: "every
blob up to this one is in it"); a restore skips that user's lines in blobs at or below it. So the
snapshot can be brought up to date a few users per checkpoint, oldest first, and the log trimmed from
the front as soon as no user needs its first blobs any more.

**When** (since 2026-12-07's sixth session): a pass starts when the log is larger than
``OUTER_STATE_LOG_MAX_BYTES`` and the snapshot (as below) *and* at least ``OUTER_STATE_LOG_GARBAGE_RATIO``
(default 0.5) of its bytes are dead -- superseded by later lines: every line a delta writes but the
appended ``a``/``k`` event lines (``SessionWindow.delta_garbage``: an ``o``/``r`` line replaces the user's
last one, an ``f`` line and the full state after it replace all of its earlier lines, a ``d`` line
removes them; their own size stands in for what they make dead). A pass rewrites every user the log
holds lines of: over a log of live events (sessions still in the attribution window, 7 days by default)
it wrote the same events a second time and freed nothing -- at 10^5 events/s of the simulator's traffic
the first pass began ~3 s into the stream and took ~0.14 s more of the loop thread per second while it ran
(``make bench-outer``). Waiting for dead bytes keeps the log at most about twice what it holds live
(restores read it whole), as before the snapshot and log together were at most twice the state;
``OUTER_STATE_LOG_GARBAGE_RATIO=0`` is the size rule alone.

Why not all at once (as before): once the log passed ``OUTER_STATE_LOG_MAX_BYTES`` one checkpoint
wrote the full state of every user changed since the last snapshot -- at 5*10^4 events/s tens of MB
in one step, 0.2-0.4 s of the controller's loop, the source of the event-to-state lag's P99 (1.0 s
with it, 0.37 s with compaction switched off, measured side by side). Now each checkpoint compacts at
most ``COMPACT_RATIO`` times the bytes it appended (at least ``COMPACT_MIN_BYTES``), which still
outruns the log's growth, from when the log passes the limit (or the snapshot's size, if larger: see
:meth:`StateLog.compact`) until it is back under half of it.

A user without state when its turn comes is removed from the hash (and ``snapseq``): its last lines
in the log are then its ``d`` (state gone) line, so replaying any suffix of its lines leaves nothing.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import orjson

#: a checkpoint compacts at most this many times the bytes it appended ...
COMPACT_RATIO = 2
#: ... and at least this many (a quiet shard still finishes its compaction)
COMPACT_MIN_BYTES = 256 * 1024

# every state line starts '["<op>",<user as a JSON string>,' (the line format: .session_window)
_LINE_USER = re.compile(rb'\["[horakfd]",("(?:[^"\\]|\\.)*")')


def line_user(line: bytes) -> str:
    m = _LINE_USER.match(line)
    if m is None:
        raise ValueError(f"not a state line: {line[:80]!r}")
    return orjson.loads(m.group(1))  # type: ignore[no-any-return]


@dataclass
class Compaction:
    """What one checkpoint writes into the snapshot: user states, removals, and the log's new front."""

    users_set: dict[str, bytes] = field(default_factory=dict)
    users_del: list[str] = field(default_factory=list)
    seq: int = -1  # the sequence number users_set reflect
    log_trim: int = 0  # blobs to drop from the front of the log (after this checkpoint's blob)


UserState = Callable[[str], bytes | None]


class UncoveredUsers:
    """The users whose lines in the log the snapshot does not cover yet, each with the first blob it
    has such lines in; oldest first (a user enters once, at the newest blob, and leaves only from the
    front -- so the first entry holds the log back)."""

    def __init__(self) -> None:
        self._first: dict[str, int] = {}

    def mark(self, users: Iterable[str], seq: int) -> None:
        """``users`` have lines in blob ``seq`` (a user uncovered from an earlier blob stays so)."""
        for u in users:
            self._first.setdefault(u, seq)

    def take(self, budget: int, user_state: UserState) -> list[tuple[str, bytes | None]]:
        """Remove the oldest users with their full states (``None``: no state left) until the states'
        bytes reach ``budget``."""
        out: list[tuple[str, bytes | None]] = []
        first = self._first
        while first and budget > 0:
            user = next(iter(first))
            del first[user]
            st = user_state(user)
            if st is not None:
                budget -= len(st)
            out.append((user, st))
        return out

    def front(self) -> int | None:
        """The first blob some user still needs (``None``: none)."""
        return next(iter(self._first.values()), None)

    def items(self) -> list[tuple[str, int]]:
        return list(self._first.items())

    def __len__(self) -> int:
        return len(self._first)


class NativeUncovered:
    """:class:`UncoveredUsers` kept by the native window (``NativeWindow.uncovered_*``): its
    ``take_delta`` marks a checkpoint's changed users there, so the take builds no Python str, set or
    dict entry per changed user (at 5*10^4 events/s the dirty set, marking it and the commit were
    ~40 % of the take)."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def mark(self, users: Iterable[str], seq: int) -> None:
        self.core.uncovered_mark(list(users), seq)

    def take(self, budget: int, user_state: UserState) -> list[tuple[str, bytes | None]]:
        return self.core.compact_users(budget)  # type: ignore[no-any-return]  # its own states

    def front(self) -> int | None:
        return self.core.uncovered_front()  # type: ignore[no-any-return]

    def items(self) -> list[tuple[str, int]]:
        return self.core.uncovered_items()  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return self.core.uncovered_len  # type: ignore[no-any-return]


@dataclass
class StateLog:
    """The in-memory bookkeeping of a shard's durable log (sizes, front, users not yet compacted)."""

    base: int = 0  # sequence number of the log's first blob
    sizes: deque[int] = field(default_factory=deque)  # each blob's size (uncompressed), oldest first
    log_bytes: int = 0  # their sum
    uncovered: UncoveredUsers | NativeUncovered = field(default_factory=UncoveredUsers)
    dead: deque[int] = field(default_factory=deque)  # each blob's superseding bytes (delta_garbage)
    dead_bytes: int = 0  # their sum
    compacting: bool = False
    snap_size: dict[str, int] = field(default_factory=dict)  # user -> size of its snapshot entry
    snap_bytes: int = 0  # their sum: the snapshot's size

    @property
    def next_seq(self) -> int:
        return self.base + len(self.sizes)

    def appended(self, size: int, users: Iterable[str] = (), dead: int = 0) -> None:
        """A blob of ``size`` bytes with lines of ``users`` was appended (it gets :attr:`next_seq`),
        ``dead`` of them superseding earlier lines (the delta's ``delta_garbage``); the native window
        marks its users itself (``take_delta``)."""
        seq = self.next_seq
        self.sizes.append(size)
        self.log_bytes += size
        self.dead.append(dead)
        self.dead_bytes += dead
        self.uncovered.mark(users, seq)

    def keep_natively(self, core: Any) -> None:
        """From now on the native window ``core`` keeps the uncovered users (after a restore: the
        ones found so far move there, oldest first)."""
        native = NativeUncovered(core)
        for seq, group in groupby(self.uncovered.items(), key=lambda kv: kv[1]):
            native.mark([u for u, _ in group], seq)
        self.uncovered = native

    def snapshot_set(self, user: str, size: int | None) -> None:
        """The user's snapshot entry is now ``size`` bytes (``None``: removed)."""
        self.snap_bytes -= self.snap_size.pop(user, 0)
        if size is not None:
            self.snap_size[user] = size
            self.snap_bytes += size

    def compact(
        self, user_state: UserState, appended: int, log_max: int, garbage_ratio: float = 0.0
    ) -> Compaction:
        """One checkpoint's share of the compaction: from when the log passes ``log_max`` -- or the
        snapshot's size, if larger -- with at least ``garbage_ratio`` of its bytes dead (module doc),
        until it is under half of that size."""
        c = Compaction(seq=self.next_seq - 1)
        # the threshold grows with the snapshot (as Redis's AOF rewrite does at 100 % growth): every
        # user's full state is rewritten about once per pass, so with a fixed limit below the state's
        # size the passes would never end (each of them writes the whole state for half a log of
        # deltas); with it, the bytes compaction writes stay at most about twice the deltas'
        limit = max(log_max, self.snap_bytes)
        if self.log_bytes > limit and self.dead_bytes >= garbage_ratio * self.log_bytes:
            self.compacting = True
        if not self.compacting:
            return c
        budget = max(COMPACT_RATIO * appended, COMPACT_MIN_BYTES)
        for user, st in self.uncovered.take(budget, user_state):
            if st is None:
                c.users_del.append(user)
                self.snapshot_set(user, None)
            else:
                c.users_set[user] = st
                self.snapshot_set(user, len(st))
        front = self.uncovered.front()
        front = self.next_seq if front is None else front
        c.log_trim = front - self.base
        for _ in range(c.log_trim):
            self.log_bytes -= self.sizes.popleft()
            self.dead_bytes -= self.dead.popleft()
        self.base = front
        if self.log_bytes <= limit // 2:
            self.compacting = False
        return c


def restore_log(
    blobs: list[bytes], base: int, snapseq: dict[str, int], snapshot: dict[str, bytes]
) -> tuple[list[bytes], StateLog]:
    """The log blobs as a window restores them (each user's lines that its snapshot covers left out),
    and the log's bookkeeping (which users the snapshot does not cover yet, from which blob; each
    blob's dead bytes, as the take counted them; the snapshot's entry sizes)."""
    log = StateLog(base=base)
    for user, st in snapshot.items():
        log.snapshot_set(user, len(st))
    out: list[bytes] = []
    for i, blob in enumerate(blobs):
        seq = base + i
        keep: list[bytes] = []
        users: set[str] = set()
        dead, full_of = 0, None  # full_of: the user whose f-block the lines are in
        for line in blob.split(b"\n") if blob else ():
            user = line_user(line)
            if line[2:3] == b"f":
                full_of = user
            elif user != full_of:
                full_of = None
            if full_of is not None or line[2:3] not in b"ak":
                dead += len(line)
            if snapseq.get(user, -1) >= seq:
                continue
            keep.append(line)
            users.add(user)
        log.appended(len(blob), users, dead)
        out.append(b"\n".join(keep))
    return out, log
