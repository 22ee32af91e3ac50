"""One definition of an export, read by one parser at synth and at cold start.

An export is written once, in an environment's ``exports`` list in ``cdk.json``:

- ``name``: a-z, 0-9, ``_``, ``-``; also its key prefix;
- ``sheets``: ``[{"name", "sql" | "sql_file"}, ...]``, or the one-sheet form ``sql`` / ``sql_file``
  with an optional ``sheet_name`` (default: the export's name);
- ``parameters``: ``[{"name", "type", "default", "allowed"}]`` (:mod:`.params`);
- ``time_zone`` (IANA, default ``UTC``), ``formats`` (column -> Excel number format),
  ``on_empty`` (``upload`` or ``skip``), ``schedule`` (``rate(...)``/``cron(...)``, UTC),
  ``max_query_seconds`` (the server stops a sheet's query after this long);
- ``schedules``: ``[{"name", "cron" | "rate", "time_zone", "params", "deliver_within_minutes"}]``,
  EventBridge Scheduler schedules in a time zone (default: the export's), each with its own
  parameter values (checked with the function's parser) and an optional delivery deadline.
- ``table`` (``true`` or an Excel table style name: each sheet an Excel Table), ``about_sheet`` (``true``: a
  last sheet "About" with the run's facts), ``mask`` (column -> ``sha256``, ``redact`` or ``last4``),
  ``latest_copy`` (``true``: the replicator keeps ``<export>/latest.xlsx`` in the destination; synth only).

Config reads each entry with :func:`read_export` and the stack puts :func:`encode_exports` of the
result into the function's ``EXPORTS`` variable: the same field names, always in the ``sheets``
form, defaults left out, a SQL file as its path and digest. The function decodes it at cold start
with :func:`decode_exports`, which calls the same :func:`read_export`: one vocabulary, one
validation. :class:`Reader` is the small walker both use; it collects every problem with the path
of its field, so a synth reports them all at once.

Stdlib only: the stack imports it at synth time and the function at cold start.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from .params import ParameterDefinition, ParameterError, check_definition, check_placeholders, resolve, shown, time_zone
from .. import cron

T = TypeVar("T")

#: SQL files live under this folder: of the project at synth, of the function's package at run time.
SQL_DIR = "sql"
ON_EMPTY = ("upload", "skip")
MAX_FORMAT_CHARS = 255
EXPORT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SHEET_NAME_FORBIDDEN = set("[]:*?/\\")
#: Excel's limit on a sheet name; the writer's continuation sheets (``name (2)``) keep within it too.
SHEET_NAME_MAX = 31
#: Excel's built-in table styles (Home > Format as Table): Light 1-21, Medium 1-28, Dark 1-11.
TABLE_STYLES = frozenset([f"TableStyleLight{i}" for i in range(1, 22)] + [f"TableStyleMedium{i}" for i in range(1, 29)]
                         + [f"TableStyleDark{i}" for i in range(1, 12)])
DEFAULT_TABLE_STYLE = "TableStyleMedium2"
#: ``sha256``: hex of HMAC-SHA256 with the environment's mask key; ``redact``: an empty cell; ``last4``: every
#: character but the last four replaced.
MASKS = ("sha256", "redact", "last4")

SCHEDULE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
#: EventBridge Scheduler's limit on a schedule's name (``<export>.<schedule>``).
SCHEDULER_NAME_MAX = 64
#: A deadline may be at most a week after its run.
MAX_DEADLINE_MINUTES = 7 * 24 * 60
#: What ``max_query_seconds`` leaves of the function's timeout, and its default's margin: enough to
#: close the workbook, upload it and fail cleanly.
QUERY_TIME_MARGIN_SECONDS = 30

EXPORT_NAME_RULE = ("1-63 characters of a-z, 0-9, '_' or '-', starting with a letter or digit "
                    "(it is also the S3 key prefix)")


class DefinitionError(ValueError):
    """One or more definition fields are wrong; each line names its field."""

    def __init__(self, problems: str | Sequence[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# --- the walker ----------------------------------------------------------------------------


class Reader:
    """Typed reads of one JSON object; a bad value is recorded with its path and the default returned.

    Readers made with :meth:`child` or :meth:`obj` share the problem list, so one pass over a whole
    environment collects every problem; :meth:`raise_problems` raises them together.
    """

    def __init__(self, data: Any, path: str, problems: list[str] | None = None):
        self.problems: list[str] = [] if problems is None else problems
        self.path = path
        self.used: set[str] = set()
        if not isinstance(data, Mapping):
            self.problems.append(f"{path}: expected an object, got {type(data).__name__}")
            data = {}
        self.data: Mapping[str, Any] = data

    def child(self, data: Any, path: str) -> "Reader":
        return Reader(data, path, self.problems)

    def problem(self, key: str | None, message: str) -> None:
        self.problems.append(f"{self.path}{'.' + key if key else ''}: {message}")

    def fail(self, key: str | None, message: str) -> DefinitionError:
        """A problem that ends the read of this object: ``raise r.fail(...)``, caught by an :meth:`attempt`."""
        return DefinitionError(f"{self.path}{'.' + key if key else ''}: {message}")

    def attempt(self, fn: Callable[[], T], default: T, key: str | None = None) -> T:
        """``fn()``, or ``default`` with its problems recorded (under ``key``, when a check names none)."""
        try:
            return fn()
        except DefinitionError as exc:
            self.problems.extend(exc.problems)
        except (ParameterError, ValueError) as exc:
            self.problem(key, str(exc))
        return default

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                self.problem(key, "required field is missing")
            return None
        return self.data[key]

    def str(self, key: str, default: str | None = None, *, required: bool = False,
            check: Callable[[str], Any] | None = None, expect: str = "") -> str | None:
        value = self.raw(key, required)
        if value is None:
            return default
        if not isinstance(value, str):
            self.problem(key, f"expected a string, got {value!r}")
            return default
        if check is not None and not check(value):
            self.problem(key, f"{shown(value)} is not {expect}")
            return default
        return value

    def int(self, key: str, default: Any, low: int, high: int) -> Any:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"expected a whole number, got {value!r}")
            return default
        if not low <= value <= high:
            self.problem(key, f"{value} is outside {low}..{high}")
            return default
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"expected true or false, got {value!r}")
            return default
        return value

    def str_list(self, key: str, *, required: bool, check: Callable[[str], Any], expect: str) -> tuple[str, ...]:
        value = self.raw(key, required)
        if value is None:
            return ()
        if not isinstance(value, list) or not value:
            self.problem(key, "expected a non-empty list of strings")
            return ()
        bad = [(i, item) for i, item in enumerate(value) if not isinstance(item, str) or not check(item)]
        for i, item in bad:
            self.problems.append(f"{self.path}.{key}[{i}]: {item!r} is not {expect}")
        if len(set(map(repr, value))) != len(value):
            self.problem(key, "holds duplicates")
        return () if bad else tuple(value)

    def list(self, key: str, *, required: bool = False, expect: str) -> list[Any]:
        value = self.raw(key, required)
        if value is None:
            return []
        if not isinstance(value, list) or not value:
            self.problem(key, f"expected a non-empty list of {expect}")
            return []
        return value

    def obj(self, key: str) -> "Reader":
        value = self.raw(key)
        return self.child({} if value is None else value, f"{self.path}.{key}")

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            self.problem(None, f"unknown field(s) {', '.join(unknown)}")

    def raise_problems(self) -> None:
        if self.problems:
            raise DefinitionError(list(dict.fromkeys(self.problems)))


# --- the definition ------------------------------------------------------------------------


@dataclass(frozen=True)
class SheetDefinition:
    name: str
    sql: str
    #: The file the SQL was read from (``sql/...``: the project's at synth, the package's at run time).
    sql_file: str | None = None


@dataclass(frozen=True)
class ScheduleDefinition:
    """One EventBridge Scheduler schedule of an export: when (in its zone), with which values, by when."""

    name: str
    expression: str
    time_zone: str
    #: Parameter values as written in config (relative words allowed), sent in each run's event.
    params: Mapping[str, Any] = field(default_factory=dict)
    #: Each run's workbook must be in the destination this many minutes after its scheduled time.
    deliver_within_minutes: int | None = None

    def scheduler_name(self, export: str) -> str:
        """The schedule's name in Scheduler: ``<export>.<name>`` ('.' is in neither, so names never collide)."""
        return f"{export}.{self.name}"


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
    #: An EventBridge schedule expression (UTC); used by the stack, sent to the function only for the About sheet.
    schedule: str | None = None
    #: EventBridge Scheduler schedules in a time zone; used by the stack only, not sent to the function.
    schedules: tuple[ScheduleDefinition, ...] = ()
    #: The server stops a sheet's query after this many seconds (None: the function's time left, less a margin).
    max_query_seconds: int | None = None
    #: The Excel table style of every sheet's table (None: no tables, an auto-filter instead).
    table: str | None = None
    #: A last sheet "About" with the export's name, schedule, parameters, run time, rows, SQL digest and key.
    about_sheet: bool = False
    #: Column name -> one of MASKS, applied to that column on every sheet before a value reaches the writer.
    mask: Mapping[str, str] = field(default_factory=dict)
    #: The replicator also keeps ``<destination prefix><key prefix><export>/latest.xlsx`` (synth only: the
    #: stack tells the replicator, the export function does not need it).
    latest_copy: bool = False

    @property
    def hashes(self) -> bool:
        """Some column is masked with the keyed hash: the function needs the environment's mask key."""
        return "sha256" in self.mask.values()

    @classmethod
    def single(cls, name: str, sql: str, sheet_name: str | None = None, **fields: Any) -> "ExportDefinition":
        """The one-sheet form, unchecked (tests and tools; config goes through :func:`read_export`)."""
        return cls(name=name, sheets=(SheetDefinition(sheet_name or name, sql),), **fields)

    def sql_files(self) -> dict[str, bytes]:
        """Package path -> contents of every SQL file this export reads (bundled into the asset)."""
        return {s.sql_file: s.sql.encode() for s in self.sheets if s.sql_file}

    def to_json(self) -> dict[str, Any]:
        """The function's part of the definition in cdk.json's field names, defaults left out."""
        body: dict[str, Any] = {
            "sheets": [{"name": s.name, "sql_file": s.sql_file, "sha256": sql_digest(s.sql)} if s.sql_file
                       else {"name": s.name, "sql": s.sql} for s in self.sheets]
        }
        if self.parameters:
            body["parameters"] = [p.to_json() for p in self.parameters]
        if self.time_zone != "UTC":
            body["time_zone"] = self.time_zone
        if self.formats:
            body["formats"] = dict(self.formats)
        if self.on_empty != "upload":
            body["on_empty"] = self.on_empty
        if self.max_query_seconds is not None:
            body["max_query_seconds"] = self.max_query_seconds
        if self.table is not None:
            body["table"] = True if self.table == DEFAULT_TABLE_STYLE else self.table
        if self.about_sheet:
            body["about_sheet"] = True
            if self.schedule is not None:
                body["schedule"] = self.schedule  # shown on the About sheet
        if self.mask:
            body["mask"] = dict(self.mask)
        return body


