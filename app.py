#!/usr/bin/env python3
"""Synthesize the pipeline for one environment: `npx cdk synth -c env=NAME` (default: dev)."""

import sys

import aws_cdk as cdk

from stacks.bundling import BundlingError
from stacks.config import CONTEXT_KEY, ConfigError, load_environment
from stacks.pipeline_stack import add_pipeline


def main() -> None:
    app = cdk.App()
    try:
        config = load_environment(
            {CONTEXT_KEY: app.node.try_get_context(CONTEXT_KEY)}, app.node.try_get_context("env")
        )
        add_pipeline(app, config)
        app.synth()
    except (ConfigError, BundlingError) as exc:
        sys.exit(f"error: {exc}")
    except RuntimeError as exc:
        # A BundlingError raised inside the CDK's bundling callback comes back wrapped by jsii.
        message = str(exc)
        if "Failed to bundle asset" not in message:
            raise
        sys.exit("error: " + message.split("RuntimeError: ", 1)[-1])


if __name__ == "__main__":
    main()
