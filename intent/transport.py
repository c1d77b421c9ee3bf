"""The Kafka transport under the Faust app, tuned for a stream of many small events.

Faust's own aiokafka driver costs more per message than the detector's whole work on an event,
in two places measured with py-spy on `benchmarks/throughput.py`:
- Its consumer lets the broker hold a fetch for 1.5 s (`fetch_max_wait_ms`, fixed in the driver).
  A worker that drains its buffers faster than a fetch round returns then idles between rounds:
  a do-nothing agent ran at about a third of one core. `IntentApp` sets the wait from the settings.
- It hands every message to the streams through mode's `wait_first(deliver, suspend_flow.wait())`,
  which starts four asyncio tasks per message so that a rebalance can interrupt a delivery that
  waits for room. When nothing can make the delivery wait (flow running, producer buffer below its
  limit, no stream buffer full) `FastDeliveryConsumer` awaits the delivery itself: the same result,
  without the tasks. Otherwise it takes Faust's path.

And two fixes of Faust's own, each found by a fault test (issue 10):
- A restarted worker lost records, or stopped committing for good. Faust's recovery resumes the
  stream partitions, then seeks them to their committed offsets (one request per assigned
  partition: a few hundred ms, more under load), then resumes its flow control, which empties
  every stream buffer. Whatever the fetcher handed to the streams during the seek was dropped
  without an ack: behind a committed offset, the records read on after the seek looked like a gap
  to Faust, which committed past the dropped ones unprocessed; with no committed offset (nothing to
  seek to) the dropped ones were never read again, and Faust commits nothing past a record never
  acknowledged. `FastDeliveryConsumer.perform_seek` stops the flow for the seek (the recovery
  resumes it) and also seeks the partitions with no committed offset, to their beginning.
- A crashed app (`app.crash`, as the detector does when a micro-batch's effects were not
  acknowledged) must stop its worker process. The crash marks every service crashed, Faust's
  consumer thread included, and that thread then winds down on its own while the app's stop still
  commits offsets through it; a commit queued after the thread closed its method queue was never
  answered and the process hung for ever. `_ConsumerThread.commit` commits nothing once the thread
  is stopping.

For the fault tests only, `INTENT_TEST_FAIL_PRODUCE_ON_CALL=N` puts `FailingProducer` under the app:
its Nth send fails as a broker refusing the record would. Without the setting it is not installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any

import aiokafka
import faust
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, TransportT
from faust.types.web import Web
from mode.services import WaitArgT, WaitResults

from intent.kafka import end_offsets
from intent.web import OwnRoutesWeb


class IntentApp(faust.App):
    """A Faust app on `IntentTransport`, whose consumer fetches with `fetch_max_wait_seconds`;
    `fail_produce_on_call` (tests only) makes that send of its producer fail."""

    def __init__(
        self, id: str, *, fetch_max_wait_seconds: float, fail_produce_on_call: int | None = None, **options: Any
    ) -> None:
        self.fetch_max_wait_seconds = fetch_max_wait_seconds
        self.fail_produce_on_call = fail_produce_on_call
        super().__init__(id, **options)

    def _new_transport(self) -> TransportT:
        transport = IntentTransport if self.fail_produce_on_call is None else FailingProducerTransport
        return transport(self.conf.broker_consumer, self)

    def _new_web(self) -> Web:
        # Faust's own pages read tables without authentication: the web server serves ours only
        return OwnRoutesWeb(self)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads it when the consumer starts, which is after this returns
        consumer._fetch_max_wait_ms = round(self.app.fetch_max_wait_seconds * 1000)
        return consumer

    async def commit(self, offsets: Mapping[TP, int]) -> bool:
        # Crashed (or stopping), this thread leaves its loop by itself, without waiting for the
        # app's stop, which still commits on its way out (`App.on_stop` -> `Consumer.wait_empty`):
        # a call queued then is never run, and awaiting it kept the worker from ever exiting. What
        # is left uncommitted is processed again by the next owner of the partitions.
        if self.should_stop:
            return False
        return await super().commit(offsets)

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        """Where each changelog ends, for Faust's recovery: it reads a table's changelog up to there,
        and checks the offset a table on disk has stored against it. Faust asks with ListOffsets, which
        the embedded broker answers short of the end (`intent.kafka.end_offsets`): the recovery then
        stopped early and left a window's latest records unapplied."""
        if self.consumer.in_transaction:
            return await super()._highwaters(partitions)
        servers = ",".join(faust_aiokafka.server_list(self.transport.url, self.transport.default_port))
        ends = await end_offsets(servers, [TopicPartition(tp.topic, tp.partition) for tp in partitions])
        return {tp: ends[TopicPartition(tp.topic, tp.partition)] for tp in partitions}


class FastDeliveryConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: WaitArgT, timeout: float | None = None) -> WaitResults:
        # The consumer's only caller is its drain loop: wait_first(deliver(message), suspend_flow.wait()).
        if len(coros) == 2 and timeout is None and self._delivery_cannot_wait():
            deliver, suspended = coros
            suspended.close()  # type: ignore[union-attr]  # a coroutine never started
            return WaitResults([deliver], [await deliver], False)  # type: ignore[misc]
        return await super().wait_first(*coros, timeout=timeout)

    async def perform_seek(self) -> None:
        # Called by the recovery between resuming the stream partitions and emptying the stream
        # buffers (module docstring): no record may reach a stream meanwhile. A record already
        # fetched is dropped by the fetch loop once the flow stops; the seek below reads it again.
        self.stop_flow()  # the recovery resumes the flow after the seek
        await super().perform_seek()

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        # aiokafka seeks only where something above 0 was committed; elsewhere the fetch position
        # may have moved on during the seek. Such a partition starts where the reset policy says:
        # the worker's is "earliest" (`intent.app.faust_settings`). Changelogs are the recovery's.
        uncommitted = [tp for tp, offset in committed.items() if not offset and not self._is_changelog_tp(tp)]
        if uncommitted and self.app.conf.consumer_auto_offset_reset == "earliest":
            await self._thread.seek_to_beginning(*uncommitted)
        return committed

    def _delivery_cannot_wait(self) -> bool:
        """True when each await in Faust's delivery (`ConductorCompiler.build`) returns at once."""
        app = self.app
        buffer = app.producer.buffer
        return (
            self.flow_active
            and not self.suspend_flow.is_set()
            and app.flow_control.is_active()
            and buffer.size <= buffer.max_messages
            and not any(channel.queue.full() for channel in app.topics)
        )


class IntentTransport(faust_aiokafka.Transport):
    Consumer = FastDeliveryConsumer


class FailingProducer(faust_aiokafka.Producer):
    """Tests only: the app's `fail_produce_on_call`-th send is never sent, and its delivery fails as
    aiokafka's does when the broker does not acknowledge a record in time."""

    sends = 0

    async def send(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        self.sends += 1
        if self.sends != self.app.fail_produce_on_call:  # type: ignore[attr-defined]
            return await super().send(*args, **kwargs)
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        failure = f"send {self.sends} failed on purpose (INTENT_TEST_FAIL_PRODUCE_ON_CALL)"
        delivery.set_exception(KafkaTimeoutError(failure))
        return delivery


class FailingProducerTransport(IntentTransport):
    Producer = FailingProducer
