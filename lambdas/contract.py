"""Facts every part of the pipeline shares: where workbooks go, what they carry, what travels.

The export writes keys and metadata by these rules, the replicator reads them, the stack grants and
filters by them and ``pipeline-ops`` looks for them. Each fact is named here once. Stdlib only: the
bundler puts this module into every function's package (``lambdas/contract.py``).
"""

from __future__ import annotations

import datetime as dt

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
#: When the run started, UTC to the millisecond (``run_at_text``): the replicator's latest copy compares it.
META_RUN_AT = "run-at"

#: The function's event: ``{"export": NAME, "params": {NAME: VALUE}}``.
EVENT_EXPORT = "export"
EVENT_PARAMS = "params"
EVENT_KEYS = (EVENT_EXPORT, EVENT_PARAMS)

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
