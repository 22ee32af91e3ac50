"""The one stack: buckets, database network, the two functions, alarms, outputs and checks."""

from __future__ import annotations

from aws_cdk import App, CfnOutput, Duration, Environment, RemovalPolicy, Stack, Tags, Validations
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from cdk_nag import AwsSolutionsChecks
from constructs import Construct

from stacks.bucket_replicator import BucketReplicator
from stacks.config import EnvironmentConfig, ExistingDatabaseConfig
from stacks.database import Database
from stacks.export_to_xlsx import ExportToXlsx
from stacks.nag import acknowledge
from stacks.secure_bucket import SecureBucket


_R = logs.RetentionDays
RETENTION = {
    1: _R.ONE_DAY, 3: _R.THREE_DAYS, 5: _R.FIVE_DAYS, 7: _R.ONE_WEEK, 14: _R.TWO_WEEKS, 30: _R.ONE_MONTH,
    60: _R.TWO_MONTHS, 90: _R.THREE_MONTHS, 120: _R.FOUR_MONTHS, 150: _R.FIVE_MONTHS, 180: _R.SIX_MONTHS,
    365: _R.ONE_YEAR, 400: _R.THIRTEEN_MONTHS, 545: _R.EIGHTEEN_MONTHS, 731: _R.TWO_YEARS, 1096: _R.THREE_YEARS,
    1827: _R.FIVE_YEARS, 2192: _R.SIX_YEARS, 2557: _R.SEVEN_YEARS, 2922: _R.EIGHT_YEARS, 3288: _R.NINE_YEARS,
    3653: _R.TEN_YEARS,
}


class PipelineStack(Stack):
    """MySQL -> .xlsx -> source bucket -> destination bucket, for one environment."""

    def __init__(self, scope: Construct, construct_id: str, *, config: EnvironmentConfig, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        removal = RemovalPolicy.DESTROY if config.removal_policy == "destroy" else RemovalPolicy.RETAIN
        retention = RETENTION[config.log_retention_days]

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

        self.database = Database(self, "Database", config=config.database, removal_policy=removal,
                                 log_retention=retention)
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
            secret=self.database.secret,
            alarm_topic=self.alarm_topic,
            log_retention=retention,
            removal_policy=removal,
            memory_mb=config.export_function.memory_mb,
            timeout=Duration.seconds(config.export_function.timeout_seconds),
            ephemeral_storage_mb=config.export_function.ephemeral_storage_mb,
            create_endpoints=not isinstance(config.database, ExistingDatabaseConfig)
            or config.database.create_endpoints,
        )
        self.replicator = BucketReplicator(
            self,
            "BucketReplicator",
            source_bucket=self.source.bucket,
            destination_bucket=self.destination_bucket,
            source_prefix=config.key_prefix,
            destination_prefix=config.destination.prefix,
            alarm_topic=self.alarm_topic,
            log_retention=retention,
            removal_policy=removal,
        )

        outputs = {
            "SourceBucketName": self.source.bucket.bucket_name,
            "DestinationBucketName": self.destination_bucket.bucket_name,
            "ExportFunctionName": self.export.function.function_name,
            "ReplicatorFunctionName": self.replicator.function.function_name,
            "FailedCopiesQueueUrl": self.replicator.failure_queue.queue_url,
            "AlarmTopicArn": self.alarm_topic.topic_arn,
        }
        for name, value in outputs.items():
            CfnOutput(self, name, value=value)

        Tags.of(self).add("project", "mysql-xlsx-pipeline")
        Tags.of(self).add("environment", config.name)
        self._acknowledge(config)

    def _acknowledge(self, config: EnvironmentConfig) -> None:
        handler = self.node.try_find_child("BucketNotificationsHandler050a0587b7544547bf325f094a3db834")
        if handler is not None:  # CDK's own singleton that installs the bucket notification
            acknowledge(
                handler.node.find_child("Role"), "IAM4",
                "CDK's bucket-notifications helper runs once per deployment with the basic execution policy.",
                findings=["Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"],
            )
        instance = self.database.instance
        if instance is not None:
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
