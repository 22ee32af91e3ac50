"""Run-time parameters of an export: declared in config, given by an event, bound by the driver.

An export declares each parameter's name, type and an optional default; an event may give
values (``{"export": "orders", "params": {"day": "2026-11-20"}}``). Every value is parsed as
its declared type before the database is reached, and the SQL refers to it by name as
``%(day)s``: PyMySQL escapes and quotes the value itself, it is never formatted into the
SQL text by this code. In the SQL of an export with parameters every ``%`` is a
placeholder or a literal written ``%%``.

Date and datetime values may be relative to the run: ``today``, ``yesterday``,
``start_of_month``, ``start_of_previous_month``, ``start_of_year`` and ``-7d``/``+1d``,
evaluated in the export's IANA time zone at the moment the run starts (datetimes: midnight
of that day, or ``now``; a datetime is the naive wall-clock time in that zone).

Stdlib only: the stack imports it at synth time to check config, the function at run time.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

TYPES = ("date", "datetime", "int", "decimal", "str")
PARAMETER_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
RELATIVE_DAYS_RE = re.compile(r"^([+-])(\d{1,4})d$")
RELATIVE_WORDS = ("today", "yesterday", "start_of_month", "start_of_previous_month", "start_of_year")
#: A placeholder ``%(name)s``, a literal ``%%``, or (group 1 empty) a stray ``%``.
PLACEHOLDER_RE = re.compile(r"%(%|\(([A-Za-z_][A-Za-z0-9_]*)\)s)?")
MAX_STR_CHARS = 200
MAX_INT = 2**63 - 1
#: A decimal's bounds: MySQL's DECIMAL holds up to 65 digits, so nothing it stores is 10^65 or more in
#: magnitude or has more than 65 decimal places. PyMySQL writes a Decimal out in full ('1e999999999' would be a
#: gigabyte of zeros), so a value must be within these before it goes anywhere near the driver.
MAX_DECIMAL_DIGITS = 65
MAX_DECIMAL_TEXT = 100
#: How much of a value (or name) an error message quotes: an event may carry megabytes.
SHOWN_CHARS = 60


def shown(value: Any) -> str:
    """``repr(value)`` for an error message, cut to :data:`SHOWN_CHARS` characters."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**SHOWN_CHARS:
        return f"a number of {len(str(abs(value)))} digits" if abs(value) < 10**4000 else "a number of over 4000 digits"
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return repr(value[:SHOWN_CHARS]) + f"...({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "...(cut)"


class ParameterError(ValueError):
    """A parameter's declaration or value is wrong; the message names the parameter."""


@dataclass(frozen=True)
class ParameterDefinition:
    name: str
    type: str
    default: Any = None  # as written in config (relative words allowed); None: the event must give it
    allowed: tuple[str, ...] = ()  # str only: the values an event may give
    #: The value never leaves the run as it is: results, logs, metadata, events and the ledger get
    #: :func:`digest` of it instead, and errors do not quote it.
    sensitive: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.default is not None:
            out["default"] = self.default
        if self.allowed:
            out["allowed"] = list(self.allowed)
        if self.sensitive:
            out["sensitive"] = True
        return out


def _tzdata_zones() -> frozenset[str] | None:
    """The zone names of the tzdata package (which the functions carry and the venvs install), or None."""
    try:
        from importlib.resources import files

        return frozenset(files("tzdata").joinpath("zones").read_text(encoding="utf-8").split())
    except (ImportError, OSError):
        return None


_ZONES = _tzdata_zones()


