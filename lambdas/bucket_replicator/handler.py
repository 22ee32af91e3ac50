"""Lambda entry point of BucketReplicator: copy every .xlsx record of an S3 notification."""

from __future__ import annotations

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


@dataclass
class Runtime:
    settings: Settings
    s3: Any
    events: Any


@functools.cache
def runtime() -> Runtime:
    """Read and check the environment once per cold start; refuses a destination equal to the source."""
    return Runtime(settings=load_settings(os.environ), s3=s3_client(), events=events_client())


def announce(rt: Runtime, outcome: Outcome) -> dict[str, str]:
    """Publish "Workbook Delivered" for a copy just made. A failure is logged and counted in the
    metric, never raised: the copy stands and is not repeated. Returns what to add to the log line."""
    try:
        version = delivered.destination_version(rt.s3, rt.settings, outcome)
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
        line = {"key": outcome.key, "version": outcome.version_id, "bytes": outcome.bytes,
                "outcome": outcome.outcome, "destination_key": outcome.destination_key,
                "ms": round((time.monotonic() - started) * 1000), **event}
        if outcome.latest is not None:
            line["latest"] = outcome.latest
        (log.error if "event_error" in event else log.info)(json.dumps(line))
    if failed:
        raise ReplicationError(f"{len(failed)} object(s) not copied: " + "; ".join(str(f) for f in failed))
    return {"copied": copied, "already_copied": already, "skipped": skipped}
