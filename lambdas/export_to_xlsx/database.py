"""Connect to MySQL and stream a query's rows with an unbuffered server-side cursor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pymysql
from pymysql import converters
from pymysql.constants import CR, ER, FIELD_TYPE
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


#: Types whose values the export reads as the server's text: the writer parses that text straight into cell
#: XML (columns.py) instead of the driver building Decimal and datetime objects it would turn back into text.
TEXT_TYPES = (FIELD_TYPE.DECIMAL, FIELD_TYPE.NEWDECIMAL, FIELD_TYPE.DATE, FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP,
              FIELD_TYPE.TIME)
#: PyMySQL's converters (``conv=``) without those of TEXT_TYPES.
TEXT_CONVERSIONS = {k: v for k, v in converters.conversions.items() if k not in TEXT_TYPES}

_INTEGER = ColumnType(columns.INTEGER)
_TEXT = ColumnType(columns.TEXT)
#: Type code -> what the column holds; ``parse`` is the driver's default converter of the text types.
COLUMN_TYPES = {
    **dict.fromkeys((FIELD_TYPE.TINY, FIELD_TYPE.SHORT, FIELD_TYPE.INT24, FIELD_TYPE.LONG, FIELD_TYPE.LONGLONG,
                     FIELD_TYPE.YEAR), _INTEGER),
    **dict.fromkeys((FIELD_TYPE.FLOAT, FIELD_TYPE.DOUBLE), ColumnType(columns.FLOAT)),
    **{code: ColumnType(columns.DECIMAL, converters.decoders[code])
       for code in (FIELD_TYPE.DECIMAL, FIELD_TYPE.NEWDECIMAL)},
    FIELD_TYPE.DATE: ColumnType(columns.DATE, converters.convert_date),
    **{code: ColumnType(columns.DATETIME, converters.convert_datetime)
       for code in (FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP)},
    FIELD_TYPE.TIME: ColumnType(columns.TIME, converters.convert_timedelta),
    **dict.fromkeys((FIELD_TYPE.VARCHAR, FIELD_TYPE.VAR_STRING, FIELD_TYPE.STRING, FIELD_TYPE.ENUM, FIELD_TYPE.SET,
                     FIELD_TYPE.JSON, FIELD_TYPE.TINY_BLOB, FIELD_TYPE.MEDIUM_BLOB, FIELD_TYPE.LONG_BLOB,
                     FIELD_TYPE.BLOB), _TEXT),
}


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
            conv=TEXT_CONVERSIONS,
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
        #: What each column holds, for the writer's per-column encoders (anything unlisted: the reference path).
        self.types: list[ColumnType] = [COLUMN_TYPES.get(d[1], columns.ANY) for d in description]
        self._converters = {
            i: _bit_converter(d[3] or 1) for i, d in enumerate(description) if d[1] == FIELD_TYPE.BIT
        }

    def _error(self, exc: pymysql.err.MySQLError) -> ExportError:
        code = _code(exc)
        if code in _TIME_LIMIT_ERRORS:
            return StatementTimeLimit(f"{self._where}: {exc.args[-1]}")
        if code in _CONNECTION_ERRORS:
            return ExportError(
                f"{self._where}: lost the database connection after {self.rows_read} rows: {exc.args[-1]}"
            )
        return ExportError(f"{self._where}: the SQL failed: ({code}) {exc.args[-1]}")

    def batches(self) -> Iterator[Sequence[Sequence[object]]]:
        convert = self._converters
        try:
            while True:
                rows = self._cursor.fetchmany(self._batch_rows)
                if not rows:
                    return
                if convert:
                    rows = [
                        tuple(convert[i](v) if i in convert else v for i, v in enumerate(row)) for row in rows
                    ]
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
