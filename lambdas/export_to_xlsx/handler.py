"""Lambda entry point of ExportToXlsx: parse the event, run the named export(s)."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from .credentials import CredentialSource, IamToken, SecretCache
from .database import Endpoint
from .errors import ExportError
from .export import ScheduledRun, Target, remove_stale_files, run_export
from .. import contract
from ..contract import (CA_BUNDLE_FILE, EVENT_EXPORT, EVENT_KEYS, EVENT_PARAMS, EVENT_SCHEDULE, EVENT_TRIGGER,
                        SCHEDULE_NAME, SCHEDULE_TIME, SCHEDULED_TIME_FORMAT, TRIGGERS)
from ..ledger import Ledger, iso
from .definition import SCHEDULE_NAME_RE, ExportDefinition
from .masks import MaskKey
from .params import recorded, shown
from .settings import Settings, load_settings

log = logging.getLogger()  # level and JSON format come from the function's logging config (the stack)

#: The AWS SDK's loggers stay at WARNING whatever the function's log level: at DEBUG botocore logs response
#: bodies (a secret's value) and request signing (the session token, signatures), urllib3 every request.
SDK_LOGGERS = ("boto3", "botocore", "s3transfer", "urllib3")
for _name in SDK_LOGGERS:
    logging.getLogger(_name).setLevel(logging.WARNING)

AWS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=60)


def s3_client() -> Any:
    return boto3.client("s3", config=AWS_CONFIG)


def secrets_client() -> Any:
    return boto3.client("secretsmanager", config=AWS_CONFIG)


def dynamodb_client() -> Any:
    """The ledger's client: few quick retries, so an unreachable table costs seconds, not the run."""
    return boto3.client("dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 3},
                                                  connect_timeout=3, read_timeout=10))


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
    ledger: Ledger
    mask_key: MaskKey | None = None


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
        ledger=Ledger(dynamodb_client(), settings.ledger_table, function_name=settings.function_name,
                      history_days=settings.history_days),
        # Read on first use, by an export with a sha256 mask only.
        mask_key=MaskKey(secrets_client, settings.mask_key_secret_arn) if settings.mask_key_secret_arn else None,
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
    if unknown:  # an invoke may carry megabytes: quote a few names, each cut short
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ExportError(f"the event has unknown field(s) {', '.join(map(shown, unknown[:5]))}{more}; "
                          'expected {"export": NAME, "params": {NAME: VALUE}}')
    if EVENT_EXPORT not in event:
        if EVENT_PARAMS in event:
            raise ExportError(f'"{EVENT_PARAMS}" needs "{EVENT_EXPORT}": parameters belong to one export')
        return list(exports.values())
    name = event[EVENT_EXPORT]
    if not isinstance(name, str):
        raise ExportError(f'"{EVENT_EXPORT}" must be an export\'s name (text), got {shown(name)}; '
                          "leave it out to run every export")
    if name not in exports:
        raise ExportError(f"unknown export {shown(name)}; valid names: {', '.join(sorted(exports))}")
    return [exports[name]]


def trigger_of(event: dict[str, Any], scheduled: ScheduledRun | None) -> str:
    """Who asked for the run: the event's ``trigger`` (``manual``, ``backfill``, ``replay``: pipeline-ops sends
    them; a replayed scheduled event is a replay), else ``schedule: NAME`` for a scheduled event (its
    ``schedule`` field), else ``manual``."""
    trigger = event.get(EVENT_TRIGGER)
    if trigger is not None and trigger not in TRIGGERS:
        raise ExportError(f'"{EVENT_TRIGGER}" must be one of {", ".join(TRIGGERS)}, got {shown(trigger)}')
    if trigger is None and scheduled is not None:
        return f"schedule: {scheduled.name}"
    return trigger or "manual"


