"""The one stack: buckets, database network, the two functions, alarms, outputs and checks."""

from __future__ import annotations

from aws_cdk import (Acknowledgment, App, Aws, CfnOutput, CfnRule, CfnRuleAssertion, Duration, Environment, Fn, RemovalPolicy, Stack,
                     Tags, Validations)
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from cdk_nag import AwsSolutionsChecks
from constructs import Construct

from lambdas.contract import export_prefix
from stacks.bucket_replicator import BucketReplicator
from lambdas.deadline_check.settings import Deadline
from stacks.config import EnvironmentConfig, ExistingDatabaseConfig
from stacks.rds_ca import ca_bundle
from stacks.custom_resources import bound_cdk_custom_resources
from stacks.database import EXPORTED_LOGS, Database
from stacks.db_bootstrap import DatabaseBootstrap
from stacks.deadline_check import DeadlineCheck
from stacks.export_to_xlsx import ExportToXlsx
from stacks.nag import acknowledge, acknowledge_cdk_helper, nag_text
from stacks.pipeline_function import LOG_RETENTION, admit_alarms
from stacks.run_ledger import RunLedger
from stacks.secure_bucket import SecureBucket


#: The ids CDK gives its singleton helper functions in the stack.
AWS_CUSTOM_RESOURCE_ID = "AWS679f53fac002430cb0da5b7982bd2287"



