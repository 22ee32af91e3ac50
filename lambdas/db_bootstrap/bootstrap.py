"""Make a created database usable: the export's read-only user, then the optional init SQL.

Everything here is idempotent. Run twice with the same input, the second run changes
nothing: the user already has exactly ``SELECT`` on the one database, and the init SQL is
recorded (by SHA-256, per database) in a bookkeeping table of its own schema, which the
export user cannot read. Nothing is ever dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlparse
from pymysql.constants import ER
from pymysql.converters import escape_string

from .settings import sha256

#: The schema of the bookkeeping table; the export user has no grant on it.
STATE_SCHEMA = "xlsx_pipeline"
STATE_TABLE = "init_sql_applied"


class BootstrapError(Exception):
    """A step failed; the message names the step and MySQL's answer, never a password."""


@dataclass(frozen=True)
class Statement:
    """Sent as ``cursor.execute(sql, params)``: pymysql quotes the parameters, ``%%`` is a literal ``%``."""

    sql: str
    params: tuple = ()


def identification(auth: str) -> str:
    """How the export user authenticates: RDS's IAM plugin, or a password given as a parameter.

    ``AWSAuthenticationPlugin`` exists only on RDS and Aurora MySQL (see
    https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.IAMDBAuth.DBAccounts.html).
    """
    if auth == "iam":
        return "IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'"
    return "IDENTIFIED BY %s"


