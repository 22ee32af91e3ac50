"""The deploy-time database bootstrap against the real MariaDB/MySQL server (and moto for the secrets).

The user and state schema are named after this checkout's database, so checkouts running the
tests at once do not collide. The one thing MariaDB cannot run, RDS's AWSAuthenticationPlugin,
is checked as the SQL text the bootstrap sends.
"""

from __future__ import annotations

import json
import time
import pymysql
import pytest

from pipeline_ops.local.sample import first_run_values

from lambdas.db_bootstrap import bootstrap as bs
from lambdas.db_bootstrap import handler as bootstrap_handler
from lambdas.db_bootstrap import settings as contract


@pytest.fixture
def names(mysql):
    """Server-wide names (users, schemas) of this checkout, dropped before and after each test."""
    user, schema = f"{mysql.database}_export"[:32], f"{mysql.database}_bootstrap"
    tables = ("boot_orders", "boot_customers")

    def clean():
        with mysql.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
            cur.execute(f"DROP DATABASE IF EXISTS `{schema}`")
            for table in tables:
                cur.execute(f"DROP TABLE IF EXISTS `{mysql.database}`.`{table}`")

    clean()
    yield {"user": user, "schema": schema}
    clean()


@pytest.fixture
def admin(mysql):
    conn = mysql.connect()
    yield conn
    conn.close()


def grants(conn, user) -> list[str]:
    with conn.cursor() as cur:
        return bs.show_grants(cur, user)


def run(admin, mysql, names, *, init_sql=None, password="Export-Pa55%'word", auth="secret"):
    return bs.bootstrap(admin, database=mysql.database, user=names["user"], auth=auth, password=password,
                        init_sql=init_sql, schema=names["schema"])


def test_the_export_user_gets_select_on_the_one_database_and_nothing_else(admin, mysql, names):
    # Given a user someone granted too much by hand
    with admin.cursor() as cur:
        cur.execute(f"CREATE USER '{names['user']}'@'%' IDENTIFIED BY 'old'")
        cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{names['user']}'@'%' WITH GRANT OPTION")
    # When the bootstrap runs
    first = run(admin, mysql, names)
    # Then SHOW GRANTS is exactly TLS-required usage plus SELECT on this database
    select, usage = grants(admin, names["user"])
    assert select == f"GRANT SELECT ON `{mysql.database}`.* TO `{names['user']}`@`%`"
    assert usage.startswith(f"GRANT USAGE ON *.* TO `{names['user']}`@`%`") and usage.endswith("REQUIRE SSL")
    assert first["user"] == {"created": False, "grants_changed": True}


def test_require_ssl_refuses_a_plain_connection(admin, mysql, names):
    run(admin, mysql, names, password="Pa55-word")
    # The local MariaDB has no TLS, so the export user cannot log in at all: REQUIRE SSL holds.
    with pytest.raises(pymysql.err.OperationalError) as err:
        pymysql.connect(host=mysql.host, port=mysql.port, user=names["user"], password="Pa55-word",
                        ssl_disabled=True)
    assert err.value.args[0] == 1045


def test_a_second_run_changes_nothing(admin, mysql, names):
    init = "CREATE TABLE IF NOT EXISTS boot_orders (id INT PRIMARY KEY);\nINSERT INTO boot_orders VALUES (1);\n"
    first = run(admin, mysql, names, init_sql=init)
    before = grants(admin, names["user"])
    second = run(admin, mysql, names, init_sql=init)
    assert first["user"]["created"] is True and first["init_sql"]["applied"] is True
    assert second == {"user": {"created": False, "grants_changed": False},
                      "init_sql": {"sha256": first["init_sql"]["sha256"], "applied": False, "statements": 0}}
    assert grants(admin, names["user"]) == before
    # The INSERT (not idempotent by itself) ran once: the content was recorded, not re-applied
    with admin.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM `{mysql.database}`.boot_orders")
        assert cur.fetchone() == (1,)


