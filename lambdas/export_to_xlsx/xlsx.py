"""Stream rows into an .xlsx file with flat memory.

The workbook is written as a zip whose sheet XML is compressed as it is produced,
so neither memory nor the temporary file holds the uncompressed sheet. Each cell
value is turned into its natural Excel form here (see :class:`CellEncoder`); every
string is written as an inline string, never as a formula.

Why not openpyxl's write-only workbook: it spools the uncompressed sheet XML to a
temporary file (about 850 MB per million 12-column rows, more than Lambda's default
/tmp), keeps every distinct string in memory, and spends most of its time creating
a cell object per value. bench/export_bench.py measures both.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import re
import shutil
import zipfile
import zlib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence
from xml.sax.saxutils import escape

from zlib_ng import zlib_ng

from .checksum import HashingFile
from .definition import SHEET_NAME_MAX

#: The format's limit is 1,048,576 rows per sheet; one of them is the header.
MAX_DATA_ROWS_PER_SHEET = 1_048_575
#: Excel keeps a cell's text up to this many characters (UTF-16 code units).
MAX_CELL_CHARS = 32_767
TRUNCATION_MARK = "…[truncated]"
#: Excel stores numbers as IEEE doubles and shows 15 significant digits.
MAX_EXACT_DIGITS = 15
#: Characters XML 1.0 cannot hold (as openpyxl's ILLEGAL_CHARACTERS_RE, plus U+FFFE/U+FFFF and surrogates).
ILLEGAL_XML_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
REPLACEMENT = "\ufffd"
#: Excel reads _xHHHH_ in a cell as an escaped character; _x005F_ escapes the underscore. A lookahead, so
#: overlapping ones (_x005F_x0041_: two) are all escaped.
EXCEL_ESCAPE_RE = re.compile(r"_(?=x[0-9A-Fa-f]{4}_)")

EXCEL_EPOCH = dt.datetime(1899, 12, 30)
EXCEL_FIRST_DATE = dt.date(1900, 3, 1)  # before this Excel's serials are skewed by its 1900 leap-year bug
#: Excel holds date-times to the millisecond up to 9999-12-31 23:59:59.999 (serial 2958465.99999999).
#: A value that rounds to the millisecond at or past this instant (serial 2958466) does not fit.
EXCEL_PAST_LAST_INSTANT = dt.datetime(9999, 12, 31, 23, 59, 59, 999_500)
#: Integers strictly inside this range have at most 15 digits: the fast path of CellEncoder.cell.
_EXACT_INT_BOUND = 10**MAX_EXACT_DIGITS
#: Numbers whose decimal exponent leaves this range are text (doubles end near 1.8e308 and 2.2e-308).
_MIN_MAGNITUDE, _MAX_MAGNITUDE = -300, 300

#: Where a cell's ``r`` attribute holds its row number: cells are encoded without it (columns.py) and the writer
#: puts the number in, once per row. No cell holds this byte otherwise: XML cannot (text() replaces it), and
#: numbers and dates are digits.
ROW = b"\0"

# Cell styles (indices into cellXfs in styles.xml).
STYLE_DATE, STYLE_DATETIME, STYLE_TIME, STYLE_HEADER = 1, 2, 3, 4
# The same with milliseconds, for values that have them: shown rounded to the second, 23:59:59.999
# would read as the next day (or the year 10000).
STYLE_DATETIME_MS, STYLE_TIME_MS = 5, 6

#: Deflate level of the sheets, which zlib-ng compresses (sheet XML is most of the CPU a zip costs). Measured on the
#: benchmark's rows (200k rows, 107 MiB of sheet XML, deflate alone): zlib-ng level 4 0.48 CPU s and 18.4 MiB, 5:
#: 0.58 s and 18.3 MiB, 6: 0.95 s and 18.3 MiB; the standard zlib at level 2 (this writer's before) 0.51 s and
#: 21.4 MiB, at 6 (XlsxWriter's) 1.65 s and 18.3 MiB. Level 5 makes the file 0.5% smaller than level 4 for 0.5 CPU s
#: per million rows (1M rows' sheet XML: 96,474,065 against 95,974,607 bytes, 3.0 against 3.5 CPU s), which takes it
#: below XlsxWriter's (issue 20's target); level 6 saves next to nothing more for twice that CPU, level 7 (6% smaller)
#: costs 4 CPU s more per million rows, which the CPU target cannot afford.
COMPRESSLEVEL = 5
#: zlib-ng's memLevel 9 (zlib's default is 8): a larger hash table, 0.1% smaller files at the same CPU.
_MEM_LEVEL = 9
FLUSH_ROWS = 512
#: A zip entry holds this much without ZIP64 (zipfile's limit), and SheetJS reads no ZIP64 at all: a
#: sheet is written without it and continues on a new sheet before its XML could reach this size.
SHEET_XML_LIMIT = zipfile.ZIP64_LIMIT
WIDTH_SAMPLE_ROWS = 1000
MIN_WIDTH, MAX_WIDTH = 6, 60


class StorageFullError(OSError):
    """The temporary file would fill the function's ephemeral storage."""


class SheetTooLargeError(ValueError):
    """Rows too wide for one sheet's XML to stay within a zip entry without ZIP64."""


@dataclass
class SanitizeCounts:
    """How many values were changed to fit the format; logged after each export."""

    control_characters_replaced: int = 0
    strings_truncated: int = 0
    big_numbers_as_text: int = 0
    non_finite_floats_emptied: int = 0
    early_dates_as_text: int = 0
    late_dates_as_text: int = 0
    negative_times_as_text: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if v}


