"""Small Kafka client helpers shared by the CLI, the demo, benchmarks and tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

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
            # another process may create one between our list and our create
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()


async def end_offsets(bootstrap_servers: str, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition (0 where its topic does not exist), from the
    high watermark a fetch returns. Not from ListOffsets, which the embedded broker (Tansu 0.6.0)
    answers with the first offset of the partition's last batch + 1, short of the end whenever that
    batch holds several records. All partitions in one assignment: aiokafka's consumer, assigned one
    partition after another, reports a high watermark of 0 for those of a second topic."""
    wanted = set(partitions)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        existing = {tp for tp in wanted if tp.partition in (consumer.partitions_for_topic(tp.topic) or ())}
        ends = dict.fromkeys(wanted - existing, 0)
        if existing:
            consumer.assign(list(existing))
            await consumer.seek_to_beginning(*existing)
            while [tp for tp in existing if consumer.highwater(tp) is None]:
                await consumer.getmany(timeout_ms=200, max_records=1)
            ends.update((tp, consumer.highwater(tp)) for tp in existing)
        return ends
    finally:
        await consumer.stop()


def producer(bootstrap_servers: str) -> AIOKafkaProducer:
    # acks=all: an event we say we sent is on the broker. Batching keeps replay fast.
    return AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5, max_batch_size=262_144)


async def consumer_lag(bootstrap_servers: str, group_id: str, topic: str) -> int:
    """Events of `topic` the group has not committed yet (all of them if it committed nothing).

    Asked through a consumer of the group that never subscribes, so it does not join the group:
    the embedded broker does not answer the admin client's form of the same request.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await end_offsets(bootstrap_servers, partitions)
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


class CompactedTopic:
    """A keyed, compacted, one-partition topic that this process writes and follows to its end.

    Every process reads the whole topic (no consumer group) and hands each record to `apply`, so all
    of them hold the same state and a restart rebuilds it. `write` returns once this process has
    read its own write back: a read right after a write sees it.
    """

    def __init__(self, bootstrap_servers: str, topic: str, apply: Callable[[str, bytes | None], None]) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self._apply = apply
        self._partition = TopicPartition(topic, 0)
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._applied_offset = -1
        self._applied = asyncio.Condition()
        self._follower: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._follower is not None and not self._follower.done()

    async def start(self) -> None:
        """Create the topic if needed and read it to its end before returning."""
        await ensure_topics(self.bootstrap_servers, [self.topic], 1, {"cleanup.policy": "compact"})
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all")
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False)
        await self._producer.start()
        await self._consumer.start()
        self._consumer.assign([self._partition])
        await self._consumer.seek_to_beginning(self._partition)
        end = (await self._consumer.end_offsets([self._partition]))[self._partition]
        self._follower = asyncio.create_task(self._follow(), name=f"follow {self.topic}")
        await self._wait_applied(end - 1)

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()

    async def write(self, key: str, value: bytes | None) -> None:
        """Write (None: delete) and return once this process has applied it."""
        assert self._producer is not None, "start() first"
        metadata = await self._producer.send_and_wait(self.topic, value, key=key.encode(), partition=0)
        await self._wait_applied(metadata.offset)

    async def _wait_applied(self, offset: int, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout), self._applied:
            await self._applied.wait_for(lambda: self._applied_offset >= offset)

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(self._partition, timeout_ms=500)
            position = await self._consumer.position(self._partition)
            for message in batches.get(self._partition, []):
                self._apply(message.key.decode(), message.value)
            async with self._applied:
                self._applied_offset = position - 1
                self._applied.notify_all()
