"""What the synthesized stack promises, for dev (new VPC and database) and prod (imported ones)."""

from __future__ import annotations

import dataclasses
import json

import aws_cdk as cdk
import pytest
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk.assertions import Match, Template

from lambdas.bucket_replicator import settings as replicator_contract
from lambdas.export_to_xlsx import settings as export_contract
from stacks.bucket_replicator import BucketReplicator
from lambdas.export_to_xlsx.definition import ExportDefinition, decode_exports, sql_digest
from stacks.config import PROJECT_ROOT as ROOT
from stacks.database import IamDatabaseAuth, SecretDatabaseAuth
from stacks.export_to_xlsx import ExportToXlsx
from stacks.run_ledger import RunLedger
from stacks.secure_bucket import SecureBucket

ENVS = ["dev", "prod"]


@pytest.fixture(params=ENVS)
def synth(request):
    return request.getfixturevalue(request.param)


def template(s) -> Template:
    return Template.from_json(s.template)


def props(s, construct) -> dict:
    return s.template["Resources"][s.logical_id(construct)]["Properties"]


def function_env(s, construct) -> dict:
    return props(s, construct.function)["Environment"]["Variables"]


# --- buckets -----------------------------------------------------------------------------


def owned_buckets(s) -> list:
    buckets = [s.stack.source.bucket, s.stack.access_logs.bucket]
    if s.config.destination.bucket_name is None:
        buckets.append(s.stack.destination_bucket)
    return buckets


def test_every_bucket_is_locked_down(synth):
    t = template(synth)
    t.resource_count_is("AWS::S3::Bucket", len(owned_buckets(synth)))
    expected_deletion = "Delete" if synth.config.removal_policy == "destroy" else "Retain"
    for bucket in owned_buckets(synth):
        resource = synth.template["Resources"][synth.logical_id(bucket)]
        assert resource["DeletionPolicy"] == expected_deletion
        p = resource["Properties"]
        assert p["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True}
        assert p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
            "SSEAlgorithm": "AES256"}
        assert p["VersioningConfiguration"] == {"Status": "Enabled"}
        assert p["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
        rules = p["LifecycleConfiguration"]["Rules"]
        assert any(r.get("AbortIncompleteMultipartUpload") == {"DaysAfterInitiation": 1} for r in rules)
        assert any("NoncurrentVersionExpiration" in r for r in rules)
        t.has_resource_properties("AWS::S3::BucketPolicy", {
            "Bucket": {"Ref": synth.logical_id(bucket)},
            "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
                "Effect": "Deny", "Action": "s3:*", "Principal": {"AWS": "*"},
                "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])},
        })


def test_data_buckets_log_access_to_the_log_bucket(synth):
    logs_id = synth.logical_id(synth.stack.access_logs.bucket)
    source = props(synth, synth.stack.source.bucket)
    assert source["LoggingConfiguration"] == {"DestinationBucketName": {"Ref": logs_id}, "LogFilePrefix": "source/"}


def test_dev_empties_its_buckets_on_delete_and_prod_keeps_them(dev, prod):
    template(dev).resource_count_is("Custom::S3AutoDeleteObjects", 3)
    template(prod).resource_count_is("Custom::S3AutoDeleteObjects", 0)


def test_an_imported_destination_is_only_granted_not_created(prod):
    assert prod.stack.destination_bucket.bucket_name == "partner-team-xlsx-inbox"
    statements = replicator_statements(prod)
    dest = [st for st in statements if "s3:PutObject" in st["Action"]]
    assert dest == [{"Action": ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject", "s3:PutObjectAcl"],
                     "Effect": "Allow", "Resource": "arn:aws:s3:::partner-team-xlsx-inbox/from-sales/*"}]


def test_copies_to_a_kms_destination_may_use_exactly_that_key_through_s3(prod):
    """A copy into an SSE-KMS bucket needs kms:GenerateDataKey, and a multipart copy kms:Decrypt too
    (https://docs.aws.amazon.com/AmazonS3/latest/API/API_CreateMultipartUpload.html); another account's key
    must be named by ARN and its key policy must admit the role
    (https://docs.aws.amazon.com/kms/latest/developerguide/alias-using.html)."""
    key = prod.config.destination.kms_key_arn
    kms = [st for st in replicator_statements(prod) if any(a.startswith("kms:") for a in st["Action"])]
    assert kms == [{"Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Effect": "Allow", "Resource": key,
                    "Condition": {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}}}]
    env = function_env(prod, prod.stack.replicator)
    assert env[replicator_contract.ENV_DESTINATION_KMS_KEY_ARN] == key


def test_the_partner_gets_the_exact_statements_to_add(prod):
    """Another owner's bucket (and key) must admit the replicator's generated role; the stack prints what to send."""
    outputs = prod.stack.resolve(prod.template["Outputs"])
    role_arn = {"Fn::GetAtt": [prod.logical_id(prod.stack.replicator.role), "Arn"]}
    assert outputs["ReplicatorRoleArn"]["Value"] == role_arn

    def statement(name):  # the JSON text CloudFormation renders, with the role ARN put in
        parts = outputs[name]["Value"]["Fn::Join"][1]
        return json.loads("".join("ROLE" if p == role_arn else p for p in parts))

    bucket = statement("PartnerBucketPolicyStatement")
    assert bucket["Principal"] == {"AWS": "ROLE"} and bucket["Effect"] == "Allow"
    granted = [st for st in replicator_statements(prod) if "s3:PutObject" in st["Action"]][0]
    assert sorted(bucket["Action"]) == granted["Action"] and bucket["Resource"] == granted["Resource"]
    key = statement("PartnerKeyPolicyStatement")
    assert key["Principal"] == {"AWS": "ROLE"} and sorted(key["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert key["Condition"] == {"StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}}


@pytest.fixture(scope="module")
def partner_elsewhere():
    """prod sending to a partner bucket (and key) in us-east-1, and dev (environment-agnostic) sending to one in
    ap-southeast-2."""
    from tests.conftest import _variant

    def prod_change(prod):
        prod["destination"]["kms_key_arn"] = PARTNER_KEY.format(region="us-east-1")

    def dev_change(dev):
        dev["destination"].update(bucket_name="partner-inbox-sydney",
                                  kms_key_arn=PARTNER_KEY.format(region="ap-southeast-2"))

    return {"us-east-1": _variant("prod", prod_change), "ap-southeast-2": _variant("dev", dev_change)}


PARTNER_KEY = "arn:aws:kms:{region}:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize("region", ["us-east-1", "ap-southeast-2"])
def test_a_partner_key_in_another_region_is_used_through_s3_in_that_region(partner_elsewhere, region):
    """An SSE-KMS key must be in its bucket's region
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/specifying-kms-encryption.html), and kms:ViaService
    matches the service endpoint in the region that calls KMS, s3.<region>.amazonaws.com
    (https://docs.aws.amazon.com/kms/latest/developerguide/conditions-kms.html#conditions-kms-via-service): the
    condition names the key's region, whatever region the stack is deployed to."""
    synth = partner_elsewhere[region]
    key = PARTNER_KEY.format(region=region)
    through_s3 = {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}
    # Given a partner key outside the stack's region (prod: eu-west-1; dev: wherever it is deployed)
    assert synth.config.region in ("eu-west-1", None)
    # Then the role may use it through S3 in the key's region
    kms = [st for st in replicator_statements(synth) if any(a.startswith("kms:") for a in st["Action"])]
    assert kms == [{"Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Effect": "Allow", "Resource": key,
                    "Condition": through_s3}]
    # and the statement the partner adds to the key policy says the same
    value = synth.stack.resolve(synth.template["Outputs"]["PartnerKeyPolicyStatement"]["Value"])
    text = "".join(p if isinstance(p, str) else "ROLE" for p in value["Fn::Join"][1])
    assert json.loads(text)["Condition"] == through_s3


def test_config_reads_the_key_region_from_a_full_key_arn():
    from pipeline_ops.synth import CDK_JSON
    from stacks.config import ConfigError, load_environment

    prod = json.loads(json.dumps(CDK_JSON["context"]["environments"]["prod"]))
    prod["destination"]["kms_key_arn"] = "arn:aws:kms:europe:210987654321:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    with pytest.raises(ConfigError, match=r"environments.prod.destination.kms_key_arn: 'arn:aws:kms:europe:.*not a full KMS"):
        load_environment({"environments": {"prod": prod}}, "prod")


# --- notification ------------------------------------------------------------------------


def notification_filters(s) -> list[list[dict]]:
    (notification,) = s.resources("Custom::S3BucketNotifications").values()
    p = notification["Properties"]
    assert p["BucketName"] == {"Ref": s.logical_id(s.stack.source.bucket)}
    configs = p["NotificationConfiguration"]["LambdaFunctionConfigurations"]
    for c in configs:
        assert c["Events"] == ["s3:ObjectCreated:*"]
        assert c["LambdaFunctionArn"] == {"Fn::GetAtt": [s.logical_id(s.stack.replicator.function), "Arn"]}
    return [c["Filter"]["Key"]["FilterRules"] for c in configs]


def test_any_xlsx_anywhere_in_the_source_bucket_triggers_the_replicator(synth):
    """S3 filters compare suffixes as written, and two suffixes overlap only "if a given string can end with
    both" (https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-how-to-filtering.html), so
    .xlsx and .XLSX are two allowed filters; the export's key_prefix does not limit them."""
    assert synth.config.destination.source_prefix == ""
    assert notification_filters(synth) == [[{"Name": "suffix", "Value": ".xlsx"}],
                                           [{"Name": "suffix", "Value": ".XLSX"}]]


