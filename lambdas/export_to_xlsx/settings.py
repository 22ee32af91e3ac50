"""The contract between the stack and the export function.

This module is the one place that names the environment variables the function
reads. The CDK construct imports these names to set them, and a test checks that
the synthesized function gets exactly this set. It must stay stdlib-only: the
stack imports it at synth time and the function at cold start.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Mapping

ENV_SOURCE_BUCKET = "SOURCE_BUCKET"
ENV_KEY_PREFIX = "KEY_PREFIX"
ENV_DB_SECRET_ARN = "DB_SECRET_ARN"
ENV_DB_HOST = "DB_HOST"
ENV_DB_PORT = "DB_PORT"
ENV_DB_NAME = "DB_NAME"
ENV_DB_TLS = "DB_TLS"
ENV_EXPORTS = "EXPORTS"

#: Every variable the function reads; the stack must set exactly these.
ENV_NAMES = frozenset(
    {
        ENV_SOURCE_BUCKET,
        ENV_KEY_PREFIX,
        ENV_DB_SECRET_ARN,
        ENV_DB_HOST,
        ENV_DB_PORT,
        ENV_DB_NAME,
        ENV_DB_TLS,
        ENV_EXPORTS,
    }
)

#: ``verify``: TLS with the server certificate checked against the bundled Amazon RDS CA.
#: ``off``: plain connection, only for local tests against a server without TLS.
TLS_MODES = ("verify", "off")

#: The Amazon RDS CA bundle, written into the function's package by the bundler.
CA_BUNDLE_FILE = "rds-ca-bundle.pem"

#: Lambda refuses a function whose environment exceeds 4 KB in total.
MAX_EXPORTS_JSON_BYTES = 3500

EXPORT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SHEET_NAME_FORBIDDEN = set("[]:*?/\\")
SHEET_NAME_MAX = 31


class ConfigurationError(ValueError):
    """The function's environment is missing a variable or holds a bad value."""


@dataclass(frozen=True)
class ExportDefinition:
    name: str
    sql: str
    sheet_name: str


@dataclass(frozen=True)
class Settings:
    source_bucket: str
    key_prefix: str
    secret_arn: str
    db_host: str
    db_port: int
    db_name: str
    tls: str
    exports: Mapping[str, ExportDefinition]


def check_export_name(name: object) -> str:
    if not isinstance(name, str) or not EXPORT_NAME_RE.match(name):
        raise ConfigurationError(
            f"export name {name!r} must be 1-63 characters of a-z, 0-9, '_' or '-', "
            "starting with a letter or digit (it is also the S3 key prefix)"
        )
    return name


def check_sheet_name(sheet: object) -> str:
    if not isinstance(sheet, str) or not sheet.strip():
        raise ConfigurationError(f"sheet name {sheet!r} must be a non-empty string")
    bad = SHEET_NAME_FORBIDDEN.intersection(sheet)
    if bad:
        raise ConfigurationError(f"sheet name {sheet!r} may not contain {''.join(sorted(bad))!r}")
    if len(sheet) > SHEET_NAME_MAX:
        raise ConfigurationError(f"sheet name {sheet!r} is longer than Excel's {SHEET_NAME_MAX} characters")
    if sheet.startswith("'") or sheet.endswith("'"):
        raise ConfigurationError(f"sheet name {sheet!r} may not start or end with an apostrophe")
    return sheet


def check_sql(sql: object) -> str:
    if not isinstance(sql, str) or not sql.strip():
        raise ConfigurationError("sql must be a non-empty string")
    first = sql.lstrip().split(None, 1)[0].lower().lstrip("(")
    if first not in ("select", "with"):
        raise ConfigurationError(f"sql must be a single SELECT (or WITH ... SELECT) query, got one starting with {first!r}")
    return sql


def encode_exports(exports: list[ExportDefinition]) -> str:
    """The value of ``EXPORTS``: a compact JSON object keyed by export name."""
    return json.dumps(
        {e.name: {"sql": e.sql, "sheet": e.sheet_name} for e in exports},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def decode_exports(raw: str) -> dict[str, ExportDefinition]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{ENV_EXPORTS} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigurationError(f"{ENV_EXPORTS} must be a non-empty JSON object of export name -> definition")
    exports = {}
    for name, body in data.items():
        check_export_name(name)
        if not isinstance(body, dict):
            raise ConfigurationError(f"{ENV_EXPORTS}[{name!r}] must be an object with 'sql' and 'sheet'")
        exports[name] = ExportDefinition(
            name=name,
            sql=check_sql(body.get("sql")),
            sheet_name=check_sheet_name(body.get("sheet", name)),
        )
    return exports


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Read and check every variable once; raise one error naming all that are wrong."""
    missing = sorted(n for n in ENV_NAMES - {ENV_KEY_PREFIX} if not environ.get(n))
    if missing:
        raise ConfigurationError(f"missing environment variables: {', '.join(missing)}")
    port_raw = environ[ENV_DB_PORT]
    if not port_raw.isdigit() or not 0 < int(port_raw) < 65536:
        raise ConfigurationError(f"{ENV_DB_PORT} must be a TCP port number, got {port_raw!r}")
    tls = environ[ENV_DB_TLS]
    if tls not in TLS_MODES:
        raise ConfigurationError(f"{ENV_DB_TLS} must be one of {', '.join(TLS_MODES)}, got {tls!r}")
    prefix = environ.get(ENV_KEY_PREFIX, "")
    if prefix and not prefix.endswith("/"):
        raise ConfigurationError(f"{ENV_KEY_PREFIX} must be empty or end with '/', got {prefix!r}")
    return Settings(
        source_bucket=environ[ENV_SOURCE_BUCKET],
        key_prefix=prefix,
        secret_arn=environ[ENV_DB_SECRET_ARN],
        db_host=environ[ENV_DB_HOST],
        db_port=int(port_raw),
        db_name=environ[ENV_DB_NAME],
        tls=tls,
        exports=decode_exports(environ[ENV_EXPORTS]),
    )