# --- single-field checks -------------------------------------------------------------------


def is_export_name(name: object) -> bool:
    return isinstance(name, str) and EXPORT_NAME_RE.match(name) is not None


def check_sheet_name(sheet: object) -> str:
    if not isinstance(sheet, str) or not sheet.strip():
        raise ValueError(f"sheet name {sheet!r} must be a non-empty string")
    bad = SHEET_NAME_FORBIDDEN.intersection(sheet)
    if bad:
        raise ValueError(f"sheet name {sheet!r} may not contain {''.join(sorted(bad))!r}")
    if len(sheet) > SHEET_NAME_MAX:
        raise ValueError(f"sheet name {sheet!r} is longer than Excel's {SHEET_NAME_MAX} characters")
    if sheet.startswith("'") or sheet.endswith("'"):
        raise ValueError(f"sheet name {sheet!r} may not start or end with an apostrophe")
    return sheet


_SQL_TOKEN_RE = re.compile(r"""'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|`[^`]*`|--(?=[\x00-\x20])[^\n]*|--$|#[^\n]*|/\*.*?\*/|;""",
                           re.DOTALL | re.MULTILINE)
#: Clauses that make a SELECT write a file or variables, or lock rows: an export only reads.
_FORBIDDEN_CLAUSES = (
    (re.compile(r"\binto\s+outfile\b"), "INTO OUTFILE writes a file on the database host"),
    (re.compile(r"\binto\s+dumpfile\b"), "INTO DUMPFILE writes a file on the database host"),
    (re.compile(r"\binto\b"), "INTO stores the result in variables instead of returning it"),
    (re.compile(r"\bfor\s+update\b"), "FOR UPDATE locks the rows it reads"),
    (re.compile(r"\bfor\s+share\b"), "FOR SHARE locks the rows it reads"),
    (re.compile(r"\block\s+in\s+share\s+mode\b"), "LOCK IN SHARE MODE locks the rows it reads"),
)


