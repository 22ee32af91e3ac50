"""Lambda entry point of the database bootstrap, called by CDK's custom resource provider framework.

Create and Update bring the database in line (see ``bootstrap.py``); Delete does nothing: the
user, the tables and their rows stay with the database. The answer holds booleans and a
statement count only; passwords never leave this function.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import boto3
import pymysql
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .bootstrap import BootstrapError, bootstrap
from ..contract import CA_BUNDLE_FILE
from .settings import (INIT_SQL_FILE, ConfigurationError, Request, Settings, check_request, differences, load_settings,
                       read_request)

log = logging.getLogger()

#: The AWS SDK's loggers stay at WARNING whatever the function's log level: at DEBUG botocore logs response
#: bodies (a secret's value) and request signing (the session token, signatures), urllib3 every request.
SDK_LOGGERS = ("boto3", "botocore", "s3transfer", "urllib3")
for _name in SDK_LOGGERS:
    logging.getLogger(_name).setLevel(logging.WARNING)

#: At most 3 x (5 + 5) s per Secrets Manager call (it answers in milliseconds): the run fits in 3 minutes.
AWS_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=5, read_timeout=5)
CONNECT_TIMEOUT = 10
#: Seconds kept back from the function's remaining time: a statement still running then fails with the
#: bootstrap's own message (its number, line and text) before Lambda stops the function.
DEADLINE_MARGIN = 10


def secrets_client() -> Any:
    return boto3.client("secretsmanager", config=AWS_CONFIG)


@functools.cache
def settings() -> Settings:
    return load_settings(os.environ)


def read_secret(client: Any, arn: str) -> dict:
    """An RDS-style JSON secret (``username``, ``password``)."""
    try:
        data = json.loads(client.get_secret_value(SecretId=arn)["SecretString"])
        return {"username": str(data["username"]), "password": str(data["password"])}
    except ClientError as exc:
        raise BootstrapError(f"cannot read the secret {arn}: {exc.response.get('Error', {}).get('Code')}") from None
    except BotoCoreError as exc:
        raise BootstrapError(f"cannot reach Secrets Manager for {arn}: {exc}") from None
    except (KeyError, TypeError, ValueError):
        raise BootstrapError(f"the secret {arn} is not JSON with 'username' and 'password'") from None


def connect(s: Settings, username: str, password: str,
            timeout: float | None = None) -> pymysql.connections.Connection:
    """The master user's connection: verified TLS (RDS requires it), autocommit, no default database; a read or
    write that takes longer than ``timeout`` seconds fails."""
    tls: dict = {"ssl_disabled": True}
    if s.tls == "verify":
        tls = {"ssl_ca": str(Path(__file__).with_name(CA_BUNDLE_FILE)), "ssl_verify_cert": True,
               "ssl_verify_identity": True}
    try:
        return pymysql.connect(host=s.db_host, port=s.db_port, user=username, password=password, charset="utf8mb4",
                               connect_timeout=CONNECT_TIMEOUT, read_timeout=timeout, write_timeout=timeout,
                               autocommit=True, **tls)
    except UnicodeEncodeError:  # PyMySQL sends a password as Latin-1; its error would quote the character
        raise BootstrapError(f"cannot connect to {s.db_host}:{s.db_port} as {username!r}: the password holds a "
                             "character outside Latin-1, which the MySQL client cannot send") from None
    except (OSError, pymysql.err.MySQLError) as exc:
        message = str(exc).replace(password, "***") if password else str(exc)
        raise BootstrapError(f"cannot connect to {s.db_host}:{s.db_port} as {username!r}: {message}") from None


def init_sql_text() -> str | None:
    path = Path(__file__).with_name(INIT_SQL_FILE)
    return path.read_text(encoding="utf-8") if path.exists() else None


def run(request: Request, deadline: float | None = None) -> dict:
    """``deadline``: the ``time.monotonic()`` by which every statement must have answered."""
    s = settings()
    client = secrets_client()
    master = read_secret(client, s.master_secret_arn)
    password = read_secret(client, request.export_secret_arn)["password"] if request.export_secret_arn else None
    timeout = None
    if deadline is not None:
        timeout = deadline - time.monotonic()
        if timeout < 1:
            raise BootstrapError("no time left to reach the database after reading the secrets (Secrets Manager "
                                 "answered slowly); deploy again")
    connection = connect(s, master["username"], master["password"], timeout)
    try:
        return bootstrap(connection, database=s.db_name, user=request.user, auth=request.auth, password=password,
                         init_sql=init_sql_text())
    finally:
        connection.close()


def _is_rollback(event: dict) -> bool:
    """An Update from exactly what this function serves back to something else: a rollback's signature."""
    try:
        return not differences(read_request(event.get("OldResourceProperties") or {}), settings())
    except ConfigurationError:
        return False


def handler(event: dict, context: Any) -> dict:
    kind = event.get("RequestType")
    props = event.get("ResourceProperties", {})
    physical_id = event.get("PhysicalResourceId") or f"{settings().db_name}/{props.get('ExportUser')}"
    if kind == "Delete":
        log.info(json.dumps({"request": kind, "resource": physical_id, "outcome": "kept (nothing is dropped)"}))
        return {"PhysicalResourceId": physical_id}
    request = read_request(props)
    if differences(request, settings()) and kind == "Update" and _is_rollback(event):
        # CloudFormation rolls the resource back before the function: the old identity arrives while this
        # environment already names the new one. Act on nothing (nothing is ever dropped) and let the rollback end.
        log.info(json.dumps({"request": kind, "resource": physical_id, "outcome": "rollback: nothing to do"}))
        return {"PhysicalResourceId": physical_id, "Data": {"UserCreated": "false", "GrantsChanged": "false",
                                                            "InitSqlApplied": "false", "InitSqlStatements": "0"}}
    check_request(request, settings())  # before any secret is read or connection opened
    deadline = None
    if context is not None:  # Lambda's context: stop each statement before the function's own timeout
        deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - DEADLINE_MARGIN
    result = run(request, deadline)
    summary = {
        "UserCreated": str(result["user"]["created"]).lower(),
        "GrantsChanged": str(result["user"]["grants_changed"]).lower(),
        "InitSqlApplied": str(result.get("init_sql", {}).get("applied", False)).lower(),
        "InitSqlStatements": str(result.get("init_sql", {}).get("statements", 0)),
    }
    log.info(json.dumps({"request": kind, "resource": f"{settings().db_name}/{request.user}", **summary}))
    return {"PhysicalResourceId": f"{settings().db_name}/{request.user}", "Data": summary}
