"""The policy rules as plain functions: each one must catch what it is for."""

from __future__ import annotations

import pytest

from sciplat.cloud import rules
from sciplat.cloud.rules import Resource

TAGS = {"platform": "astro", "tenant": "shared", "component": "network", "cost-center": "none"}
ADMIN = ["192.0.2.0/24", "2001:db8::/32"]


def res(type_: str, name: str = "r", **props: object) -> Resource:
    return Resource(type=type_, name=name, props=props, urn=f"urn:{name}", id=f"{name}-id")


# ------------------------------------------------------------------ tags


def test_tags_missing_key_is_reported_by_name() -> None:
    partial = {k: v for k, v in TAGS.items() if k != "cost-center"}
    (msg,) = rules.tag_violations(res("aws:ec2/vpc:Vpc", tags=partial))
    assert "cost-center" in msg
    assert rules.tag_violations(res("aws:ec2/vpc:Vpc", tags=TAGS)) == []
    assert rules.tag_violations(res("aws:ec2/vpc:Vpc", tags={**TAGS, "tenant": ""}))


def test_tags_untaggable_and_non_aws_resources_are_skipped() -> None:
    assert rules.tag_violations(res(rules.PUBLIC_ACCESS_BLOCK)) == []
    assert rules.tag_violations(res("sciplat:aws:Network")) == []


def test_tags_autoscaling_group_must_propagate_them_at_launch() -> None:
    listed = [{"key": k, "value": v, "propagateAtLaunch": True} for k, v in TAGS.items()]
    assert rules.tag_violations(res(rules.ASG, tags=listed)) == []
    listed[0] = {**listed[0], "propagateAtLaunch": False}
    assert "propagated at launch" in rules.tag_violations(res(rules.ASG, tags=listed))[0]


def test_tags_launch_template_must_tag_instances_volumes_and_interfaces() -> None:
    specs = [{"resourceType": k, "tags": TAGS} for k in ("instance", "volume")]
    (msg,) = rules.tag_violations(res(rules.LAUNCH_TEMPLATE, tags=TAGS, tagSpecifications=specs))
    assert "network-interface" in msg


def test_tags_instance_volumes() -> None:
    assert rules.tag_violations(res(rules.EC2_INSTANCE, tags=TAGS, volumeTags=TAGS)) == []
    assert "volume_tags" in rules.tag_violations(res(rules.EC2_INSTANCE, tags=TAGS))[0]


# ------------------------------------------------------------------ ingress


@pytest.mark.parametrize(
    ("props", "ok"),
    [
        ({"cidrIpv4": "0.0.0.0/0", "ipProtocol": "tcp", "fromPort": 443, "toPort": 443}, True),
        ({"cidrIpv4": "0.0.0.0/0", "ipProtocol": "tcp", "fromPort": 80, "toPort": 80}, False),
        ({"cidrIpv4": "0.0.0.0/0", "ipProtocol": "tcp", "fromPort": 22, "toPort": 22}, False),
        ({"cidrIpv4": "0.0.0.0/0", "ipProtocol": "-1"}, False),
        ({"cidrIpv6": "::/0", "ipProtocol": "tcp", "fromPort": 0, "toPort": 65535}, False),
        ({"cidrIpv4": "0.0.0.0/0", "ipProtocol": "tcp", "fromPort": 443, "toPort": 444}, False),
        ({"cidrIpv4": "192.0.2.0/25", "ipProtocol": "tcp", "fromPort": 22, "toPort": 22}, True),
        ({"cidrIpv6": "2001:db8:1::/48", "ipProtocol": "tcp", "fromPort": 22, "toPort": 22}, True),
        ({"cidrIpv4": "198.51.100.0/24", "ipProtocol": "tcp", "fromPort": 22, "toPort": 22}, False),
        ({"cidrIpv4": "192.0.2.0/24", "ipProtocol": "tcp", "fromPort": 5432, "toPort": 5432}, False),
        ({"cidrIpv4": "10.42.0.0/16", "ipProtocol": "-1"}, False),
        ({"referencedSecurityGroupId": "sg-1", "ipProtocol": "-1"}, True),
        ({"ipProtocol": "tcp", "fromPort": 443, "toPort": 443}, False),
    ],
)
def test_ingress_rule_sources(props: dict[str, object], ok: bool) -> None:
    found = rules.ingress_violations(res(rules.INGRESS_RULE, **props), ADMIN)
    assert (found == []) is ok, found


