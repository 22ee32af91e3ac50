"""The contract between the stack and the export function.

This module is the one place that names the environment variables the function
reads. The CDK construct imports these names to set them, and a test checks that
the synthesized function gets exactly this set. It must stay stdlib-only: the
stack imports it at synth time and the function at cold start.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .params import ParameterDefinition, ParameterError, check_definition, check_placeholders, time_zone

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
    }
)

#: Set by Lambda in every function's environment: where it is, ``DB_TLS=off`` (local runs) is refused.
ENV_LAMBDA_FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"
#: ``iam``: log in as ``DB_USER`` with an RDS IAM token signed by the function's own role.
#: ``secret``: log in with the user and password of the secret ``DB_SECRET_ARN``.
AUTH_ENV_NAMES = {"iam": frozenset({ENV_DB_USER}), "secret": frozenset({ENV_DB_SECRET_ARN})}


def env_names(auth: str) -> frozenset[str]:
    """Every variable the function reads in auth mode ``auth``; the stack must set exactly these."""
    return ENV_NAMES | AUTH_ENV_NAMES[auth]

#: ``verify``: TLS with the server certificate checked against the bundled Amazon RDS CA.
#: ``off``: plain connection, only for local tests against a server without TLS.
TLS_MODES = ("verify", "off")

#: The Amazon RDS CA bundle, written into the function's package by the bundler.
CA_BUNDLE_FILE = "rds-ca-bundle.pem"

#: Lambda refuses a function whose environment exceeds 4 KB in total.
MAX_EXPORTS_JSON_BYTES = 3500
#: SQL files referenced from config are bundled under this folder of the function's package.
SQL_DIR = "sql"
ON_EMPTY = ("upload", "skip")
#: Where ``sql/...`` paths are read from: the function's package. In the project the same paths
#: are relative to its root, so local runs point this there.
PACKAGE_DIR = Path(__file__).resolve().parent
MAX_FORMAT_CHARS = 255

EXPORT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SHEET_NAME_FORBIDDEN = set("[]:*?/\\")
SHEET_NAME_MAX = 31


class ConfigurationError(ValueError):
    """The function's environment is missing a variable or holds a bad value."""


@dataclass(frozen=True)
class SheetDefinition:
    name: str
    sql: str
    #: Where the SQL is read from, relative to the function's package (``sql/...``); None: inline.
    file: str | None = None


@dataclass(frozen=True)
class ExportDefinition:
    """One export: its sheets in workbook order, parameters, time zone, number formats, empty rule."""

    name: str
    sheets: tuple[SheetDefinition, ...]
    parameters: tuple[ParameterDefinition, ...] = ()
    time_zone: str = "UTC"
    #: Column name -> Excel number format code, for number and date cells of that column in every sheet.
    formats: Mapping[str, str] = field(default_factory=dict)
    on_empty: str = "upload"

    @classmethod
    def single(cls, name: str, sql: str, sheet_name: str | None = None) -> "ExportDefinition":
        """The one-sheet form (``sql`` + ``sheet_name``)."""
        return cls(name=name, sheets=(SheetDefinition(sheet_name or name, sql),))


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


_SQL_TOKEN_RE = re.compile(r"""'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|`[^`]*`|--[ \t][^\n]*|--$|#[^\n]*|/\*.*?\*/|;""",
                           re.DOTALL | re.MULTILINE)


def _code_only(sql: str) -> str:
    """The SQL with comments removed and quoted text emptied, so keywords and ';' can be seen."""

    def keep(m: re.Match) -> str:
        token = m.group(0)
        if token == ";":
            return ";"
        if token[0] in "'\"`":
            return token[0] * 2
        return " "

    return _SQL_TOKEN_RE.sub(keep, sql)


