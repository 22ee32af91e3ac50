"""Bundling without Docker: deterministic asset hashes, clear pip errors, and handlers that import as in Lambda."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from stacks.bundling import (
    EXPORT_BUNDLE, LAMBDA_PYTHON_VERSION, REPLICATOR_BUNDLE, RUNTIME, SHARED_FILES, BundlingError, bundle, rds_ca_bundle,
)
from stacks.db_bootstrap import bootstrap_bundle


@pytest.fixture
def lambdas_copy(tmp_path) -> Path:
    root = tmp_path / "lambdas"
    shutil.copytree(EXPORT_BUNDLE.source_dir, root / EXPORT_BUNDLE.package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in SHARED_FILES:
        shutil.copy2(EXPORT_BUNDLE.root / name, root / name)
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
    lambda root, spec: (root / "contract.py").write_text((root / "contract.py").read_text() + "\n# changed\n"),
])
def test_a_change_to_code_or_requirements_changes_the_hash(lambdas_copy, change):
    spec = dataclasses.replace(EXPORT_BUNDLE, root=lambdas_copy)
    before = spec.asset_hash()
    change(lambdas_copy, spec)
    assert spec.asset_hash() != before


def test_a_change_to_the_bundler_settings_changes_the_hash():
    assert dataclasses.replace(EXPORT_BUNDLE, python_version="3.12").asset_hash() != EXPORT_BUNDLE.asset_hash()
    assert dataclasses.replace(EXPORT_BUNDLE, platform="manylinux2014_x86_64").asset_hash() != \
        EXPORT_BUNDLE.asset_hash()


def test_a_failed_pip_run_is_a_clear_synth_error(lambdas_copy, tmp_path):
    spec = dataclasses.replace(EXPORT_BUNDLE, root=lambdas_copy, extra_files={})
    (lambdas_copy / spec.package / "requirements.txt").write_text("PyMySQL==0.0.0.0.404\n")
    with pytest.raises(BundlingError, match=r"(?s)pip could not install .*requirements.txt for manylinux2014_aarch64 "
                                            r"/ Python 3.13 \(exit \d+\):\n.*PyMySQL==0.0.0.0.404"):
        bundle(spec, tmp_path / "out")


def test_the_rds_ca_bundle_is_pem_with_the_rds_roots():
    pem = rds_ca_bundle().decode()
    assert pem.count("-----BEGIN CERTIFICATE-----") == pem.count("-----END CERTIFICATE-----") > 10


# The regions whose Amazon RDS root CAs (RSA2048, RSA4096 and ECC384 G1) the pinned bundle holds, read from the
# certificates themselves. A new region needs a bundle that covers it; then this list changes with it.
COVERED_REGIONS = sorted("""
af-south-1 ap-east-1 ap-northeast-1 ap-northeast-2 ap-northeast-3 ap-south-1 ap-south-2 ap-southeast-1
ap-southeast-2 ap-southeast-3 ap-southeast-4 ca-central-1 eu-central-1 eu-central-2 eu-north-1 eu-south-1
eu-south-2 eu-west-1 eu-west-2 eu-west-3 me-central-1 me-south-1 sa-east-1 us-east-1 us-east-2 us-west-1
us-west-2""".split())


def test_the_bundle_covers_exactly_the_regions_the_config_accepts_and_rds_proxy():
    """RDS signs each instance's certificate with a regional root, "Amazon RDS <region> Root CA RSA2048 G1" (or
    RSA4096 / ECC384 G1; https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.SSL.html); RDS Proxy
    presents an ACM certificate that chains to the Amazon Trust Services roots
    (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy.howitworks.html#rds-proxy-security.tls)."""
    from stacks.config import ConfigError, load_environment
    from stacks.rds_ca import PROXY_ROOTS, ca_bundle
    from pipeline_ops.synth import CDK_JSON

    bundle = ca_bundle()
    assert sorted(bundle.regions) == COVERED_REGIONS
    assert set(PROXY_ROOTS) <= set(bundle.common_names)
    # every root the region list is read from is really in the PEM the function gets
    ssl_context = __import__("ssl").create_default_context(cadata=rds_ca_bundle().decode())
    subjects = {dict(x[0] for x in c["subject"])["commonName"] for c in ssl_context.get_ca_certs()}
    assert {f"Amazon RDS {r} Root CA {kind}" for r in COVERED_REGIONS for kind in ("RSA2048 G1", "RSA4096 G1",
                                                                                 "ECC384 G1")} <= subjects
    assert set(PROXY_ROOTS) <= subjects
    # and the config accepts a region exactly when the bundle covers it
    environments = CDK_JSON["context"]["environments"]
    for region in COVERED_REGIONS + ["il-central-1", "ca-west-1", "mx-central-1", "ap-southeast-5", "ap-east-2"]:
        env = dict(environments["prod"], region=region)
        try:
            load_environment({"environments": {"prod": env}}, "prod")
            accepted = True
        except ConfigError:
            accepted = False
        assert accepted is (region in COVERED_REGIONS), region


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


DEV_INIT_SQL = Path(__file__).resolve().parent.parent / "sql" / "dev-init.sql"
BOOTSTRAP_BUNDLE = bootstrap_bundle(DEV_INIT_SQL)


@pytest.mark.parametrize("spec", [EXPORT_BUNDLE, REPLICATOR_BUNDLE, BOOTSTRAP_BUNDLE], ids=lambda s: s.package)
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
        f"m = importlib.import_module('lambdas.{spec.package}.handler');"
        "assert callable(m.handler);"
        "print(sorted(n for n in sys.modules if n.split('.')[0] in ('pymysql', 'boto3', 'sqlparse')))"
    )
    result = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True)
    # Then the handler imports: nothing it needs is missing from the asset
    assert result.returncode == 0, result.stderr
    if spec is EXPORT_BUNDLE:
        assert "pymysql" in result.stdout
        assert (asset / "lambdas" / "export_to_xlsx" / "rds-ca-bundle.pem").is_file()
    if spec is BOOTSTRAP_BUNDLE:
        assert "'pymysql'" in result.stdout and "'sqlparse'" in result.stdout
        assert (asset / "lambdas" / "db_bootstrap" / "rds-ca-bundle.pem").read_bytes() == rds_ca_bundle()
        assert (asset / "lambdas" / "db_bootstrap" / "init.sql").read_bytes() == DEV_INIT_SQL.read_bytes()


