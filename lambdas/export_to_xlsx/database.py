"""Connect to MySQL and stream a query's rows with an unbuffered server-side cursor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pymysql
from pymysql import converters
from pymysql.constants import CR, ER, FIELD_TYPE, FLAG
from pymysql.cursors import SSCursor

from . import columns
from .columns import ColumnType
from .credentials import Credentials
from .errors import ExportError

BATCH_ROWS = 2000
CONNECT_TIMEOUT = 10
_LOGIN_ERRORS = {ER.ACCESS_DENIED_ERROR, ER.DBACCESS_DENIED_ERROR, 1698}  # 1698: access denied, no password
_CONNECTION_ERRORS = {CR.CR_CONNECTION_ERROR, CR.CR_CONN_HOST_ERROR, CR.CR_SERVER_GONE_ERROR,
                      CR.CR_SERVER_LOST, CR.CR_UNKNOWN_HOST}


#: What a column of each type code holds, for the writer's per-column encoders (columns.py); anything unlisted, a
#: ZEROFILL integer and text that is not UTF-8 (binary strings and BLOBs included) take the reference path.
_KINDS = {
    **dict.fromkeys((FIELD_TYPE.TINY, FIELD_TYPE.SHORT, FIELD_TYPE.INT24, FIELD_TYPE.LONG, FIELD_TYPE.LONGLONG),
                    columns.INTEGER),
    **dict.fromkeys((FIELD_TYPE.FLOAT, FIELD_TYPE.DOUBLE), columns.FLOAT),
    **dict.fromkeys((FIELD_TYPE.DECIMAL, FIELD_TYPE.NEWDECIMAL), columns.DECIMAL),
    FIELD_TYPE.DATE: columns.DATE,
    **dict.fromkeys((FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP), columns.DATETIME),
    FIELD_TYPE.TIME: columns.TIME,
    **dict.fromkeys((FIELD_TYPE.VARCHAR, FIELD_TYPE.VAR_STRING, FIELD_TYPE.STRING, FIELD_TYPE.ENUM, FIELD_TYPE.SET,
                     FIELD_TYPE.JSON, FIELD_TYPE.TINY_BLOB, FIELD_TYPE.MEDIUM_BLOB, FIELD_TYPE.LONG_BLOB,
                     FIELD_TYPE.BLOB), columns.TEXT),
}
_UTF8 = {"utf8", "utf-8", "utf8mb4"}


def column_type(type_code: int, flags: int, length: int, encoding: str | None) -> ColumnType:
    """What a result column holds, and how the driver would decode its bytes: the ``encoding`` the driver chose
    for it (PyMySQL's ``MySQLResult.converters``), then its default converter for ``type_code``."""
    convert = converters.decoders.get(type_code)
    if convert is converters.through:
        convert = None
    if type_code == FIELD_TYPE.BIT:
        convert = _bit_converter(length or 1)

    def decode(raw: bytes) -> object:
        value = raw.decode(encoding) if encoding is not None else raw
        return convert(value) if convert is not None else value

    kind = _KINDS.get(type_code, columns.OTHER)
    if kind == columns.INTEGER and flags & FLAG.ZEROFILL:
        kind = columns.OTHER  # "007": its value is 7
    if kind == columns.TEXT and (encoding or "").lower() not in _UTF8:
        kind = columns.OTHER  # binary strings are written as hex; other character sets are decoded first
    return ColumnType(kind, decode)


def _split_row(fields: int) -> Callable[[object], tuple[bytes | None, ...]]:
    """A row packet of the text protocol as its ``fields`` values, each the server's bytes or None for NULL.

    Each value is a length-encoded string: one byte for lengths below 251, 0xFB for NULL, 0xFC, 0xFD or 0xFE
    followed by a 2, 3 or 8 byte little-endian length (MySQL's protocol documentation, "Text Resultset Row")."""
    count = range(fields)

    def split(packet) -> tuple[bytes | None, ...]:
        data = packet.get_all_data()
        values = []
        at = 0
        for _ in count:
            if at == len(data):
                break  # a short row, as PyMySQL returns it: the writer refuses it by its number of values
            length = data[at]
            at += 1
            if length < 251:
                values.append(data[at:at + length])
                at += length
            elif length == 251:
                values.append(None)
            else:
                size = _LENGTH_SIZES[length]
                length = int.from_bytes(data[at:at + size], "little")
                at += size
                values.append(data[at:at + length])
                at += length
        if at != len(data):
            raise pymysql.err.InternalError(f"a row packet of {len(data)} bytes ended after {at} bytes and "
                                            f"{fields} values")
        return tuple(values)

    return split


_LENGTH_SIZES = {252: 2, 253: 3, 254: 8}


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    database: str
    ca_file: Path | None  # None: no TLS (local tests only)


class LoginFailed(ExportError):
    """The server refused the credentials (maybe rotated since they were read)."""


class StatementTimeLimit(ExportError):
    """The server stopped a query at the session's statement time limit."""


#: MariaDB: ER_STATEMENT_TIMEOUT (max_statement_time); MySQL: ER_QUERY_TIMEOUT (max_execution_time).
_TIME_LIMIT_ERRORS = {1969, 3024}
_UNKNOWN_TIME_ZONE = 1298


def configure_session(connection: pymysql.connections.Connection, *, export: str, time_zone: str,
                      max_seconds: float | None) -> None:
    """The session's ``time_zone`` (so TIMESTAMP values and NOW() read in the report's zone) and a statement
    time limit the server enforces: ``max_statement_time`` (seconds) on MariaDB, ``max_execution_time``
    (milliseconds, read-only SELECTs) on MySQL; the flavour is read from the server's version string."""
    zone = "+00:00" if time_zone == "UTC" else time_zone  # UTC needs no time zone tables
    try:
        connection.query(f"SET SESSION time_zone = {connection.escape(zone)}")
    except pymysql.err.MySQLError as exc:
        if _code(exc) == _UNKNOWN_TIME_ZONE:
            raise ExportError(
                f"export {export!r}: the database does not know the time zone {time_zone!r}: its time zone tables are "
                "not loaded (mariadb-tzinfo-to-sql /usr/share/zoneinfo | mariadb mysql; RDS has them)") from None
        raise ExportError(f"export {export!r}: cannot set the session time zone {time_zone!r}: "
                          f"({_code(exc)}) {exc.args[-1]}") from None
    if max_seconds is None:
        return
    mariadb = "mariadb" in (connection.get_server_info() or "").lower()
    statement = (f"SET SESSION max_statement_time = {max_seconds:.3f}" if mariadb
                 else f"SET SESSION max_execution_time = {max(1, int(max_seconds * 1000))}")
    try:
        connection.query(statement)
    except pymysql.err.MySQLError as exc:
        raise ExportError(f"export {export!r}: cannot set the statement time limit: ({_code(exc)}) "
                          f"{exc.args[-1]}") from None


def _code(exc: pymysql.err.MySQLError) -> int | None:
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else None


def connect(endpoint: Endpoint, credentials: Credentials) -> pymysql.connections.Connection:
    tls: dict = {"ssl_disabled": True}  # "off": plain TCP, never pymysql's opportunistic TLS
    if credentials.iam_token and endpoint.ca_file is None:
        # RDS asks for the token with mysql_clear_password, which pymysql answers unprompted.
        raise ExportError("an IAM database token is only sent over verified TLS; the endpoint has no CA bundle")
    if endpoint.ca_file is not None:
        if not endpoint.ca_file.is_file():
            raise ExportError(f"the RDS CA bundle {endpoint.ca_file} is missing from the function's package")
        # TLS is required: a server that does not offer it is refused, never used in plain text.
        tls = {"ssl_ca": str(endpoint.ca_file), "ssl_verify_cert": True, "ssl_verify_identity": True}
    try:
        return pymysql.connect(
            host=endpoint.host,
            port=endpoint.port,
            user=credentials.username,
            password=credentials.password,
            database=endpoint.database,
            charset="utf8mb4",
            connect_timeout=CONNECT_TIMEOUT,
            autocommit=False,
            **tls,
        )
    except UnicodeEncodeError:
        # PyMySQL sends a password as Latin-1; its own error would quote the character and its position.
        raise LoginFailed(f"database login to {endpoint.host}:{endpoint.port}/{endpoint.database} failed for user "
                          f"{credentials.username!r}: the password holds a character outside Latin-1, which the "
                          "MySQL client cannot send; set a password of ASCII characters") from None
    except pymysql.err.OperationalError as exc:
        where = f"{endpoint.host}:{endpoint.port}/{endpoint.database}"
        if _code(exc) in _LOGIN_ERRORS:
            hint = (" with an IAM token (the user must be IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS', IAM "
                    "database authentication on, and the role allowed rds-db:connect on this user)"
                    if credentials.iam_token else "")
            raise LoginFailed(f"database login to {where} failed for user {credentials.username!r}{hint}") from None
        raise ExportError(f"cannot connect to the database at {where}: {exc.args[-1]}") from None
    except (OSError, pymysql.err.MySQLError) as exc:
        raise ExportError(f"cannot connect to the database at {endpoint.host}:{endpoint.port}: {exc}") from None


def _bit_converter(length: int) -> Callable[[object], object]:
    def convert(value: object) -> object:
        if isinstance(value, (bytes, bytearray)):
            number = int.from_bytes(value, "big")
            return bool(number) if length == 1 else number
        return value

    return convert


#: One consistent snapshot for every query of a run. A consistent read needs REPEATABLE READ
#: (MySQL: "For all other isolation levels, the WITH CONSISTENT SNAPSHOT clause is ignored"),
#: so the level is set for this transaction whatever the server's default is.
SNAPSHOT_STATEMENTS = (
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
)


def begin_snapshot(connection: pymysql.connections.Connection, *, export: str) -> None:
    """Start the read-only transaction whose one snapshot every sheet of the run reads."""
    try:
        for statement in SNAPSHOT_STATEMENTS:
            connection.query(statement)
    except pymysql.err.MySQLError as exc:
        raise ExportError(f"export {export!r}: cannot start a consistent read-only snapshot: "
                          f"({_code(exc)}) {exc.args[-1]}") from None


def end_snapshot(connection: pymysql.connections.Connection) -> None:
    """End the read-only transaction (nothing was written, so rolling back only releases the snapshot).
    Every row is read by now: a connection lost at this point loses nothing, so it is not an error."""
    try:
        connection.rollback()
    except (pymysql.err.MySQLError, OSError):
        pass


class QueryStream:
    """Rows of one query, read in batches from an unbuffered cursor inside the run's snapshot.

    ``params`` (a dict) is bound by PyMySQL into the ``%(name)s`` placeholders; with None
    the SQL is sent as it is."""

    def __init__(self, connection: pymysql.connections.Connection, sql: str, *, export: str,
                 params: dict | None = None, batch_rows: int | None = None, sheet: str | None = None):
        self._connection = connection
        self._where = f"export {export!r}" + (f", sheet {sheet!r}" if sheet else "")
        self._batch_rows = batch_rows or BATCH_ROWS
        self.rows_read = 0
        try:
            self._cursor = connection.cursor(SSCursor)
            self._cursor.execute(sql, params)
        except pymysql.err.MySQLError as exc:
            raise self._error(exc) from None
        description = self._cursor.description or ()
        if not description:
            raise ExportError(f"{self._where}: the SQL returned no result set (is it a SELECT?)")
        self.columns: list[str] = [d[0] for d in description]
        result = self._cursor._result
        #: What each column holds and how the driver would decode it, for the writer's per-column encoders.
        self.types: list[ColumnType] = [
            column_type(field.type_code, field.flags, field.length, encoding)
            for field, (encoding, _) in zip(result.fields, result.converters)
        ]
        # Rows arrive as the server's bytes (the writer encodes them, columns.py): PyMySQL's own loop reads each
        # packet (NULL, errors, EOF, packets over 16 MB) and this one method of this one result splits it.
        result._read_row_from_packet = _split_row(len(description))

    def _error(self, exc: pymysql.err.MySQLError) -> ExportError:
        code = _code(exc)
        if code in _TIME_LIMIT_ERRORS:
            return StatementTimeLimit(f"{self._where}: {exc.args[-1]}")
        if code in _CONNECTION_ERRORS:
            return ExportError(
                f"{self._where}: lost the database connection after {self.rows_read} rows: {exc.args[-1]}"
            )
        return ExportError(f"{self._where}: the SQL failed: ({code}) {exc.args[-1]}")

    def batches(self) -> Iterator[Sequence[Sequence[bytes | None]]]:
        """Rows of the server's bytes (None for NULL); ``types`` tells how each column decodes."""
        try:
            while True:
                rows = self._cursor.fetchmany(self._batch_rows)
                if not rows:
                    return
                self.rows_read += len(rows)
                yield rows
        except pymysql.err.MySQLError as exc:
            raise self._error(exc) from None
        except (OSError, EOFError) as exc:
            raise ExportError(
                f"{self._where}: lost the database connection after {self.rows_read} rows: {exc}"
            ) from None

    def close(self) -> None:
        """After the last row (the snapshot stays open for the next sheet)."""
        self._cursor.close()

    def abandon(self) -> None:
        """After a failure: leave the unread rest of the result to the server, which drops it
        when the connection closes (closing the cursor would first read every remaining row)."""
        result = getattr(self._cursor, "_result", None)
        if result is not None:
            result.unbuffered_active = False
