"""Small Kafka client helpers shared by the CLI, the demo, benchmarks and tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


async def ensure_topics(
    bootstrap_servers: str, topics: Iterable[str], partitions: int, config: dict[str, str] | None = None
) -> None:
    """Create the topics that do not exist yet (existing ones are left as they are)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=config or {})
            for name in topics
            if name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process created it between our list and our create
    finally:
        await admin.close()


def producer(bootstrap_servers: str) -> AIOKafkaProducer:
    # acks=all: an event we say we sent is on the broker. Batching keeps replay fast.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5, max_batch_size=262_144
    )


async def consumer_lag(bootstrap_servers: str, group_id: str, topic: str) -> int:
    """Events of `topic` the group has not committed yet (all of them if it committed nothing).

    Asked through a consumer of the group that never subscribes, so it does not join the group:
    the embedded broker does not answer the admin client's form of the same request.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        lag = 0
        for partition in partitions:
            committed = await consumer.committed(partition)
            lag += max(0, ends[partition] - (committed or 0))
        return lag
    finally:
        await consumer.stop()


async def wait_for_lag_zero(
    bootstrap_servers: str, group_id: str, topic: str, timeout: float, poll: float = 0.5
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        lag = await consumer_lag(bootstrap_servers, group_id, topic)
        if lag == 0:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"group {group_id} still has {lag} events of {topic} to process")
        await asyncio.sleep(poll)
