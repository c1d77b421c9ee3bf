"""The worker's tables alone, on RocksDB: what reaches the disk, and the changelog offset stored with it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import TP

from intent.settings import Settings
from intent.stream.tables import TableStore, state_table


@dataclass
class Acknowledged:
    offset: int


@dataclass
class Producer:
    """A producer whose acknowledgements the test gives (or refuses) when it chooses."""

    sent: list[tuple[int, bytes, bytes | None]] = field(default_factory=list)
    acks: list[asyncio.Future[Acknowledged]] = field(default_factory=list)

    async def send(self, topic: str, key: bytes, value: bytes | None, partition: int, *_: Any) -> asyncio.Future[Any]:
        self.sent.append((partition, key, value))
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]

    def acknowledge(self, first_offset: int) -> None:
        """Acknowledge every record sent and not yet answered, at offsets from `first_offset`."""
        waiting = [ack for ack in self.acks if not ack.done()]
        for number, ack in enumerate(waiting):
            ack.set_result(Acknowledged(first_offset + number))


@dataclass
class Table:
    store: TableStore
    table: faust.Table
    producer: Producer

    def on_disk(self, partition: int, key: str) -> bytes | None:
        return self.table.data._dbs[partition].get(f'"{key}"'.encode())

    def stored_offset(self, partition: int) -> int | None:
        return self.table.data.persisted_offset(TP(self.table.changelog_topic.get_topic_name(), partition))


async def flush(table: Table, *, first_offset: int) -> None:
    """Flush the store, the broker acknowledging what it was sent at offsets from `first_offset`."""
    flushing = asyncio.ensure_future(table.store.flush())
    await asyncio.sleep(0.01)  # the records reach the producer
    table.producer.acknowledge(first_offset)
    await flushing


@pytest.fixture
def table(tmp_path: Path) -> Table:
    settings = Settings(data_dir=tmp_path, state_store="rocksdb")
    app = faust.App("tables-test", store="rocksdb://", datadir=str(tmp_path))
    producer = Producer()
    app.producer = producer
    windows = state_table(app, "shopper-windows", settings)
    for partition in (0, 1):  # what Faust does when the worker is assigned the partitions
        windows.data._db_for_partition(partition)
    return Table(TableStore(windows, owned_partitions=lambda: {0, 1}), windows, producer)


async def test_on_rocksdb_a_write_reaches_the_disk_with_its_offset_once_the_broker_acknowledged_it(
    table: Table,
) -> None:
    table.store.put("ada", b"window-1", 0)
    table.store.put("bo", b"window-2", 1)
    table.store.put("ada", b"window-3", 0)
    flushing = asyncio.ensure_future(table.store.flush())
    await asyncio.sleep(0.01)
    assert table.store.get("ada") == b"window-3"  # the worker reads its own writes at once
    assert table.on_disk(0, "ada") is None and table.stored_offset(0) is None  # not acknowledged yet
    table.producer.acknowledge(first_offset=40)
    await flushing
    assert (table.on_disk(0, "ada"), table.on_disk(1, "bo")) == (b"window-3", b"window-2")
    # what Faust's recovery reads: the changelog is read again only after these offsets
    assert (table.stored_offset(0), table.stored_offset(1)) == (42, 41)
    assert sorted(table.store.items()) == [("ada", b"window-3"), ("bo", b"window-2")] and len(table.store) == 2


async def test_on_rocksdb_a_write_the_broker_refused_never_reaches_the_disk(table: Table) -> None:
    table.store.put("ada", b"window-1", 0)
    await flush(table, first_offset=7)
    table.store.put("ada", b"window-2", 0)
    table.store.put("bo", b"window-3", 0)
    flushing = asyncio.ensure_future(table.store.flush())
    await asyncio.sleep(0.01)
    table.producer.acks[1].set_exception(RuntimeError("refused"))  # ada's second write
    table.producer.acks[2].set_result(Acknowledged(8))
    with pytest.raises(RuntimeError, match="refused"):
        await flushing
    assert table.on_disk(0, "ada") == b"window-1"  # as the changelog has it
    assert (table.on_disk(0, "bo"), table.stored_offset(0)) == (b"window-3", 8)


async def test_on_rocksdb_a_deletion_reaches_the_disk_once_its_tombstone_is_acknowledged(table: Table) -> None:
    table.store.put("ada", b"window-1", 0)
    await flush(table, first_offset=0)
    table.store.delete("ada", 0)
    table.store.delete("cy", 3)  # a partition this worker does not own: no tombstone is its to write
    assert table.store.get("ada") is None and list(table.store.items()) == [] and len(table.store) == 0
    assert table.on_disk(0, "ada") == b"window-1"
    await flush(table, first_offset=1)
    assert table.on_disk(0, "ada") is None and table.stored_offset(0) == 1 and len(table.store) == 0
    assert [partition for partition, _, _ in table.producer.sent] == [0, 0]


async def test_on_rocksdb_a_partition_recovered_past_an_acknowledged_write_keeps_what_it_has(table: Table) -> None:
    """A rebalance took the partition away and gave it back, recovered from the changelog up to a
    later offset, while this write waited for its acknowledgement."""
    table.store.put("ada", b"older", 0)
    database = table.table.data._dbs[0]
    database.put(b'"ada"', b"newer")
    database.put(b'"bo"', b"recovered")
    table.table.data.set_persisted_offset(TP(table.table.changelog_topic.get_topic_name(), 0), 12)
    await flush(table, first_offset=5)
    assert (table.on_disk(0, "ada"), table.stored_offset(0)) == (b"newer", 12)
    assert len(table.store) == 2  # counted again: the recovery wrote keys of its own
