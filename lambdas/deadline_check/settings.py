"""The contract between the stack and the deadline check: the environment variables it reads.

Stdlib only: the stack imports the names at synth time, the function at cold start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .. import cron

#: The run ledger's table: the check reads each due run from it and writes its notices there.
ENV_LEDGER_TABLE = "LEDGER_TABLE"
#: Days a notice is kept (the table's TTL), as every ledger item.
ENV_HISTORY_DAYS = "HISTORY_DAYS"
#: ``[{"export", "schedule", "cron", "time_zone", "minutes"}]``: every schedule with a deadline.
ENV_DEADLINES = "DEADLINES"
ENV_NAMES = frozenset({ENV_LEDGER_TABLE, ENV_HISTORY_DAYS, ENV_DEADLINES})
#: Set by Lambda itself; names the function in the metric.
ENV_FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"

#: The check's own schedule: every minute (UTC), so a deadline is looked at within a minute of passing.
CHECK_EXPRESSION = "cron(* * * * ? *)"
CHECK_PERIOD_MINUTES = 1
#: Its event: ``{"checked_at": "<aws.scheduler.scheduled-time>"}``; a retried or repeated check has the same time.
EVENT_CHECKED_AT = "checked_at"

#: Custom metrics (embedded metric format, dimension FunctionName): late runs, and events that could not be put.
METRIC_LATE = "WorkbooksLate"


class ConfigurationError(ValueError):
    """The function's environment is missing a variable or holds a bad value."""


@dataclass(frozen=True)
class Deadline:
    """One schedule's deadline: each run's workbook is due ``minutes`` after its scheduled time."""

    export: str
    schedule: str
    cron: str
    time_zone: str
    minutes: int

    def to_json(self) -> dict[str, Any]:
        return {"export": self.export, "schedule": self.schedule, "cron": self.cron, "time_zone": self.time_zone,
                "minutes": self.minutes}


@dataclass(frozen=True)
class Settings:
    ledger_table: str
    deadlines: tuple[Deadline, ...]
    history_days: int = 400
    function_name: str = "deadline-check"


def encode_deadlines(deadlines: list[Deadline]) -> str:
    return json.dumps([d.to_json() for d in deadlines], separators=(",", ":"))


def decode_deadlines(raw: str) -> tuple[Deadline, ...]:
    try:
        items = json.loads(raw)
        deadlines = tuple(Deadline(**item) for item in items)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{ENV_DEADLINES} is not a list of deadlines: {exc}") from None
    for d in deadlines:
        try:
            cron.parse_cron(d.cron)
            ZoneInfo(d.time_zone)
        except (cron.CronError, ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(f"{ENV_DEADLINES}: {d.export}.{d.schedule}: {exc}") from None
        if not isinstance(d.minutes, int) or d.minutes < 1:
            raise ConfigurationError(f"{ENV_DEADLINES}: {d.export}.{d.schedule}: minutes must be at least 1")
    return deadlines


def load_settings(environ: Mapping[str, str]) -> Settings:
    missing = sorted(n for n in ENV_NAMES if not environ.get(n))
    if missing:
        raise ConfigurationError(f"missing environment variables: {', '.join(missing)}")
    days = environ[ENV_HISTORY_DAYS]
    if not days.isdigit() or int(days) < 1:
        raise ConfigurationError(f"{ENV_HISTORY_DAYS} must be a whole number of days, at least 1, got {days!r}")
    return Settings(
        ledger_table=environ[ENV_LEDGER_TABLE],
        deadlines=decode_deadlines(environ[ENV_DEADLINES]),
        history_days=int(days),
        function_name=environ.get(ENV_FUNCTION_NAME) or "deadline-check",
    )
