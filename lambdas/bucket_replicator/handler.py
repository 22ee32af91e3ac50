"""Lambda entry point of BucketReplicator: copy every .xlsx record of an S3 notification."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from . import delivered
from .. import contract
from ..ledger import HAND_OUTCOME, HAND_TRIGGER, Ledger, iso
from .replicate import CopyFailed, Outcome, replicate
from .events import CopyRequest, Skipped, parse
from .settings import Settings, load_settings

log = logging.getLogger()  # level and JSON format come from the function's logging config (the stack)

#: The AWS SDK's loggers stay at WARNING whatever the function's log level: at DEBUG botocore logs response
#: bodies (a secret's value) and request signing (the session token, signatures), urllib3 every request.
SDK_LOGGERS = ("boto3", "botocore", "s3transfer", "urllib3")
for _name in SDK_LOGGERS:
    logging.getLogger(_name).setLevel(logging.WARNING)

#: Throttling and transient errors are retried with exponential backoff inside the invocation.
AWS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=5, read_timeout=120)


class ReplicationError(Exception):
    """Some records of the event could not be copied; the message names every failed key."""


def s3_client() -> Any:
    return boto3.client("s3", config=AWS_CONFIG)


def events_client() -> Any:
    return boto3.client("events", config=AWS_CONFIG)


def dynamodb_client() -> Any:
    return boto3.client("dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 3},
                                                  connect_timeout=3, read_timeout=10))


@dataclass
class Runtime:
    settings: Settings
    s3: Any
    events: Any
    ledger: Ledger


@functools.cache
def runtime() -> Runtime:
    """Read and check the environment once per cold start; refuses a destination equal to the source."""
    settings = load_settings(os.environ)
    return Runtime(settings=settings, s3=s3_client(), events=events_client(),
                   ledger=Ledger(dynamodb_client(), settings.ledger_table, function_name=settings.function_name,
                                 history_days=settings.history_days))


def record_delivery(rt: Runtime, outcome: Outcome) -> str:
    """Add the verified delivery to the run's ledger item: the export's run (``export`` and ``run-id`` in
    the metadata), else an item of its own for a workbook put in by hand. Conditional, so a redelivered
    event adds no second delivery. A failure is logged and counted, never raised: the copy stands."""
    metadata = outcome.metadata
    started = outcome.last_modified if isinstance(outcome.last_modified, dt.datetime) else dt.datetime.now(dt.timezone.utc)
    checksum = outcome.checksum
    delivery = {
        "bucket": rt.settings.destination_bucket, "key": outcome.destination_key,
        "version_id": outcome.destination_version or None, "at": iso(dt.datetime.now(dt.timezone.utc)),
        "sha256": checksum.sha256 if checksum else None,
        "checksum_algorithm": checksum.algorithm if checksum else None,
        "checksum": checksum.value if checksum else None,
        "verified": checksum is not None,
    }
    export = metadata.get(contract.META_EXPORT)
    run = metadata.get(contract.META_RUN_ID)
    hand = None
    if not (export and run):
        export = export or contract.LEDGER_HAND_PARTITION
        run = contract.run_id(iso(started), outcome.version_id or outcome.key)
        hand = {
            contract.LEDGER_TRIGGER: HAND_TRIGGER, contract.LEDGER_OUTCOME: HAND_OUTCOME,
            contract.LEDGER_STARTED: iso(started), contract.LEDGER_PARAMS: {},
            contract.LEDGER_BUCKET: rt.settings.source_bucket, contract.LEDGER_KEY: outcome.key,
            contract.LEDGER_VERSION_ID: outcome.version_id, contract.LEDGER_BYTES: outcome.bytes,
            contract.LEDGER_SHA256: checksum.sha256 if checksum else None,
        }
    return rt.ledger.record_delivery(export, run, delivery, hand=hand, started=started)


def announce(rt: Runtime, outcome: Outcome) -> dict[str, str]:
    """Publish "Workbook Delivered" for a copy just made. A failure is logged and counted in the
    metric, never raised: the copy stands and is not repeated. Returns what to add to the log line."""
    try:
        version = outcome.destination_version or delivered.destination_version(rt.s3, rt.settings, outcome)
        event_id = delivered.publish(rt.events, delivered.detail(outcome, outcome.metadata, rt.settings, version))
    except delivered.PublishFailed as exc:
        delivered.count_failure(rt.settings.function_name)
        return {"event": "not published", "event_error": str(exc)}
    return {"event": "published", "event_id": event_id}


def handler(event: Any, context: Any) -> dict[str, Any]:
    rt = runtime()
    copied, already, skipped, failed = 0, 0, 0, []
    for item in parse(event, rt.settings):
        started = time.monotonic()
        if isinstance(item, Skipped):
            skipped += 1
            log.info(json.dumps({"key": item.key, "outcome": "skipped", "reason": item.reason}))
            continue
        assert isinstance(item, CopyRequest)
        try:
            outcome = replicate(rt.s3, item, rt.settings)
        except CopyFailed as exc:
            failed.append(exc)
            log.error(json.dumps({"key": item.key, "version": item.version_id, "outcome": "failed",
                                  "error": exc.reason, "ms": round((time.monotonic() - started) * 1000)}))
            continue
        copied += outcome.outcome == "copied"
        already += outcome.outcome == "already-copied"
        event = announce(rt, outcome) if outcome.outcome == "copied" else {}
        ledger = record_delivery(rt, outcome)
        line = {"key": outcome.key, "version": outcome.version_id, "bytes": outcome.bytes,
                "outcome": outcome.outcome, "destination_key": outcome.destination_key,
                "sha256": outcome.checksum.sha256 if outcome.checksum else None, "ledger": ledger,
                "ms": round((time.monotonic() - started) * 1000), **event}
        if outcome.latest is not None:
            line["latest"] = outcome.latest
        (log.error if "event_error" in event or ledger == "not written" else log.info)(json.dumps(line))
    if failed:
        raise ReplicationError(f"{len(failed)} object(s) not copied: " + "; ".join(str(f) for f in failed))
    return {"copied": copied, "already_copied": already, "skipped": skipped}
