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
from .database import (Endpoint, LoginFailed, QueryStream, StatementTimeLimit, begin_snapshot, configure_session,
                       connect, end_snapshot)
from .errors import ExportError
from .definition import ExportDefinition
from .checksum import hex_to_base64
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


def query_time_limit(export: ExportDefinition) -> float | None:
    """The statement time limit of this run: the export's ``max_query_seconds`` (config sets it to the function's
    timeout less a margin unless the export gives one; None only where no config set it, as in unit tests)."""
    return None if export.max_query_seconds is None else float(export.max_query_seconds)


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
    run_id: str | None = None,
    transfer: TransferConfig | None = None,
    scheduled: ScheduledRun | None = None,
    mask_key: Callable[[], bytes] | None = None,
) -> dict[str, Any]:
    """Export ``export`` with the run-time ``params`` and return what was uploaded (or skipped).

    Every sheet reads one consistent snapshot of the database, in a session whose time zone is the
    export's and whose statements the server stops after :func:`query_time_limit`. Parameters are
    checked before connecting; relative dates of a scheduled run are taken at its scheduled time
    (so a replayed run reads the day it was planned for). On any failure nothing is uploaded and no
    file is left; the ExportError raised then carries the resolved parameters (``params``, when they
    were resolved) for the run's ledger item. ``run_id`` is recorded in the workbook's metadata, so
    the replicator finds the run's ledger item. ``mask_key`` gives the HMAC key of ``sha256`` masks (called
    only by an export that has one)."""
    started = time.monotonic()
    run_at = now()
    values = resolve_parameters(export, params, scheduled.scheduled_time if scheduled else run_at)
    recorded = params_module.recorded(export.parameters, values)
    try:
        return _run(export, endpoint=endpoint, secrets=secrets, s3=s3, target=target, values=values,
                    recorded=recorded, remaining_seconds=remaining_seconds, temp_dir=temp_dir,
                    max_rows_per_sheet=max_rows_per_sheet, run_at=run_at, started=started, run_id=run_id,
                    transfer=transfer or TRANSFER, scheduled=scheduled, mask_key=mask_key)
    except ExportError as exc:
        exc.params = recorded  # type: ignore[attr-defined]
        raise


def _run(export: ExportDefinition, *, endpoint: Endpoint, secrets: CredentialSource, s3: Any, target: Target,
         values: dict[str, Any], recorded: dict[str, str], remaining_seconds: Callable[[], float],
         temp_dir: Path | None, max_rows_per_sheet: int, run_at: dt.datetime, started: float,
         run_id: str | None, transfer: TransferConfig, scheduled: ScheduledRun | None,
         mask_key: Callable[[], bytes] | None) -> dict[str, Any]:
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
    limit = query_time_limit(export)
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
            configure_session(connection, export=export.name, time_zone=export.time_zone, max_seconds=limit)
            begin_snapshot(connection, export=export.name)
            writer = XlsxStreamWriter(
                path, formats=export.formats, reserved_names=[s.name for s in export.sheets],
                max_rows_per_sheet=max_rows_per_sheet, check=check_deadline, table_style=export.table,
            )
            for sheet in export.sheets:
                try:
                    stream = QueryStream(connection, sheet.sql, export=export.name, params=values or None,
                                         sheet=sheet.name if len(export.sheets) > 1 else None)
                    columns_seen.update(stream.columns)
                    masker = masks.Masker(export.mask, stream.columns, mask_key, mask_counts,
                                          [masks.text_decoder(t) for t in stream.types])
                    # A masked column's values are text now: the reference path encodes them, not its type's
                    # encoder.
                    types = [ANY if i in masker.masked else t for i, t in enumerate(stream.types)]
                    writer.start_sheet(sheet.name, stream.columns, types)
                    try:
                        for batch in stream.batches():
                            writer.write_rows(masker.rows(batch) if masker else batch)
                    except BaseException:
                        stream.abandon()  # do not drain the rest of the result over the network
                        raise
                except StatementTimeLimit:
                    raise ExportError(
                        f"export {export.name!r}, sheet {sheet.name!r}: the query ran past its limit of {limit:g} s "
                        f"(max_query_seconds) and the server stopped it; nothing was uploaded") from None
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
                writer.add_about(about_rows(export, recorded, run_at, rows_per_sheet, key, scheduled))
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
                contract.META_SHA256: workbook.sha256,
                contract.META_RUN_AT: contract.run_at_text(run_at),
            }
            if run_id:
                metadata[contract.META_RUN_ID] = run_id
            if recorded_json:
                metadata[contract.META_PARAMS] = recorded_json
            if scheduled is not None:
                metadata[contract.META_SCHEDULE] = scheduled.name
                metadata[contract.META_SCHEDULED_TIME] = scheduled.time_text
            stored = _upload(s3, path, target.bucket, key, metadata, workbook.sha256, transfer)
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
        "sha256": workbook.sha256,
        "version_id": stored.get("VersionId"),
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


