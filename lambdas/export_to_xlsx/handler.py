"""Lambda entry point of ExportToXlsx: parse the event, run the named export(s)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from .credentials import CredentialSource, IamToken, SecretCache
from .database import Endpoint
from .errors import ExportError
from .export import ScheduledRun, Target, record_run, remove_stale_files, run_export
from ..contract import (CA_BUNDLE_FILE, EVENT_EXPORT, EVENT_KEYS, EVENT_PARAMS, EVENT_SCHEDULE, SCHEDULE_NAME,
                        SCHEDULE_TIME, SCHEDULED_TIME_FORMAT)
from .definition import SCHEDULE_NAME_RE, ExportDefinition, clip
from .settings import Settings, load_settings

log = logging.getLogger()  # level and JSON format come from the function's logging config (the stack)

AWS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=60)


def s3_client() -> Any:
    return boto3.client("s3", config=AWS_CONFIG)


def secrets_client() -> Any:
    return boto3.client("secretsmanager", config=AWS_CONFIG)


def rds_client() -> Any:
    """Signs IAM database tokens locally (no request is sent), in the function's region."""
    return boto3.client("rds", config=AWS_CONFIG)


@dataclass
class Runtime:
    settings: Settings
    endpoint: Endpoint
    secrets: CredentialSource
    s3: Any
    target: Target


@functools.cache
def runtime() -> Runtime:
    """Read and check the environment once per cold start; create the clients."""
    settings = load_settings(os.environ)
    ca_file = Path(__file__).with_name(CA_BUNDLE_FILE) if settings.tls == "verify" else None
    return Runtime(
        settings=settings,
        endpoint=Endpoint(settings.db_host, settings.db_port, settings.db_name, ca_file),
        secrets=credential_source(settings),
        s3=s3_client(),
        target=Target(settings.source_bucket, settings.key_prefix),
    )


def credential_source(settings: Settings) -> CredentialSource:
    if settings.auth == "iam":
        return IamToken(rds_client(), host=settings.db_host, port=settings.db_port, user=settings.db_user)
    return SecretCache(secrets_client(), settings.secret_arn)


def select_exports(event: Any, exports: dict[str, ExportDefinition]) -> list[ExportDefinition]:
    """``{"export": NAME, "params": {...}}`` runs one export; ``{}`` runs all with their defaults.
    SQL never comes from the event; parameter values are checked against the declarations."""
    if not isinstance(event, dict):
        raise ExportError('the event must be a JSON object such as {"export": "orders"} ({} runs every export)')
    if {"sql", "query"} & event.keys():
        raise ExportError("the event may only name an export; SQL comes from the deployment config")
    unknown = sorted(set(event) - set(EVENT_KEYS))
    if unknown:
        raise ExportError(f"the event has unknown field(s) {', '.join(map(repr, unknown))}; "
                          'expected {"export": NAME, "params": {NAME: VALUE}}')
    if EVENT_EXPORT not in event:
        if EVENT_PARAMS in event:
            raise ExportError(f'"{EVENT_PARAMS}" needs "{EVENT_EXPORT}": parameters belong to one export')
        return list(exports.values())
    name = event[EVENT_EXPORT]
    if not isinstance(name, str):
        raise ExportError(f'"{EVENT_EXPORT}" must be an export\'s name (text), got {clip(name)}; '
                          "leave it out to run every export")
    if name not in exports:
        raise ExportError(f"unknown export {clip(name)}; valid names: {', '.join(sorted(exports))}")
    return [exports[name]]


def scheduled_run(event: dict) -> ScheduledRun | None:
    """The event's ``schedule``: ``{"name": NAME, "scheduled_time": "YYYY-MM-DDTHH:MM:SSZ"}`` (what a Scheduler
    schedule sends), or None for a run by hand."""
    if EVENT_SCHEDULE not in event:
        return None
    raw = event[EVENT_SCHEDULE]
    if EVENT_EXPORT not in event:
        raise ExportError(f'"{EVENT_SCHEDULE}" needs "{EVENT_EXPORT}": a schedule runs one export')
    expected = (f'"{EVENT_SCHEDULE}" must be {{"{SCHEDULE_NAME}": NAME, "{SCHEDULE_TIME}": "YYYY-MM-DDTHH:MM:SSZ"}}, '
                f"got {clip(raw)}")
    if not isinstance(raw, dict) or set(raw) != {SCHEDULE_NAME, SCHEDULE_TIME}:
        raise ExportError(expected)
    name, when = raw[SCHEDULE_NAME], raw[SCHEDULE_TIME]
    if not isinstance(name, str) or not SCHEDULE_NAME_RE.match(name) or not isinstance(when, str):
        raise ExportError(expected)
    try:
        scheduled = dt.datetime.strptime(when, SCHEDULED_TIME_FORMAT).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise ExportError(expected) from None
    return ScheduledRun(name, scheduled)


def handler(event: Any, context: Any) -> dict[str, Any]:
    rt = runtime()
    selected = select_exports(event, dict(rt.settings.exports))
    scheduled = scheduled_run(event)
    given = event.get(EVENT_PARAMS)
    remaining = (lambda: context.get_remaining_time_in_millis() / 1000) if context is not None else (lambda: float("inf"))
    temp_dir = Path(tempfile.gettempdir())
    remove_stale_files(temp_dir)
    results, failures = [], []
    for export in selected:
        try:
            result = run_export(export, endpoint=rt.endpoint, secrets=rt.secrets, s3=rt.s3, target=rt.target,
                                params=given, remaining_seconds=remaining, temp_dir=temp_dir, scheduled=scheduled)
        except ExportError as exc:
            failed = {"export": export.name, "outcome": "failed", "error": str(exc)}
            if scheduled is not None:
                failed["schedule"] = scheduled.as_json()
                record_run(rt.s3, rt.target, export.name, scheduled, failed)
            log.error(json.dumps(failed))
            failures.append(str(exc))
            continue
        if scheduled is not None:
            record_run(rt.s3, rt.target, export.name, scheduled, result)
        log.info(json.dumps(result, ensure_ascii=False))
        results.append(result)
    if failures:
        uploaded = sum(r["outcome"] == "uploaded" for r in results)
        skipped = f", {len(results) - uploaded} skipped as empty" if len(results) > uploaded else ""
        done = f" ({uploaded} other export(s) uploaded{skipped})" if results else ""
        raise ExportError("; ".join(failures) + done)
    return {"exports": results}
