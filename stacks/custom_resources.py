"""Bounds on every custom resource of the stack.

CloudFormation waits up to a custom resource's ``ServiceTimeout`` for its answer, an hour when it is
not set (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-cloudformation-customresource.html):
a handler that dies without answering would hold the stack that long. Each custom resource here gets
its handler's own timeout plus a minute to send the answer.
"""

from __future__ import annotations

from aws_cdk import CfnResource, Duration, Stack
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


def sdk_call_resource(scope: Construct, construct_id: str, **kwargs) -> cr.AwsCustomResource:
    """An AwsCustomResource (one AWS API call at deploy time) whose wait is bounded; ``kwargs`` as AwsCustomResource."""
    return cr.AwsCustomResource(scope, construct_id, install_latest_aws_sdk=False, timeout=SDK_CALL_TIMEOUT,
                                service_timeout=service_timeout(SDK_CALL_TIMEOUT), **kwargs)


def bound_cdk_custom_resources(stack: Stack) -> None:
    """Give CDK's own custom resources (buckets' notifications and auto-delete, the VPC's default group) a
    ServiceTimeout, which CDK does not set."""
    for construct in stack.node.find_all():
        if isinstance(construct, CfnResource) and construct.cfn_resource_type in CDK_HANDLER_TIMEOUT_SECONDS:
            seconds = CDK_HANDLER_TIMEOUT_SECONDS[construct.cfn_resource_type]
            construct.add_property_override("ServiceTimeout", str(seconds + int(RESPONSE_MARGIN.to_seconds())))
