"""The synthesized CloudFormation as reviewers and CI see it: snapshots, cdk-nag, cfn-lint, the real CLI synth."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_sqs as sqs
from cdk_nag import AwsSolutionsChecks
from syrupy.extensions.json import JSONSnapshotExtension

from pipeline_ops.synth import CDK_JSON, ROOT

ENVIRONMENTS = sorted(CDK_JSON["context"]["environments"])
ASSET_HASH = re.compile(r"\b[0-9a-f]{64}\b")


def masked(template: dict) -> dict:
    """The template with asset hashes replaced, so a snapshot diff shows infrastructure changes only."""
    return json.loads(ASSET_HASH.sub("<asset-hash>", json.dumps(template)))


@pytest.fixture
def snapshot_json(snapshot):
    return snapshot.use_extension(JSONSnapshotExtension)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_template_snapshot(request, env, snapshot_json):
    synth = request.getfixturevalue(env)
    assert masked(synth.template) == snapshot_json


def test_asset_hashes_are_masked_and_nothing_else():
    template = {"a": "0" * 64 + ".zip", "b": "S3Key", "c": "f" * 63}
    assert masked(template) == {"a": "<asset-hash>.zip", "b": "S3Key", "c": "f" * 63}


# --- cdk-nag ------------------------------------------------------------------------------


def test_cdk_nag_stops_synth_on_an_unacknowledged_finding():
    # The same wiring as the app: a finding the stack does not acknowledge fails the synth.
    app = cdk.App(builtin_cloud_formation_validation=False)
    stack = cdk.Stack(app, "Nagged")
    sqs.Queue(stack, "PlainQueue")  # no TLS policy, no DLQ: AwsSolutions-SQS3/SQS4
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    with pytest.raises(Exception, match="AwsSolutions-SQS"):
        app.synth()


def test_every_acknowledgment_is_on_one_resource_with_a_reason(dev, prod):
    # Acknowledgments are construct metadata: each sits on a single L1 and gives a reason.
    for synth in (dev, prod):
        found = 0
        for node in synth.stack.node.find_all():
            for entry in node.node.metadata:
                if entry.type != cdk.Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                    continue
                for rule, reason in entry.data.items():
                    if not rule.startswith("AwsSolutions::"):
                        continue  # aws-cdk-lib's own acknowledgments of its validation
                    found += 1
                    assert isinstance(node, cdk.CfnResource), (node.node.path, rule)
                    assert len(reason) > 40, (node.node.path, rule, reason)
        assert found >= 5


# --- cfn-lint -----------------------------------------------------------------------------


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_cfn_lint_reports_no_errors(request, env, tmp_path):
    synth = request.getfixturevalue(env)
    path = tmp_path / f"{env}.template.json"
    path.write_text(json.dumps(synth.template))
    result = subprocess.run([sys.executable, "-m", "cfnlint", "--format", "parseable", str(path)],
                            capture_output=True, text=True)
    errors = [line for line in result.stdout.splitlines() if ":E" in line or re.search(r":\d+:E\d", line)]
    assert result.returncode & 2 == 0 and not errors, result.stdout + result.stderr


# --- the CLI, as CI review runs it --------------------------------------------------------------


def npx_cdk(*args: str, outdir: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20", "CDK_DISABLE_VERSION_CHECK": "1"}
    env.pop("CDK_VALIDATION", None)
    return subprocess.run(
        ["npx", "--no-install", "cdk", "synth", "--quiet", "--output", str(outdir), *args],
        cwd=cwd, capture_output=True, text=True, env=env, timeout=600,
    )


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_cli_synth_with_validation_and_bundling(env, tmp_path):
    # Given the app as a user runs it: `npx cdk synth -c env=NAME`, validation and cdk-nag on
    result = npx_cdk("-c", f"env={env}", outdir=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    stack_name = f"MysqlXlsxPipeline-{env}"
    assert stack_name in manifest["artifacts"]
    template = json.loads((tmp_path / f"{stack_name}.template.json").read_text())
    # Then the export function's asset holds its package, pymysql for Lambda and the RDS CA bundle
    functions = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::Lambda::Function"
                 and v["Properties"].get("Handler", "").endswith(".handler.handler")}
    assets = {v["Properties"]["Handler"]: v["Metadata"]["aws:asset:path"] for v in functions.values()}
    export_asset = tmp_path / assets["lambdas.export_to_xlsx.handler.handler"]
    assert (export_asset / "lambdas" / "export_to_xlsx" / "handler.py").is_file()
    assert (export_asset / "lambdas" / "contract.py").is_file()  # the facts every function shares, one copy each
    assert (export_asset / "pymysql" / "__init__.py").is_file()
    assert (export_asset / "lambdas" / "export_to_xlsx" / "rds-ca-bundle.pem").read_text().count("BEGIN CERTIFICATE") > 10
    assert not list(export_asset.rglob("__pycache__"))
    replicator_asset = tmp_path / assets["lambdas.bucket_replicator.handler.handler"]
    assert sorted(p.name for p in replicator_asset.iterdir()) == ["lambdas"]
    assert sorted(p.name for p in (replicator_asset / "lambdas").iterdir()) == ["__init__.py", "bucket_replicator",
                                                                              "contract.py", "cron.py", "ledger.py"]
    # The deadline check (where a schedule has a deadline) carries Scheduler's cron rules and the IANA zones
    check = assets.get("lambdas.deadline_check.handler.handler")
    if check is not None:
        assert (tmp_path / check / "lambdas" / "cron.py").is_file()
        assert (tmp_path / check / "tzdata" / "zoneinfo" / "Europe" / "Berlin").is_file()


def test_cli_reports_a_bad_environment_without_a_traceback(tmp_path):
    result = npx_cdk("-c", "env=staging", outdir=tmp_path)
    assert result.returncode != 0
    assert "error: unknown environment 'staging'; configured: dev, prod" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reports_a_failed_pip_run_without_a_traceback(tmp_path):
    # Given a copy of the project whose export function asks for a package version that does not exist
    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".git", ".venv", "node_modules", "cdk.out",
                                                                   "__pycache__", ".pytest_cache"))
    for shared in (".venv", "node_modules"):
        (project / shared).symlink_to(ROOT / shared)
    (project / "lambdas" / "export_to_xlsx" / "requirements.txt").write_text("PyMySQL==0.0.0.404\n")
    # When it is synthesized, then synth stops with pip's own reason and no Python traceback
    result = npx_cdk(outdir=tmp_path / "out", cwd=project)
    assert result.returncode != 0
    assert "error: pip could not install" in result.stderr and "PyMySQL==0.0.0.404" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_cli_is_kept_off_the_network():
    # Synth must work offline: no notices fetch, no telemetry.
    assert CDK_JSON["notices"] is False
    assert CDK_JSON["context"]["cli-telemetry"] is False
    assert CDK_JSON["app"].endswith("app.py")
