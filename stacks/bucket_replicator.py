"""BucketReplicator: copies every new .xlsx object from the source bucket to the destination bucket."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Token
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from lambdas.bucket_replicator import settings as contract
from stacks.bundling import ARCHITECTURE, REPLICATOR_BUNDLE, RUNTIME, function_code
from stacks.nag import acknowledge, objects_finding

#: Read the exact version that triggered the event (HeadObject, CopyObject, UploadPartCopy).
SOURCE_READ_ACTIONS = ("s3:GetObject", "s3:GetObjectVersion")
#: Write the copy (PutObject covers CopyObject and multipart copies), abort a failed multipart
#: copy, and read the destination object's metadata to skip an already-copied version.
DESTINATION_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload", "s3:GetObject")


class BucketReplicator(Construct):
    """Copies each ``.xlsx`` object created in ``source_bucket`` to ``destination_bucket``.

    Default settings:
    - Python 3.14 on ARM64, outside any VPC (it talks only to S3);
    - triggered by ``s3:ObjectCreated:*`` on the source bucket, filtered by the suffix
      ``.xlsx`` and by ``source_prefix`` when one is given;
    - two async retries within six hours, then the event goes to an SQS on-failure
      queue (SQS-managed encryption, TLS only, kept 14 days);
    - a role of its own that may only read objects and versions under ``source_prefix``
      in the source bucket and write (and read back) objects under
      ``destination_prefix`` in the destination bucket;
    - JSON logs in a log group with ``log_retention``; X-Ray active tracing;
    - alarms on any error and on any message in the failure queue, sent to ``alarm_topic``.

    Raises ValueError when the destination is the source bucket.
    Exposes ``function``, ``role``, ``failure_queue``, ``log_group``,
    ``errors_alarm`` and ``failures_alarm``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        source_bucket: s3.IBucket,
        destination_bucket: s3.IBucket,
        alarm_topic: sns.ITopic,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
        source_prefix: str = "",
        destination_prefix: str = "",
        memory_mb: int = 256,
        timeout: Duration = Duration.minutes(15),
    ) -> None:
        super().__init__(scope, construct_id)
        if destination_bucket is source_bucket or (
            not Token.is_unresolved(destination_bucket.bucket_name)
            and not Token.is_unresolved(source_bucket.bucket_name)
            and destination_bucket.bucket_name == source_bucket.bucket_name
        ):
            raise ValueError("destination_bucket is the source bucket: the replicator would copy the bucket onto itself")
        if destination_prefix.startswith("/") or source_prefix.startswith("/"):
            raise ValueError("source_prefix and destination_prefix must not start with '/'")

        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention, removal_policy=removal_policy)
        self.failure_queue = sqs.Queue(
            self, "FailedCopies",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )

        self.role = iam.Role(
            self, "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="BucketReplicator: read new .xlsx objects in the source bucket, write them to the destination",
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=list(SOURCE_READ_ACTIONS), resources=[source_bucket.arn_for_objects(f"{source_prefix}*")]
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=list(DESTINATION_ACTIONS),
                resources=[destination_bucket.arn_for_objects(f"{destination_prefix}*")],
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[self.log_group.log_group_arn]
            )
        )

        self.function = lambda_.Function(
            self,
            "Function",
            description="Copies each new .xlsx from the source bucket to the destination bucket",
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=f"{REPLICATOR_BUNDLE.package}.handler.handler",
            code=function_code(REPLICATOR_BUNDLE),
            role=self.role,
            memory_size=memory_mb,
            timeout=timeout,
            retry_attempts=2,
            max_event_age=Duration.hours(6),
            on_failure=destinations.SqsDestination(self.failure_queue),
            tracing=lambda_.Tracing.ACTIVE,
            logging_format=lambda_.LoggingFormat.JSON,
            application_log_level_v2=lambda_.ApplicationLogLevel.INFO,
            system_log_level_v2=lambda_.SystemLogLevel.WARN,
            log_group=self.log_group,
            environment={
                contract.ENV_SOURCE_BUCKET: source_bucket.bucket_name,
                contract.ENV_DESTINATION_BUCKET: destination_bucket.bucket_name,
                contract.ENV_DESTINATION_PREFIX: destination_prefix,
            },
        )
        key_filter = s3.NotificationKeyFilter(suffix=contract.SUFFIX, prefix=source_prefix or None)
        source_bucket.add_event_notification(
            s3.EventType.OBJECT_CREATED, s3n.LambdaDestination(self.function), key_filter
        )

        self.errors_alarm = cloudwatch.Alarm(
            self, "ErrorsAlarm",
            alarm_description="A copy to the destination bucket failed; it is retried, then kept in the failure queue",
            metric=self.function.metric_errors(period=Duration.minutes(5), statistic="Sum"),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.failures_alarm = cloudwatch.Alarm(
            self, "FailedCopiesAlarm",
            alarm_description="Copies gave up after retries: replay the events in the failure queue",
            metric=self.failure_queue.metric_approximate_number_of_messages_visible(
                period=Duration.minutes(5), statistic="Maximum"
            ),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        for alarm in (self.errors_alarm, self.failures_alarm):
            alarm.add_alarm_action(cw_actions.SnsAction(alarm_topic))

        acknowledge(
            self.role.node.find_child("DefaultPolicy"), "IAM5",
            "The function copies whichever new object triggered it, so it reads any key under the source "
            "prefix and writes the same key under the destination prefix; actions are listed one by one.",
            findings=[
                objects_finding(source_bucket, f"{source_prefix}*"),
                objects_finding(destination_bucket, f"{destination_prefix}*"),
            ],
        )
        acknowledge(
            self.role.node.find_child("DefaultPolicy"), "IAM5",
            "Resource '*' only for X-Ray PutTraceSegments/PutTelemetryRecords, which take no resource.",
            findings=["Resource::*"],
        )
        acknowledge(
            self.failure_queue, "SQS3",
            "This queue is the dead-letter path itself: the function's on-failure destination.",
        )
