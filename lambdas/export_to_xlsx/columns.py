"""Per-column cell encoders, chosen once per sheet from what the driver says each column holds.

The export reads DECIMAL, DATE, DATETIME, TIMESTAMP and TIME as the server's text (``database.TEXT_CONVERSIONS``)
instead of having the driver build Decimal and datetime objects that the writer would turn back into text. Each
encoder here writes the common, well-formed values of its column straight into cell XML, and hands everything
else (NULL, zero and early dates, values Excel cannot hold, anything shaped unlike the server's text) to the
reference path: the driver's own converter for that type, then :meth:`CellEncoder.value`. Both paths write the
same bytes for every value (tests/test_xlsx_columns.py holds them to it).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Callable

from .xlsx import (EXCEL_EPOCH, EXCEL_FIRST_DATE, EXCEL_PAST_LAST_INSTANT, MAX_CELL_CHARS, MAX_EXACT_DIGITS,
                   STYLE_DATE, STYLE_DATETIME, STYLE_DATETIME_MS, CellEncoder, serial)

Encode = Callable[[object], str]

#: What a column holds, as the writer needs to know it.
INTEGER, FLOAT, DECIMAL, DATE, DATETIME, TIME, TEXT, OTHER = (
    "integer", "float", "decimal", "date", "datetime", "time", "text", "other")


@dataclass(frozen=True)
class ColumnType:
    """``kind`` of a column's values; ``parse`` is the driver's converter for its text (None: values arrive
    converted), used for anything the fast encoder does not handle and for column widths."""

    kind: str
    parse: Callable[[str], object] | None = None

    def value(self, value: object) -> object:
        """``value`` as the driver would have returned it with its default converters."""
        return self.parse(value) if self.parse is not None and type(value) is str else value


ANY = ColumnType(OTHER)

_EXACT_INT_BOUND = 10**MAX_EXACT_DIGITS
#: The server's text for each type (MySQL's own output formats); anything else takes the reference path.
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
#: A DECIMAL has at most 65 digits: shorter text is far inside a double's range (the reference path checks).
_DECIMAL_TEXT_MAX = 80
_DATE_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} (?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?")
#: Text that CellEncoder.text() would change (escape, replace, mark or preserve): it takes the reference path.
_TEXT_NEEDS_WORK = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f&<>\r_\ufffe\uffff\ud800-\udfff]")
_PLAIN_TEXT_MAX = MAX_CELL_CHARS // 2  # shorter text is never cut (each character is at most two UTF-16 units)

_EPOCH_ORDINAL = EXCEL_EPOCH.toordinal()
_FIRST_DAY = EXCEL_FIRST_DATE.toordinal() - _EPOCH_ORDINAL
_LAST_US = (EXCEL_PAST_LAST_INSTANT - EXCEL_EPOCH) // dt.timedelta(microseconds=1)
#: Distinct dates remembered per column (about 1 MB at most): dates repeat, datetimes share their day.
_DAY_CACHE_SIZE = 4096
_NOT_A_SERIAL_DAY = -1


def column_encoder(encoder: CellEncoder, column: ColumnType) -> Encode:
    """The cell encoder for one column: fast for its kind's common values, ``encoder.value`` otherwise."""
    make = _ENCODERS.get(column.kind)
    return encoder.value if make is None else make(encoder, column)


def _reference(encoder: CellEncoder, column: ColumnType) -> Encode:
    general, parse = encoder.value, column.parse
    if parse is None:
        return general
    return lambda value: general(parse(value) if type(value) is str else value)


def _integer(encoder: CellEncoder, column: ColumnType) -> Encode:
    general = encoder.value

    def encode(value: object) -> str:
        if type(value) is int and -_EXACT_INT_BOUND < value < _EXACT_INT_BOUND:
            return f"><v>{value}</v></c>"
        return general(value)

    return encode


def _float(encoder: CellEncoder, column: ColumnType) -> Encode:
    general, finite = encoder.value, math.isfinite

    def encode(value: object) -> str:
        if type(value) is float and finite(value):
            return f"><v>{value!r}</v></c>"
        return general(value)

    return encode


