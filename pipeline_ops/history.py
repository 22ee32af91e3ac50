"""The run ledger for operators: an export's runs (``history``), and a delivered workbook checked byte for
byte against its ledger item (``verify``). Reads only: the table, and the two objects."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any, Iterator

from lambdas import contract
from lambdas.ledger import item_of
from pipeline_ops.aws import OperatorError, calling

READ_CHUNK = 8 * 2**20


def runs(dynamodb: Any, table: str, export: str, *, since: dt.date | None = None,
         until: dt.date | None = None) -> Iterator[dict]:
    """An export's ledger items, newest first; ``since``/``until`` are UTC days, both included."""
    condition = "#e = :e"
    values: dict[str, Any] = {":e": {"S": export}}
    low = since.isoformat() if since else None
    high = (until + dt.timedelta(days=1)).isoformat() if until else None  # run ids start with the UTC start time
    if low and high:
        condition += " AND #r BETWEEN :low AND :high"
        values.update({":low": {"S": low}, ":high": {"S": high}})
    elif low:
        condition += " AND #r >= :low"
        values[":low"] = {"S": low}
    elif high:
        condition += " AND #r < :high"
        values[":high"] = {"S": high}
    names = {"#e": contract.LEDGER_EXPORT}
    if low or high:
        names["#r"] = contract.LEDGER_RUN_ID
    with calling(f"reading the run ledger {table}"):
        pages = dynamodb.get_paginator("query").paginate(
            TableName=table, KeyConditionExpression=condition, ScanIndexForward=False,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values)
        for page in pages:
            for raw in page.get("Items", []):
                item = item_of(raw)
                if high and item[contract.LEDGER_RUN_ID] >= high:
                    continue
                yield item


def latest_run(dynamodb: Any, table: str, export: str) -> dict | None:
    return next(runs(dynamodb, table, export), None)


def delivery_state(item: dict) -> str:
    """``verified`` (the copy's checksum, as S3 computed it, is the workbook's), ``not verified``, or ``-``."""
    delivery = item.get(contract.LEDGER_DELIVERY)
    if not delivery:
        return "-"
    return "verified" if delivery.get("verified") else "not verified"


@dataclass(frozen=True)
class Verdict:
    what: str
    ok: bool
    detail: str


def _sha256(s3: Any, bucket: str, key: str, version: str | None) -> tuple[str, str | None]:
    args = {"Bucket": bucket, "Key": key, **({"VersionId": version} if version else {})}
    with calling(f"reading s3://{bucket}/{key}"):
        answer = s3.get_object(**args)
        digest = hashlib.sha256()
        for chunk in iter(lambda: answer["Body"].read(READ_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest(), answer.get("VersionId")


def find_item(dynamodb: Any, table: str, key: str, metadata: dict[str, str]) -> dict:
    export, run = metadata.get(contract.META_EXPORT), metadata.get(contract.META_RUN_ID)
    if not (export and run):
        raise OperatorError(f"s3 object {key!r} names no export run in its metadata (put in by hand?): "
                            f"see `pipeline-ops history {contract.LEDGER_HAND_PARTITION!r}`")
    with calling(f"reading the run ledger {table}"):
        raw = dynamodb.get_item(TableName=table, Key={contract.LEDGER_EXPORT: {"S": export},
                                                      contract.LEDGER_RUN_ID: {"S": run}}).get("Item")
    if not raw:
        raise OperatorError(f"the run ledger has no item for export {export!r} run {run!r}")
    return item_of(raw)


def verify(s3: Any, dynamodb: Any, table: str, source_bucket: str, destination_bucket: str,
           destination_key: str, key: str) -> tuple[dict, list[Verdict]]:
    """Download the source object and its copy and check both against the run's ledger item."""
    with calling(f"reading s3://{source_bucket}/{key}"):
        head = s3.head_object(Bucket=source_bucket, Key=key)
    item = find_item(dynamodb, table, key, head.get("Metadata", {}))
    expected = item.get(contract.LEDGER_SHA256)
    verdicts = []
    source_sha, source_version = _sha256(s3, source_bucket, key, item.get(contract.LEDGER_VERSION_ID))
    verdicts.append(Verdict(f"s3://{source_bucket}/{key} (version {source_version})", source_sha == expected,
                            f"SHA-256 {source_sha}" + ("" if source_sha == expected else f", ledger says {expected}")))
    delivery = item.get(contract.LEDGER_DELIVERY) or {}
    if not delivery:
        verdicts.append(Verdict(f"s3://{destination_bucket}/{destination_key}", False, "no delivery in the ledger"))
        return item, verdicts
    copy_sha, copy_version = _sha256(s3, delivery.get("bucket", destination_bucket),
                                     delivery.get("key", destination_key), None)
    ok = copy_sha == expected
    verdicts.append(Verdict(f"s3://{delivery.get('bucket')}/{delivery.get('key')} (version {copy_version})", ok,
                            f"SHA-256 {copy_sha}" + ("" if ok else f", ledger says {expected}: the copy changed")))
    return item, verdicts
