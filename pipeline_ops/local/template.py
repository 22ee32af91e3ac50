"""Reading the synthesized template: the functions, their environment and role, the bucket's notifications."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


class Names(dict):
    """Logical IDs (``Ref``) and attributes (``Id.Attr``) to local names; anything else gets a stand-in ARN."""

    def __missing__(self, key: str) -> str:
        return f"arn:aws:local:us-east-1:000000000000:{key}"


@dataclass
class Function:
    logical_id: str
    properties: dict
    template: dict

    @property
    def raw_environment(self) -> dict:
        return self.properties.get("Environment", {}).get("Variables", {})

    @property
    def role_logical_id(self) -> str:
        return self.properties["Role"]["Fn::GetAtt"][0]

    @property
    def invoke_config(self) -> dict:
        for r in self.template["Resources"].values():
            if r["Type"] == "AWS::Lambda::EventInvokeConfig" and \
                    r["Properties"]["FunctionName"] == {"Ref": self.logical_id}:
                return r["Properties"]
        return {"MaximumRetryAttempts": 2}  # Lambda's default for async invocations


def find_function(template: dict, handler: str) -> Function:
    for logical_id, r in template["Resources"].items():
        if r["Type"] == "AWS::Lambda::Function" and r["Properties"].get("Handler") == handler:
            return Function(logical_id, r["Properties"], template)
    raise LookupError(f"the template has no function with handler {handler}")


@dataclass(frozen=True)
class NotificationRule:
    events: tuple[str, ...]
    prefix: str
    suffix: str
    function_logical_id: str

    def matches(self, event_name: str, key: str) -> bool:
        return any(fnmatch.fnmatchcase(f"s3:{event_name}", e) for e in self.events) and \
            key.startswith(self.prefix) and key.endswith(self.suffix)


def notification_rules(template: dict, bucket_logical_id: str) -> list[NotificationRule]:
    rules = []
    for r in template["Resources"].values():
        if r["Type"] != "Custom::S3BucketNotifications" or r["Properties"]["BucketName"] != {"Ref": bucket_logical_id}:
            continue
        for cfg in r["Properties"]["NotificationConfiguration"].get("LambdaFunctionConfigurations", []):
            filters = {f["Name"].lower(): f["Value"] for f in cfg.get("Filter", {}).get("Key", {}).get("FilterRules", [])}
            rules.append(NotificationRule(tuple(cfg["Events"]), filters.get("prefix", ""), filters.get("suffix", ""),
                                          cfg["LambdaFunctionArn"]["Fn::GetAtt"][0]))
    return rules
