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

    if _already_copied(s3, settings.destination_bucket, destination_key, version, etag, size):
        return Outcome(request.key, version, size, "already-copied", destination_key)

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
    try:
        s3.copy(source, settings.destination_bucket, destination_key, ExtraArgs=extra, Config=transfer or TRANSFER,
                SourceClient=s3)
    except ClientError as exc:
        raise CopyFailed(request.key, f"copy to s3://{settings.destination_bucket}/{destination_key} failed: "
                                      f"{_error_code(exc)}") from None
    except Exception as exc:  # s3transfer wraps some failures in its own types
        raise CopyFailed(request.key, f"copy to s3://{settings.destination_bucket}/{destination_key} failed: "
                                      f"{type(exc).__name__}: {exc}") from None
    return Outcome(request.key, version, size, "copied", destination_key, dict(head.get("Metadata", {})))


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
