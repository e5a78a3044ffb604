"""Read a whole topic (beginning → current high watermark) from the real broker, for assertions."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"e2e-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: list[dict[str, Any]] = []
        position = {p: 0 for p in partitions}
        deadline = time.monotonic() + timeout_s
        while any(position[p] < ends[p] for p in partitions):
            assert time.monotonic() < deadline, f"timed out reading {topic}: at {position}, want {ends}"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            value = json.loads(msg.value())
            value["_key"] = msg.key().decode() if msg.key() else None
            value["_partition"] = msg.partition()
            records.append(value)
            position[msg.partition()] = msg.offset() + 1
        return records
    finally:
        consumer.close()
