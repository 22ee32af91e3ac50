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
from stacks.config import PROJECT_ROOT as ROOT, ExportConfig
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
    assert dest == [{"Action": ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"], "Effect": "Allow",
                     "Resource": "arn:aws:s3:::partner-team-xlsx-inbox/from-sales/*"}]


# --- notification ------------------------------------------------------------------------


def test_only_xlsx_objects_under_the_export_prefix_trigger_the_replicator(synth):
    template(synth).has_resource_properties("Custom::S3BucketNotifications", {
        "BucketName": {"Ref": synth.logical_id(synth.stack.source.bucket)},
        "NotificationConfiguration": {"LambdaFunctionConfigurations": [{
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ".xlsx"},
                                               {"Name": "prefix", "Value": synth.config.key_prefix}]}},
            "LambdaFunctionArn": {"Fn::GetAtt": [synth.logical_id(synth.stack.replicator.function), "Arn"]},
        }]},
    })


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


def test_export_role_may_only_write_its_prefixes_and_read_its_secret(synth):
    statements = policy_statements(synth, synth.stack.export.role)
    prefix = synth.config.key_prefix
    s3_statements = [st for st in statements if any(a.startswith("s3:") for a in st["Action"])]
    assert s3_statements == [{
        "Action": ["s3:AbortMultipartUpload", "s3:PutObject"], "Effect": "Allow",
        "Resource": sorted([objects(synth, synth.stack.source.bucket, f"/{prefix}{e.name}/*")
                            for e in synth.config.exports], key=json.dumps),
    }]
    secret = [st for st in statements if st["Action"] == "secretsmanager:GetSecretValue"]
    assert len(secret) == 1
    assert synth.stack.resolve(synth.stack.database.secret.secret_arn) == secret[0]["Resource"]
    # The role has no managed policy: everything it may do is in the statements above.
    assert "ManagedPolicyArns" not in props(synth, synth.stack.export.role)


def test_replicator_role_reads_the_source_and_writes_the_destination_only(dev):
    statements = policy_statements(dev, dev.stack.replicator.role)
    s3_statements = [st for st in statements if any(a.startswith("s3:") for a in st["Action"])]
    assert s3_statements == [
        {"Action": ["s3:GetObject", "s3:GetObjectVersion"], "Effect": "Allow",
         "Resource": objects(dev, dev.stack.source.bucket, "/exports/*")},
        {"Action": ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"], "Effect": "Allow",
         "Resource": objects(dev, dev.stack.destination_bucket, "/incoming/*")},
    ]
    assert "ManagedPolicyArns" not in props(dev, dev.stack.replicator.role)


RESOURCELESS_ACTIONS = {
    "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",
    "xray:PutTraceSegments", "xray:PutTelemetryRecords",
}


