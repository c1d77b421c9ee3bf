"""`TableStore`: the worker's keyed state, a Faust table written with explicit changelog partitions,
kept in memory or on disk (RocksDB, `INTENT_STATE_STORE`)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.serializers import codecs
from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import EventT

from intent import observability as metrics
from intent.kafka import end_offsets
from intent.settings import Settings

try:
    import rocksdict
except ImportError:  # optional: `pip install 'intent[rocksdb]'`, checked by `check_state_store`
    rocksdict = None

log = logging.getLogger(__name__)

# RocksDB's own defaults are for a large server: a 64 MB write buffer (three of them) and a 2 GB block
# cache per database, and Faust opens one database per table and partition.
ROCKSDB_WRITE_BUFFER_BYTES = 4 * 1024**2
ROCKSDB_WRITE_BUFFERS = 2


class StateStoreError(Exception):
    """The configured state store cannot be used, with what to do."""


def check_state_store(settings: Settings) -> None:
    if settings.state_store == "rocksdb" and rocksdict is None:
        raise StateStoreError(
            "INTENT_STATE_STORE=rocksdb needs RocksDB's Python bindings: pip install 'intent[rocksdb]' (rocksdict)"
        )


async def discard_stale_state(settings: Settings, app: faust.App) -> None:
    """Remove each table partition on disk whose stored changelog offset is past that changelog's
    end, as Faust's own check would refuse it: its topics were deleted or emptied since (the embedded
    broker keeps them in memory only, so they are gone whenever it stops). Its windows would be served
    for shoppers the broker has never seen, and their input offsets would hide new events as replays;
    removed, the partition is rebuilt from its changelog (Faust's own check, which runs later, would
    stop the worker and ask for the files to be removed by hand)."""
    if settings.state_store != "rocksdb":
        return
    databases = sorted(Path(app.conf.tabledir).glob("*-*.db"))  # Faust's `<table>-<partition>.db`
    if not databases:
        return
    changelogs = {}
    for path in databases:
        table, _, partition = path.name.removesuffix(".db").rpartition("-")
        changelogs[path] = TopicPartition(f"{settings.app_id}-{table}-changelog", int(partition))
    ends = await end_offsets(settings.bootstrap_servers, changelogs.values())
    for path, changelog in changelogs.items():
        stored = _stored_offset(path)
        if stored is not None and stored >= ends[changelog]:
            log.warning(
                "%s holds changelog offset %d, past the changelog's end (%d): removed, to be rebuilt from it",
                path,
                stored,
                ends[changelog],
            )
            shutil.rmtree(path)


def _stored_offset(path: Path) -> int | None:
    database = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
    try:
        stored = database.get(RocksDBStore.offset_key)
    finally:
        database.close()
    return None if stored is None else int(stored)


def state_table(app: faust.App, name: str, settings: Settings) -> faust.Table:
    """A table of str keys and bytes values in the worker's state store, whose recovery is counted
    (`intent_state_recovered_records_total`): after a restart on RocksDB, only what was written
    since the stop is read again."""
    check_state_store(settings)
    recovered = metrics.STATE_RECOVERED_RECORDS.labels(name)

    async def count_recovered(event: EventT) -> None:
        recovered.inc()

    options: dict[str, Any] | None = None
    if settings.state_store == "rocksdb":
        options = {
            "write_buffer_size": ROCKSDB_WRITE_BUFFER_BYTES,
            "max_write_buffer_number": ROCKSDB_WRITE_BUFFERS,
            "block_cache_size": settings.rocksdb_cache_mb * 1024**2,
        }
    return app.Table(name, key_type=str, value_type=bytes, on_changelog_event=count_recovered, options=options)


class TableStore:
    """Bytes in a Faust table, written with an explicit changelog partition.

    Faust's own `table[key] = value` takes the partition from the event being processed; a
    micro-batch spans partitions, and the expiry sweep and webhook retries run outside any event,
    so each value records its input partition and is written to that changelog partition here.
    The changelog records go to the producer in order, a burst at a time, from one task: Faust's
    `send_changelog` queues each record through its producer buffer and a task of its own, which
    cost more per event than all of the detector's work (py-spy, benchmarks/throughput.py).
    `flush` returns once the broker has acknowledged them, and raises if it did not.

    In memory, a write goes to the table at once (a restart rebuilds it from the changelog). On
    RocksDB (`OnDisk`), a write reaches the disk only once the broker has acknowledged its changelog
    record, together with that record's offset: the disk then never holds what the changelog lacks,
    and a restart reads only the records after the stored offsets.
    """

    def __init__(self, table: faust.Table, owned_partitions: Callable[[], set[int]]) -> None:
        self.table = table
        self._owned_partitions = owned_partitions
        self._on_disk = OnDisk(table) if isinstance(table.data, RocksDBStore) else None
        self._write_ids = itertools.count()
        self._unsent: list[_Write] = []
        self._sending: asyncio.Task[None] | None = None
        # the writes sent and their deliveries, until a flush sees them acknowledged (a failed one stays)
        self._deliveries: list[tuple[asyncio.Future[Any], _Write]] = []

    def get(self, key: str) -> bytes | None:
        if self._on_disk is not None:
            return self._on_disk.get(key)
        return self.table.data.get(key)

    def put(self, key: str, value: bytes, partition: int) -> None:
        write = self._write(partition, key, value)
        if self._on_disk is not None:
            self._on_disk.written(write)
        else:
            self.table.data[key] = value
        self._send(write)

    def delete(self, key: str, partition: int) -> None:
        owned = partition in self._owned_partitions()
        write = self._write(partition, key, None)
        if self._on_disk is not None:
            self._on_disk.written(write, to_disk=owned)
        else:
            self.table.data.pop(key, None)
        if owned:
            self._send(write)

    def items(self) -> Iterator[tuple[str, bytes]]:
        """Every key and value, including writes not yet acknowledged. In memory a copy, so the caller
        may write while it iterates; on disk the caller may too, as long as it does not await."""
        if self._on_disk is not None:
            return self._on_disk.items()
        return iter(list(self.table.data.items()))

    def __len__(self) -> int:
        if self._on_disk is not None:
            return self._on_disk.count()
        return len(self.table.data)

    async def flush(self) -> None:
        """Return once the broker has acknowledged every record written so far; raise the error of
        one it did not acknowledge (again at every later flush: the table and its changelog differ)."""
        while self._sending is not None:
            await asyncio.shield(self._sending)
        deliveries = list(self._deliveries)
        if not deliveries:
            return
        await asyncio.wait([delivery for delivery, _ in deliveries])  # unlike gather, never cancels them
        acknowledged = [(delivery.result().offset, write) for delivery, write in deliveries if not delivery.exception()]
        if self._on_disk is not None:
            self._on_disk.acknowledged(acknowledged)
        for delivery, _ in deliveries:
            delivery.result()  # raises the first failure
        done = {write.id for _, write in acknowledged}
        self._deliveries = [(delivery, write) for delivery, write in self._deliveries if write.id not in done]

    def _write(self, partition: int, key: str, value: bytes | None) -> _Write:
        # keys as the table's serializer writes them (JSON strings), so recovery reads them back
        return _Write(next(self._write_ids), partition, key, codecs.dumps(self.table.key_serializer, key), value)

    def _send(self, write: _Write) -> None:
        self._unsent.append(write)
        if self._sending is None:
            self._sending = asyncio.ensure_future(self._send_unsent())

    async def _send_unsent(self) -> None:
        producer = self.table.app.producer
        topic = self.table.changelog_topic.get_topic_name()
        try:
            while self._unsent:
                writes, self._unsent = self._unsent, []
                for write in writes:
                    delivery = await producer.send(topic, write.key_bytes, write.value, write.partition, None, None)
                    self._deliveries.append((asyncio.ensure_future(delivery), write))
        except Exception:  # the producer failed: Faust crashes the worker on its own send errors too
            log.exception("changelog records of %s not sent", topic)
            raise
        finally:
            self._sending = None


class _Write:
    """One write of a table: its changelog partition, key (as stored) and value (None: deleted)."""

    __slots__ = ("id", "key", "key_bytes", "partition", "value")

    def __init__(self, id: int, partition: int, key: str, key_bytes: bytes, value: bytes | None) -> None:
        self.id, self.partition, self.key, self.key_bytes, self.value = id, partition, key, key_bytes, value


class OnDisk:
    """A table's RocksDB databases (Faust's store, one database per partition this worker owns) and
    the writes that wait for their changelog record's acknowledgement, read before the disk.

    Faust writes a store only within an event (its `table[key] = value` takes the partition from the
    event) and records the changelog offset a database holds when the producer acknowledges that
    record (`Collection._on_changelog_sent`); our writes bypass both, so this class does the same:
    `acknowledged` writes each acknowledged record to its partition's database in one batch with the
    offset, under Faust's own offset key, which Faust's recovery reads (`Store.persisted_offset`) to
    resume from there instead of reading the whole changelog. It reads Faust's store internals
    (`_dbs`, `offset_key`), which faust-streaming 0.15.3, pinned, has."""

    def __init__(self, table: faust.Table) -> None:
        self.store: RocksDBStore = table.data
        self.key_serializer = table.key_serializer
        self.unacknowledged: dict[str, _Write] = {}  # the latest write of each key not yet on disk
        # per partition, how many keys its database holds, as of which stored offset: counting reads
        # every key, so it is kept up to date by `acknowledged` and counted again after a recovery
        self._counts: dict[int, tuple[int | None, int]] = {}

    def get(self, key: str) -> bytes | None:
        write = self.unacknowledged.get(key)
        if write is not None:
            return write.value
        key_bytes = codecs.dumps(self.key_serializer, key)
        for database in list(self.store._dbs.values()):  # bloom filters make a miss cheap
            value = database.get(key_bytes)
            if value is not None:
                return value
        return None

    def written(self, write: _Write, *, to_disk: bool = True) -> None:
        """`write` was made; it reaches the disk once acknowledged (`to_disk` False: never sent, so
        it only hides the key from this worker, whose partition moved on)."""
        if to_disk or write.key in self.unacknowledged:
            self.unacknowledged[write.key] = write

    def acknowledged(self, writes: list[tuple[int, _Write]]) -> None:
        """Store `writes`, each with the changelog offset the broker acknowledged it at, oldest first.
        A partition's database that holds a later offset already (its partition was recovered again
        after a rebalance) keeps what it has."""
        databases = self.store._dbs
        batches: dict[int, Any] = {}
        offsets: dict[int, int] = {}
        keys: dict[int, int] = {}
        exists: dict[bytes, bool] = {}  # whether a key is on disk after the writes batched so far
        for offset, write in writes:
            partition = write.partition
            database = databases.get(partition)  # open while this worker owns the partition
            if database is None:
                continue
            if partition not in batches:
                offsets[partition] = self._stored_offset(partition)
                keys[partition] = self._count(partition)
                batches[partition] = rocksdict.WriteBatch(raw_mode=True)
            if offset <= offsets[partition]:
                continue
            existed = exists.get(write.key_bytes)
            if existed is None:
                existed = database.get(write.key_bytes) is not None
            if write.value is None:
                batches[partition].delete(write.key_bytes)
            else:
                batches[partition].put(write.key_bytes, write.value)
            exists[write.key_bytes] = write.value is not None
            keys[partition] += exists[write.key_bytes] - existed
            offsets[partition] = offset
        for partition, batch in batches.items():
            batch.put(self.store.offset_key, str(offsets[partition]).encode())  # as Faust's set_persisted_offset
            databases[partition].write(batch)
            self._counts[partition] = (offsets[partition], keys[partition])
        for _, write in writes:
            if self.unacknowledged.get(write.key) is write:  # not written again since
                del self.unacknowledged[write.key]

    def items(self) -> Iterator[tuple[str, bytes]]:
        pending = dict(self.unacknowledged)
        for database in list(self.store._dbs.values()):
            for key_bytes, value in database.items():
                if key_bytes == self.store.offset_key:
                    continue
                key = codecs.loads(self.key_serializer, key_bytes)
                if key not in pending:
                    yield key, value
        for key, write in pending.items():
            if write.value is not None:
                yield key, write.value

    def count(self) -> int:
        """How many keys the table holds, with the writes not yet acknowledged."""
        on_disk = sum(self._count(partition) for partition in list(self.store._dbs))
        for write in self.unacknowledged.values():
            database = self.store._dbs.get(write.partition)
            stored = database is not None and database.get(write.key_bytes) is not None
            on_disk += (write.value is not None) - stored
        return on_disk

    def _count(self, partition: int) -> int:
        """How many keys the partition's database holds (counted again when another writer, Faust's
        recovery, has moved its stored offset)."""
        offset = self._stored_offset(partition)
        counted = self._counts.get(partition)
        if counted is None or counted[0] != offset:
            database = self.store._dbs[partition]
            # a raw-mode Rdict cannot be iterated itself: its keys() can
            keys = sum(1 for key in database.keys() if key != self.store.offset_key)  # noqa: SIM118
            counted = self._counts[partition] = (offset, keys)
        return counted[1]

    def _stored_offset(self, partition: int) -> int:
        stored = self.store._dbs[partition].get(self.store.offset_key)
        return -1 if stored is None else int(stored)
