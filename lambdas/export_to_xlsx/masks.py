"""Column masks, applied to rows before a value reaches the writer.

- ``sha256``: the hex HMAC-SHA256 of the value with the environment's mask key (a generated secret in Secrets
  Manager, read once per cold start and only by exports that hash). The same value gives the same hash in
  every workbook of the environment, so masked columns still join; without the key nobody can hash candidate
  values to look one up, and another environment's key gives other hashes.
- ``redact``: an empty cell.
- ``last4``: every character but the last four replaced by ``*`` (the length is kept); a value of four
  characters or fewer is replaced entirely, or the mask would show all of it.

NULL stays an empty cell under every mask. A value is masked as the text the export reads it as: the server's
text for DECIMAL, DATE, DATETIME, TIMESTAMP and TIME (``database.TEXT_TYPES``), decimal digits for integers,
the shortest repr for floats, ``1``/``0`` for BIT(1), hex for binary strings and BLOBs. Masked values are text.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Callable, Iterable, Mapping, Sequence

from . import columns
from .errors import ExportError

MASK_CHAR = "*"
#: values_changed keys, one per mask (NULLs are not counted: they stay empty).
COUNTED = {"sha256": "masked_sha256", "redact": "masked_redact", "last4": "masked_last4"}


def as_text(value: object) -> str:
    """The text a mask works on (see the module's docstring)."""
    kind = type(value)
    if kind is str:
        return value
    if kind is bool:
        return "1" if value else "0"
    if kind is float:
        return repr(value) if math.isfinite(value) else ""
    if kind is bytes or kind is bytearray:
        return bytes(value).hex()
    return str(value)


#: Kinds whose mask text is the server's own text (``2024-02-29 23:59:59.999000``, ``838:59:59.000000``, every
#: digit of a DECIMAL), not the driver's Python value's ``str`` (which would differ for TIME, for one).
_SERVER_TEXT_KINDS = (columns.DECIMAL, columns.DATE, columns.DATETIME, columns.TIME)


def text_decoder(column: columns.ColumnType) -> Callable[[object], object]:
    """How a masked column's raw value (the server's bytes) becomes the value the mask works on."""
    if column.kind in _SERVER_TEXT_KINDS:
        return lambda raw: raw.decode() if isinstance(raw, (bytes, bytearray)) else raw
    return column.value


def last4(text: str) -> str:
    if len(text) <= 4:
        return MASK_CHAR * len(text)
    return MASK_CHAR * (len(text) - 4) + text[-4:]


class Masker:
    """Masks the columns ``mask`` names in the rows of one sheet; counts what it changed in ``counts``.

    ``key`` gives the HMAC key; it is called only when a column of this sheet is hashed. ``decoders`` (one per
    column) turn a value as the rows carry it (the server's bytes) into what the driver's converters return, the
    value a mask works on."""

    def __init__(self, mask: Mapping[str, str], columns: Sequence[str], key: Callable[[], bytes] | None,
                 counts: dict[str, int], decoders: Sequence[Callable[[object], object]] | None = None):
        self._decoders = decoders
        self.counts = counts
        self.masked = {i: mask[c] for i, c in enumerate(columns) if c in mask}
        self._fns: dict[int, Callable[[object], object]] = {}
        for i, how in self.masked.items():
            if how == "sha256":
                if key is None:
                    raise ExportError("a sha256 mask needs the environment's mask key, and none is configured")
                secret = key()
                self._fns[i] = lambda v, secret=secret: hmac.new(secret, as_text(v).encode(), hashlib.sha256).hexdigest()
            elif how == "redact":
                self._fns[i] = lambda v: None
            else:
                self._fns[i] = lambda v: last4(as_text(v))

    def __bool__(self) -> bool:
        return bool(self.masked)

    def rows(self, rows: Iterable[Sequence[object]]) -> list[tuple[object, ...]]:
        fns = self._fns
        changed = dict.fromkeys(fns, 0)
        out = []
        for row in rows:
            row = list(row)
            for i, fn in fns.items():
                value = row[i]
                if value is not None:
                    row[i] = fn(self._decoders[i](value) if self._decoders is not None else value)
                    changed[i] += 1
            out.append(tuple(row))
        for i, n in changed.items():
            if n:
                name = COUNTED[self.masked[i]]
                self.counts[name] = self.counts.get(name, 0) + n
        return out


def unmatched(mask: Mapping[str, str], seen_columns: Iterable[str]) -> list[str]:
    """The masked columns no sheet had."""
    return sorted(set(mask) - set(seen_columns))


#: A key shorter than this is refused (the stack generates 64 characters).
MIN_KEY_CHARS = 32


class MaskKey:
    """The environment's mask key: the SecretString of one Secrets Manager secret, read on first use and kept
    for the life of the sandbox (it does not rotate: a new key would change every hash). Never logged."""

    def __init__(self, client_factory: Callable[[], object], secret_arn: str):
        self._client_factory = client_factory
        self._arn = secret_arn
        self._key: bytes | None = None

    def __call__(self) -> bytes:
        if self._key is None:
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                raw = self._client_factory().get_secret_value(SecretId=self._arn)["SecretString"]
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "Error")
                raise ExportError(f"cannot read the mask key {self._arn}: {code}") from None
            except BotoCoreError as exc:
                raise ExportError(f"cannot reach Secrets Manager for the mask key {self._arn}: {exc}") from None
            except KeyError:
                raise ExportError(f"the mask key {self._arn} holds no SecretString") from None
            if len(raw) < MIN_KEY_CHARS:
                raise ExportError(f"the mask key {self._arn} is shorter than {MIN_KEY_CHARS} characters")
            self._key = raw.encode()
        return self._key
