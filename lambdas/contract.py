"""Facts every part of the pipeline shares: where workbooks go, what they carry, what travels.

The export writes keys and metadata by these rules, the replicator reads them, the stack grants and
filters by them and ``pipeline-ops`` looks for them. Each fact is named here once. Stdlib only: the
bundler puts this module into every function's package (``lambdas/contract.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import Any

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
#: SHA-256 (hex) of the whole workbook, hashed by the export as it wrote the file. S3's own SHA256 checksum
#: is this same digest only for an object stored in one request; a multipart upload's is a checksum of its
#: parts' checksums (composite), so the full-object digest travels here.
META_SHA256 = "sha256"
#: The run's id: with ``export``, the key of the run's ledger item, which the replicator completes.
META_RUN_ID = "run-id"
#: A scheduled run's schedule name and the time Scheduler planned it for (``YYYY-MM-DDTHH:MM:SSZ``).
META_SCHEDULE = "schedule"
META_SCHEDULED_TIME = "scheduled-time"
#: When the run started, UTC to the millisecond (``run_at_text``): the replicator's latest copy compares it.
META_RUN_AT = "run-at"

#: The function's event: ``{"export": NAME, "params": {NAME: VALUE}}``; a Scheduler schedule adds
#: ``"schedule": {"name": SCHEDULE, "scheduled_time": "<aws.scheduler.scheduled-time>"}``, so a run knows why it ran.
EVENT_EXPORT = "export"
EVENT_PARAMS = "params"
#: Who asked for the run, recorded in the ledger: ``manual`` (the default), ``backfill`` or ``replay``
#: (sent by pipeline-ops). A scheduled run's event carries its schedule in ``schedule``:
#: ``{"name": NAME, "scheduled_time": "YYYY-MM-DDTHH:MM:SSZ"}`` (what a Scheduler schedule sends).
EVENT_TRIGGER = "trigger"
EVENT_SCHEDULE = "schedule"
EVENT_KEYS = (EVENT_EXPORT, EVENT_PARAMS, EVENT_TRIGGER, EVENT_SCHEDULE)
TRIGGERS = ("manual", "backfill", "replay")
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

#: The run ledger (a DynamoDB table of the stack): one item per run, partition key the export's name
#: (a workbook put in by hand: LEDGER_HAND_PARTITION, which no export name can be), sort key the run id,
#: which starts with the run's UTC start time so an export's items sort by time.
LEDGER_EXPORT = "export"
LEDGER_RUN_ID = "run_id"
LEDGER_HAND_PARTITION = "(by hand)"
LEDGER_TRIGGER = "trigger"
LEDGER_PARAMS_REQUESTED = "params_requested"
LEDGER_PARAMS = "params"
LEDGER_STARTED = "started"
LEDGER_FINISHED = "finished"
LEDGER_OUTCOME = "outcome"  # "uploaded" | "skipped: empty" | "failed"
LEDGER_ERROR = "error"  # one line
LEDGER_ROWS = "rows"
LEDGER_ROWS_PER_SHEET = "rows_per_sheet"
LEDGER_BYTES = "bytes"
LEDGER_SECONDS = "seconds"
LEDGER_BUCKET = "bucket"
LEDGER_KEY = "key"
LEDGER_VERSION_ID = "version_id"
LEDGER_SHA256 = "sha256"
#: A run its event said a schedule planned: the schedule's name and the time Scheduler planned it for
#: (``YYYY-MM-DDTHH:MM:SSZ``), also on a replay or a Lambda retry of that event. The deadline check finds
#: "the run that schedule planned for that time" by these two, in the export's partition.
LEDGER_SCHEDULE = "schedule"
LEDGER_SCHEDULED_TIME = "scheduled_time"
#: The delivery the replicator adds: a map of bucket, key, version_id, at, sha256 (the copy's, as S3
#: computed it) and verified (it equals the workbook's).
LEDGER_DELIVERY = "delivery"
#: Epoch seconds after which DynamoDB deletes the item (the table's TTL attribute).
LEDGER_EXPIRES = "expires_at"
DEFAULT_HISTORY_DAYS = 400
#: The deadline check's notices: one item per announced run (late or skipped), created with a conditional
#: write before its event goes out, so a retried or repeated check announces a run once. A partition of its
#: own (no export name can be it), so an export's items stay its runs; sort key :func:`notice_id`.
LEDGER_NOTICE_PARTITION = "(deadline notices)"
#: The announcement the notice stands for: ``{"detail_type", "detail"}`` (removed again if the event could not be put).
LEDGER_NOTICE = "notice"
#: Custom metric (namespace MysqlXlsxPipeline, dimension FunctionName) counting ledger writes that failed.
METRIC_NAMESPACE = "MysqlXlsxPipeline"
METRIC_LEDGER_NOT_WRITTEN = "LedgerWritesFailed"


def run_id(started_iso: str, unique: str) -> str:
    """``<started, ISO UTC to the millisecond>#<unique>``: sorts by time within an export."""
    return f"{started_iso}#{unique}"


