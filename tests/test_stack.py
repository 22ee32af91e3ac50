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
        # One subnet: one endpoint network interface to pay for while idle
        assert len(endpoint["Properties"]["SubnetIds"]) == 1


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
    assert set(env) == bootstrap_contract.ENV_NAMES and env[bootstrap_contract.ENV_DB_TLS] == "verify"
    # Nothing runs against an existing database
    assert prod.resources("Custom::DatabaseBootstrap") == prod_iam.resources("Custom::DatabaseBootstrap") == {}


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
def test_export_group_reaches_the_database_s3_and_secrets_manager_only(request, env):
    """No 443 to 0.0.0.0/0: S3 by its managed prefix list, which security group rules may reference
    (https://docs.aws.amazon.com/vpc/latest/privatelink/vpc-endpoints-s3.html) and which is looked up at deploy
    time with ec2:DescribeManagedPrefixLists; Secrets Manager by its endpoint's security group, and only
    where the export reads a secret (with IAM database auth it never talks to Secrets Manager)."""
    synth = request.getfixturevalue(env)
    reads_secret = synth.config.database.auth == "secret"
    rules = egress_rules(synth)
    by_port = sorted((r["FromPort"], r.get("Description")) for r in rules)
    assert [port for port, _ in by_port] == sorted([synth.stack.database.port, 443] + [443] * reads_secret)
    assert not any("CidrIp" in r and r["CidrIp"] == "0.0.0.0/0" for r in rules)
    (s3,) = [r for r in rules if "DestinationPrefixListId" in r]
    lookup = synth.logical_id(synth.stack.export.node.find_child("S3PrefixList").node.find_child("Resource"))
    assert s3["DestinationPrefixListId"] == {"Fn::GetAtt": [lookup, "PrefixLists.0.PrefixListId"]}
    create = json.dumps(synth.template["Resources"][lookup]["Properties"]["Create"])
    assert "describeManagedPrefixLists" in create and "com.amazonaws." in create and ".s3" in create
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


def test_alarms_on_errors_and_failure_queues_go_to_the_topic(synth):
    topic = {"Ref": synth.logical_id(synth.stack.alarm_topic)}
    alarms = [r["Properties"] for r in synth.resources("AWS::CloudWatch::Alarm").values()]
    watched = sorted((a["MetricName"], a["Namespace"]) for a in alarms)
    # the export, the replicator, the bootstrap (create), the deadline check (with deadlines: its queue, late runs)
    checks = synth.stack.deadline_check is not None
    functions = 2 + (synth.stack.bootstrap is not None) + checks
    assert watched == [("ApproximateNumberOfMessagesVisible", "AWS/SQS")] * (2 + checks) + [
        ("DeliveredEventsNotPublished", "MysqlXlsxPipeline")] + [("Errors", "AWS/Lambda")] * functions + [
        ("WorkbooksLate", "MysqlXlsxPipeline")] * checks
    for alarm in alarms:
        assert alarm["AlarmActions"] == [topic] and alarm["Threshold"] == 1
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    queues = {a["Dimensions"][0]["Value"]["Fn::GetAtt"][0] for a in alarms if a["Namespace"] == "AWS/SQS"}
    assert queues == {synth.logical_id(synth.stack.export.failure_queue),
                      synth.logical_id(synth.stack.replicator.failure_queue)} | (
        {synth.logical_id(synth.stack.deadline_check.failure_queue)} if checks else set())


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
                            "AlarmTopicArn", "ReplicatorRoleArn", "AlarmNames"} | partner
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
    with pytest.raises(ValueError, match="destination_bucket is the source bucket"):
        BucketReplicator(stack, "R", source_bucket=bucket, destination_bucket=bucket, alarm_topic=topic,
                         log_retention=logs.RetentionDays.ONE_WEEK, removal_policy=cdk.RemovalPolicy.RETAIN)
    same_name = s3.Bucket.from_bucket_name(stack, "Same", "named-bucket")
    named = s3.Bucket.from_bucket_name(stack, "Named", "named-bucket")
    with pytest.raises(ValueError, match="destination_bucket is the source bucket"):
        BucketReplicator(stack, "R2", source_bucket=named, destination_bucket=same_name, alarm_topic=topic,
                         log_retention=logs.RetentionDays.ONE_WEEK, removal_policy=cdk.RemovalPolicy.RETAIN)


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
    ({"endpoints": ["dynamodb"]}, "endpoints may only name s3, secretsmanager, got dynamodb"),
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
    daily = [e for e in dev.config.exports if e.name == "daily_sales"]
    assert set(spec.extra_files) >= {"sql/daily_sales_orders.sql", "sql/daily_sales_totals.sql"}
    assert spec.extra_files["sql/daily_sales_orders.sql"]() == daily[0].sheets[0].sql.encode()
    # A changed .sql file gives a new asset hash (so a new function version and a snapshot diff)
    changed = dataclasses.replace(daily[0], sheets=(dataclasses.replace(daily[0].sheets[0], sql="SELECT 2"),)
                                  + daily[0].sheets[1:])
    others = [e for e in dev.config.exports if e.name != "daily_sales"]
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