def test_no_data_action_on_every_resource_and_no_wildcard_actions(synth):
    for logical_id, r in synth.template["Resources"].items():
        if r["Type"] != "AWS::IAM::Policy":
            continue
        for st in r["Properties"]["PolicyDocument"]["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            for action in actions:
                assert not action.endswith("*"), f"{logical_id} grants {action}"
            if st["Resource"] == "*" and logical_id.startswith(("ExportToXlsx", "BucketReplicator")):
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


def test_database_admits_the_export_function_on_its_port_and_nothing_else(synth):
    ingress = synth.resources("AWS::EC2::SecurityGroupIngress")
    db_group = synth.stack.resolve(synth.stack.database.security_group.security_group_id)
    to_db = [r["Properties"] for r in ingress.values() if r["Properties"]["GroupId"] == db_group]
    port = synth.stack.database.port
    assert to_db == [{
        "Description": "ExportToXlsx function", "FromPort": port, "ToPort": port, "IpProtocol": "tcp",
        "GroupId": db_group,
        "SourceSecurityGroupId": {"Fn::GetAtt": [synth.logical_id(synth.stack.export.security_group), "GroupId"]},
    }]
    if synth.config.database.mode == "create":
        db_sg = props(synth, synth.stack.database.security_group)
        assert "SecurityGroupIngress" not in db_sg


def test_export_group_reaches_only_the_database_and_https(synth):
    sg = props(synth, synth.stack.export.security_group)
    (inline,) = sg["SecurityGroupEgress"]
    assert {k: inline[k] for k in ("CidrIp", "FromPort", "ToPort", "IpProtocol")} == {
        "CidrIp": "0.0.0.0/0", "FromPort": 443, "ToPort": 443, "IpProtocol": "tcp"}
    egress = [r["Properties"] for r in synth.resources("AWS::EC2::SecurityGroupEgress").values()]
    own = {"Fn::GetAtt": [synth.logical_id(synth.stack.export.security_group), "GroupId"]}
    ports = sorted(e["FromPort"] for e in egress if e["GroupId"] == own)
    assert ports == [443, synth.stack.database.port]


def test_s3_and_secrets_manager_endpoints(synth):
    t = template(synth)
    t.has_resource_properties("AWS::EC2::VPCEndpoint", {
        "VpcEndpointType": "Gateway",
        "ServiceName": {"Fn::Join": ["", ["com.amazonaws.", {"Ref": "AWS::Region"}, ".s3"]]},
        "RouteTableIds": Match.any_value(),
        "PolicyDocument": {"Statement": [Match.object_like({"Action": ["s3:AbortMultipartUpload", "s3:PutObject"]})],
                           "Version": "2012-10-17"},
    })
    t.has_resource_properties("AWS::EC2::VPCEndpoint", {
        "VpcEndpointType": "Interface", "PrivateDnsEnabled": True,
        "ServiceName": Match.string_like_regexp(r"\.secretsmanager$") if synth.config.region else
        {"Fn::Join": ["", ["com.amazonaws.", {"Ref": "AWS::Region"}, ".secretsmanager"]]},
    })
    if synth.config.database.mode == "existing":
        gateway = [r for r in synth.resources("AWS::EC2::VPCEndpoint").values()
                   if r["Properties"]["VpcEndpointType"] == "Gateway"]
        assert gateway[0]["Properties"]["RouteTableIds"] == list(synth.config.database.route_table_ids)


# --- functions ---------------------------------------------------------------------------


def test_both_functions_run_python_on_arm_with_json_logs_and_tracing(synth):
    for construct in (synth.stack.export, synth.stack.replicator):
        p = props(synth, construct.function)
        assert p["Runtime"] == "python3.14" and p["Architectures"] == ["arm64"]
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
    assert p["ReservedConcurrentExecutions"] == 1  # two runs of an export never race
    assert p["Handler"] == "export_to_xlsx.handler.handler"


def test_environment_variables_are_exactly_what_the_handlers_read(synth):
    export_env = function_env(synth, synth.stack.export)
    replicator_env = function_env(synth, synth.stack.replicator)
    assert set(export_env) == export_contract.ENV_NAMES
    assert set(replicator_env) == replicator_contract.ENV_NAMES
    # SQL files sit at the same paths (sql/...) in the project as in the function's package
    exports = export_contract.decode_exports(export_env[export_contract.ENV_EXPORTS], package_dir=ROOT)
    assert list(exports.values()) == [e.definition() for e in synth.config.exports]
    assert export_env[export_contract.ENV_DB_TLS] == "verify"
    assert export_env[export_contract.ENV_KEY_PREFIX] == synth.config.key_prefix
    assert export_env[export_contract.ENV_SOURCE_BUCKET] == {"Ref": synth.logical_id(synth.stack.source.bucket)}
    assert replicator_env[replicator_contract.ENV_SOURCE_BUCKET] == export_env[export_contract.ENV_SOURCE_BUCKET]
    assert replicator_env[replicator_contract.ENV_DESTINATION_PREFIX] == synth.config.destination.prefix


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
        "Engine": "mysql", "EngineVersion": Match.string_like_regexp(r"^8\.0\."),
        "StorageEncrypted": True, "PubliclyAccessible": False, "ManageMasterUserPassword": True,
        "BackupRetentionPeriod": 1, "DeletionProtection": False, "EnableIAMDatabaseAuthentication": True,
    })
    t.has_resource_properties("AWS::RDS::DBParameterGroup", {"Parameters": {"require_secure_transport": "1"}})
    env = function_env(dev, dev.stack.export)
    instance = dev.logical_id(dev.stack.database.instance)
    assert env[export_contract.ENV_DB_HOST] == {"Fn::GetAtt": [instance, "Endpoint.Address"]}
    assert env[export_contract.ENV_DB_SECRET_ARN] == {"Fn::GetAtt": [instance, "MasterUserSecret.SecretArn"]}


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
            })],
        })