def test_ingress_inline_security_group_and_legacy_rule() -> None:
    sg = res(
        rules.SECURITY_GROUP,
        ingress=[
            {"protocol": "tcp", "fromPort": 443, "toPort": 443, "cidrBlocks": ["0.0.0.0/0"]},
            {"protocol": "tcp", "fromPort": 8080, "toPort": 8080, "cidrBlocks": ["0.0.0.0/0"]},
        ],
    )
    (msg,) = rules.ingress_violations(sg, ADMIN)
    assert "ingress[1]" in msg and "8080" in msg
    rule = res(
        rules.SECURITY_GROUP_RULE, type="ingress", protocol="tcp", fromPort=22, toPort=22, cidrBlocks=["0.0.0.0/0"]
    )
    assert rules.ingress_violations(rule, ADMIN)
    egress = res(
        rules.SECURITY_GROUP_RULE, type="egress", protocol="-1", fromPort=0, toPort=0, cidrBlocks=["0.0.0.0/0"]
    )
    assert rules.ingress_violations(egress, ADMIN) == []


def test_ingress_ssh_needs_admin_cidrs_configured() -> None:
    ssh = res(rules.INGRESS_RULE, cidrIpv4="192.0.2.0/24", ipProtocol="tcp", fromPort=22, toPort=22)
    assert "none set" in rules.ingress_violations(ssh, [])[0]


# ------------------------------------------------------------------ single resources


def test_rds_public_unencrypted_or_unprotected() -> None:
    good = {"publiclyAccessible": False, "storageEncrypted": True, "deletionProtection": True}
    assert rules.resource_violations(res(rules.RDS_INSTANCE, **good)) == []
    assert (
        "publicly accessible"
        in rules.resource_violations(res(rules.RDS_INSTANCE, **{**good, "publiclyAccessible": True}))[0]
    )
    assert rules.resource_violations(res(rules.RDS_INSTANCE, **{**good, "storageEncrypted": False}))
    assert rules.resource_violations(res(rules.RDS_INSTANCE, publiclyAccessible=False, storageEncrypted=True))


def test_rds_must_force_tls() -> None:
    group = res(rules.RDS_PARAMETER_GROUP, "pg", parameters=[{"name": "rds.force_ssl", "value": "1"}])
    db = Resource(rules.RDS_INSTANCE, "db", {"parameterGroupName": "pg-id"}, urn="urn:db")
    assert rules.rds_tls_violations([group, db]) == []
    weak = res(rules.RDS_PARAMETER_GROUP, "pg", parameters=[{"name": "rds.force_ssl", "value": "0"}])
    assert rules.rds_tls_violations([weak, db])
    assert rules.rds_tls_violations([db])
    # in a preview the name is unknown; the property dependency links them
    unknown = Resource(
        rules.RDS_INSTANCE, "db", {}, urn="urn:db", property_deps={"parameterGroupName": frozenset({"urn:pg"})}
    )
    assert rules.rds_tls_violations([group, unknown]) == []


def test_instances_and_templates_need_imdsv2_and_encryption() -> None:
    good = {"metadataOptions": {"httpTokens": "required"}, "rootBlockDevice": {"encrypted": True}}
    assert rules.resource_violations(res(rules.EC2_INSTANCE, **good)) == []
    assert "IMDSv1" in rules.resource_violations(res(rules.EC2_INSTANCE, rootBlockDevice={"encrypted": True}))[0]
    assert rules.resource_violations(res(rules.EC2_INSTANCE, metadataOptions={"httpTokens": "required"}))
    lt = {"metadataOptions": {"httpTokens": "required"}, "blockDeviceMappings": [{"ebs": {"encrypted": "true"}}]}
    assert rules.resource_violations(res(rules.LAUNCH_TEMPLATE, **lt)) == []
    lt["blockDeviceMappings"] = [{"ebs": {"encrypted": "false"}}]
    assert rules.resource_violations(res(rules.LAUNCH_TEMPLATE, **lt))
    assert rules.resource_violations(res(rules.EFS, encrypted=False))


