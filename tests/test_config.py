"""cdk.json context -> typed config: every bad input is one clear error naming the field."""

from __future__ import annotations

import copy

import pytest

from stacks.config import ConfigError, CreateDatabaseConfig, ExistingDatabaseConfig, load_environment, validate_schedule
from pipeline_ops.synth import CDK_JSON

ENVIRONMENTS = CDK_JSON["context"]["environments"]


def with_change(env: str, change) -> dict:
    environments = copy.deepcopy(ENVIRONMENTS)
    change(environments[env])
    return {"environments": environments}


def test_the_shipped_environments_parse():
    dev = load_environment({"environments": ENVIRONMENTS}, None)
    prod = load_environment({"environments": ENVIRONMENTS}, "prod")
    assert dev.name == "dev" and isinstance(dev.database, CreateDatabaseConfig)
    assert prod.name == "prod" and isinstance(prod.database, ExistingDatabaseConfig)
    assert dev.removal_policy == "destroy" and prod.removal_policy == "retain"
    assert prod.database.port == 3306 and prod.destination.bucket_name == "partner-team-xlsx-inbox"
    assert [e.name for e in dev.exports] == ["orders", "customers"]
    assert dev.exports[1].sheet_name == "customers"  # defaults to the export name


def test_unknown_environment_lists_the_configured_ones():
    with pytest.raises(ConfigError, match="unknown environment 'staging'; configured: dev, prod"):
        load_environment({"environments": ENVIRONMENTS}, "staging")


def _set(path: list, value):
    def change(env):
        target = env
        for part in path[:-1]:
            target = target[part]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


_DELETE = object()


@pytest.mark.parametrize("env, path, value, message", [
    ("dev", ["exports", 0, "schedule"], "cron(0 5 * * *)",
     r"environments.dev.exports\[0\].schedule: 'cron\(0 5 \* \* \*\)': cron\(\) takes 6 fields"),
    ("dev", ["exports", 0, "schedule"], "every day", r"exports\[0\].schedule: 'every day': expected 'rate"),
    ("dev", ["exports", 0, "schedule"], "rate(1 days)", r"use 'day' for 1"),
    ("dev", ["exports", 0, "schedule"], "cron(0 5 * * MON *)", "exactly one of day-of-month and day-of-week"),
    ("dev", ["exports", 0, "sql"], _DELETE, r"environments.dev.exports\[0\].sql: required field is missing"),
    ("dev", ["exports", 0, "sql"], "DELETE FROM orders", r"exports\[0\].sql: sql must be a single SELECT"),
    ("dev", ["exports", 1, "name"], "Orders!", r"exports\[1\].name: export name 'Orders!' must be"),
    ("dev", ["exports", 1, "name"], "orders", "duplicate export name\\(s\\): orders"),
    ("dev", ["exports", 0, "sheet_name"], "a/b", r"sheet_name: sheet name 'a/b' may not contain '/'"),
    ("dev", ["exports"], [], "environments.dev.exports: expected a non-empty list"),
    ("dev", ["log_retention_days"], 13, "environments.dev.log_retention_days: 13 is not a CloudWatch Logs retention"),
    ("dev", ["log_retention_days"], "14", "log_retention_days: expected a whole number"),
    ("dev", ["removal_policy"], "snapshot", "removal_policy: 'snapshot' is not one of 'destroy', 'retain'"),
    ("dev", ["export_function", "memory_mb"], 64, r"export_function.memory_mb: 64 is outside 128..10240"),
    ("dev", ["export_function", "ephemeral_storage_mb"], 20000, "ephemeral_storage_mb: 20000 is outside"),
    ("dev", ["alarm_email"], "not-an-email", "alarm_email: 'not-an-email' is not an e-mail address"),
    ("dev", ["key_prefix"], "exports", "key_prefix: 'exports' is not empty or a key prefix ending in '/'"),
    ("dev", ["colour"], "blue", "environments.dev: unknown field\\(s\\) colour"),
    ("dev", ["database", "mode"], "borrow", "database.mode: 'borrow' is not one of 'create', 'existing'"),
    ("dev", ["database", "vpc_cidr"], "10.0.0.0/8", "vpc_cidr: '10.0.0.0/8' is not an IPv4 CIDR"),
    ("dev", ["account"], "123456789012", "give both account and region, or neither"),
    ("prod", ["database", "secret_arn"], "arn:aws:secretsmanager:eu-west-1:123456789012:secret:x",
     "database.secret_arn: .* is not a complete Secrets Manager secret ARN"),
    ("prod", ["database", "subnet_ids"], ["subnet-0a1b2c3d4e5f67890"],
     "one entry per subnet \\(2, 1 and 2 given\\)"),
    ("prod", ["database", "host"], _DELETE, "environments.prod.database.host: required field is missing"),
    ("prod", ["destination", "bucket_name"], "Bad_Bucket", "destination.bucket_name: 'Bad_Bucket' is not an S3"),
    ("prod", ["database", "availability_zones"], ["eu-west-1"], r"availability_zones\[0\]: 'eu-west-1' is not"),
])
def test_bad_values_name_the_field(env, path, value, message):
    with pytest.raises(ConfigError, match=message):
        load_environment(with_change(env, _set(path, value)), env)


def test_source_and_destination_bucket_may_not_be_the_same():
    def change(env):
        env["source_bucket_name"] = env["destination"]["bucket_name"]

    with pytest.raises(ConfigError, match="'partner-team-xlsx-inbox' is the source bucket"):
        load_environment(with_change("prod", change), "prod")


def test_an_imported_destination_may_be_given_by_arn():
    def by_arn(env):
        env["destination"] = {"bucket_arn": "arn:aws:s3:::partner-team-xlsx-inbox", "prefix": "x/"}

    assert load_environment(with_change("prod", by_arn), "prod").destination.bucket_name == "partner-team-xlsx-inbox"

    def both(env):
        env["destination"]["bucket_arn"] = "arn:aws:s3:::other"

    with pytest.raises(ConfigError, match="destination.bucket_arn: give bucket_name or bucket_arn, not both"):
        load_environment(with_change("prod", both), "prod")


def test_exports_that_do_not_fit_the_lambda_environment_are_refused():
    def change(env):
        env["exports"] = [{"name": f"e{i}", "sql": "SELECT " + "x, " * 200 + "1"} for i in range(6)]

    with pytest.raises(ConfigError, match="the export definitions take \\d+ bytes, more than the 3500"):
        load_environment(with_change("dev", change), "dev")


def test_create_mode_with_an_account_needs_availability_zones():
    def change(env):
        env.update(account="123456789012", region="eu-west-1")

    with pytest.raises(ConfigError, match="database.availability_zones: required when account and region are set"):
        load_environment(with_change("dev", change), "dev")


def test_deletion_protection_defaults_to_on_where_data_is_retained():
    def change(env):
        env["removal_policy"] = "retain"

    assert load_environment(with_change("dev", change), "dev").database.deletion_protection is True
    assert load_environment({"environments": ENVIRONMENTS}, "dev").database.deletion_protection is False


@pytest.mark.parametrize("expr", ["rate(1 day)", "rate(5 minutes)", "cron(0 5 * * ? *)", "cron(15 10 ? * MON-FRI *)",
                                  "cron(0/15 * * * ? *)", "cron(0 8 L * ? *)"])
def test_valid_schedules(expr):
    assert validate_schedule(expr) is None