def test_a_configured_source_prefix_limits_filter_grant_and_handler_alike(shared_vpc):
    prefix = shared_vpc.config.destination.source_prefix
    assert prefix == "reports/"
    assert notification_filters(shared_vpc) == [
        [{"Name": "suffix", "Value": suffix}, {"Name": "prefix", "Value": prefix}] for suffix in (".xlsx", ".XLSX")]
    reads = [st for st in replicator_statements(shared_vpc) if st["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]]
    assert [sorted(r["Fn::Join"][1][1] for r in st["Resource"]) for st in reads] == [
        [f"/{prefix}*.XLSX", f"/{prefix}*.xlsx"]]
    assert function_env(shared_vpc, shared_vpc.stack.replicator)[replicator_contract.ENV_SOURCE_PREFIX] == prefix


# --- IAM ---------------------------------------------------------------------------------


def policy_statements(s, role) -> list[dict]:
    role_id = s.logical_id(role)
    out = []
    for r in s.template["Resources"].values():
        if r["Type"] == "AWS::IAM::Policy" and {"Ref": role_id} in r["Properties"]["Roles"]:
            out += r["Properties"]["PolicyDocument"]["Statement"]
    return out


def replicator_statements(s) -> list[dict]:
    return json.loads(json.dumps(s.stack.resolve(policy_statements(s, s.stack.replicator.role))))


def objects(s, bucket, pattern: str):
    return {"Fn::Join": ["", [{"Fn::GetAtt": [s.logical_id(bucket), "Arn"]}, pattern]]}


def test_export_role_may_only_write_its_prefixes_and_log_in_as_its_user(synth):
    statements = policy_statements(synth, synth.stack.export.role)
    prefix = synth.config.key_prefix
    s3_statements = [st for st in statements if any(a.startswith("s3:") for a in st["Action"])]
    assert s3_statements == [{
        "Action": ["s3:AbortMultipartUpload", "s3:PutObject"], "Effect": "Allow",
        "Resource": sorted([objects(synth, synth.stack.source.bucket, f"/{prefix}{e.name}/*")
                            for e in synth.config.exports], key=json.dumps),
    }]
    login = [st for st in statements if st["Action"] in ("secretsmanager:GetSecretValue", "rds-db:connect")]
    auth = synth.stack.database.export_auth
    if synth.config.database.auth == "secret":
        assert login == [{"Action": "secretsmanager:GetSecretValue", "Effect": "Allow",
                          "Resource": synth.stack.resolve(auth.secret.secret_arn)}]
    else:
        assert [st["Action"] for st in login] == ["rds-db:connect"]
    # The role has no managed policy: everything it may do is in the statements above.
    assert "ManagedPolicyArns" not in props(synth, synth.stack.export.role)


def dbuser_arn(resource_id) -> dict:
    return {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":rds-db:", {"Ref": "AWS::Region"}, ":",
                              {"Ref": "AWS::AccountId"}, ":dbuser:", resource_id, "/xlsx_export"]]}


def test_iam_auth_connects_as_the_one_user_of_the_one_database_and_reads_no_secret(dev, prod_iam):
    """rds-db:connect and its resource, arn:${Partition}:rds-db:${Region}:${Account}:dbuser:${DbiResourceId}/${DbUserName}:
    https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonrdsiamauthentication.html and
    https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/UsingWithRDS.IAMDBAuth.IAMPolicy.html"""
    instance = dev.logical_id(dev.stack.database.instance)
    prod_arn = f"arn:aws:rds-db:eu-west-1:123456789012:dbuser:{prod_iam.config.database.resource_id}/xlsx_export"
    for synth, resource in ((dev, dbuser_arn({"Fn::GetAtt": [instance, "DbiResourceId"]})), (prod_iam, prod_arn)):
        statements = policy_statements(synth, synth.stack.export.role)
        connect = [st for st in statements if "rds-db:connect" in json.dumps(st["Action"])]
        assert connect == [{"Action": "rds-db:connect", "Effect": "Allow", "Resource": resource}]
        assert not any("secretsmanager:" in json.dumps(st["Action"]) for st in statements)
        env = function_env(synth, synth.stack.export)
        assert set(env) == export_contract.env_names("iam")
        assert env[export_contract.ENV_DB_AUTH] == "iam" and env[export_contract.ENV_DB_USER] == "xlsx_export"


def test_existing_iam_needs_no_secrets_manager_endpoint(prod_iam):
    endpoints = [r["Properties"] for r in prod_iam.resources("AWS::EC2::VPCEndpoint").values()]
    assert [e["VpcEndpointType"] for e in endpoints] == ["Gateway"]


def secret_readers(s, secret_arn) -> list[str]:
    """Logical ids of the policies that may read ``secret_arn``."""
    out = []
    for logical_id, r in s.resources("AWS::IAM::Policy").items():
        for st in r["Properties"]["PolicyDocument"]["Statement"]:
            resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            if "secretsmanager:GetSecretValue" in json.dumps(st["Action"]) and secret_arn in resources:
                out.append(logical_id)
    return out


def test_only_the_bootstrap_reads_the_master_secret(dev, dev_secret):
    for synth in (dev, dev_secret):
        master = synth.stack.resolve(synth.stack.database.master_secret.secret_arn)
        bootstrap_policy = synth.logical_id(synth.stack.bootstrap.role.node.find_child("DefaultPolicy"))
        assert secret_readers(synth, master) == [bootstrap_policy]
    # With secret auth the export reads only the generated secret of its own user (the bootstrap sets it)
    own = dev_secret.stack.resolve(dev_secret.stack.database.export_auth.secret.secret_arn)
    export_policy = dev_secret.logical_id(dev_secret.stack.export.role.node.find_child("DefaultPolicy"))
    assert sorted(secret_readers(dev_secret, own)) == sorted([
        export_policy, dev_secret.logical_id(dev_secret.stack.bootstrap.role.node.find_child("DefaultPolicy"))])
    template(dev_secret).has_resource_properties("AWS::SecretsManager::Secret", {
        "GenerateSecretString": Match.object_like({"SecretStringTemplate": '{"username": "xlsx_export"}',
                                                   "GenerateStringKey": "password"})})


def test_the_secrets_endpoint_admits_only_what_reads_a_secret(dev, dev_secret):
    """An interface endpoint has one network interface per subnet it is given, each in that subnet's zone; Lambda
    runs a VPC function in the subnets it is given (https://docs.aws.amazon.com/vpc/latest/privatelink/
    create-interface-endpoint.html, https://docs.aws.amazon.com/lambda/latest/dg/configuration-vpc.html)."""
    for synth, readers in ((dev, [dev.stack.bootstrap]), (dev_secret, [dev_secret.stack.bootstrap,
                                                                      dev_secret.stack.export])):
        (endpoint,) = [r for r in synth.resources("AWS::EC2::VPCEndpoint").values()
                       if r["Properties"]["VpcEndpointType"] == "Interface"]
        (group,) = endpoint["Properties"]["SecurityGroupIds"]
        ingress = [r["Properties"] for r in synth.resources("AWS::EC2::SecurityGroupIngress").values()
                   if r["Properties"]["GroupId"] == group]
        sources = sorted(json.dumps(i["SourceSecurityGroupId"]) for i in ingress)
        assert sources == sorted(json.dumps({"Fn::GetAtt": [synth.logical_id(c.security_group), "GroupId"]})
                                 for c in readers)
        assert all(i["FromPort"] == 443 == i["ToPort"] for i in ingress)
        # Both isolated subnets (two availability zones), as the bootstrap function: neither depends on one zone
        subnets = sorted(endpoint["Properties"]["SubnetIds"], key=json.dumps)
        assert subnets == sorted(({"Ref": k} for k in dev_subnets(synth)), key=json.dumps) and len(subnets) == 2
        bootstrap_subnets = props(synth, synth.stack.bootstrap.function)["VpcConfig"]["SubnetIds"]
        assert sorted(bootstrap_subnets, key=json.dumps) == subnets
        zones = {json.dumps(synth.template["Resources"][s["Ref"]]["Properties"]["AvailabilityZone"]) for s in subnets}
        assert len(zones) == 2


def test_the_bootstrap_runs_at_deploy_with_what_the_database_must_look_like(dev, dev_secret, prod, prod_iam):
    from lambdas.db_bootstrap import settings as bootstrap_contract

    init_sql = dev.config.database.init_sql
    (resource,) = dev.resources("Custom::DatabaseBootstrap").values()
    p = resource["Properties"]
    assert p[bootstrap_contract.PROP_EXPORT_USER] == "xlsx_export" and p[bootstrap_contract.PROP_AUTH] == "iam"
    assert p[bootstrap_contract.PROP_INIT_SQL_SHA256] == bootstrap_contract.sha256(init_sql.read_text(encoding="utf-8"))
    assert bootstrap_contract.PROP_EXPORT_SECRET_ARN not in p
    # It runs once its network path exists: the Secrets Manager endpoint and the database's rules
    assert dev.logical_id(dev.stack.database.secrets_endpoint) in resource["DependsOn"]
    assert dev.logical_id(dev.stack.database.security_group) in resource["DependsOn"]
    (secret_resource,) = dev_secret.resources("Custom::DatabaseBootstrap").values()
    assert secret_resource["Properties"][bootstrap_contract.PROP_AUTH] == "secret"
    assert secret_resource["Properties"][bootstrap_contract.PROP_INIT_SQL_SHA256] == ""
    env = function_env(dev, dev.stack.bootstrap)
    assert set(env) == bootstrap_contract.env_names("iam") and env[bootstrap_contract.ENV_DB_TLS] == "verify"
    # The function serves exactly the identity the resource asks for, and refuses any other
    for s, resource_props in ((dev, p), (dev_secret, secret_resource["Properties"])):
        env = function_env(s, s.stack.bootstrap)
        assert set(env) == bootstrap_contract.env_names(resource_props[bootstrap_contract.PROP_AUTH])
        assert env[bootstrap_contract.ENV_EXPORT_USER] == resource_props[bootstrap_contract.PROP_EXPORT_USER]
        assert env[bootstrap_contract.ENV_EXPORT_AUTH] == resource_props[bootstrap_contract.PROP_AUTH]
        assert env.get(bootstrap_contract.ENV_EXPORT_SECRET_ARN) == resource_props.get(
            bootstrap_contract.PROP_EXPORT_SECRET_ARN)
    # Nothing runs against an existing database
    assert prod.resources("Custom::DatabaseBootstrap") == prod_iam.resources("Custom::DatabaseBootstrap") == {}


