"""Lambda entry point of DeadlineCheck: every minute, look at each schedule's runs whose deadline just passed."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
from typing import Any

import boto3
from botocore.config import Config

from .. import contract
from .check import SKIPPED, CheckError, announce, due_in_window, judge
from .settings import CHECK_PERIOD_MINUTES, EVENT_CHECKED_AT, METRIC_LATE, Settings, load_settings

log = logging.getLogger()

AWS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


@functools.cache
def runtime() -> tuple[Settings, Any, Any]:
    settings = load_settings(os.environ)
    return settings, boto3.client("dynamodb", config=AWS_CONFIG), boto3.client("events", config=AWS_CONFIG)


def checked_at(event: Any) -> dt.datetime:
    """The check's scheduled time (a retried check keeps it, so it looks at the same deadlines), to the minute."""
    raw = event.get(EVENT_CHECKED_AT) if isinstance(event, dict) else None
    try:
        moment = dt.datetime.strptime(raw, contract.SCHEDULED_TIME_FORMAT).replace(tzinfo=dt.timezone.utc)
    except (TypeError, ValueError):
        raise CheckError(f'the event must be {{"{EVENT_CHECKED_AT}": "YYYY-MM-DDTHH:MM:SSZ"}}, got {event!r}') from None
    return moment.replace(second=0)


def count_late(function_name: str, late: int, out: Any = None) -> None:
    """``WorkbooksLate`` = ``late`` for this function (:func:`contract.put_metric`)."""
    contract.put_metric(function_name, METRIC_LATE, late, out)


def check(event: Any, settings: Settings, dynamodb: Any, events: Any, now: dt.datetime) -> dict[str, Any]:
    at = checked_at(event)
    period = dt.timedelta(minutes=CHECK_PERIOD_MINUTES)
    results, late = [], 0
    for deadline in settings.deadlines:
        for scheduled in due_in_window(deadline, at, period):
            verdict = judge(dynamodb, settings.ledger_table, deadline, scheduled, now)
            announced = (announce(dynamodb, events, settings, verdict) if verdict.late or verdict.state == SKIPPED
                         else False)
            late += verdict.late and announced
            line = {**verdict.detail(), "announced": announced}
            (log.warning if verdict.late else log.info)(json.dumps(line, default=str))
            results.append(line)
    if late:
        count_late(settings.function_name, late)
    return {"checked_at": at.strftime(contract.SCHEDULED_TIME_FORMAT), "runs": results}


def handler(event: Any, context: Any) -> dict[str, Any]:
    settings, dynamodb, events = runtime()
    return check(event, settings, dynamodb, events, dt.datetime.now(dt.timezone.utc))