def test_init_sql_runs_again_only_when_its_content_changes(admin, mysql, names):
    v1 = "CREATE TABLE IF NOT EXISTS boot_orders (id INT PRIMARY KEY);\nINSERT IGNORE INTO boot_orders VALUES (1);"
    v2 = v1 + "\nINSERT IGNORE INTO boot_orders VALUES (2);"
    assert run(admin, mysql, names, init_sql=v1)["init_sql"]["applied"] is True
    assert run(admin, mysql, names, init_sql=v1)["init_sql"]["applied"] is False
    changed = run(admin, mysql, names, init_sql=v2)["init_sql"]
    assert changed == {"sha256": bs.sha256(v2), "applied": True, "statements": 3}
    with admin.cursor() as cur:
        cur.execute(f"SELECT id FROM `{mysql.database}`.boot_orders ORDER BY id")
        assert cur.fetchall() == ((1,), (2,))
    # What was applied is recorded, per database, where the export user has no grant
    assert set(bs.applied_checksums(admin, mysql.database, names["schema"])) == {bs.sha256(v1), bs.sha256(v2)}
    assert not any(names["schema"] in g for g in grants(admin, names["user"]))


def test_a_broken_statement_stops_with_its_number_line_and_error_code(admin, mysql, names):
    script = ("-- seed\nCREATE TABLE IF NOT EXISTS boot_orders (id INT PRIMARY KEY);\n"
              "INSERT INTO boot_orders VALUES (1);\n\nINSERT INTO no_such_table VALUES (2);\n"
              "INSERT INTO boot_orders VALUES (3);\n")
    with pytest.raises(bs.BootstrapError) as err:
        run(admin, mysql, names, init_sql=script)
    message = str(err.value)
    assert "init_sql statement 3 of 4 (line 5, INSERT) failed: MySQL error 1146 (ER_NO_SUCH_TABLE)" in message
    assert "the 2 statement(s) before it were applied, none after it" in message
    with admin.cursor() as cur:
        cur.execute(f"SELECT id FROM `{mysql.database}`.boot_orders")
        assert cur.fetchall() == ((1,),)  # statement 4 never ran
    # Nothing was recorded: the fixed file runs (from its first statement) on the next deploy
    assert bs.applied_checksums(admin, mysql.database, names["schema"]) == []
    # And the export user was set up before the init SQL, so it exists with its SELECT grant
    assert any(g.startswith("GRANT SELECT ON") for g in grants(admin, names["user"]))


@pytest.mark.parametrize("script", [
    "CREATE TABLE IF NOT EXISTS boot_customers (email VARCHAR(100) PRIMARY KEY);\n"
    "INSERT INTO boot_customers VALUES ('alice@example.com');\nINSERT INTO boot_customers VALUES ('alice@example.com');",
    "CREATE TABLE IF NOT EXISTS boot_customers (email VARCHAR(10));\n"
    "INSERT INTO boot_customers VALUES ('alice@example.com', 'Alice Example');",
    "INSERT INTO boot_customers VALUES ('alice@example.com' 'unterminated);",
])
def test_a_failing_statement_reports_no_row_value(admin, mysql, names, script):
    """The error becomes a CloudFormation event: MySQL's own message would quote the row (Duplicate entry
    'alice@example.com' for key ...; a syntax error quotes the statement)."""
    with pytest.raises(bs.BootstrapError, match=r"^init_sql statement \d of \d \(line \d, [A-Z]+\) failed: MySQL error "
                                                r"\d+( \(ER_[A-Z_]+\))?; ") as err:
        run(admin, mysql, names, init_sql=script)
    assert "alice" not in str(err.value) and "Alice" not in str(err.value)


@pytest.mark.parametrize("password", ["s3cr3t-Pa55", "it's-a-secret", "back\\slash", 'dou"ble'])
def test_a_password_never_appears_in_an_error(admin, mysql, names, password):
    # A syntax error makes the server quote the statement, password included (escaped as it was sent); the error
    # must carry neither form (the handler refuses such a user name before this point: the last line of defence)
    from pymysql.converters import escape_string

    with pytest.raises(bs.BootstrapError) as err:
        bs.ensure_user(admin, user="bad'name", database=mysql.database, auth="secret", password=password)
    assert "(1064)" in str(err.value) and "IDENTIFIED BY %s" in str(err.value)
    assert password not in str(err.value) and escape_string(password) not in str(err.value)
    assert "***" in str(err.value)