def _code_only(sql: str) -> str:
    """The SQL with comments removed and quoted text emptied, so keywords and ';' can be seen.

    MySQL runs the body of an executable comment (``/*! ... */``), so that body is kept."""

    def keep(m: re.Match) -> str:
        token = m.group(0)
        if token == ";":
            return ";"
        if token[0] in "'\"`":
            return token[0] * 2
        if token.startswith(("/*!", "/*M!")):
            return " " + _code_only(re.sub(r"^/\*M?!\d*", "", token)[:-2]) + " "
        return " "

    return _SQL_TOKEN_RE.sub(keep, sql)


def _main_statement(code: str) -> str | None:
    """The statement a ``WITH`` clause leads to: the first statement keyword outside every parenthesis."""
    depth, outside = 0, []
    for ch in code.lower():
        depth += ch == "("
        outside.append(ch if depth == 0 else " ")
        depth -= ch == ")" and depth > 0
    found = re.search(r"\b(select|update|delete|insert|replace|table|values)\b", "".join(outside))
    return found.group(1) if found else None


def check_sql(sql: object) -> str:
    """One read-only SELECT (or WITH ... SELECT); a trailing ';' is dropped. Returns the SQL to run."""
    if not isinstance(sql, str) or not sql.strip():
        raise ValueError("sql must be a non-empty string")
    code = _code_only(sql).strip()
    if not code:
        raise ValueError("sql holds only comments")
    first = re.match(r"\(*\s*([a-z]*)", code.lower()).group(1)
    if first not in ("select", "with"):
        raise ValueError(f"sql must be a single SELECT (or WITH ... SELECT) query, got one starting with {first!r}")
    if first == "with" and _main_statement(code) != "select":
        raise ValueError("sql must be a single SELECT (or WITH ... SELECT) query; after its WITH clause comes "
                         f"{(_main_statement(code) or 'nothing').upper()}")
    if ";" in code.rstrip("; \t\r\n"):
        raise ValueError("sql must be a single statement; it holds more than one (';' between statements)")
    words = " ".join(code.lower().split())
    for pattern, why in _FORBIDDEN_CLAUSES:
        if pattern.search(words):
            raise ValueError(f"sql must only read: {why}")
    if code.endswith(";"):
        sql = sql.rstrip().rstrip(";").rstrip()
    return sql


