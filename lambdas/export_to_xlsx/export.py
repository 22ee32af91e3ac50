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
from . import masks
from .columns import ANY
from .database import Endpoint, LoginFailed, QueryStream, begin_snapshot, connect, end_snapshot
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
    mask_key: Callable[[], bytes] | None = None,
) -> dict[str, Any]:
    """Export ``export`` with the run-time ``params`` and return what was uploaded (or skipped).

    Every sheet reads one consistent snapshot of the database. Parameters are checked before
    connecting. On any failure nothing is uploaded and no file is left. ``mask_key`` gives the HMAC key of
    ``sha256`` masks (called only by an export that has one)."""
    started = time.monotonic()
    run_at = now()
    values = resolve_parameters(export, params, run_at)
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
    key = contract.object_key(target.key_prefix, export.name, run_at, key_day(export, values))
    writer = None
    stream = None
    rows_before = 0
    mask_counts: dict[str, int] = {}
    columns_seen: set[str] = set()
    rows_per_sheet: list[int] = []

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
            begin_snapshot(connection, export=export.name)
            writer = XlsxStreamWriter(
                path, formats=export.formats, reserved_names=[s.name for s in export.sheets],
                max_rows_per_sheet=max_rows_per_sheet, check=check_deadline, table_style=export.table,
            )
            for sheet in export.sheets:
                stream = QueryStream(connection, sheet.sql, export=export.name, params=values or None,
                                     sheet=sheet.name if len(export.sheets) > 1 else None)
                columns_seen.update(stream.columns)
                masker = masks.Masker(export.mask, stream.columns, mask_key, mask_counts)
                # A masked column's values are text now: the reference path encodes them, not its type's encoder.
                types = [ANY if i in masker.masked else t for i, t in enumerate(stream.types)]
                writer.start_sheet(sheet.name, stream.columns, types)
                try:
                    for batch in stream.batches():
                        writer.write_rows(masker.rows(batch) if masker else batch)
                except BaseException:
                    stream.abandon()  # do not drain the rest of the result over the network
                    raise
                stream.close()
                rows_before += stream.rows_read
                rows_per_sheet.append(stream.rows_read)
                stream = None
            end_snapshot(connection)
            unmasked = masks.unmatched(export.mask, columns_seen)
            if unmasked:  # a typo would otherwise send the column unmasked
                raise ExportError(f"export {export.name!r}: mask names column(s) {', '.join(map(repr, unmasked))} "
                                  f"that no sheet has (columns: {', '.join(sorted(columns_seen))})")
            if export.about_sheet:
                writer.add_about(about_rows(export, values, params, run_at, rows_per_sheet, key))
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
                contract.META_RUN_AT: contract.run_at_text(run_at),
            }
            if recorded_json:
                metadata[contract.META_PARAMS] = recorded_json
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
    changed = {**writer.counts.as_dict(), **mask_counts}
    if changed:
        result["values_changed"] = changed
    return result


def about_rows(export: ExportDefinition, values: dict[str, Any], given: Any, run_at: dt.datetime,
               rows_per_sheet: list[int], key: str) -> list[tuple[str, object]]:
    """The About sheet: what the export is and what this run did. Only the export's definition and the run's
    own facts: nothing of the environment (no database host, user, secret or bucket)."""
    given_names = sorted(given) if isinstance(given, dict) else []
    local = run_at.astimezone(params_module.time_zone(export.time_zone))
    rows: list[tuple[str, object]] = [
        ("Export", export.name),
        ("Schedule (UTC)", export.schedule or "none: runs when invoked"),
        ("Parameters given by the run", ", ".join(given_names) or "none (defaults)"),
    ]
    rows += [(f"Parameter {name}", params_module.as_text(value)) for name, value in values.items()]
    rows += [
        ("Run started (UTC)", run_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"),
        (f"Run started ({export.time_zone})",
         local.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " " + local.strftime("%Z (UTC%z)")),
    ]
    rows += [(f"Rows in {sheet.name}", n) for sheet, n in zip(export.sheets, rows_per_sheet)]
    rows += [("SQL SHA-256", sql_digest(export)), ("Object key", key)]
    if export.mask:
        rows.append(("Masked columns", ", ".join(f"{c} ({how})" for c, how in sorted(export.mask.items()))))
    return rows


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
