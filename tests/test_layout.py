"""The project's shape: one import path for the function packages, checks that survive ``python -O``."""

from __future__ import annotations

import subprocess
import sys

from stacks.config import PROJECT_ROOT as ROOT

FUNCTIONS = ("export_to_xlsx", "bucket_replicator", "db_bootstrap")


def test_every_module_loads_the_function_packages_one_way():
    # Given a fresh interpreter importing the app, the stack, the operator command, the local run and each handler
    probe = (
        "import sys, importlib;"
        "mods = ['app', 'stacks.pipeline_stack', 'pipeline_ops.cli', 'pipeline_ops.local', 'pipeline_ops.status',"
        " 'lambdas.export_to_xlsx.handler', 'lambdas.bucket_replicator.handler', 'lambdas.db_bootstrap.handler'];"
        "[importlib.import_module(m) for m in mods];"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FUNCTIONS!r}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # Then no function package was loaded a second time under its bare name (two copies of one module)
    assert done.stdout.strip() == "[]"


def test_the_local_runs_checks_hold_under_python_dash_o():
    """``python -O`` drops ``assert`` statements; the local run's checks are exceptions and still fail."""
    probe = "from pipeline_ops.checks import check; check(False, 'the copy differs')"
    done = subprocess.run([sys.executable, "-O", "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "CheckFailed: the copy differs" in done.stderr


def test_no_assert_statement_guards_the_local_run():
    for path in (ROOT / "pipeline_ops").rglob("*.py"):
        lines = [n for n, line in enumerate(path.read_text().splitlines(), 1) if line.lstrip().startswith("assert ")]
        assert lines == [], f"{path.relative_to(ROOT)} uses assert on lines {lines}"