def check_format(column: object, code: object) -> tuple[str, str]:
    """A column name and an Excel number format code (e.g. "#,##0.00", "0.0%", "dd.mm.yyyy")."""
    if not isinstance(column, str) or not column:
        raise ValueError(f"format column name {column!r} must be a non-empty string")
    if not isinstance(code, str) or not code.strip():
        raise ValueError(f"format for column {column!r} must be a non-empty string")
    if len(code) > MAX_FORMAT_CHARS:
        raise ValueError(f"format for column {column!r} is longer than Excel's {MAX_FORMAT_CHARS} characters")
    if re.search(r"[\x00-\x1f]", code):
        raise ValueError(f"format for column {column!r} holds a control character")
    outside = re.sub(r'"[^"]*"|\\.', "", code)  # quoted text and escaped characters
    if '"' in outside:
        raise ValueError(f"format {code!r} for column {column!r} has an unclosed '\"'")
    brackets = re.sub(r"\[[^\[\]]*\]", "", outside)
    if "[" in brackets or "]" in brackets:
        raise ValueError(f"format {code!r} for column {column!r} has an unbalanced '[' or ']'")
    if outside.count(";") > 3:
        raise ValueError(f"format {code!r} for column {column!r} has more than 4 sections")
    if "@" in outside:
        raise ValueError(f"format {code!r} for column {column!r} is a text format ('@'); "
                         "formats apply to numbers and dates")
    return column, code


