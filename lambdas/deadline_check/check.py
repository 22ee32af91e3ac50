"""Was a scheduled run's workbook in the destination by its deadline? Announce it once if not.

Everything it needs is in the run ledger (``lambdas/ledger.py``): the export's item of each run carries the
schedule that planned it and the scheduled time (``contract.LEDGER_SCHEDULE``, ``LEDGER_SCHEDULED_TIME``), and
the replicator adds the verified delivery with its time. A due run is found with one Query on the export's
partition: the run id starts with the run's start time, which is at or after the scheduled time, so the key
condition is the range from the scheduled time to the deadline, and a filter keeps the items of that schedule
and time (a Lambda retry or a replay of the same event adds one; any of them counts). Nothing depends on the
run having started, and no bucket is read, so a copy in another account's bucket is judged as surely as ours.

- delivered by the deadline (the delivery's time <= deadline): on time, nothing announced;
- ``skipped: empty`` (``on_empty: skip``): announced as ``Workbook Skipped``;
- delivered after the deadline, uploaded with no delivery, failed, or no item (never started, still running,
  or killed; an item is written when the run ends): late, announced as ``Workbook Late``.

Each late or skipped run is announced once: a notice item (partition ``contract.LEDGER_NOTICE_PARTITION``) is
created with a conditional write (``attribute_not_exists``) before the event goes out, so a repeated or retried
check finds it and stays quiet; if the event cannot be put, the notice is removed again and the retry announces.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .. import contract, cron
from ..ledger import attribute, item_of, iso
from .settings import Deadline, Settings

DELIVERED = "delivered"
DELIVERED_LATE = "delivered late"
SKIPPED = "skipped"
FAILED = "failed"
COPY_MISSING = "copy missing"
NOT_RECORDED = "no run recorded"
PENDING = "not due yet"


class CheckError(Exception):
    """The ledger or EventBridge could not be read or written; the check fails and Lambda retries it."""


@dataclass(frozen=True)
class Verdict:
    """What is known about one scheduled run at a moment."""

    export: str
    schedule: str
    scheduled_time: dt.datetime
    deadline: dt.datetime
    state: str
    known: str
    run: dict | None = None  # the ledger item the verdict rests on

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
            "run": self.run,
        }


def _text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime(contract.SCHEDULED_TIME_FORMAT)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _moment(text: Any) -> dt.datetime | None:
    """A ledger time (``iso``: ``...T..:..:...mmmZ``) as an aware datetime; None if absent or not a time."""
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def scheduled_runs(dynamodb: Any, table: str, export: str, schedule: str, scheduled: dt.datetime,
                   until: dt.datetime) -> list[dict]:
    """The ledger items of the runs ``schedule`` planned for ``scheduled`` that started by ``until``: one Query on
    the export's partition, key condition ``run_id BETWEEN <scheduled> AND <until>~`` (a run id is its start time
    to the millisecond, ``#`` and a suffix, so ``~`` keeps the runs of ``until``'s last millisecond), filtered on
    the schedule and its time. DynamoDB filters after reading a page, so every page is read."""
    values = {
        ":e": {"S": export}, ":from": {"S": iso(scheduled)}, ":to": {"S": iso(until) + "~"},
        ":s": {"S": schedule}, ":t": {"S": _text(scheduled)},
    }
    names = {"#e": contract.LEDGER_EXPORT, "#r": contract.LEDGER_RUN_ID, "#s": contract.LEDGER_SCHEDULE,
             "#t": contract.LEDGER_SCHEDULED_TIME}
    items: list[dict] = []
    try:
        pages = dynamodb.get_paginator("query").paginate(
            TableName=table, KeyConditionExpression="#e = :e AND #r BETWEEN :from AND :to",
            FilterExpression="#s = :s AND #t = :t", ExpressionAttributeNames=names, ExpressionAttributeValues=values,
            ConsistentRead=True)
        for page in pages:
            items += [item_of(raw) for raw in page.get("Items", [])]
    except ClientError as exc:
        raise CheckError(f"reading the run ledger {table} for {export}: {_code(exc)}: {exc}") from None
    except BotoCoreError as exc:
        raise CheckError(f"reading the run ledger {table} for {export}: {exc}") from None
    return items


def _delivered_at(item: dict) -> dt.datetime | None:
    delivery = item.get(contract.LEDGER_DELIVERY)
    return _moment(delivery.get("at")) if isinstance(delivery, dict) else None


def _where(item: dict) -> str:
    delivery = item.get(contract.LEDGER_DELIVERY) or {}
    return f"s3://{delivery.get('bucket')}/{delivery.get('key')}"


def judge(dynamodb: Any, table: str, deadline: Deadline, scheduled: dt.datetime, now: dt.datetime, *,
          until: dt.datetime | None = None) -> Verdict:
    """The state of the run ``deadline``'s schedule planned for ``scheduled``, as the ledger shows it at ``now``,
    from the runs that started by ``until`` (default: the deadline; a run started later cannot make it)."""
    due = scheduled + dt.timedelta(minutes=deadline.minutes)

    def verdict(state: str, known: str, run: dict | None = None) -> Verdict:
        return Verdict(deadline.export, deadline.schedule, scheduled, due, state, known, run)

    runs = scheduled_runs(dynamodb, table, deadline.export, deadline.schedule, scheduled, until or due)
    delivered = sorted(((at, run) for run in runs if (at := _delivered_at(run)) is not None),
                       key=lambda pair: pair[0])
    if delivered and delivered[0][0] <= due:
        at, run = delivered[0]
        return verdict(DELIVERED, f"copied to {_where(run)} at {_text(at)}", run)
    outcomes = {run.get(contract.LEDGER_OUTCOME): run for run in runs}
    if "skipped: empty" in outcomes:
        return verdict(SKIPPED, "every sheet was empty and the export skips empty workbooks (on_empty: skip)",
                       outcomes["skipped: empty"])
    if delivered:
        at, run = delivered[0]
        return verdict(DELIVERED_LATE, f"copied to {_where(run)} at {_text(at)}, after the deadline", run)
    if now < due:
        return verdict(PENDING, "the deadline has not passed", runs[-1] if runs else None)
    if "uploaded" in outcomes:
        run = outcomes["uploaded"]
        return verdict(COPY_MISSING, f"uploaded as {run.get(contract.LEDGER_KEY)}; no delivery recorded in the run "
                                     "ledger (see the failed-copies queue)", run)
    if "failed" in outcomes:
        run = outcomes["failed"]
        return verdict(FAILED, f"the run failed: {run.get(contract.LEDGER_ERROR) or 'no error recorded'}", run)
    if runs:
        return verdict(FAILED, f"the run's ledger item says {runs[-1].get(contract.LEDGER_OUTCOME)!r}", runs[-1])
    return verdict(NOT_RECORDED, "no run of this schedule recorded a result: it never started (Scheduler could not "
                                 "invoke the export, or it was throttled), is still running, or was stopped", None)


def due_in_window(deadline: Deadline, checked_at: dt.datetime, period: dt.timedelta) -> list[dt.datetime]:
    """Scheduled times whose deadline falls in ``(checked_at - period, checked_at]``: each deadline is looked at by
    exactly one check, the first at or after it."""
    offset = dt.timedelta(minutes=deadline.minutes)
    return cron.fires_between(deadline.cron, deadline.time_zone, checked_at - period - offset, checked_at - offset)


def _notice_key(verdict: Verdict) -> dict[str, dict[str, str]]:
    notice = contract.notice_id(_text(verdict.scheduled_time), verdict.export, verdict.schedule)
    return {contract.LEDGER_EXPORT: {"S": contract.LEDGER_NOTICE_PARTITION}, contract.LEDGER_RUN_ID: {"S": notice}}


def announce(dynamodb: Any, events: Any, settings: Settings, verdict: Verdict) -> bool:
    """Put the run's one ``Workbook Late`` or ``Workbook Skipped`` event; False if it was already announced."""
    detail_type = contract.SKIPPED_DETAIL_TYPE if verdict.state == SKIPPED else contract.LATE_DETAIL_TYPE
    detail = verdict.detail()
    body = json.dumps(detail, separators=(",", ":"), default=str)
    key = _notice_key(verdict)
    names = {"#n": contract.LEDGER_NOTICE}
    expires = int(verdict.scheduled_time.timestamp()) + settings.history_days * 86400
    try:
        dynamodb.update_item(
            TableName=settings.ledger_table, Key=key,
            UpdateExpression="SET #n = :n, #x = :x", ConditionExpression="attribute_not_exists(#n)",
            ExpressionAttributeNames={**names, "#x": contract.LEDGER_EXPIRES},
            ExpressionAttributeValues={":n": attribute({"detail_type": detail_type, "detail": body}),
                                       ":x": {"N": str(expires)}})
    except ClientError as exc:
        if _code(exc) == "ConditionalCheckFailedException":
            return False
        raise CheckError(f"writing the notice of {verdict.export}.{verdict.schedule} at "
                         f"{_text(verdict.scheduled_time)}: {_code(exc)}: {exc}") from None
    except BotoCoreError as exc:
        raise CheckError(f"writing the notice of {verdict.export}.{verdict.schedule}: {exc}") from None
    try:
        answer = events.put_events(Entries=[{"Source": contract.EVENT_SOURCE, "DetailType": detail_type,
                                             "Detail": body}])
        entry = (answer.get("Entries") or [{}])[0]
        if answer.get("FailedEntryCount") or "EventId" not in entry:
            raise CheckError(f"EventBridge refused the {detail_type!r} event: {entry.get('ErrorCode')}: "
                             f"{entry.get('ErrorMessage')}")
    except (ClientError, BotoCoreError, CheckError) as exc:
        # Not announced: take the notice back so the retried check announces it.
        try:
            dynamodb.update_item(TableName=settings.ledger_table, Key=key, UpdateExpression="REMOVE #n",
                                 ExpressionAttributeNames=names)
        except (ClientError, BotoCoreError):
            pass
        raise CheckError(f"publishing {detail_type!r} for {verdict.export}.{verdict.schedule}: {exc}") from None
    return True