class RecordingConnection:
    """Records the exact text pymysql would send for each statement (MariaDB lacks RDS's IAM plugin)."""

    def __init__(self, real):
        self.real, self.sent = real, []

    def cursor(self):
        outer = self

        class Cursor:
            def __enter__(self):
                self._c = outer.real.cursor()
                return self

            def __exit__(self, *exc):
                self._c.close()

            def execute(self, sql, params=None):
                text = self._c.mogrify(sql, params)
                self.recorded = text.startswith(("CREATE USER", "ALTER USER", "REVOKE", "GRANT", "SHOW GRANTS"))
                if self.recorded:
                    outer.sent.append(text)
                    return 0
                return self._c.execute(sql, params)

            def fetchall(self):
                return [] if self.recorded else self._c.fetchall()

            def fetchone(self):
                return self._c.fetchone()

        return Cursor()


def test_iam_user_is_identified_by_rds_iam_plugin_with_tls_and_select_only(admin, mysql, names):
    """The clause is RDS's, from
    https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.IAMDBAuth.DBAccounts.html
    (``IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'``, and ``REQUIRE SSL`` for TLS)."""
    recorder = RecordingConnection(admin)
    bs.ensure_user(recorder, user=names["user"], database="app", auth="iam")
    assert [s for s in recorder.sent if not s.startswith("SHOW GRANTS")] == [
        f"CREATE USER IF NOT EXISTS '{names['user']}'@'%' IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS' REQUIRE SSL",
        f"ALTER USER '{names['user']}'@'%' IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS' REQUIRE SSL",
        f"REVOKE ALL PRIVILEGES, GRANT OPTION FROM '{names['user']}'@'%'",
        f"GRANT SELECT ON `app`.* TO '{names['user']}'@'%'",
    ]


def test_mysqldump_executable_comments_are_statements_not_comments():
    script = "-- dump\n/*!40101 SET NAMES utf8mb4 */;\n/*M!999999 SET @x = 1 */;\n/* a plain comment */ SELECT 1;\n"
    assert bs.split_statements(script) == [(2, "/*!40101 SET NAMES utf8mb4 */"), (3, "/*M!999999 SET @x = 1 */"),
                                            (4, "SELECT 1")]


def test_split_statements_respects_quotes_and_comments():
    script = "-- a\nSELECT 1;\n/* b; */ INSERT INTO t VALUES ('x;y', \"50%\");\n-- only a comment\n"
    assert bs.split_statements(script) == [(2, "SELECT 1"), (3, "INSERT INTO t VALUES ('x;y', \"50%\")")]


@pytest.fixture
def dev_database(admin, mysql):
    """A database of its own for dev's init SQL, new for each run: tables left by an earlier run (or by a
    differently seeded version of the file) must not hide a missing table or row."""
    name = f"{mysql.database}_dev_init"
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    yield name
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


def test_the_shipped_dev_init_sql_creates_what_the_dev_exports_read(admin, names, dev_database):
    from pipeline_ops.synth import CDK_JSON
    from stacks.config import load_environment

    dev = load_environment(CDK_JSON["context"], "dev")
    text = dev.database.init_sql.read_text(encoding="utf-8")
    for content in (text, text + "\n-- changed: runs again, must not fail\n"):
        bs.bootstrap(admin, database=dev_database, user=names["user"], auth="secret", password="Export-Pa55",
                     init_sql=content, schema=names["schema"])
    with admin.cursor() as cur:
        cur.execute(f"USE `{dev_database}`")
        cur.execute("SELECT CURRENT_DATE")
        deploy_day = cur.fetchone()[0]
        for export in dev.exports:  # whichever dev lists: each reads rows on its first scheduled run after deploy
            for sheet in export.sheets:
                cur.execute(sheet.sql, first_run_values(export, deploy_day) or None)
                assert cur.fetchall(), f"export {export.name!r}, sheet {sheet.name!r} reads no rows"