@pytest.fixture(scope="module")
def dev_renamed():
    """dev whose database_name changed: RDS sets DBName only when it creates an instance."""
    from tests.conftest import _variant

    return _variant("dev", lambda dev: dev["database"].update(database_name="sales"))


def test_the_bootstrap_runs_again_on_a_replaced_database(dev, dev_renamed):
    """DBName "Update requires: Replacement", and CloudFormation first creates the replacement instance, then
    points the resources that reference it at the new one
    (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-rds-dbinstance.html);
    a custom resource is sent an Update only when its properties change
    (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-cloudformation-customresource.html).
    So the database's identity must be among the bootstrap's properties, or a new, empty database gets no user."""
    from lambdas.db_bootstrap import settings as bootstrap_contract

    instance = dev.logical_id(dev.stack.database.instance)
    (resource,) = dev.resources("Custom::DatabaseBootstrap").values()
    p = resource["Properties"]
    # Given the bootstrap's properties: they name the instance's endpoint and its RDS-managed master secret
    assert p[bootstrap_contract.PROP_DB_HOST] == {"Fn::GetAtt": [instance, "Endpoint.Address"]}
    assert p[bootstrap_contract.PROP_MASTER_SECRET_ARN] == {"Fn::GetAtt": [instance, "MasterUserSecret.SecretArn"]}
    assert p[bootstrap_contract.PROP_DB_NAME] == "app" and p[bootstrap_contract.PROP_DB_PORT] == "3306"
    # When the database is renamed (a replaced instance), then the properties differ, so CloudFormation runs it
    (renamed,) = dev_renamed.resources("Custom::DatabaseBootstrap").values()
    assert renamed["Properties"][bootstrap_contract.PROP_DB_NAME] == "sales"
    assert renamed["Properties"] != p
    # and the function's environment, which it connects with, names the same database
    env = function_env(dev, dev.stack.bootstrap)
    assert env[bootstrap_contract.ENV_DB_HOST] == p[bootstrap_contract.PROP_DB_HOST]
    assert env[bootstrap_contract.ENV_MASTER_SECRET_ARN] == p[bootstrap_contract.PROP_MASTER_SECRET_ARN]


def handler_timeout(s, resource) -> int:
    """The Timeout of the function behind a custom resource's ServiceToken."""
    (function_id, _) = resource["Properties"]["ServiceToken"]["Fn::GetAtt"]
    return s.template["Resources"][function_id]["Properties"]["Timeout"]


@pytest.mark.parametrize("env", ["dev", "prod", "dev_secret"])
def test_custom_resources_are_bounded(request, env):
    """A custom resource's ServiceTimeout is how long CloudFormation waits for its answer: 1 to 3600 s, an hour by
    default (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-cloudformation-customresource.html).
    A function stops at its Timeout (https://docs.aws.amazon.com/lambda/latest/dg/configuration-timeout.html).
    CDK's provider framework answers for the bootstrap; when invoking it throws, the framework waits up to 300 s for
    the function to become active and invokes it once more (aws-cdk-lib custom-resources/lib/provider-framework/
    runtime/outbound.js, `waitUntilFunctionActiveV2({maxWaitTime: 300})`)."""
    from stacks import db_bootstrap
    from stacks.custom_resources import RESPONSE_MARGIN

    synth = request.getfixturevalue(env)
    custom = {k: r for k, r in synth.template["Resources"].items()
              if r["Type"].startswith("Custom::") or r["Type"] == "AWS::CloudFormation::CustomResource"}
    assert custom
    margin = RESPONSE_MARGIN.to_seconds()
    for logical_id, resource in custom.items():
        # Every custom resource: CloudFormation waits for its handler's whole run and a minute to answer, not an hour
        timeout = resource["Properties"].get("ServiceTimeout")
        assert timeout is not None, logical_id
        assert handler_timeout(synth, resource) + margin <= int(timeout) < 3600, (logical_id, timeout)
    if synth.stack.bootstrap is None:
        return
    # The bootstrap: two runs and the framework's wait fit in the framework's time, which fits in ServiceTimeout
    (bootstrap,) = [r for r in custom.values() if r["Type"] == db_bootstrap.RESOURCE_TYPE]
    bootstrap_seconds = props(synth, synth.stack.bootstrap.function)["Timeout"]
    framework_seconds = handler_timeout(synth, bootstrap)
    assert framework_seconds == db_bootstrap.FRAMEWORK_TIMEOUT.to_seconds()  # CDK's value, as the constant says
    wait = db_bootstrap.FRAMEWORK_ACTIVE_WAIT.to_seconds()
    assert 2 * bootstrap_seconds + wait + margin <= framework_seconds
    assert framework_seconds + margin <= int(bootstrap["Properties"]["ServiceTimeout"]) <= 1000


def test_the_bootstraps_own_steps_fit_in_its_timeout(dev):
    """Each Secrets Manager call is bounded by botocore's attempts x (connect + read timeout)
    (https://boto3.amazonaws.com/v1/documentation/api/latest/guide/retries.html); two such calls, the database
    connect and the margin kept for the last statement's own error leave time for the SQL."""
    from lambdas.db_bootstrap import handler as bootstrap_handler

    timeout = props(dev, dev.stack.bootstrap.function)["Timeout"]
    config = bootstrap_handler.AWS_CONFIG
    bootstrap_handler.secrets_client()  # botocore rewrites a retries dict it is given: read it as the client uses it
    per_call = config.retries["total_max_attempts"] * (config.connect_timeout + config.read_timeout)
    fixed = 2 * per_call + bootstrap_handler.CONNECT_TIMEOUT + bootstrap_handler.DEADLINE_MARGIN
    assert fixed <= timeout / 2, (fixed, timeout)


def test_replicator_role_reads_only_what_the_filter_delivers_and_writes_the_destination(dev):
    """IAM resource ARNs take wildcards anywhere in a segment
    (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_resource.html), so the
    read grant is exactly the notification filter: keys ending in .xlsx or .XLSX."""
    statements = policy_statements(dev, dev.stack.replicator.role)
    s3_statements = [st for st in statements if any(a.startswith("s3:") for a in st["Action"])]
    assert s3_statements == [
        {"Action": ["s3:GetObject", "s3:GetObjectVersion"], "Effect": "Allow",
         "Resource": [objects(dev, dev.stack.source.bucket, "/*.XLSX"),
                      objects(dev, dev.stack.source.bucket, "/*.xlsx")]},
        {"Action": ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject", "s3:PutObjectAcl"], "Effect": "Allow",
         "Resource": objects(dev, dev.stack.destination_bucket, "/incoming/*")},
    ]
    assert not any(a.startswith("kms:") for st in statements for a in st["Action"])
    assert "ManagedPolicyArns" not in props(dev, dev.stack.replicator.role)


RESOURCELESS_ACTIONS = {
    "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",
    "xray:PutTraceSegments", "xray:PutTelemetryRecords",
    # List access, no resource type (https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonec2.html):
    # the deploy-time lookup of S3's prefix list id.
    "ec2:DescribeManagedPrefixLists",
}


