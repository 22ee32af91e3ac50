"""Lambda entry point of ExportToXlsx: parse the event, run the named export(s)."""

from __future__ import annotations

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
from .export import Target, remove_stale_files, run_export
from .masks import MaskKey
from ..contract import CA_BUNDLE_FILE, EVENT_EXPORT, EVENT_KEYS, EVENT_PARAMS
from .definition import ExportDefinition
from .params import shown
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


def handler(event: Any, context: Any) -> dict[str, Any]:
    rt = runtime()
    selected = select_exports(event, dict(rt.settings.exports))
    given = event.get(EVENT_PARAMS)
    remaining = (lambda: context.get_remaining_time_in_millis() / 1000) if context is not None else (lambda: float("inf"))
    temp_dir = Path(tempfile.gettempdir())
    remove_stale_files(temp_dir)
    results, failures = [], []
    for export in selected:
        try:
            result = run_export(export, endpoint=rt.endpoint, secrets=rt.secrets, s3=rt.s3, target=rt.target,
                                params=given, remaining_seconds=remaining, temp_dir=temp_dir, mask_key=rt.mask_key)
        except ExportError as exc:
            log.error(json.dumps({"export": export.name, "outcome": "failed", "error": str(exc)}))
            failures.append(str(exc))
            continue
        log.info(json.dumps(result, ensure_ascii=False))
        results.append(result)
    if failures:
        uploaded = sum(r["outcome"] == "uploaded" for r in results)
        skipped = f", {len(results) - uploaded} skipped as empty" if len(results) > uploaded else ""
        done = f" ({uploaded} other export(s) uploaded{skipped})" if results else ""
        raise ExportError("; ".join(failures) + done)
    return {"exports": results}
