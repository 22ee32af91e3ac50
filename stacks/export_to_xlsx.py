"""ExportToXlsx: the function that turns configured SQL queries into .xlsx files in the source bucket."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from aws_cdk import Duration, RemovalPolicy, Size
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from constructs import Construct

from lambdas.export_to_xlsx import settings as contract
from stacks.bundling import ARCHITECTURE, EXPORT_BUNDLE, RUNTIME, BundleSpec, function_code
from stacks.config import ExportConfig
from stacks.nag import acknowledge, objects_finding

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


def export_bundle(exports: Sequence[ExportConfig]) -> BundleSpec:
    """The function's asset: its code, the RDS CA bundle and every .sql file the exports read
    (at the same path, ``sql/...``, inside the package), so a changed .sql changes the asset hash."""
    files = {path: body for e in exports for path, body in e.sql_files().items()}
    extra = dict(EXPORT_BUNDLE.extra_files)
    extra.update({path: (lambda body=body: body) for path, body in sorted(files.items())})
    return replace(EXPORT_BUNDLE, extra_files=extra)


class ExportToXlsx(Construct):
    """Runs the configured SQL exports inside the database's VPC and uploads .xlsx files.

    Default settings:
    - Python 3.14 on ARM64, in ``subnets`` of ``vpc`` with its own security group that
      may reach only the database port and HTTPS (the subnets have no internet route);
    - the database security group admits this function's group on the database port;
    - an S3 gateway endpoint (policy: only this function's writes to the source bucket)
      and a Secrets Manager interface endpoint, unless ``create_endpoints`` is False;
    - one EventBridge rule per scheduled export, sending ``{"export": NAME}`` (parameters
      take their defaults, evaluated when the run starts);
    - SQL from ``.sql`` files bundled into the code asset (``sql/...`` in the package) and
      read at cold start; only their paths are in the environment;
    - reserved concurrency 1, so two runs of one export never race; one async retry;
    - a role of its own that may only put objects (and abort its multipart uploads)
      under each export's prefix, read the one secret, write its logs and traces;
    - JSON logs in a log group with ``log_retention``; X-Ray active tracing;
    - an alarm on any error, sent to ``alarm_topic``.

    Exposes ``function``, ``role``, ``security_group``, ``log_group``, ``rules``
    (export name -> rule) and ``errors_alarm``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        source_bucket: s3.IBucket,
        key_prefix: str,
        exports: Sequence[ExportConfig],
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        database_security_group: ec2.ISecurityGroup,
        database_host: str,
        database_port: int,
        database_name: str,
        secret: secretsmanager.ISecret,
        alarm_topic: sns.ITopic,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
        memory_mb: int = 1024,
        timeout: Duration = Duration.minutes(15),
        ephemeral_storage_mb: int = 2048,
        create_endpoints: bool = True,
    ) -> None:
        super().__init__(scope, construct_id)
        if not exports:
            raise ValueError("exports must name at least one export")
        names = [e.name for e in exports]
        if len(set(names)) != len(names):
            raise ValueError(f"export names must be unique, got {names}")
        for export in exports:
            contract.check_export_name(export.name)
        if key_prefix and not key_prefix.endswith("/"):
            raise ValueError(f"key_prefix must be empty or end with '/', got {key_prefix!r}")
        if not 1 <= database_port <= 65535:
            raise ValueError(f"database_port must be a TCP port, got {database_port}")
        if not 128 <= memory_mb <= 10240 or not 512 <= ephemeral_storage_mb <= 10240:
            raise ValueError("memory_mb must be 128..10240 and ephemeral_storage_mb 512..10240")

        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention, removal_policy=removal_policy)

        self.security_group = ec2.SecurityGroup(
            self, "SecurityGroup", vpc=vpc, allow_all_outbound=False,
            description="ExportToXlsx function: database port and HTTPS to the VPC endpoints only",
        )
        self.security_group.add_egress_rule(
            ec2.Peer.any_ipv4(), ec2.Port.tcp(443),
            "HTTPS to the S3 gateway and Secrets Manager endpoints (the subnets have no internet route)",
        )
        database_security_group.add_ingress_rule(
            self.security_group, ec2.Port.tcp(database_port), "ExportToXlsx function"
        )
        self.security_group.add_egress_rule(
            database_security_group, ec2.Port.tcp(database_port), "The export database"
        )

        self.role = iam.Role(
            self, "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="ExportToXlsx: write its exports, read the database secret",
        )
        object_arns = [source_bucket.arn_for_objects(f"{key_prefix}{name}/*") for name in names]
        self.role.add_to_policy(iam.PolicyStatement(actions=list(EXPORT_S3_ACTIONS), resources=object_arns))
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[secret.secret_arn])
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[self.log_group.log_group_arn]
            )
        )
        self.role.add_to_policy(iam.PolicyStatement(actions=list(VPC_ENI_ACTIONS), resources=["*"]))

        if create_endpoints:
            self.s3_endpoint = ec2.GatewayVpcEndpoint(
                self, "S3Endpoint", vpc=vpc, service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[subnets],
            )
            self.s3_endpoint.add_to_policy(
                iam.PolicyStatement(
                    principals=[iam.AnyPrincipal()], actions=list(EXPORT_S3_ACTIONS), resources=object_arns
                )
            )
            endpoint_sg = ec2.SecurityGroup(
                self, "SecretsEndpointSecurityGroup", vpc=vpc, allow_all_outbound=False,
                description="Secrets Manager endpoint: HTTPS from the export function only",
            )
            self.secrets_endpoint = ec2.InterfaceVpcEndpoint(
                self, "SecretsManagerEndpoint", vpc=vpc,
                service=ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
                subnets=subnets, private_dns_enabled=True, open=False, security_groups=[endpoint_sg],
            )
            self.secrets_endpoint.connections.allow_default_port_from(self.security_group, "ExportToXlsx function")

        self.function = lambda_.Function(
            self,
            "Function",
            description="Runs the configured SQL exports and uploads each result as .xlsx",
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=f"{EXPORT_BUNDLE.package}.handler.handler",
            code=function_code(export_bundle(exports)),
            role=self.role,
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[self.security_group],
            allow_public_subnet=False,
            memory_size=memory_mb,
            timeout=timeout,
            ephemeral_storage_size=Size.mebibytes(ephemeral_storage_mb),
            reserved_concurrent_executions=1,
            retry_attempts=1,
            max_event_age=Duration.hours(6),
            tracing=lambda_.Tracing.ACTIVE,
            logging_format=lambda_.LoggingFormat.JSON,
            application_log_level_v2=lambda_.ApplicationLogLevel.INFO,
            system_log_level_v2=lambda_.SystemLogLevel.WARN,
            log_group=self.log_group,
            environment={
                contract.ENV_SOURCE_BUCKET: source_bucket.bucket_name,
                contract.ENV_KEY_PREFIX: key_prefix,
                contract.ENV_DB_SECRET_ARN: secret.secret_arn,
                contract.ENV_DB_HOST: database_host,
                contract.ENV_DB_PORT: str(database_port),
                contract.ENV_DB_NAME: database_name,
                contract.ENV_DB_TLS: "verify",
                contract.ENV_EXPORTS: contract.encode_exports([e.definition() for e in exports]),
            },
        )

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
                        event=events.RuleTargetInput.from_object({"export": export.name}),
                        retry_attempts=2,
                        max_event_age=Duration.hours(2),
                    )
                ],
            )

        self.errors_alarm = cloudwatch.Alarm(
            self, "ErrorsAlarm",
            alarm_description="An export failed: no workbook was uploaded for it",
            metric=self.function.metric_errors(period=Duration.minutes(5), statistic="Sum"),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.errors_alarm.add_alarm_action(cw_actions.SnsAction(alarm_topic))

        acknowledge(
            self.role.node.find_child("DefaultPolicy"), "IAM5",
            "Each export writes new keys under its own prefix (<export>/YYYY/MM/DD/...), so the grant is "
            "the prefix; the actions are only PutObject and AbortMultipartUpload.",
            findings=[objects_finding(source_bucket, f"{key_prefix}{name}/*") for name in names],
        )
        acknowledge(
            self.role.node.find_child("DefaultPolicy"), "IAM5",
            "Resource '*' only for actions that take no resource: the VPC network-interface actions Lambda "
            "needs to attach the function, and X-Ray PutTraceSegments/PutTelemetryRecords.",
            findings=["Resource::*"],
        )
