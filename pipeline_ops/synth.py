"""Build one environment's stack in-process, as `cdk synth` would, from cdk.json's context."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from pipeline_ops import ROOT

CDK_JSON = json.loads((ROOT / "cdk.json").read_text())
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


@dataclass
class Synthesized:
    config: object
    stack: object
    template: dict

    def resources(self, type_: str) -> dict[str, dict]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == type_}

    def logical_id(self, construct) -> str:
        cfn = construct
        while not hasattr(cfn, "logical_id") and cfn.node.default_child is not None:
            cfn = cfn.node.default_child  # down to the CloudFormation element (an L2 may wrap another)
        return self.stack.resolve(cfn.logical_id)  # overridden ids included


def synthesize(env_name: str, *, environments: dict | None = None, nag: bool = True) -> Synthesized:
    """The stack and its template. Bundling is skipped (the asset is the source folder) and
    aws-cdk-lib's built-in CloudFormation validation is off: the CLI synth test covers both."""
    import aws_cdk as cdk
    from aws_cdk.assertions import Template

    from stacks.config import CONTEXT_KEY, load_environment
    from stacks.pipeline_stack import add_pipeline

    context = dict(CDK_JSON["context"])
    if environments is not None:
        context[CONTEXT_KEY] = environments
    context["aws:cdk:bundling-stacks"] = []
    app = cdk.App(context=context, builtin_cloud_formation_validation=False)
    config = load_environment({CONTEXT_KEY: app.node.try_get_context(CONTEXT_KEY)}, env_name)
    stack = add_pipeline(app, config, nag=nag)
    template = Template.from_stack(stack).to_json()
    return Synthesized(config=config, stack=stack, template=template)
