"""Per-column cell encoders over the server's own bytes, chosen once per sheet from what each column holds.

The export reads every value as the bytes the server sent (``database.QueryStream``: the text protocol's
length-encoded strings, never decoded or converted by the driver). Each encoder here writes the common,
well-formed values of its column straight from those bytes into cell XML, and hands everything else (zero and
early dates, values Excel cannot hold, text that needs escaping, anything shaped unlike the server's text) to the
reference path: :meth:`ColumnType.value` (what the driver's default converters would have returned), then
:meth:`CellEncoder.value`. Both paths write the same bytes for every value (tests/test_xlsx_columns.py holds
them to it).

An encoder returns a whole ``<c>`` element whose ``r`` attribute holds :data:`ROW` where the row number goes
(the writer puts it in, once per row), or ``b""`` for an empty cell.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Callable

from .xlsx import (EXCEL_EPOCH, EXCEL_FIRST_DATE, EXCEL_PAST_LAST_INSTANT, MAX_CELL_CHARS, MAX_EXACT_DIGITS, ROW,
                   STYLE_DATE, STYLE_DATETIME, STYLE_DATETIME_MS, CellEncoder, serial)

Encode = Callable[[object], bytes]

#: What a column holds, as the writer needs to know it.
INTEGER, FLOAT, DECIMAL, DATE, DATETIME, TIME, TEXT, OTHER = (
    "integer", "float", "decimal", "date", "datetime", "time", "text", "other")


@dataclass(frozen=True)
class ColumnType:
    """``kind`` of a column's values. ``decode`` turns the server's bytes into what the driver's default
    converters return (None: values arrive as Python values already, the reference path's input)."""

    kind: str
    decode: Callable[[bytes], object] | None = None

    def value(self, value: object) -> object:
        """``value`` as the driver would have returned it with its default converters."""
        return self.decode(value) if self.decode is not None and value is not None else value


ANY = ColumnType(OTHER)

#: The server's text for each type (MySQL's own output formats); anything else takes the reference path.
_DECIMAL_TEXT = re.compile(rb"-?[0-9]+(?:\.[0-9]+)?")
_DATE_TEXT = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DATETIME_TEXT = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2} (?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?")
#: UTF-8 that CellEncoder.text() would change (escape, replace or mark): control characters, XML's specials,
#: CR, the underscore of _xHHHH_, U+FFFE and U+FFFF (valid UTF-8 holds no surrogates).
_TEXT_NEEDS_WORK = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f&<>\r_]|\xef\xbf[\xbe\xbf]")
#: ASCII whitespace that str.isspace() sees at an edge (text() keeps it with xml:space; the rest are controls).
_ASCII_SPACE = frozenset(b" \t\n")
#: Text of at most this many bytes is never cut (each character is at least one byte and two UTF-16 units at most).
_PLAIN_TEXT_MAX = MAX_CELL_CHARS // 2

_EPOCH_ORDINAL = EXCEL_EPOCH.toordinal()
_FIRST_DAY = EXCEL_FIRST_DATE.toordinal() - _EPOCH_ORDINAL
_LAST_US = (EXCEL_PAST_LAST_INSTANT - EXCEL_EPOCH) // dt.timedelta(microseconds=1)
#: " HH:MM" and ":SS" of a date-time's text (every valid one) to seconds: two lookups parse and check the time of day.
_HOURS_MINUTES = {b" %02d:%02d" % (h, m): h * 3600 + m * 60 for h in range(24) for m in range(60)}
_SECONDS = {b":%02d" % s: s for s in range(60)}
#: Distinct days remembered per column (about 1 MB at most): dates repeat, datetimes share their day.
_DAY_CACHE_SIZE = 4096
#: Cells remembered per column for values that repeat (statuses, codes, prices), values of at most _MEMO_BYTES
#: bytes: a few hundred kB per column at most, the first distinct values a column brings.
_MEMO_SIZE, _MEMO_BYTES = 4096, 64


def column_encoder(encoder: CellEncoder, column: ColumnType, letter: str) -> Encode:
    """The cell encoder for one column (``letter``): fast for its kind's common values, the reference path
    otherwise. A column without ``decode`` gets Python values: the reference path for all of them."""
    reference = _reference(encoder, column, letter)
    make = _ENCODERS.get(column.kind) if column.decode is not None else None
    return reference if make is None else make(_start(letter), reference)


def _start(letter: str) -> bytes:
    return f'<c r="{letter}'.encode() + ROW + b'"'


def _reference(encoder: CellEncoder, column: ColumnType, letter: str) -> Encode:
    """CellEncoder.value of the driver's value, as a whole cell."""
    general, value, start = encoder.value, column.value, _start(letter)

    def encode(raw: object) -> bytes:
        rest = general(value(raw))
        return start + rest.encode() if rest else b""

    return encode


def _integer(start: bytes, reference: Encode) -> Encode:
    """The server writes integers in plain decimal (ZEROFILL columns are not INTEGER, see database.py): text of at
    most 15 characters has at most 15 digits, which a double holds exactly."""
    head, tail = start + b"><v>", b"</v></c>"

    def encode(raw: bytes | None) -> bytes:
        if raw is not None and len(raw) <= MAX_EXACT_DIGITS:
            return head + raw + tail
        return reference(raw)

    return encode