def _decimal(encoder: CellEncoder, column: ColumnType) -> Encode:
    """A DECIMAL's text of at most 15 significant digits is the number its text says (float() of the text is
    the double float(Decimal(text)) gives); longer ones are text, by the reference path."""
    slow = _reference(encoder, column)
    well_formed = _DECIMAL_TEXT.fullmatch

    def encode(value: object) -> str:
        if type(value) is str and len(value) <= _DECIMAL_TEXT_MAX and well_formed(value):
            significant = value.replace(".", "").lstrip("-0").rstrip("0")
            if not significant:
                return "><v>0</v></c>"
            if len(significant) <= MAX_EXACT_DIGITS:
                return f"><v>{float(value)!r}</v></c>"
        return slow(value)

    return encode


def _day_numbers() -> Callable[[str], int]:
    """Days since Excel's epoch of a well-formed ``YYYY-MM-DD`` text, or _NOT_A_SERIAL_DAY for a day that is
    not a date (zero dates) or comes before 1900-03-01; remembered for the column's most frequent days."""
    cache: dict[str, int] = {}

    def day_number(text: str) -> int:
        number = cache.get(text)
        if number is None:
            try:
                number = dt.date(int(text[:4]), int(text[5:7]), int(text[8:10])).toordinal() - _EPOCH_ORDINAL
            except ValueError:
                number = _NOT_A_SERIAL_DAY
            if number < _FIRST_DAY:
                number = _NOT_A_SERIAL_DAY
            if len(cache) < _DAY_CACHE_SIZE:
                cache[text] = number
        return number

    return day_number


def _date(encoder: CellEncoder, column: ColumnType) -> Encode:
    slow = _reference(encoder, column)
    well_formed = _DATE_TEXT.fullmatch
    day_number = _day_numbers()

    def encode(value: object) -> str:
        if type(value) is str and well_formed(value):
            day = day_number(value)
            if day != _NOT_A_SERIAL_DAY:
                return f' s="{STYLE_DATE}"><v>{day}</v></c>'
        return slow(value)

    return encode


def _datetime(encoder: CellEncoder, column: ColumnType) -> Encode:
    """DATETIME and TIMESTAMP text: the serial in whole seconds, or rounded to the millisecond, as the reference
    path computes it (:func:`xlsx.serial` of the same rational); early, zero and too-late values go there."""
    slow = _reference(encoder, column)
    well_formed = _DATETIME_TEXT.fullmatch
    day_number = _day_numbers()

    def encode(value: object) -> str:
        if type(value) is str and well_formed(value):
            day = day_number(value[:10])
            if day != _NOT_A_SERIAL_DAY:
                seconds = day * 86_400 + int(value[11:13]) * 3600 + int(value[14:16]) * 60 + int(value[17:19])
                if len(value) == 19:
                    return f' s="{STYLE_DATETIME}"><v>{serial(seconds, 86_400)!r}</v></c>'
                us = int(value[20:].ljust(6, "0"))
                if seconds * 1_000_000 + us < _LAST_US:
                    ms = seconds * 1000 + (us + 500) // 1000
                    style = STYLE_DATETIME_MS if ms % 1000 else STYLE_DATETIME
                    return f' s="{style}"><v>{serial(ms, 86_400_000)!r}</v></c>'
        return slow(value)

    return encode


def _text(encoder: CellEncoder, column: ColumnType) -> Encode:
    """Strings that need no escaping, replacing or cutting and keep no edge whitespace, as inline strings."""
    general = encoder.value
    needs_work = _TEXT_NEEDS_WORK.search

    def encode(value: object) -> str:
        if (type(value) is str and value and len(value) <= _PLAIN_TEXT_MAX and not needs_work(value)
                and not value[0].isspace() and not value[-1].isspace()):
            return f' t="inlineStr"><is><t>{value}</t></is></c>'
        return general(value)

    return encode


_ENCODERS: dict[str, Callable[[CellEncoder, ColumnType], Encode]] = {
    INTEGER: _integer, FLOAT: _float, DECIMAL: _decimal, DATE: _date, DATETIME: _datetime, TIME: _reference,
    TEXT: _text,
}
