"""The contract between the stack and the replicator function.

The one place that names the environment variables the function reads; the CDK
construct imports the names to set them and a test checks both sides agree.
Stdlib only: imported by the stack at synth time and by the function at cold start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Mapping

from ..contract import EVENT_SOURCE, METRIC_NAMESPACE, SUFFIXES, is_replicated  # noqa: F401  (named once, in the contract)

ENV_SOURCE_BUCKET = "SOURCE_BUCKET"
ENV_DESTINATION_BUCKET = "DESTINATION_BUCKET"
ENV_DESTINATION_PREFIX = "DESTINATION_PREFIX"
ENV_SOURCE_PREFIX = "SOURCE_PREFIX"
ENV_DESTINATION_KMS_KEY_ARN = "DESTINATION_KMS_KEY_ARN"
#: The run ledger's DynamoDB table, and how many days an item of a workbook put in by hand is kept.
ENV_LEDGER_TABLE = "LEDGER_TABLE"
ENV_HISTORY_DAYS = "HISTORY_DAYS"
#: JSON object: export name -> its folder in the source bucket (``<key_prefix><export>/``), for every export
#: with ``latest_copy``; their newest workbook is also kept as ``<destination prefix><folder>latest.xlsx``.
ENV_LATEST_COPIES = "LATEST_COPIES"

#: Every variable the function reads; the stack must set exactly these.
ENV_NAMES = frozenset({ENV_SOURCE_BUCKET, ENV_DESTINATION_BUCKET, ENV_DESTINATION_PREFIX, ENV_SOURCE_PREFIX,
                       ENV_DESTINATION_KMS_KEY_ARN, ENV_LEDGER_TABLE, ENV_HISTORY_DAYS, ENV_LATEST_COPIES})

#: Sent with every copy: the destination bucket's owner gets full control (and owns the object
#: where its Object Ownership is "bucket owner preferred"); buckets with ACLs disabled accept it too.
DESTINATION_ACL = "bucket-owner-full-control"


#: The "Workbook Delivered" event on the account's default bus (the role may put only this).
DELIVERED_SOURCE = EVENT_SOURCE  # the pipeline's one event source (lambdas/contract.py)
DELIVERED_DETAIL_TYPE = "Workbook Delivered"
#: Set by Lambda itself; names the function in the failure metric.
ENV_FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"
#: A custom metric, 1 per delivered event that could not be published (embedded metric format).
METRIC_NOT_PUBLISHED = "DeliveredEventsNotPublished"


class ConfigurationError(ValueError):
    """The function's environment is missing a variable or holds a bad value."""


@dataclass(frozen=True)
class Settings:
    source_bucket: str
    destination_bucket: str
    destination_prefix: str
    source_prefix: str = ""
    destination_kms_key_arn: str | None = None
    function_name: str = "bucket-replicator"
    ledger_table: str = ""
    history_days: int = 400
    #: export name -> its folder in the source bucket (``ENV_LATEST_COPIES``)
    latest_copies: Mapping[str, str] = field(default_factory=dict)


def load_settings(environ: Mapping[str, str]) -> Settings:
    missing = sorted(n for n in (ENV_SOURCE_BUCKET, ENV_DESTINATION_BUCKET, ENV_LEDGER_TABLE, ENV_HISTORY_DAYS)
                     if not environ.get(n))
    if missing:
        raise ConfigurationError(f"missing environment variables: {', '.join(missing)}")
    source = environ[ENV_SOURCE_BUCKET]
    destination = environ[ENV_DESTINATION_BUCKET]
    if destination.startswith("arn:"):
        destination = destination.rsplit(":", 1)[-1]
    if destination == source:
        raise ConfigurationError(
            f"{ENV_DESTINATION_BUCKET} resolves to the source bucket {source!r}: refusing to copy a bucket onto itself"
        )
    prefix = environ.get(ENV_DESTINATION_PREFIX, "")
    if prefix.startswith("/"):
        raise ConfigurationError(f"{ENV_DESTINATION_PREFIX} must not start with '/', got {prefix!r}")
    source_prefix = environ.get(ENV_SOURCE_PREFIX, "")
    if source_prefix.startswith("/"):
        raise ConfigurationError(f"{ENV_SOURCE_PREFIX} must not start with '/', got {source_prefix!r}")
    kms_key = environ.get(ENV_DESTINATION_KMS_KEY_ARN) or None
    if kms_key is not None and not (kms_key.startswith("arn:") and ":key/" in kms_key):
        raise ConfigurationError(f"{ENV_DESTINATION_KMS_KEY_ARN} must be a KMS key ARN, got {kms_key!r}")
    history_raw = environ[ENV_HISTORY_DAYS]
    if not history_raw.isdigit() or int(history_raw) < 1:
        raise ConfigurationError(f"{ENV_HISTORY_DAYS} must be a whole number of days (1 or more), got {history_raw!r}")
    try:
        latest = json.loads(environ.get(ENV_LATEST_COPIES) or "{}")
    except ValueError:
        latest = None
    if not isinstance(latest, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.endswith("/")
                                               for k, v in latest.items()):
        raise ConfigurationError(f"{ENV_LATEST_COPIES} must be a JSON object of export name -> folder ending in '/'")
    return Settings(source_bucket=source, destination_bucket=destination, destination_prefix=prefix,
                    source_prefix=source_prefix, destination_kms_key_arn=kms_key,
                    function_name=environ.get(ENV_FUNCTION_NAME) or "bucket-replicator",
                    ledger_table=environ[ENV_LEDGER_TABLE], history_days=int(history_raw),
                    latest_copies=latest)