def time_zone(name: str) -> ZoneInfo:
    """An IANA zone by name: one of the tzdata package's zones where it is installed, so that a name only the
    machine's own database knows (``posix/...``, ``localtime``) fails at synth, not in the function."""
    if _ZONES is not None and name not in _ZONES:
        raise ParameterError(f"time zone {name!r} is not an IANA time zone name like 'Europe/Berlin'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ParameterError(f"time zone {name!r} is not an IANA time zone name like 'Europe/Berlin'") from None


def check_definition(raw: Any) -> ParameterDefinition:
    """A parameter declaration from config or the function's environment, checked."""
    if not isinstance(raw, Mapping):
        raise ParameterError(f"a parameter must be an object with name and type, got {raw!r}")
    unknown = set(raw) - {"name", "type", "default", "allowed", "sensitive"}
    name = raw.get("name")
    if not isinstance(name, str) or not PARAMETER_NAME_RE.match(name):
        raise ParameterError(f"parameter name {name!r} must be 1-63 characters of a-z, 0-9 and '_', "
                             "starting with a letter")
    if unknown:
        raise ParameterError(f"parameter {name!r}: unknown field(s) {', '.join(sorted(unknown))}")
    kind = raw.get("type")
    if kind not in TYPES:
        raise ParameterError(f"parameter {name!r}: type {kind!r} is not one of {', '.join(TYPES)}")
    allowed = raw.get("allowed")
    if allowed is not None:
        if kind != "str":
            raise ParameterError(f"parameter {name!r}: allowed values are for type str only")
        if not isinstance(allowed, list) or not allowed or not all(isinstance(a, str) for a in allowed):
            raise ParameterError(f"parameter {name!r}: allowed must be a non-empty list of strings")
        if len(set(allowed)) != len(allowed):
            raise ParameterError(f"parameter {name!r}: allowed holds duplicates")
    sensitive = raw.get("sensitive", False)
    if not isinstance(sensitive, bool):
        raise ParameterError(f"parameter {name!r}: sensitive must be true or false")
    definition = ParameterDefinition(name, kind, raw.get("default"), tuple(allowed or ()), sensitive)
    if definition.default is not None:
        # The default must parse as the type (relative dates against any clock).
        parse_value(definition, definition.default, dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc),
                    ZoneInfo("UTC"), what="default")
    return definition