def test_retries_and_the_on_failure_queue(synth):
    t = template(synth)
    t.has_resource_properties("AWS::Lambda::EventInvokeConfig", {
        "FunctionName": {"Ref": synth.logical_id(synth.stack.export.function)}, "MaximumRetryAttempts": 1})
    queue = synth.logical_id(synth.stack.replicator.failure_queue)
    t.has_resource_properties("AWS::Lambda::EventInvokeConfig", {
        "FunctionName": {"Ref": synth.logical_id(synth.stack.replicator.function)}, "MaximumRetryAttempts": 2,
        "DestinationConfig": {"OnFailure": {"Destination": {"Fn::GetAtt": [queue, "Arn"]}}}})
    queue_props = props(synth, synth.stack.replicator.failure_queue)
    assert queue_props["MessageRetentionPeriod"] == 14 * 24 * 3600 and queue_props["SqsManagedSseEnabled"] is True
    t.has_resource_properties("AWS::SQS::QueuePolicy", {
        "Queues": [{"Ref": queue}],
        "PolicyDocument": {"Statement": [Match.object_like({
            "Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})]},
    })


def test_alarms_on_errors_and_failed_copies_go_to_the_topic(synth):
    topic = {"Ref": synth.logical_id(synth.stack.alarm_topic)}
    alarms = [r["Properties"] for r in synth.resources("AWS::CloudWatch::Alarm").values()]
    watched = sorted((a["MetricName"], a["Namespace"]) for a in alarms)
    assert watched == [("ApproximateNumberOfMessagesVisible", "AWS/SQS"), ("Errors", "AWS/Lambda"),
                       ("Errors", "AWS/Lambda")]
    for alarm in alarms:
        assert alarm["AlarmActions"] == [topic] and alarm["Threshold"] == 1
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


def test_alarm_email_is_subscribed_only_when_configured(dev, prod):
    template(dev).resource_count_is("AWS::SNS::Subscription", 0)
    template(prod).has_resource_properties("AWS::SNS::Subscription", {
        "Protocol": "email", "Endpoint": prod.config.alarm_email})


def test_outputs(synth):
    outputs = synth.template["Outputs"]
    assert set(outputs) == {"SourceBucketName", "DestinationBucketName", "ExportFunctionName",
                            "ReplicatorFunctionName", "FailedCopiesQueueUrl", "AlarmTopicArn"}
    assert outputs["SourceBucketName"]["Value"] == {"Ref": synth.logical_id(synth.stack.source.bucket)}
    assert outputs["FailedCopiesQueueUrl"]["Value"] == {"Ref": synth.logical_id(synth.stack.replicator.failure_queue)}


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
    ({"exports": [ExportConfig.single("a", "SELECT 1"), ExportConfig.single("a", "SELECT 2")]}, "must be unique"),
    ({"exports": [ExportConfig.single("Bad Name", "SELECT 1")]}, "export name 'Bad Name' must be"),
    ({"key_prefix": "exports"}, "key_prefix must be empty or end with '/'"),
    ({"database_port": 0}, "database_port must be a TCP port"),
    ({"ephemeral_storage_mb": 100}, "ephemeral_storage_mb 512..10240"),
])
def test_export_construct_refuses_bad_props(change, message):
    from aws_cdk import aws_ec2 as ec2
    from aws_cdk import aws_secretsmanager as secretsmanager

    stack, topic = _scratch()
    vpc = ec2.Vpc(stack, "Vpc", nat_gateways=0, max_azs=1, subnet_configuration=[
        ec2.SubnetConfiguration(name="i", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)])
    props = dict(
        source_bucket=SecureBucket(stack, "B", removal_policy=cdk.RemovalPolicy.RETAIN).bucket,
        key_prefix="", exports=[ExportConfig.single("orders", "SELECT 1")], vpc=vpc,
        subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
        database_security_group=ec2.SecurityGroup(stack, "Db", vpc=vpc), database_host="db", database_port=3306,
        database_name="app", secret=secretsmanager.Secret(stack, "S"), alarm_topic=topic,
        log_retention=logs.RetentionDays.ONE_WEEK, removal_policy=cdk.RemovalPolicy.RETAIN,
    )
    props.update(change)
    with pytest.raises(ValueError, match=message):
        ExportToXlsx(stack, "E", **props)


# --- reports: SQL files, parameters, formats in the template ------------------------------------------


def test_a_report_travels_as_sheet_files_parameters_and_formats(dev):
    # The dev config's daily_sales report: its SQL stays in the asset, the environment names the files
    raw = json.loads(function_env(dev, dev.stack.export)[export_contract.ENV_EXPORTS])
    assert raw["daily_sales"] == {
        "sheets": [{"name": "Orders", "file": "sql/daily_sales_orders.sql"},
                   {"name": "Totals", "file": "sql/daily_sales_totals.sql"}],
        "params": [{"name": "day", "type": "date", "default": "yesterday"}],
        "tz": "Europe/Berlin", "formats": {"amount": "#,##0.00", "share_of_all": "0.0%"}, "on_empty": "skip",
    }
    # And its schedule sends only the export's name: the parameters take their defaults at run time
    rule = props(dev, dev.stack.export.rules["daily_sales"])
    assert json.loads(rule["Targets"][0]["Input"]) == {"export": "daily_sales"}


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
