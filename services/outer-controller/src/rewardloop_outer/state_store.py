"""Durable session state in Redis: one *shard* per input partition number.

Keys (``<g>`` = the consumer group, ``<p>`` = the partition number shared by ``recsys.reward.raw`` and
``recsys.kpi.raw``)::

    rewardloop:outer:<g>:p<p>:users   HASH user_id -> user state (open/retained sessions, pending KPIs)
    rewardloop:outer:<g>:p<p>:meta    JSON {offsets: {topic: next offset}, max_event_ms, baselines, ...}
    rewardloop:outer:<g>:p<p>:outbox  HASH record id -> JSON {t, k, v}: output not yet acknowledged
    rewardloop:outer:<g>:p<p>:epoch   int: fencing token, INCR by every new owner of the shard

A checkpoint writes every dirty user, the meta (with the input offsets the state reflects) and the
outbox changes of all owned shards in ONE ``MULTI/EXEC`` transaction guarded by ``WATCH`` on the
epochs: it lands completely or not at all, and a process that lost a shard in a rebalance (its epoch
is stale) cannot overwrite the new owner's state (:class:`Fenced`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.exceptions import WatchError


class Fenced(Exception):
    """Another process owns one of the shards now (its epoch moved on)."""


def _prefix(group: str, partition: int) -> str:
    return f"rewardloop:outer:{group}:p{partition}:"


@dataclass
class ShardSnapshot:
    users: dict[str, bytes]
    meta: dict[str, Any]
    outbox: dict[str, bytes]
    epoch: int


@dataclass
class ShardDelta:
    partition: int
    epoch: int
    users_set: dict[str, str] = field(default_factory=dict)
    users_del: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    outbox_set: dict[str, bytes] = field(default_factory=dict)
    outbox_del: list[str] = field(default_factory=list)


class RedisStateStore:
    def __init__(self, client: redis.Redis, group: str) -> None:
        self.client = client
        self.group = group

    def key(self, partition: int, name: str) -> str:
        return _prefix(self.group, partition) + name

    def claim(self, partition: int) -> ShardSnapshot:
        """Become the shard's owner (new epoch) and read its state."""
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(self.key(partition, "epoch"))
        pipe.hgetall(self.key(partition, "users"))
        pipe.get(self.key(partition, "meta"))
        pipe.hgetall(self.key(partition, "outbox"))
        epoch, users, meta, outbox = pipe.execute()
        return ShardSnapshot(
            users={(k.decode() if isinstance(k, bytes) else k): v for k, v in users.items()},
            meta=json.loads(meta) if meta else {},
            outbox={(k.decode() if isinstance(k, bytes) else k): v for k, v in outbox.items()},
            epoch=int(epoch),
        )

    def checkpoint(self, deltas: Iterable[ShardDelta]) -> None:
        deltas = list(deltas)
        if not deltas:
            return
        epoch_keys = [self.key(d.partition, "epoch") for d in deltas]
        with self.client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(*epoch_keys)
                current = pipe.mget(epoch_keys)
                for d, cur in zip(deltas, current, strict=True):
                    if cur is None or int(cur) != d.epoch:
                        raise Fenced(f"shard p{d.partition}: epoch {cur!r} != ours {d.epoch}")
                pipe.multi()
                for d in deltas:
                    if d.users_set:
                        pipe.hset(self.key(d.partition, "users"), mapping=d.users_set)  # type: ignore[arg-type]
                    if d.users_del:
                        pipe.hdel(self.key(d.partition, "users"), *d.users_del)
                    if d.outbox_set:
                        pipe.hset(self.key(d.partition, "outbox"), mapping=d.outbox_set)  # type: ignore[arg-type]
                    if d.outbox_del:
                        pipe.hdel(self.key(d.partition, "outbox"), *d.outbox_del)
                    pipe.set(self.key(d.partition, "meta"), json.dumps(d.meta, separators=(",", ":")))
                pipe.execute()
            except WatchError as exc:
                raise Fenced("a shard epoch changed during the checkpoint") from exc

    def delete_all(self) -> int:
        """Remove every key of this group (tests and tools)."""
        keys = list(self.client.scan_iter(match=f"rewardloop:outer:{self.group}:*"))
        return int(self.client.delete(*keys)) if keys else 0
