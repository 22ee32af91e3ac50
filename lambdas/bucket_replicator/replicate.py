"""Copy one object version server-side, exactly once per version."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from .. import contract
from .events import CopyRequest
from .settings import DESTINATION_ACL, Settings

#: Objects over this size are copied in parts (UploadPartCopy); no data passes through the function.
TRANSFER = TransferConfig(multipart_threshold=256 * 2**20, multipart_chunksize=256 * 2**20, max_concurrency=8)
#: System headers a multipart copy does not carry by itself; copied along with user metadata.
CARRIED_HEADERS = ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl")
META_SOURCE_BUCKET = "source-bucket"
META_SOURCE_KEY = "source-key"
META_SOURCE_VERSION = "source-version-id"
META_SOURCE_ETAG = "source-etag"


#: S3 keeps at most 2 KB of user-defined metadata per object, names and values in UTF-8
#: (https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingMetadata.html).
MAX_METADATA_BYTES = 2048


def metadata_bytes(metadata: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())


class CopyFailed(Exception):
    def __init__(self, key: str, reason: str):
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Outcome:
    key: str
    version_id: str | None
    bytes: int
    outcome: str  # "copied" | "already-copied"
    destination_key: str
    metadata: dict[str, str] = field(default_factory=dict)  # the source object's user metadata
    #: What happened to the export's latest.xlsx (None: the export keeps none).
    latest: str | None = None


def _error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "Error")


def replicate(s3: Any, request: CopyRequest, settings: Settings, *, transfer: TransferConfig | None = None) -> Outcome:
    """Copy the version named by ``request`` unless the destination already holds it."""
    source = {"Bucket": settings.source_bucket, "Key": request.key}
    if request.version_id:
        source["VersionId"] = request.version_id
    try:
        head = s3.head_object(**source)
    except ClientError as exc:
        code = _error_code(exc)
        if code in ("404", "NoSuchKey", "NoSuchVersion"):
            raise CopyFailed(request.key, "the object (version) no longer exists in the source bucket") from None
        raise CopyFailed(request.key, f"cannot read the source object: {code}") from None
    version = head.get("VersionId") or request.version_id
    etag = head.get("ETag", "").strip('"')
    size = head["ContentLength"]
    destination_key = contract.destination_key(settings.destination_prefix, request.key)

    metadata = dict(head.get("Metadata", {}))
    metadata.update({
        META_SOURCE_BUCKET: settings.source_bucket,
        META_SOURCE_KEY: quote(request.key, safe="/"),
        META_SOURCE_ETAG: etag,
    })
    if version:
        metadata[META_SOURCE_VERSION] = version
    if metadata_bytes(metadata) > MAX_METADATA_BYTES:
        # The copy's key is the destination prefix plus this key: the only field that can be left out.
        del metadata[META_SOURCE_KEY]
    if metadata_bytes(metadata) > MAX_METADATA_BYTES:
        raise CopyFailed(request.key, f"the object's user metadata with the source recorded takes "
                                      f"{metadata_bytes(metadata)} bytes, more than S3's {MAX_METADATA_BYTES}")
    extra = {"MetadataDirective": "REPLACE", "Metadata": metadata, "ACL": DESTINATION_ACL}
    if settings.destination_kms_key_arn:
        extra.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=settings.destination_kms_key_arn)
    extra.update({h: head[h] for h in CARRIED_HEADERS if head.get(h)})
    if version:
        source["VersionId"] = version  # pin what we read, even if the event carried no version
    if _already_copied(s3, settings.destination_bucket, destination_key, version, etag, size):
        # A retry after a failed latest copy completes it; otherwise the latest copy finds itself up to date.
        latest = keep_latest(s3, settings, request.key, source, size, metadata, extra)
        return Outcome(request.key, version, size, "already-copied", destination_key, latest=latest)
    try:
        s3.copy(source, settings.destination_bucket, destination_key, ExtraArgs=extra, Config=transfer or TRANSFER,
                SourceClient=s3)
    except ClientError as exc:
        raise CopyFailed(request.key, f"copy to s3://{settings.destination_bucket}/{destination_key} failed: "
                                      f"{_error_code(exc)}") from None
    except Exception as exc:  # s3transfer wraps some failures in its own types
        raise CopyFailed(request.key, f"copy to s3://{settings.destination_bucket}/{destination_key} failed: "
                                      f"{type(exc).__name__}: {exc}") from None
    latest = keep_latest(s3, settings, request.key, source, size, metadata, extra)
    return Outcome(request.key, version, size, "copied", destination_key, dict(head.get("Metadata", {})), latest)


#: CopyObject copies at most 5 GB in one request; a conditional write needs one request.
MAX_SINGLE_COPY_BYTES = 5 * 10**9
#: Conditional writes lost to another run's copy before this one gives up (each loss re-reads latest.xlsx).
LATEST_ATTEMPTS = 5
#: S3's answers when a conditional write's condition fails (412) or another write raced it (409):
#: https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html
CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def keep_latest(s3: Any, settings: Settings, key: str, source: dict, size: int, metadata: dict[str, str],
                extra: dict[str, Any]) -> str | None:
    """Copy the workbook to its export's ``latest.xlsx`` unless the one there is from the same or a newer run.

    Newer means a later ``run-at`` (the run's start, in the metadata the export writes and every copy carries).
    The copy is a conditional CopyObject: ``If-None-Match: *`` when there is no latest.xlsx yet, ``If-Match``
    with the ETag just read otherwise, so a run that finishes at the same moment cannot slip in between the
    read and the write; a lost race reads again and decides again. Returns what happened (for the log line)."""
    export = metadata.get(contract.META_EXPORT)
    folder = settings.latest_copies.get(export) if export else None
    if folder is None:
        return None
    run_at = metadata.get(contract.META_RUN_AT)
    if not key.startswith(folder) or not run_at:
        return "not kept: not the export's own workbook (outside its folder or without run-at)"
    latest = settings.destination_prefix + folder + contract.LATEST_NAME
    if size > MAX_SINGLE_COPY_BYTES:
        raise CopyFailed(key, f"cannot keep it as s3://{settings.destination_bucket}/{latest}: over 5 GB, more than "
                              "one conditional CopyObject copies")
    for _ in range(LATEST_ATTEMPTS):
        try:
            there = s3.head_object(Bucket=settings.destination_bucket, Key=latest)
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchKey", "403", "AccessDenied"):  # 403: missing, no ListBucket
                raise CopyFailed(key, f"cannot read s3://{settings.destination_bucket}/{latest}: "
                                      f"{_error_code(exc)}") from None
            there = None
        if there is not None and there.get("Metadata", {}).get(contract.META_RUN_AT, "") >= run_at:
            return f"not kept: {latest} is from the same or a newer run"
        condition = {"IfMatch": there["ETag"]} if there is not None else {"IfNoneMatch": "*"}
        try:
            s3.copy_object(CopySource=source, Bucket=settings.destination_bucket, Key=latest, **extra, **condition)
        except ClientError as exc:
            if _error_code(exc) in CONDITION_FAILED:
                continue  # another run wrote latest.xlsx in between: look again
            raise CopyFailed(key, f"copy to s3://{settings.destination_bucket}/{latest} failed: "
                                  f"{_error_code(exc)}") from None
        return f"kept as {latest}"
    raise CopyFailed(key, f"{latest} changed {LATEST_ATTEMPTS} times while this copy tried to replace it")


def _already_copied(s3: Any, bucket: str, key: str, version: str | None, etag: str, size: int) -> bool:
    """True when the destination object records this very source version (or ETag) and has its size."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "403", "AccessDenied"):
            return False  # without s3:ListBucket a missing key answers 403
        raise CopyFailed(key, f"cannot check the destination object: {_error_code(exc)}") from None
    recorded = head.get("Metadata", {})
    same_source = recorded.get(META_SOURCE_VERSION) == version if version else recorded.get(META_SOURCE_ETAG) == etag
    return same_source and head.get("ContentLength") == size
