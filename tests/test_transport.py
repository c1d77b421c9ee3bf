"""The Kafka transport under the app: the fetch wait it asks for, Faust's delivery without its tasks,
and a crashed app's consumer that lets the worker stop."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest
from faust.types import TP

from intent.transport import FastDeliveryConsumer, IntentApp


@pytest.fixture
async def app(tmp_path) -> AsyncIterator[IntentApp]:
    app = IntentApp(
        "transport-test",
        fetch_max_wait_seconds=0.1,
        broker="kafka://127.0.0.1:1",  # never connected to: nothing here starts the app
        datadir=str(tmp_path),
        web_enabled=False,
    )
    app.flow_control.resume()  # as a started app does once it consumes
    yield app
    if app._consumer is not None:  # the consumer thread made an event loop of its own
        app.consumer._thread.thread_loop.close()


async def test_the_worker_consumer_lets_the_broker_hold_a_fetch_only_the_configured_time(app) -> None:
    consumer = app.consumer
    assert isinstance(consumer, FastDeliveryConsumer)
    kafka_consumer = consumer._thread._create_worker_consumer(app.transport)
    try:
        assert kafka_consumer._fetch_max_wait_ms == 100  # Faust's driver alone asks for 1500
    finally:
        await kafka_consumer.stop()


async def test_a_delivery_that_cannot_wait_is_awaited_directly(app) -> None:
    consumer = app.consumer
    delivered = []

    async def deliver() -> str:
        delivered.append(asyncio.current_task())
        return "delivered"

    suspended = consumer.suspend_flow.wait()
    tasks_before = len(asyncio.all_tasks())
    results = await consumer.wait_first(deliver_coro := deliver(), suspended)
    assert results.results == ["delivered"] and results.done == [deliver_coro] and not results.stopped
    assert delivered == [asyncio.current_task()]  # ran in the caller's task, not in a new one
    assert inspect.getcoroutinestate(suspended) == inspect.CORO_CLOSED
    assert len(asyncio.all_tasks()) == tasks_before


async def test_a_delivery_waiting_for_room_is_still_interrupted_when_the_flow_stops(app) -> None:
    consumer = app.consumer
    room = asyncio.Event()  # never set: a stream buffer that stays full
    topic = app.topic("shopper-events")
    app.topics.add(topic)  # as an agent's stream subscribes it
    for number in range(app.conf.stream_buffer_maxsize):
        topic.queue.put_nowait(number)

    async def deliver() -> None:
        await room.wait()

    assert not consumer._delivery_cannot_wait()  # a full stream buffer: Faust's own race
    consumer.stop_flow()  # what a rebalance does
    results = await asyncio.wait_for(consumer.wait_first(deliver(), consumer.suspend_flow.wait()), timeout=5)
    assert results.results == [True]  # the suspend event won; the delivery was cancelled


async def test_a_crashed_consumer_thread_answers_the_stopping_apps_commit_at_once(app) -> None:
    # After app.crash() the consumer thread is crashed too and leaves its loop on its own; the app's
    # stop then still commits through it. A thread whose loop no longer serves its calls is what
    # this one is (never started): without an answer the commit waited for ever and so did the stop.
    thread = app.consumer._thread
    await thread.crash(RuntimeError("a micro-batch's effects were not acknowledged"))
    committed = await asyncio.wait_for(thread.commit({TP("shopper-events", 0): 10}), timeout=5)
    assert committed is False  # nothing is committed after a crash: the next owner redoes it
