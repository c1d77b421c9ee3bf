"""Where the stream keeps keyed state: a Faust table in the worker (`intent.stream.tables.TableStore`), a dict
in tests, benchmarks and tools. Values are bytes; each write names the input partition whose
changelog partition it belongs to."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class KeyValueStore(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes, partition: int) -> None: ...

    def delete(self, key: str, partition: int) -> None: ...

    def items(self) -> Iterator[tuple[str, bytes]]: ...


class DictStore:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes, partition: int) -> None:
        self.data[key] = value

    def delete(self, key: str, partition: int) -> None:
        self.data.pop(key, None)

    def items(self) -> Iterator[tuple[str, bytes]]:
        return iter(list(self.data.items()))
