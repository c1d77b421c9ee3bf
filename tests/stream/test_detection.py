"""The detection path alone: a micro-batch in, intent changes and dead letters out, and windows
stored only once the broker has acknowledged everything the batch caused."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from faust.types.tuples import Message

from intent.domain import effective_window_policy, load_domain
from intent.model import IntentModel
from intent.settings import Settings
from intent.simulate import Simulator, coffee_tea_cold_story
from intent.stores import DictStore
from intent.stream.detection import DetectionPath
from intent.tracking import IntentTracker


@dataclass
class InputEvent:
    """What the path reads of a Faust event: its value and the message it came in."""

    value: bytes
    message: Message


@dataclass
class Topic:
    """A topic whose acknowledgements the test gives (or refuses) when it chooses."""

    name: str
    records: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    acks: list[asyncio.Future[None]] = field(default_factory=list)

    async def send(self, *, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        self.records.append((key, value))
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]

    def get_topic_name(self) -> str:
        return self.name

    def acknowledge_all(self) -> None:
        for ack in self.acks:
            if not ack.done():
                ack.set_result(None)


@dataclass
class Path:
    detection: DetectionPath
    sessions: DictStore
    shoppers: DictStore
    changes: Topic
    dead_letters: Topic
    flushes: list[int]


@pytest.fixture
def path(tmp_path: Any) -> Path:
    settings = Settings(data_dir=tmp_path)
    sessions, shoppers = DictStore(), DictStore()
    tracker = IntentTracker(
        IntentModel.load(settings.model_dir),
        effective_window_policy(settings, load_domain(settings.domain_dir)),
        sessions,
        shoppers,
    )
    changes, dead_letters = Topic("intent-changes"), Topic("shopper-events-dlq")
    flushes: list[int] = []

    async def flush_changelogs() -> None:
        flushes.append(len(shoppers.data) + len(sessions.data))

    detection = DetectionPath(settings, tracker, changes, dead_letters, flush_changelogs)
    return Path(detection, sessions, shoppers, changes, dead_letters, flushes)


def story_batch() -> list[InputEvent]:
    story = coffee_tea_cold_story(Simulator(seed=7).world)
    return [
        InputEvent(raw, Message("shopper-events", 0, offset, 0.0, 0, [], b"story", raw, None))
        for offset, raw in enumerate(orjson.dumps(event) for event in story.events)
    ]


async def test_the_story_batch_emits_its_intent_changes_and_stores_the_windows_once_they_are_acknowledged(
    path: Path,
) -> None:
    handling = asyncio.create_task(path.detection.handle_batch(story_batch()))
    while not path.changes.records:
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)

    assert not handling.done()
    assert path.shoppers.data == {} and path.sessions.data == {}  # nothing stored before the acks

    path.changes.acknowledge_all()
    await handling
    changes = [orjson.loads(value) for _, value in path.changes.records]
    assert "cold_flu_care" in [change["to_intent"]["id"] for change in changes]
    assert {key for key, _ in path.changes.records} == {changes[0]["shopper_id"].encode()}
    assert path.shoppers.data or path.sessions.data
    assert path.flushes and path.flushes[-1] > 0  # flushed after the windows were stored


async def test_a_change_the_broker_does_not_acknowledge_fails_the_batch_and_stores_no_window(path: Path) -> None:
    handling = asyncio.create_task(path.detection.handle_batch(story_batch()))
    while not path.changes.records:
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    path.changes.acks[0].set_exception(TimeoutError("not acknowledged"))
    path.changes.acknowledge_all()

    with pytest.raises(TimeoutError, match="not acknowledged"):
        await handling
    assert path.shoppers.data == {} and path.sessions.data == {}
    assert path.flushes == []


async def test_bad_events_are_dead_lettered_with_their_reason_and_position_and_the_good_ones_go_on(
    path: Path,
) -> None:
    good = story_batch()[:3]
    bad = InputEvent(b"not json", Message("shopper-events", 0, 3, 0.0, 0, [], b"k", b"not json", None))
    task = asyncio.create_task(path.detection.handle_batch([*good, bad]))
    while not path.dead_letters.records:
        await asyncio.sleep(0)
    path.dead_letters.acknowledge_all()
    path.changes.acknowledge_all()
    await task

    [(key, value)] = path.dead_letters.records
    letter = orjson.loads(value)
    assert key == b"k"
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("shopper-events", 0, 3)
    assert "JSON" in letter["reason"] or "json" in letter["reason"]
    assert path.detection.read_offsets == {0: 3}
    assert path.shoppers.data or path.sessions.data