def notice_id(scheduled_time: str, export: str, schedule: str) -> str:
    """``<scheduled time>#<export>#<schedule>``: the notice of one scheduled run, sorted by its time."""
    return f"{scheduled_time}#{export}#{schedule}"

#: The Amazon RDS CA bundle, written by the bundler into each package that connects to the database.
CA_BUNDLE_FILE = "rds-ca-bundle.pem"


def run_at_text(run_at: dt.datetime) -> str:
    """``2026-12-04T05:00:00.123Z``: sorts as the instants do (fixed width, UTC)."""
    run_at = run_at.astimezone(dt.timezone.utc)
    return f"{run_at:%Y-%m-%dT%H:%M:%S}.{run_at.microsecond // 1000:03d}Z"


#: The stable name an export's newest workbook gets in the destination (``latest_copy``).
LATEST_NAME = "latest.xlsx"


def latest_key(destination_prefix: str, key_prefix: str, export: str) -> str:
    """``<destination prefix><key_prefix><export>/latest.xlsx``."""
    return destination_prefix + export_prefix(key_prefix, export) + LATEST_NAME


def export_prefix(key_prefix: str, export: str) -> str:
    """Every key of one export starts with this (its IAM grant and its listing are this prefix)."""
    return f"{key_prefix}{export}/"


def object_key(prefix: str, export: str, now: dt.datetime, day: dt.date | None = None) -> str:
    """``<prefix><export>/YYYY/MM/DD/<export>-YYYYMMDDTHHMMSS.mmmZ.xlsx``.

    The date folders are ``day`` when given (the value of the export's first ``date``
    parameter: the day the data is about, so a backfill lands in that day's folder), else the
    run's UTC date. The file name is always the run's UTC time; milliseconds keep two runs in
    the same second from landing on one key."""
    now = now.astimezone(dt.timezone.utc)
    folder = f"{day:%Y/%m/%d}" if day is not None else f"{now:%Y/%m/%d}"
    return f"{export_prefix(prefix, export)}{folder}/{export}-{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z.xlsx"


#: S3's longest key, in UTF-8 bytes (https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html).
MAX_KEY_BYTES = 1024


def longest_copy_key(destination_prefix: str, key_prefix: str, export: str) -> str:
    """The longest key an export's copy can get: the destination prefix before the export's longest key."""
    return destination_key(destination_prefix, object_key(key_prefix, export, dt.datetime(2026, 12, 31, 23, 59, 59,
                                                                                         tzinfo=dt.timezone.utc)))


def is_replicated(key: str, source_prefix: str) -> bool:
    """The one rule the notification filter, the replicator's grant and its handler share."""
    return key.startswith(source_prefix) and key.endswith(SUFFIXES)


def destination_key(destination_prefix: str, key: str) -> str:
    """The key of a source object's copy in the destination bucket."""
    return destination_prefix + key


def put_metric(function_name: str, metric: str, value: int = 1, out: Any = None) -> None:
    """One embedded-metric-format log line (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/
    CloudWatch_Embedded_Metric_Format_Specification.html): CloudWatch Logs turns it into ``metric`` = ``value`` in
    METRIC_NAMESPACE with the dimension ``FunctionName``, which the stack's alarms watch."""
    line = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{"Namespace": METRIC_NAMESPACE, "Dimensions": [["FunctionName"]],
                                   "Metrics": [{"Name": metric, "Unit": "Count"}]}],
        },
        "FunctionName": function_name,
        metric: value,
    }
    stream = out or sys.stdout
    stream.write(json.dumps(line, separators=(",", ":")) + "\n")
    stream.flush()
