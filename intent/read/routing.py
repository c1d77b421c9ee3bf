"""Which worker owns a shopper, and asking it: any worker answers a read, from the owner's state.

The owner of a shopper is the worker assigned the input partition her events arrive on. Producers
key events by shopper (`userId`, else `anonymousId`: the collector, `intent replay`) and Kafka's
default partitioner (the Java client's and aiokafka's) puts a key on `murmur2(key) % partitions`:
`intent.erasure.partition_of`. With `INTENT_REPARTITION_INPUT=true` the worker's own hop re-keys the
events by shopper with the same partitioner, so the partition is the re-keyed topic's. Faust's
partition assignor tells every member which worker (its `canonical_url`, `INTENT_WEB_ADVERTISED_URL`)
holds each partition of the topics the app consumes (`external_topics_metadata`); Faust's own
`Router.key_store` hashes a table's changelog key (JSON-serialized, quotes included) and would name
another worker, so the events topic's key is hashed here instead.

librdkafka producers (confluent-kafka, kcat, most non-Java clients) partition by CRC32 unless they
set `partitioner=murmur2_random`: their shoppers are found only by asking every worker, which the
API does when the owner it computed does not know the shopper.

A forwarded call carries `FORWARDED_HEADER` (the forwarding worker's URL): a worker answers such a
call from its own state and never forwards it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from intent.erasure import partition_of

log = logging.getLogger(__name__)

FORWARDED_HEADER = "X-Intent-Forwarded-By"
FORWARD_TIMEOUT_SECONDS = 5.0
# worker URL -> topic -> its partitions there, as Faust's assignor shares it with every member
Distribution = Mapping[str, Mapping[str, Sequence[int]]]


@dataclass(frozen=True)
class Answer:
    """An answer to relay: from this worker or from the one a call was forwarded to."""

    status: int
    body: bytes
    retry_after: str | None = None


class ShopperRouting:
    def __init__(
        self,
        own_url: str,
        distribution: Callable[[], Distribution],
        topic: Callable[[], str],
        partitions: Callable[[], int],
        timeout_seconds: float = FORWARD_TIMEOUT_SECONDS,
    ) -> None:
        """`own_url`: this worker's advertised URL; `distribution()`: the assignor's map of the
        members' partitions; `topic()`: the topic whose partitions own the shoppers (the input, or
        the re-keyed input); `partitions()`: how many partitions it has."""
        self.own_url = own_url
        self._distribution = distribution
        self._topic = topic
        self._partitions = partitions
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._http: aiohttp.ClientSession | None = None

    def owner(self, shopper_id: str) -> str | None:
        """The URL of the worker that owns the shopper's partition; None while nobody is known to."""
        topic, partition = self._topic(), partition_of(shopper_id, self._partitions())
        for url, topics in self._distribution().items():
            if partition in topics.get(topic, ()):
                return url
        return None

    def members(self) -> list[str]:
        """Every worker's URL, this one's included, as the last assignment named them."""
        return list(self._distribution())

    async def forward(self, url: str, request: web.Request) -> Answer | None:
        """Ask the worker at `url` the same call, with its credential, marked as forwarded; None
        when it did not answer (down, unreachable, too slow)."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        target = URL(url).with_path(request.rel_url.raw_path, encoded=True).with_query(request.rel_url.query)
        headers = {"Authorization": request.headers.get("Authorization", ""), FORWARDED_HEADER: self.own_url}
        try:
            async with self._http.get(target, headers=headers, allow_redirects=False) as response:
                return Answer(response.status, await response.read(), response.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError) as error:
            log.warning("the worker at %s did not answer a forwarded read: %r", url, error)
            return None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
