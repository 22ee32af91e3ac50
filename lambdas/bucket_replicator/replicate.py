"""Copy one object version server-side, exactly once per version."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from .. import contract
from .events import CopyRequest
from .settings import DESTINATION_ACL, Settings

#: Objects up to this size are copied with one CopyObject (S3's limit for it is 5 GB), so S3 computes the
#: copy's checksum over the whole object (a full-object checksum) and it can be compared with the
#: source's. Larger ones are copied in parts (UploadPartCopy), whose checksum would be composite, and are
#: verified by reading the copy once. No data passes through the function otherwise.
TRANSFER = TransferConfig(multipart_threshold=5 * 2**30, multipart_chunksize=512 * 2**20, max_concurrency=8)
#: S3's checksum algorithms and the response field of each.
CHECKSUM_FIELDS = {"SHA256": "ChecksumSHA256", "CRC64NVME": "ChecksumCRC64NVME", "CRC32": "ChecksumCRC32",
                   "CRC32C": "ChecksumCRC32C", "SHA1": "ChecksumSHA1"}
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")
READ_CHUNK = 8 * 2**20
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
class Checksum:
    """What the copy must match: an S3 checksum (``algorithm``, Base64 ``value``), and the workbook's
    SHA-256 in hex when known. ``origin`` says where it came from: the export's metadata, the checksum
    S3 computed for the source object, or a read of the source (a multipart upload by hand)."""

    algorithm: str
    value: str
    sha256: str | None
    origin: str


@dataclass(frozen=True)
class Outcome:
    key: str
    version_id: str | None
    bytes: int
    outcome: str  # "copied" | "already-copied"
    destination_key: str
    metadata: dict[str, str] = field(default_factory=dict)  # the source object's user metadata
    checksum: Checksum | None = None  # what the copy was verified against
    destination_version: str | None = None
    last_modified: Any = None  # the source object's
    #: What happened to the export's latest.xlsx (None: the export keeps none).
    latest: str | None = None


def _error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "Error")


def _full_object(head: dict[str, Any]) -> tuple[str, str] | None:
    """The object's full-object S3 checksum, if it has one: a composite one (a multipart upload's
    checksum of its parts' checksums, which S3 writes with a ``-<parts>`` suffix) is not the object's."""
    if head.get("ChecksumType") == "COMPOSITE":
        return None
    for algorithm, name in CHECKSUM_FIELDS.items():
        value = head.get(name)
        if value and "-" not in value:
            return algorithm, value
    return None


def _read_sha256(s3: Any, bucket: str, key: str, version: str | None) -> str:
    """SHA-256 (hex) of an object, read once in chunks (only where S3 has no comparable checksum)."""
    args = {"Bucket": bucket, "Key": key}
    if version:
        args["VersionId"] = version
    digest = hashlib.sha256()
    body = s3.get_object(**args)["Body"]
    for chunk in iter(lambda: body.read(READ_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def expected_checksum(s3: Any, head: dict[str, Any], bucket: str, key: str, version: str | None) -> Checksum:
    """What a copy of this source object must match (see :class:`Checksum`)."""
    recorded = head.get("Metadata", {}).get(contract.META_SHA256, "")
    if _HEX_SHA256.match(recorded):
        return Checksum("SHA256", base64.b64encode(bytes.fromhex(recorded)).decode(), recorded, "metadata")
    full = _full_object(head)
    if full is not None:
        algorithm, value = full
        sha = base64.b64decode(value).hex() if algorithm == "SHA256" else None
        return Checksum(algorithm, value, sha, "source checksum")
    sha = _read_sha256(s3, bucket, key, version)
    return Checksum("SHA256", base64.b64encode(bytes.fromhex(sha)).decode(), sha, "source read")


def _matches(s3: Any, head: dict[str, Any], expected: Checksum, bucket: str, key: str) -> tuple[bool, str]:
    """Does the destination object ``head`` hold the expected bytes? (and what it holds, for the message)"""
    full = _full_object(head)
    if full is not None and full[0] == expected.algorithm:
        return full[1] == expected.value, f"{full[0]} {full[1]}"
    # Copied in parts (composite checksum) or another algorithm: read the copy once (its current version:
    # the role reads the destination's objects, not their older versions).
    sha = _read_sha256(s3, bucket, key, None)
    if expected.sha256 is None:
        return False, f"SHA256 {sha} (no SHA-256 of the source to compare)"
    return sha == expected.sha256, f"SHA256 {base64.b64encode(bytes.fromhex(sha)).decode()}"


def replicate(s3: Any, request: CopyRequest, settings: Settings, *, transfer: TransferConfig | None = None) -> Outcome:
    """Copy the version named by ``request`` unless the destination already holds it, then check that
    the copy's checksum, as S3 computed it, is the workbook's. A mismatch is a failed copy."""
    transfer = transfer or TRANSFER
    source = {"Bucket": settings.source_bucket, "Key": request.key}
    if request.version_id:
        source["VersionId"] = request.version_id
    try:
        head = s3.head_object(**source, ChecksumMode="ENABLED")
    except ClientError as exc:
        code = _error_code(exc)
        if code in ("404", "NoSuchKey", "NoSuchVersion"):
            raise CopyFailed(request.key, "the object (version) no longer exists in the source bucket") from None
        raise CopyFailed(request.key, f"cannot read the source object: {code}") from None
    version = head.get("VersionId") or request.version_id
    etag = head.get("ETag", "").strip('"')
    size = head["ContentLength"]
    destination_key = contract.destination_key(settings.destination_prefix, request.key)
    try:
        expected = expected_checksum(s3, head, settings.source_bucket, request.key, version)
        if expected.sha256 is None and size >= transfer.multipart_threshold:
            # A copy in parts gets a composite checksum: it is checked by reading it, against the source's SHA-256.
            expected = replace(expected, sha256=_read_sha256(s3, settings.source_bucket, request.key, version))
    except ClientError as exc:
        raise CopyFailed(request.key, f"cannot read the source object to hash it: {_error_code(exc)}") from None
    source_metadata = dict(head.get("Metadata", {}))
    done = dict(metadata=source_metadata, checksum=expected, last_modified=head.get("LastModified"))

    metadata = dict(source_metadata)
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
    target = f"s3://{settings.destination_bucket}/{destination_key}"
    # The latest copy follows the same rule as every copy: S3 computes its checksum with the expected algorithm.
    latest_extra = {**extra, "ChecksumAlgorithm": expected.algorithm}
    existing = _already_copied(s3, settings.destination_bucket, destination_key, version, etag, size, expected)
    if existing is not None:
        # A retry after a failed latest copy completes it; otherwise the latest copy finds itself up to date.
        latest = keep_latest(s3, settings, request.key, source, size, metadata, latest_extra)
        return Outcome(request.key, version, size, "already-copied", destination_key,
                       destination_version=existing, latest=latest, **done)
    try:
        if size < transfer.multipart_threshold:
            # One request: S3 computes the copy's full-object checksum with the expected algorithm.
            answer = s3.copy_object(CopySource=source, Bucket=settings.destination_bucket, Key=destination_key,
                                    ChecksumAlgorithm=expected.algorithm, **extra)
            copied_version = answer.get("VersionId")
        else:
            s3.copy(source, settings.destination_bucket, destination_key, ExtraArgs=extra, Config=transfer,
                    SourceClient=s3)
            copied_version = None
    except ClientError as exc:
        raise CopyFailed(request.key, f"copy to {target} failed: {_error_code(exc)}") from None
    except Exception as exc:  # s3transfer wraps some failures in its own types
        raise CopyFailed(request.key, f"copy to {target} failed: {type(exc).__name__}: {exc}") from None

    # Check what the destination holds now, as S3 computed it (not the copy's answer alone).
    # The current version, which is what the partner reads (the role may not read older versions there).
    check = {"Bucket": settings.destination_bucket, "Key": destination_key}
    try:
        copy_head = s3.head_object(**check, ChecksumMode="ENABLED")
        same, found = _matches(s3, copy_head, expected, settings.destination_bucket, destination_key)
    except ClientError as exc:
        raise CopyFailed(request.key, f"cannot verify the copy {target}: {_error_code(exc)}") from None
    if not same:
        raise CopyFailed(request.key, f"the copy {target} has checksum {found}, not the workbook's "
                                      f"{expected.algorithm} {expected.value} ({expected.origin}): bytes changed")
    latest = keep_latest(s3, settings, request.key, source, size, metadata, latest_extra)
    return Outcome(request.key, version, size, "copied", destination_key,
                   destination_version=copy_head.get("VersionId") or copied_version, latest=latest, **done)


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


def _already_copied(s3: Any, bucket: str, key: str, version: str | None, etag: str, size: int,
                    expected: Checksum) -> str | None:
    """The destination's version id ("" if unversioned) when it records this very source version (or
    ETag), has its size and its checksum; None when the object must be copied (again)."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if _error_code(exc) in ("404", "NoSuchKey", "403", "AccessDenied"):
            return None  # without s3:ListBucket a missing key answers 403
        raise CopyFailed(key, f"cannot check the destination object: {_error_code(exc)}") from None
    recorded = head.get("Metadata", {})
    same_source = recorded.get(META_SOURCE_VERSION) == version if version else recorded.get(META_SOURCE_ETAG) == etag
    if not (same_source and head.get("ContentLength") == size):
        return None
    try:
        same, _ = _matches(s3, head, expected, bucket, key)
    except ClientError:
        return None
    return (head.get("VersionId") or "") if same else None
