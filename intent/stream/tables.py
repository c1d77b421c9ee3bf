"""`TableStore`: the worker's keyed state, a Faust table written with explicit changelog partitions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import faust
from faust.serializers import codecs

log = logging.getLogger(__name__)


class TableStore:
    """Bytes in a Faust table, written with an explicit changelog partition.

    Faust's own `table[key] = value` takes the partition from the event being processed; a
    micro-batch spans partitions, and the expiry sweep and webhook retries run outside any event,
    so each value records its input partition and is written to that changelog partition here.
    The changelog records go to the producer in order, a burst at a time, from one task: Faust's
    `send_changelog` queues each record through its producer buffer and a task of its own, which
    cost more per event than all of the detector's work (py-spy, benchmarks/throughput.py).
    `flush` returns once the broker has acknowledged them, and raises if it did not.
    """

    def __init__(self, table: faust.Table, owned_partitions: Callable[[], set[int]]) -> None:
        self.table = table
        self._owned_partitions = owned_partitions
        self._unsent: list[tuple[int, bytes, bytes | None]] = []
        self._sending: asyncio.Task[None] | None = None
        # the deliveries of the records sent, until a flush sees them acknowledged (a failed one stays)
        self._deliveries: list[asyncio.Future[Any]] = []

    def get(self, key: str) -> bytes | None:
        return self.table.data.get(key)

    def put(self, key: str, value: bytes, partition: int) -> None:
        self.table.data[key] = value
        self._send(partition, key, value)

    def delete(self, key: str, partition: int) -> None:
        self.table.data.pop(key, None)
        if partition in self._owned_partitions():
            self._send(partition, key, None)

    def items(self) -> Iterator[tuple[str, bytes]]:
        return iter(list(self.table.data.items()))

    async def flush(self) -> None:
        """Return once the broker has acknowledged every record written so far; raise the error of
        one it did not acknowledge (again at every later flush: the table and its changelog differ)."""
        while self._sending is not None:
            await asyncio.shield(self._sending)
        deliveries = list(self._deliveries)
        if deliveries:
            await asyncio.wait(deliveries)  # unlike gather, never cancels them if this flush is cancelled
            for delivery in deliveries:
                delivery.result()
            acknowledged = set(deliveries)
            self._deliveries = [delivery for delivery in self._deliveries if delivery not in acknowledged]

    def _send(self, partition: int, key: str, value: bytes | None) -> None:
        # keys as the table's serializer writes them (JSON strings), so recovery reads them back
        self._unsent.append((partition, codecs.dumps(self.table.key_serializer, key), value))
        if self._sending is None:
            self._sending = asyncio.ensure_future(self._send_unsent())

    async def _send_unsent(self) -> None:
        producer = self.table.app.producer
        topic = self.table.changelog_topic.get_topic_name()
        try:
            while self._unsent:
                records, self._unsent = self._unsent, []
                for partition, key, value in records:
                    delivery = await producer.send(topic, key, value, partition, None, None)
                    self._deliveries.append(asyncio.ensure_future(delivery))
        except Exception:  # the producer failed: Faust crashes the worker on its own send errors too
            log.exception("changelog records of %s not sent", topic)
            raise
        finally:
            self._sending = None