def test_no_data_action_on_every_resource_and_no_wildcard_actions(synth):
    for logical_id, r in synth.template["Resources"].items():
        if r["Type"] != "AWS::IAM::Policy":
            continue
        for st in r["Properties"]["PolicyDocument"]["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            for action in actions:
                assert not action.endswith("*"), f"{logical_id} grants {action}"
            if st["Resource"] == "*":
                assert set(actions) <= RESOURCELESS_ACTIONS, f"{logical_id}: {actions} on '*'"


def test_one_role_per_function(synth):
    export_role = props(synth, synth.stack.export.function)["Role"]
    replicator_role = props(synth, synth.stack.replicator.function)["Role"]
    assert export_role == {"Fn::GetAtt": [synth.logical_id(synth.stack.export.role), "Arn"]}
    assert replicator_role == {"Fn::GetAtt": [synth.logical_id(synth.stack.replicator.role), "Arn"]}


# --- network -----------------------------------------------------------------------------


def test_dev_vpc_has_no_route_to_the_internet(dev):
    t = template(dev)
    t.resource_count_is("AWS::EC2::NatGateway", 0)
    t.resource_count_is("AWS::EC2::InternetGateway", 0)
    t.resource_count_is("AWS::EC2::Route", 0)
    for subnet in dev.resources("AWS::EC2::Subnet").values():
        assert subnet["Properties"]["MapPublicIpOnLaunch"] is False
    t.has_resource_properties("AWS::EC2::FlowLog", {"ResourceType": "VPC", "TrafficType": "REJECT"})


def test_export_function_runs_in_the_database_subnets_with_its_own_group(synth):
    config = props(synth, synth.stack.export.function)["VpcConfig"]
    assert config["SecurityGroupIds"] == [{"Fn::GetAtt": [synth.logical_id(synth.stack.export.security_group),
                                                          "GroupId"]}]
    if synth.config.database.mode == "existing":
        assert config["SubnetIds"] == list(synth.config.database.subnet_ids)
    else:
        subnets = [{"Ref": k} for k in dev_subnets(synth)]
        assert sorted(config["SubnetIds"], key=json.dumps) == sorted(subnets, key=json.dumps)
    assert "VpcConfig" not in props(synth, synth.stack.replicator.function)


def dev_subnets(s) -> list[str]:
    return list(s.resources("AWS::EC2::Subnet"))


def test_database_admits_the_export_function_and_bootstrap_on_its_port_and_nothing_else(synth):
    ingress = synth.resources("AWS::EC2::SecurityGroupIngress")
    db_group = synth.stack.resolve(synth.stack.database.security_group.security_group_id)
    to_db = [r["Properties"] for r in ingress.values() if r["Properties"]["GroupId"] == db_group]
    port = synth.stack.database.port
    admitted = [("ExportToXlsx function", synth.stack.export)]
    if synth.stack.bootstrap is not None:
        admitted.append(("Database bootstrap (deploy time)", synth.stack.bootstrap))
    assert sorted(to_db, key=json.dumps) == sorted([{
        "Description": description, "FromPort": port, "ToPort": port, "IpProtocol": "tcp",
        "GroupId": db_group,
        "SourceSecurityGroupId": {"Fn::GetAtt": [synth.logical_id(construct.security_group), "GroupId"]},
    } for description, construct in admitted], key=json.dumps)
    if synth.config.database.mode == "create":
        db_sg = props(synth, synth.stack.database.security_group)
        assert "SecurityGroupIngress" not in db_sg


def egress_rules(s) -> list[dict]:
    own = {"Fn::GetAtt": [s.logical_id(s.stack.export.security_group), "GroupId"]}
    assert "SecurityGroupEgress" not in props(s, s.stack.export.security_group) or \
        props(s, s.stack.export.security_group)["SecurityGroupEgress"][0]["CidrIp"] == "255.255.255.255/32"
    return [r["Properties"] for r in s.resources("AWS::EC2::SecurityGroupEgress").values() if r["Properties"]["GroupId"] == own]


@pytest.mark.parametrize("env", ["dev", "prod", "dev_secret", "prod_iam"])
def test_export_group_reaches_the_database_s3_dynamodb_and_secrets_manager_only(request, env):
    """No 443 to 0.0.0.0/0: S3 and DynamoDB (the run ledger) by their managed prefix lists, which security
    group rules may reference (https://docs.aws.amazon.com/vpc/latest/privatelink/vpc-endpoints-s3.html,
    https://docs.aws.amazon.com/vpc/latest/privatelink/vpc-endpoints-ddb.html) and which are looked up at
    deploy time with ec2:DescribeManagedPrefixLists; Secrets Manager by its endpoint's security group, and only
    where the export reads a secret (with IAM database auth it never talks to Secrets Manager)."""
    synth = request.getfixturevalue(env)
    reads_secret = synth.config.database.auth == "secret"
    rules = egress_rules(synth)
    by_port = sorted((r["FromPort"], r.get("Description")) for r in rules)
    assert [port for port, _ in by_port] == sorted([synth.stack.database.port, 443, 443] + [443] * reads_secret)
    assert not any("CidrIp" in r and r["CidrIp"] == "0.0.0.0/0" for r in rules)
    lists = [r for r in rules if "DestinationPrefixListId" in r]
    for service, construct_id in (("s3", "S3PrefixList"), ("dynamodb", "DynamoDbPrefixList")):
        lookup = synth.logical_id(synth.stack.export.node.find_child(construct_id).node.find_child("Resource"))
        assert {"Fn::GetAtt": [lookup, "PrefixLists.0.PrefixListId"]} in [r["DestinationPrefixListId"] for r in lists]
        create = json.dumps(synth.template["Resources"][lookup]["Properties"]["Create"])
        assert "describeManagedPrefixLists" in create and "com.amazonaws." in create and f".{service}" in create
    if not reads_secret:
        return
    (secrets,) = [r for r in rules if r["FromPort"] == 443 and "DestinationPrefixListId" not in r]
    if synth.config.database.mode == "create":  # the Database's endpoint, which the bootstrap uses too
        endpoint_sg = synth.stack.database.secrets_endpoint_security_group
        assert secrets["DestinationSecurityGroupId"] == {"Fn::GetAtt": [synth.logical_id(endpoint_sg), "GroupId"]}
    else:  # prod names the VPC's existing endpoint's group, which gets one rule for the function
        group = synth.config.database.secrets_endpoint_security_group_id
        assert secrets["DestinationSecurityGroupId"] == group
        ingress = [r["Properties"] for r in synth.resources("AWS::EC2::SecurityGroupIngress").values()
                   if r["Properties"]["GroupId"] == group]
        assert ingress == [{"Description": "ExportToXlsx function", "FromPort": 443, "ToPort": 443, "IpProtocol": "tcp",
                            "GroupId": group, "SourceSecurityGroupId": {
                                "Fn::GetAtt": [synth.logical_id(synth.stack.export.security_group), "GroupId"]}}]


S3_ENDPOINT_GROUP = "sg-0fedcba9876543210"


@pytest.fixture(scope="module")
def prod_s3_interface():
    """prod in a VPC that reaches S3 through an S3 interface endpoint."""
    from tests.conftest import _variant

    return _variant("prod", lambda prod: prod["database"].update(s3_endpoint_security_group_id=S3_ENDPOINT_GROUP))


def test_an_s3_interface_endpoint_is_reached_through_its_group(prod_s3_interface, prod):
    """An S3 interface endpoint is network interfaces with private addresses in the VPC's subnets, behind the
    endpoint's security groups (https://docs.aws.amazon.com/AmazonS3/latest/userguide/privatelink-interface-endpoints.html);
    S3's managed prefix list holds S3's public ranges, the gateway endpoint's path
    (https://docs.aws.amazon.com/vpc/latest/privatelink/vpc-endpoints-s3.html), so it does not cover them."""
    synth = prod_s3_interface
    own = {"Fn::GetAtt": [synth.logical_id(synth.stack.export.security_group), "GroupId"]}
    # Then the export may send HTTPS to the endpoint's group, besides the database, the prefix list and Secrets Manager
    to_endpoint = [r for r in egress_rules(synth) if r.get("DestinationSecurityGroupId") == S3_ENDPOINT_GROUP]
    assert to_endpoint == [{"GroupId": own, "IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
                            "DestinationSecurityGroupId": S3_ENDPOINT_GROUP,
                            "Description": "HTTPS to the S3 interface endpoint"}]
    assert len(egress_rules(synth)) == len(egress_rules(prod)) + 1
    # and the endpoint's group admits the export on HTTPS, one rule and nothing else
    ingress = [r["Properties"] for r in synth.resources("AWS::EC2::SecurityGroupIngress").values()
               if r["Properties"]["GroupId"] == S3_ENDPOINT_GROUP]
    assert ingress == [{"Description": "ExportToXlsx function", "FromPort": 443, "ToPort": 443, "IpProtocol": "tcp",
                        "GroupId": S3_ENDPOINT_GROUP, "SourceSecurityGroupId": own}]
    assert not [r for r in egress_rules(prod) if r.get("DestinationSecurityGroupId") == S3_ENDPOINT_GROUP]


def test_the_s3_endpoint_group_is_for_an_existing_vpc_only():
    from pipeline_ops.synth import CDK_JSON
    from stacks.config import ConfigError, load_environment

    dev = json.loads(json.dumps(CDK_JSON["context"]["environments"]["dev"]))
    dev["database"]["s3_endpoint_security_group_id"] = S3_ENDPOINT_GROUP
    with pytest.raises(ConfigError, match=r"environments.dev.database: unknown field\(s\) s3_endpoint_security_group_id"):
        load_environment({"environments": {"dev": dev}}, "dev")
    prod = json.loads(json.dumps(CDK_JSON["context"]["environments"]["prod"]))
    prod["database"]["s3_endpoint_security_group_id"] = "vpce-0123"
    with pytest.raises(ConfigError, match=r"s3_endpoint_security_group_id: 'vpce-0123' is not the security group id"):
        load_environment({"environments": {"prod": prod}}, "prod")


def test_an_existing_vpc_gets_no_endpoint_by_default(prod):
    """A shared VPC's routes and DNS belong to everyone in it: an S3 gateway endpoint takes over S3 traffic
    from every subnet of its route tables, and a route table holds one route per service
    (https://docs.aws.amazon.com/vpc/latest/privatelink/gateway-endpoints.html); a private-DNS interface
    endpoint answers the service's name for the whole VPC
    (https://docs.aws.amazon.com/vpc/latest/privatelink/privatelink-access-aws-services.html)."""
    template(prod).resource_count_is("AWS::EC2::VPCEndpoint", 0)


def test_endpoints_asked_for_in_a_shared_vpc_narrow_nobody(shared_vpc):
    t = template(shared_vpc)
    t.resource_count_is("AWS::EC2::VPCEndpoint", 2)
    gateway = [r["Properties"] for r in shared_vpc.resources("AWS::EC2::VPCEndpoint").values()
               if r["Properties"]["VpcEndpointType"] == "Gateway"]
    assert gateway[0]["RouteTableIds"] == list(shared_vpc.config.database.route_table_ids)
    assert "PolicyDocument" not in gateway[0]  # the default full-access policy: other workloads keep S3
    endpoint_sg = shared_vpc.stack.export.secrets_endpoint.connections.security_groups[0]
    inbound = props(shared_vpc, endpoint_sg)["SecurityGroupIngress"]
    assert inbound == [{"CidrIp": shared_vpc.config.database.vpc_cidr, "Description": "Every caller in the VPC",
                        "FromPort": 443, "ToPort": 443, "IpProtocol": "tcp"}]
    t.has_resource_properties("AWS::EC2::VPCEndpoint", {"VpcEndpointType": "Interface", "PrivateDnsEnabled": True})


def test_our_own_vpc_keeps_narrow_endpoints(dev):
    t = template(dev)
    t.has_resource_properties("AWS::EC2::VPCEndpoint", {
        "VpcEndpointType": "Gateway",
        "ServiceName": {"Fn::Join": ["", ["com.amazonaws.", {"Ref": "AWS::Region"}, ".s3"]]},
        "PolicyDocument": {"Statement": [Match.object_like({"Action": ["s3:AbortMultipartUpload", "s3:PutObject"]})],
                           "Version": "2012-10-17"},
    })
    # The Secrets Manager endpoint: see test_the_secrets_endpoint_admits_only_what_reads_a_secret


def test_a_secret_under_a_customer_key_is_decrypted_only_through_secrets_manager(shared_vpc, prod):
    """GetSecretValue on a secret under a customer managed key needs kms:Decrypt on that key
    (https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_GetSecretValue.html); kms:ViaService
    limits it to calls Secrets Manager makes (https://docs.aws.amazon.com/kms/latest/developerguide/conditions-kms.html)."""
    statements = policy_statements(shared_vpc, shared_vpc.stack.export.role)
    kms = [st for st in statements if any(a.startswith("kms:") for a in st["Action"] if isinstance(st["Action"], list))
           or st["Action"] == "kms:Decrypt"]
    assert kms == [{"Action": "kms:Decrypt", "Effect": "Allow", "Resource": shared_vpc.config.database.secret_kms_key_arn,
                    "Condition": {"StringEquals": {"kms:ViaService": "secretsmanager.eu-west-1.amazonaws.com"}}}]
    assert not [st for st in policy_statements(prod, prod.stack.export.role) if "kms:Decrypt" in st["Action"]]


# --- functions ---------------------------------------------------------------------------


def test_both_functions_run_python_on_arm_with_json_logs_and_tracing(synth):
    for construct in (synth.stack.export, synth.stack.replicator):
        p = props(synth, construct.function)
        assert p["Runtime"] == "python3.13" and p["Architectures"] == ["arm64"]
        assert p["TracingConfig"] == {"Mode": "Active"}
        assert p["LoggingConfig"]["LogFormat"] == "JSON"
        assert p["LoggingConfig"]["LogGroup"] == {"Ref": synth.logical_id(construct.log_group)}
        template(synth).has_resource_properties("AWS::Logs::LogGroup", {
            "RetentionInDays": synth.config.log_retention_days})
        assert props(synth, construct.log_group)["RetentionInDays"] == synth.config.log_retention_days


def test_export_function_settings_come_from_config(synth):
    p = props(synth, synth.stack.export.function)
    fn = synth.config.export_function
    assert p["MemorySize"] == fn.memory_mb and p["Timeout"] == fn.timeout_seconds
    assert p["EphemeralStorage"] == {"Size": fn.ephemeral_storage_mb}
    # No reserved concurrency by default: Lambda keeps 100 unreserved, so reserving fails on small accounts
    # (https://docs.aws.amazon.com/lambda/latest/api/API_PutFunctionConcurrency.html).
    assert "ReservedConcurrentExecutions" not in p
    assert p["Handler"] == "lambdas.export_to_xlsx.handler.handler"


def test_environment_variables_are_exactly_what_the_handlers_read(synth):
    export_env = function_env(synth, synth.stack.export)
    replicator_env = function_env(synth, synth.stack.replicator)
    assert set(export_env) == export_contract.env_names(synth.config.database.auth)
    assert set(replicator_env) == replicator_contract.ENV_NAMES
    # SQL files sit at the same paths (sql/...) in the project as in the function's package
    # SQL files sit at the same paths (sql/...) in the project as in the function's package: the function's own
    # decoder gives back exactly the definitions config read (the schedules are the stack's, not the function's)
    exports = decode_exports(export_env[export_contract.ENV_EXPORTS], ROOT)
    assert list(exports.values()) == [dataclasses.replace(e, schedule=None, schedules=()) for e in synth.config.exports]
    if synth.stack.deadline_check is not None:
        from lambdas.deadline_check import settings as deadline_contract

        deadline_env = function_env(synth, synth.stack.deadline_check)
        assert set(deadline_env) == deadline_contract.ENV_NAMES
        assert deadline_contract.decode_deadlines(deadline_env[deadline_contract.ENV_DEADLINES]) == tuple(
            deadline_contract.Deadline(e.name, s.name, s.expression, s.time_zone, s.deliver_within_minutes)
            for e in synth.config.exports for s in e.schedules if s.deliver_within_minutes)
    assert export_env[export_contract.ENV_DB_TLS] == "verify"
    assert export_env[export_contract.ENV_KEY_PREFIX] == synth.config.key_prefix
    assert export_env[export_contract.ENV_SOURCE_BUCKET] == {"Ref": synth.logical_id(synth.stack.source.bucket)}
    assert replicator_env[replicator_contract.ENV_SOURCE_BUCKET] == export_env[export_contract.ENV_SOURCE_BUCKET]
    assert replicator_env[replicator_contract.ENV_DESTINATION_PREFIX] == synth.config.destination.prefix


def test_reserved_concurrency_only_when_configured(shared_vpc):
    assert props(shared_vpc, shared_vpc.stack.export.function)["ReservedConcurrentExecutions"] == 1


def test_existing_database_is_addressed_from_config(prod):
    env = function_env(prod, prod.stack.export)
    db = prod.config.database
    assert env[export_contract.ENV_DB_HOST] == db.host
    assert env[export_contract.ENV_DB_PORT] == str(db.port)
    assert env[export_contract.ENV_DB_NAME] == db.database_name
    assert env[export_contract.ENV_DB_SECRET_ARN] == db.secret_arn


def test_created_database_is_encrypted_private_backed_up_and_requires_tls(dev):
    t = template(dev)
    t.has_resource_properties("AWS::RDS::DBInstance", {
        "Engine": "mysql", "EngineVersion": "8.4", "AutoMinorVersionUpgrade": True,
        "StorageEncrypted": True, "PubliclyAccessible": False, "ManageMasterUserPassword": True,
        "BackupRetentionPeriod": 1, "DeletionProtection": False, "EnableIAMDatabaseAuthentication": True,
    })
    t.has_resource_properties("AWS::RDS::DBParameterGroup", {"Family": "mysql8.4", "Parameters": Match.object_like(
        {"require_secure_transport": "1"})})
    env = function_env(dev, dev.stack.export)
    instance = dev.logical_id(dev.stack.database.instance)
    assert env[export_contract.ENV_DB_HOST] == {"Fn::GetAtt": [instance, "Endpoint.Address"]}
    assert export_contract.ENV_DB_SECRET_ARN not in env  # the export never logs in as the master user


def test_rds_logs_are_written_and_kept_for_the_configured_retention(dev):
    """The slow query log reaches CloudWatch Logs only with slow_query_log=1 and log_output=FILE
    (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/USER_LogAccess.MySQLDB.PublishtoCloudWatchLogs.html);
    RDS creates /aws/rds/instance/<id>/<log> itself, and log data never expires by default
    (https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/Working-with-log-groups-and-streams.html)."""
    t = template(dev)
    t.has_resource_properties("AWS::RDS::DBInstance", {"EnableCloudwatchLogsExports": ["error", "slowquery"]})
    t.has_resource_properties("AWS::RDS::DBParameterGroup", {"Parameters": Match.object_like(
        {"slow_query_log": "1", "log_output": "FILE", "long_query_time": "10"})})
    instance = dev.logical_id(dev.stack.database.instance)
    for log in ("error", "slowquery"):
        create = json.dumps(props(dev, dev.stack.database.node.find_child(f"{log.capitalize()}LogGroup"))["Create"])
        assert '"action\\":\\"createLogGroup' in create and "ResourceAlreadyExistsException" in create
        retention = props(dev, dev.stack.database.node.find_child(f"{log.capitalize()}LogRetention"))
        for call in ("Create", "Update"):
            text = json.dumps(retention[call])
            assert "putRetentionPolicy" in text and f'retentionInDays\\":{dev.config.log_retention_days}' in text
            assert {"Ref": instance} in retention[call]["Fn::Join"][1] and f'/{log}\\"' in text
    # and the deploy-time calls may touch only this instance's log groups
    for policy in dev.stack.database.log_group_policies:
        (statement,) = props(dev, policy)["PolicyDocument"]["Statement"]
        assert statement["Action"] == ["logs:CreateLogGroup", "logs:DeleteLogGroup", "logs:PutRetentionPolicy"]
        assert statement["Resource"]["Fn::Join"][1][-2:] == [{"Ref": instance}, "/*"]


def test_cdks_sdk_call_function_logs_with_the_environments_retention_and_removal(synth):
    """CDK's AwsCustomResource singleton (the S3 prefix-list lookup, the RDS log-group calls) logs to the group its
    LoggingConfig names (https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs-loggroups.html);
    a Ref to the group makes CloudFormation create it before the function
    (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/intrinsic-function-reference-ref.html),
    so before any invocation: Lambda never creates a default group first, which a later create would collide with."""
    from stacks.pipeline_stack import AWS_CUSTOM_RESOURCE_ID

    singleton = synth.stack.node.find_child(AWS_CUSTOM_RESOURCE_ID)
    fn = props(synth, singleton)
    group_ref = fn["LoggingConfig"]["LogGroup"]
    group = synth.template["Resources"][group_ref["Ref"]]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["RetentionInDays"] == synth.config.log_retention_days
    assert group["DeletionPolicy"] == ("Delete" if synth.config.removal_policy == "destroy" else "Retain")
    # and no log group of the stack keeps CDK's defaults (731 days), whatever the environment says
    retentions = {r["Properties"].get("RetentionInDays") for r in synth.resources("AWS::Logs::LogGroup").values()}
    assert retentions == {synth.config.log_retention_days}


def test_sdk_calls_of_a_stack_share_one_log_group_and_refuse_other_settings():
    from stacks.custom_resources import sdk_calls_log_group

    stack = cdk.Stack(cdk.App(), "S")
    first = sdk_calls_log_group(stack, log_retention=logs.RetentionDays.ONE_WEEK, removal_policy=cdk.RemovalPolicy.DESTROY)
    again = sdk_calls_log_group(stack,
                                log_retention=logs.RetentionDays.ONE_WEEK, removal_policy=cdk.RemovalPolicy.DESTROY)
    assert again.node.path == first.node.path
    with pytest.raises(ValueError, match="share one log group"):
        sdk_calls_log_group(stack, log_retention=logs.RetentionDays.ONE_YEAR, removal_policy=cdk.RemovalPolicy.DESTROY)


def test_an_environment_agnostic_stack_refuses_regions_the_ca_bundle_does_not_cover(dev, prod):
    """Rules with Fn::Contains stop a stack create/update before any resource
    (https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/rules-section-structure.html)."""
    from stacks.rds_ca import ca_bundle

    rule = dev.template["Rules"]["SupportedRegion"]["Assertions"][0]
    assert rule["Assert"] == {"Fn::Contains": [sorted(ca_bundle().regions), {"Ref": "AWS::Region"}]}
    assert "SupportedRegion" not in prod.template.get("Rules", {})  # prod's region was checked by its config


def test_one_schedule_per_scheduled_export(synth):
    rules = synth.resources("AWS::Events::Rule")
    scheduled = [e for e in synth.config.exports if e.schedule]
    assert len(rules) == len(scheduled)
    for export in scheduled:
        template(synth).has_resource_properties("AWS::Events::Rule", {
            "ScheduleExpression": export.schedule,
            "State": "ENABLED",
            "Targets": [Match.object_like({
                "Arn": {"Fn::GetAtt": [synth.logical_id(synth.stack.export.function), "Arn"]},
                "Input": Match.serialized_json({"export": export.name}),
                "RetryPolicy": {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 7200},
                "DeadLetterConfig": {"Arn": {"Fn::GetAtt": [synth.logical_id(synth.stack.export.failure_queue), "Arn"]}},
            })],
        })


@pytest.mark.parametrize("function", ["export", "replicator"])
def test_retries_then_a_failure_queue_kept_with_the_data(synth, function):
    """Failed asynchronous invocations go to the function's on-failure destination
    (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html); events EventBridge
    cannot deliver go to the rule target's dead-letter queue
    (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rule-dlq.html)."""
    construct = getattr(synth.stack, function)
    retries = {"export": 1, "replicator": 2}[function]
    queue = synth.logical_id(construct.failure_queue)
    template(synth).has_resource_properties("AWS::Lambda::EventInvokeConfig", {
        "FunctionName": {"Ref": synth.logical_id(construct.function)}, "MaximumRetryAttempts": retries,
        "DestinationConfig": {"OnFailure": {"Destination": {"Fn::GetAtt": [queue, "Arn"]}}}})
    resource = synth.template["Resources"][queue]
    assert resource["DeletionPolicy"] == ("Delete" if synth.config.removal_policy == "destroy" else "Retain")
    assert resource["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert resource["Properties"]["SqsManagedSseEnabled"] is True
    template(synth).has_resource_properties("AWS::SQS::QueuePolicy", {
        "Queues": [{"Ref": queue}],
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])},
    })


