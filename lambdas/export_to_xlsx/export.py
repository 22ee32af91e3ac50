"""Run one export: query -> temporary .xlsx -> S3, all or nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
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

from .credentials import SecretCache
from .database import Endpoint, LoginFailed, QueryStream, connect
from .errors import ExportError
from .settings import ExportDefinition
from .xlsx import MAX_DATA_ROWS_PER_SHEET, StorageFullError, XlsxStreamWriter

log = logging.getLogger(__name__)

XLSX_MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
TEMP_PREFIX = "xlsx-export-"
#: Stop writing when less than this is left before the function's timeout, so the
#: invocation fails cleanly (temporary file removed, nothing uploaded) instead of being killed.
DEADLINE_RESERVE_SECONDS = 30
TRANSFER = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20, max_concurrency=4)


@dataclass(frozen=True)
class Target:
    bucket: str
    key_prefix: str


def object_key(prefix: str, export: str, now: dt.datetime) -> str:
    """``<prefix><export>/YYYY/MM/DD/<export>-YYYYMMDDTHHMMSS.mmmZ.xlsx`` in UTC.

    Milliseconds keep two runs in the same second from landing on one key."""
    now = now.astimezone(dt.timezone.utc)
    return f"{prefix}{export}/{now:%Y/%m/%d}/{export}-{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z.xlsx"


def remove_stale_files(directory: Path) -> None:
    """Delete temporary workbooks a killed invocation left in this sandbox's /tmp."""
    for path in directory.glob(f"{TEMP_PREFIX}*.xlsx"):
        path.unlink(missing_ok=True)


def run_export(
    export: ExportDefinition,
    *,
    endpoint: Endpoint,
    secrets: SecretCache,
    s3: Any,
    target: Target,
    remaining_seconds: Callable[[], float] = lambda: float("inf"),
    temp_dir: Path | None = None,
    max_rows_per_sheet: int = MAX_DATA_ROWS_PER_SHEET,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
) -> dict[str, Any]:
    """Export ``export`` and return what was uploaded; on any failure nothing is uploaded and no file is left."""
    started = time.monotonic()
    temp_dir = Path(temp_dir or tempfile.gettempdir())
    fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{export.name}-", suffix=".xlsx", dir=temp_dir)
    os.close(fd)
    path = Path(name)
    key = object_key(target.key_prefix, export.name, now())
    writer = None
    try:
        connection = _connect(endpoint, secrets)
        try:
            stream = QueryStream(connection, export.sql, export=export.name)

            def check_deadline() -> None:
                if remaining_seconds() < DEADLINE_RESERVE_SECONDS:
                    raise ExportError(
                        f"export {export.name!r}: stopped after {stream.rows_read} rows, the function is about to "
                        "time out; raise its timeout or narrow the query"
                    )

            writer = XlsxStreamWriter(
                path, sheet_name=export.sheet_name, columns=stream.columns,
                max_rows_per_sheet=max_rows_per_sheet, check=check_deadline,
            )
            try:
                for batch in stream.batches():
                    writer.write_rows(batch)
            except BaseException:
                stream.abandon()  # do not drain the rest of the result over the network
                raise
            stream.close()
            workbook = writer.close()
        finally:
            connection.close()
        check_deadline()
        metadata = {
            "export": export.name,
            "rows": str(workbook.rows),
            "sheets": str(workbook.sheets),
            "sql-sha256": hashlib.sha256(export.sql.encode()).hexdigest(),
        }
        _upload(s3, path, target.bucket, key, metadata)
    except StorageFullError as exc:
        raise ExportError(f"export {export.name!r}: {exc}") from None
    except OSError as exc:
        raise ExportError(f"export {export.name!r}: cannot write the temporary file {path}: {exc}") from None
    finally:
        if writer is not None:
            writer.discard()  # the temporary file goes, uploaded or not
        path.unlink(missing_ok=True)

    result = {
        "export": export.name,
        "bucket": target.bucket,
        "key": key,
        "rows": workbook.rows,
        "sheets": workbook.sheets,
        "bytes": workbook.bytes,
        "seconds": round(time.monotonic() - started, 3),
    }
    if writer.counts.as_dict():
        result["values_changed"] = writer.counts.as_dict()
    return result


def _connect(endpoint: Endpoint, secrets: SecretCache):
    try:
        return connect(endpoint, secrets.get())
    except LoginFailed:
        # The password may have been rotated since it was cached: read it again, once.
        log.warning("database login failed; reading the secret again")
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
