"""What the dataset readers share: their error, finding their files, and the event they emit."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from intent.events import iso_time


class DatasetError(ValueError):
    """A dataset file that is missing or not in the format its reader maps."""


def dataset_folder(path: Path) -> Path:
    """The dataset's folder, when given one of its files."""
    return path if path.is_dir() else path.parent


def one_file(folder: Path, pattern: str) -> Path:
    matches = sorted(folder.glob(pattern))
    if not matches:
        raise DatasetError(f"{folder}: no file matching {pattern}")
    return matches[0]


def track(
    name: str, message_id: str, at: datetime, properties: dict[str, Any], identity: dict[str, Any]
) -> dict[str, Any]:
    return {
        "type": "track",
        "event": name,
        "messageId": message_id,
        "timestamp": iso_time(at.timestamp()),
        "properties": properties,
        **identity,
    }