def test_the_export_docstring_says_which_retries_apply_to_what(dev):
    """A rule target's retry policy covers delivering the event to the target
    (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rule-retry-policy.html); Lambda, having accepted an
    asynchronous invocation, retries function errors as the function's own asynchronous settings say
    (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async.html)."""
    import re

    doc = " ".join(ExportToXlsx.__doc__.split())
    # Given the template: the rule retries delivery twice within two hours; the function retries an error once in 6 h
    scheduled = next(e.name for e in dev.config.exports if e.schedule)  # an export with a UTC rule, whichever
    (rule,) = [r for r in dev.resources("AWS::Events::Rule").values()
               if json.loads(r["Properties"]["Targets"][0].get("Input", "{}")).get("export") == scheduled]
    assert rule["Properties"]["Targets"][0]["RetryPolicy"] == {"MaximumEventAgeInSeconds": 7200,
                                                               "MaximumRetryAttempts": 2}
    fn = dev.logical_id(dev.stack.export.function)
    (invoke,) = [r["Properties"] for r in dev.resources("AWS::Lambda::EventInvokeConfig").values()
                 if r["Properties"]["FunctionName"] == {"Ref": fn}]
    assert invoke["MaximumRetryAttempts"] == 1 and invoke["MaximumEventAgeInSeconds"] == 6 * 3600
    # Then the docstring gives the two hours to delivery and the function's errors to its own one retry
    assert re.search(r"EventBridge retries delivering the event to Lambda up to twice within two hours", doc)
    assert re.search(r"a function error follows the function's async invoke config", doc)
    assert re.search(r"a function error in an asynchronous run .{0,40}gets one async retry within six hours", doc)


