"""The AWS stack under pulumi.runtime.set_mocks: tags, exposure, encryption, budgets, tenants."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from sciplat.cloud import rules
from sciplat.cloud.config import REQUIRED_TAGS, stack_config
from tests.unit.cloud_helpers import BASE_SPEC, SSH_KEY, Recorded, run_spec, spec_from

ADMIN = ["192.0.2.0/24"]


@pytest.fixture(scope="module")
def stack() -> Recorded:
    return run_spec(spec_from())


def aws_resources(rec: Recorded) -> list[rules.Resource]:
    return [r for r in rec.resources if r.type.startswith("aws:")]


def test_mocked_every_taggable_resource_carries_the_required_tags(stack: Recorded) -> None:
    checked = 0
    for res in aws_resources(stack):
        if res.type in rules.UNTAGGABLE:
            continue
        checked += 1
        if res.type == rules.ASG:
            tags = {t["key"]: t["value"] for t in res.props["tags"] if t["propagateAtLaunch"]}
        else:
            tags = res.props["tags"]
        assert all(tags.get(k) for k in REQUIRED_TAGS), f"{res.type} {res.name}: {tags}"
        assert tags["platform"] == "astro"
    assert checked > 30


def test_mocked_untaggable_list_matches_the_provider(stack: Recorded) -> None:
    """UNTAGGABLE names exactly the created types whose provider class has no `tags`."""
    import inspect

    import pulumi_aws as aws

    def provider_class(token: str) -> type:
        module, name = token.split(":")[1].split("/")[0], token.split(":")[2]
        return getattr(getattr(aws, module), name)

    for type_ in {r.type for r in aws_resources(stack)}:
        has_tags = "tags" in inspect.signature(provider_class(type_)._internal_init).parameters
        assert has_tags == (type_ not in rules.UNTAGGABLE), type_


def test_mocked_instances_launched_by_the_pools_and_their_volumes_are_tagged(stack: Recorded) -> None:
    (template,) = stack.of_type(rules.LAUNCH_TEMPLATE)
    kinds = {s["resourceType"]: s["tags"] for s in template.props["tagSpecifications"]}
    for kind in ("instance", "volume", "network-interface"):
        assert kinds[kind]["tenant"] == "shared" and kinds[kind]["component"] == "compute"
    (group,) = stack.of_type(rules.ASG)
    propagated = {t["key"] for t in group.props["tags"] if t["propagateAtLaunch"]}
    assert set(REQUIRED_TAGS) <= propagated
    for instance in stack.of_type(rules.EC2_INSTANCE):
        assert set(REQUIRED_TAGS) <= set(instance.props["volumeTags"])


def test_mocked_only_https_and_admin_ssh_are_open_to_addresses(stack: Recorded) -> None:
    opened = []
    for res in stack.of_type(rules.INGRESS_RULE):
        cidr = res.props.get("cidrIpv4") or res.props.get("cidrIpv6")
        if cidr:
            opened.append((cidr, res.props["fromPort"], res.props["toPort"]))
        else:
            assert res.props["referencedSecurityGroupId"]
    assert sorted(opened) == [("0.0.0.0/0", 443, 443), ("192.0.2.0/24", 22, 22)]
    for sg in stack.of_type(rules.SECURITY_GROUP):
        assert not sg.props.get("ingress"), "ingress is declared as separate group-to-group rules"
    assert not [v for r in stack.resources for v in rules.ingress_violations(r, ADMIN)]


def test_mocked_buckets_are_private_encrypted_and_versioned(stack: Recorded) -> None:
    buckets = stack.of_type("aws:s3/bucket:Bucket")
    assert {b.props["bucket"] for b in buckets} == {"astro-platform", "astro-t-survey", "astro-t-theory"}
    for bucket in buckets:
        (block,) = [r for r in stack.of_type(rules.PUBLIC_ACCESS_BLOCK) if r.props["bucket"] == bucket.id]
        assert all(
            block.props[k]
            for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
        )
        (sse,) = [r for r in stack.of_type(rules.BUCKET_SSE_TYPES[0]) if r.props["bucket"] == bucket.id]
        assert sse.props["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] in ("AES256", "aws:kms")
        assert "acl" not in bucket.props
    assert rules.bucket_violations(stack.resources) == []


def test_mocked_rds_is_private_encrypted_and_forces_tls() -> None:
    rec = run_spec(spec_from(rds={"enabled": True}))
    (db,) = rec.of_type(rules.RDS_INSTANCE)
    assert db.props["publiclyAccessible"] is False
    assert db.props["storageEncrypted"] is True and db.props["deletionProtection"] is True
    assert rules.rds_tls_violations(rec.resources) == []
    subnet_group = rec.of_type("aws:rds/subnetGroup:SubnetGroup")[0]
    private = {r.id for r in rec.resources if r.type == "aws:ec2/subnet:Subnet" and "private" in r.name}
    assert set(subnet_group.props["subnetIds"]) == private
    assert rec.outputs["rds"]["host"].endswith(".rds.amazonaws.com")
    assert "db" not in {h["name"] for h in rec.outputs["hosts"]}, "with RDS there is no db host"


def test_mocked_a_budget_per_tenant_and_one_for_the_platform(stack: Recorded) -> None:
    budgets = {r.props["tags"]["tenant"]: r for r in stack.of_type(rules.BUDGET)}
    assert set(budgets) == {"shared", "survey", "theory"}
    assert budgets["survey"].props["limitAmount"] == "500.00"
    assert budgets["survey"].props["costFilters"] == [{"name": "TagKeyValue", "values": ["user:tenant$survey"]}]
    thresholds = sorted(n["threshold"] for n in budgets["theory"].props["notifications"])
    assert thresholds == [50.0, 80.0, 100.0, 100.0]  # actual at 50/80/100 %, forecast at 100 %
    assert rules.budget_violations(stack.resources, ["survey", "theory"]) == []


def test_mocked_the_whole_stack_passes_every_policy_rule(stack: Recorded) -> None:
    assert rules.stack_violations(stack.resources, admin_cidrs=ADMIN, tenants=["survey", "theory"]) == []


def _tenant_resources(rec: Recorded) -> set[tuple[str, str]]:
    return {(r.type, r.name) for r in rec.resources}


def test_mocked_adding_or_removing_a_tenant_changes_exactly_its_resources(stack: Recorded) -> None:
    base = spec_from()
    tenants = [t.model_dump() for t in base.cloud.tenants]  # type: ignore[union-attr]
    extra = {"name": "lensing", "cost_center": "cc-300", "budget_monthly_usd": 100, "groups": ["lens"]}
    more = run_spec(spec_from(tenants=[*tenants, extra]))
    added = _tenant_resources(more) - _tenant_resources(stack)
    assert _tenant_resources(stack) <= _tenant_resources(more)
    assert added == {
        ("aws:s3/bucket:Bucket", "astro-t-lensing"),
        ("aws:s3/bucketOwnershipControls:BucketOwnershipControls", "astro-t-lensing-ownership"),
        ("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "astro-t-lensing-private"),
        (rules.BUCKET_SSE_TYPES[0], "astro-t-lensing-encryption"),
        ("aws:s3/bucketVersioning:BucketVersioning", "astro-t-lensing-versioning"),
        ("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "astro-t-lensing-lifecycle"),
        ("aws:budgets/budget:Budget", "astro-t-lensing"),
    }
    fewer = run_spec(spec_from(tenants=tenants[:1]))
    removed = _tenant_resources(stack) - _tenant_resources(fewer)
    assert _tenant_resources(fewer) <= _tenant_resources(stack)
    assert {name for _, name in removed} == {
        "astro-t-theory",
        "astro-t-theory-ownership",
        "astro-t-theory-private",
        "astro-t-theory-encryption",
        "astro-t-theory-versioning",
        "astro-t-theory-lifecycle",
    }
    # the untouched tenant's resources keep their inputs
    before = {(r.type, r.name): r.props for r in stack.resources if "survey" in r.name}
    after = {(r.type, r.name): r.props for r in fewer.resources if "survey" in r.name}
    assert before == after


def test_mocked_spot_pool_for_batch_partitions() -> None:
    spec = spec_from(compute={"min_size": 1, "max_size": 3, "spot": {"enabled": True, "max_size": 8}})
    rec = run_spec(spec)
    pools = {p["name"]: p for p in rec.outputs["compute_pools"]}
    assert pools["ondemand"]["partitions"] == ["interactive"]
    assert pools["spot"]["partitions"] == ["batch"] and pools["spot"]["spot"] is True
    spot = next(r for r in rec.of_type(rules.ASG) if r.name.endswith("spot-asg"))
    dist = spot.props["mixedInstancesPolicy"]["instancesDistribution"]
    assert dist["onDemandPercentageAboveBaseCapacity"] == 0
    assert len(spot.props["mixedInstancesPolicy"]["launchTemplate"]["overrides"]) == 3
    assert rules.stack_violations(rec.resources, admin_cidrs=ADMIN) == []


def test_mocked_nat_gateway_moves_hosts_to_private_subnets() -> None:
    without = run_spec(spec_from())
    assert not without.of_type("aws:ec2/natGateway:NatGateway")
    rec = run_spec(spec_from(nat_gateway=True))
    assert len(rec.of_type("aws:ec2/natGateway:NatGateway")) == 1
    private = {r.id for r in rec.resources if r.type == "aws:ec2/subnet:Subnet" and "private" in r.name}
    by_name = {h.name: h for h in rec.of_type(rules.EC2_INSTANCE)}
    assert by_name["astro-hub"].props["subnetId"] in private
    assert by_name["astro-hub"].props["associatePublicIpAddress"] is False
    assert by_name["astro-gw"].props["subnetId"] not in private


def test_mocked_network_spans_two_zones_and_has_an_s3_endpoint(stack: Recorded) -> None:
    subnets = stack.of_type("aws:ec2/subnet:Subnet")
    assert {s.props["availabilityZone"] for s in subnets} == {"eu-west-1a", "eu-west-1b"}
    vpc = ipaddress.ip_network("10.42.0.0/16")
    assert all(ipaddress.ip_network(s.props["cidrBlock"]).subnet_of(vpc) for s in subnets)  # type: ignore[arg-type]
    (endpoint,) = stack.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")
    assert endpoint.props["serviceName"] == "com.amazonaws.eu-west-1.s3"
    assert endpoint.props["vpcEndpointType"] == "Gateway"


def test_mocked_hosts_require_imdsv2_and_encrypt_volumes(stack: Recorded) -> None:
    for inst in stack.of_type(rules.EC2_INSTANCE):
        assert inst.props["metadataOptions"]["httpTokens"] == "required"
        assert inst.props["rootBlockDevice"]["encrypted"] is True
        assert inst.props["iamInstanceProfile"]
    (efs,) = stack.of_type(rules.EFS)
    assert efs.props["encrypted"] is True
    assert len(stack.of_type("aws:efs/mountTarget:MountTarget")) == 2


def test_mocked_config_is_typed_and_reads_only_the_cloud_section() -> None:
    config = stack_config(spec_from(), ssh_public_key=SSH_KEY)
    assert config.network.public_subnets == ("10.42.0.0/18", "10.42.64.0/18")
    assert [h.name for h in config.hosts.hosts] == ["gw", "hub", "db", "monitor", "ctl"]
    assert config.storage.bucket_name("survey") == "astro-t-survey"
    assert "tenants" in BASE_SPEC


def test_mocked_program_entry_point_reads_platform_yaml(stack: Recorded, tmp_path: Path) -> None:
    """stacks/aws/__main__.py, as `pulumi up` runs it: config sciplat:spec → the same resources."""
    import runpy

    import pulumi

    from tests.unit.cloud_helpers import STACK_DIR, _Mocks

    (tmp_path / "platform.yaml").write_text(BASE_SPEC)
    (tmp_path / "key.pub").write_text(SSH_KEY + "\n")
    record = Recorded()
    pulumi.runtime.set_mocks(_Mocks(record), project="sciplat", stack="test", preview=False)
    pulumi.runtime.set_all_config(
        {"sciplat:spec": str(tmp_path / "platform.yaml"), "sciplat:sshPublicKeyFile": str(tmp_path / "key.pub")}
    )
    try:

        @pulumi.runtime.test  # type: ignore[misc]
        def program() -> None:
            runpy.run_path(str(STACK_DIR / "__main__.py"), run_name="__main__")

        program()
    finally:
        pulumi.runtime.set_all_config({})
    assert {(r.type, r.name) for r in record.resources} == {(r.type, r.name) for r in stack.resources}


def test_mocked_hub_may_administer_storage_but_not_mint_administrators(stack: Recorded) -> None:
    import json

    by_name = {h.name: h for h in stack.of_type(rules.EC2_INSTANCE)}
    assert by_name["astro-hub"].props["iamInstanceProfile"] == "astro-hub-profile"
    assert by_name["astro-db"].props["iamInstanceProfile"] == "astro-profile"
    (policy,) = stack.of_type("aws:iam/rolePolicy:RolePolicy")
    assert policy.props["role"] == "astro-hub-role-id"
    statements = {s["Sid"]: s for s in json.loads(policy.props["policy"])["Statement"]}
    assert statements["PlatformBuckets"]["Resource"] == ["arn:aws:s3:::astro-*", "arn:aws:s3:::astro-*/*"]
    create = statements["CreateBoundedUsers"]
    assert create["Action"] == "iam:CreateUser" and create["Resource"] == "arn:aws:iam::*:user/sciplat/astro/*"
    assert create["Condition"]["StringEquals"]["iam:PermissionsBoundary"].endswith("astro-user-boundary")
    assert statements["KeepTheBoundary"]["Effect"] == "Deny"
    for sid, statement in statements.items():
        if statement["Effect"] == "Allow" and statement["Resource"] == "*":
            assert sid in ("ListBuckets", "StorageMetrics"), sid
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert not any(a.startswith(("iam:", "s3:Put", "s3:Delete")) for a in actions)
    (boundary,) = stack.of_type("aws:iam/policy:Policy")
    assert json.loads(boundary.props["policy"])["Statement"][0]["Resource"] == [
        "arn:aws:s3:::astro-*",
        "arn:aws:s3:::astro-*/*",
    ]
    assert stack.outputs["storage_admin"]["iam_path"] == "/sciplat/astro/"