def _relative_day(word: str, today: dt.date) -> dt.date | None:
    if word == "today":
        return today
    if word == "yesterday":
        return today - dt.timedelta(days=1)
    if word == "start_of_month":
        return today.replace(day=1)
    if word == "start_of_previous_month":
        return (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    if word == "start_of_year":
        return today.replace(month=1, day=1)
    match = RELATIVE_DAYS_RE.match(word)
    if match:
        days = int(match.group(2))
        return today + dt.timedelta(days=days if match.group(1) == "+" else -days)
    return None


def parse_value(p: ParameterDefinition, raw: Any, now: dt.datetime, zone: ZoneInfo, *, what: str = "value") -> Any:
    """``raw`` (from JSON) as ``p``'s type; relative dates are taken at ``now`` in ``zone``."""

    def bad(expect: str) -> ParameterError:
        return ParameterError(f"parameter {p.name!r}: {what} {quoted(p, raw)} is not {expect}")

    if p.type in ("date", "datetime"):
        if not isinstance(raw, str):
            raise bad(f"a {p.type} (give it as text)")
        local_now = now.astimezone(zone)
        if p.type == "datetime" and raw == "now":
            return local_now.replace(tzinfo=None, microsecond=0)
        day = _relative_day(raw, local_now.date())
        if day is not None:
            return day if p.type == "date" else dt.datetime.combine(day, dt.time())
        try:
            if p.type == "date":
                return dt.date.fromisoformat(raw)
            value = dt.datetime.fromisoformat(raw)
        except ValueError:
            words = ", ".join(RELATIVE_WORDS + ("-7d",) + (("now",) if p.type == "datetime" else ()))
            raise bad(f"a {p.type} (ISO 8601 like '2026-11-20{'T05:00:00' if p.type == 'datetime' else ''}' "
                      f"or one of {words})") from None
        if value.tzinfo is not None:  # an explicit offset: the same instant in the export's zone
            try:
                value = value.astimezone(zone).replace(tzinfo=None)
            except (OverflowError, ValueError):
                raise bad(f"a {p.type} that exists in the export's time zone (years 1 to 9999)") from None
        return value
    if p.type == "int":
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise bad("a whole number")
        if isinstance(raw, str) and not re.fullmatch(r"[+-]?\d{1,19}", raw.strip()):
            raise bad("a whole number")
        value = int(raw)
        if not -MAX_INT - 1 <= value <= MAX_INT:
            raise bad("a 64-bit whole number")
        return value
    if p.type == "decimal":
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise bad("a decimal number (give it as text, e.g. \"12.50\", to keep every digit)")
        if isinstance(raw, int) and abs(raw) >= 10**MAX_DECIMAL_DIGITS:
            raise bad(f"a decimal number below 10^{MAX_DECIMAL_DIGITS} in magnitude")
        text = str(raw).strip()
        if len(text) > MAX_DECIMAL_TEXT:
            raise bad(f"a decimal number of at most {MAX_DECIMAL_TEXT} characters")
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise bad("a decimal number") from None
        if not value.is_finite() or len(value.as_tuple().digits) > MAX_DECIMAL_DIGITS:
            raise bad(f"a finite decimal number of at most {MAX_DECIMAL_DIGITS} digits")
        if value.adjusted() >= MAX_DECIMAL_DIGITS or -value.as_tuple().exponent > MAX_DECIMAL_DIGITS:
            raise bad(f"a decimal number below 10^{MAX_DECIMAL_DIGITS} in magnitude with at most "
                      f"{MAX_DECIMAL_DIGITS} decimal places")
        return value
    # str
    if not isinstance(raw, str):
        raise bad("text")
    if len(raw) > MAX_STR_CHARS:
        raise ParameterError(f"parameter {p.name!r}: {what} is longer than {MAX_STR_CHARS} characters")
    if p.allowed and raw not in p.allowed:
        raise ParameterError(f"parameter {p.name!r}: {what} {quoted(p, raw)} is not one of "
                             f"{', '.join(map(repr, p.allowed))}")
    return raw


def resolve(definitions: Sequence[ParameterDefinition], given: Any, now: dt.datetime, zone_name: str,
            *, export: str) -> dict[str, Any]:
    """Every declared parameter's value for one run: the event's, else the default; typed."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ParameterError(f'export {export!r}: "params" must be an object of parameter name -> value')
    declared = {p.name: p for p in definitions}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        valid = ", ".join(declared) or "none"
        names = ", ".join(map(shown, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ParameterError(f"export {export!r}: unknown parameter(s) {names}; declared: {valid}")
    zone = time_zone(zone_name)
    values = {}
    for p in definitions:
        if p.name in given:
            values[p.name] = parse_value(p, given[p.name], now, zone)
        elif p.default is not None:
            values[p.name] = parse_value(p, p.default, now, zone, what="default")
        else:
            raise ParameterError(f"export {export!r}: parameter {p.name!r} has no default; the event must give it")
    return values


def as_text(value: Any) -> str:
    """A resolved value as recorded in object metadata, the result and the log."""
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)


def digest(value: Any) -> str:
    """What stands for a sensitive value outside the run: ``sha256:`` and 16 hex digits of its text's SHA-256.
    Two runs with the same value show the same digest; a value that can be guessed can be found by hashing
    guesses, so a digest tells "same or different", not "secret"."""
    import hashlib

    return "sha256:" + hashlib.sha256(as_text(value).encode()).hexdigest()[:16]


def quoted(p: ParameterDefinition, raw: Any) -> str:
    """A value as an error message may quote it: cut short, and never a sensitive one."""
    return "(sensitive, not shown)" if p.sensitive else shown(raw)


def recorded(definitions: Sequence[ParameterDefinition], values: Mapping[str, Any]) -> dict[str, str]:
    """The run's values as text for its result, log line, metadata, events and ledger: sensitive ones as their
    :func:`digest`. ``values`` may be resolved values or the values an event gave (names not declared are kept
    out: they are refused anyway)."""
    declared = {p.name: p for p in definitions}
    return {name: digest(value) if declared[name].sensitive else as_text(value)
            for name, value in values.items() if name in declared}


def check_placeholders(sql: str, declared: Sequence[str]) -> None:
    """Raise ParameterError when the SQL's placeholders do not fit the declared parameters."""
    for match in PLACEHOLDER_RE.finditer(sql):
        if match.group(1) is None:
            if not declared:
                continue  # no parameters: the SQL is sent as is and % is an ordinary character
            raise ParameterError(f"a '%' at character {match.start() + 1} is neither a %(name)s placeholder nor "
                                 "written '%%' (in SQL with parameters a literal % is written %%)")
        name = match.group(2)
        if name is None:
            continue
        if name not in declared:
            if not declared:
                raise ParameterError(f"uses %({name})s but the export declares no parameters")
            raise ParameterError(f"uses %({name})s, which is not a declared parameter ({', '.join(declared)})")