def test_alarms_on_errors_and_failure_queues_go_to_the_topic(synth):
    topic = {"Ref": synth.logical_id(synth.stack.alarm_topic)}
    alarms = [r["Properties"] for r in synth.resources("AWS::CloudWatch::Alarm").values()]
    watched = sorted((a["MetricName"], a["Namespace"]) for a in alarms)
    # the export, the replicator, the bootstrap (create), the deadline check (with deadlines: its queue, late runs)
    checks = synth.stack.deadline_check is not None
    functions = 2 + (synth.stack.bootstrap is not None) + checks
    assert watched == [("ApproximateNumberOfMessagesVisible", "AWS/SQS")] * (2 + checks) + [
        ("DeliveredEventsNotPublished", "MysqlXlsxPipeline")] + [("Errors", "AWS/Lambda")] * functions + [
        ("LedgerWritesFailed", "MysqlXlsxPipeline")] * 2 + [("WorkbooksLate", "MysqlXlsxPipeline")] * checks
    for alarm in alarms:
        assert alarm["AlarmActions"] == [topic] and alarm["Threshold"] == 1
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    queues = {a["Dimensions"][0]["Value"]["Fn::GetAtt"][0] for a in alarms if a["Namespace"] == "AWS/SQS"}
    assert queues == {synth.logical_id(synth.stack.export.failure_queue),
                      synth.logical_id(synth.stack.replicator.failure_queue)} | (
        {synth.logical_id(synth.stack.deadline_check.failure_queue)} if checks else set())


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _why_cloudwatch_cannot_notify(resources: dict, alarm_id: str) -> list[str]:
    """What stops CloudWatch from publishing alarm ``alarm_id``'s notifications to each topic in its
    AlarmActions (empty: nothing). A topic with a policy accepts only what the policy allows; the alarm
    must be admitted by the service principal with aws:SourceAccount and aws:SourceArn (this alarm); a
    deny must not apply to a TLS publish; a topic under a KMS key needs that key to admit CloudWatch too."""
    problems = []
    # The alarm's own ARN; a key (which cannot name the alarm without a cycle) may admit the account's alarms.
    this_alarm = [{"Fn::GetAtt": [alarm_id, "Arn"]}]
    account_alarms = this_alarm + [{"Fn::Join": ["", [
        "arn:", {"Ref": "AWS::Partition"}, ":cloudwatch:", {"Ref": "AWS::Region"}, ":", {"Ref": "AWS::AccountId"},
        ":alarm:*"]]}]
    conditions_ok = lambda c, arns: (c.get("StringEquals", {}).get("aws:SourceAccount") == {"Ref": "AWS::AccountId"}
                                     and any(arn in _as_list(c.get("ArnLike", {}).get("aws:SourceArn", []))
                                             for arn in arns))
    admits = lambda st, actions, arns: (
        st["Effect"] == "Allow" and _as_list(st.get("Principal", {}).get("Service")) == ["cloudwatch.amazonaws.com"]
        and set(actions) <= {a.lower() for a in _as_list(st["Action"])} and conditions_ok(st.get("Condition", {}), arns))
    for action in resources[alarm_id]["Properties"].get("AlarmActions", []):
        topic_id = action["Ref"]
        if resources[topic_id]["Type"] != "AWS::SNS::Topic":
            problems.append(f"{alarm_id}: action {topic_id} is not a topic of the stack")
            continue
        policies = [r["Properties"]["PolicyDocument"]["Statement"] for r in resources.values()
                    if r["Type"] == "AWS::SNS::TopicPolicy" and {"Ref": topic_id} in r["Properties"]["Topics"]]
        statements = [st for policy in policies for st in policy]
        if not any(admits(st, {"sns:publish"}, this_alarm) and {"Ref": topic_id} in _as_list(st["Resource"]) for st in statements):
            problems.append(f"{alarm_id}: no statement of {topic_id}'s policy lets CloudWatch publish this alarm")
        for st in statements:
            if st["Effect"] == "Deny" and st.get("Condition") != {"Bool": {"aws:SecureTransport": "false"}}:
                problems.append(f"{alarm_id}: {topic_id}'s policy denies more than non-TLS requests: {st}")
        key = resources[topic_id].get("Properties", {}).get("KmsMasterKeyId")
        if key is not None:
            key_id = (key.get("Fn::GetAtt") or [key.get("Ref")])[0] if isinstance(key, dict) else None
            if key_id not in resources:
                problems.append(f"{alarm_id}: {topic_id} is encrypted with {key}, whose policy the stack cannot change")
            elif not any(admits(st, {"kms:decrypt", "kms:generatedatakey*"}, account_alarms)
                         for st in resources[key_id]["Properties"]["KeyPolicy"]["Statement"]):
                problems.append(f"{alarm_id}: key {key_id} of {topic_id} does not let CloudWatch use it")
    return problems


