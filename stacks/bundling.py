"""Bundle a function's code and its dependencies without Docker.

The function folder ``lambdas/<name>/`` is copied into the asset as the package
``lambdas.<name>``, beside ``lambdas/contract.py`` (the facts every function shares), so code is
imported the same way in the project, the tests and Lambda; its lock ``requirements.txt`` is installed next to it with pip for the
Lambda platform (``--platform ... --only-binary=:all:``), so no compiler and no
Docker engine is needed. The lock is compiled by ``make lock`` from ``requirements.in``
for that platform and pins every package with the sha256 of its files; pip installs it
with ``--require-hashes``, so a wheel that is not exactly the locked one stops synth.
Files a function needs beside its code (the Amazon RDS CA bundle) are written in by
``extra_files``.

The asset hash is computed here from the function's files (its lock, and so every
locked wheel's hash, included), the bundler's settings and the extra files, so two
synths of unchanged code give the same hash and any change to one of these, a new
locked wheel too, gives a new one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import aws_cdk as cdk
import jsii
from aws_cdk import aws_lambda as lambda_

from lambdas import contract
from stacks.rds_ca import CaBundleError, ca_bundle

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LAMBDAS_DIR = PROJECT_ROOT / "lambdas"

#: Runtime of both functions; the bundler installs wheels for the same Python.
RUNTIME = lambda_.Runtime.PYTHON_3_13
ARCHITECTURE = lambda_.Architecture.ARM_64
LAMBDA_PYTHON_VERSION = "3.13"
LAMBDA_PLATFORM = "manylinux2014_aarch64"

#: The function's top-level requirements and their lock, which ``make lock`` compiles from them.
REQUIREMENTS_IN, LOCK_FILE = "requirements.in", "requirements.txt"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", REQUIREMENTS_IN, LOCK_FILE)
#: Files of ``lambdas/`` every function's package holds beside its own folder.
SHARED_FILES = ("__init__.py", "contract.py", "cron.py", "ledger.py")


class BundlingError(RuntimeError):
    """Bundling a function failed; synth stops with this message."""


@dataclass(frozen=True)
class BundleSpec:
    """What goes into one function's asset."""

    package: str
    root: Path = LAMBDAS_DIR
    python_version: str = LAMBDA_PYTHON_VERSION
    platform: str = LAMBDA_PLATFORM
    extra_files: Mapping[str, Callable[[], bytes]] = field(default_factory=dict)

    @property
    def source_dir(self) -> Path:
        return self.root / self.package

    @property
    def handler(self) -> str:
        """The function's handler: its package's ``handler.handler``, under ``lambdas``."""
        return f"{self.root.name}.{self.package}.handler.handler"

    @property
    def lock_file(self) -> Path:
        return self.source_dir / LOCK_FILE

    @property
    def requirements(self) -> list[str]:
        """The lock's requirements (``name==version``), without their hashes."""
        if not self.lock_file.exists():
            return []
        lines = (line.split("#", 1)[0].strip().rstrip("\\").strip() for line in self.lock_file.read_text().splitlines())
        return [line for line in lines if line and not line.startswith("--")]

    def source_files(self) -> list[Path]:
        own = (p for p in self.source_dir.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
        return sorted([*own, *(self.root / name for name in SHARED_FILES)])

    def asset_hash(self) -> str:
        digest = hashlib.sha256()
        settings = {
            "package": self.package,
            "python_version": self.python_version,
            "platform": self.platform,
            "pip_args": _pip_args(self, "<target>", f"<{LOCK_FILE}>"),
        }
        digest.update(json.dumps(settings, sort_keys=True).encode())
        for path in self.source_files():
            digest.update(str(path.relative_to(self.root)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
        for name in sorted(self.extra_files):
            digest.update(name.encode() + b"\0" + self.extra_files[name]() + b"\0")
        return digest.hexdigest()


def _pip_args(spec: BundleSpec, target: str, requirements: str) -> list[str]:
    return [
        "install", "--quiet", "--disable-pip-version-check", "--no-compile", "--no-input", "--no-color",
        "--target", target,
        "--platform", spec.platform,
        "--implementation", "cp",
        "--python-version", spec.python_version,
        "--only-binary=:all:",
        "--require-hashes",  # every wheel must be the one the lock names (make lock writes the hashes)
        "--no-deps",  # the lock holds every package already; nothing unlocked may come in
        "--requirement", requirements,
    ]


def bundle(spec: BundleSpec, output_dir: Path) -> None:
    """Write the function's package, its dependencies and extra files into ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    package_dir = output_dir / spec.root.name / spec.package
    shutil.copytree(spec.source_dir, package_dir, ignore=_IGNORED, dirs_exist_ok=True)
    for name in SHARED_FILES:
        shutil.copy2(spec.root / name, package_dir.parent / name)
    for name, produce in spec.extra_files.items():
        target = package_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(produce())
    if not spec.requirements:
        return
    result = subprocess.run(
        [sys.executable, "-m", "pip", *_pip_args(spec, str(output_dir), str(spec.lock_file))],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        stderr = "\n".join(
            line for line in result.stderr.splitlines() if "is ignored: it is neither a file nor a directory" not in line
        )
        raise BundlingError(
            f"pip could not install {spec.lock_file} for {spec.platform} / Python "
            f"{spec.python_version} (exit {result.returncode}):\n{stderr.strip()}"
        )


@jsii.implements(cdk.ILocalBundling)
class _LocalPipBundling:
    def __init__(self, spec: BundleSpec):
        self._spec = spec

    def try_bundle(self, output_dir: str, options: Any = None) -> bool:
        # Never return False: that would make the CDK fall back to Docker, which
        # these machines do not have. Errors propagate and stop the synth.
        bundle(self._spec, Path(output_dir))
        return True


def function_code(spec: BundleSpec) -> lambda_.Code:
    """The asset for one function, bundled locally with pip."""
    return lambda_.Code.from_asset(
        str(spec.source_dir),
        asset_hash=spec.asset_hash(),
        asset_hash_type=cdk.AssetHashType.CUSTOM,
        bundling=cdk.BundlingOptions(
            image=RUNTIME.bundling_image,
            local=_LocalPipBundling(spec),
        ),
    )


def rds_ca_bundle(extra_file: Path | None = None) -> bytes:
    """The RDS regional roots and the Amazon roots RDS Proxy uses (see :mod:`stacks.rds_ca`), plus the
    certificates of ``extra_file`` (``database.ca_bundle_file``)."""
    try:
        return ca_bundle(extra_file).pem
    except CaBundleError as exc:
        raise BundlingError(str(exc)) from None


EXPORT_BUNDLE = BundleSpec(package="export_to_xlsx", extra_files={contract.CA_BUNDLE_FILE: rds_ca_bundle})
REPLICATOR_BUNDLE = BundleSpec(package="bucket_replicator")
