"""Shared fixtures: fake AWS credentials, the real MariaDB/MySQL, moto, and stacks built once per session."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The project root: every package is imported one way, `lambdas.<function>`, as in the bundled asset.
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

DEFAULT_DSN = "mysql://root@127.0.0.1:3306/test"
START_HINT = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch):
    """Never reach a real account: fake credentials and a fixed region for every test."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


# --- MySQL -------------------------------------------------------------------------


@dataclass(frozen=True)
class MySQL:
    host: str
    port: int
    user: str
    password: str
    database: str

    def connect(self, **kwargs):
        import pymysql

        return pymysql.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               database=self.database, charset="utf8mb4", autocommit=True, **kwargs)

    def secret_json(self, **override) -> str:
        body = {"engine": "mysql", "host": self.host, "port": self.port, "username": self.user,
                "password": self.password, "dbname": self.database}
        body.update(override)
        return json.dumps(body)


@pytest.fixture(scope="session")
def mysql() -> MySQL:
    """The real server named by MYSQL_DSN (default: local MariaDB); fails loudly when it does not answer."""
    import pymysql

    dsn = os.environ.get("MYSQL_DSN", DEFAULT_DSN)
    url = urlparse(dsn)
    db = MySQL(host=url.hostname or "127.0.0.1", port=url.port or 3306, user=unquote(url.username or "root"),
               password=unquote(url.password or ""), database=url.path.lstrip("/") or "test")
    try:
        db.connect(connect_timeout=5).close()
    except pymysql.err.MySQLError as exc:
        pytest.fail(
            f"no MySQL/MariaDB server answers at {db.host}:{db.port} (MYSQL_DSN={dsn!r}): {exc}. "
            f"Start the local one with `{START_HINT}` or point MYSQL_DSN at a server.",
            pytrace=False,
        )
    _load_time_zone_tables(db)
    return db


def _load_time_zone_tables(db: MySQL) -> None:
    """Named time zones need the server's time zone tables (RDS has them): load them once, as .ci/run does,
    when the server has none (mariadb-tzinfo-to-sql's SQL replaces the tables' contents, so it can run twice)."""
    import shutil
    import subprocess

    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM mysql.time_zone_name")
            (zones,), = cur.fetchall()
    finally:
        conn.close()
    tool = shutil.which("mariadb-tzinfo-to-sql") or shutil.which("mysql_tzinfo_to_sql")
    if zones or tool is None:
        return
    client = shutil.which("mariadb") or shutil.which("mysql")
    sql = subprocess.run([tool, "/usr/share/zoneinfo"], capture_output=True, check=True).stdout
    subprocess.run([client, "--protocol=tcp", "-h", db.host, "-P", str(db.port), "-u", db.user,
                    *([f"-p{db.password}"] if db.password else []), "mysql"], input=sql, check=True)


# --- moto --------------------------------------------------------------------------


@pytest.fixture
def moto_aws(aws_credentials):
    from moto import mock_aws

    with mock_aws():
        yield


@pytest.fixture
def s3(moto_aws):
    import boto3

    return boto3.client("s3", region_name="us-east-1")


LEDGER_TABLE = "run-ledger"


class LedgerTable:
    """The run ledger in moto, keyed as the stack's table (names from lambdas/contract.py)."""

    def __init__(self, client, name: str):
        self.client, self.name = client, name

    def items(self) -> list[dict]:
        from lambdas.ledger import item_of

        return [item_of(i) for i in self.client.scan(TableName=self.name)["Items"]]


def create_ledger_table(client, name: str = LEDGER_TABLE) -> LedgerTable:
    from lambdas import contract as shared

    client.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": shared.LEDGER_EXPORT, "KeyType": "HASH"},
                   {"AttributeName": shared.LEDGER_RUN_ID, "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": shared.LEDGER_EXPORT, "AttributeType": "S"},
                              {"AttributeName": shared.LEDGER_RUN_ID, "AttributeType": "S"}],
    )
    return LedgerTable(client, name)


@pytest.fixture
def ledger(moto_aws) -> LedgerTable:
    import boto3

    return create_ledger_table(boto3.client("dynamodb", region_name="us-east-1"))


@pytest.fixture
def secrets(moto_aws):
    import boto3

    return boto3.client("secretsmanager", region_name="us-east-1")


# --- the CDK app, built once per session per environment ----------------------------

from pipeline_ops.synth import Synthesized, synthesize  # noqa: E402


@pytest.fixture(scope="session")
def dev() -> Synthesized:
    return synthesize("dev")


@pytest.fixture(scope="session")
def prod() -> Synthesized:
    return synthesize("prod")


def _variant(env: str, change) -> Synthesized:
    """``env`` synthesized with ``change`` applied to a copy of its config."""
    import copy

    from pipeline_ops.synth import CDK_JSON

    environments = copy.deepcopy(CDK_JSON["context"]["environments"])
    change(environments[env])
    return synthesize(env, environments=environments)


@pytest.fixture(scope="session")
def shared_vpc() -> Synthesized:
    """prod's config, asking for what a shared VPC may need: both endpoints, a secret under a customer key,
    a reserved concurrency and replication limited to one folder of the source bucket."""

    def change(prod):
        del prod["database"]["secrets_endpoint_security_group_id"]
        prod["database"]["create_endpoints"] = ["s3", "secretsmanager"]
        prod["database"]["secret_kms_key_arn"] = "arn:aws:kms:eu-west-1:123456789012:key/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
        prod["export_function"]["reserved_concurrency"] = 1
        prod["destination"]["source_prefix"] = "reports/"

    return _variant("prod", change)


@pytest.fixture(scope="session")
def dev_secret() -> Synthesized:
    """dev with a password-based export user (a secret the stack generates) and no init SQL."""

    def change(dev):
        dev["database"]["auth"] = "secret"
        del dev["database"]["init_sql"]

    return _variant("dev", change)


@pytest.fixture(scope="session")
def prod_iam() -> Synthesized:
    """prod (an existing database) with IAM database authentication: no secret, no Secrets Manager endpoint."""

    def change(prod):
        for key in ("secret_arn", "secrets_endpoint_security_group_id"):
            del prod["database"][key]
        prod["database"].update(auth="iam", resource_id="db-ABCDEFGHIJKLMNOPQRSTUVWXY2", create_endpoints=["s3"])

    return _variant("prod", change)