# --- the handler, as the provider framework calls it ---------------------------------------------


@pytest.fixture
def handler_env(monkeypatch, secrets, mysql, names, tmp_path):
    master = secrets.create_secret(Name="rds/master", SecretString=mysql.secret_json())["ARN"]
    export = secrets.create_secret(Name="export/user", SecretString=json.dumps(
        {"username": names["user"], "password": "Generated-Pa55"}))["ARN"]
    for name, value in {contract.ENV_MASTER_SECRET_ARN: master, contract.ENV_DB_HOST: mysql.host,
                        contract.ENV_DB_PORT: str(mysql.port), contract.ENV_DB_NAME: mysql.database,
                        contract.ENV_DB_TLS: "off", contract.ENV_EXPORT_USER: names["user"],
                        contract.ENV_EXPORT_AUTH: "secret", contract.ENV_EXPORT_SECRET_ARN: export}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(bs, "STATE_SCHEMA", names["schema"])
    monkeypatch.setattr(bootstrap_handler, "bootstrap",
                        lambda conn, **kw: bs.bootstrap(conn, **kw, schema=names["schema"]))
    init = tmp_path / contract.INIT_SQL_FILE
    init.write_text("CREATE TABLE IF NOT EXISTS boot_customers (id INT);\n")
    monkeypatch.setattr(bootstrap_handler, "init_sql_text", lambda: init.read_text())
    bootstrap_handler.settings.cache_clear()
    yield {"master": master, "export": export}
    bootstrap_handler.settings.cache_clear()


def event(kind, names, secret_arn, **extra):
    return {"RequestType": kind, "ResourceType": "Custom::DatabaseBootstrap", "ResponseURL": "https://example.invalid",
            "ResourceProperties": {contract.PROP_EXPORT_USER: names["user"], contract.PROP_AUTH: "secret",
                                   contract.PROP_EXPORT_SECRET_ARN: secret_arn, contract.PROP_INIT_SQL_SHA256: "x",
                                   contract.PROP_CODE_HASH: "y"}, **extra}


def test_handler_create_update_delete(handler_env, admin, mysql, names, caplog):
    caplog.set_level("INFO")
    created = bootstrap_handler.handler(event("Create", names, handler_env["export"]), None)
    assert created == {"PhysicalResourceId": f"{mysql.database}/{names['user']}",
                       "Data": {"UserCreated": "true", "GrantsChanged": "true", "InitSqlApplied": "true",
                                "InitSqlStatements": "1"}}
    again = bootstrap_handler.handler(event("Update", names, handler_env["export"],
                                             PhysicalResourceId=created["PhysicalResourceId"]), None)
    assert again["Data"] == {"UserCreated": "false", "GrantsChanged": "false", "InitSqlApplied": "false",
                             "InitSqlStatements": "0"}
    deleted = bootstrap_handler.handler(event("Delete", names, handler_env["export"],
                                               PhysicalResourceId=created["PhysicalResourceId"]), None)
    assert deleted == {"PhysicalResourceId": created["PhysicalResourceId"]}
    # Delete dropped nothing
    assert len(grants(admin, names["user"])) == 2
    # No password in the answers or the logs
    text = json.dumps([created, again, deleted]) + "\n".join(r.getMessage() for r in caplog.records)
    assert "Generated-Pa55" not in text and "Pa55" not in text


def test_handler_refuses_bad_properties_before_touching_the_database(handler_env, names):
    bad = event("Create", names, handler_env["export"])
    bad["ResourceProperties"][contract.PROP_EXPORT_USER] = "x'; DROP DATABASE mysql; --"
    with pytest.raises(contract.ConfigurationError, match="is not a MySQL user name"):
        bootstrap_handler.handler(bad, None)