def check_sql(sql: object) -> str:
    """One SELECT (or WITH ... SELECT) statement; a trailing ';' is dropped. Returns the SQL to run."""
    if not isinstance(sql, str) or not sql.strip():
        raise ConfigurationError("sql must be a non-empty string")
    code = _code_only(sql).strip()
    if not code:
        raise ConfigurationError("sql holds only comments")
    first = code.split(None, 1)[0].lower().lstrip("(")
    if first not in ("select", "with"):
        raise ConfigurationError(f"sql must be a single SELECT (or WITH ... SELECT) query, got one starting with {first!r}")
    if ";" in code.rstrip("; \t\r\n"):
        raise ConfigurationError("sql must be a single statement; it holds more than one (';' between statements)")
    if code.endswith(";"):
        sql = sql.rstrip().rstrip(";").rstrip()
    return sql


def check_format(column: object, code: object) -> tuple[str, str]:
    """A column name and an Excel number format code (e.g. "#,##0.00", "0.0%", "dd.mm.yyyy")."""
    if not isinstance(column, str) or not column:
        raise ConfigurationError(f"format column name {column!r} must be a non-empty string")
    if not isinstance(code, str) or not code.strip():
        raise ConfigurationError(f"format for column {column!r} must be a non-empty string")
    if len(code) > MAX_FORMAT_CHARS:
        raise ConfigurationError(f"format for column {column!r} is longer than Excel's {MAX_FORMAT_CHARS} characters")
    if re.search(r"[\x00-\x1f]", code):
        raise ConfigurationError(f"format for column {column!r} holds a control character")
    outside = re.sub(r'"[^"]*"|\\.', "", code)  # quoted text and escaped characters
    if '"' in outside:
        raise ConfigurationError(f"format {code!r} for column {column!r} has an unclosed '\"'")
    brackets = re.sub(r"\[[^\[\]]*\]", "", outside)
    if "[" in brackets or "]" in brackets:
        raise ConfigurationError(f"format {code!r} for column {column!r} has an unbalanced '[' or ']'")
    if outside.count(";") > 3:
        raise ConfigurationError(f"format {code!r} for column {column!r} has more than 4 sections")
    if "@" in outside:
        raise ConfigurationError(f"format {code!r} for column {column!r} is a text format ('@'); "
                                 "formats apply to numbers and dates")
    return column, code


def check_sheets(names: list[str]) -> None:
    """Sheet names of one workbook are unique as Excel compares them (case-insensitively)."""
    seen: dict[str, str] = {}
    for name in names:
        key = name.casefold()
        if key in seen:
            raise ConfigurationError(f"sheet names {seen[key]!r} and {name!r} are the same to Excel "
                                     "(sheet names are compared case-insensitively)")
        seen[key] = name


def check_export(export: ExportDefinition) -> ExportDefinition:
    """The checks that span one export's fields: unique sheet names, placeholders vs declared parameters."""
    if not export.sheets:
        raise ConfigurationError(f"export {export.name!r} has no sheets")
    check_sheets([s.name for s in export.sheets])
    names = [p.name for p in export.parameters]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"export {export.name!r} declares a parameter twice")
    for sheet in export.sheets:
        try:
            check_placeholders(sheet.sql, names)
        except ParameterError as exc:
            where = sheet.file or f"the SQL of sheet {sheet.name!r}"
            raise ConfigurationError(f"{where}: {exc}") from None
    try:
        time_zone(export.time_zone)
    except ParameterError as exc:
        raise ConfigurationError(str(exc)) from None
    if export.on_empty not in ON_EMPTY:
        raise ConfigurationError(f"on_empty {export.on_empty!r} is not one of {', '.join(ON_EMPTY)}")
    for column, code in export.formats.items():
        check_format(column, code)
    return export


def encode_exports(exports: list[ExportDefinition]) -> str:
    """The value of ``EXPORTS``: a compact JSON object keyed by export name.

    A sheet whose SQL comes from a file carries only the file's path in the package and a
    digest of its SQL: the function reads it at cold start (so long reports do not count against
    Lambda's 4 KB environment) and checks it is the SQL synth checked; the digest also makes any
    change to a .sql file visible in the template. Defaults (UTC, upload when empty, no
    parameters or formats) are left out.
    """
    out: dict[str, Any] = {}
    for e in exports:
        body: dict[str, Any] = {
            "sheets": [{"name": s.name, "file": s.file, "sha256": sql_digest(s.sql)} if s.file
                       else {"name": s.name, "sql": s.sql} for s in e.sheets]
        }
        if e.parameters:
            body["params"] = [p.to_json() for p in e.parameters]
        if e.time_zone != "UTC":
            body["tz"] = e.time_zone
        if e.formats:
            body["formats"] = dict(e.formats)
        if e.on_empty != "upload":
            body["on_empty"] = e.on_empty
        out[e.name] = body
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