def about_rows(export: ExportDefinition, recorded: dict[str, str], run_at: dt.datetime, rows_per_sheet: list[int],
               key: str, scheduled: ScheduledRun | None) -> list[tuple[str, object]]:
    """The About sheet: what the export is and what this run did. Only the export's definition and the run's
    own facts: nothing of the environment (no database host, user, secret or bucket); parameter values as the
    run records them (a sensitive one as its digest)."""
    local = run_at.astimezone(params_module.time_zone(export.time_zone))
    if scheduled is not None:
        why = f"schedule {scheduled.name}, planned for {scheduled.time_text}"
    else:
        why = f"invoked (its UTC schedule: {export.schedule})" if export.schedule else "invoked"
    rows: list[tuple[str, object]] = [("Export", export.name), ("Trigger", why)]
    rows += [(f"Parameter {name}", value) for name, value in recorded.items()]
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


def upload_checksum(size: int, sha256: str, transfer: TransferConfig) -> dict[str, str]:
    """The S3 additional checksum sent with the upload, so that S3 itself checks the bytes it stores.

    In one request (below the multipart threshold) the workbook's own SHA-256, hashed while it was
    written, goes as ``ChecksumSHA256``: S3 rejects the upload if the bytes it received hash otherwise,
    and the object's stored checksum is this full-object digest. SHA-256 has no full-object form for a
    multipart upload (S3 keeps a checksum of the parts' checksums, "composite"), so above the threshold
    every part is sent with its SHA-256 (``ChecksumAlgorithm``) and S3 checks each part; the full-object
    digest travels in the metadata either way. (CRC64NVME is S3's only full-object-only algorithm, but it
    is a CRC, not the SHA-256 an operator checks with ``sha256sum``, and boto3 computes it only with the
    compiled awscrt package.)"""
    if size < transfer.multipart_threshold:
        return {"ChecksumSHA256": hex_to_base64(sha256)}
    return {"ChecksumAlgorithm": "SHA256"}


def _upload(s3: Any, path: Path, bucket: str, key: str, metadata: dict[str, str], sha256: str,
            transfer: TransferConfig) -> dict[str, Any]:
    """Managed upload (multipart above 64 MiB; a failed multipart upload is aborted by s3transfer).
    Returns S3's answer to the request that stored the object (its ``VersionId``, checksums)."""
    answers: dict[str, Any] = {}

    def capture(parsed: Any = None, model: Any = None, **_: Any) -> None:
        answers[model.name] = parsed

    hooks = [f"after-call.s3.{op}" for op in ("PutObject", "CompleteMultipartUpload")]
    for hook in hooks:
        s3.meta.events.register(hook, capture, unique_id=f"ledger-{hook}")
    try:
        s3.upload_file(
            str(path), bucket, key,
            ExtraArgs={"ContentType": XLSX_MEDIA_TYPE, "Metadata": metadata,
                       **upload_checksum(path.stat().st_size, sha256, transfer)},
            Config=transfer,
        )
    except S3UploadFailedError as exc:
        raise ExportError(f"upload to s3://{bucket}/{key} failed: {_reason(exc)}") from None
    except (ClientError, BotoCoreError, OSError) as exc:
        raise ExportError(f"upload to s3://{bucket}/{key} failed: {type(exc).__name__}: {exc}") from None
    finally:
        for hook in hooks:
            s3.meta.events.unregister(hook, unique_id=f"ledger-{hook}")
    return answers.get("PutObject") or answers.get("CompleteMultipartUpload") or {}


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text.split(": ", 1)[-1] if text.startswith("Failed to upload") else text