def test_a_changed_init_sql_changes_the_bootstrap_asset(tmp_path):
    # The custom resource runs again when its properties change; the asset must change with the file too
    changed = tmp_path / "init.sql"
    changed.write_bytes(DEV_INIT_SQL.read_bytes() + b"\n-- one more line\n")
    assert bootstrap_bundle(changed).asset_hash() != BOOTSTRAP_BUNDLE.asset_hash()
    assert bootstrap_bundle(DEV_INIT_SQL).asset_hash() == BOOTSTRAP_BUNDLE.asset_hash()
    assert bootstrap_bundle(None).asset_hash() != BOOTSTRAP_BUNDLE.asset_hash()


def test_sql_files_are_written_into_the_package(lambdas_copy, tmp_path):
    # Given an export bundle with a .sql file among its extra files
    spec = dataclasses.replace(EXPORT_BUNDLE, root=lambdas_copy,
                               extra_files={"sql/reports/a.sql": lambda: b"SELECT 1\n"})
    (lambdas_copy / spec.package / "requirements.txt").write_text("")
    # When it is bundled, the file sits at that path inside the package, where the function reads it
    bundle(spec, tmp_path / "out")
    assert (tmp_path / "out" / "lambdas" / spec.package / "sql" / "reports" / "a.sql").read_bytes() == b"SELECT 1\n"


def test_the_export_asset_reads_its_sql_files_and_time_zones_on_its_own(dev, tmp_path, lambda_like_path):
    """Lambda's Amazon Linux 2023 runtimes are minimal images that have shipped without the system time zone
    database (github.com/aws/aws-lambda-dotnet/issues/1620): the asset brings tzdata, which zoneinfo falls back to."""
    from stacks.export_to_xlsx import export_bundle

    # Given the export asset built from the dev config (its .sql files included), for this machine
    spec = export_bundle(dev.config.exports)
    host = dataclasses.replace(spec, python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
                               platform=f"manylinux2014_{sysconfig.get_platform().split('-')[-1]}")
    asset = tmp_path / "asset"
    bundle(host, asset)
    (function,) = [r for r in dev.template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"
                   and r["Properties"].get("Handler") == "lambdas.export_to_xlsx.handler.handler"]
    exports = function["Properties"]["Environment"]["Variables"]["EXPORTS"]
    # When a Python with no system tz database decodes the template's EXPORTS as the cold start does
    probe = (
        "import sys, json, zoneinfo, datetime as dt;"
        f"sys.path[:0] = [{str(asset)!r}, {str(lambda_like_path)!r}];"
        "zoneinfo.reset_tzpath(to=[]);"
        "from lambdas.export_to_xlsx import definition, settings, params;"
        f"e = definition.decode_exports({exports!r}, settings.PACKAGE_DIR)['daily_sales'];"
        "v = params.resolve(e.parameters, {}, dt.datetime(2026, 3, 1, 0, 30, tzinfo=dt.timezone.utc), e.time_zone, "
        "export=e.name);"
        "print(json.dumps([[s.sql_file for s in e.sheets], e.sheets[0].sql.count('%(day)s'), str(v['day'])]))"
    )
    result = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True)
    # Then the SQL comes from the package, and Berlin's calendar is known without the system database
    assert result.returncode == 0, result.stderr
    files, placeholders, day = json.loads(result.stdout)
    assert files == ["sql/daily_sales_orders.sql", "sql/daily_sales_totals.sql"] and placeholders == 2
    assert day == "2026-02-28"  # 00:30 UTC on 1 March is 01:30 in Berlin: 'yesterday' is 28 February


def test_the_tests_run_on_the_python_of_the_functions_runtime():
    """The functions run on Lambda's python3.13 (stacks/bundling.py); so must the code under test. `make test`
    builds its venv with that Python where it is installed; CI must have it."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running != LAMBDA_PYTHON_VERSION and not os.environ.get("CI"):
        pytest.skip(f"tests run on Python {running}, the functions on {LAMBDA_PYTHON_VERSION}: install it "
                    f"(`pyenv install {LAMBDA_PYTHON_VERSION}`) and run `make clean test`")
    assert running == LAMBDA_PYTHON_VERSION
    assert RUNTIME.name == f"python{LAMBDA_PYTHON_VERSION}"
