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
#: The one export user this function manages, how it logs in and (secret auth only) its password's secret:
#: set at synth, so an invoke cannot make the bootstrap manage another account with the master's rights.
ENV_EXPORT_USER = "EXPORT_USER"
ENV_EXPORT_AUTH = "EXPORT_AUTH"
ENV_EXPORT_SECRET_ARN = "EXPORT_SECRET_ARN"

#: Every variable the function reads with either auth mode; the stack must set exactly ``env_names(auth)``.
ENV_NAMES = frozenset({ENV_MASTER_SECRET_ARN, ENV_DB_HOST, ENV_DB_PORT, ENV_DB_NAME, ENV_DB_TLS, ENV_EXPORT_USER,
                       ENV_EXPORT_AUTH})

#: ``verify``: TLS checked against the bundled Amazon RDS CA; ``off``: local tests only, refused inside Lambda.
TLS_MODES = ("verify", "off")
#: Set by Lambda in every function's environment.
ENV_LAMBDA_FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"

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


def env_names(auth: str) -> frozenset[str]:
    """The variables the stack sets for ``auth``: the export user's secret only with ``secret``."""
    return ENV_NAMES | ({ENV_EXPORT_SECRET_ARN} if auth == "secret" else set())

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
    export_user: str
    auth: str
    export_secret_arn: str | None


def load_settings(environ: Mapping[str, str]) -> Settings:
    auth = environ.get(ENV_EXPORT_AUTH, "")
    if auth and auth not in AUTH_MODES:
        raise ConfigurationError(f"{ENV_EXPORT_AUTH} must be one of {', '.join(AUTH_MODES)}, got {auth[:20]!r}")
    missing = sorted(n for n in env_names(auth) if not environ.get(n))
    if missing:
        raise ConfigurationError(f"missing environment variables: {', '.join(missing)}")
    if auth == "iam" and environ.get(ENV_EXPORT_SECRET_ARN):
        raise ConfigurationError(f"{ENV_EXPORT_SECRET_ARN} is set only with {ENV_EXPORT_AUTH}=secret")
    if not USER_RE.match(environ[ENV_EXPORT_USER]):
        raise ConfigurationError(f"{ENV_EXPORT_USER} {environ[ENV_EXPORT_USER][:40]!r} is not a MySQL user name")
    port = environ[ENV_DB_PORT]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"{ENV_DB_PORT} must be a TCP port number, got {port!r}")
    if environ[ENV_DB_TLS] not in TLS_MODES:
        raise ConfigurationError(f"{ENV_DB_TLS} must be one of {', '.join(TLS_MODES)}, got {shown(environ[ENV_DB_TLS])}")
    if environ[ENV_DB_TLS] == "off" and environ.get(ENV_LAMBDA_FUNCTION_NAME):
        raise ConfigurationError(f"{ENV_DB_TLS}=off is for local runs only: inside Lambda ({ENV_LAMBDA_FUNCTION_NAME} "
                                 "is set) the database is reached over verified TLS only")
    if not DATABASE_RE.match(environ[ENV_DB_NAME]):
        raise ConfigurationError(f"{ENV_DB_NAME} {environ[ENV_DB_NAME]!r} is not a database name")
    return Settings(environ[ENV_MASTER_SECRET_ARN], environ[ENV_DB_HOST], int(port), environ[ENV_DB_NAME],
                    environ[ENV_DB_TLS], environ[ENV_EXPORT_USER], auth, environ.get(ENV_EXPORT_SECRET_ARN) or None)


@dataclass(frozen=True)
class Request:
    """What one Create/Update asks for, checked before anything is sent to the database."""

    user: str
    auth: str
    export_secret_arn: str | None


#: How much of a value an error message quotes: an invoke may carry megabytes.
SHOWN_CHARS = 60


def shown(value: object) -> str:
    """``repr(value)``, cut to :data:`SHOWN_CHARS` characters for an error message."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "...(cut)"


def read_request(props: Mapping[str, object]) -> Request:
    user, auth = props.get(PROP_EXPORT_USER), props.get(PROP_AUTH)
    if not isinstance(user, str) or not USER_RE.match(user):
        raise ConfigurationError(f"{PROP_EXPORT_USER} {shown(user)} is not a MySQL user name")
    if auth not in AUTH_MODES:
        raise ConfigurationError(f"{PROP_AUTH} must be one of {', '.join(AUTH_MODES)}, got {shown(auth)}")
    secret = props.get(PROP_EXPORT_SECRET_ARN) or None
    if (auth == "secret") != (secret is not None):
        raise ConfigurationError(f"{PROP_EXPORT_SECRET_ARN} is required with auth 'secret' and only then")
    return Request(user, auth, secret)  # type: ignore[arg-type]


def differences(request: Request, settings: Settings) -> list[str]:
    """The properties in which ``request`` asks for something other than what this bootstrap serves."""
    served = {PROP_EXPORT_USER: settings.export_user, PROP_AUTH: settings.auth,
              PROP_EXPORT_SECRET_ARN: settings.export_secret_arn}
    asked = {PROP_EXPORT_USER: request.user, PROP_AUTH: request.auth, PROP_EXPORT_SECRET_ARN: request.export_secret_arn}
    return [name for name in served if served[name] != asked[name]]


def check_request(request: Request, settings: Settings) -> None:
    """Refuse a request for any user, auth mode or secret other than the ones set at synth."""
    wrong = differences(request, settings)
    if wrong:
        raise ConfigurationError(
            f"refused: this bootstrap manages only the export user {settings.export_user!r} (auth {settings.auth!r}"
            + (", its secret in " + ENV_EXPORT_SECRET_ARN if settings.export_secret_arn else "")
            + f"); the request's {', '.join(wrong)} differ{'s' if len(wrong) == 1 else ''}")