def test_every_alarm_can_notify_its_topic(synth):
    """Each alarm action reaches people only if the topic lets CloudWatch publish: a topic policy
    replaces SNS's default one, so the service principal cloudwatch.amazonaws.com needs an Allow, held
    to this account and these alarms by aws:SourceAccount and aws:SourceArn (confused-deputy guard);
    an alarm otherwise shows "is not authorized to perform: SNS:Publish" in its history.
    https://docs.aws.amazon.com/sns/latest/dg/sns-access-policy-use-cases.html
    https://repost.aws/knowledge-center/cloudwatch-receive-sns-for-alarm-trigger
    An encrypted topic also needs its KMS key to admit CloudWatch (kms:Decrypt, kms:GenerateDataKey*):
    https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html"""
    resources = synth.template["Resources"]
    alarms = synth.resources("AWS::CloudWatch::Alarm")
    assert alarms and all(a["Properties"]["AlarmActions"] for a in alarms.values())
    assert [p for alarm_id in alarms for p in _why_cloudwatch_cannot_notify(resources, alarm_id)] == []
    # Still: no publish or subscribe without TLS.
    template(synth).has_resource_properties("AWS::SNS::TopicPolicy", {
        "Topics": [{"Ref": synth.logical_id(synth.stack.alarm_topic)}],
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Effect": "Deny", "Principal": "*", "Action": "sns:Publish",
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])},
    })


@pytest.mark.parametrize("encrypted", [False, True])
def test_alarm_check_catches_a_topic_that_does_not_admit_cloudwatch(encrypted):
    """The walk above fails a topic with only the TLS deny (SNS's default policy replaced) and, for an
    encrypted topic, a key that does not admit CloudWatch; admit_alarms fixes both."""
    from aws_cdk import aws_cloudwatch as cloudwatch
    from aws_cdk import aws_kms as kms

    from stacks.pipeline_function import admit_alarms, alarm_on

    def build(admit: bool) -> dict:
        stack = cdk.Stack(cdk.App())
        key = kms.Key(stack, "K") if encrypted else None
        topic = sns.Topic(stack, "T", enforce_ssl=True, master_key=key)
        alarm = alarm_on(stack, "A", metric=cloudwatch.Metric(namespace="N", metric_name="M"),
                         description="d", topic=topic)
        if admit:
            admit_alarms(topic, [alarm])
        resources = Template.from_stack(stack).to_json()["Resources"]
        alarm_id = stack.resolve(alarm.node.default_child.logical_id)
        return _why_cloudwatch_cannot_notify(resources, alarm_id)

    found = build(admit=False)
    assert any("lets CloudWatch publish" in p for p in found)
    assert any("does not let CloudWatch use it" in p for p in found) == encrypted
    assert build(admit=True) == []


def test_alarm_email_is_subscribed_only_when_configured(dev, prod):
    template(dev).resource_count_is("AWS::SNS::Subscription", 0)
    template(prod).has_resource_properties("AWS::SNS::Subscription", {
        "Protocol": "email", "Endpoint": prod.config.alarm_email})


def test_outputs(synth):
    outputs = synth.template["Outputs"]
    partner = {"PartnerBucketPolicyStatement", "PartnerKeyPolicyStatement"} if synth.config.destination.bucket_name \
        else set()
    assert set(outputs) == {"SourceBucketName", "DestinationBucketName", "ExportFunctionName",
                            "ReplicatorFunctionName", "FailedCopiesQueueUrl", "FailedExportsQueueUrl",
                            "AlarmTopicArn", "ReplicatorRoleArn", "AlarmNames", "RunLedgerTableName"} | partner
    assert outputs["SourceBucketName"]["Value"] == {"Ref": synth.logical_id(synth.stack.source.bucket)}
    assert outputs["FailedCopiesQueueUrl"]["Value"] == {"Ref": synth.logical_id(synth.stack.replicator.failure_queue)}


def test_alarm_names_output_lists_every_alarm_of_the_stack(synth):
    """`pipeline-ops status` reads every alarm's state from this output (Ref of an alarm is its name:
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-cloudwatch-alarm.html)."""
    separator, names = synth.template["Outputs"]["AlarmNames"]["Value"]["Fn::Join"]
    assert separator == ","
    assert sorted(n["Ref"] for n in names) == sorted(synth.resources("AWS::CloudWatch::Alarm"))


# --- constructs refuse bad props ----------------------------------------------------------------


def _scratch():
    stack = cdk.Stack(cdk.App())
    topic = sns.Topic(stack, "T")
    return stack, topic


def test_replicator_refuses_the_source_as_destination():
    stack, topic = _scratch()
    bucket = SecureBucket(stack, "B", removal_policy=cdk.RemovalPolicy.RETAIN).bucket
    ledger = RunLedger(stack, "L", removal_policy=cdk.RemovalPolicy.RETAIN)
    with pytest.raises(ValueError, match="destination_bucket is the source bucket"):
        BucketReplicator(stack, "R", source_bucket=bucket, destination_bucket=bucket, alarm_topic=topic,
                         log_retention=logs.RetentionDays.ONE_WEEK, removal_policy=cdk.RemovalPolicy.RETAIN,
                         ledger=ledger, exports=["orders"])
    same_name = s3.Bucket.from_bucket_name(stack, "Same", "named-bucket")
    named = s3.Bucket.from_bucket_name(stack, "Named", "named-bucket")
    with pytest.raises(ValueError, match="destination_bucket is the source bucket"):
        BucketReplicator(stack, "R2", source_bucket=named, destination_bucket=same_name, alarm_topic=topic,
                         log_retention=logs.RetentionDays.ONE_WEEK, removal_policy=cdk.RemovalPolicy.RETAIN,
                         ledger=ledger, exports=["orders"])


def test_secure_bucket_refuses_bad_props():
    stack, _ = _scratch()
    with pytest.raises(ValueError, match="removal_policy must be DESTROY or RETAIN"):
        SecureBucket(stack, "B", removal_policy=cdk.RemovalPolicy.SNAPSHOT)
    with pytest.raises(ValueError, match="access_logs_prefix needs access_logs_bucket"):
        SecureBucket(stack, "C", removal_policy=cdk.RemovalPolicy.RETAIN, access_logs_prefix="x/")


@pytest.mark.parametrize("change, message", [
    ({"exports": []}, "exports must name at least one export"),
    ({"exports": [ExportDefinition.single("a", "SELECT 1"), ExportDefinition.single("a", "SELECT 2")]}, "must be unique"),
    ({"key_prefix": "exports"}, "key_prefix must be empty or end with '/'"),
    ({"database_port": 0}, "database_port must be a TCP port"),
    ({"ephemeral_storage_mb": 100}, "ephemeral_storage_mb must be 512..10240, got 100"),
    ({"reserved_concurrency": 0}, "reserved_concurrency must be at least 1"),
    ({"endpoints": ["sqs"]}, "endpoints may only name s3, secretsmanager, dynamodb, got sqs"),
    ({"secret_kms_key_arn": "alias/x"}, "secret_kms_key_arn must be a KMS key ARN"),
    ({"auth": "root:hunter2"}, "auth must be IamDatabaseAuth or SecretDatabaseAuth"),
    ({"auth": IamDatabaseAuth("xlsx_export", "db-ABC"), "endpoints": ["secretsmanager"]},
     "with IAM database auth the export reads no secret"),
])
def test_export_construct_refuses_bad_props(change, message):
    from aws_cdk import aws_ec2 as ec2
    from aws_cdk import aws_secretsmanager as secretsmanager

    stack, topic = _scratch()
    vpc = ec2.Vpc(stack, "Vpc", nat_gateways=0, max_azs=1, subnet_configuration=[
        ec2.SubnetConfiguration(name="i", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)])
    props = dict(
        source_bucket=SecureBucket(stack, "B", removal_policy=cdk.RemovalPolicy.RETAIN).bucket,
        key_prefix="", exports=[ExportDefinition.single("orders", "SELECT 1")], vpc=vpc,
        subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
        database_security_group=ec2.SecurityGroup(stack, "Db", vpc=vpc), database_host="db", database_port=3306,
        database_name="app", auth=SecretDatabaseAuth(secretsmanager.Secret(stack, "S")), alarm_topic=topic,
        log_retention=logs.RetentionDays.ONE_WEEK, removal_policy=cdk.RemovalPolicy.RETAIN,
        ledger=RunLedger(stack, "L", removal_policy=cdk.RemovalPolicy.RETAIN),
    )
    props.update(change)
    with pytest.raises(ValueError, match=message):
        ExportToXlsx(stack, "E", **props)


# --- reports: SQL files, parameters, formats in the template ------------------------------------------


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_a_report_travels_in_cdk_json_s_field_names_with_its_sql_files_as_paths_and_digests(env, request):
    # Every export of the environment, whichever it lists: EXPORTS holds cdk.json's own fields (always the sheets
    # form), a SQL file as its path and the digest of the SQL synth checked (a changed .sql shows in the template)
    synth = request.getfixturevalue(env)
    raw = json.loads(function_env(synth, synth.stack.export)[export_contract.ENV_EXPORTS])
    assert list(raw) == [e.name for e in synth.config.exports]
    for export in synth.config.exports:
        body = raw[export.name]
        assert body["sheets"] == [{"name": s.name, "sql_file": s.sql_file, "sha256": sql_digest(s.sql)} if s.sql_file
                                  else {"name": s.name, "sql": s.sql} for s in export.sheets]
        assert body.get("parameters", []) == [p.to_json() for p in export.parameters]
        assert body.get("time_zone", "UTC") == export.time_zone and body.get("formats", {}) == dict(export.formats)
        assert body.get("on_empty", "upload") == export.on_empty and "schedule" not in body
        assert not any("SELECT" in json.dumps(s) for s in body["sheets"] if "sql_file" in s)
        # And its schedule sends only the export's name: the parameters take their defaults at run time
        if export.schedule:
            rule = props(synth, synth.stack.export.rules[export.name])
            assert json.loads(rule["Targets"][0]["Input"]) == {"export": export.name}


