"""Typed, validated per-environment configuration read once from ``cdk.json`` context.

``app.py`` calls :func:`load_environment` with the whole context and an environment
name; every construct gets plain typed values from here and never reads context or
``os.environ`` itself. Any problem raises :class:`ConfigError` naming the field,
before a single construct is built.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping, Union

from lambdas.contract import MAX_KEY_BYTES, export_prefix, longest_copy_key
from lambdas.db_bootstrap.settings import AUTH_MODES, DATABASE_RE, USER_RE
from lambdas.export_to_xlsx import settings as export_contract
from lambdas.export_to_xlsx.definition import (
    QUERY_TIME_MARGIN_SECONDS, DefinitionError, ExportDefinition, Reader, encode_exports, read_exports,
    read_project_file,
)
from stacks.rds_ca import CaBundleError, ca_bundle

CONTEXT_KEY = "environments"
#: The folder (the one holding cdk.json) that ``sql_file`` and ``init_sql`` paths are relative to.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ENVIRONMENT = "dev"

LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)

_BUCKET_RE = re.compile(r"^(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ACCOUNT_RE = re.compile(r"^\d{12}$")
_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")
_AZ_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d[a-z]$")
_SECRET_ARN_RE = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[\w/+=.@-]+-[A-Za-z0-9]{6}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_CIDR_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+/(\d|[12]\d|3[0-2])$")
#: A full key ARN; its region is the key's (and so its bucket's or secret's) region, which kms:ViaService names.
_KMS_KEY_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d:\d{12}:key/"
                             r"([0-9a-f-]{36}|mrk-[0-9a-f]{32})$")
_SG_RE = re.compile(r"^sg-[0-9a-f]+$")

#: MySQL major versions RDS offers; RDS picks and upgrades the minor version itself.
ENGINE_VERSIONS = ("8.0", "8.4")
#: Lambda always keeps 100 concurrent executions of an account unreserved.
MAX_RESERVED_CONCURRENCY = 1000
#: VPC endpoints the stack can add to an existing VPC.
ENDPOINT_NAMES = ("s3", "secretsmanager", "dynamodb")
#: The DbiResourceId of an instance (``db-...``) or an Aurora cluster (``cluster-...``), as RDS shows it.
_RESOURCE_ID_RE = re.compile(r"^(db|cluster)-[A-Z0-9]{1,255}$")

#: The export's MySQL user unless config names another (how it logs in: AUTH_MODES, an RDS IAM token or a secret).
DEFAULT_EXPORT_USER = "xlsx_export"


#: A configuration value is missing or wrong; each line of the message names one field.
ConfigError = DefinitionError


@dataclass(frozen=True)
class LambdaConfig:
    memory_mb: int = 1769  # one full vCPU: the same price per row as less, the shortest runs (README)
    timeout_seconds: int = 900
    ephemeral_storage_mb: int = 2048
    reserved_concurrency: int | None = None


@dataclass(frozen=True)
class CreateDatabaseConfig:
    """Build a VPC (isolated subnets, no NAT) and an encrypted RDS MySQL instance (8.4 by default)."""

    database_name: str = "app"
    engine_version: str = "8.4"
    instance_type: str = "t4g.micro"
    allocated_storage_gb: int = 20
    backup_retention_days: int = 7
    multi_az: bool = False
    deletion_protection: bool = False
    vpc_cidr: str = "10.0.0.0/16"
    availability_zones: tuple[str, ...] = ()
    #: ``iam``: the export user logs in with an RDS IAM token; ``secret``: with a password the
    #: stack generates into a secret of its own. Either way the user is created at deploy.
    auth: Literal["iam", "secret"] = "iam"
    export_user: str = DEFAULT_EXPORT_USER
    #: Schema/seed SQL applied at deploy, once per content (absolute path, checked to exist and not be empty).
    init_sql: Path | None = None
    #: A PEM file of the project whose CA certificates are trusted besides the packaged RDS roots.
    ca_bundle_file: Path | None = None
    mode: Literal["create"] = "create"


@dataclass(frozen=True)
class ExistingDatabaseConfig:
    """Import a VPC, its subnets and the database around it, all from config (no lookups)."""

    vpc_id: str
    availability_zones: tuple[str, ...]
    subnet_ids: tuple[str, ...]
    route_table_ids: tuple[str, ...]
    security_group_id: str
    host: str
    port: int
    database_name: str
    #: The secret of a read-only user (``auth: secret``); None with ``auth: iam``.
    secret_arn: str | None
    vpc_cidr: str
    create_endpoints: tuple[str, ...] = ()
    secrets_endpoint_security_group_id: str | None = None
    #: The security group of the VPC's S3 *interface* endpoint, when S3 is reached through one.
    s3_endpoint_security_group_id: str | None = None
    secret_kms_key_arn: str | None = None
    #: ``secret`` (the default: works with any MySQL and needs nothing enabled on the server) or ``iam``.
    auth: Literal["iam", "secret"] = "secret"
    export_user: str = DEFAULT_EXPORT_USER
    #: The DbiResourceId of the instance or cluster (``auth: iam``): the export role's rds-db:connect names it.
    resource_id: str | None = None
    #: A PEM file of the project whose CA certificates are trusted besides the packaged RDS roots.
    ca_bundle_file: Path | None = None
    mode: Literal["existing"] = "existing"


DatabaseConfig = Union[CreateDatabaseConfig, ExistingDatabaseConfig]


@dataclass(frozen=True)
class DestinationConfig:
    """``bucket_name`` set (in config as a name or an ARN): import that bucket (another team's or
    account's) and only grant access to it."""

    bucket_name: str | None = None
    prefix: str = ""
    kms_key_arn: str | None = None
    source_prefix: str = ""
    #: The destination bucket's region, when known: only checked against the key's (S3 takes an SSE-KMS key in
    #: the bucket's own region only) and, for the bucket this stack creates, against the stack's region.
    region: str | None = None


@dataclass(frozen=True)
class EnvironmentConfig:
    name: str
    account: str | None
    region: str | None
    removal_policy: Literal["destroy", "retain"]
    log_retention_days: int
    alarm_email: str | None
    export_function: LambdaConfig
    key_prefix: str
    exports: tuple[ExportDefinition, ...]
    database: DatabaseConfig
    destination: DestinationConfig = field(default_factory=DestinationConfig)
    source_bucket_name: str | None = None
    #: Days a run's ledger item is kept (the table's TTL).
    history_days: int = 400

    @property
    def stack_name(self) -> str:
        return f"MysqlXlsxPipeline-{self.name}"


def _read_exports(env: Reader, root: Path, timeout_seconds: int) -> tuple[ExportDefinition, ...]:
    exports = _with_query_limits(env, read_exports(env, "exports", root), timeout_seconds)
    size = len(encode_exports(exports).encode())
    if size > export_contract.MAX_EXPORTS_JSON_BYTES:
        env.problem(
            "exports",
            f"the export definitions take {size} bytes, more than the {export_contract.MAX_EXPORTS_JSON_BYTES} "
            "that fit in the function's environment (Lambda allows 4 KB in all); move long SQL into .sql files "
            "(sql_file)",
        )
    return exports


def _with_query_limits(env: Reader, exports: tuple[ExportDefinition, ...], timeout_seconds: int
                       ) -> tuple[ExportDefinition, ...]:
    """Each export's ``max_query_seconds``: its own, at most the function's timeout less a margin, which is also the
    default (so the server, not Lambda's timeout, ends a runaway query, and the export fails cleanly)."""
    ceiling = timeout_seconds - QUERY_TIME_MARGIN_SECONDS
    raw = env.data.get("exports")
    names = [item.get("name") if isinstance(item, Mapping) else None for item in raw] if isinstance(raw, list) else []
    out = []
    for export in exports:
        if export.max_query_seconds is not None and export.max_query_seconds > ceiling:
            env.problem(f"exports[{names.index(export.name)}].max_query_seconds",
                        f"{export.max_query_seconds} is more than the export function's timeout_seconds "
                        f"({timeout_seconds}) less {QUERY_TIME_MARGIN_SECONDS} s to fail cleanly: at most {ceiling}")
        out.append(export if export.max_query_seconds is not None else replace(export, max_query_seconds=ceiling))
    return tuple(out)


def _read_database(env: Reader, retain: bool, root: Path) -> DatabaseConfig:
    r = env.obj("database")
    mode = r.str("mode", "create")
    az_check = dict(check=_AZ_RE.match, expect="an availability zone name like 'eu-west-1a'")
    if mode == "create":
        cfg = CreateDatabaseConfig(
            database_name=r.str("database_name", "app", check=DATABASE_RE.match,
                                expect="a MySQL database name"),
            engine_version=_engine_version(r),
            instance_type=r.str("instance_type", "t4g.micro", check=_INSTANCE_TYPE_RE.match,
                                expect="an instance type like 't4g.micro'"),
            allocated_storage_gb=r.int("allocated_storage_gb", 20, 20, 65536),
            backup_retention_days=r.int("backup_retention_days", 7, 1, 35),
            multi_az=r.bool("multi_az", False),
            deletion_protection=r.bool("deletion_protection", retain),
            vpc_cidr=r.str("vpc_cidr", "10.0.0.0/16", check=re.compile(r"^\d+\.\d+\.\d+\.\d+/(1[6-9]|2[0-4])$").match,
                           expect="an IPv4 CIDR from /16 to /24"),
            availability_zones=r.str_list("availability_zones", required=False, **az_check),
            auth=_read_auth(r, "iam"),
            export_user=_read_export_user(r),
            init_sql=_read_init_sql(r, root),
            ca_bundle_file=_read_ca_bundle_file(r, root),
        )
    elif mode == "existing":
        azs = r.str_list("availability_zones", required=True, **az_check)
        subnets = r.str_list("subnet_ids", required=True, check=re.compile(r"^subnet-[0-9a-f]+$").match,
                             expect="a subnet id")
        tables = r.str_list("route_table_ids", required=True, check=re.compile(r"^rtb-[0-9a-f]+$").match,
                            expect="a route table id")
        if azs and subnets and tables and not len(azs) == len(subnets) == len(tables):
            raise r.fail(None, "availability_zones, subnet_ids and route_table_ids must have one entry per "
                              f"subnet ({len(azs)}, {len(subnets)} and {len(tables)} given)")
        cfg = ExistingDatabaseConfig(
            vpc_id=r.str("vpc_id", required=True, check=re.compile(r"^vpc-[0-9a-f]+$").match, expect="a VPC id"),
            availability_zones=azs,
            subnet_ids=subnets,
            route_table_ids=tables,
            security_group_id=r.str("security_group_id", required=True, check=_SG_RE.match,
                                    expect="a security group id"),
            host=r.str("host", required=True, check=re.compile(r"^[A-Za-z0-9.-]{1,253}$").match, expect="a host name"),
            port=r.int("port", 3306, 1, 65535),
            database_name=r.str("database_name", required=True),
            vpc_cidr=r.str("vpc_cidr", required=True, check=_CIDR_RE.match, expect="the VPC's IPv4 CIDR like '10.0.0.0/16'"),
            create_endpoints=_endpoints(r),
            secrets_endpoint_security_group_id=r.str(
                "secrets_endpoint_security_group_id", check=_SG_RE.match,
                expect="the security group id of the VPC's existing Secrets Manager endpoint"),
            s3_endpoint_security_group_id=r.str(
                "s3_endpoint_security_group_id", check=_SG_RE.match,
                expect="the security group id of the VPC's existing S3 interface endpoint"),
            secret_kms_key_arn=r.str("secret_kms_key_arn", check=_KMS_KEY_ARN_RE.match,
                                     expect="a full KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID; not an alias)"),
            **_read_existing_auth(r),
            ca_bundle_file=_read_ca_bundle_file(r, root),
        )
        if cfg.auth == "iam":
            for key, used in (("create_endpoints", "secretsmanager" in cfg.create_endpoints),
                              ("secrets_endpoint_security_group_id", cfg.secrets_endpoint_security_group_id),
                              ("secret_kms_key_arn", cfg.secret_kms_key_arn)):
                if used:
                    raise r.fail(key, "is about Secrets Manager, which auth 'iam' does not use: the export signs "
                                      "an IAM token and reads no secret")
        if "secretsmanager" in cfg.create_endpoints and cfg.secrets_endpoint_security_group_id:
            raise r.fail("secrets_endpoint_security_group_id", "names an existing Secrets Manager endpoint, so "
                         "create_endpoints must not ask for another one (a VPC holds one private-DNS endpoint per service)")
    else:
        raise r.fail("mode", f"{mode!r} is not one of 'create', 'existing'")
    r.done()
    return cfg


def _read_auth(r: Reader, default: str) -> str:
    return r.str("auth", default, check=lambda v: v in AUTH_MODES, expect="one of 'iam', 'secret'")


def _read_export_user(r: Reader) -> str:
    return r.str("export_user", DEFAULT_EXPORT_USER, check=USER_RE.match,
                 expect="a MySQL user name (letters, digits and '_', at most 32, not starting with a digit)")


def _read_init_sql(r: Reader, root: Path) -> Path | None:
    raw = r.str("init_sql")
    if raw is None or r.attempt(lambda: read_project_file(root, raw), None, "init_sql") is None:
        return None
    return root / raw


def _read_ca_bundle_file(r: Reader, root: Path) -> Path | None:
    """A .pem file inside the project (e.g. AWS's global bundle), checked here: every certificate parses, is a CA
    and has not expired."""
    raw = r.str("ca_bundle_file")
    if raw is None:
        return None
    relative = Path(raw)
    if relative.is_absolute() or ".." in relative.parts or relative.suffix != ".pem" or "\\" in raw:
        raise r.fail("ca_bundle_file", f"{raw!r} must be a .pem file inside the project, like 'certs/global-bundle.pem'")
    file = root / relative
    if not file.is_file():
        raise r.fail("ca_bundle_file", f"{raw} does not exist (looked for {file})")
    try:
        ca_bundle(file, name=raw)
    except CaBundleError as exc:
        raise r.fail("ca_bundle_file", str(exc)) from None
    return file


def _read_existing_auth(r: Reader) -> dict[str, Any]:
    """``auth`` and what it needs: ``secret_arn`` for secret, ``resource_id`` (and the user) for iam."""
    auth = _read_auth(r, "secret")
    user = _read_export_user(r)
    secret_arn = r.str("secret_arn", check=_SECRET_ARN_RE.match,
                       expect="a complete Secrets Manager secret ARN (ending in the 6-character suffix)")
    resource_id = r.str("resource_id", check=_RESOURCE_ID_RE.match,
                        expect="the instance's or cluster's DbiResourceId, like 'db-ABCDEFGHIJKLMNOPQRSTUVWXY1' "
                               "(aws rds describe-db-instances --query 'DBInstances[].DbiResourceId')")
    if r.data.get("init_sql") is not None:
        raise r.fail("init_sql", "only for mode 'create': nothing runs against an existing database at deploy")
    if auth == "secret":
        if secret_arn is None:
            raise r.fail("secret_arn", "required field is missing (auth is 'secret')")
        if resource_id is not None:
            raise r.fail("resource_id", "only used with auth 'iam'")
        if "export_user" in r.data:
            raise r.fail("export_user", "only used with auth 'iam' (with 'secret' the user is the secret's)")
    else:
        if resource_id is None:
            raise r.fail("resource_id", "required field is missing (auth is 'iam'): the export role may only "
                                        "connect as the export user of this one instance or cluster")
        if secret_arn is not None:
            raise r.fail("secret_arn", "not used with auth 'iam': the export signs an IAM token instead")
    return {"auth": auth, "export_user": user, "secret_arn": secret_arn, "resource_id": resource_id}


_BUCKET_ARN_RE = re.compile(r"^arn:aws[a-z-]*:s3:::([^/]+)$")


#: Prefixes end up in IAM resource ARNs, where '*' and '?' are wildcards, and in S3 notification filters,
#: where they are literal: refusing them keeps the grant exactly what the filter delivers.
PLAIN_PREFIX = "a key prefix not starting with '/' and without '*' or '?'"


def _plain_prefix(value: str) -> bool:
    return not value.startswith("/") and len(value) < 512 and not set("*?") & set(value)


def _engine_version(r: Reader) -> str:
    version = r.str("engine_version", "8.4")
    if version not in ENGINE_VERSIONS:
        hint = ""
        if re.match(r"^8\.[04]\.\d+$", version or ""):
            hint = (f"; give the major version only ({version.rsplit('.', 1)[0]!r}): RDS upgrades minor versions "
                    "itself, and a pinned minor version makes the next stack update fail once it has")
        raise r.fail("engine_version", f"{version!r} is not one of {', '.join(map(repr, ENGINE_VERSIONS))}{hint}")
    return version


def _endpoints(r: Reader) -> tuple[str, ...]:
    value = r.raw("create_endpoints")
    if value is None:
        return ()
    if not isinstance(value, list) or any(v not in ENDPOINT_NAMES for v in value) or len(set(value)) != len(value):
        raise r.fail("create_endpoints", f"{value!r} is not a list of distinct endpoint names out of "
                                         f"{', '.join(map(repr, ENDPOINT_NAMES))} (empty: the VPC already reaches them)")
    return tuple(value)


def _check_region(env: Reader, region: str | None, ca_bundle_file: Path | None, root: Path) -> None:
    if region is None:
        return  # environment-agnostic: the template's SupportedRegion rule checks at deploy time
    try:
        bundle = ca_bundle(ca_bundle_file, name=ca_bundle_file and ca_bundle_file.relative_to(root).as_posix())
    except CaBundleError as exc:
        env.problem("region", str(exc))
        return
    if region not in bundle.regions:
        env.problem("region", bundle.uncovered_region_message(region))


def _check_destination_region(dest: Reader, destination: DestinationConfig, stack_region: str | None) -> None:
    """S3 encrypts with an SSE-KMS key of the bucket's own region only (and S3 in that region calls KMS), and the
    bucket this stack creates is in the stack's region: a key or a region that cannot match is refused here,
    rather than as AccessDenied on every copy after the deploy."""
    key_region = destination.kms_key_arn.split(":")[3] if destination.kms_key_arn else None
    bucket_region = destination.region
    if destination.bucket_name is None and stack_region is not None:
        if bucket_region is not None and bucket_region != stack_region:
            dest.problem("region", f"{bucket_region!r}: the destination bucket this stack creates (no bucket_name) "
                                   f"is in the stack's region {stack_region!r}")
            return
        bucket_region = stack_region
    if key_region is not None and bucket_region is not None and key_region != bucket_region:
        where = "destination.region" if destination.region is not None else "the stack's region, where it creates the bucket,"
        dest.problem("kms_key_arn", f"the key is in {key_region!r} but {where} is {bucket_region!r}: S3 encrypts "
                                    f"only with a key in the bucket's own region")


def _destination_name(dest: Reader) -> str | None:
    name = dest.str("bucket_name", check=_BUCKET_RE.match, expect="an S3 bucket name")
    arn = dest.str("bucket_arn", check=lambda v: bool(_BUCKET_ARN_RE.match(v) and _BUCKET_RE.match(v.rsplit(":", 1)[1])),
                   expect="an S3 bucket ARN like 'arn:aws:s3:::bucket-name'")
    if name and arn:
        dest.problem("bucket_arn", "give bucket_name or bucket_arn, not both")
    return name or (arn.rsplit(":", 1)[1] if arn else None)


def _read_environment(name: str, raw: Any, root: Path) -> EnvironmentConfig:
    env = Reader(raw, f"{CONTEXT_KEY}.{name}")
    account = env.str("account", check=_ACCOUNT_RE.match, expect="a 12-digit account id")
    region = env.str("region", check=_REGION_RE.match, expect="a region name like 'eu-west-1'")
    if (account is None) != (region is None):
        env.problem(None, "give both account and region, or neither (environment-agnostic stack)")
    removal = env.str("removal_policy", "retain", check=lambda v: v in ("destroy", "retain"),
                      expect="one of 'destroy', 'retain'")
    retention = env.int("log_retention_days", 30, 1, 3653)
    if retention not in LOG_RETENTION_DAYS:
        env.problem("log_retention_days", f"{retention} is not a CloudWatch Logs retention; pick one of "
                                             f"{', '.join(map(str, LOG_RETENTION_DAYS))}")
    email = env.str("alarm_email", check=_EMAIL_RE.match, expect="an e-mail address")
    history_days = env.int("history_days", 400, 1, 36500)
    fn = env.obj("export_function")
    export_function = LambdaConfig(
        memory_mb=fn.int("memory_mb", LambdaConfig.memory_mb, 128, 10240),
        timeout_seconds=fn.int("timeout_seconds", 900, 60, 900),
        ephemeral_storage_mb=fn.int("ephemeral_storage_mb", 2048, 512, 10240),
        reserved_concurrency=fn.int("reserved_concurrency", None, 1, MAX_RESERVED_CONCURRENCY),
    )
    fn.done()
    key_prefix = env.str("key_prefix", "", check=lambda v: v == "" or re.match(r"^[A-Za-z0-9!_.'()/-]+/$", v) is not None
                         and not v.startswith("/"), expect="empty or a key prefix ending in '/' (no '*' or '?')")
    exports = _read_exports(env, root, export_function.timeout_seconds)
    database = env.attempt(lambda: _read_database(env, retain=removal == "retain", root=root), None)
    if database is not None:  # the packaged roots and the database's extra file
        _check_region(env, region, database.ca_bundle_file, root)
    if account and isinstance(database, CreateDatabaseConfig) and not database.availability_zones:
        env.problem("database.availability_zones", "required when account and region are set "
                                                   "(synth must not look them up)")
    dest = env.obj("destination")
    destination = DestinationConfig(
        bucket_name=_destination_name(dest),
        prefix=dest.str("prefix", "", check=_plain_prefix, expect=PLAIN_PREFIX),
        kms_key_arn=dest.str("kms_key_arn", check=_KMS_KEY_ARN_RE.match,
                             expect="a full KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID); aliases resolve in the "
                                    "caller's account, so another account's key needs its ARN"),
        source_prefix=dest.str("source_prefix", "", check=_plain_prefix, expect=PLAIN_PREFIX),
        region=dest.str("region", check=_REGION_RE.match, expect="a region name like 'eu-west-1'"),
    )
    _check_destination_region(dest, destination, region)
    dest.done()
    for export in exports:
        if export.latest_copy and not export_prefix(key_prefix, export.name).startswith(destination.source_prefix):
            env.problem("destination.source_prefix", f"export {export.name!r} has latest_copy, but its workbooks "
                                                     f"({export_prefix(key_prefix, export.name)}) are not copied "
                                                     f"(outside {destination.source_prefix!r})")
        if export.hashes and isinstance(database, ExistingDatabaseConfig) and database.auth == "iam":
            env.problem(f"exports.{export.name}.mask", "sha256 masks need the mask key from Secrets Manager, which "
                        "the export does not reach with database.mode 'existing' and auth 'iam' (no Secrets Manager "
                        "endpoint or egress is set up for it): use redact or last4, or auth 'secret'")
        longest = longest_copy_key(destination.prefix, key_prefix, export.name)
        if len(longest.encode()) > MAX_KEY_BYTES:
            env.problem("destination.prefix", f"with key_prefix and export {export.name!r}, copies get keys of "
                                              f"{len(longest.encode())} bytes, more than S3's {MAX_KEY_BYTES}: "
                                              f"shorten the prefixes or the export's name")
    source_name = env.str("source_bucket_name", check=_BUCKET_RE.match, expect="an S3 bucket name")
    if source_name and source_name == destination.bucket_name:
        env.problem("destination.bucket_name", f"{source_name!r} is the source bucket; "
                                               "the replicator would copy the bucket onto itself")
    env.done()
    env.raise_problems()
    return EnvironmentConfig(
        name=name,
        account=account,
        region=region,
        removal_policy=removal,  # type: ignore[arg-type]
        log_retention_days=retention,
        alarm_email=email,
        export_function=export_function,
        key_prefix=key_prefix,
        exports=exports,
        database=database,
        destination=destination,
        source_bucket_name=source_name,
        history_days=history_days,
    )


def load_environment(context: Mapping[str, Any], name: str | None, *, root: Path = PROJECT_ROOT) -> EnvironmentConfig:
    """Pick environment ``name`` (``dev`` when None) from the app context and validate it.

    ``sql_file`` paths are read from ``root`` (the project folder). Every problem of the environment is
    raised together, one line each."""
    environments = context.get(CONTEXT_KEY)
    if isinstance(environments, str):  # `-c environments=...` on the command line arrives as text
        environments = json.loads(environments)
    if not isinstance(environments, Mapping) or not environments:
        raise ConfigError(f"cdk.json context has no '{CONTEXT_KEY}' object naming the environments")
    name = name or DEFAULT_ENVIRONMENT
    if name not in environments:
        raise ConfigError(f"unknown environment {name!r}; configured: {', '.join(sorted(environments))}")
    return _read_environment(name, environments[name], root)
