"""Was a scheduled run's workbook in the destination by its deadline? Announce it once if not.

A run is found by its record (``contract.run_record_key``), which the export writes at a key fixed by
the schedule's name and the run's scheduled time: no listing, and nothing depends on the run having
started. What the record and the destination say:

- record ``uploaded`` and its copy in the destination: delivered (on time if the copy is older than the
  deadline);
- record ``skipped: empty``: skipped (``on_empty: skip``), announced as ``Workbook Skipped``;
- record ``failed``: late, with the run's error;
- record ``uploaded`` but no copy: late, the copy is missing (a copy another account's bucket does not let
  the check read counts as delivered: the failed-copies queue and its alarm watch copies);
- no record: late, the run never started, is still running or was killed.

Each late or skipped run is announced once: a notice object is created with a conditional put
(``If-None-Match: *``, https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html)
before the event goes out, so a repeated or retried check finds it and stays quiet.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .. import contract, cron
from .settings import Deadline, Settings

DELIVERED = "delivered"
DELIVERED_LATE = "delivered late"
SKIPPED = "skipped"
FAILED = "failed"
COPY_MISSING = "copy missing"
NOT_RECORDED = "no run recorded"
PENDING = "not due yet"
#: Uploaded, but the destination (another account's bucket) does not let the check read the copy.
COPY_UNREADABLE = "uploaded, copy not readable"


class CheckError(Exception):
    """S3 or EventBridge could not be read or written; the check fails and Lambda retries it."""


@dataclass(frozen=True)
class Verdict:
    """What is known about one scheduled run at a moment."""

    export: str
    schedule: str
    scheduled_time: dt.datetime
    deadline: dt.datetime
    state: str
    known: str
    record: dict | None = None

    @property
    def late(self) -> bool:
        return self.state in (FAILED, COPY_MISSING, NOT_RECORDED, DELIVERED_LATE)

    def detail(self) -> dict[str, Any]:
        """The event's detail (its schema is in the README)."""
        return {
            "export": self.export,
            "schedule": self.schedule,
            "scheduled_time": _text(self.scheduled_time),
            "deadline": _text(self.deadline),
            "state": self.state,
            "known": self.known,
            "run": self.record,
        }


