"""The seek a recovering worker makes before it consumes again, on a real broker.

Faust's recovery resumes the stream partitions, awaits `Consumer.perform_seek`, then empties every
stream buffer. Records handed to the streams during the seek were lost (issue 10: a restarted worker
skipped events, or never committed again), so the worker's consumer stops its flow for the seek, and
starts every partition where processing must resume: its committed offset, or its beginning when
nothing was committed, wherever the fetcher had got to meanwhile.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from intent.broker import EmbeddedBroker
from intent.kafka import ensure_topics
from intent.transport import FastDeliveryConsumer, IntentApp

pytestmark = pytest.mark.integration

RECORDS_PER_PARTITION = 20


@pytest.fixture
async def consumer(broker: EmbeddedBroker, tmp_path: Path) -> AsyncIterator[FastDeliveryConsumer]:
    """The worker's consumer with its thread started, and nothing else of the app."""
    app = IntentApp(
        f"seek-test-{uuid.uuid4().hex[:8]}",
        fetch_max_wait_seconds=0.1,
        broker=broker.url,
        datadir=str(tmp_path),
        web_enabled=False,
        consumer_auto_offset_reset="earliest",  # as the worker's settings have it
    )
    consumer = app.consumer
    assert isinstance(consumer, FastDeliveryConsumer)
    await consumer._thread.start()
    yield consumer
    await consumer._thread.stop()


async def test_the_seek_stops_the_flow_and_starts_each_partition_where_processing_resumes(
    consumer: FastDeliveryConsumer, broker: EmbeddedBroker
) -> None:
    topic = f"seek-{uuid.uuid4().hex[:8]}"
    await ensure_topics(broker.bootstrap_servers, [topic], 2)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    await producer.start()
    try:
        for partition in (0, 1):
            for number in range(RECORDS_PER_PARTITION):
                await producer.send_and_wait(topic, str(number).encode(), partition=partition)
    finally:
        await producer.stop()
    committed, uncommitted = TopicPartition(topic, 0), TopicPartition(topic, 1)
    kafka = consumer._thread._consumer
    assert kafka is not None
    await consumer._thread.call_thread(_assign, kafka, [committed, uncommitted])
    assert await consumer._thread.commit({committed: 5})  # a running thread commits (a stopping one does not)
    # the fetcher reads on, as it did while the recovery's seek was under way
    await consumer._thread.call_thread(_read_to_the_end, kafka)
    assert await consumer._thread.position(uncommitted) == RECORDS_PER_PARTITION
    consumer.resume_flow()

    await consumer.perform_seek()

    assert not consumer.flow_active  # the recovery resumes it, after emptying the stream buffers
    assert await consumer._thread.position(committed) == 5
    assert await consumer._thread.position(uncommitted) == 0  # read again from its beginning


def _assign(kafka: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
    kafka.assign(partitions)


async def _read_to_the_end(kafka: AIOKafkaConsumer) -> None:
    while [tp for tp in kafka.assignment() if await kafka.position(tp) < RECORDS_PER_PARTITION]:
        await kafka.getmany(timeout_ms=500)
