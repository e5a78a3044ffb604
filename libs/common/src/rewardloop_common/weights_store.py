"""The weights store in Redis (keys and channel from docs/architecture.md, "Redis: weights").

Every write is ONE atomic Lua script (:data:`PUSH_SCRIPT`):

1. ``INCR rewardloop:weights-version`` -> the new global version ``v``;
2. ``SET rewardloop:weights:<segment>`` to the document with ``"version": v``;
3. ``LPUSH`` the same document to ``rewardloop:weights-history:<segment>`` and ``LTRIM`` it to 100
   (the list holds every written document, newest first: entry 0 is the current one);
4. ``PUBLISH rewardloop:weights-updates {"segment": ..., "version": v}``.

Documents are validated (:class:`~rewardloop_common.weights.WeightsDocument`, bounds included) before
the script runs, so an invalid document is never written. :class:`WeightsStore` uses the sync
``redis.Redis`` client, :class:`AsyncWeightsStore` ``redis.asyncio.Redis``; both share the script.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import redis
import redis.asyncio as aredis
from pydantic import TypeAdapter, ValidationError

from .exploration import (
    EXPLORATION_VERSION_KEY,
    ExplorationAction,
    ExplorationDocument,
    exploration_key,
)
from .weights import (
    DEFAULT_SEGMENT,
    Segment,
    Weights,
    WeightsDocument,
    builtin_document,
)

VERSION_KEY: Final = "rewardloop:weights-version"
DOC_KEY_PREFIX: Final = "rewardloop:weights:"
HISTORY_KEY_PREFIX: Final = "rewardloop:weights-history:"
UPDATES_CHANNEL: Final = "rewardloop:weights-updates"
HISTORY_CAP: Final = 100

# KEYS[1] version counter, KEYS[2] document key, KEYS[3] history list
# ARGV[1] the document after its version field (',"segment":...}'), ARGV[2] history cap,
# ARGV[3] channel, ARGV[4] the segment as a JSON string, ARGV[5] '1' = write only if no document yet
PUSH_SCRIPT: Final = """
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, redis.call('GET', KEYS[2])}
end
local v = redis.call('INCR', KEYS[1])
local doc = '{"version":' .. v .. ARGV[1]
redis.call('SET', KEYS[2], doc)
redis.call('LPUSH', KEYS[3], doc)
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[2]) - 1)
redis.call('PUBLISH', ARGV[3], '{"segment":' .. ARGV[4] .. ',"version":' .. v .. '}')
return {v, doc}
"""

# The exploration document (docs/architecture.md, "Redis: exploration slice"), optionally together with
# a weights document in ONE script, so the scorer never sees new weights with the old exploration grid.
# KEYS[1] exploration version counter, KEYS[2] exploration key, KEYS[3] weights version counter,
# KEYS[4] weights document key, KEYS[5] weights history list
# ARGV[1] the exploration document after its version field, ARGV[2] channel, ARGV[3] the segment as a
# JSON string, ARGV[4] the weights document after its version field ('' = no weights write),
# ARGV[5] history cap
PUSH_EXPLORATION_SCRIPT: Final = """
local wv = 0
local wdoc = false
if ARGV[4] ~= '' then
  wv = redis.call('INCR', KEYS[3])
  wdoc = '{"version":' .. wv .. ARGV[4]
  redis.call('SET', KEYS[4], wdoc)
  redis.call('LPUSH', KEYS[5], wdoc)
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[5]) - 1)
end
local ev = redis.call('INCR', KEYS[1])
local edoc = '{"version":' .. ev .. ARGV[1]
redis.call('SET', KEYS[2], edoc)
local msg = '{"segment":' .. ARGV[3] .. ',"exploration_version":' .. ev
if wv ~= 0 then msg = msg .. ',"version":' .. wv end
redis.call('PUBLISH', ARGV[2], msg .. '}')
return {wv, wdoc, ev, edoc}
"""

_segment_adapter: TypeAdapter[str] = TypeAdapter(Segment)


class InvalidWeightsDocument(ValueError):
    """A document read from Redis does not validate (corrupt or out of bounds)."""


def doc_key(segment: str) -> str:
    return f"{DOC_KEY_PREFIX}{segment}"


def history_key(segment: str) -> str:
    return f"{HISTORY_KEY_PREFIX}{segment}"


def validate_segment(segment: str) -> str:
    return _segment_adapter.validate_python(segment)


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


def parse_document(raw: bytes | str) -> WeightsDocument:
    try:
        return WeightsDocument.model_validate_json(_text(raw))
    except ValidationError as exc:
        raise InvalidWeightsDocument(str(exc)) from exc


def build_push_args(
    segment: str,
    weights: Weights | Mapping[str, Any],
    source: str,
    reason: str,
    now_ms: int | None,
    history_cap: int,
    only_if_absent: bool = False,
) -> tuple[list[str], list[str]]:
    """Validate the new document and return the script's (keys, args). Raises ``ValidationError``."""
    w = weights if isinstance(weights, Weights) else Weights.model_validate(dict(weights))
    draft = WeightsDocument(
        version=0,
        segment=segment,
        weights=w,
        updated_at_ms=int(time.time() * 1000) if now_ms is None else now_ms,
        source=source,
        reason=reason,
    )
    body = draft.model_dump_json(exclude={"version"})
    assert body.startswith("{")
    keys = [VERSION_KEY, doc_key(draft.segment), history_key(draft.segment)]
    args = [
        "," + body[1:],
        str(history_cap),
        UPDATES_CHANNEL,
        json.dumps(draft.segment),
        "1" if only_if_absent else "0",
    ]
    return keys, args