def column_letter(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


class CellEncoder:
    """Turns Python values (as PyMySQL returns them) into cell XML.

    - int, and Decimal with at most 15 significant digits: a number; longer ones: text
      with every digit (Excel would round them);
    - float: a number; NaN and infinities: an empty cell;
    - bool: a boolean; bytes: hex text; None: an empty cell;
    - date / datetime: an Excel date serial with a date or date-time format, datetimes rounded
      to the millisecond (Excel's precision); dates before 1 March 1900 as ISO text (Excel holds
      nothing before 1900 and miscounts its first two months, the 1900 leap-year bug), and
      datetimes that round past 9999-12-31 23:59:59.999 (Excel's last instant) as ISO text with
      every digit; aware datetimes in UTC;
    - timedelta (MySQL TIME): a duration with format [h]:mm:ss (negative ones as text);
    - str: inline text, never a formula; characters XML cannot hold become U+FFFD and
      text over 32,767 characters is cut with a visible mark; a carriage return is written as
      the OOXML escape ``_x000D_`` (readers drop or change a literal or ``&#13;`` one).
    """

    def __init__(self, counts: SanitizeCounts):
        self.counts = counts

    def text(self, value: str) -> str:
        if ILLEGAL_XML_RE.search(value):
            value, n = ILLEGAL_XML_RE.subn(REPLACEMENT, value)
            self.counts.control_characters_replaced += n
        if len(value) > MAX_CELL_CHARS // 2 and _utf16_units(value) > MAX_CELL_CHARS:
            value = _truncate(value)
            self.counts.strings_truncated += 1
        if "_x" in value:
            value = EXCEL_ESCAPE_RE.sub("_x005F_", value)
        value = escape(value)
        if "\r" in value:
            value = value.replace("\r", "_x000D_")
        if value[:1].isspace() or value[-1:].isspace():
            return f'<is><t xml:space="preserve">{value}</t></is>'
        return f"<is><t>{value}</t></is>"

    def cell(self, ref: str, value: object) -> str:
        """The ``<c>`` element for ``value`` at ``ref``, or "" for an empty cell."""
        rest = self.value(value)
        return f'<c r="{ref}"{rest}' if rest else ""

    def value(self, value: object) -> str:
        """The rest of ``value``'s ``<c>`` element after ``<c r="..."``: its other attributes and content
        (``' s="1"><v>45000</v></c>'``), or "" for an empty cell.

        The reference path: any Python value, dispatched on its type. Per-column encoders
        (``columns.column_encoder``) hand it everything they do not encode themselves."""
        kind = type(value)
        if kind is str:
            return f' t="inlineStr">{self.text(value)}</c>' if value else ""
        if kind is int:
            if -_EXACT_INT_BOUND < value < _EXACT_INT_BOUND:
                return f'><v>{value}</v></c>'
            return self._decimal(Decimal(value))  # exact, whatever the size
        if value is None:
            return ""
        if kind is Decimal:
            return self._decimal(value)
        if kind is float:
            if math.isfinite(value):
                return f'><v>{value!r}</v></c>'
            self.counts.non_finite_floats_emptied += 1
            return ""
        if kind is dt.datetime:
            return self._datetime(value)
        if kind is dt.date:
            if value < EXCEL_FIRST_DATE:
                return self._outside(value)
            return f' s="{STYLE_DATE}"><v>{(value - EXCEL_EPOCH.date()).days}</v></c>'
        if kind is dt.timedelta:
            if value < dt.timedelta(0):
                self.counts.negative_times_as_text += 1
                return f' t="inlineStr"><is><t>{_format_timedelta(value)}</t></is></c>'
            us = value.microseconds
            if not us:
                return f' s="{STYLE_TIME}"><v>{_days(value)}</v></c>'
            value += dt.timedelta(microseconds=(us + 500) // 1000 * 1000 - us)  # to the millisecond
            style = STYLE_TIME_MS if value.microseconds else STYLE_TIME
            return f' s="{style}"><v>{_days(value)}</v></c>'
        if kind is bool:
            return f' t="b"><v>{int(value)}</v></c>'
        if kind is bytes or kind is bytearray:
            return f' t="inlineStr"><is><t>{value.hex()}</t></is></c>' if value else ""
        if kind is dt.time:
            since_midnight = dt.datetime.combine(EXCEL_EPOCH, value) - EXCEL_EPOCH
            return f' s="{STYLE_TIME}"><v>{_days(since_midnight)}</v></c>'
        if isinstance(value, (int, float, str, dt.date, Decimal)):  # subclasses
            return self.value(_base(value))
        return f' t="inlineStr">{self.text(str(value))}</c>'

    def _decimal(self, value: Decimal) -> str:
        if not value.is_finite():
            self.counts.non_finite_floats_emptied += 1
            return ""
        # Count digits on the exact tuple: normalize() would round to the context's 28 digits first.
        digits = value.as_tuple().digits
        significant = len(digits)
        while significant > 1 and digits[significant - 1] == 0:
            significant -= 1
        if not any(digits):
            return f'><v>0</v></c>'
        if significant > MAX_EXACT_DIGITS or not _MIN_MAGNITUDE < value.adjusted() < _MAX_MAGNITUDE:
            self.counts.big_numbers_as_text += 1
            return f' t="inlineStr">{self.text(format(value, "f"))}</c>'
        # At most 15 significant digits survive a double exactly: repr gives them back, shortest form.
        return f'><v>{float(value)!r}</v></c>'

    def _datetime(self, value: dt.datetime) -> str:
        if value.tzinfo is not None:
            try:
                value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
            except OverflowError:  # past 9999-12-31 in UTC
                return self._outside(value)
        if value.date() < EXCEL_FIRST_DATE:
            return self._outside(value)
        us = value.microsecond
        if not us:
            return f' s="{STYLE_DATETIME}"><v>{_days(value - EXCEL_EPOCH)}</v></c>'
        if value >= EXCEL_PAST_LAST_INSTANT:
            return self._outside(value)
        value += dt.timedelta(microseconds=(us + 500) // 1000 * 1000 - us)  # to the millisecond
        style = STYLE_DATETIME_MS if value.microsecond else STYLE_DATETIME
        return f' s="{style}"><v>{_days(value - EXCEL_EPOCH)}</v></c>'

    def _outside(self, value: dt.date) -> str:
        """A date Excel cannot hold, as ISO text with every digit, counted."""
        if value.year > 1900:
            self.counts.late_dates_as_text += 1
        else:
            self.counts.early_dates_as_text += 1
        text = value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
        return f' t="inlineStr"><is><t>{text}</t></is></c>'


def _base(value: object) -> object:
    for kind in (bool, int, float, str, Decimal, dt.datetime, dt.date):
        if isinstance(value, kind):
            return kind(value) if kind not in (dt.datetime, dt.date) else value
    return value


_US_PER_DAY = 86_400_000_000
_EXACT_IN_DOUBLE = 2**53
_ONE_US = dt.timedelta(microseconds=1)


def _days(delta: dt.timedelta) -> str:
    """``delta`` in days (a serial or a duration), as the cell's text: :func:`serial` in microseconds.

    LibreOffice shows seconds by cutting, not rounding: the nearest double to 1970-01-01 00:00:01 is a
    hair below it and shows as 00:00:00, so no serial is ever below its instant. Two steps up at most (under 81
    microseconds in year 9999, 1.3 microseconds until 2079) is still the same millisecond for every reader."""
    return serial(delta // _ONE_US, _US_PER_DAY)


def serial(units: int, per_day: int) -> str:
    """``units / per_day`` days as the shortest text of a double that is not below the exact value: the nearest
    such double, or, when its shortest form needs all 17 significant digits, the next double up if that one's
    form is shorter (see :func:`_days`).

    XlsxWriter writes 16 digits, which stores about half of all date-times below their instant. The nearest
    double not below needs 17 digits for 37% of the seconds of 1900-2099 (27% of the benchmark's date-times); the
    next one up needs fewer for two thirds of those (all of the benchmark's, whose serials are above 32768, where
    doubles are 0.6 microseconds apart): 0.23% of the benchmark's compressed file. The same rational gives the
    same text whatever the unit (seconds, milliseconds, microseconds)."""
    days = units / per_day  # correctly rounded
    if -_EXACT_IN_DOUBLE < units < _EXACT_IN_DOUBLE:
        # units and per_day are exact doubles, so fma's one rounding keeps the sign of days * per_day - units:
        # the same test as the exact one below, without building big integers (seconds and milliseconds).
        below = math.fma(days, per_day, -units) < 0
    else:
        numerator, denominator = days.as_integer_ratio()
        below = numerator * per_day < units * denominator
    if below:
        days = math.nextafter(days, math.inf)
    text = repr(days)
    if len(text) < _LONGEST_FORM or (text[0] == "0" or "e" in text) and _significant_digits(text) < 17:
        return text  # 16 significant digits or fewer (17 digits and a point take 18 characters)
    up = repr(math.nextafter(days, math.inf))
    return up if len(up) < len(text) else text


#: The fewest characters a double's shortest form with 17 significant digits takes (digits and the point).
_LONGEST_FORM = 18


def _significant_digits(text: str) -> int:
    """Significant digits of a float's repr (no sign: serials and durations written here are not negative)."""
    return len(text.partition("e")[0].replace(".", "").lstrip("0"))


def _utf16_units(value: str) -> int:
    """Length as Excel counts it: characters outside the BMP take two UTF-16 units."""
    if len(value) > MAX_CELL_CHARS:  # every character is at least one unit
        return len(value)
    return len(value.encode("utf-16-le")) // 2


def _truncate(value: str) -> str:
    """``value`` cut to fit MAX_CELL_CHARS UTF-16 units with the mark, never inside a surrogate pair.

    ``value`` holds no lone surrogates (text() replaced them); one pass, whatever the characters."""
    keep = MAX_CELL_CHARS - len(TRUNCATION_MARK)
    # The first ``keep`` characters hold at least ``keep`` units; cutting their UTF-16 bytes at ``keep``
    # units may split the last pair, whose dangling half the decoder drops.
    cut = value[:keep].encode("utf-16-le")[: 2 * keep].decode("utf-16-le", "ignore")
    return cut + TRUNCATION_MARK


def _format_timedelta(value: dt.timedelta) -> str:
    sign = "-" if value < dt.timedelta(0) else ""
    total = abs(value)
    seconds = total.days * 86400 + total.seconds
    text = f"{sign}{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return text + (f".{total.microseconds:06d}" if total.microseconds else "")


def _display_width(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, dt.datetime):
        return 19
    if isinstance(value, (dt.date, dt.timedelta)):
        return 10
    if isinstance(value, (bytes, bytearray)):
        return 2 * len(value)
    text = str(value)
    return max((len(line) for line in text.split("\n")), default=0)


def sheet_names(base: str) -> Callable[[int], str]:
    """Name of the n-th sheet (1-based): ``base``, ``base (2)``, ... always within Excel's 31 characters."""

    def name(n: int) -> str:
        if n == 1:
            return base[:SHEET_NAME_MAX]
        suffix = f" ({n})"
        return base[: SHEET_NAME_MAX - len(suffix)] + suffix

    return name


#: Custom number formats are numbered from here (the built-in ones use 0-163).
FIRST_CUSTOM_FORMAT_ID = 164
_BUILTIN_FORMATS = ("yyyy\\-mm\\-dd", "yyyy\\-mm\\-dd\\ hh:mm:ss", "[h]:mm:ss",  # styles 1-3
                    "yyyy\\-mm\\-dd\\ hh:mm:ss.000", "[h]:mm:ss.000")  # styles 5-6 (numFmt 167, 168)
_BASE_XFS = 7  # cellXfs 0-6: default, date, datetime, time, header, datetime and time with milliseconds


@dataclass
class WorkbookResult:
    rows: int
    sheets: int
    bytes: int
    sheet_names: list[str] = field(default_factory=list)
    #: Data rows per logical sheet (as started with start_sheet), in order.
    rows_per_sheet: list[int] = field(default_factory=list)
    #: SHA-256 (hex) of the file, hashed as it was written (checksum.HashingFile).
    sha256: str = ""


#: Excel's longest defined name, a table's name included.
MAX_TABLE_NAME = 255
#: A table name may not read as a cell reference: A1 style (up to three letters and a row) or R1C1 style.
_CELL_REFERENCE_RE = re.compile(r"^(?:[A-Za-z]{1,3}[0-9]+|[Rr][0-9]*(?:[Cc][0-9]*)?|[Cc][0-9]*)$")
#: Characters a table or column name of this writer never holds (controls; XML cannot hold some, Excel
#: stores line breaks in column names as escapes).
_NAME_CONTROL_RE = re.compile("[\x00-\x1f\x7f\ufffe\uffff\ud800-\udfff]")
ABOUT_SHEET = "About"


def table_name(sheet: str, taken: set[str]) -> str:
    """A valid, unused Excel table name for ``sheet`` (casefolded names in ``taken``; the result is added).

    Excel's rules for names: letters, digits, ``_`` and ``.`` only (any other character becomes ``_``), starting
    with a letter, ``_`` or ``\\``, not a cell reference (``A1``, ``R1C1``, ``R``, ``C``), at most 255
    characters, unique in the workbook ignoring case (``_2``, ``_3``, ... is added)."""
    name = "".join(ch if ch.isalnum() or ch in "._" else "_" for ch in sheet)
    if not name or not (name[0].isalpha() or name[0] == "_") or _CELL_REFERENCE_RE.match(name):
        name = "_" + name
    name = name[:MAX_TABLE_NAME]
    candidate, n = name, 1
    while candidate.casefold() in taken:
        n += 1
        suffix = f"_{n}"
        candidate = name[: MAX_TABLE_NAME - len(suffix)] + suffix
    taken.add(candidate.casefold())
    return candidate


def table_columns(columns: Sequence[str]) -> list[str]:
    """Header names a table can hold: no control characters or edge spaces, never empty (``Column<n>``), unique
    ignoring case (a repeated name gets ``2``, ``3``, ... as Excel's own "Format as Table" does)."""
    out: list[str] = []
    taken: set[str] = set()
    for i, column in enumerate(columns, start=1):
        base = _NAME_CONTROL_RE.sub(" ", column).strip()[:MAX_CELL_CHARS // 2] or f"Column{i}"
        name, n = base, 1
        while name.casefold() in taken:
            n += 1
            name = f"{base}{n}"
        taken.add(name.casefold())
        out.append(name)
    return out


@dataclass
class _Physical:
    """A sheet of the package: its name, data rows, last column letter, and its table (name, columns) if any."""

    name: str
    rows: int
    last_col: str
    table: str | None = None
    columns: list[str] = field(default_factory=list)


@dataclass
class _Logical:
    """A sheet as asked for by start_sheet; it may span several physical sheets past the row limit."""

    columns: list[str]
    header: list[str]  # the header of a table: table_columns(columns)
    letters: list[str]
    name_of: Callable[[int], str]
    encoders: list[Callable[[object], bytes]]  # one per column: value -> its <c> element (columns.py)
    types: list  # one columns.ColumnType per column
    widths: list[int] | None = None
    pending: list[Sequence[object]] = field(default_factory=list)  # rows sampled for column widths
    parts: int = 0
    rows: int = 0


class XlsxStreamWriter:
    """Write any number of named sheets, each a header and rows, into ``path`` as an .xlsx workbook.

    ``start_sheet(name, columns)`` begins a sheet; ``write_rows`` appends to the current one.
    Rows past ``max_rows_per_sheet`` continue on a new sheet named ``name (2)``, ``name (3)``...
    with the header repeated (names already used or ``reserved_names`` are skipped). Sheet
    names are unique as Excel compares them (case-insensitively); a repeated one is refused.
    ``formats`` maps column names to Excel number format codes, written as real number formats
    (styles.xml numFmts) on the number, date and time cells of those columns.
    Memory stays flat whatever the number of sheets or rows: one sheet is open at a time and
    only its last ``FLUSH_ROWS`` rows are held.

    Rows also continue on a new sheet once a sheet's XML nears SHEET_XML_LIMIT (very wide rows), so
    no zip entry needs ZIP64.
    ``min_free_bytes`` is kept free on the file's filesystem: when the next flush
    would eat into it, :class:`StorageFullError` is raised instead of filling the disk.
    ``check`` is called every flush (a deadline check can raise from it).
    ``table_style`` (an Excel table style name) makes each physical sheet's rows an Excel Table (a ListObject)
    named after the sheet (:func:`table_name`), whose header is :func:`table_columns` of the columns and whose
    range follows the sheet's rows; a sheet without rows gets a table of its header and one empty row (Excel
    needs a data row in a table). Without it each sheet gets an auto-filter (a sheet never has both).
    :meth:`add_about` adds a sheet of label/value rows after the data sheets (not counted as rows).
    The one-sheet form ``XlsxStreamWriter(path, sheet_name=..., columns=...)`` starts the sheet at once.
    """

    def __init__(
        self,
        path: Path,
        *,
        sheet_name: str | None = None,
        columns: Sequence[str] | None = None,
        formats: Mapping[str, str] | None = None,
        reserved_names: Iterable[str] = (),
        max_rows_per_sheet: int = MAX_DATA_ROWS_PER_SHEET,
        min_free_bytes: int = 32 * 1024 * 1024,
        compresslevel: int = COMPRESSLEVEL,
        check: Callable[[], None] | None = None,
        table_style: str | None = None,
    ):
        if not 1 <= max_rows_per_sheet <= MAX_DATA_ROWS_PER_SHEET:
            raise ValueError(f"max_rows_per_sheet must be 1..{MAX_DATA_ROWS_PER_SHEET}")
        self.path = Path(path)
        self.max_rows = max_rows_per_sheet
        self.min_free = min_free_bytes
        self.check = check
        self.formats = dict(formats or {})
        self.counts = SanitizeCounts()
        self._encoder = CellEncoder(self.counts)
        self._format_ids: dict[str, int] = {}  # format code -> cellXfs index
        self._reserved = {n.casefold() for n in reserved_names}
        self._used: set[str] = set()  # casefolded names of every sheet, started or rolled over
        # Every byte goes through the hash once, as written: the file is append-only (see checksum.py).
        self._file = HashingFile(open(self.path, "wb"))
        self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel)
        self._compresslevel = compresslevel
        self._sheet = None
        self.table_style = table_style
        self._table_names: set[str] = set()  # casefolded
        self._tables = 0
        self._sheets: list[_Physical] = []
        self._logical: list[_Logical] = []
        self._current: _Logical | None = None
        self._out: list[bytes] = []  # XML not yet written
        self._sheet_bytes = 0  # uncompressed XML written to the open sheet
        self._largest_flush = 0
        self._sheet_full = False  # the next row starts a new sheet
        self.rows = 0
        if sheet_name is not None or columns is not None:
            if sheet_name is None or columns is None:
                raise ValueError("give sheet_name and columns together, or call start_sheet")
            self.start_sheet(sheet_name, columns)

    # -- public -----------------------------------------------------------------------

    def start_sheet(self, name: str, columns: Sequence[str], types: Sequence[object] | None = None) -> None:
        """End the current sheet (if any) and begin ``name`` with a header of ``columns``.

        ``types`` (``columns.ColumnType`` per column, e.g. ``QueryStream.types``) picks each column's encoder
        once; without them every value goes through :meth:`CellEncoder.value`, the reference path."""
        if not columns:
            raise ValueError(f"sheet {name!r} needs at least one column")
        if not name or len(name) > SHEET_NAME_MAX:
            raise ValueError(f"sheet name {name!r} must be 1-{SHEET_NAME_MAX} characters")
        if name.casefold() in self._used:
            raise ValueError(f"sheet name {name!r} is already used in this workbook (names are case-insensitive)")
        self._end_logical()
        self._reserved.add(name.casefold())
        columns = [str(c) for c in columns]
        types = self._column_types(columns, types)
        letters = [column_letter(i) for i in range(len(columns))]
        self._current = _Logical(columns=columns, header=table_columns(columns), letters=letters,
                                 name_of=sheet_names(name), encoders=self._encoders(columns, letters, types),
                                 types=types)
        self._logical.append(self._current)

    def write_rows(self, rows: Iterable[Sequence[object]]) -> None:
        sheet = self._current
        if sheet is None:
            raise ValueError("call start_sheet before writing rows")
        for batch in itertools.batched(rows, FLUSH_ROWS):
            if sheet.widths is None:
                room = WIDTH_SAMPLE_ROWS - len(sheet.pending)
                sheet.pending.extend(batch[:room])
                if len(sheet.pending) < WIDTH_SAMPLE_ROWS:
                    continue
                self._start_first_part(sheet)
                batch = batch[room:]
            self._write_buffered(sheet, batch)

    def close(self) -> WorkbookResult:
        if not self._logical:
            raise ValueError("a workbook needs at least one sheet")
        self._end_logical()
        self._write_package_parts()
        self._zip.close()
        self._file.close()
        return WorkbookResult(
            rows=self.rows,
            sheets=len(self._sheets),
            bytes=self.path.stat().st_size,
            sheet_names=[p.name for p in self._sheets],
            rows_per_sheet=[s.rows for s in self._logical],
            sha256=self._file.sha256,
        )

    def add_about(self, rows: Sequence[tuple[str, object]]) -> str:
        """End the current sheet and add a sheet of ``(label, value)`` rows, named ``About`` (or ``About (2)``...
        when a data sheet has that name); returns its name. Its cells are not counted in ``rows`` or the
        sanitize counts."""
        self._end_logical()
        name, n = ABOUT_SHEET, 1
        while name.casefold() in self._used or name.casefold() in self._reserved:
            n += 1
            name = f"{ABOUT_SHEET} ({n})"
        self._used.add(name.casefold())
        self._sheets.append(_Physical(name, 0, ""))
        encoder = CellEncoder(SanitizeCounts())
        body = []
        for r, (label, value) in enumerate(rows, start=1):
            rest = encoder.value(value)
            cell = f'<c r="B{r}"{rest}' if rest else ""
            body.append(f'<row r="{r}"><c r="A{r}" s="{STYLE_HEADER}" t="inlineStr">{encoder.text(label)}</c>'
                        f"{cell}</row>")
        width = min(max((_display_width(v) for _, v in rows), default=10) + 2, 100)
        self._zip.writestr(
            f"xl/worksheets/sheet{len(self._sheets)}.xml",
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
            'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
            '<sheetViews><sheetView workbookViewId="0"/></sheetViews><sheetFormatPr defaultRowHeight="15"/>'
            f'<cols><col min="1" max="1" width="28" customWidth="1"/>'
            f'<col min="2" max="2" width="{width}" customWidth="1"/></cols>'
            f'<sheetData>{"".join(body)}</sheetData></worksheet>',
        )
        return name

    def discard(self) -> None:
        """Close what is still open and delete the file; safe to call more than once."""
        try:
            if self._sheet is not None:
                self._sheet.close()
            self._zip.close()
        except Exception:  # noqa: BLE001 - the file is deleted next whatever state it is in
            pass
        finally:
            self._file.close()
            self._sheet = None
            self.path.unlink(missing_ok=True)

    @property
    def formats_used(self) -> set[str]:
        """The format columns some sheet had."""
        return {c for s in self._logical for c in s.columns if c in self.formats}

    # -- sheets -----------------------------------------------------------------------

    @staticmethod
    def _column_types(columns: list[str], types: Sequence[object] | None) -> list:
        from .columns import ANY  # columns builds on this module's CellEncoder

        if types is None:
            return [ANY] * len(columns)
        if len(types) != len(columns):
            raise ValueError(f"{len(types)} column types for {len(columns)} columns")
        return list(types)

    def _encoders(self, columns: list[str], letters: list[str], types: list) -> list[Callable[[object], bytes]]:
        """Each column's encoder; a column with a number format writes that style on its number cells."""
        from .columns import column_encoder

        encoders = [column_encoder(self._encoder, t, letter) for t, letter in zip(types, letters)]
        for i, name in enumerate(columns):
            if name in self.formats:
                encoders[i] = _styled(encoders[i], letters[i], self._style_for(self.formats[name]))
        return encoders

    def _style_for(self, code: str) -> int:
        if code not in self._format_ids:
            self._format_ids[code] = _BASE_XFS + len(self._format_ids)
        return self._format_ids[code]

    def _end_logical(self) -> None:
        sheet = self._current
        if sheet is None:
            return
        if sheet.widths is None:
            self._start_first_part(sheet)
        self._finish_part(sheet)
        sheet.encoders = []  # and the cells they remember (columns.py): memory stays flat however many sheets
        self._current = None

    def _start_first_part(self, sheet: _Logical) -> None:
        widths = [len(c) + 2 for c in sheet.columns]
        for row in sheet.pending:
            for i, value in enumerate(row):
                if i < len(widths):
                    w = _display_width(sheet.types[i].value(value)) + 1
                    if w > widths[i]:
                        widths[i] = w
        sheet.widths = [min(max(w, MIN_WIDTH), MAX_WIDTH) for w in widths]
        pending, sheet.pending = sheet.pending, []
        self._open_part(sheet)
        self._write_buffered(sheet, pending)

    def _part_name(self, sheet: _Logical) -> str:
        n = sheet.parts + 1
        name = sheet.name_of(n)
        while n > 1 and (name.casefold() in self._used or name.casefold() in self._reserved):
            n += 1
            name = sheet.name_of(n)
        sheet.parts = n
        return name

    def _open_part(self, sheet: _Logical) -> None:
        number = len(self._sheets) + 1
        name = self._part_name(sheet)
        self._used.add(name.casefold())
        part = _Physical(name, 0, sheet.letters[-1])
        if self.table_style is not None:
            # Orders, Orders_2, ... (the part's number, as in its sheet name "Orders (2)")
            base = sheet.name_of(1) if sheet.parts == 1 else f"{sheet.name_of(1)}_{sheet.parts}"
            part.table, part.columns = table_name(base, self._table_names), sheet.header
        self._sheets.append(part)
        # No ZIP64: SheetJS cannot read it. _write_sheet keeps the entry under SHEET_XML_LIMIT instead.
        self._sheet = _deflating_with_zlib_ng(self._zip.open(f"xl/worksheets/sheet{number}.xml", "w"),
                                              self._compresslevel)
        cols = "".join(
            f'<col min="{i + 1}" max="{i + 1}" width="{w}" customWidth="1"/>' for i, w in enumerate(sheet.widths)
        )
        header = "".join(
            f'<c r="{letter}1" s="{STYLE_HEADER}" t="inlineStr">{self._encoder.text(name or " ")}</c>'
            for letter, name in zip(sheet.letters, sheet.header if part.table else sheet.columns)
        )
        self._sheet_bytes, self._sheet_full = 0, False
        self._write_sheet(
            (
                '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
                'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
                '<sheetViews><sheetView workbookViewId="0"'
                + (' tabSelected="1"' if number == 1 else "")
                + '><pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>'
                '<selection pane="bottomLeft" activeCell="A2" sqref="A2"/></sheetView></sheetViews>'
                '<sheetFormatPr defaultRowHeight="15"/>'
                f"<cols>{cols}</cols><sheetData>"
                f'<row r="1">{header}</row>'
            ).encode()
        )

    def _finish_part(self, sheet: _Logical) -> None:
        self._flush()
        part = self._sheets[-1]
        if part.table is None:
            self._write_sheet(f'</sheetData><autoFilter ref="A1:{part.last_col}{part.rows + 1}"/></worksheet>'.encode())
        else:  # the table carries its own auto-filter
            self._write_sheet(b'</sheetData><tableParts count="1"><tablePart r:id="rId1"/></tableParts></worksheet>')
        self._sheet.close()
        self._sheet = None
        if part.table is not None:
            self._write_table(len(self._sheets), part)

    def _write_table(self, number: int, part: _Physical) -> None:
        """xl/tables/tableN.xml for sheet ``number`` and the sheet's relationship to it."""
        self._tables += 1
        ref = f"A1:{part.last_col}{max(part.rows, 1) + 1}"  # a table holds at least one (maybe empty) data row
        quote = {chr(34): "&quot;"}
        # The same escapes as the header cell's text (_xHHHH_ lookalikes), so name and cell read the same.
        columns = "".join(f'<tableColumn id="{i}" name="{escape(EXCEL_ESCAPE_RE.sub("_x005F_", c), quote)}"/>'
                          for i, c in enumerate(part.columns, start=1))
        self._zip.writestr(
            f"xl/tables/table{self._tables}.xml",
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            f'<table xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" id="{self._tables}" '
            f'name="{part.table}" displayName="{part.table}" ref="{ref}" totalsRowShown="0">'
            f'<autoFilter ref="{ref}"/><tableColumns count="{len(part.columns)}">{columns}</tableColumns>'
            f'<tableStyleInfo name="{self.table_style}" showFirstColumn="0" showLastColumn="0" showRowStripes="1" '
            'showColumnStripes="0"/></table>',
        )
        self._zip.writestr(
            f"xl/worksheets/_rels/sheet{number}.xml.rels",
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/table" '
            f'Target="../tables/table{self._tables}.xml"/></Relationships>',
        )

    def _write_buffered(self, sheet: _Logical, rows: Sequence[Sequence[object]]) -> None:
        """Write ``rows`` in chunks that end where the sheet is full or the next flush is due, so that the
        bookkeeping runs per chunk and the encoding per column (:func:`_xml_rows`)."""
        self._check_widths(sheet, rows)
        done = 0
        while done < len(rows):
            part = self._sheets[-1]
            if part.rows == self.max_rows or self._sheet_full:
                self._finish_part(sheet)
                self._open_part(sheet)
                part = self._sheets[-1]
            size = min(len(rows) - done, self.max_rows - part.rows, FLUSH_ROWS - self.rows % FLUSH_ROWS)
            self._out.extend(_xml_rows(sheet.encoders, rows[done:done + size], part.rows + 2))
            part.rows += size
            sheet.rows += size
            self.rows += size
            done += size
            if self.rows % FLUSH_ROWS == 0:
                self._flush()

    @staticmethod
    def _check_widths(sheet: _Logical, rows: Sequence[Sequence[object]]) -> None:
        width = len(sheet.encoders)
        if set(map(len, rows)) - {width}:
            n, row = next((n, row) for n, row in enumerate(rows) if len(row) != width)
            raise ValueError(f"row {sheet.rows + n + 1} of sheet {sheet.name_of(1)!r} has {len(row)} values "
                             f"for {width} columns")

    def _flush(self) -> None:
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        free = shutil.disk_usage(self.path.parent).free
        if free - len(data) < self.min_free:
            raise StorageFullError(
                f"only {free // 2**20} MiB left in {self.path.parent} after {self.rows} rows "
                f"({self.path.stat().st_size // 2**20} MiB written); raise the function's ephemeral storage"
            )
        self._write_sheet(data)
        # Room left for two flushes as large as the largest so far, and the sheet's end? Else a new sheet.
        self._largest_flush = max(self._largest_flush, len(data))
        self._sheet_full = self._sheet_bytes + 2 * self._largest_flush + 2**20 > SHEET_XML_LIMIT
        if self.check is not None:
            self.check()

    def _write_sheet(self, data: bytes) -> None:
        if self._sheet_bytes + len(data) > SHEET_XML_LIMIT:
            name, rows = self._sheets[-1].name, self._sheets[-1].rows
            raise SheetTooLargeError(
                f"sheet {name!r}: {len(data) // 2**20} MiB of XML for the rows after row {rows + 1} would pass "
                f"the {SHEET_XML_LIMIT // 2**20} MiB a sheet holds without ZIP64, which SheetJS cannot read; "
                "select fewer or shorter columns"
            )
        self._sheet.write(data)
        self._sheet_bytes += len(data)

    # -- package ----------------------------------------------------------------------

    def _write_package_parts(self) -> None:
        n = len(self._sheets)
        z = self._zip
        overrides = "".join(
            f'<Override PartName="/xl/worksheets/sheet{i}.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            for i in range(1, n + 1)
        ) + "".join(
            f'<Override PartName="/xl/tables/table{i}.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.table+xml"/>'
            for i in range(1, self._tables + 1)
        )
        z.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
            '<Override PartName="/xl/styles.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/>'
            '<Override PartName="/docProps/app.xml" '
            'ContentType="application/vnd.openxmlformats-officedocument.extended-properties+xml"/>'
            f"{overrides}</Types>",
        )
        z.writestr(
            "_rels/.rels",
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
            'officeDocument" Target="xl/workbook.xml"/>'
            '<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
            'extended-properties" Target="docProps/app.xml"/>'
            "</Relationships>",
        )
        z.writestr(
            "docProps/app.xml",
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<Properties xmlns="http://schemas.openxmlformats.org/officeDocument/2006/extended-properties">'
            "<Application>mysql-xlsx-pipeline</Application></Properties>",
        )
        sheets = "".join(
            f'<sheet name="{escape(name, {chr(34): "&quot;"})}" sheetId="{i}" r:id="rId{i}"/>'
            for i, name in enumerate((p.name for p in self._sheets), start=1)
        )
        filters = "".join(
            f'<definedName name="_xlnm._FilterDatabase" localSheetId="{i}" hidden="1">'
            f"{escape(_quote_sheet(p.name))}!$A$1:${p.last_col}${p.rows + 1}</definedName>"
            for i, p in enumerate(self._sheets) if p.table is None and p.last_col
        )
        defined_names = f"<definedNames>{filters}</definedNames>" if filters else ""
        z.writestr(
            "xl/workbook.xml",
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
            'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
            '<workbookPr/><bookViews><workbookView activeTab="0"/></bookViews>'
            f"<sheets>{sheets}</sheets>{defined_names}</workbook>",
        )
        rels = "".join(
            f'<Relationship Id="rId{i}" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
            f'relationships/worksheet" Target="worksheets/sheet{i}.xml"/>'
            for i in range(1, n + 1)
        )
        z.writestr(
            "xl/_rels/workbook.xml.rels",
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f'{rels}<Relationship Id="rId{n + 1}" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
            'relationships/styles" Target="styles.xml"/></Relationships>',
        )
        z.writestr("xl/styles.xml", styles_xml(list(self._format_ids)))


def _xml_rows(encoders: list[Callable[[object], bytes]], rows: Sequence[Sequence[object]], first: int) -> list[bytes]:
    """The ``<row>`` elements of ``rows``, numbered from ``first``.

    Each column's values go through its encoder in one ``map`` (fewer Python steps per cell than a loop per row),
    then each row's cells are joined and get their row number where the encoders left :data:`ROW`. Every cell
    keeps its ``r`` attribute, optional in the format: ExcelJS cannot read a cell without one, and SheetJS takes
    r="..." from anywhere inside the element, text included."""
    cells = [list(map(encode, values)) for encode, values in zip(encoders, zip(*rows))]
    numbers = [b"%d" % n for n in range(first, first + len(rows))]
    return [b'<row r="%b">%b</row>' % (number, b"".join(row).replace(ROW, number))
            for number, row in zip(numbers, zip(*cells))]


def _styled(encode: Callable[[object], bytes], letter: str, style: int) -> Callable[[object], bytes]:
    """``encode`` with the cellXfs ``style`` on the cells it writes as numbers (numbers, dates, times)."""
    start = f'<c r="{letter}'.encode() + ROW + b'"'
    number, styled_number = start + b"><v>", start + f' s="{style}"><v>'.encode()
    any_style = re.compile(re.escape(start) + rb' s="[0-9]+"><v>')

    def styled(value: object) -> bytes:
        xml = encode(value)
        if xml.startswith(number):
            return styled_number + xml[len(number):]
        return any_style.sub(styled_number, xml, count=1) if xml else xml

    return styled


def _deflating_with_zlib_ng(entry, level: int):
    """``entry`` (an entry zipfile opened for writing, nothing written yet) deflating with zlib-ng instead of zlib.

    zipfile has no option for another deflate implementation; its entry writer keeps its compressor in
    ``_compressor`` (CPython 3.6 to 3.14), so that one object is swapped. zlib-ng writes standard raw deflate (any
    zip reader inflates it) about three times as fast as zlib for the same size of file: level 4 gives a file
    14% smaller than zlib's level 2 at the same CPU, level 5 (:data:`COMPRESSLEVEL`) another 0.5%. A zipfile that keeps its compressor elsewhere fails here
    (and in the tests) instead of silently writing with zlib."""
    if type(getattr(entry, "_compressor", None)) is not type(zlib.compressobj()):
        raise RuntimeError("zipfile's entry writer has no zlib compressor to replace: update _deflating_with_zlib_ng")
    entry._compressor = zlib_ng.compressobj(level, zlib_ng.DEFLATED, -zlib_ng.MAX_WBITS, _MEM_LEVEL)
    return entry


def _quote_sheet(name: str) -> str:
    return "'" + name.replace("'", "''") + "'"


def styles_xml(custom_formats: Sequence[str] = ()) -> str:
    """styles.xml: the default, date, datetime, time and header styles, datetime and time with
    milliseconds, then one style per custom number format (cellXfs index 7, 8, ... in the order given)."""
    codes = list(_BUILTIN_FORMATS) + list(custom_formats)
    num_fmts = "".join(
        f'<numFmt numFmtId="{FIRST_CUSTOM_FORMAT_ID + i}" formatCode="{escape(code, {chr(34): "&quot;"})}"/>'
        for i, code in enumerate(codes)
    )
    custom_xfs = "".join(
        f'<xf numFmtId="{FIRST_CUSTOM_FORMAT_ID + len(_BUILTIN_FORMATS) + i}" fontId="0" fillId="0" borderId="0" '
        'xfId="0" applyNumberFormat="1"/>'
        for i in range(len(custom_formats))
    )
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        '<styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        f'<numFmts count="{len(codes)}">{num_fmts}</numFmts>'
        '<fonts count="2"><font><sz val="11"/><name val="Calibri"/><family val="2"/></font>'
        '<font><b/><sz val="11"/><name val="Calibri"/><family val="2"/></font></fonts>'
        '<fills count="2"><fill><patternFill patternType="none"/></fill>'
        '<fill><patternFill patternType="gray125"/></fill></fills>'
        '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
        '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
        f'<cellXfs count="{_BASE_XFS + len(custom_formats)}">'
        '<xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
        '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
        '<xf numFmtId="165" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
        '<xf numFmtId="166" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
        '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/>'
        '<xf numFmtId="167" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
        '<xf numFmtId="168" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
        f"{custom_xfs}</cellXfs>"
        '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
        "</styleSheet>"
    )


STYLES_XML = styles_xml()