def test_handler_error_names_the_secret_not_its_value(handler_env, names, secrets):
    secrets.put_secret_value(SecretId=handler_env["master"], SecretString=json.dumps(
        {"username": "root", "password": "Wrong-Pa55"}))
    with pytest.raises(bs.BootstrapError) as err:
        bootstrap_handler.handler(event("Create", names, handler_env["export"]), None)
    assert "cannot connect to" in str(err.value) and "Wrong-Pa55" not in str(err.value)


class LambdaContext:
    """What Lambda passes the handler: the time left before the function's timeout."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)


def test_a_statement_still_running_at_the_deadline_fails_with_its_own_message(handler_env, names, monkeypatch):
    """Lambda stops a function at its timeout with only "Task timed out"
    (https://docs.aws.amazon.com/lambda/latest/dg/configuration-timeout.html): the bootstrap stops a statement
    DEADLINE_MARGIN seconds earlier, so the deploy fails naming it."""
    # Given an init SQL statement that runs longer than the function has left (margin + 2 s)
    monkeypatch.setattr(bootstrap_handler, "init_sql_text", lambda: "SELECT SLEEP(6);\n")
    started = time.monotonic()
    # When CloudFormation's request arrives, then the statement is stopped and named, before the function's timeout
    with pytest.raises(bs.BootstrapError, match=r"init_sql statement 1 of 1 \(line 1, SELECT\) failed: MySQL error 2013"):
        bootstrap_handler.handler(event("Create", names, handler_env["export"]),
                                  LambdaContext(bootstrap_handler.DEADLINE_MARGIN + 2))
    assert time.monotonic() - started < bootstrap_handler.DEADLINE_MARGIN + 2


def _user_exists(admin, user) -> bool:
    with admin.cursor() as cur:
        return bs.user_exists(cur, user)


@pytest.mark.parametrize("change", [
    {contract.PROP_EXPORT_USER: "intruder"},
    {contract.PROP_EXPORT_USER: "root"},
    {contract.PROP_AUTH: "iam", contract.PROP_EXPORT_SECRET_ARN: None},
    {contract.PROP_EXPORT_SECRET_ARN: "master"},
])
def test_handler_refuses_any_other_user_auth_or_secret_before_reading_a_secret(handler_env, admin, names, monkeypatch,
                                                                                change):
    """Whoever may invoke the bootstrap could otherwise create, re-identify or re-grant any account (the master
    included) with the master's rights: it serves only the user, auth mode and secret set at synth."""
    # Given a request for something other than what the function's environment names
    bad = event("Update", names, handler_env["export"])
    for name, value in change.items():
        bad["ResourceProperties"][name] = handler_env["master"] if value == "master" else value
    bad["ResourceProperties"] = {k: v for k, v in bad["ResourceProperties"].items() if v is not None}
    read = []
    monkeypatch.setattr(bootstrap_handler, "secrets_client", lambda: read.append("secrets") or None)
    # When it is invoked, it refuses naming what differs, having read no secret and opened no connection
    with pytest.raises(contract.ConfigurationError, match=r"^refused: this bootstrap manages only the export user") as err:
        bootstrap_handler.handler(bad, None)
    assert all(name in str(err.value) for name in change) and read == []
    assert not _user_exists(admin, "intruder") and not _user_exists(admin, names["user"])


def test_a_rollback_to_the_previous_user_changes_nothing_and_succeeds(handler_env, admin, names, monkeypatch):
    """CloudFormation rolls the custom resource back (old properties) before the function's environment: the
    old identity is then not what the function serves; it must answer without acting, or the rollback fails."""
    rollback = event("Update", names, handler_env["export"], PhysicalResourceId="db/old_user",
                     OldResourceProperties=event("Update", names, handler_env["export"])["ResourceProperties"])
    rollback["ResourceProperties"][contract.PROP_EXPORT_USER] = "old_user"
    monkeypatch.setattr(bootstrap_handler, "secrets_client", lambda: pytest.fail("a rollback read a secret"))
    answer = bootstrap_handler.handler(rollback, None)
    assert answer["PhysicalResourceId"] == "db/old_user" and answer["Data"]["UserCreated"] == "false"
    assert not _user_exists(admin, "old_user")
    # Without the previous properties being exactly what it serves, the same request is refused
    rollback["OldResourceProperties"][contract.PROP_EXPORT_USER] = "someone_else"
    with pytest.raises(contract.ConfigurationError, match="refused"):
        bootstrap_handler.handler(rollback, None)


def test_the_readme_run_by_hand_event_still_runs(handler_env, admin, names):
    # The README's event: RequestType and the three identity properties, nothing else
    by_hand = {"RequestType": "Update", "ResourceProperties": {
        contract.PROP_EXPORT_USER: names["user"], contract.PROP_AUTH: "secret",
        contract.PROP_EXPORT_SECRET_ARN: handler_env["export"]}}
    answer = bootstrap_handler.handler(by_hand, None)
    assert answer["Data"]["UserCreated"] == "true" and _user_exists(admin, names["user"])


def test_settings_refuse_an_environment_without_its_identity():
    base = {contract.ENV_MASTER_SECRET_ARN: "arn", contract.ENV_DB_HOST: "h", contract.ENV_DB_PORT: "3306",
            contract.ENV_DB_NAME: "app", contract.ENV_DB_TLS: "verify", contract.ENV_EXPORT_USER: "xlsx_export",
            contract.ENV_EXPORT_AUTH: "iam"}
    assert contract.load_settings(base).export_secret_arn is None
    with pytest.raises(contract.ConfigurationError, match="missing environment variables: EXPORT_SECRET_ARN"):
        contract.load_settings({**base, contract.ENV_EXPORT_AUTH: "secret"})
    with pytest.raises(contract.ConfigurationError, match="missing environment variables: EXPORT_USER"):
        contract.load_settings({k: v for k, v in base.items() if k != contract.ENV_EXPORT_USER})
    with pytest.raises(contract.ConfigurationError, match="EXPORT_AUTH must be one of iam, secret"):
        contract.load_settings({**base, contract.ENV_EXPORT_AUTH: "password"})


def test_no_password_or_token_is_logged_even_at_debug(handler_env, names, caplog, monkeypatch, mysql, secrets):
    """At DEBUG botocore logs GetSecretValue's response (the master password) and the session token."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", "Session-T0ken-Of-The-Role")
    secrets.put_secret_value(SecretId=handler_env["master"], SecretString=mysql.secret_json(password="Master-Pa55"))
    caplog.set_level("DEBUG")
    with pytest.raises(bs.BootstrapError, match="cannot connect to"):  # a wrong master password: both secrets read
        bootstrap_handler.handler(event("Create", names, handler_env["export"]), None)
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    for secret in ("Master-Pa55", "Generated-Pa55", "Session-T0ken-Of-The-Role", "SecretString", "Signature"):
        assert secret not in logged


def test_a_master_password_outside_latin1_is_a_clear_error(handler_env, names, secrets, mysql):
    secrets.put_secret_value(SecretId=handler_env["master"], SecretString=mysql.secret_json(password="Pr1ce-€-Pa55"))
    with pytest.raises(bs.BootstrapError, match=r"^cannot connect to .* as 'root': the password holds a character "
                                                r"outside Latin-1") as err:
        bootstrap_handler.handler(event("Create", names, handler_env["export"]), None)
    assert "€" not in str(err.value) and "Pa55" not in str(err.value)


def test_plain_tcp_is_refused_inside_lambda(handler_env, names, monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "bootstrap-fn")
    bootstrap_handler.settings.cache_clear()
    with pytest.raises(contract.ConfigurationError, match=r"^DB_TLS=off is for local runs only: inside Lambda"):
        bootstrap_handler.handler(event("Create", names, handler_env["export"]), None)
    bootstrap_handler.settings.cache_clear()


def test_a_huge_property_is_not_echoed_whole(handler_env, names):
    bad = event("Create", names, handler_env["export"])
    bad["ResourceProperties"][contract.PROP_EXPORT_USER] = "u" * 300_000
    with pytest.raises(contract.ConfigurationError, match="is not a MySQL user name") as err:
        bootstrap_handler.handler(bad, None)
    assert len(str(err.value)) < 200
