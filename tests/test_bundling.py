"""Bundling without Docker: deterministic asset hashes, clear pip errors, and handlers that import as in Lambda."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from stacks.bundling import (
    EXPORT_BUNDLE, LAMBDA_PYTHON_VERSION, REPLICATOR_BUNDLE, RUNTIME, SHARED_FILES, BundlingError, bundle, rds_ca_bundle,
)
from lambdas.export_to_xlsx.params import resolve
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
    # A locked wheel changed (a rebuilt or replaced file of the same version): only its hash in the lock differs
    lambda root, spec: (root / spec.package / "requirements.txt").write_text(re.sub(
        r"--hash=sha256:[0-9a-f]{64}", "--hash=sha256:" + "0" * 64,
        (root / spec.package / "requirements.txt").read_text(), count=1)),
], ids=["code", "requirement", "module", "shared-contract", "locked-wheel-hash"])
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


def test_a_wheel_that_is_not_the_locked_one_stops_bundling(lambdas_copy, tmp_path):
    """pip installs the lock with --require-hashes: a downloaded file whose sha256 the lock does not name is refused
    (https://pip.pypa.io/en/stable/topics/secure-installs/#hash-checking-mode)."""
    spec = dataclasses.replace(EXPORT_BUNDLE, root=lambdas_copy, extra_files={})
    lock = lambdas_copy / spec.package / "requirements.txt"
    lock.write_text(re.sub(r"--hash=sha256:[0-9a-f]{64}", "--hash=sha256:" + "0" * 64, lock.read_text()))
    with pytest.raises(BundlingError, match=r"(?s)pip could not install .*DO NOT MATCH THE HASHES"):
        bundle(spec, tmp_path / "out")


def test_a_lock_without_hashes_is_refused(lambdas_copy, tmp_path):
    spec = dataclasses.replace(EXPORT_BUNDLE, root=lambdas_copy, extra_files={})
    (lambdas_copy / spec.package / "requirements.txt").write_text("PyMySQL==1.2.4\ntzdata==2026.6\n")
    with pytest.raises(BundlingError, match=r"(?s)pip could not install .*[Hh]ashes are required"):
        bundle(spec, tmp_path / "out")


ROOT = Path(__file__).resolve().parent.parent
LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)(\s*;[^\\]*)?\s*\\$")


def _lock(path: Path) -> dict[str, tuple[str, list[str], str]]:
    """name -> (version, hashes, marker) of a hash lock, checking that every requirement carries hashes."""
    out, current = {}, None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            current = None
            continue
        if stripped.startswith("--hash=sha256:"):
            assert current is not None, f"{path}: a hash outside a requirement: {line}"
            out[current][1].append(stripped.split(":", 1)[1].rstrip("\\ "))
            continue
        match = LOCK_LINE.match(stripped)
        assert match, f"{path}: not a pinned requirement followed by its hashes: {line}"
        current = re.sub(r"[-_.]+", "-", match.group(1)).lower()
        out[current] = (match.group(3), [], (match.group(4) or "").strip(" ;"))
    for name, (_, hashes, _) in out.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), f"{path}: {name} has no sha256"
    return out


def _top_level(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, version = re.match(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==(\S+)$", line).groups()
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


FUNCTIONS = [EXPORT_BUNDLE, REPLICATOR_BUNDLE, bootstrap_bundle(None)]


@pytest.mark.parametrize("spec", FUNCTIONS, ids=lambda s: s.package)
def test_each_function_lock_is_for_lambdas_platform_and_holds_its_requirements(spec):
    # Every package of the lock pinned with its files' sha256, compiled from the function's requirements.in
    lock = _lock(spec.lock_file)
    top = _top_level(spec.source_dir / "requirements.in")
    assert {name: lock[name][0] for name in top} == top
    # For the platform and Python the bundler installs for (uv names manylinux2014_aarch64 aarch64-manylinux2014)
    arch, = re.match(r"manylinux2014_(\w+)$", spec.platform).groups()
    header = spec.lock_file.read_text().splitlines()[1]
    assert f"--python-platform {arch}-manylinux2014" in header and f"--python-version {spec.python_version}" in header
    assert f"{spec.package}/requirements.in -o lambdas/{spec.package}/requirements.txt" in header


def test_the_venv_locks_pin_every_package_and_agree():
    synth, dev = _lock(ROOT / "requirements.txt"), _lock(ROOT / "requirements-dev.txt")
    # What synth needs is locked with the same versions and hashes in both files; the dev lock holds it all
    assert {name: dev[name] for name in synth} == synth
    for lock, source in ((synth, "requirements.in"), (dev, "requirements-dev.in")):
        top = _top_level(ROOT / source)
        assert {name: lock[name][0] for name in top} == top, source
    assert set(_top_level(ROOT / "requirements.in")) <= set(synth)


def test_this_venv_was_installed_from_the_lock():
    """`make test` installs requirements-dev.txt with --require-hashes: every locked package for this platform is
    installed at the locked version (the synth venv had 75 of 92 packages unpinned before)."""
    from importlib import metadata

    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version for d in metadata.distributions()}
    lock = _lock(ROOT / "requirements-dev.txt")
    wrong = {name: (version, installed.get(name)) for name, (version, _, marker) in lock.items()
             if not marker and installed.get(name) != version}
    assert wrong == {}
    assert len(lock) > 80


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
        f"es = definition.decode_exports({exports!r}, settings.PACKAGE_DIR);"
        "at = dt.datetime(2026, 3, 1, 0, 30, tzinfo=dt.timezone.utc);"
        "sheets = {n: [[s.sql_file, s.sql] for s in e.sheets] for n, e in es.items()};"
        "values = {n: {k: str(v) for k, v in params.resolve(e.parameters, {}, at, e.time_zone, export=n).items()} "
        "for n, e in es.items() if all(p.default is not None for p in e.parameters)};"
        "print(json.dumps({'sheets': sheets, 'values': values}))"
    )
    result = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True)
    # Then every sheet's SQL comes from the package as synth read it, and every zone's calendar is known without
    # the system database: relative dates resolve as they do here (e.g. 00:30 UTC on 1 March is 01:30 in Berlin,
    # where 'yesterday' is 28 February)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["sheets"] == {e.name: [[s.sql_file, s.sql] for s in e.sheets] for e in dev.config.exports}
    at = dt.datetime(2026, 3, 1, 0, 30, tzinfo=dt.timezone.utc)
    assert got["values"] == {e.name: {k: str(v) for k, v in resolve(e.parameters, {}, at, e.time_zone,
                                                                      export=e.name).items()}
                             for e in dev.config.exports if all(p.default is not None for p in e.parameters)}
    assert any(e.time_zone != "UTC" for e in dev.config.exports), "dev has an export in a time zone of its own"


def test_the_tests_run_on_the_python_of_the_functions_runtime():
    """The functions run on Lambda's python3.13 (stacks/bundling.py); so must the code under test. `make test`
    builds its venv with that Python where it is installed; CI must have it."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running != LAMBDA_PYTHON_VERSION and not os.environ.get("CI"):
        pytest.skip(f"tests run on Python {running}, the functions on {LAMBDA_PYTHON_VERSION}: install it "
                    f"(`pyenv install {LAMBDA_PYTHON_VERSION}`) and run `make clean test`")
    assert running == LAMBDA_PYTHON_VERSION
    assert RUNTIME.name == f"python{LAMBDA_PYTHON_VERSION}"