def _memo() -> tuple[Callable[[object], bytes | None], Callable[[bytes, bytes], bytes]]:
    """(recall, remember) of a column's cells by the value's bytes, up to _MEMO_SIZE values of _MEMO_BYTES."""
    cells: dict[bytes, bytes] = {}

    def remember(raw: bytes, cell: bytes) -> bytes:
        if len(cells) < _MEMO_SIZE and len(raw) <= _MEMO_BYTES:
            cells[raw] = cell
        return cell

    return cells.get, remember


def _decimal(start: bytes, reference: Encode) -> Encode:
    """A DECIMAL's text of at most 15 characters has at most 15 significant digits: it is the number float() of
    the text gives (the double float(Decimal(text)) gives, the reference path's); zero is written "0"."""
    head, tail, zero = start + b"><v>", b"</v></c>", start + b"><v>0</v></c>"
    well_formed = _DECIMAL_TEXT.fullmatch
    recall, remember = _memo()

    def encode(raw: bytes | None) -> bytes:
        cell = recall(raw)
        if cell is not None:
            return cell
        if raw is not None and len(raw) <= MAX_EXACT_DIGITS and well_formed(raw):
            number = float(raw)
            return remember(raw, head + b"%r" % number + tail if number else zero)
        return reference(raw)

    return encode


def _day_numbers() -> Callable[[bytes], int | None]:
    """Days since Excel's epoch of ``YYYY-MM-DD``, or None for text of another shape, a day that is not a date
    (zero dates) or one before 1900-03-01; remembered for the column's first distinct texts."""
    cache: dict[bytes, int | None] = {}
    well_formed = _DATE_TEXT.fullmatch

    def day_number(text: bytes) -> int | None:
        try:
            return cache[text]
        except KeyError:
            pass
        try:
            number = dt.date(int(text[:4]), int(text[5:7]), int(text[8:10])).toordinal() - _EPOCH_ORDINAL
        except ValueError:
            number = None
        if number is not None and (number < _FIRST_DAY or not well_formed(text)):
            number = None
        if len(cache) < _DAY_CACHE_SIZE:
            cache[text] = number
        return number

    return day_number


def _date(start: bytes, reference: Encode) -> Encode:
    well_formed = _DATE_TEXT.fullmatch
    day_number = _day_numbers()
    head = start + f' s="{STYLE_DATE}"><v>'.encode()
    recall, remember = _memo()  # dates repeat

    def encode(raw: bytes | None) -> bytes:
        cell = recall(raw)
        if cell is not None:
            return cell
        if raw is not None and well_formed(raw):
            day = day_number(raw)
            if day is not None:
                return remember(raw, head + b"%d</v></c>" % day)
        return reference(raw)

    return encode


def _datetime(start: bytes, reference: Encode) -> Encode:
    """DATETIME and TIMESTAMP text: the serial in whole seconds, or rounded to the millisecond, as the reference
    path computes it (:func:`xlsx.serial` of the same rational); early, zero and too-late values go there."""
    well_formed = _DATETIME_TEXT.fullmatch
    day_number = _day_numbers()
    hours_minutes, seconds_of = _HOURS_MINUTES.get, _SECONDS.get
    head = start + f' s="{STYLE_DATETIME}"><v>'.encode()
    head_ms = start + f' s="{STYLE_DATETIME_MS}"><v>'.encode()
    tail = b"</v></c>"

    def encode(raw: bytes | None) -> bytes:
        if raw is None:
            return reference(raw)
        if len(raw) == 19:  # whole seconds: the shape checked by the lookups (what well_formed checks)
            day = day_number(raw[:10])
            hm = hours_minutes(raw[10:16])
            s = seconds_of(raw[16:])
            if day is not None and hm is not None and s is not None:
                return head + serial(day * 86_400 + hm + s, 86_400).encode() + tail
        elif well_formed(raw):
            day = day_number(raw[:10])
            if day is not None:
                seconds = day * 86_400 + int(raw[11:13]) * 3600 + int(raw[14:16]) * 60 + int(raw[17:19])
                us = int(raw[20:].ljust(6, b"0"))
                if seconds * 1_000_000 + us < _LAST_US:
                    ms = seconds * 1000 + (us + 500) // 1000
                    return (head_ms if ms % 1000 else head) + serial(ms, 86_400_000).encode() + tail
        return reference(raw)

    return encode


def _text(start: bytes, reference: Encode) -> Encode:
    """UTF-8 text that needs no escaping, replacing or cutting and has no whitespace at its edges, as an inline
    string of the server's very bytes. Non-ASCII text is decoded once, so that invalid UTF-8 fails as it does in
    the driver, and for its edges (str.isspace knows Unicode's spaces)."""
    head, tail = start + b' t="inlineStr"><is><t>', b"</t></is></c>"
    needs_work = _TEXT_NEEDS_WORK.search
    space = _ASCII_SPACE
    recall, remember = _memo()

    def encode(raw: bytes | None) -> bytes:
        cell = recall(raw)
        if cell is not None:
            return cell
        if raw and len(raw) <= _PLAIN_TEXT_MAX and needs_work(raw) is None:
            if raw.isascii():
                if raw[0] not in space and raw[-1] not in space:
                    return remember(raw, head + raw + tail)
            else:
                text = raw.decode()
                if not text[0].isspace() and not text[-1].isspace():
                    return remember(raw, head + raw + tail)
        return reference(raw)

    return encode


_ENCODERS: dict[str, Callable[[bytes, Encode], Encode]] = {
    INTEGER: _integer, DECIMAL: _decimal, DATE: _date, DATETIME: _datetime, TEXT: _text,
}