def is_time_zone(name: str) -> bool:
    try:
        time_zone(name)
    except ParameterError:
        return False
    return True


def validate_schedule(expr: str) -> str | None:
    """Return a problem with an EventBridge schedule expression, or None if it is valid."""
    try:
        cron.check_expression(expr)
    except cron.CronError as exc:
        return str(exc)
    return None


def sql_digest(sql: str) -> str:
    """The first 16 hex digits of the SHA-256 of a sheet's SQL (as checked)."""
    return hashlib.sha256(sql.encode()).hexdigest()[:16]


def read_project_file(root: Path, relative: str) -> str:
    """The text of a ``sql/....sql`` file under ``root`` (the project, or the function's package), not empty."""
    parts = Path(relative).parts
    if (Path(relative).is_absolute() or ".." in parts or parts[:1] != (SQL_DIR,) or not relative.endswith(".sql")
            or "\\" in relative):
        raise ValueError(f"{relative!r} must be a .sql file under the {SQL_DIR}/ folder, like '{SQL_DIR}/orders.sql'")
    file = root / relative
    if not file.is_file():
        raise ValueError(f"SQL file {relative} does not exist (looked for {file})")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read SQL file {relative}: {exc}") from None
    if not text.strip():
        raise ValueError(f"SQL file {relative} is empty")
    return text


def read_sql_file(root: Path, relative: str) -> str:
    """A sheet's SQL file (:func:`read_project_file`), checked to be one read-only SELECT."""
    text = read_project_file(root, relative)
    try:
        return check_sql(text)
    except ValueError as exc:
        raise ValueError(f"SQL file {relative}: {exc}") from None


# --- the parser ----------------------------------------------------------------------------


def _read_sheet(r: Reader, root: Path, default_name: str | None, name_key: str, export: str,
                wire: bool) -> SheetDefinition | None:
    name = r.str(name_key, default_name, required=name_key == "name")
    if name is not None and not r.has(name_key) and len(name) > SHEET_NAME_MAX:
        r.problem(name_key, f"missing: the export's name {name!r} would name its sheet, and Excel allows "
                            f"{SHEET_NAME_MAX} characters; give sheet_name")
        name = None
    elif name is not None:
        name = r.attempt(lambda: check_sheet_name(name), None, name_key)
    where = f"export {export!r}, sheet {name or '?'!r}"
    if not r.has("sql") and not r.has("sql_file"):
        r.problem("sql", "required field is missing (give sql or sql_file)")
        return None
    sql, sql_file = r.str("sql"), r.str("sql_file")
    digest = r.str("sha256", required=wire and sql_file is not None) if wire else None
    if sql is None and sql_file is None:
        return None  # the field's own problem is recorded
    if sql is not None and sql_file is not None:
        r.problem("sql_file", "give sql or sql_file, not both")
        return None
    if sql_file is not None:
        text = r.attempt(lambda: _naming(where, read_sql_file, root, sql_file), None, "sql_file")
        if text is not None and digest is not None and digest != sql_digest(text):
            r.problem("sql_file", f"{sql_file} in the package is not the SQL synth checked (its digest differs); "
                                  "deploy the asset built with this configuration")
            return None
    else:
        text = r.attempt(lambda: _naming(where, check_sql, sql), None, "sql")
    return SheetDefinition(name, text, sql_file) if text is not None and name is not None else None


