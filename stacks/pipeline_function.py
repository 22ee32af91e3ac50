"""What both functions share: runtime, logging, tracing, log group, role, errors alarm, failure queue.

Each function construct passes only what differs (code, handler, size, network,
environment); every default below is in one place, as Solutions Constructs do
with their one Lambda helper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from aws_cdk import Aws, Duration, RemovalPolicy, Size
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from lambdas.contract import METRIC_NAMESPACE

from stacks.bundling import ARCHITECTURE, LAMBDA_PYTHON_VERSION, RUNTIME, BundleSpec, function_code
from stacks.nag import acknowledge

_R = logs.RetentionDays
#: CloudWatch Logs' retention for each number of days config accepts (config.LOG_RETENTION_DAYS).
LOG_RETENTION = {
    1: _R.ONE_DAY, 3: _R.THREE_DAYS, 5: _R.FIVE_DAYS, 7: _R.ONE_WEEK, 14: _R.TWO_WEEKS, 30: _R.ONE_MONTH,
    60: _R.TWO_MONTHS, 90: _R.THREE_MONTHS, 120: _R.FOUR_MONTHS, 150: _R.FIVE_MONTHS, 180: _R.SIX_MONTHS,
    365: _R.ONE_YEAR, 400: _R.THIRTEEN_MONTHS, 545: _R.EIGHTEEN_MONTHS, 731: _R.TWO_YEARS, 1096: _R.THREE_YEARS,
    1827: _R.FIVE_YEARS, 2192: _R.SIX_YEARS, 2557: _R.SEVEN_YEARS, 2922: _R.EIGHT_YEARS, 3288: _R.NINE_YEARS,
    3653: _R.TEN_YEARS,
}


#: How long a failed event waits in a failure queue for someone to replay it.
FAILURE_RETENTION = Duration.days(14)


def alarm_on(scope: Construct, construct_id: str, *, metric: cloudwatch.IMetric, description: str,
             topic: sns.ITopic) -> cloudwatch.Alarm:
    """An alarm that fires on the first occurrence (``metric`` >= 1 in five minutes) and tells ``topic``."""
    alarm = cloudwatch.Alarm(
        scope, construct_id,
        alarm_description=description,
        metric=metric,
        threshold=1,
        evaluation_periods=1,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
    )
    alarm.add_alarm_action(cw_actions.SnsAction(topic))
    return alarm


def function_metric_alarm(scope: Construct, construct_id: str, *, function: lambda_.IFunction, metric_name: str,
                          description: str, topic: sns.ITopic) -> cloudwatch.Alarm:
    """:func:`alarm_on` one of the pipeline's own metrics (namespace ``MysqlXlsxPipeline``, dimension
    ``FunctionName``), which a function writes as an embedded-metric-format log line."""
    return alarm_on(scope, construct_id, topic=topic, description=description, metric=cloudwatch.Metric(
        namespace=METRIC_NAMESPACE, metric_name=metric_name, dimensions_map={"FunctionName": function.function_name},
        period=Duration.minutes(5), statistic="Sum",
    ))


#: The service principal that publishes a CloudWatch alarm's notification to its SNS action.
CLOUDWATCH = "cloudwatch.amazonaws.com"


def admit_alarms(topic: sns.Topic, alarms: Sequence[cloudwatch.Alarm]) -> None:
    """Let CloudWatch publish the notifications of ``alarms`` (and of no other alarm) to ``topic``.

    A topic policy replaces SNS's default policy, so without this statement nothing may publish and
    every alarm action fails with "not authorized to perform: SNS:Publish". The statement names the
    service principal and holds the confused-deputy conditions: ``aws:SourceAccount`` is this account
    and ``aws:SourceArn`` one of these alarms. If the topic is encrypted with a customer managed key,
    the key admits CloudWatch for this account's alarms in this region (the key cannot name the alarms:
    they refer to the topic, which refers to the key); an AWS managed key cannot admit it at all.
    """
    if not alarms:
        raise ValueError("admit_alarms: no alarms given; an empty aws:SourceArn list would admit no one")
    conditions = {
        "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
        "ArnLike": {"aws:SourceArn": [alarm.alarm_arn for alarm in alarms]},
    }
    topic.add_to_resource_policy(iam.PolicyStatement(
        sid="AllowStackAlarmsToPublish", principals=[iam.ServicePrincipal(CLOUDWATCH)],
        actions=["sns:Publish"], resources=[topic.topic_arn], conditions=conditions,
    ))
    if topic.master_key is not None:
        topic.master_key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowStackAlarmsToUseTheTopicKey", principals=[iam.ServicePrincipal(CLOUDWATCH)],
            actions=["kms:Decrypt", "kms:GenerateDataKey*"], resources=["*"], conditions={
                "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                "ArnLike": {"aws:SourceArn": f"arn:{Aws.PARTITION}:cloudwatch:{Aws.REGION}:{Aws.ACCOUNT_ID}:alarm:*"},
            },
        ))


@dataclass(frozen=True)
class FailureQueue:
    queue: sqs.Queue
    alarm: cloudwatch.Alarm


def failure_queue(scope: Construct, construct_id: str, *, alarm_topic: sns.ITopic, removal_policy: RemovalPolicy,
                  description: str) -> FailureQueue:
    """Where events that failed for good wait to be replayed, with an alarm when one arrives.

    Default settings: SQS-managed encryption, TLS only, messages kept 14 days, the
    stack's removal policy (kept with the buckets in production), an alarm on any
    visible message (``<construct_id>Alarm``) sent to ``alarm_topic``.
    """
    queue = sqs.Queue(
        scope, construct_id,
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        retention_period=FAILURE_RETENTION,
        removal_policy=removal_policy,
    )
    alarm = alarm_on(
        scope, f"{construct_id}Alarm", description=description, topic=alarm_topic,
        metric=queue.metric_approximate_number_of_messages_visible(period=Duration.minutes(5), statistic="Maximum"),
    )
    acknowledge(queue, "SQS3", "This queue is the dead-letter path itself: a failure destination.")
    return FailureQueue(queue, alarm)


@dataclass(frozen=True)
class PipelineFunction:
    function: lambda_.Function
    role: iam.Role
    log_group: logs.LogGroup
    errors_alarm: cloudwatch.Alarm


def pipeline_function(
    scope: Construct,
    *,
    bundle: BundleSpec,
    description: str,
    role_description: str,
    errors_description: str,
    environment: Mapping[str, str],
    alarm_topic: sns.ITopic,
    log_retention: logs.RetentionDays,
    removal_policy: RemovalPolicy,
    memory_mb: int,
    timeout: Duration,
    retry_attempts: int,
    max_event_age: Duration,
    on_failure: sqs.IQueue | None = None,
    ephemeral_storage_mb: int | None = None,
    reserved_concurrency: int | None = None,
    vpc: ec2.IVpc | None = None,
    subnets: ec2.SubnetSelection | None = None,
    security_groups: Sequence[ec2.ISecurityGroup] | None = None,
) -> PipelineFunction:
    """One of the pipeline's functions, built in ``scope`` (ids ``Logs``, ``Role``, ``Function``,
    ``ErrorsAlarm``) with the defaults both share.

    Default settings:
    - Python (``RUNTIME``) on ARM64, code bundled with pip without Docker;
    - a role of its own that may write only to its own log group (callers add the rest);
    - JSON logs (application INFO, system WARN) in a log group with ``log_retention``;
    - X-Ray active tracing;
    - asynchronous invocations retried ``retry_attempts`` times within ``max_event_age``,
      then sent to ``on_failure`` when given;
    - no reserved concurrency unless asked (new accounts may have none to reserve);
    - an alarm on any error, sent to ``alarm_topic``.

    Raises ValueError on sizes Lambda does not accept.
    """
    if not 128 <= memory_mb <= 10240:
        raise ValueError(f"memory_mb must be 128..10240, got {memory_mb}")
    if ephemeral_storage_mb is not None and not 512 <= ephemeral_storage_mb <= 10240:
        raise ValueError(f"ephemeral_storage_mb must be 512..10240, got {ephemeral_storage_mb}")
    if reserved_concurrency is not None and reserved_concurrency < 1:
        raise ValueError(f"reserved_concurrency must be at least 1, got {reserved_concurrency}")
    if (vpc is None) != (subnets is None):
        raise ValueError("vpc and subnets go together")

    log_group = logs.LogGroup(scope, "Logs", retention=log_retention, removal_policy=removal_policy)
    role = iam.Role(scope, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                    description=role_description)
    role.add_to_policy(iam.PolicyStatement(
        actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[log_group.log_group_arn]))
    function = lambda_.Function(
        scope,
        "Function",
        description=description,
        runtime=RUNTIME,
        architecture=ARCHITECTURE,
        handler=bundle.handler,
        code=function_code(bundle),
        role=role,
        vpc=vpc,
        vpc_subnets=subnets,
        security_groups=list(security_groups) if security_groups else None,
        allow_public_subnet=False if vpc is not None else None,
        memory_size=memory_mb,
        timeout=timeout,
        ephemeral_storage_size=Size.mebibytes(ephemeral_storage_mb) if ephemeral_storage_mb else None,
        reserved_concurrent_executions=reserved_concurrency,
        retry_attempts=retry_attempts,
        max_event_age=max_event_age,
        on_failure=destinations.SqsDestination(on_failure) if on_failure is not None else None,
        tracing=lambda_.Tracing.ACTIVE,
        logging_format=lambda_.LoggingFormat.JSON,
        application_log_level_v2=lambda_.ApplicationLogLevel.INFO,
        system_log_level_v2=lambda_.SystemLogLevel.WARN,
        log_group=log_group,
        environment=dict(environment),
    )
    acknowledge(function, "L1", f"Python {LAMBDA_PYTHON_VERSION} on purpose: the newest runtime whose minor version "
                "the project's tests run on (CI has no newer Python), so the tested code is the deployed code.")
    errors_alarm = alarm_on(
        scope, "ErrorsAlarm", description=errors_description, topic=alarm_topic,
        metric=function.metric_errors(period=Duration.minutes(5), statistic="Sum"),
    )
    return PipelineFunction(function, role, log_group, errors_alarm)
