"""ExportToXlsx: the function that turns configured SQL queries into .xlsx files in the source bucket."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

from aws_cdk import ArnFormat, Aws, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import custom_resources as cr
from constructs import Construct

from lambdas import contract as shared
from lambdas.export_to_xlsx import settings as contract
from lambdas.export_to_xlsx.definition import ExportDefinition, encode_exports
from stacks.bundling import EXPORT_BUNDLE, BundleSpec, rds_ca_bundle
from stacks.config import ENDPOINT_NAMES as ENDPOINTS
from stacks.database import DatabaseAuth, IamDatabaseAuth, SecretDatabaseAuth
from stacks.custom_resources import sdk_call_resource
from stacks.deadline_check import scheduler_role, target
from stacks.nag import acknowledge, objects_finding
from stacks.pipeline_function import failure_queue, function_metric_alarm, pipeline_function
from stacks.run_ledger import RunLedger

#: The S3 actions the export needs on its own keys: write an object, abort its multipart uploads.
EXPORT_S3_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload")
#: Lambda needs these to attach the function to the VPC; they do not take a resource.
VPC_ENI_ACTIONS = (
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
)
HTTPS = 443


def export_bundle(exports: Sequence[ExportDefinition], ca_bundle_file: Path | None = None) -> BundleSpec:
    """The function's asset: its code, the RDS CA bundle (with ``ca_bundle_file``'s certificates) and every .sql
    file the exports read (at the same path, ``sql/...``, inside the package), so a changed .sql changes the
    asset hash."""
    files = {path: body for e in exports for path, body in e.sql_files().items()}
    extra = dict(EXPORT_BUNDLE.extra_files)
    if ca_bundle_file is not None:
        extra[shared.CA_BUNDLE_FILE] = lambda: rds_ca_bundle(ca_bundle_file)
    extra.update({path: (lambda body=body: body) for path, body in sorted(files.items())})
    return replace(EXPORT_BUNDLE, extra_files=extra)


class ExportToXlsx(Construct):
    """Runs the configured SQL exports inside the database's VPC and uploads .xlsx files.

    Default settings:
    - the shared function defaults (``stacks.pipeline_function``), in ``subnets`` of ``vpc``
      with a security group of its own whose only egress is the database port, HTTPS to
      S3's managed prefix list (looked up at deploy time) and HTTPS to the Secrets Manager
      endpoint's group (or, with no such group known, the VPC's CIDR);
    - the database security group admits this function's group on the database port;
    - ``endpoints`` lists the VPC endpoints to add (none by default). With
      ``own_vpc`` (a VPC this stack created) they are narrow: the S3 endpoint's policy allows
      only this function's writes and the Secrets Manager endpoint admits only this function.
      In a VPC shared with others they never narrow anyone: the S3 endpoint keeps the full-access
      policy and the Secrets Manager endpoint admits HTTPS from the whole VPC CIDR;
    - ``secrets_endpoint_security_group``: an existing endpoint's group, to which one ingress rule
      for this function is added;
    - ``s3_endpoint_security_group``: the group of an existing S3 *interface* endpoint (which the
      prefix list does not cover): HTTPS egress to it and one ingress rule on it for this function;
    - one EventBridge rule per export with a (UTC) ``schedule``, sending ``{"export": NAME}`` (parameters take
      their defaults, evaluated when the run starts). EventBridge retries delivering the event to
      Lambda up to twice within two hours, then puts it in the failed-exports queue; once Lambda
      has accepted it, a function error follows the function's async invoke config below;
    - one EventBridge Scheduler schedule per entry of an export's ``schedules``, in ``schedule_group``, named
      ``<export>.<schedule>``, in its time zone, flexible time window off, sending ``{"export", "params",
      "schedule": {"name", "scheduled_time"}}``, five retries within two hours, then the failed-exports queue;
      through a role Scheduler alone may assume (this account, this group) that may only invoke this function
      and send to that queue (Scheduler sends dead letters with the schedule's role);
    - SQL from ``.sql`` files bundled into the code asset (``sql/...`` in the package) and
      read at cold start; only their paths are in the environment;
    - no reserved concurrency unless ``reserved_concurrency`` is given; a function error in an
      asynchronous run (scheduled or by hand) gets one async retry within six hours, then the
      event goes to the failed-exports queue (SQS-managed encryption, TLS only, 14 days,
      kept with the stack's data), with an alarm;
    - a role of its own that may only put objects (and abort its multipart uploads) under each
      export's prefix, log in to the database as ``auth`` says, write its logs and traces.
      :class:`IamDatabaseAuth`: it signs an RDS IAM token, may ``rds-db:connect`` as that one
      user of that one database, reads no secret and needs no Secrets Manager endpoint or egress
      to one. :class:`SecretDatabaseAuth`: it reads that one secret (and decrypts it with
      ``secret_kms_key_arn`` through Secrets Manager only);
    - an alarm on any error, sent to ``alarm_topic``;
    - when an export masks a column with ``sha256``: the environment's mask key, a secret of 64 generated
      characters (nobody types or sees it; not rotated, as a new key changes every hash; kept with the stack's
      data), which the role may read and nothing else of Secrets Manager; the function reaches Secrets Manager
      as with ``SecretDatabaseAuth`` (the endpoint's group, or HTTPS to the VPC's CIDR).

    TLS is verified against the packaged Amazon RDS roots plus ``ca_bundle_file``'s certificates.

    Exposes ``bundle`` (what its asset holds), ``mask_key`` (the secret, or None), ``function``, ``role``,
    ``security_group``, ``log_group``, ``rules`` (export name -> rule), ``schedules`` (Scheduler name -> schedule),
    ``scheduler_role`` (or None), ``errors_alarm``, ``failure_queue``, ``failures_alarm``,
    and the endpoints it created as ``s3_endpoint`` / ``secrets_endpoint`` (or None).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        source_bucket: s3.IBucket,
        key_prefix: str,
        exports: Sequence[ExportDefinition],
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        database_security_group: ec2.ISecurityGroup,
        database_host: str,
        database_port: int,
        database_name: str,
        auth: DatabaseAuth,
        ledger: RunLedger,
        alarm_topic: sns.ITopic,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
        memory_mb: int = 1024,
        timeout: Duration = Duration.minutes(15),
        ephemeral_storage_mb: int = 2048,
        reserved_concurrency: int | None = None,
        endpoints: Sequence[str] = (),
        own_vpc: bool = False,
        secrets_endpoint_security_group: ec2.ISecurityGroup | None = None,
        s3_endpoint_security_group: ec2.ISecurityGroup | None = None,
        secret_kms_key_arn: str | None = None,
        ca_bundle_file: Path | None = None,
        schedule_group: scheduler.CfnScheduleGroup | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if not exports:
            raise ValueError("exports must name at least one export")
        names = [e.name for e in exports]
        if len(set(names)) != len(names):
            raise ValueError(f"export names must be unique, got {names}")
        if key_prefix and not key_prefix.endswith("/"):
            raise ValueError(f"key_prefix must be empty or end with '/', got {key_prefix!r}")
        if not 1 <= database_port <= 65535:
            raise ValueError(f"database_port must be a TCP port, got {database_port}")
        unknown = sorted(set(endpoints) - set(ENDPOINTS))
        if unknown:
            raise ValueError(f"endpoints may only name {', '.join(ENDPOINTS)}, got {', '.join(unknown)}")
        if "secretsmanager" in endpoints and secrets_endpoint_security_group is not None:
            raise ValueError("give secrets_endpoint_security_group (an existing endpoint) or create the "
                             "Secrets Manager endpoint, not both")
        if any(e.schedules for e in exports) and schedule_group is None:
            raise ValueError("exports with schedules need a schedule_group")
        if secret_kms_key_arn is not None and ":key/" not in secret_kms_key_arn:
            raise ValueError(f"secret_kms_key_arn must be a KMS key ARN, got {secret_kms_key_arn!r}")
        if isinstance(auth, IamDatabaseAuth):
            auth_env = {contract.ENV_DB_AUTH: "iam", contract.ENV_DB_USER: auth.user}
        elif isinstance(auth, SecretDatabaseAuth):
            auth_env = {contract.ENV_DB_AUTH: "secret", contract.ENV_DB_SECRET_ARN: auth.secret.secret_arn}
        else:
            raise ValueError(f"auth must be IamDatabaseAuth or SecretDatabaseAuth, got {auth!r}")
        # An IAM token is signed without any call: with it only a sha256 mask's key is read from Secrets Manager.
        hashes = any(e.hashes for e in exports)
        reads_secret = isinstance(auth, SecretDatabaseAuth) or hashes
        if not reads_secret and ("secretsmanager" in endpoints or secrets_endpoint_security_group is not None
                                 or secret_kms_key_arn is not None):
            raise ValueError("with IAM database auth the export reads no secret (and no export has a sha256 mask): "
                             "no Secrets Manager endpoint, endpoint group or secret KMS key")
        if secret_kms_key_arn is not None and not isinstance(auth, SecretDatabaseAuth):
            raise ValueError("secret_kms_key_arn is the database secret's key: only with SecretDatabaseAuth")
        self.mask_key: secretsmanager.Secret | None = None
        if hashes:
            self.mask_key = secretsmanager.Secret(
                self, "MaskKey",
                description="Key of the export's sha256 column masks (HMAC-SHA256); a new value changes every hash",
                generate_secret_string=secretsmanager.SecretStringGenerator(password_length=64,
                                                                            exclude_punctuation=True),
                removal_policy=removal_policy,
            )
            acknowledge(self.mask_key, "SMG4",
                        "The key of keyed hashes that must stay the same across workbooks so masked columns join; "
                        "rotating it would change every hash. It is generated at deploy and read only by the export.")
            auth_env[contract.ENV_MASK_KEY_SECRET_ARN] = self.mask_key.secret_arn

        self.security_group = ec2.SecurityGroup(
            self, "SecurityGroup", vpc=vpc, allow_all_outbound=False,
            description="ExportToXlsx function: the database port, and HTTPS to S3 and Secrets Manager only",
        )
        database_security_group.add_ingress_rule(
            self.security_group, ec2.Port.tcp(database_port), "ExportToXlsx function"
        )
        self.security_group.add_egress_rule(
            database_security_group, ec2.Port.tcp(database_port), "The export database"
        )
        self.security_group.add_egress_rule(
            ec2.Peer.prefix_list(self._s3_prefix_list_id(log_retention, removal_policy)), ec2.Port.tcp(HTTPS),
            "HTTPS to S3 (its managed prefix list: through the gateway endpoint or a NAT)",
        )
        if s3_endpoint_security_group is not None:  # an S3 interface endpoint: its addresses are the VPC's own
            s3_endpoint_security_group.add_ingress_rule(
                self.security_group, ec2.Port.tcp(HTTPS), "ExportToXlsx function")
            self.security_group.add_egress_rule(
                s3_endpoint_security_group, ec2.Port.tcp(HTTPS), "HTTPS to the S3 interface endpoint")
        self.security_group.add_egress_rule(
            ec2.Peer.prefix_list(self._prefix_list_id("dynamodb", "DynamoDbPrefixList", log_retention, removal_policy)), ec2.Port.tcp(HTTPS),
            "HTTPS to DynamoDB, the run ledger (its managed prefix list: through the gateway endpoint or a NAT)",
        )

        failures = failure_queue(
            self, "FailedExports", alarm_topic=alarm_topic, removal_policy=removal_policy,
            description="A scheduled or asynchronous export failed after its retries: the event waits in the "
                        "failed-exports queue to be run again",
        )
        self.failure_queue, self.failures_alarm = failures.queue, failures.alarm

        self.bundle = export_bundle(exports, ca_bundle_file)
        built = pipeline_function(
            self,
            bundle=self.bundle,
            description="Runs the configured SQL exports and uploads each result as .xlsx",
            role_description="ExportToXlsx: write its exports, log in to the database as its read-only user",
            errors_description="An export failed: no workbook was uploaded for it",
            environment={
                contract.ENV_SOURCE_BUCKET: source_bucket.bucket_name,
                contract.ENV_KEY_PREFIX: key_prefix,
                **auth_env,
                contract.ENV_DB_HOST: database_host,
                contract.ENV_DB_PORT: str(database_port),
                contract.ENV_DB_NAME: database_name,
                contract.ENV_DB_TLS: "verify",
                contract.ENV_EXPORTS: encode_exports(exports),
                contract.ENV_LEDGER_TABLE: ledger.table.table_name,
                contract.ENV_HISTORY_DAYS: str(ledger.history_days),
            },
            alarm_topic=alarm_topic,
            log_retention=log_retention,
            removal_policy=removal_policy,
            memory_mb=memory_mb,
            timeout=timeout,
            ephemeral_storage_mb=ephemeral_storage_mb,
            reserved_concurrency=reserved_concurrency,
            retry_attempts=1,
            max_event_age=Duration.hours(6),
            on_failure=self.failure_queue,
            vpc=vpc,
            subnets=subnets,
            security_groups=[self.security_group],
        )
        self.function, self.role = built.function, built.role
        self.log_group, self.errors_alarm = built.log_group, built.errors_alarm

        object_arns = [source_bucket.arn_for_objects(shared.export_prefix(key_prefix, name) + "*") for name in names]
        self.role.add_to_policy(iam.PolicyStatement(actions=list(EXPORT_S3_ACTIONS), resources=object_arns))
        ledger.grant_run_writes(self.role, names)
        self.ledger_alarm = function_metric_alarm(
            self, "LedgerWritesFailedAlarm", topic=alarm_topic, function=self.function,
            metric_name=shared.METRIC_LEDGER_NOT_WRITTEN,
            description="A run could not be recorded in the run ledger (the run's outcome stands); the "
                        "function's log names the export and run id",
        )
        if isinstance(auth, IamDatabaseAuth):
            self.role.add_to_policy(iam.PolicyStatement(actions=["rds-db:connect"], resources=[db_user_arn(self, auth)]))
        else:
            self.role.add_to_policy(
                iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[auth.secret.secret_arn])
            )
        if self.mask_key is not None:
            self.role.add_to_policy(
                iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[self.mask_key.secret_arn]))
        if secret_kms_key_arn:
            self.role.add_to_policy(iam.PolicyStatement(
                actions=["kms:Decrypt"], resources=[secret_kms_key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"secretsmanager.{Stack.of(self).region}.amazonaws.com"}},
            ))
        self.role.add_to_policy(iam.PolicyStatement(actions=list(VPC_ENI_ACTIONS), resources=["*"]))

        self.s3_endpoint: ec2.GatewayVpcEndpoint | None = None
        self.secrets_endpoint: ec2.InterfaceVpcEndpoint | None = None
        self.dynamodb_endpoint: ec2.GatewayVpcEndpoint | None = None
        if "dynamodb" in endpoints:
            self.dynamodb_endpoint = ec2.GatewayVpcEndpoint(
                self, "DynamoDbEndpoint", vpc=vpc, service=ec2.GatewayVpcEndpointAwsService.DYNAMODB,
                subnets=[subnets],
            )
            if own_vpc:  # nobody else routes through it: only the ledger writes
                self.dynamodb_endpoint.add_to_policy(iam.PolicyStatement(
                    principals=[iam.AnyPrincipal()], actions=["dynamodb:UpdateItem"],
                    resources=[ledger.table.table_arn]))
        if "s3" in endpoints:
            self.s3_endpoint = ec2.GatewayVpcEndpoint(
                self, "S3Endpoint", vpc=vpc, service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[subnets],
            )
            if own_vpc:  # nobody else routes through it
                self.s3_endpoint.add_to_policy(iam.PolicyStatement(
                    principals=[iam.AnyPrincipal()], actions=list(EXPORT_S3_ACTIONS), resources=object_arns))
        if "secretsmanager" in endpoints:
            endpoint_sg = ec2.SecurityGroup(
                self, "SecretsEndpointSecurityGroup", vpc=vpc, allow_all_outbound=False,
                description="Secrets Manager endpoint: HTTPS from the export function" if own_vpc
                else "Secrets Manager endpoint: HTTPS from the whole VPC (its private DNS serves every caller)",
            )
            self.secrets_endpoint = ec2.InterfaceVpcEndpoint(
                self, "SecretsManagerEndpoint", vpc=vpc,
                service=ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
                subnets=subnets, private_dns_enabled=True, open=False, security_groups=[endpoint_sg],
            )
            if own_vpc:
                endpoint_sg.add_ingress_rule(self.security_group, ec2.Port.tcp(HTTPS), "ExportToXlsx function")
            else:
                endpoint_sg.add_ingress_rule(ec2.Peer.ipv4(vpc.vpc_cidr_block), ec2.Port.tcp(HTTPS),
                                             "Every caller in the VPC")
            secrets_endpoint_security_group = endpoint_sg
        elif secrets_endpoint_security_group is not None:
            secrets_endpoint_security_group.add_ingress_rule(
                self.security_group, ec2.Port.tcp(HTTPS), "ExportToXlsx function")
        if secrets_endpoint_security_group is not None:
            self.security_group.add_egress_rule(
                secrets_endpoint_security_group, ec2.Port.tcp(HTTPS), "The Secrets Manager endpoint")
        elif reads_secret:
            self.security_group.add_egress_rule(
                ec2.Peer.ipv4(vpc.vpc_cidr_block), ec2.Port.tcp(HTTPS),
                "HTTPS to the Secrets Manager endpoint in the VPC (its group is not known to the stack)")

        self.rules: dict[str, events.Rule] = {}
        for export in exports:
            if export.schedule is None:
                continue
            self.rules[export.name] = events.Rule(
                self,
                f"Schedule-{export.name}",
                description=f"Run the {export.name!r} export",
                schedule=events.Schedule.expression(export.schedule),
                targets=[
                    targets.LambdaFunction(
                        self.function,
                        event=events.RuleTargetInput.from_object({shared.EVENT_EXPORT: export.name}),
                        retry_attempts=2,
                        max_event_age=Duration.hours(2),
                        dead_letter_queue=self.failure_queue,
                    )
                ],
            )

        self.schedules: dict[str, scheduler.CfnSchedule] = {}
        self.scheduler_role: iam.Role | None = None
        for export in exports:
            for entry in export.schedules:
                if self.scheduler_role is None:
                    self.scheduler_role = scheduler_role(
                        self, "SchedulerRole", group=schedule_group,
                        description="EventBridge Scheduler: run the export function on the exports' schedules")
                    self.scheduler_role.add_to_policy(iam.PolicyStatement(
                        actions=["lambda:InvokeFunction"], resources=[self.function.function_arn]))
                    self.scheduler_role.add_to_policy(iam.PolicyStatement(
                        actions=["sqs:SendMessage"], resources=[self.failure_queue.queue_arn]))
                name = entry.scheduler_name(export.name)
                payload = {shared.EVENT_EXPORT: export.name, shared.EVENT_PARAMS: dict(entry.params),
                           shared.EVENT_SCHEDULE: {shared.SCHEDULE_NAME: entry.name,
                                                   shared.SCHEDULE_TIME: shared.SCHEDULED_TIME_ATTRIBUTE}}
                deadline = (f"; due {entry.deliver_within_minutes} min later" if entry.deliver_within_minutes
                            else "")
                self.schedules[name] = scheduler.CfnSchedule(
                    self, f"Schedule-{name}", name=name, group_name=schedule_group.ref,
                    description=f"Run the {export.name!r} export: {entry.expression} in {entry.time_zone}{deadline}",
                    schedule_expression=entry.expression, schedule_expression_timezone=entry.time_zone,
                    flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
                    target=target(self.function.function_arn, self.scheduler_role, self.failure_queue.queue_arn,
                                  payload, retry_attempts=5, max_event_age=Duration.hours(2)),
                )

        acknowledge(
            self.role.node.find_child("DefaultPolicy"), "IAM5",
            "Each export writes new keys under its own prefix (<export>/YYYY/MM/DD/...), so the grant is "
            "the prefix; the actions are only PutObject and AbortMultipartUpload.",
            findings=[objects_finding(source_bucket, shared.export_prefix(key_prefix, name) + "*") for name in names],
        )
        acknowledge(
            self.role.node.find_child("DefaultPolicy"), "IAM5",
            "Resource '*' only for actions that take no resource: the VPC network-interface actions Lambda "
            "needs to attach the function, and X-Ray PutTraceSegments/PutTelemetryRecords.",
            findings=["Resource::*"],
        )

    def _s3_prefix_list_id(self, log_retention: logs.RetentionDays, removal_policy: RemovalPolicy) -> str:
        return self._prefix_list_id("s3", "S3PrefixList", log_retention, removal_policy)

    def _prefix_list_id(self, service: str, construct_id: str, log_retention: logs.RetentionDays,
                        removal_policy: RemovalPolicy) -> str:
        """A service's managed prefix list in the stack's region, looked up at deploy time (never at synth)."""
        call = cr.AwsSdkCall(
            service="EC2",
            action="describeManagedPrefixLists",
            parameters={"Filters": [{"Name": "prefix-list-name", "Values": [f"com.amazonaws.{Aws.REGION}.{service}"]}]},
            physical_resource_id=cr.PhysicalResourceId.of(f"{service}-prefix-list-{Aws.REGION}"),
            output_paths=["PrefixLists.0.PrefixListId"],
        )
        lookup = sdk_call_resource(
            self, construct_id, on_create=call, on_update=call, log_retention=log_retention,
            removal_policy=removal_policy,
            policy=cr.AwsCustomResourcePolicy.from_statements([iam.PolicyStatement(
                actions=["ec2:DescribeManagedPrefixLists"], resources=["*"])]),
        )
        acknowledge(
            lookup.node.find_child("CustomResourcePolicy"), "IAM5",
            f"ec2:DescribeManagedPrefixLists takes no resource; it only reads {service}'s prefix list id at deploy time.",
            findings=["Resource::*"],
        )
        return lookup.get_response_field("PrefixLists.0.PrefixListId")


def db_user_arn(scope: Construct, auth: IamDatabaseAuth) -> str:
    """``arn:<partition>:rds-db:<region>:<account>:dbuser:<DbiResourceId>/<user>``: what rds-db:connect names."""
    return Stack.of(scope).format_arn(
        service="rds-db", resource="dbuser", resource_name=f"{auth.resource_id}/{auth.user}",
        arn_format=ArnFormat.COLON_RESOURCE_NAME,
    )