def _script_result(result: Any) -> tuple[bool, WeightsDocument]:
    version, raw = result
    return int(version) != 0, parse_document(raw)


class WeightsStore:
    """Synchronous weights store over ``redis.Redis``."""

    def __init__(self, client: redis.Redis, history_cap: int = HISTORY_CAP) -> None:
        self.client = client
        self.history_cap = history_cap
        self._push = client.register_script(PUSH_SCRIPT)
        self._push_exploration = client.register_script(PUSH_EXPLORATION_SCRIPT)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> WeightsStore:
        return cls(redis.Redis.from_url(url, **kwargs))

    def get_stored(self, segment: str = DEFAULT_SEGMENT) -> WeightsDocument | None:
        """The stored document, ``None`` when absent; raises :class:`InvalidWeightsDocument`."""
        raw = self.client.get(doc_key(validate_segment(segment)))
        return None if raw is None else parse_document(raw)  # type: ignore[arg-type]

    def get(self, segment: str = DEFAULT_SEGMENT) -> WeightsDocument:
        """The segment's document, or the built-in defaults (version 0) when Redis has none."""
        return self.get_stored(segment) or builtin_document(segment)

    def get_effective(self, segment: str = DEFAULT_SEGMENT) -> WeightsDocument:
        """What the scorer uses for ``segment``: its document, else ``default``'s, else built-ins."""
        doc = self.get_stored(segment)
        if doc is None and segment != DEFAULT_SEGMENT:
            doc = self.get_stored(DEFAULT_SEGMENT)
        return doc or builtin_document(DEFAULT_SEGMENT)

    def push(
        self,
        segment: str,
        weights: Weights | Mapping[str, Any],
        source: str,
        reason: str = "",
        now_ms: int | None = None,
    ) -> WeightsDocument:
        """Validate and atomically write a new document; returns it with its new version."""
        keys, args = build_push_args(segment, weights, source, reason, now_ms, self.history_cap)
        return _script_result(self._push(keys=keys, args=args))[1]

    def init_segment(
        self, segment: str = DEFAULT_SEGMENT, weights: Weights | None = None, source: str = "bootstrap"
    ) -> tuple[bool, WeightsDocument]:
        """Write the built-in defaults (or ``weights``) only if the segment has no document yet.

        Returns ``(created, current_document)``; idempotent.
        """
        keys, args = build_push_args(
            segment,
            weights or builtin_document().weights,
            source,
            "initial document (bootstrap)",
            None,
            self.history_cap,
            only_if_absent=True,
        )
        return _script_result(self._push(keys=keys, args=args))

    def history(self, segment: str = DEFAULT_SEGMENT, n: int = 20) -> list[WeightsDocument]:
        """Up to ``n`` written documents, newest first (entry 0 is the current one)."""
        if n <= 0:
            return []
        raws = self.client.lrange(history_key(validate_segment(segment)), 0, n - 1)
        return _parse_history(raws)  # type: ignore[arg-type]

    def segments(self) -> list[str]:
        return sorted(
            _text(k)[len(DOC_KEY_PREFIX) :] for k in self.client.scan_iter(match=DOC_KEY_PREFIX + "*")
        )

    # ------------------------------------------------------------------ exploration documents

    def get_exploration(self, segment: str = DEFAULT_SEGMENT) -> ExplorationDocument | None:
        """The segment's exploration document, ``None`` when absent; raises ``ValidationError``."""
        raw = self.client.get(exploration_key(validate_segment(segment)))
        return None if raw is None else ExplorationDocument.model_validate_json(raw)  # type: ignore[arg-type]

    def push_exploration(
        self,
        segment: str,
        slice_: float,
        actions: Sequence[tuple[int, Weights]],
        source: str,
        weights: Weights | None = None,
        reason: str = "",
        now_ms: int | None = None,
    ) -> tuple[WeightsDocument | None, ExplorationDocument]:
        """Write a new exploration document (and, with ``weights``, a new weights document) atomically,
        then announce both on the updates channel. Both are validated before the script runs."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        draft = ExplorationDocument(
            version=1,
            slice=slice_,
            actions=[ExplorationAction(id=i, weights=w) for i, w in actions],
            updated_at_ms=now,
            source=source,
        )
        seg = validate_segment(segment)
        body = draft.model_dump_json(exclude={"version"})
        w_args: list[str] = ["", str(self.history_cap)]
        w_keys = [VERSION_KEY, doc_key(seg), history_key(seg)]
        if weights is not None:
            keys, args = build_push_args(seg, weights, source, reason, now, self.history_cap)
            w_args = [args[0], str(self.history_cap)]
        wv, wdoc, _ev, edoc = self._push_exploration(
            keys=[EXPLORATION_VERSION_KEY, exploration_key(seg), *w_keys],
            args=["," + body[1:], UPDATES_CHANNEL, json.dumps(seg), *w_args],
        )
        return (
            parse_document(wdoc) if int(wv) else None,
            ExplorationDocument.model_validate_json(edoc),
        )


class AsyncWeightsStore:
    """asyncio weights store over ``redis.asyncio.Redis`` (same keys, same script)."""

    def __init__(self, client: aredis.Redis, history_cap: int = HISTORY_CAP) -> None:
        self.client = client
        self.history_cap = history_cap
        self._push = client.register_script(PUSH_SCRIPT)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> AsyncWeightsStore:
        return cls(aredis.Redis.from_url(url, **kwargs))

    async def get_stored(self, segment: str = DEFAULT_SEGMENT) -> WeightsDocument | None:
        raw = await self.client.get(doc_key(validate_segment(segment)))
        return None if raw is None else parse_document(raw)

    async def get(self, segment: str = DEFAULT_SEGMENT) -> WeightsDocument:
        return await self.get_stored(segment) or builtin_document(segment)

    async def get_effective(self, segment: str = DEFAULT_SEGMENT) -> WeightsDocument:
        doc = await self.get_stored(segment)
        if doc is None and segment != DEFAULT_SEGMENT:
            doc = await self.get_stored(DEFAULT_SEGMENT)
        return doc or builtin_document(DEFAULT_SEGMENT)

    async def push(
        self,
        segment: str,
        weights: Weights | Mapping[str, Any],
        source: str,
        reason: str = "",
        now_ms: int | None = None,
    ) -> WeightsDocument:
        keys, args = build_push_args(segment, weights, source, reason, now_ms, self.history_cap)
        return _script_result(await self._push(keys=keys, args=args))[1]

    async def init_segment(
        self, segment: str = DEFAULT_SEGMENT, weights: Weights | None = None, source: str = "bootstrap"
    ) -> tuple[bool, WeightsDocument]:
        keys, args = build_push_args(
            segment,
            weights or builtin_document().weights,
            source,
            "initial document (bootstrap)",
            None,
            self.history_cap,
            only_if_absent=True,
        )
        return _script_result(await self._push(keys=keys, args=args))

    async def history(self, segment: str = DEFAULT_SEGMENT, n: int = 20) -> list[WeightsDocument]:
        if n <= 0:
            return []
        raws = await self.client.lrange(history_key(validate_segment(segment)), 0, n - 1)
        return _parse_history(raws)

    async def ping(self) -> bool:
        return bool(await self.client.ping())


def _parse_history(raws: list[bytes | str]) -> list[WeightsDocument]:
    out: list[WeightsDocument] = []
    for raw in raws:
        try:
            out.append(parse_document(raw))
        except InvalidWeightsDocument:
            continue  # a corrupt audit entry must not hide the others
    return out
