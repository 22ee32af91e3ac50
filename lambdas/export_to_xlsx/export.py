"""Run one export: query -> temporary .xlsx -> S3, all or nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from . import params as params_module
from .. import contract
from .credentials import CredentialSource
from .database import (Endpoint, LoginFailed, QueryStream, StatementTimeLimit, begin_snapshot, configure_session,
                       connect, end_snapshot)
from .errors import ExportError
from .definition import ExportDefinition
from .xlsx import MAX_DATA_ROWS_PER_SHEET, SheetTooLargeError, StorageFullError, XlsxStreamWriter

log = logging.getLogger(__name__)

XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
TEMP_PREFIX = "xlsx-export-"
#: The parameter values recorded in a workbook's metadata; the rest of the 2 KB S3 allows per object is
#: the export's own fields and what the replicator adds to the copy.
MAX_PARAMS_METADATA_BYTES = 1024
#: Stop writing when less than this is left before the function's timeout, so the
#: invocation fails cleanly (temporary file removed, nothing uploaded) instead of being killed.
DEADLINE_RESERVE_SECONDS = 30
TRANSFER = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20, max_concurrency=4)


@dataclass(frozen=True)
class Target:
    bucket: str
    key_prefix: str


@dataclass(frozen=True)
class ScheduledRun:
    """Why a run happened: the Scheduler schedule that planned it, and for when (UTC, to the second)."""

    name: str
    scheduled_time: dt.datetime

    @property
    def time_text(self) -> str:
        return self.scheduled_time.strftime(contract.SCHEDULED_TIME_FORMAT)

    def as_json(self) -> dict[str, str]:
        return {contract.SCHEDULE_NAME: self.name, contract.SCHEDULE_TIME: self.time_text}


def record_run(s3: Any, target: Target, export: str, run: ScheduledRun, body: dict[str, Any]) -> None:
    """Write the run's record (``contract.run_record_key``) that the deadline check reads: what the run uploaded,
    that it skipped an empty result, or why it failed. Best effort: a failed write is logged, never raised."""
    key = contract.run_record_key(target.key_prefix, export, run.name, run.time_text)
    try:
        s3.put_object(Bucket=target.bucket, Key=key, ContentType="application/json",
                      Body=json.dumps(body, ensure_ascii=True, default=str).encode())
    except (ClientError, BotoCoreError) as exc:
        log.error(json.dumps({"export": export, "run_record": key, "error": f"{type(exc).__name__}: {exc}"}))


def query_time_limit(export: ExportDefinition) -> float | None:
    """The statement time limit of this run: the export's ``max_query_seconds`` (config sets it to the function's
    timeout less a margin unless the export gives one; None only where no config set it, as in unit tests)."""
    return None if export.max_query_seconds is None else float(export.max_query_seconds)


def object_key(prefix: str, export: str, now: dt.datetime, day: dt.date | None = None) -> str:
    """``<prefix><export>/YYYY/MM/DD/<export>-YYYYMMDDTHHMMSS.mmmZ.xlsx``.

    The date folders are ``day`` when given (the value of the export's first ``date``
    parameter: the day the data is about, so a backfill lands in that day's folder), else the
    run's UTC date. The file name is always the run's UTC time; milliseconds keep two runs in
    the same second from landing on one key."""
    now = now.astimezone(dt.timezone.utc)
    folder = f"{day:%Y/%m/%d}" if day is not None else f"{now:%Y/%m/%d}"
    return f"{contract.export_prefix(prefix, export)}{folder}/{export}-{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z.xlsx"


def key_day(export: ExportDefinition, values: dict[str, Any]) -> dt.date | None:
    """The value of the export's first declared ``date`` parameter, if it has one."""
    for p in export.parameters:
        if p.type == "date":
            return values[p.name]
    return None


def sql_digest(export: ExportDefinition) -> str:
    """SHA-256 of the SQL of every sheet (for one sheet: of its SQL), recorded in the metadata."""
    return hashlib.sha256("\0".join(s.sql for s in export.sheets).encode()).hexdigest()


def remove_stale_files(directory: Path) -> None:
    """Delete temporary workbooks a killed invocation left in this sandbox's /tmp."""
    for path in directory.glob(f"{TEMP_PREFIX}*.xlsx"):
        path.unlink(missing_ok=True)


def resolve_parameters(export: ExportDefinition, given: Any, now: dt.datetime) -> dict[str, Any]:
    """The run's typed parameter values (event's, else defaults); raises ExportError naming a bad one."""
    try:
        return params_module.resolve(export.parameters, given, now, export.time_zone, export=export.name)
    except params_module.ParameterError as exc:
        message = str(exc)
        raise ExportError(message if message.startswith("export ") else f"export {export.name!r}: {message}") from None


def run_export(
    export: ExportDefinition,
    *,
    endpoint: Endpoint,
    secrets: CredentialSource,
    s3: Any,
    target: Target,
    params: Any = None,
    remaining_seconds: Callable[[], float] = lambda: float("inf"),
    temp_dir: Path | None = None,
    max_rows_per_sheet: int = MAX_DATA_ROWS_PER_SHEET,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
    scheduled: ScheduledRun | None = None,
) -> dict[str, Any]:
    """Export ``export`` with the run-time ``params`` and return what was uploaded (or skipped).

    Every sheet reads one consistent snapshot of the database, in a session whose time zone is the
    export's and whose statements the server stops after :func:`query_time_limit`. Parameters are
    checked before connecting; relative dates of a scheduled run are taken at its scheduled time
    (so a replayed run reads the day it was planned for). On any failure nothing is uploaded and no
    file is left."""
    started = time.monotonic()
    run_at = now()
    values = resolve_parameters(export, params, scheduled.scheduled_time if scheduled else run_at)
    recorded = {name: params_module.as_text(v) for name, v in values.items()}
    # S3 user metadata is ASCII and at most 2 KB per object, copies included: the values as JSON with
    # non-ASCII characters escaped, checked before any row is read.
    recorded_json = json.dumps(recorded, separators=(",", ":"), ensure_ascii=True) if recorded else None
    if recorded_json and len(recorded_json) > MAX_PARAMS_METADATA_BYTES:
        raise ExportError(
            f"export {export.name!r}: the parameter values take {len(recorded_json)} bytes in the workbook's "
            f"metadata, more than {MAX_PARAMS_METADATA_BYTES} (S3 keeps 2 KB of metadata per object); shorten them")
    temp_dir = Path(temp_dir or tempfile.gettempdir())
    try:
        fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{export.name}-", suffix=".xlsx", dir=temp_dir)
    except OSError as exc:
        raise ExportError(f"export {export.name!r}: cannot create a temporary file in {temp_dir}: {exc}") from None
    os.close(fd)
    path = Path(name)
    key = object_key(target.key_prefix, export.name, run_at, key_day(export, values))
    writer = None
    stream = None
    rows_before = 0
    limit = query_time_limit(export)

    def check_deadline() -> None:
        if remaining_seconds() < DEADLINE_RESERVE_SECONDS:
            read = rows_before + (stream.rows_read if stream is not None else 0)
            raise ExportError(
                f"export {export.name!r}: stopped after {read} rows, the function is about to "
                "time out; raise its timeout or narrow the query"
            )

    try:
        connection = _connect(endpoint, secrets)
        try:
            configure_session(connection, export=export.name, time_zone=export.time_zone, max_seconds=limit)
            begin_snapshot(connection, export=export.name)
            writer = XlsxStreamWriter(
                path, formats=export.formats, reserved_names=[s.name for s in export.sheets],
                max_rows_per_sheet=max_rows_per_sheet, check=check_deadline,
            )
            for sheet in export.sheets:
                try:
                    stream = QueryStream(connection, sheet.sql, export=export.name, params=values or None,
                                         sheet=sheet.name if len(export.sheets) > 1 else None)
                    writer.start_sheet(sheet.name, stream.columns)
                    try:
                        for batch in stream.batches():
                            writer.write_rows(batch)
                    except BaseException:
                        stream.abandon()  # do not drain the rest of the result over the network
                        raise
                except StatementTimeLimit:
                    raise ExportError(
                        f"export {export.name!r}, sheet {sheet.name!r}: the query ran past its limit of {limit:g} s "
                        f"(max_query_seconds) and the server stopped it; nothing was uploaded") from None
                stream.close()
                rows_before += stream.rows_read
                stream = None
            end_snapshot(connection)
            workbook = writer.close()
        finally:
            connection.close()
        check_deadline()
        skipped = workbook.rows == 0 and export.on_empty == "skip"
        if not skipped:
            metadata = {
                contract.META_EXPORT: export.name,
                contract.META_ROWS: str(workbook.rows),
                contract.META_SHEETS: str(workbook.sheets),
                contract.META_SQL_SHA256: sql_digest(export),
            }
            if recorded_json:
                metadata[contract.META_PARAMS] = recorded_json
            if scheduled is not None:
                metadata[contract.META_SCHEDULE] = scheduled.name
                metadata[contract.META_SCHEDULED_TIME] = scheduled.time_text
            _upload(s3, path, target.bucket, key, metadata)
    except (StorageFullError, SheetTooLargeError) as exc:
        raise ExportError(f"export {export.name!r}: {exc}") from None
    except OSError as exc:
        raise ExportError(f"export {export.name!r}: cannot write the temporary file {path}: {exc}") from None
    finally:
        if writer is not None:
            writer.discard()  # the temporary file goes, uploaded or not
        path.unlink(missing_ok=True)

    result: dict[str, Any] = {"export": export.name}
    if scheduled is not None:
        result["schedule"] = scheduled.as_json()
    if recorded:
        result["params"] = recorded
    if skipped:
        result.update({"outcome": "skipped: empty", "rows": 0,
                       "seconds": round(time.monotonic() - started, 3)})
        return result
    result.update({
        "outcome": "uploaded",
        "bucket": target.bucket,
        "key": key,
        "rows": workbook.rows,
        "sheets": workbook.sheets,
        "bytes": workbook.bytes,
        "seconds": round(time.monotonic() - started, 3),
    })
    if len(export.sheets) > 1:
        result["rows_per_sheet"] = dict(zip((s.name for s in export.sheets), workbook.rows_per_sheet))
    unmatched = sorted(set(export.formats) - writer.formats_used)
    if unmatched:
        result["formats_unmatched"] = unmatched  # a format names a column no sheet has: say so, do not fail
    if writer.counts.as_dict():
        result["values_changed"] = writer.counts.as_dict()
    return result


def _connect(endpoint: Endpoint, secrets: CredentialSource):
    try:
        return connect(endpoint, secrets.get())
    except LoginFailed:
        # A rotated password may still be cached (secret mode): read it again, once.
        log.warning("database login failed; fetching the credentials again")
        return connect(endpoint, secrets.get(refresh=True))


def _upload(s3: Any, path: Path, bucket: str, key: str, metadata: dict[str, str]) -> None:
    """Managed upload (multipart above 64 MiB; a failed multipart upload is aborted by s3transfer)."""
    try:
        s3.upload_file(
            str(path), bucket, key,
            ExtraArgs={"ContentType": XLSX_MEDIA_TYPE, "Metadata": metadata},
            Config=TRANSFER,
        )
    except S3UploadFailedError as exc:
        raise ExportError(f"upload to s3://{bucket}/{key} failed: {_reason(exc)}") from None
    except (ClientError, BotoCoreError, OSError) as exc:
        raise ExportError(f"upload to s3://{bucket}/{key} failed: {type(exc).__name__}: {exc}") from None


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1] if text.startswith("Failed to upload") else text
