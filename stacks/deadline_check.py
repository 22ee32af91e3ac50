"""DeadlineCheck: the function that announces scheduled workbooks not delivered by their deadline."""

from __future__ import annotations

import json
from typing import Sequence

from aws_cdk import Aws, Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_sns as sns
from constructs import Construct

from lambdas import contract as shared
from lambdas.deadline_check import settings as contract
from stacks.bundling import BundleSpec
from stacks.nag import acknowledge
from stacks.pipeline_function import failure_queue, function_metric_alarm, pipeline_function
from stacks.run_ledger import RunLedger

DEADLINE_CHECK_BUNDLE = BundleSpec(package="deadline_check")
#: Scheduler's name for the check's own schedule (export schedules are named ``<export>.<schedule>``, with a dot).
CHECK_SCHEDULE_NAME = "deadline-check"


def scheduler_role(scope: Construct, construct_id: str, *, group: scheduler.CfnScheduleGroup, description: str
                   ) -> iam.Role:
    """A role only EventBridge Scheduler may assume, and only for schedules of ``group`` in this account (the
    confused-deputy conditions of https://docs.aws.amazon.com/scheduler/latest/UserGuide/cross-service-confused-deputy-prevention.html)."""
    return iam.Role(
        scope, construct_id, description=description,
        assumed_by=iam.ServicePrincipal("scheduler.amazonaws.com", conditions={
            "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
            "ArnLike": {"aws:SourceArn": group.attr_arn},
        }),
    )


def target(function_arn: str, role: iam.IRole, dead_letter_queue_arn: str, payload: dict,
           retry_attempts: int, max_event_age: Duration) -> scheduler.CfnSchedule.TargetProperty:
    """Scheduler's Lambda target: ``payload`` as the event (context attributes filled in), a retry policy, and
    the dead-letter queue for an event Scheduler could not deliver."""
    return scheduler.CfnSchedule.TargetProperty(
        arn=function_arn, role_arn=role.role_arn, input=json.dumps(payload, separators=(",", ":")),
        retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
            maximum_retry_attempts=retry_attempts, maximum_event_age_in_seconds=int(max_event_age.to_seconds())),
        dead_letter_config=scheduler.CfnSchedule.DeadLetterConfigProperty(arn=dead_letter_queue_arn),
    )


class DeadlineCheck(Construct):
    """Every minute, looks at each schedule's runs whose deadline just passed and announces the late ones.

    Default settings:
    - the shared function defaults (``stacks.pipeline_function``), outside any VPC;
    - started by its own EventBridge Scheduler schedule in ``group`` (``cron(* * * * ? *)``, UTC, flexible time
      window off, 3 retries within an hour, then its dead-letter queue), with the scheduled time in the event,
      through a role Scheduler alone may assume and that may only invoke this function and send to that queue;
    - a role of its own that may only Query the run ledger's partitions of the exports with a deadline, only
      UpdateItem its notices' partition of that table (``dynamodb:LeadingKeys``), and put only ``Workbook Late``
      / ``Workbook Skipped`` events from the pipeline's source on the default bus: no bucket, no other item;
    - an alarm on the ``WorkbooksLate`` metric (any late run), one on its errors, one on its failure queue.

    Exposes ``function``, ``role``, ``schedule``, ``scheduler_role``, ``late_alarm``, ``errors_alarm``,
    ``failure_queue``, ``failures_alarm``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        deadlines: Sequence[contract.Deadline],
        ledger: RunLedger,
        group: scheduler.CfnScheduleGroup,
        alarm_topic: sns.ITopic,
        log_retention: logs.RetentionDays,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        if not deadlines:
            raise ValueError("deadlines must name at least one schedule with a deadline")
        names = [(d.export, d.schedule) for d in deadlines]
        if len(set(names)) != len(names):
            raise ValueError(f"each schedule has one deadline, got {names}")
        failures = failure_queue(
            self, "FailedChecks", alarm_topic=alarm_topic, removal_policy=removal_policy,
            description="A deadline check could not run: some deadlines may not have been looked at",
        )
        self.failure_queue, self.failures_alarm = failures.queue, failures.alarm
        built = pipeline_function(
            self,
            bundle=DEADLINE_CHECK_BUNDLE,
            description="Announces scheduled workbooks not in the destination by their deadline",
            role_description="DeadlineCheck: read scheduled runs in the run ledger, announce late or skipped runs",
            errors_description="A deadline check failed: late workbooks may not have been announced",
            environment={
                contract.ENV_LEDGER_TABLE: ledger.table.table_name,
                contract.ENV_HISTORY_DAYS: str(ledger.history_days),
                contract.ENV_DEADLINES: contract.encode_deadlines(list(deadlines)),
            },
            alarm_topic=alarm_topic, log_retention=log_retention, removal_policy=removal_policy,
            memory_mb=256, timeout=Duration.seconds(60), retry_attempts=2, max_event_age=Duration.hours(1),
            on_failure=self.failure_queue,
        )
        self.function, self.role = built.function, built.role
        self.errors_alarm = built.errors_alarm

        ledger.grant_queries(self.role, sorted({d.export for d in deadlines}))
        ledger.grant_run_writes(self.role, [shared.LEDGER_NOTICE_PARTITION])
        bus = Stack.of(self).format_arn(service="events", resource="event-bus", resource_name="default")
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["events:PutEvents"], resources=[bus],
            conditions={
                "ForAllValues:StringEquals": {"events:source": [shared.EVENT_SOURCE]},
                "StringEquals": {"events:detail-type": [shared.LATE_DETAIL_TYPE, shared.SKIPPED_DETAIL_TYPE]},
            }))
        acknowledge(
            self.role.node.find_child("DefaultPolicy"), "IAM5",
            "Resource '*' only for X-Ray PutTraceSegments/PutTelemetryRecords, which take no resource.",
            findings=["Resource::*"],
        )

        self.scheduler_role = scheduler_role(self, "SchedulerRole", group=group,
                                             description="EventBridge Scheduler: start the deadline check")
        self.scheduler_role.add_to_policy(iam.PolicyStatement(actions=["lambda:InvokeFunction"],
                                                              resources=[self.function.function_arn]))
        self.scheduler_role.add_to_policy(iam.PolicyStatement(actions=["sqs:SendMessage"],
                                                              resources=[self.failure_queue.queue_arn]))
        self.schedule = scheduler.CfnSchedule(
            self, "Schedule", name=CHECK_SCHEDULE_NAME, group_name=group.ref,
            description="Every minute: announce scheduled workbooks not delivered by their deadline",
            schedule_expression=contract.CHECK_EXPRESSION, schedule_expression_timezone="UTC",
            flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
            target=target(self.function.function_arn, self.scheduler_role, self.failure_queue.queue_arn,
                          {contract.EVENT_CHECKED_AT: shared.SCHEDULED_TIME_ATTRIBUTE},
                          retry_attempts=3, max_event_age=Duration.hours(1)),
        )
        self.late_alarm = function_metric_alarm(
            self, "LateAlarm", topic=alarm_topic, function=self.function, metric_name=contract.METRIC_LATE,
            description="A scheduled workbook was not in the destination by its deadline (see the Workbook Late "
                        "event or the deadline check's log)",
        )