def _text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime(contract.SCHEDULED_TIME_FORMAT)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def read_record(s3: Any, settings: Settings, deadline: Deadline, scheduled: dt.datetime) -> dict | None:
    key = contract.run_record_key(settings.key_prefix, deadline.export, deadline.schedule, _text(scheduled))
    try:
        body = s3.get_object(Bucket=settings.source_bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if _code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise CheckError(f"reading s3://{settings.source_bucket}/{key}: {_code(exc)}: {exc}") from None
    except BotoCoreError as exc:
        raise CheckError(f"reading s3://{settings.source_bucket}/{key}: {exc}") from None
    try:
        record = json.loads(body)
    except ValueError:
        return {"outcome": "unreadable record"}
    return record if isinstance(record, dict) else {"outcome": "unreadable record"}


def judge(s3: Any, settings: Settings, deadline: Deadline, scheduled: dt.datetime, now: dt.datetime) -> Verdict:
    """The state of the run ``deadline``'s schedule planned for ``scheduled``, as seen at ``now``."""
    due = scheduled + dt.timedelta(minutes=deadline.minutes)

    def verdict(state: str, known: str, record: dict | None = None) -> Verdict:
        return Verdict(deadline.export, deadline.schedule, scheduled, due, state, known, record)

    record = read_record(s3, settings, deadline, scheduled)
    outcome = record.get("outcome") if record else None
    if outcome == "skipped: empty":
        return verdict(SKIPPED, "every sheet was empty and the export skips empty workbooks (on_empty: skip)", record)
    if outcome == "uploaded" and isinstance(record.get("key"), str):
        copy_key = contract.destination_key(settings.destination_prefix, record["key"])
        try:
            head = s3.head_object(Bucket=settings.destination_bucket, Key=copy_key)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                state = COPY_MISSING if now >= due else PENDING
                return verdict(state, f"uploaded as {record['key']}; no copy at s3://{settings.destination_bucket}/"
                                      f"{copy_key} (see the failed-copies queue)", record)
            if _code(exc) in ("403", "AccessDenied", "Forbidden"):
                return verdict(COPY_UNREADABLE, f"uploaded as {record['key']}; the destination does not let the "
                                                "deadline check read the copy (watch the failed-copies queue)", record)
            raise CheckError(f"reading s3://{settings.destination_bucket}/{copy_key}: {_code(exc)}: {exc}") from None
        except BotoCoreError as exc:
            raise CheckError(f"reading s3://{settings.destination_bucket}/{copy_key}: {exc}") from None
        arrived = head["LastModified"]
        if arrived > due:
            return verdict(DELIVERED_LATE, f"copied to s3://{settings.destination_bucket}/{copy_key} at "
                                           f"{_text(arrived)}, after the deadline", record)
        return verdict(DELIVERED, f"copied to s3://{settings.destination_bucket}/{copy_key} at {_text(arrived)}",
                       record)
    if now < due:
        return verdict(PENDING, "the deadline has not passed", record)
    if outcome == "failed":
        return verdict(FAILED, f"the run failed: {record.get('error', 'no error recorded')}", record)
    if record is not None:
        return verdict(FAILED, f"the run's record says {outcome!r}", record)
    return verdict(NOT_RECORDED, "no run of this schedule recorded a result: it never started (Scheduler could not "
                                 "invoke the export, or it was throttled), is still running, or was stopped", None)


def due_in_window(deadline: Deadline, checked_at: dt.datetime, period: dt.timedelta) -> list[dt.datetime]:
    """Scheduled times whose deadline falls in ``(checked_at - period, checked_at]``: each deadline is looked at by
    exactly one check, the first at or after it."""
    offset = dt.timedelta(minutes=deadline.minutes)
    return cron.fires_between(deadline.cron, deadline.time_zone, checked_at - period - offset, checked_at - offset)


def announce(s3: Any, events: Any, settings: Settings, verdict: Verdict) -> bool:
    """Put the run's one ``Workbook Late`` or ``Workbook Skipped`` event; False if it was already announced."""
    key = contract.deadline_notice_key(settings.key_prefix, verdict.export, verdict.schedule,
                                       _text(verdict.scheduled_time))
    detail_type = contract.SKIPPED_DETAIL_TYPE if verdict.state == SKIPPED else contract.LATE_DETAIL_TYPE
    body = json.dumps(verdict.detail(), separators=(",", ":"), default=str)
    try:
        s3.put_object(Bucket=settings.source_bucket, Key=key, Body=body.encode(), IfNoneMatch="*",
                      ContentType="application/json")
    except ClientError as exc:
        if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return False
        raise CheckError(f"writing the notice s3://{settings.source_bucket}/{key}: {_code(exc)}: {exc}") from None
    try:
        answer = events.put_events(Entries=[{"Source": contract.EVENT_SOURCE, "DetailType": detail_type,
                                             "Detail": body}])
        entry = (answer.get("Entries") or [{}])[0]
        if answer.get("FailedEntryCount") or "EventId" not in entry:
            raise CheckError(f"EventBridge refused the {detail_type!r} event: {entry.get('ErrorCode')}: "
                             f"{entry.get('ErrorMessage')}")
    except (ClientError, BotoCoreError, CheckError) as exc:
        # Not announced: remove the notice so the retried check announces it.
        try:
            s3.delete_object(Bucket=settings.source_bucket, Key=key)
        except (ClientError, BotoCoreError):
            pass
        raise CheckError(f"publishing {detail_type!r} for {verdict.export}.{verdict.schedule}: {exc}") from None
    return True
