"""The contract between the stack and the deploy-time bootstrap function.

The one place that names the bootstrap's environment variables and its custom resource
properties; the CDK construct imports these names. Stdlib only: the stack imports it at synth.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Mapping

ENV_MASTER_SECRET_ARN = "MASTER_SECRET_ARN"
ENV_DB_HOST = "DB_HOST"
ENV_DB_PORT = "DB_PORT"
ENV_DB_NAME = "DB_NAME"
ENV_DB_TLS = "DB_TLS"

#: Every variable the function reads; the stack must set exactly these.
ENV_NAMES = frozenset({ENV_MASTER_SECRET_ARN, ENV_DB_HOST, ENV_DB_PORT, ENV_DB_NAME, ENV_DB_TLS})

#: ``verify``: TLS checked against the bundled Amazon RDS CA; ``off``: local tests only.
TLS_MODES = ("verify", "off")

#: The custom resource's properties: what the database must look like after a deploy.
PROP_EXPORT_USER = "ExportUser"
PROP_AUTH = "Auth"  # "iam" or "secret"
PROP_EXPORT_SECRET_ARN = "ExportSecretArn"  # secret only: the export user's password
PROP_INIT_SQL_SHA256 = "InitSqlSha256"  # "" without init SQL; a new value makes CloudFormation run it again
PROP_CODE_HASH = "CodeHash"  # the asset hash: new bootstrap code runs again too
#: The database served: a replaced instance (a new, empty database) has a new host and master secret, so
#: CloudFormation sends an Update and the bootstrap runs there. The function reads them from its environment.
PROP_DB_HOST = "DatabaseHost"
PROP_DB_PORT = "DatabasePort"
PROP_DB_NAME = "DatabaseName"
PROP_MASTER_SECRET_ARN = "MasterSecretArn"

AUTH_MODES = ("iam", "secret")
#: Files the bundler writes into the package next to the code.
INIT_SQL_FILE = "init.sql"

USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
DATABASE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def sha256(text: str) -> str:
    """The init SQL's identity: the stack puts it in the resource's properties, the bootstrap records it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ConfigurationError(ValueError):
    """The function's environment or the resource's properties hold a bad value."""


@dataclass(frozen=True)
class Settings:
    master_secret_arn: str
    db_host: str
    db_port: int
    db_name: str
    tls: str


def load_settings(environ: Mapping[str, str]) -> Settings:
    missing = sorted(n for n in ENV_NAMES if not environ.get(n))
    if missing:
        raise ConfigurationError(f"missing environment variables: {', '.join(missing)}")
    port = environ[ENV_DB_PORT]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"{ENV_DB_PORT} must be a TCP port number, got {port!r}")
    if environ[ENV_DB_TLS] not in TLS_MODES:
        raise ConfigurationError(f"{ENV_DB_TLS} must be one of {', '.join(TLS_MODES)}, got {environ[ENV_DB_TLS]!r}")
    if not DATABASE_RE.match(environ[ENV_DB_NAME]):
        raise ConfigurationError(f"{ENV_DB_NAME} {environ[ENV_DB_NAME]!r} is not a database name")
    return Settings(environ[ENV_MASTER_SECRET_ARN], environ[ENV_DB_HOST], int(port), environ[ENV_DB_NAME],
                    environ[ENV_DB_TLS])


@dataclass(frozen=True)
class Request:
    """What one Create/Update asks for, checked before anything is sent to the database."""

    user: str
    auth: str
    export_secret_arn: str | None


def read_request(props: Mapping[str, object]) -> Request:
    user, auth = props.get(PROP_EXPORT_USER), props.get(PROP_AUTH)
    if not isinstance(user, str) or not USER_RE.match(user):
        raise ConfigurationError(f"{PROP_EXPORT_USER} {user!r} is not a MySQL user name")
    if auth not in AUTH_MODES:
        raise ConfigurationError(f"{PROP_AUTH} must be one of {', '.join(AUTH_MODES)}, got {auth!r}")
    secret = props.get(PROP_EXPORT_SECRET_ARN) or None
    if (auth == "secret") != (secret is not None):
        raise ConfigurationError(f"{PROP_EXPORT_SECRET_ARN} is required with auth 'secret' and only then")
    return Request(user, auth, secret)  # type: ignore[arg-type]