def sql_digest(sql: str) -> str:
    """The first 16 hex digits of the SHA-256 of a sheet's SQL (as checked)."""
    return hashlib.sha256(sql.encode()).hexdigest()[:16]


def _read_sql_file(package_dir: Path, relative: object, where: str) -> str:
    if not isinstance(relative, str) or not relative.startswith(SQL_DIR + "/") or ".." in relative.split("/"):
        raise ConfigurationError(f"{where}: file {relative!r} must be a path under {SQL_DIR}/ in the package")
    path = package_dir / relative
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{where}: cannot read {relative} from the function's package: {exc}") from None


def _decode_sheets(name: str, body: dict, package_dir: Path) -> tuple[SheetDefinition, ...]:
    if "sheets" not in body:  # the one-sheet form
        return (SheetDefinition(check_sheet_name(body.get("sheet", name)), check_sql(body.get("sql"))),)
    raw = body["sheets"]
    if not isinstance(raw, list) or not raw:
        raise ConfigurationError(f"{ENV_EXPORTS}[{name!r}].sheets must be a non-empty list")
    sheets = []
    for i, item in enumerate(raw):
        where = f"{ENV_EXPORTS}[{name!r}].sheets[{i}]"
        if not isinstance(item, dict):
            raise ConfigurationError(f"{where} must be an object with 'name' and 'sql' or 'file'")
        file = item.get("file")
        sql = _read_sql_file(package_dir, file, where) if file is not None else item.get("sql")
        try:
            sheet = SheetDefinition(check_sheet_name(item.get("name")), check_sql(sql), file)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}{' (' + file + ')' if file else ''}: {exc}") from None
        if file is not None and item.get("sha256") not in (None, sql_digest(sheet.sql)):
            raise ConfigurationError(f"{where}: {file} in the package is not the SQL synth checked "
                                     "(its digest differs); deploy the asset built with this configuration")
        sheets.append(sheet)
    return tuple(sheets)


def decode_exports(raw: str, package_dir: Path | None = None) -> dict[str, ExportDefinition]:
    """``EXPORTS`` back into definitions; SQL files are read from ``package_dir`` (the function's package)."""
    package_dir = package_dir or PACKAGE_DIR
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
            raise ConfigurationError(f"{ENV_EXPORTS}[{name!r}] must be an object with 'sheets' or 'sql'")
        try:
            parameters = tuple(check_definition(p) for p in body.get("params", []))
        except ParameterError as exc:
            raise ConfigurationError(f"{ENV_EXPORTS}[{name!r}]: {exc}") from None
        formats = body.get("formats", {})
        if not isinstance(formats, dict):
            raise ConfigurationError(f"{ENV_EXPORTS}[{name!r}].formats must be an object of column -> format")
        try:
            exports[name] = check_export(ExportDefinition(
                name=name,
                sheets=_decode_sheets(name, body, package_dir),
                parameters=parameters,
                time_zone=body.get("tz", "UTC"),
                formats=formats,
                on_empty=body.get("on_empty", "upload"),
            ))
        except ConfigurationError as exc:
            message = str(exc)
            raise ConfigurationError(message if message.startswith(ENV_EXPORTS) else
                                     f"{ENV_EXPORTS}[{name!r}]: {message}") from None
    return exports


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
    prefix = environ.get(ENV_KEY_PREFIX, "")
    if prefix and not prefix.endswith("/"):
        raise ConfigurationError(f"{ENV_KEY_PREFIX} must be empty or end with '/', got {prefix!r}")
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
        exports=decode_exports(environ[ENV_EXPORTS]),
    )