def _naming(where: str, check: Callable[..., T], *args: Any) -> T:
    try:
        return check(*args)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _read_sheets(r: Reader, root: Path, export: str | None, wire: bool) -> tuple[SheetDefinition, ...] | None:
    r.used.add("sheets")  # "sheets": null is the one-sheet form too
    if not r.has("sheets"):  # the one-sheet form: the sheet is named after the export unless sheet_name says
        sheet = _read_sheet(r, root, export, "sheet_name", export or "?", wire)
        return None if sheet is None else (sheet,)
    for key in ("sql", "sql_file", "sheet_name"):
        if r.has(key):
            r.problem(key, "give either sheets or the one-sheet form (sql or sql_file, sheet_name), not both")
    raw = r.list("sheets", expect="{name, sql | sql_file}")
    sheets = []
    for i, item in enumerate(raw):
        sr = r.child(item, f"{r.path}.sheets[{i}]")
        if not isinstance(item, Mapping):  # its problem is recorded; nothing more to say about it
            sheets.append(None)
            continue
        sheets.append(_read_sheet(sr, root, None, "name", export or "?", wire))
        sr.done()
    if not raw or None in sheets:
        return None
    seen: dict[str, str] = {}
    for sheet in sheets:
        key = sheet.name.casefold()
        if key in seen:
            r.problem("sheets", f"sheet names {seen[key]!r} and {sheet.name!r} are the same to Excel "
                                "(sheet names are compared case-insensitively)")
            return None
        seen[key] = sheet.name
    return tuple(sheets)


def _read_parameters(r: Reader) -> tuple[ParameterDefinition, ...]:
    out = []
    for i, item in enumerate(r.list("parameters", expect="parameters")):
        p = r.attempt(lambda: check_definition(item), None, f"parameters[{i}]")
        if p is not None:
            out.append(p)
    names = [p.name for p in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        r.problem("parameters", f"duplicate parameter name(s): {', '.join(dupes)}")
    return tuple(out)


def _read_formats(r: Reader) -> dict[str, str]:
    raw = r.raw("formats")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not raw:
        r.problem("formats", 'expected an object of column name -> Excel number format, like {"amount": "#,##0.00"}')
        return {}
    for column, code in raw.items():
        r.attempt(lambda: check_format(column, code), None, f"formats.{column}")
    return dict(raw)


def _read_schedule(r: Reader, export: str, parameters: tuple[ParameterDefinition, ...], zone: str
                   ) -> ScheduleDefinition | None:
    before = len(r.problems)
    name = r.str("name", required=True, check=SCHEDULE_NAME_RE.match,
                 expect="a schedule name: 1-63 characters of a-z, 0-9, '_' or '-', starting with a letter or digit")
    if name is not None and len(f"{export}.{name}") > SCHEDULER_NAME_MAX:
        r.problem("name", f"'{export}.{name}' (the schedule's name in EventBridge Scheduler) is longer than "
                          f"{SCHEDULER_NAME_MAX} characters; shorten the export's or the schedule's name")
    cron_expr, rate_expr = r.str("cron"), r.str("rate")
    expression = None
    if (cron_expr is None) == (rate_expr is None):
        r.problem("cron", "give cron or rate (one of them)")
    else:
        key, kind, text = ("cron", "cron", cron_expr) if cron_expr is not None else ("rate", "rate", rate_expr)
        expression = text if text.startswith(f"{kind}(") else f"{kind}({text})"
        problem = validate_schedule(expression)
        if problem:
            r.problem(key, f"{text!r}: {problem}")
            expression = None
    tz = r.str("time_zone", zone, check=is_time_zone, expect="an IANA time zone name like 'Europe/Berlin'")
    raw_params = r.raw("params")
    params: dict[str, Any] = {}
    if raw_params is not None and not isinstance(raw_params, Mapping):
        r.problem("params", "expected an object of parameter name -> value")
    elif raw_params is not None:
        params = dict(raw_params)
    try:  # the function's own parser, at a fixed instant: unknown names, wrong values, missing defaults
        resolve(parameters, params, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), tz or "UTC", export=export)
    except ParameterError as exc:
        r.problem("params", str(exc))
    for p in parameters:
        if p.sensitive and p.name in params:
            r.problem(f"params.{p.name}", "is a sensitive parameter: a schedule's input holds its value in clear "
                                         "(give it a default in the parameter's declaration instead)")
    deadline = r.int("deliver_within_minutes", None, 1, MAX_DEADLINE_MINUTES)
    if deadline is not None and expression is not None:
        if expression.startswith("rate("):
            r.problem("deliver_within_minutes", "needs a cron schedule: a rate schedule's runs are counted from "
                                                "when it was deployed, so their times are not known in advance")
        elif tz is not None:
            gap = cron.shortest_interval(expression, tz, at_least=dt.timedelta(minutes=deadline))
            if gap is not None:
                r.problem("deliver_within_minutes", f"{deadline} minutes is longer than the {_minutes(gap)} minutes "
                                                    f"between two runs of {expression} in {tz}")
    r.done()
    if len(r.problems) > before or name is None or expression is None or tz is None:
        return None
    return ScheduleDefinition(name, expression, tz, params, deadline)