def one_line(text: str, limit: int = 500) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def record(ledger: Ledger, export: ExportDefinition, run: str, *, trigger: str, requested: Any, started: dt.datetime,
           scheduled: ScheduledRun | None = None, result: dict[str, Any] | None = None,
           error: ExportError | None = None) -> None:
    """The run's one ledger item (one UpdateItem); a failure is logged and counted, never raised. A run its
    event says a schedule planned carries that schedule and time: the deadline check finds it by them."""
    finished = dt.datetime.now(dt.timezone.utc)
    fields: dict[str, Any] = {
        contract.LEDGER_TRIGGER: trigger,
        contract.LEDGER_PARAMS_REQUESTED: recorded(export.parameters, requested) if isinstance(requested, dict) else {},
        contract.LEDGER_STARTED: iso(started),
        contract.LEDGER_FINISHED: iso(finished),
    }
    if scheduled is not None:
        fields.update({contract.LEDGER_SCHEDULE: scheduled.name, contract.LEDGER_SCHEDULED_TIME: scheduled.time_text})
    if error is not None:
        fields.update({
            contract.LEDGER_OUTCOME: "failed",
            contract.LEDGER_ERROR: one_line(str(error)),
            contract.LEDGER_PARAMS: getattr(error, "params", None) or {},
            contract.LEDGER_SECONDS: round((finished - started).total_seconds(), 3),
        })
    else:
        assert result is not None
        fields.update({
            contract.LEDGER_OUTCOME: result["outcome"],
            contract.LEDGER_PARAMS: result.get("params", {}),
            contract.LEDGER_ROWS: result["rows"],
            contract.LEDGER_SECONDS: result["seconds"],
        })
        if result["outcome"] == "uploaded":
            fields.update({
                contract.LEDGER_ROWS_PER_SHEET: result.get("rows_per_sheet") or {export.sheets[0].name: result["rows"]},
                contract.LEDGER_BYTES: result["bytes"],
                contract.LEDGER_BUCKET: result["bucket"],
                contract.LEDGER_KEY: result["key"],
                contract.LEDGER_VERSION_ID: result.get("version_id"),
                contract.LEDGER_SHA256: result["sha256"],
            })
    ledger.record_run(export.name, run, fields, started)


def scheduled_run(event: dict) -> ScheduledRun | None:
    """The event's ``schedule``: ``{"name": NAME, "scheduled_time": "YYYY-MM-DDTHH:MM:SSZ"}`` (what a Scheduler
    schedule sends), or None for a run by hand."""
    if EVENT_SCHEDULE not in event:
        return None
    raw = event[EVENT_SCHEDULE]
    if EVENT_EXPORT not in event:
        raise ExportError(f'"{EVENT_SCHEDULE}" needs "{EVENT_EXPORT}": a schedule runs one export')
    expected = (f'"{EVENT_SCHEDULE}" must be {{"{SCHEDULE_NAME}": NAME, "{SCHEDULE_TIME}": "YYYY-MM-DDTHH:MM:SSZ"}}, '
                f"got {shown(raw)}")
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
    trigger = trigger_of(event, scheduled)
    given = event.get(EVENT_PARAMS)
    remaining = (lambda: context.get_remaining_time_in_millis() / 1000) if context is not None else (lambda: float("inf"))
    temp_dir = Path(tempfile.gettempdir())
    remove_stale_files(temp_dir)
    results, failures = [], []
    for export in selected:
        started = dt.datetime.now(dt.timezone.utc)
        run = contract.run_id(iso(started), uuid.uuid4().hex[:12])
        try:
            result = run_export(export, endpoint=rt.endpoint, secrets=rt.secrets, s3=rt.s3, target=rt.target,
                                params=given, remaining_seconds=remaining, temp_dir=temp_dir,
                                now=lambda: started, run_id=run, scheduled=scheduled, mask_key=rt.mask_key)
        except ExportError as exc:
            failed = {"export": export.name, "run_id": run, "outcome": "failed", "error": str(exc)}
            if scheduled is not None:
                failed["schedule"] = scheduled.as_json()
            log.error(json.dumps(failed))
            record(rt.ledger, export, run, trigger=trigger, requested=given, started=started, scheduled=scheduled,
                   error=exc)
            failures.append(str(exc))
            continue
        result["run_id"] = run
        log.info(json.dumps(result, ensure_ascii=False))
        record(rt.ledger, export, run, trigger=trigger, requested=given, started=started, scheduled=scheduled,
               result=result)
        results.append(result)
    if failures:
        uploaded = sum(r["outcome"] == "uploaded" for r in results)
        skipped = f", {len(results) - uploaded} skipped as empty" if len(results) > uploaded else ""
        done = f" ({uploaded} other export(s) uploaded{skipped})" if results else ""
        raise ExportError("; ".join(failures) + done)
    return {"exports": results}
