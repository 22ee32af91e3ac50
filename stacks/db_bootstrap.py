"""DatabaseBootstrap: at deploy, make a created database usable by the export (create mode only)."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CustomResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from aws_cdk import custom_resources as cr
from constructs import Construct

from lambdas.contract import CA_BUNDLE_FILE
from lambdas.db_bootstrap import settings as contract
from stacks.bundling import BundleSpec, rds_ca_bundle
from stacks.custom_resources import service_timeout
from stacks.database import DatabaseAuth, IamDatabaseAuth, SecretDatabaseAuth
from stacks.export_to_xlsx import VPC_ENI_ACTIONS
from stacks.nag import acknowledge, acknowledge_cdk_helper, nag_text
from stacks.pipeline_function import pipeline_function

RESOURCE_TYPE = "Custom::DatabaseBootstrap"
#: The bootstrap finishes, or fails with its own message, within this (each statement is stopped before it).
BOOTSTRAP_TIMEOUT = Duration.minutes(3)
#: CDK's provider framework (aws-cdk-lib custom-resources/lib/provider-framework): its function runs at most
#: 15 minutes; when invoking the bootstrap throws (the function not yet active, a lost connection), it waits up
#: to 5 minutes for the function to be active and invokes it once more. Both runs and the wait fit in its time.
FRAMEWORK_TIMEOUT = Duration.minutes(15)
FRAMEWORK_ACTIVE_WAIT = Duration.minutes(5)


def bootstrap_bundle(init_sql: Path | None, ca_bundle_file: Path | None = None) -> BundleSpec:
    """The bootstrap's asset: its code, the RDS CA bundle (with ``ca_bundle_file``'s certificates) and, when
    configured, the init SQL file."""
    extra = {CA_BUNDLE_FILE: lambda: rds_ca_bundle(ca_bundle_file)}
    if init_sql is not None:
        extra[contract.INIT_SQL_FILE] = init_sql.read_bytes
    return BundleSpec(package="db_bootstrap", extra_files=extra)


class DatabaseBootstrap(Construct):
    """A deploy-time custom resource that creates the export's database user and applies the init SQL.

    Default settings:
    - the shared function defaults (``stacks.pipeline_function``), in ``subnets`` (those of the
      Secrets Manager endpoint, one per availability zone) with a security group that reaches only the database
      port and the endpoint's HTTPS; an alarm on its errors, sent to ``alarm_topic``;
    - its role is the only one that may read ``master_secret`` (and, with secret auth, the
      export user's secret, to set that password); nothing else; logs with ``log_retention``;
    - connects as the master user over TLS verified against the bundled RDS CA, and creates
      ``auth``'s user with ``REQUIRE SSL`` and ``SELECT`` on ``database_name`` only;
    - applies ``init_sql`` (a file, bundled into the function) once per content;
    - serves only ``auth``'s user, auth mode and secret, set in its environment at synth: an invoke
      asking for another is refused before any secret is read;
    - runs again whenever the user, auth mode, init SQL, its own code or the database it serves
      (host, port, name, master secret: a replaced instance) changes; on stack delete it does
      nothing (no user, table or row is dropped);
    - CDK's provider framework answers CloudFormation (the function has no route to the
      response URL); the answer holds booleans and a checksum, never a credential;
    - bounded: the function stops within ``BOOTSTRAP_TIMEOUT`` (3 minutes; a statement still
      running near the end fails with its own message), which the framework's 15 minutes hold
      twice over with its wait, and CloudFormation waits 16 minutes at most for the answer.

    Raises ValueError on an empty init SQL file. Exposes ``function``, ``role``,
    ``security_group``, ``log_group``, ``errors_alarm``, ``provider`` and ``resource``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        database_security_group: ec2.ISecurityGroup,
        database_port: int,
        database_host: str,
        database_name: str,
        master_secret: secretsmanager.ISecret,
        secrets_endpoint: ec2.InterfaceVpcEndpoint,
        auth: DatabaseAuth,
        alarm_topic: sns.ITopic,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
        init_sql: Path | None = None,
        ca_bundle_file: Path | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if init_sql is not None and not init_sql.read_text(encoding="utf-8").strip():
            raise ValueError(f"init_sql {init_sql} is empty")
        if isinstance(auth, IamDatabaseAuth):
            user, auth_mode, export_secret = auth.user, "iam", None
        elif isinstance(auth, SecretDatabaseAuth) and auth.user:
            user, auth_mode, export_secret = auth.user, "secret", auth.secret
        else:
            raise ValueError(f"auth must be IamDatabaseAuth, or SecretDatabaseAuth naming its user, got {auth!r}")

        self.security_group = ec2.SecurityGroup(
            self, "SecurityGroup", vpc=vpc, allow_all_outbound=False,
            description="Database bootstrap: the database port and the Secrets Manager endpoint only",
        )
        database_security_group.add_ingress_rule(
            self.security_group, ec2.Port.tcp(database_port), "Database bootstrap (deploy time)"
        )
        self.security_group.add_egress_rule(database_security_group, ec2.Port.tcp(database_port), "The database")
        secrets_endpoint.connections.allow_default_port_from(self.security_group, "Database bootstrap")

        bundle = bootstrap_bundle(init_sql, ca_bundle_file)
        built = pipeline_function(
            self,
            bundle=bundle,
            description="Deploy time: creates the export's read-only database user and applies the init SQL",
            role_description="Database bootstrap: read the master secret, create the export's read-only user",
            errors_description="The database bootstrap failed: the deploy stopped (see the stack's events)",
            environment={
                contract.ENV_MASTER_SECRET_ARN: master_secret.secret_arn,
                contract.ENV_DB_HOST: database_host,
                contract.ENV_DB_PORT: str(database_port),
                contract.ENV_DB_NAME: database_name,
                contract.ENV_DB_TLS: "verify",
                contract.ENV_EXPORT_USER: user,
                contract.ENV_EXPORT_AUTH: auth_mode,
                **({contract.ENV_EXPORT_SECRET_ARN: export_secret.secret_arn} if export_secret is not None else {}),
            },
            alarm_topic=alarm_topic,
            log_retention=log_retention,
            removal_policy=removal_policy,
            memory_mb=256,
            timeout=BOOTSTRAP_TIMEOUT,
            retry_attempts=0,  # called synchronously by the provider framework, never queued
            max_event_age=Duration.hours(1),
            vpc=vpc,
            subnets=subnets,
            security_groups=[self.security_group],
        )
        self.function, self.role = built.function, built.role
        self.log_group, self.errors_alarm = built.log_group, built.errors_alarm
        secrets = [master_secret] + ([export_secret] if export_secret is not None else [])
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["secretsmanager:GetSecretValue"], resources=[s.secret_arn for s in secrets]))
        self.role.add_to_policy(iam.PolicyStatement(actions=list(VPC_ENI_ACTIONS), resources=["*"]))

        provider_logs = logs.LogGroup(self, "ProviderLogs", retention=log_retention, removal_policy=removal_policy)
        self.provider = cr.Provider(self, "Provider", on_event_handler=self.function, log_group=provider_logs)
        properties = {
            contract.PROP_EXPORT_USER: user,
            contract.PROP_AUTH: auth_mode,
            contract.PROP_INIT_SQL_SHA256: contract.sha256(init_sql.read_text(encoding="utf-8")) if init_sql else "",
            contract.PROP_CODE_HASH: bundle.asset_hash(),
            # The database's identity: a change that replaces the instance runs the bootstrap on the new one.
            contract.PROP_DB_HOST: database_host,
            contract.PROP_DB_PORT: str(database_port),
            contract.PROP_DB_NAME: database_name,
            contract.PROP_MASTER_SECRET_ARN: master_secret.secret_arn,
        }
        if export_secret is not None:
            properties[contract.PROP_EXPORT_SECRET_ARN] = export_secret.secret_arn
        self.resource = CustomResource(
            self, "Resource", service_token=self.provider.service_token, resource_type=RESOURCE_TYPE,
            properties=properties,
            # CloudFormation waits for the framework's answer this long at most, not its default hour.
            service_timeout=service_timeout(FRAMEWORK_TIMEOUT),
        )
        # Run only once the network path is complete: the endpoint and every rule of the groups involved.
        for construct in (secrets_endpoint, *secrets_endpoint.connections.security_groups, database_security_group,
                          self.security_group):
            self.resource.node.add_dependency(construct)

        acknowledge(
            self.role.node.find_child("DefaultPolicy"), "IAM5",
            "Resource '*' only for the VPC network-interface actions Lambda needs to attach the function.",
            findings=["Resource::*"],
        )
        acknowledge_cdk_helper(
            self.provider.node.find_child("framework-onEvent"),
            "CDK's custom resource provider framework runs only at deploy, with the basic execution policy, and "
            "may invoke the bootstrap function and its versions only.",
            wildcard_findings=[f"Resource::{nag_text(Stack.of(self), self.function.function_arn)}:*"],
        )
