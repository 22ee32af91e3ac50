"""The "Workbook Delivered" event: published on the account's default EventBridge bus after each copy.

Downstream users route it with an EventBridge rule (source and detail-type below) instead of
polling the destination bucket. Publishing is best effort on top of a copy that has already
succeeded: a failure is logged and counted in a CloudWatch metric (embedded metric format, one
log line on stdout) that an alarm watches; it never undoes or repeats the copy.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from botocore.exceptions import BotoCoreError, ClientError

from ..contract import META_EXPORT, META_PARAMS, META_ROWS, META_SHEETS, put_metric
from .replicate import Outcome
from .settings import DELIVERED_DETAIL_TYPE, DELIVERED_SOURCE, METRIC_NOT_PUBLISHED, Settings



class PublishFailed(Exception):
    """EventBridge did not take the event; the message says why."""


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _parameters(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def detail(outcome: Outcome, metadata: Mapping[str, str], settings: Settings,
           destination_version: str | None) -> dict[str, Any]:
    """The event's detail (its schema is in the README)."""
    return {
        "export": metadata.get(META_EXPORT),
        "parameters": _parameters(metadata.get(META_PARAMS)),
        "rows": _int(metadata.get(META_ROWS)),
        "sheets": _int(metadata.get(META_SHEETS)),
        "bytes": outcome.bytes,
        "sha256": outcome.checksum.sha256 if outcome.checksum else None,
        "checksum": ({"algorithm": outcome.checksum.algorithm, "value": outcome.checksum.value, "verified": True}
                     if outcome.checksum else None),
        "source": {"bucket": settings.source_bucket, "key": outcome.key, "version_id": outcome.version_id},
        "destination": {"bucket": settings.destination_bucket, "key": outcome.destination_key,
                        "version_id": destination_version},
    }


def publish(events: Any, body: Mapping[str, Any]) -> str:
    """Put one event on the default bus; returns its event id."""
    try:
        answer = events.put_events(Entries=[{
            "Source": DELIVERED_SOURCE,
            "DetailType": DELIVERED_DETAIL_TYPE,
            "Detail": json.dumps(body, separators=(",", ":")),
        }])
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise PublishFailed(f"{error.get('Code', 'Error')}: {error.get('Message', '')}".rstrip(": ")) from None
    except BotoCoreError as exc:
        raise PublishFailed(f"{type(exc).__name__}: {exc}") from None
    entry = (answer.get("Entries") or [{}])[0]
    if answer.get("FailedEntryCount") or "EventId" not in entry:
        raise PublishFailed(f"{entry.get('ErrorCode', 'not accepted')}: {entry.get('ErrorMessage', '')}".rstrip(": "))
    return entry["EventId"]


def destination_version(s3: Any, settings: Settings, outcome: Outcome) -> str | None:
    """The version id the copy got in the destination (None: unversioned, or not readable there)."""
    try:
        head = s3.head_object(Bucket=settings.destination_bucket, Key=outcome.destination_key)
    except (ClientError, BotoCoreError):
        return None
    return head.get("VersionId")


def count_failure(function_name: str, out: Any = None) -> None:
    """``DeliveredEventsNotPublished`` = 1 for this function (:func:`contract.put_metric`)."""
    put_metric(function_name, METRIC_NOT_PUBLISHED, 1, out)