def test_the_export_asset_holds_the_sql_files_and_changes_with_them(dev):
    from stacks.export_to_xlsx import export_bundle

    spec = export_bundle(dev.config.exports)
    # Every sheet of dev read from a .sql file, whichever: the file is in the asset at its path, as synth read it
    filed = [(e, s) for e in dev.config.exports for s in e.sheets if s.sql_file]
    assert filed, "dev has an export with a .sql file"
    for export, sheet in filed:
        assert spec.extra_files[sheet.sql_file]() == sheet.sql.encode()
    # A changed .sql file gives a new asset hash (so a new function version and a snapshot diff)
    export, sheet = filed[0]
    changed = dataclasses.replace(export, sheets=tuple(dataclasses.replace(s, sql="SELECT 2") if s is sheet else s
                                                       for s in export.sheets))
    others = [e for e in dev.config.exports if e.name != export.name]
    assert export_bundle(others + [changed]).asset_hash() != spec.asset_hash()
    assert export_bundle(list(dev.config.exports)).asset_hash() == spec.asset_hash()


FILTER_KEYS = ["a.xlsx", "a.XLSX", "a.Xlsx", "a.xlsx.txt", "reports/a.xlsx", "reports/b/c.XLSX", "Reports/a.xlsx",
               "other/reports/a.xlsx", "exports/orders/x.xlsx", "x.csv", ".xlsx"]


@pytest.mark.parametrize("variant", ["dev", "prod", "shared_vpc"])
def test_the_filter_and_the_handler_agree_on_every_key(request, variant):
    """An object the filter delivers is never skipped by the handler, and the other way round. S3 delivers a key
    when one configuration's prefix and suffix rules both match it, as written
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-how-to-filtering.html)."""
    s = request.getfixturevalue(variant)
    filters = notification_filters(s)
    prefix = function_env(s, s.stack.replicator)[replicator_contract.ENV_SOURCE_PREFIX]

    def delivered(key: str) -> bool:
        return any(all(key.startswith(r["Value"]) if r["Name"] == "prefix" else key.endswith(r["Value"])
                       for r in rules) for rules in filters)

    for key in FILTER_KEYS:
        assert delivered(key) == replicator_contract.is_replicated(key, prefix), key


def test_replicator_may_only_put_its_delivered_event_on_the_default_bus(synth):
    """The role may put events only on the account's default bus, only with the pipeline's source and
    detail-type. IAM: PutEvents is authorized on the ``event-bus`` resource
    ``arn:${Partition}:events:${Region}:${Account}:event-bus/${EventBusName}`` with the condition keys
    ``events:source`` and ``events:detail-type``
    (https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazoneventbridge.html);
    the condition form follows AWS's example policy
    (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-event-bus-example-policy-cross-account-custom-bus-source.html).
    PutEvents without EventBusName goes to the default bus
    (https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_PutEventsRequestEntry.html)."""
    role = synth.logical_id(synth.stack.replicator.role)
    statements = [st for r in synth.resources("AWS::IAM::Policy").values() if {"Ref": role} in r["Properties"]["Roles"]
                  for st in r["Properties"]["PolicyDocument"]["Statement"]]
    (put,) = [st for st in statements if "events:PutEvents" in json.dumps(st["Action"])]
    assert put["Action"] == "events:PutEvents"
    resource = synth.stack.resolve(synth.stack.replicator.default_bus_arn)
    assert put["Resource"] == resource
    if synth.config.account:  # prod names its account and region; dev leaves them to the deployment
        assert resource == f"arn:aws:events:{synth.config.region}:{synth.config.account}:event-bus/default"
    else:
        assert resource == {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":events:", {"Ref": "AWS::Region"},
                                              ":", {"Ref": "AWS::AccountId"}, ":event-bus/default"]]}
    assert put["Condition"] == {"ForAllValues:StringEquals": {"events:source": ["mysql-xlsx-pipeline"]},
                                "StringEquals": {"events:detail-type": "Workbook Delivered"}}
    # The export role (inside the VPC) gets nothing of the kind: no new interface endpoint is needed
    export_role = synth.logical_id(synth.stack.export.role)
    assert "events:" not in json.dumps([r for r in synth.resources("AWS::IAM::Policy").values()
                                        if {"Ref": export_role} in r["Properties"]["Roles"]])


def test_an_undelivered_event_raises_an_alarm(synth):
    Template.from_json(synth.template).has_resource_properties("AWS::CloudWatch::Alarm", {
        "Namespace": "MysqlXlsxPipeline", "MetricName": "DeliveredEventsNotPublished", "Statistic": "Sum",
        "Dimensions": [{"Name": "FunctionName", "Value": {"Ref": synth.logical_id(synth.stack.replicator.function)}}],
        "Threshold": 1, "AlarmActions": [{"Ref": synth.logical_id(synth.stack.alarm_topic)}],
    })


# --- the run ledger --------------------------------------------------------------------------------


def test_the_run_ledger_table_is_on_demand_recoverable_encrypted_expiring_and_kept_where_retained(synth):
    """PAY_PER_REQUEST, point-in-time recovery, SSE with the AWS managed key (SSEEnabled without a key id:
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-properties-dynamodb-table-ssespecification.html),
    TTL on expires_at (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/TTL.html)."""
    template(synth).has_resource_properties("AWS::DynamoDB::Table", {
        "BillingMode": "PAY_PER_REQUEST",
        "KeySchema": [{"AttributeName": "export", "KeyType": "HASH"}, {"AttributeName": "run_id", "KeyType": "RANGE"}],
        "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
        "SSESpecification": {"SSEEnabled": True},
        "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
    })
    (table,) = synth.resources("AWS::DynamoDB::Table").values()
    kept = "Retain" if synth.config.removal_policy == "retain" else "Delete"
    assert table["DeletionPolicy"] == kept and table["UpdateReplacePolicy"] == kept
    export_env = props(synth, synth.stack.export.function)["Environment"]["Variables"]
    assert export_env["LEDGER_TABLE"] == {"Ref": synth.logical_id(synth.stack.ledger.table)}
    assert export_env["HISTORY_DAYS"] == str(synth.config.history_days) == "400"


def _ddb_statements(synth, role) -> list[dict]:
    policy = synth.resources("AWS::IAM::Policy")[synth.logical_id(role.node.find_child("DefaultPolicy"))]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    return [s for s in statements if any(str(a).startswith("dynamodb:") for a in
                                         (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))]


def test_the_export_may_only_update_its_own_exports_items_and_the_replicator_those_and_hand_items(synth):
    """UpdateItem only (it creates a missing item; no PutItem, which would replace what the other function
    wrote), limited to items whose partition key is one of the names by dynamodb:LeadingKeys with
    ForAllValues:StringEquals (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/specifying-conditions.html,
    https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazondynamodb.html)."""
    table = {"Fn::GetAtt": [synth.logical_id(synth.stack.ledger.table), "Arn"]}
    names = sorted(e.name for e in synth.config.exports)
    for role, partitions in ((synth.stack.export.role, names),
                             (synth.stack.replicator.role, sorted([*names, "(by hand)"]))):
        assert _ddb_statements(synth, role) == [{
            "Action": "dynamodb:UpdateItem", "Effect": "Allow", "Resource": table,
            "Condition": {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": partitions}},
        }]
    assert synth.template["Outputs"]["RunLedgerTableName"]["Value"] == {"Ref": synth.logical_id(synth.stack.ledger.table)}


def test_in_its_own_vpc_the_export_reaches_dynamodb_through_a_gateway_endpoint_that_only_updates_the_ledger(dev):
    """The export runs in isolated subnets: DynamoDB through a gateway endpoint whose policy allows only the
    ledger's UpdateItem (https://docs.aws.amazon.com/vpc/latest/privatelink/vpc-endpoints-ddb.html)."""
    endpoint = dev.stack.export.dynamodb_endpoint
    assert endpoint is not None
    doc = props(dev, endpoint)["PolicyDocument"]
    assert doc["Statement"] == [{
        "Action": "dynamodb:UpdateItem", "Effect": "Allow", "Principal": {"AWS": "*"},
        "Resource": {"Fn::GetAtt": [dev.logical_id(dev.stack.ledger.table), "Arn"]},
    }]
    assert "dynamodb" in json.dumps(props(dev, endpoint)["ServiceName"])


def test_ledger_write_failures_are_alarmed_per_function(synth):
    for construct in (synth.stack.export, synth.stack.replicator):
        template(synth).has_resource_properties("AWS::CloudWatch::Alarm", {
            "Namespace": "MysqlXlsxPipeline", "MetricName": "LedgerWritesFailed", "Statistic": "Sum",
            "Dimensions": [{"Name": "FunctionName", "Value": {"Ref": synth.logical_id(construct.function)}}],
        })


def test_history_days_is_an_environment_field(tmp_path):
    from stacks.config import ConfigError, load_environment
    from pipeline_ops.synth import CDK_JSON
    import copy

    environments = copy.deepcopy(CDK_JSON["context"]["environments"])
    environments["dev"]["history_days"] = 30
    assert load_environment({"environments": environments}, "dev").history_days == 30
    environments["dev"]["history_days"] = 0
    with pytest.raises(ConfigError, match=r"environments\.dev\.history_days: 0 is outside 1\.\.36500"):
        load_environment({"environments": environments}, "dev")
