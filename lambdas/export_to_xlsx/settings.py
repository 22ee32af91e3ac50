"""The contract between the stack and the export function.

This module is the one place that names the environment variables the function
reads. The CDK construct imports these names to set them, and a test checks that
the synthesized function gets exactly this set. It must stay stdlib-only: the
stack imports it at synth time and the function at cold start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .definition import DefinitionError, ExportDefinition, decode_exports

ENV_SOURCE_BUCKET = "SOURCE_BUCKET"
ENV_KEY_PREFIX = "KEY_PREFIX"
ENV_DB_AUTH = "DB_AUTH"
ENV_DB_SECRET_ARN = "DB_SECRET_ARN"
ENV_DB_USER = "DB_USER"
ENV_DB_HOST = "DB_HOST"
ENV_DB_PORT = "DB_PORT"
ENV_DB_NAME = "DB_NAME"
ENV_DB_TLS = "DB_TLS"
ENV_EXPORTS = "EXPORTS"
#: The run ledger's DynamoDB table, and how many days its items are kept (the table's TTL).
ENV_LEDGER_TABLE = "LEDGER_TABLE"
ENV_HISTORY_DAYS = "HISTORY_DAYS"
#: Set by Lambda itself; names the function in the ledger-failure metric.
ENV_FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"
#: The secret holding the environment's mask key; set only when some export has a ``sha256`` mask.
ENV_MASK_KEY_SECRET_ARN = "MASK_KEY_SECRET_ARN"

#: The variables the function reads whatever the auth mode.
ENV_NAMES = frozenset(
    {
        ENV_SOURCE_BUCKET,
        ENV_KEY_PREFIX,
        ENV_DB_AUTH,
        ENV_DB_HOST,
        ENV_DB_PORT,
        ENV_DB_NAME,
        ENV_DB_TLS,
        ENV_EXPORTS,
        ENV_LEDGER_TABLE,
        ENV_HISTORY_DAYS,
    }
)

#: Set by Lambda in every function's environment: where it is, ``DB_TLS=off`` (local runs) is refused.
ENV_LAMBDA_FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"
#: ``iam``: log in as ``DB_USER`` with an RDS IAM token signed by the function's own role.
#: ``secret``: log in with the user and password of the secret ``DB_SECRET_ARN``.
AUTH_ENV_NAMES = {"iam": frozenset({ENV_DB_USER}), "secret": frozenset({ENV_DB_SECRET_ARN})}


def env_names(auth: str, hashes: bool = False) -> frozenset[str]:
    """Every variable the function reads in auth mode ``auth`` (``hashes``: some export has a sha256 mask);
    the stack must set exactly these."""
    return ENV_NAMES | AUTH_ENV_NAMES[auth] | ({ENV_MASK_KEY_SECRET_ARN} if hashes else frozenset())

#: ``verify``: TLS with the server certificate checked against the bundled Amazon RDS CA.
#: ``off``: plain connection, only for local tests against a server without TLS.
TLS_MODES = ("verify", "off")


#: Lambda refuses a function whose environment exceeds 4 KB in total.
MAX_EXPORTS_JSON_BYTES = 3500
#: Where ``sql/...`` paths of ``EXPORTS`` are read from: the function's package.
PACKAGE_DIR = Path(__file__).resolve().parent

#: The function's environment is missing a variable or holds a bad value (one error class with the
#: definition's: a bad ``EXPORTS`` names its field the same way).
ConfigurationError = DefinitionError


@dataclass(frozen=True)
class Settings:
    source_bucket: str
    key_prefix: str
    auth: str
    db_user: str | None  # iam
    secret_arn: str | None  # secret
    db_host: str
    db_port: int
    db_name: str
    tls: str
    exports: Mapping[str, ExportDefinition]
    ledger_table: str = ""
    history_days: int = 400
    function_name: str = "export-to-xlsx"
    mask_key_secret_arn: str | None = None


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Read and check every variable once; raise one error naming all that are wrong."""
    auth = environ.get(ENV_DB_AUTH, "")
    if auth and auth not in AUTH_ENV_NAMES:
        raise ConfigurationError(f"{ENV_DB_AUTH} must be one of {', '.join(AUTH_ENV_NAMES)}, got {auth!r}")
    names = env_names(auth) if auth else ENV_NAMES
    missing = sorted(n for n in names - {ENV_KEY_PREFIX} if not environ.get(n))
    if missing:
        raise ConfigurationError(f"missing environment variables: {', '.join(missing)}")
    port_raw = environ[ENV_DB_PORT]
    if not port_raw.isdigit() or not 0 < int(port_raw) < 65536:
        raise ConfigurationError(f"{ENV_DB_PORT} must be a TCP port number, got {port_raw!r}")
    tls = environ[ENV_DB_TLS]
    if tls not in TLS_MODES:
        raise ConfigurationError(f"{ENV_DB_TLS} must be one of {', '.join(TLS_MODES)}, got {tls!r}")
    if tls == "off" and environ.get(ENV_LAMBDA_FUNCTION_NAME):
        raise ConfigurationError(f"{ENV_DB_TLS}=off is for local runs only: inside Lambda ({ENV_LAMBDA_FUNCTION_NAME} "
                                 "is set) the database is reached over verified TLS only")
    if auth == "iam" and tls != "verify":
        raise ConfigurationError(f"{ENV_DB_AUTH}=iam needs {ENV_DB_TLS}=verify: the token is sent as a clear-text "
                                 "password and is only ever sent over verified TLS")
    history_raw = environ[ENV_HISTORY_DAYS]
    if not history_raw.isdigit() or int(history_raw) < 1:
        raise ConfigurationError(f"{ENV_HISTORY_DAYS} must be a whole number of days (1 or more), got {history_raw!r}")
    prefix = environ.get(ENV_KEY_PREFIX, "")
    if prefix and not prefix.endswith("/"):
        raise ConfigurationError(f"{ENV_KEY_PREFIX} must be empty or end with '/', got {prefix!r}")
    exports = decode_exports(environ[ENV_EXPORTS], PACKAGE_DIR, ENV_EXPORTS)
    mask_key = environ.get(ENV_MASK_KEY_SECRET_ARN) or None
    hashing = sorted(e.name for e in exports.values() if e.hashes)
    if hashing and mask_key is None:
        raise ConfigurationError(f"{ENV_MASK_KEY_SECRET_ARN} is missing: export(s) {', '.join(hashing)} mask "
                                 "columns with sha256, which needs the environment's mask key")
    return Settings(
        source_bucket=environ[ENV_SOURCE_BUCKET],
        key_prefix=prefix,
        auth=auth,
        db_user=environ.get(ENV_DB_USER) if auth == "iam" else None,
        secret_arn=environ.get(ENV_DB_SECRET_ARN) if auth == "secret" else None,
        db_host=environ[ENV_DB_HOST],
        db_port=int(port_raw),
        db_name=environ[ENV_DB_NAME],
        tls=tls,
        exports=exports,
        mask_key_secret_arn=mask_key,
        ledger_table=environ[ENV_LEDGER_TABLE],
        history_days=int(history_raw),
        function_name=environ.get(ENV_FUNCTION_NAME) or "export-to-xlsx",
    )
