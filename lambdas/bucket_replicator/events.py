"""Turn an S3 notification into the copies to make, and say why anything else is skipped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import unquote_plus

from ..contract import SUFFIXES, is_replicated
from .settings import Settings


#: How much of an event's own text (event name, bucket) a skip reason quotes: an invoke may carry megabytes.
SHOWN_CHARS = 100


def _shown(value: object) -> str:
    text = str(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + f"...({len(text)} characters)"


@dataclass(frozen=True)
class CopyRequest:
    key: str  # decoded
    version_id: str | None
    size: int | None
    etag: str | None


@dataclass(frozen=True)
class Skipped:
    key: str | None
    reason: str


def parse(event: Any, settings: Settings) -> Iterator[CopyRequest | Skipped]:
    """One item per record: a copy to make, or why the record is not ours to copy."""
    if not isinstance(event, dict):
        yield Skipped(None, "not an S3 notification")
        return
    if event.get("Event") == "s3:TestEvent":
        yield Skipped(None, "s3:TestEvent")
        return
    records = event.get("Records")
    if not isinstance(records, list):
        yield Skipped(None, "no Records in the event")
        return
    for record in records:
        yield _parse_record(record, settings)


def _parse_record(record: Any, settings: Settings) -> CopyRequest | Skipped:
    try:
        name = record["eventName"]
        bucket = record["s3"]["bucket"]["name"]
        obj = record["s3"]["object"]
        key = unquote_plus(obj["key"])
    except (KeyError, TypeError):
        return Skipped(None, "malformed record")
    if not record.get("eventSource", "aws:s3") == "aws:s3" or not str(name).startswith("ObjectCreated:"):
        return Skipped(key, f"event {_shown(name)} is not an object creation")
    if bucket != settings.source_bucket:
        return Skipped(key, f"record from bucket {_shown(repr(bucket))}, not the source bucket")
    if not is_replicated(key, settings.source_prefix):
        where = f"is not under {settings.source_prefix!r} or " if settings.source_prefix else ""
        return Skipped(key, f"key {where}does not end in {' or '.join(SUFFIXES)}")
    size = obj.get("size")
    return CopyRequest(
        key=key,
        version_id=obj.get("versionId") or None,
        size=size if isinstance(size, int) else None,
        etag=obj.get("eTag") or None,
    )
