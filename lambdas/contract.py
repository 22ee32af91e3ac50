"""Facts every part of the pipeline shares: where workbooks go, what they carry, what travels.

The export writes keys and metadata by these rules, the replicator reads them, the stack grants and
filters by them and ``pipeline-ops`` looks for them. Each fact is named here once. Stdlib only: the
bundler puts this module into every function's package (``lambdas/contract.py``).
"""

from __future__ import annotations

#: The key endings that are copied. S3 notification filters compare suffixes case-sensitively,
#: so the stack adds one filter per ending and the replicator accepts exactly these, nothing else
#: (``Report.Xlsx`` is neither delivered nor copied).
SUFFIXES = (".xlsx", ".XLSX")

#: Object metadata the export writes on each workbook (S3 user metadata, ``x-amz-meta-*``).
META_EXPORT = "export"
META_ROWS = "rows"
META_SHEETS = "sheets"
META_PARAMS = "params"
META_SQL_SHA256 = "sql-sha256"
#: A scheduled run's schedule name and the time Scheduler planned it for (``YYYY-MM-DDTHH:MM:SSZ``).
META_SCHEDULE = "schedule"
META_SCHEDULED_TIME = "scheduled-time"

#: The function's event: ``{"export": NAME, "params": {NAME: VALUE}}``; a Scheduler schedule adds
#: ``"schedule": {"name": SCHEDULE, "scheduled_time": "<aws.scheduler.scheduled-time>"}``, so a run knows why it ran.
EVENT_EXPORT = "export"
EVENT_PARAMS = "params"
EVENT_SCHEDULE = "schedule"
EVENT_KEYS = (EVENT_EXPORT, EVENT_PARAMS, EVENT_SCHEDULE)
SCHEDULE_NAME = "name"
SCHEDULE_TIME = "scheduled_time"
#: Scheduler puts the time a run was planned for in place of this keyword (a context attribute:
#: https://docs.aws.amazon.com/scheduler/latest/UserGuide/managing-schedule-context-attributes.html).
SCHEDULED_TIME_ATTRIBUTE = "<aws.scheduler.scheduled-time>"
SCHEDULED_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

#: Events the pipeline puts on the account's default EventBridge bus.
EVENT_SOURCE = "mysql-xlsx-pipeline"
LATE_DETAIL_TYPE = "Workbook Late"
SKIPPED_DETAIL_TYPE = "Workbook Skipped"

#: The Amazon RDS CA bundle, written by the bundler into each package that connects to the database.
CA_BUNDLE_FILE = "rds-ca-bundle.pem"


def export_prefix(key_prefix: str, export: str) -> str:
    """Every key of one export starts with this (its IAM grant and its listing are this prefix)."""
    return f"{key_prefix}{export}/"


def run_record_prefix(key_prefix: str, export: str, schedule: str) -> str:
    """Where the records of one schedule's runs are kept in the source bucket (not .xlsx: never copied)."""
    return f"{export_prefix(key_prefix, export)}runs/{schedule}/"


def run_record_key(key_prefix: str, export: str, schedule: str, scheduled_time: str) -> str:
    """The export's record of the run ``schedule`` planned for ``scheduled_time``: what it uploaded, skipped,
    or why it failed. The deadline check reads exactly this key, so it needs no listing."""
    return f"{run_record_prefix(key_prefix, export, schedule)}{scheduled_time}.json"


def deadline_notice_key(key_prefix: str, export: str, schedule: str, scheduled_time: str) -> str:
    """Written once (a conditional put) by the deadline check before it announces a late or skipped run,
    so a repeated check never announces it twice."""
    return f"{run_record_prefix(key_prefix, export, schedule)}{scheduled_time}.notice"


def is_replicated(key: str, source_prefix: str) -> bool:
    """The one rule the notification filter, the replicator's grant and its handler share."""
    return key.startswith(source_prefix) and key.endswith(SUFFIXES)


def destination_key(destination_prefix: str, key: str) -> str:
    """The key of a source object's copy in the destination bucket."""
    return destination_prefix + key