def user_statements(user: str, database: str, auth: str, password: str | None = None) -> list[Statement]:
    """Create or correct ``user``: TLS required, ``SELECT`` on ``database`` and nothing else."""
    account = f"'{user}'@'%%'"  # user and database are checked against strict patterns before this
    ident = identification(auth)
    params = (password,) if auth == "secret" else ()
    return [
        Statement(f"CREATE USER IF NOT EXISTS {account} {ident} REQUIRE SSL", params),
        # An existing user (an earlier deploy, another auth mode, a changed password) is brought in line.
        Statement(f"ALTER USER {account} {ident} REQUIRE SSL", params),
        Statement(f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM {account}"),
        Statement(f"GRANT SELECT ON `{database}`.* TO {account}"),
    ]


#: MySQL's executable comments (``/*!40101 SET NAMES utf8mb4 */``, MariaDB's ``/*M!...*/``), as mysqldump
#: writes them: statements to run, not comments to drop.
EXECUTABLE_COMMENTS = ("/*!", "/*M!")


def _code(exc: Exception) -> object:
    return exc.args[0] if exc.args else "?"


#: MySQL's error names by number (``ER_DUP_ENTRY`` for 1062), from PyMySQL's table.
_ERROR_NAMES = {value: f"ER_{name}" for name, value in vars(ER).items() if name.isupper() and isinstance(value, int)}


def _error_code(exc: Exception) -> str:
    """MySQL's error number and name only: its message may quote row values (``Duplicate entry 'alice@...'``)."""
    code = _code(exc)
    if not isinstance(code, int):
        return f"a {type(exc).__name__} without a MySQL error code"
    return f"MySQL error {code}" + (f" ({_ERROR_NAMES[code]})" if code in _ERROR_NAMES else "")


def _message(exc: Exception, secret: str | None) -> str:
    text = str(exc.args[-1]) if exc.args else str(exc)
    if secret:  # the server quotes the statement with the password as it was sent: escaped
        for form in sorted({secret, escape_string(secret)}, key=len, reverse=True):
            text = text.replace(form, "***")
    return text


def _verb(sql: str) -> str:
    """The statement's first keyword (``INSERT``), which says what kind of statement failed and holds no value."""
    word = sql.split(None, 1)[0].upper() if sql.split() else ""
    return word if word.isalpha() and len(word) <= 20 else "statement"


def show_grants(cursor: Any, user: str) -> list[str]:
    cursor.execute(f"SHOW GRANTS FOR '{user}'@'%'")
    return sorted(row[0] for row in cursor.fetchall())


def user_exists(cursor: Any, user: str) -> bool:
    cursor.execute("SELECT COUNT(*) FROM mysql.user WHERE User = %s AND Host = '%%'", (user,))
    return cursor.fetchone()[0] > 0


def ensure_user(connection: Any, *, user: str, database: str, auth: str, password: str | None = None) -> dict:
    """Apply :func:`user_statements`; returns whether the user was created and whether its grants changed."""
    with connection.cursor() as cursor:
        existed = user_exists(cursor, user)
        before = show_grants(cursor, user) if existed else []
        for statement in user_statements(user, database, auth, password):
            try:
                cursor.execute(statement.sql, statement.params)
            except Exception as exc:  # pymysql's errors; the password is never part of the message
                raise BootstrapError(
                    f"setting up the export user failed at `{statement.sql}`: ({_code(exc)}) {_message(exc, password)}"
                ) from None
        after = show_grants(cursor, user)
    # Only booleans leave this function: SHOW GRANTS may print a password hash.
    return {"created": not existed, "grants_changed": before != after}


def split_statements(text: str) -> list[tuple[int, str]]:
    """The statements of an SQL script with the line each starts on; comments before a statement
    and comment-only pieces are dropped.

    Splitting is sqlparse's (quotes, comments and ``BEGIN ... END`` are respected); a
    ``DELIMITER`` line is a client command, not SQL, and is not supported.
    """
    out, position = [], 0
    for raw in sqlparse.split(text):
        start = text.find(raw, position)
        position = start + len(raw)
        lead = 0
        for token in sqlparse.parse(raw)[0].flatten():
            executable = str(token).startswith(EXECUTABLE_COMMENTS)  # MySQL runs /*!... */ as code
            if not (token.is_whitespace or (token.ttype in sqlparse.tokens.Comment and not executable)):
                break
            lead += len(str(token))
        sql = raw[lead:].strip().rstrip(";").strip()
        if sql:
            out.append((text.count("\n", 0, start + lead) + 1, sql))
    return out


def _ensure_state_table(cursor: Any, schema: str) -> None:
    cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{schema}`")
    cursor.execute(
        f"CREATE TABLE IF NOT EXISTS `{schema}`.`{STATE_TABLE}` ("
        " target_database VARCHAR(64) NOT NULL,"
        " sha256 CHAR(64) NOT NULL,"
        " statements INT NOT NULL,"
        " applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,"
        " PRIMARY KEY (target_database, sha256))"
    )


def applied_checksums(connection: Any, database: str, schema: str = STATE_SCHEMA) -> list[str]:
    with connection.cursor() as cursor:
        _ensure_state_table(cursor, schema)
        cursor.execute(f"SELECT sha256 FROM `{schema}`.`{STATE_TABLE}` WHERE target_database = %s "
                       "ORDER BY applied_at, sha256", (database,))
        return [row[0] for row in cursor.fetchall()]


def apply_init_sql(connection: Any, text: str, *, database: str, schema: str = STATE_SCHEMA) -> dict:
    """Run ``text`` in ``database`` unless this exact content was applied there before.

    Statements run one by one in file order on an autocommit connection; the first that
    fails stops the run with its number, line, first keyword and MySQL's error code (never its
    text or MySQL's message, which may quote row values), and nothing after it is sent. The content is recorded only once every statement has succeeded, so a fixed
    file (new content) runs again from its first statement.
    """
    digest = sha256(text)
    if digest in applied_checksums(connection, database, schema):
        return {"sha256": digest, "applied": False, "statements": 0}
    statements = split_statements(text)
    with connection.cursor() as cursor:
        cursor.execute(f"USE `{database}`")
        for number, (line, sql) in enumerate(statements, 1):
            try:
                cursor.execute(sql)  # no parameters: a '%' in the script is sent as written
                while cursor.nextset():
                    pass
            except Exception as exc:
                # Number, line and error code only: MySQL's message and the statement may hold row values, and
                # this error becomes a CloudFormation stack event anyone who may describe the stack reads.
                raise BootstrapError(
                    f"init_sql statement {number} of {len(statements)} (line {line}, {_verb(sql)}) failed: "
                    f"{_error_code(exc)}; the {number - 1} statement(s) before it were applied, none after it. "
                    "Run that statement by hand for the server's full message. Fix the file and deploy "
                    "again: changed content runs again from its first statement, so write statements that can run "
                    "twice (CREATE TABLE IF NOT EXISTS, INSERT IGNORE)"
                ) from None
        cursor.execute(f"INSERT INTO `{schema}`.`{STATE_TABLE}` (target_database, sha256, statements) "
                       "VALUES (%s, %s, %s)", (database, digest, len(statements)))
    return {"sha256": digest, "applied": True, "statements": len(statements)}


def bootstrap(connection: Any, *, database: str, user: str, auth: str, password: str | None,
              init_sql: str | None, schema: str = STATE_SCHEMA) -> dict:
    """The export user first (so a broken init SQL still leaves a usable, read-only login), then the init SQL."""
    result = {"user": ensure_user(connection, user=user, database=database, auth=auth, password=password)}
    if init_sql is not None:
        result["init_sql"] = apply_init_sql(connection, init_sql, database=database, schema=schema)
    return result
