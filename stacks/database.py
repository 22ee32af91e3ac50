"""Where the database lives: a new VPC and RDS MySQL instance, or an existing one imported from config."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import ArnFormat, Fn, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import custom_resources as cr
from constructs import Construct

from stacks.custom_resources import sdk_call_resource
from stacks.nag import acknowledge
from stacks.pipeline_function import LOG_RETENTION
from stacks.config import CreateDatabaseConfig, DatabaseConfig, ExistingDatabaseConfig

MYSQL_PORT = 3306
#: The Secrets Manager endpoint's logical id in the first released template (see _create).
LEGACY_SECRETS_ENDPOINT_ID = "ExportToXlsxSecretsManagerEndpoint3A4F0D9C"
#: Logs RDS publishes to CloudWatch Logs (in log groups RDS names and creates itself).
EXPORTED_LOGS = ("error", "slowquery")
#: The slow query log is written (to a file RDS publishes) for statements slower than this.
SLOW_QUERY_SECONDS = 10


@dataclass(frozen=True)
class IamDatabaseAuth:
    """The export logs in as ``user`` with an RDS IAM token; ``resource_id`` is the instance's
    or cluster's DbiResourceId (a token in create mode) that the role's rds-db:connect names."""

    user: str
    resource_id: str


@dataclass(frozen=True)
class SecretDatabaseAuth:
    """The export logs in with the user and password in ``secret`` (a read-only user's).
    ``user`` is set when the stack made the secret for a user it creates."""

    secret: secretsmanager.ISecret
    user: str | None = None


DatabaseAuth = IamDatabaseAuth | SecretDatabaseAuth


class Database(Construct):
    """The database the export reads, and the network around it.

    ``create`` mode default settings:
    - a VPC with isolated subnets only (no NAT gateway, no internet gateway) in two
      availability zones, and a flow log of rejected traffic kept ``log_retention``;
    - RDS MySQL at a major version (``8.4`` by default; RDS picks and upgrades the minor version,
      and a major version changed in config is upgraded), storage encrypted, TLS required by its
      parameter group, IAM authentication on, automated backups;
    - the error and slow query logs (statements over 10 s) published to CloudWatch Logs, whose
      log groups get ``log_retention``;
    - the master password is managed by RDS in Secrets Manager (rotated by RDS, no
      rotation function); only the deploy-time bootstrap reads it; deletion protection from config;
    - the export's own user (``export_user``): with ``auth: iam`` it logs in with an IAM token,
      with ``auth: secret`` with a generated password in a secret of its own (never the master's);
    - a Secrets Manager interface endpoint in both isolated subnets (for the bootstrap, and the export
      with ``auth: secret``) whose security group admits nobody until a construct admits itself;
    - a security group with no ingress: the export construct admits its own group.

    ``existing`` mode imports the VPC, subnets, route tables, availability zones,
    security group, endpoint and secret by id/ARN from config; nothing is looked up,
    nothing is built and nothing runs against the database.

    Exposes ``vpc``, ``subnets``, ``security_group``, ``host``, ``port``,
    ``database_name``, ``export_auth`` and, in create mode, ``instance``,
    ``master_secret``, ``secrets_endpoint`` and ``secrets_endpoint_security_group`` (None in
    existing mode).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DatabaseConfig,
        removal_policy: RemovalPolicy,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        self.instance: rds.CfnDBInstance | None = None
        self.master_secret: secretsmanager.ISecret | None = None
        self.secrets_endpoint: ec2.InterfaceVpcEndpoint | None = None
        self.secrets_endpoint_security_group: ec2.SecurityGroup | None = None
        if isinstance(config, CreateDatabaseConfig):
            self._create(config, removal_policy, log_retention_days)
        elif isinstance(config, ExistingDatabaseConfig):
            self._import(config)
        else:
            raise ValueError(f"unsupported database config {config!r}")

    def _create(self, config: CreateDatabaseConfig, removal_policy: RemovalPolicy,
                log_retention_days: int) -> None:
        flow_log_group = logs.LogGroup(self, "FlowLogs", retention=LOG_RETENTION[log_retention_days],
                                       removal_policy=removal_policy)
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(config.vpc_cidr),
            availability_zones=list(config.availability_zones) or None,
            max_azs=None if config.availability_zones else 2,
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="isolated", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24)
            ],
            flow_logs={
                "rejected": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
                    traffic_type=ec2.FlowLogTrafficType.REJECT,
                )
            },
        )
        self.subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        #: The subnets of the Secrets Manager endpoint and the bootstrap function: both AZs, so neither depends
        #: on one zone.
        self.endpoint_subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        self.security_group = ec2.SecurityGroup(
            self, "SecurityGroup", vpc=self.vpc, allow_all_outbound=False,
            description="MySQL instance: admits only the export function",
        )
        subnet_group = rds.CfnDBSubnetGroup(
            self, "SubnetGroup",
            db_subnet_group_description="Isolated subnets of the export database",
            subnet_ids=self.vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED).subnet_ids,
        )
        parameters = rds.CfnDBParameterGroup(
            self, "Parameters",
            family=f"mysql{config.engine_version}",
            description="Require TLS for every connection; log statements slower than 10 s",
            parameters={
                "require_secure_transport": "1",
                "slow_query_log": "1",
                "long_query_time": str(SLOW_QUERY_SECONDS),
                "log_output": "FILE",
            },
        )
        self.instance = rds.CfnDBInstance(
            self,
            "Instance",
            engine="mysql",
            engine_version=config.engine_version,
            auto_minor_version_upgrade=True,
            allow_major_version_upgrade=True,
            db_instance_class=f"db.{config.instance_type}",
            allocated_storage=str(config.allocated_storage_gb),
            storage_type="gp3",
            storage_encrypted=True,
            db_name=config.database_name,
            master_username="admin",
            manage_master_user_password=True,
            enable_iam_database_authentication=True,
            db_subnet_group_name=subnet_group.ref,
            db_parameter_group_name=parameters.ref,
            vpc_security_groups=[self.security_group.security_group_id],
            publicly_accessible=False,
            multi_az=config.multi_az,
            backup_retention_period=config.backup_retention_days,
            deletion_protection=config.deletion_protection,
            copy_tags_to_snapshot=True,
            enable_cloudwatch_logs_exports=list(EXPORTED_LOGS),
            port=str(MYSQL_PORT),
        )
        # Retained data is snapshotted on delete; a destroyed dev database is just gone.
        self.instance.apply_removal_policy(
            RemovalPolicy.SNAPSHOT if removal_policy == RemovalPolicy.RETAIN else RemovalPolicy.DESTROY
        )
        self._keep_rds_logs(log_retention_days, removal_policy)
        self.host = self.instance.attr_endpoint_address
        self.port = MYSQL_PORT
        self.database_name = config.database_name
        self.master_secret = secretsmanager.Secret.from_secret_complete_arn(
            self, "Secret", self.instance.attr_master_user_secret_secret_arn
        )
        if config.auth == "iam":
            self.export_auth: DatabaseAuth = IamDatabaseAuth(config.export_user, self.instance.attr_dbi_resource_id)
        else:
            export_secret = secretsmanager.Secret(
                self, "ExportUserSecret",
                description=f"Password of the read-only database user {config.export_user} (set by the bootstrap)",
                generate_secret_string=secretsmanager.SecretStringGenerator(
                    secret_string_template=f'{{"username": "{config.export_user}"}}',
                    generate_string_key="password", password_length=32, exclude_punctuation=True,
                ),
                removal_policy=removal_policy,
            )
            self.export_auth = SecretDatabaseAuth(export_secret, config.export_user)
            acknowledge(export_secret, "SMG4",
                        "The bootstrap sets this read-only user's password at deploy; no rotation function runs in "
                        "the isolated VPC. auth 'iam' (the default) needs no stored password at all.")
        # Reached only from inside the VPC (no internet route): one endpoint network interface per subnet, in both
        # availability zones like the bootstrap function, so neither stops with one zone.
        endpoint_sg = ec2.SecurityGroup(
            self, "SecretsEndpointSecurityGroup", vpc=self.vpc, allow_all_outbound=False,
            description="Secrets Manager endpoint: HTTPS from the constructs that admit themselves only",
        )
        self.secrets_endpoint = ec2.InterfaceVpcEndpoint(
            self, "SecretsManagerEndpoint", vpc=self.vpc, service=ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
            subnets=self.endpoint_subnets, private_dns_enabled=True, open=False, security_groups=[endpoint_sg],
        )
        # A VPC holds one private-DNS endpoint per service, and CloudFormation creates a resource under a new
        # logical id before it deletes the old one: keep the id the endpoint had when the export construct
        # owned it, so an update of an existing create-mode stack moves the endpoint instead of failing.
        self.secrets_endpoint.node.default_child.override_logical_id(LEGACY_SECRETS_ENDPOINT_ID)
        self.secrets_endpoint_security_group = endpoint_sg

    def _keep_rds_logs(self, days: int, removal_policy: RemovalPolicy) -> None:
        """RDS creates /aws/rds/instance/<id>/<log> itself, with no retention (log data never expires by
        default): at deploy, create each group if RDS has not yet, then set its retention. The calls may touch
        only this instance's log groups."""
        prefix = Fn.join("", ["/aws/rds/instance/", self.instance.ref, "/"])
        self.log_groups_arn = Stack.of(self).format_arn(
            service="logs", resource="log-group", resource_name=Fn.join("", [prefix, "*"]),
            arn_format=ArnFormat.COLON_RESOURCE_NAME)
        policy = cr.AwsCustomResourcePolicy.from_statements([iam.PolicyStatement(
            actions=["logs:CreateLogGroup", "logs:PutRetentionPolicy", "logs:DeleteLogGroup"],
            resources=[self.log_groups_arn])])
        self.log_group_policies = []
        sdk_logs = dict(log_retention=LOG_RETENTION[days], removal_policy=removal_policy)
        for log in EXPORTED_LOGS:
            name = Fn.join("", [prefix, log])
            group = sdk_call_resource(
                self, f"{log.capitalize()}LogGroup", policy=policy, **sdk_logs,
                on_create=cr.AwsSdkCall(
                    service="CloudWatchLogs", action="createLogGroup", parameters={"logGroupName": name},
                    physical_resource_id=cr.PhysicalResourceId.of(name),
                    ignore_error_codes_matching="ResourceAlreadyExistsException"),
                # a throw-away environment takes its logs with it; a retained one keeps them
                on_delete=cr.AwsSdkCall(
                    service="CloudWatchLogs", action="deleteLogGroup", parameters={"logGroupName": name},
                    ignore_error_codes_matching="ResourceNotFoundException")
                if removal_policy == RemovalPolicy.DESTROY else None,
            )
            set_retention = cr.AwsSdkCall(
                service="CloudWatchLogs", action="putRetentionPolicy",
                parameters={"logGroupName": name, "retentionInDays": days},
                physical_resource_id=cr.PhysicalResourceId.of(name))
            retention = sdk_call_resource(
                self, f"{log.capitalize()}LogRetention", policy=policy, **sdk_logs,
                on_create=set_retention, on_update=set_retention)
            retention.node.add_dependency(group)
            self.log_group_policies += [r.node.find_child("CustomResourcePolicy") for r in (group, retention)]

    def _import(self, config: ExistingDatabaseConfig) -> None:
        self.vpc = ec2.Vpc.from_vpc_attributes(
            self,
            "Vpc",
            vpc_id=config.vpc_id,
            vpc_cidr_block=config.vpc_cidr,
            availability_zones=list(config.availability_zones),
            isolated_subnet_ids=list(config.subnet_ids),
            isolated_subnet_route_table_ids=list(config.route_table_ids),
        )
        self.subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
        self.security_group = ec2.SecurityGroup.from_security_group_id(
            self, "SecurityGroup", config.security_group_id, allow_all_outbound=False, mutable=True
        )
        self.host = config.host
        self.port = config.port
        self.database_name = config.database_name
        if config.auth == "iam":
            self.export_auth = IamDatabaseAuth(config.export_user, config.resource_id)
        else:
            self.export_auth = SecretDatabaseAuth(
                secretsmanager.Secret.from_secret_complete_arn(self, "Secret", config.secret_arn)
            )