class PipelineStack(Stack):
    """MySQL -> .xlsx -> source bucket -> destination bucket, for one environment."""

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvironmentConfig, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        removal = RemovalPolicy.DESTROY if config.removal_policy == "destroy" else RemovalPolicy.RETAIN
        retention = LOG_RETENTION[config.log_retention_days]

        self.access_logs = SecureBucket(
            self, "AccessLogs", removal_policy=removal, expire_objects_days=max(config.log_retention_days, 90),
        )
        self.source = SecureBucket(
            self, "Source", removal_policy=removal, bucket_name=config.source_bucket_name,
            access_logs_bucket=self.access_logs.bucket, access_logs_prefix="source/",
        )
        if config.destination.bucket_name:
            self.destination_bucket = s3.Bucket.from_bucket_name(
                self, "Destination", config.destination.bucket_name
            )
        else:
            self.destination_bucket = SecureBucket(
                self, "Destination", removal_policy=removal,
                access_logs_bucket=self.access_logs.bucket, access_logs_prefix="destination/",
            ).bucket

        self.alarm_topic = sns.Topic(self, "Alarms", display_name=f"{config.stack_name} alarms", enforce_ssl=True)
        if config.alarm_email:
            self.alarm_topic.add_subscription(subscriptions.EmailSubscription(config.alarm_email))

        self.ledger = RunLedger(self, "RunLedger", removal_policy=removal, history_days=config.history_days)

        self.database = Database(self, "Database", config=config.database, removal_policy=removal,
                                 log_retention_days=config.log_retention_days)
        db = config.database
        existing = isinstance(db, ExistingDatabaseConfig)
        secrets_endpoint_group = s3_endpoint_group = None
        if existing and db.s3_endpoint_security_group_id:
            s3_endpoint_group = ec2.SecurityGroup.from_security_group_id(
                self, "S3EndpointSecurityGroup", db.s3_endpoint_security_group_id, mutable=True)
        if existing and db.secrets_endpoint_security_group_id:
            secrets_endpoint_group = ec2.SecurityGroup.from_security_group_id(
                self, "SecretsEndpointSecurityGroup", db.secrets_endpoint_security_group_id, mutable=True)
        self.bootstrap: DatabaseBootstrap | None = None
        if not existing:
            # Our own VPC's Secrets Manager endpoint is the Database's (the bootstrap reads the master secret
            # through it); the export is admitted to it only if it reads a secret itself.
            reads_secret = db.auth == "secret" or any(e.hashes for e in config.exports)  # a sha256 mask's key
            secrets_endpoint_group = self.database.secrets_endpoint_security_group if reads_secret else None
            self.bootstrap = DatabaseBootstrap(
                self, "DatabaseBootstrap",
                vpc=self.database.vpc,
                subnets=self.database.endpoint_subnets,
                database_security_group=self.database.security_group,
                database_port=self.database.port,
                database_host=self.database.host,
                database_name=self.database.database_name,
                master_secret=self.database.master_secret,
                secrets_endpoint=self.database.secrets_endpoint,
                auth=self.database.export_auth,
                init_sql=db.init_sql,
                ca_bundle_file=db.ca_bundle_file,
                alarm_topic=self.alarm_topic,
                log_retention=retention,
                removal_policy=removal,
            )
        deadlines = [Deadline(e.name, s.name, s.expression, s.time_zone, s.deliver_within_minutes)
                     for e in config.exports for s in e.schedules if s.deliver_within_minutes]
        self.schedule_group: scheduler.CfnScheduleGroup | None = None
        if any(e.schedules for e in config.exports):
            # Every Scheduler schedule of the stack, named after it (schedule groups are per account and region).
            self.schedule_group = scheduler.CfnScheduleGroup(self, "Schedules", name=config.stack_name)
        self.export = ExportToXlsx(
            self,
            "ExportToXlsx",
            source_bucket=self.source.bucket,
            key_prefix=config.key_prefix,
            exports=config.exports,
            vpc=self.database.vpc,
            subnets=self.database.subnets,
            database_security_group=self.database.security_group,
            database_host=self.database.host,
            database_port=self.database.port,
            database_name=self.database.database_name,
            auth=self.database.export_auth,
            ledger=self.ledger,
            alarm_topic=self.alarm_topic,
            log_retention=retention,
            removal_policy=removal,
            memory_mb=config.export_function.memory_mb,
            timeout=Duration.seconds(config.export_function.timeout_seconds),
            ephemeral_storage_mb=config.export_function.ephemeral_storage_mb,
            reserved_concurrency=config.export_function.reserved_concurrency,
            # Our own VPC gets the S3 endpoint, narrowed to the export; a shared VPC only what config asks for.
            endpoints=db.create_endpoints if existing else ("s3", "dynamodb"),
            own_vpc=not existing,
            secrets_endpoint_security_group=secrets_endpoint_group,
            s3_endpoint_security_group=s3_endpoint_group,
            secret_kms_key_arn=db.secret_kms_key_arn if existing else None,
            ca_bundle_file=db.ca_bundle_file,
            schedule_group=self.schedule_group,
        )
        self.replicator = BucketReplicator(
            self,
            "BucketReplicator",
            source_bucket=self.source.bucket,
            destination_bucket=self.destination_bucket,
            source_prefix=config.destination.source_prefix,
            destination_prefix=config.destination.prefix,
            destination_kms_key_arn=config.destination.kms_key_arn,
            ledger=self.ledger,
            exports=[e.name for e in config.exports],
            latest_copies={e.name: export_prefix(config.key_prefix, e.name) for e in config.exports if e.latest_copy},
            alarm_topic=self.alarm_topic,
            log_retention=retention,
            removal_policy=removal,
        )

        self.deadline_check: DeadlineCheck | None = None
        if deadlines:
            self.deadline_check = DeadlineCheck(
                self, "DeadlineCheck", deadlines=deadlines, ledger=self.ledger, group=self.schedule_group,
                alarm_topic=self.alarm_topic, log_retention=retention, removal_policy=removal,
            )

        # Every alarm of the stack, wherever a construct made it, for `pipeline-ops status`.
        alarms = [c for c in self.node.find_all() if isinstance(c, cloudwatch.Alarm)]
        admit_alarms(self.alarm_topic, alarms)  # a topic policy replaces SNS's default: CloudWatch must be let in
        outputs = {
            "SourceBucketName": self.source.bucket.bucket_name,
            "DestinationBucketName": self.destination_bucket.bucket_name,
            "ExportFunctionName": self.export.function.function_name,
            "ReplicatorFunctionName": self.replicator.function.function_name,
            "FailedCopiesQueueUrl": self.replicator.failure_queue.queue_url,
            "FailedExportsQueueUrl": self.export.failure_queue.queue_url,
            "AlarmTopicArn": self.alarm_topic.topic_arn,
            "RunLedgerTableName": self.ledger.table.table_name,
            "ReplicatorRoleArn": self.replicator.role.role_arn,
            "AlarmNames": Fn.join(",", [alarm.alarm_name for alarm in alarms]),
        }
        if config.destination.bucket_name:  # another owner's bucket: what its policies must allow
            outputs["PartnerBucketPolicyStatement"] = self.to_json_string(self.replicator.partner_statements["bucket"])
            if config.destination.kms_key_arn:
                outputs["PartnerKeyPolicyStatement"] = self.to_json_string(self.replicator.partner_statements["key"])
        for name, value in outputs.items():
            CfnOutput(self, name, value=value)

        bound_cdk_custom_resources(self)
        if config.region is None:
            self._require_supported_region(config)
        Tags.of(self).add("project", "mysql-xlsx-pipeline")
        Tags.of(self).add("environment", config.name)
        self._acknowledge(config)

    def _require_supported_region(self, config: EnvironmentConfig) -> None:
        """An environment-agnostic stack learns its region at deploy time: refuse, before anything is
        created, a region whose RDS root certificates the export does not carry (config checks a given region)."""
        regions = sorted(ca_bundle(config.database.ca_bundle_file).regions)
        CfnRule(self, "SupportedRegion", assertions=[CfnRuleAssertion(
            assert_=Fn.condition_contains(regions, Aws.REGION),
            assert_description="The export's Amazon RDS CA bundle has no root certificates for this region, so it "
                               "could not verify the database's TLS certificate. Supported: " + ", ".join(regions),
        )])

    def _acknowledge(self, config: EnvironmentConfig) -> None:
        handler = self.node.try_find_child("BucketNotificationsHandler050a0587b7544547bf325f094a3db834")
        if handler is not None:  # CDK's own singleton that installs the bucket notification
            acknowledge(
                handler.node.find_child("Role"), "IAM4",
                "CDK's bucket-notifications helper runs once per deployment with the basic execution policy.",
                findings=["Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"],
            )
        lookup = self.node.try_find_child(AWS_CUSTOM_RESOURCE_ID)
        if lookup is not None:  # CDK's singleton behind the export's S3 prefix-list lookup
            acknowledge_cdk_helper(lookup, "CDK's AwsCustomResource helper runs at deploy time with the basic "
                                           "execution policy; each call it makes has its own narrow policy (S3 prefix-list lookup, RDS log groups).")
        instance = self.database.instance
        if instance is not None:
            for policy in self.database.log_group_policies:
                acknowledge(
                    policy, "IAM5",
                    "RDS names its log groups after the instance (/aws/rds/instance/<id>/<log>); the deploy-time "
                    "calls may create, delete and set the retention of this instance's groups, nothing else.",
                    findings=[f"Resource::{nag_text(self, self.database.log_groups_arn)}"])
        if instance is not None:
            Validations.of(instance).acknowledge(Acknowledgment(
                id="CloudFormation-Validate::E9006",
                reason="EngineVersion is a major version ('8.4'/'8.0'), which the validator's list of exact versions "
                       "lacks; RDS accepts it and picks a recent minor release (docs.aws.amazon.com/AmazonRDS/latest/"
                       "UserGuide/MySQL.Concepts.VersionMgmt.html), as CDK's own MysqlEngineVersion.VER_8_0 renders it."))
            acknowledge(instance, "RDS11",
                        "The default MySQL port is only reachable from the export function's security group "
                        "inside isolated subnets; a non-standard port adds no protection there.")
            if not instance.multi_az:
                acknowledge(instance, "RDS3", f"{config.name}: a single-AZ instance is enough for this "
                                              "environment (set database.multi_az for production).")
            if not instance.deletion_protection:
                acknowledge(instance, "RDS10", f"{config.name}: a throw-away environment; deletion protection "
                                               "is on wherever removal_policy is 'retain'.")


def add_pipeline(app: App, config: EnvironmentConfig, *, nag: bool = True) -> PipelineStack:
    """Add the environment's stack to ``app``; with ``nag`` the AWS Solutions checks run at synth."""
    env = Environment(account=config.account, region=config.region) if config.account else None
    stack = PipelineStack(app, config.stack_name, config=config, env=env,
                          description=f"MySQL to .xlsx export pipeline ({config.name})")
    if nag:
        Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return stack
