"""Bounds on every custom resource of the stack.

CloudFormation waits up to a custom resource's ``ServiceTimeout`` for its answer, an hour when it is
not set (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-cloudformation-customresource.html):
a handler that dies without answering would hold the stack that long. Each custom resource here gets
its handler's own timeout plus a minute to send the answer.
"""

from __future__ import annotations

from aws_cdk import CfnResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

#: Time a handler has, after its own timeout, to send its answer before CloudFormation gives up.
RESPONSE_MARGIN = Duration.minutes(1)
#: The function behind CDK's AwsCustomResource (one for the whole stack): CDK's default, made explicit.
SDK_CALL_TIMEOUT = Duration.minutes(2)
#: CDK's own custom resources this stack may hold, and the timeout (seconds) CDK gives the function behind each.
CDK_HANDLER_TIMEOUT_SECONDS = {
    "Custom::S3AutoDeleteObjects": 900,
    "Custom::S3BucketNotifications": 300,
    "Custom::VpcRestrictDefaultSG": 900,
}


def service_timeout(handler_timeout: Duration) -> Duration:
    """How long CloudFormation should wait for a handler that runs at most ``handler_timeout``."""
    return Duration.seconds(handler_timeout.to_seconds() + RESPONSE_MARGIN.to_seconds())


#: The id of the one log group of CDK's AwsCustomResource function, at the stack's root.
SDK_CALLS_LOG_GROUP_ID = "AwsSdkCallsLogs"
_log_group_settings: dict[str, tuple] = {}  # stack address -> (retention, removal policy) of its group


def sdk_calls_log_group(scope: Construct, *, log_retention: logs.RetentionDays,
                        removal_policy: RemovalPolicy) -> logs.LogGroup:
    """The stack's one log group for CDK's AwsCustomResource function, which every deploy-time SDK call of the
    stack shares; created on first use. Raises ValueError when asked for other settings than it was created with."""
    stack = Stack.of(scope)
    existing = stack.node.try_find_child(SDK_CALLS_LOG_GROUP_ID)
    wanted = (log_retention, removal_policy)
    if existing is not None:
        if _log_group_settings.get(stack.node.addr) != wanted:
            raise ValueError(f"the deploy-time SDK calls of a stack share one log group, created with "
                             f"{_log_group_settings.get(stack.node.addr)}; got {wanted}")
        return existing
    _log_group_settings[stack.node.addr] = wanted
    return logs.LogGroup(stack, SDK_CALLS_LOG_GROUP_ID, retention=log_retention, removal_policy=removal_policy)


def sdk_call_resource(scope: Construct, construct_id: str, *, log_retention: logs.RetentionDays,
                      removal_policy: RemovalPolicy, **kwargs) -> cr.AwsCustomResource:
    """An AwsCustomResource (one AWS API call at deploy time) whose wait is bounded and whose function logs to the
    stack's group for these calls, with ``log_retention`` and ``removal_policy``; ``kwargs`` as AwsCustomResource.

    The function is a singleton that the first call creates: every call passes the same group, so whichever
    comes first, the function's logs go there, and CloudFormation creates the group before the function (its
    LoggingConfig refers to it), so before any invocation."""
    group = sdk_calls_log_group(scope, log_retention=log_retention, removal_policy=removal_policy)
    return cr.AwsCustomResource(scope, construct_id, install_latest_aws_sdk=False, timeout=SDK_CALL_TIMEOUT,
                                service_timeout=service_timeout(SDK_CALL_TIMEOUT), log_group=group, **kwargs)


def bound_cdk_custom_resources(stack: Stack) -> None:
    """Give CDK's own custom resources (buckets' notifications and auto-delete, the VPC's default group) a
    ServiceTimeout, which CDK does not set."""
    for construct in stack.node.find_all():
        if isinstance(construct, CfnResource) and construct.cfn_resource_type in CDK_HANDLER_TIMEOUT_SECONDS:
            seconds = CDK_HANDLER_TIMEOUT_SECONDS[construct.cfn_resource_type]
            construct.add_property_override("ServiceTimeout", str(seconds + int(RESPONSE_MARGIN.to_seconds())))
