"""Bundling without Docker: deterministic asset hashes, clear pip errors, and handlers that import as in Lambda."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from stacks.bundling import EXPORT_BUNDLE, REPLICATOR_BUNDLE, BundlingError, bundle, rds_ca_bundle


@pytest.fixture
def lambdas_copy(tmp_path) -> Path:
    root = tmp_path / "lambdas"
    shutil.copytree(EXPORT_BUNDLE.source_dir, root / EXPORT_BUNDLE.package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_unchanged_code_gives_the_same_hash(lambdas_copy):
    spec = dataclasses.replace(EXPORT_BUNDLE, root=lambdas_copy)
    assert spec.asset_hash() == dataclasses.replace(EXPORT_BUNDLE, root=lambdas_copy).asset_hash()
    assert spec.asset_hash() == EXPORT_BUNDLE.asset_hash()  # independent of where the checkout lives
    (lambdas_copy / spec.package / "__pycache__").mkdir()
    (lambdas_copy / spec.package / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert spec.asset_hash() == EXPORT_BUNDLE.asset_hash()  # byte-code caches do not count


@pytest.mark.parametrize("change", [
    lambda root, spec: (root / spec.package / "handler.py").write_text(
        (root / spec.package / "handler.py").read_text() + "\n# changed\n"),
    lambda root, spec: (root / spec.package / "requirements.txt").write_text("PyMySQL==1.1.1\n"),
    lambda root, spec: (root / spec.package / "new_module.py").write_text("X = 1\n"),
])
def test_a_change_to_code_or_requirements_changes_the_hash(lambdas_copy, change):
    spec = dataclasses.replace(EXPORT_BUNDLE, root=lambdas_copy)
    before = spec.asset_hash()
    change(lambdas_copy, spec)
    assert spec.asset_hash() != before


def test_a_change_to_the_bundler_settings_changes_the_hash():
    assert dataclasses.replace(EXPORT_BUNDLE, python_version="3.13").asset_hash() != EXPORT_BUNDLE.asset_hash()
    assert dataclasses.replace(EXPORT_BUNDLE, platform="manylinux2014_x86_64").asset_hash() != \
        EXPORT_BUNDLE.asset_hash()


def test_a_failed_pip_run_is_a_clear_synth_error(lambdas_copy, tmp_path):
    spec = dataclasses.replace(EXPORT_BUNDLE, root=lambdas_copy, extra_files={})
    (lambdas_copy / spec.package / "requirements.txt").write_text("PyMySQL==0.0.0.0.404\n")
    with pytest.raises(BundlingError, match=r"(?s)pip could not install .*requirements.txt for manylinux2014_aarch64 "
                                            r"/ Python 3.14 \(exit \d+\):\n.*PyMySQL==0.0.0.0.404"):
        bundle(spec, tmp_path / "out")


def test_the_rds_ca_bundle_is_pem_with_the_rds_roots():
    pem = rds_ca_bundle().decode()
    assert pem.count("-----BEGIN CERTIFICATE-----") == pem.count("-----END CERTIFICATE-----") > 10


# Packages the Lambda Python runtime itself provides; everything else must be in the asset.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six.py")


@pytest.fixture(scope="module")
def lambda_like_path(tmp_path_factory) -> Path:
    """A folder holding only what the Lambda runtime provides (links into this venv)."""
    root = tmp_path_factory.mktemp("runtime")
    site = Path(sysconfig.get_paths()["purelib"])
    for name in RUNTIME_PROVIDED:
        (root / name).symlink_to(site / name)
    return root


@pytest.mark.parametrize("spec", [EXPORT_BUNDLE, REPLICATOR_BUNDLE], ids=lambda s: s.package)
def test_each_handler_imports_from_its_bundled_asset_alone(spec, tmp_path, lambda_like_path):
    # Given the asset bundled for this machine's platform and Python (the same pip path as for Lambda)
    host = dataclasses.replace(spec, python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
                               platform=f"manylinux2014_{sysconfig.get_platform().split('-')[-1]}")
    asset = tmp_path / "asset"
    bundle(host, asset)
    # When Python starts with no site-packages, only the asset and the runtime's own packages on the path
    probe = (
        "import sys, importlib;"
        f"sys.path[:0] = [{str(asset)!r}, {str(lambda_like_path)!r}];"
        f"m = importlib.import_module('{spec.package}.handler');"
        "assert callable(m.handler);"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('pymysql', 'boto3')))"
    )
    result = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True)
    # Then the handler imports: nothing it needs is missing from the asset
    assert result.returncode == 0, result.stderr
    if spec is EXPORT_BUNDLE:
        assert "pymysql" in result.stdout
        assert (asset / "export_to_xlsx" / "rds-ca-bundle.pem").is_file()


def test_sql_files_are_written_into_the_package(lambdas_copy, tmp_path):
    # Given an export bundle with a .sql file among its extra files
    spec = dataclasses.replace(EXPORT_BUNDLE, root=lambdas_copy,
                               extra_files={"sql/reports/a.sql": lambda: b"SELECT 1\n"})
    (lambdas_copy / spec.package / "requirements.txt").write_text("")
    # When it is bundled, the file sits at that path inside the package, where the function reads it
    bundle(spec, tmp_path / "out")
    assert (tmp_path / "out" / spec.package / "sql" / "reports" / "a.sql").read_bytes() == b"SELECT 1\n"