def test_public_bucket_acl_and_incomplete_access_block() -> None:
    assert rules.resource_violations(res("aws:s3/bucket:Bucket", acl="public-read"))
    block = res(rules.PUBLIC_ACCESS_BLOCK, blockPublicAcls=True, blockPublicPolicy=True, ignorePublicAcls=True)
    assert "restrictPublicBuckets" in rules.resource_violations(block)[0]


def _bucket_set(name: str = "b") -> list[Resource]:
    return [
        res("aws:s3/bucket:Bucket", name, bucket=name),
        res(rules.PUBLIC_ACCESS_BLOCK, f"{name}-pab", bucket=f"{name}-id"),
        res(rules.BUCKET_SSE_TYPES[0], f"{name}-sse", bucket=f"{name}-id"),
        res(
            rules.BUCKET_VERSIONING_TYPES[0],
            f"{name}-v",
            bucket=f"{name}-id",
            versioningConfiguration={"status": "Enabled"},
        ),
    ]


def test_buckets_need_block_encryption_and_versioning() -> None:
    assert rules.bucket_violations(_bucket_set()) == []
    for missing in range(1, 4):
        found = rules.bucket_violations([r for i, r in enumerate(_bucket_set()) if i != missing])
        assert len(found) == 1, found
    # a block for another bucket does not count
    other = _bucket_set("c")
    assert rules.bucket_violations([_bucket_set()[0], *other[1:]])


def test_budget_per_tenant_and_platform() -> None:
    tagged = [
        res("aws:s3/bucket:Bucket", "t", tags={**TAGS, "tenant": "survey"}),
        res(rules.BUDGET, "p", tags=TAGS),
    ]
    assert rules.budget_violations(tagged) == ["tenant 'survey' has no AWS Budget"]
    assert rules.budget_violations([*tagged, res(rules.BUDGET, "s", tags={**TAGS, "tenant": "survey"})]) == []
    assert rules.budget_violations(
        [*tagged, res(rules.BUDGET, "s", tags={**TAGS, "tenant": "survey"})], ["theory"]
    ) == ["tenant 'theory' has no AWS Budget"]
    assert (
        "platform" in rules.budget_violations([tagged[0], res(rules.BUDGET, "s", tags={**TAGS, "tenant": "survey"})])[0]
    )


# ------------------------------------------------------------------ the pulumi-policy pack


def test_policy_pack_wraps_the_same_rules() -> None:
    pytest.importorskip("pulumi_policy")
    import importlib.util
    import sys

    from pulumi_policy.policy import (
        PolicyCustomTimeouts,
        PolicyResource,
        PolicyResourceOptions,
        ResourceValidationArgs,
        StackValidationArgs,
    )

    from tests.conftest import REPO

    path = REPO / "stacks" / "aws" / "policy" / "sciplat_policies.py"
    spec = importlib.util.spec_from_file_location("sciplat_policies", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["sciplat_policies"] = module
    spec.loader.exec_module(module)
    by_name = {p.name: p for p in module.POLICIES}
    opts = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])

    found: list[str] = []
    open_ssh = ResourceValidationArgs(
        rules.INGRESS_RULE,
        {"cidrIpv4": "0.0.0.0/0", "ipProtocol": "tcp", "fromPort": 22, "toPort": 22},
        "urn:ssh",
        "ssh",
        opts,
        None,
        {"adminCidrs": ["192.0.2.0/24"]},
    )
    by_name["sciplat-ingress"].validate(open_ssh, lambda msg, urn=None: found.append(msg))
    assert found and "22-22/tcp" in found[0]

    found.clear()
    bucket = PolicyResource("aws:s3/bucket:Bucket", {"bucket": "b"}, "urn:b", "b", opts, None, None, [], {})
    block = PolicyResource(
        rules.PUBLIC_ACCESS_BLOCK, {}, "urn:pab", "pab", opts, None, None, [bucket], {"bucket": [bucket]}
    )
    stack = StackValidationArgs([bucket, block], {})
    by_name["sciplat-buckets"].validate(stack, lambda msg, urn=None: found.append(msg))
    assert sorted(found) == ["bucket b has no server-side encryption configuration", "bucket b is not versioned"]