def _minutes(gap: dt.timedelta) -> int:
    return int(gap.total_seconds() // 60)


def _read_schedules(r: Reader, export: str, parameters: tuple[ParameterDefinition, ...], zone: str
                    ) -> tuple[ScheduleDefinition, ...]:
    out = []
    for i, item in enumerate(r.list("schedules", expect="schedules")):
        schedule = _read_schedule(r.child(item, f"{r.path}.schedules[{i}]"), export, parameters, zone)
        if schedule is not None:
            out.append(schedule)
    names = [s.name for s in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        r.problem("schedules", f"duplicate schedule name(s): {', '.join(dupes)}")
    return tuple(out)


def _read_table(r: Reader) -> str | None:
    raw = r.raw("table")
    if raw is None or raw is False:
        return None
    if raw is True:
        return DEFAULT_TABLE_STYLE
    if isinstance(raw, str) and raw in TABLE_STYLES:
        return raw
    r.problem("table", f"{shown(raw)} is not true, false or one of Excel's table styles (TableStyleLight1-21, "
                       f"TableStyleMedium1-28, TableStyleDark1-11)")
    return None


def _read_mask(r: Reader) -> dict[str, str]:
    raw = r.raw("mask")
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not raw:
        r.problem("mask", 'expected an object of column name -> mask, like {"email": "sha256"}')
        return {}
    out = {}
    for column, how in raw.items():
        if not column:
            r.problem("mask", "a column name must not be empty")
        elif how not in MASKS:
            r.problem(f"mask.{column}", f"{shown(how)} is not one of {', '.join(MASKS)}")
        else:
            out[column] = how
    return out


def read_export(r: Reader, root: Path, *, wire: bool = False) -> ExportDefinition | None:
    """One export from its JSON object; None when it has problems (recorded in ``r``).

    ``root`` is where ``sql/...`` files are read from. ``wire``: the form in ``EXPORTS``, whose
    SQL files carry the digest of the SQL synth checked, with a schedule only for the About sheet and no
    ``latest_copy`` (the replicator's business)."""
    before = len(r.problems)
    name = r.str("name", required=True, check=is_export_name, expect=f"an export name: {EXPORT_NAME_RULE}")
    sheets = _read_sheets(r, root, name, wire)
    parameters = _read_parameters(r)
    tz = r.str("time_zone", "UTC", check=is_time_zone, expect="an IANA time zone name like 'Europe/Berlin'")
    formats = _read_formats(r)
    on_empty = r.str("on_empty", "upload", check=ON_EMPTY.__contains__, expect=f"one of {', '.join(ON_EMPTY)}")
    max_query = r.int("max_query_seconds", None, 1, 900)
    schedule = r.str("schedule")  # in EXPORTS only with about_sheet, which shows it
    schedules = () if wire else _read_schedules(r, name or "?", parameters, tz)
    table = _read_table(r)
    about_sheet = r.bool("about_sheet", False)
    mask = _read_mask(r)
    latest_copy = False if wire else r.bool("latest_copy", False)
    if schedule is not None:
        problem = validate_schedule(schedule)
        if problem:
            r.problem("schedule", f"{schedule!r}: {problem}")
        required = [p.name for p in parameters if p.default is None]
        if required:
            r.problem("parameters", f"a scheduled export needs a default for every parameter; "
                                    f"{', '.join(required)} has none")
    r.done()
    if sheets is not None:
        declared = [p.name for p in parameters]
        for sheet in sheets:
            try:
                check_placeholders(sheet.sql, declared)
            except ParameterError as exc:
                where = sheet.sql_file or f"the SQL of sheet {sheet.name!r}"
                r.problem("sheets" if r.has("sheets") else ("sql_file" if sheet.sql_file else "sql"), f"{where}: {exc}")
    if len(r.problems) > before or name is None or sheets is None:
        return None
    return ExportDefinition(name=name, sheets=sheets, parameters=parameters, time_zone=tz, formats=formats,
                            on_empty=on_empty, schedule=schedule, schedules=schedules,
                            max_query_seconds=max_query, table=table, about_sheet=about_sheet, mask=mask,
                            latest_copy=latest_copy)


def export_from(raw: Mapping[str, Any], root: Path, path: str = "export") -> ExportDefinition:
    """One checked export from its cdk.json form; raises :class:`DefinitionError` naming every problem."""
    r = Reader(raw, path)
    export = read_export(r, root)
    r.raise_problems()
    assert export is not None
    return export


def read_exports(r: Reader, key: str, root: Path) -> tuple[ExportDefinition, ...]:
    """The ``exports`` list of an environment: every export read, names unique."""
    exports = []
    for i, item in enumerate(r.list(key, required=True, expect="exports")):
        export = read_export(r.child(item, f"{r.path}.{key}[{i}]"), root)
        if export is not None:
            exports.append(export)
    names = [e.name for e in exports]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        r.problem(key, f"duplicate export name(s): {', '.join(dupes)}")
    return tuple(exports)


def encode_exports(exports: Iterable[ExportDefinition]) -> str:
    """The value of ``EXPORTS``: a compact JSON object of export name -> :meth:`ExportDefinition.to_json`.

    A sheet whose SQL comes from a file carries only the file's path in the package and a digest
    of its SQL: the function reads it at cold start (so long reports do not count against Lambda's
    4 KB environment) and checks it is the SQL synth checked; the digest also makes any change to
    a .sql file visible in the template."""
    return json.dumps({e.name: e.to_json() for e in exports}, separators=(",", ":"), ensure_ascii=False)


def decode_exports(raw: str, package_dir: Path, variable: str = "EXPORTS") -> dict[str, ExportDefinition]:
    """``EXPORTS`` back into definitions with :func:`read_export`; SQL files are read from ``package_dir``."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DefinitionError(f"{variable} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise DefinitionError(f"{variable} must be a non-empty JSON object of export name -> definition")
    problems: list[str] = []
    exports = {}
    for name, body in data.items():
        r = Reader(body, f"{variable}[{shown(name)}]", problems)
        if isinstance(body, Mapping) and "name" in body:
            r.problem("name", "the export's name is its key in " + variable)
            continue
        export = read_export(r.child({**r.data, "name": name}, r.path), package_dir, wire=True)
        if export is not None:
            exports[name] = export
    if problems:
        raise DefinitionError(problems)
    return exports
