"""The stack's policy rules as plain functions.

Each rule takes :class:`Resource` records — type token, engine property names
(camelCase, as ``pulumi preview`` and ``pulumi.runtime.set_mocks`` both see them),
URN and property dependencies — and returns human-readable violations. The unit
tests run them against the mocked stack; ``stacks/aws/policy`` wraps them in a
``pulumi-policy`` pack for ``pulumi preview --policy-pack stacks/aws/policy``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sciplat.cloud.config import REQUIRED_TAGS, SHARED_TENANT

WORLD = ("0.0.0.0/0", "::/0")
HTTPS = 443
SSH = 22

BUCKET_TYPES = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
BUCKET_SSE_TYPES = (
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2",
)
BUCKET_VERSIONING_TYPES = ("aws:s3/bucketVersioning:BucketVersioning", "aws:s3/bucketVersioningV2:BucketVersioningV2")
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
RDS_INSTANCE = "aws:rds/instance:Instance"
RDS_PARAMETER_GROUP = "aws:rds/parameterGroup:ParameterGroup"
EC2_INSTANCE = "aws:ec2/instance:Instance"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
ASG = "aws:autoscaling/group:Group"
EFS = "aws:efs/fileSystem:FileSystem"
BUDGET = "aws:budgets/budget:Budget"

#: Resource types the stack creates that AWS cannot tag. Every other aws: resource must
#: carry the required tags; a unit test checks this list against the provider's classes.
UNTAGGABLE = frozenset(
    {
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
        "aws:s3/bucketVersioning:BucketVersioning",
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
        "aws:s3/bucketOwnershipControls:BucketOwnershipControls",
        "aws:ec2/routeTableAssociation:RouteTableAssociation",
        "aws:ec2/route:Route",
        "aws:ec2/vpcEndpointRouteTableAssociation:VpcEndpointRouteTableAssociation",
        "aws:ec2/securityGroupRule:SecurityGroupRule",
        "aws:efs/mountTarget:MountTarget",
        "aws:efs/backupPolicy:BackupPolicy",
        "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
        "aws:iam/rolePolicy:RolePolicy",
        "aws:costexplorer/costAllocationTag:CostAllocationTag",
    }
)


@dataclass(frozen=True)
class Resource:
    """One resource as a policy sees it."""

    type: str
    name: str
    props: Mapping[str, Any]
    urn: str = ""
    id: str | None = None
    property_deps: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        tags = self.props.get("tags")
        return dict(tags) if isinstance(tags, Mapping) else {}


def is_cloud_resource(res: Resource) -> bool:
    return res.type.startswith("aws:")


def _refers(res: Resource, key: str, target: Resource) -> bool:
    """Does ``res.props[key]`` point at ``target`` (by dependency, id or bucket name)?"""
    if target.urn and target.urn in res.property_deps.get(key, frozenset()):
        return True
    value = res.props.get(key)
    if value is None:
        return False
    return value in {v for v in (target.id, target.props.get("bucket"), target.props.get("name")) if v}


def _missing(tags: Mapping[str, Any], where: str) -> list[str]:
    lacking = [k for k in REQUIRED_TAGS if not str(tags.get(k) or "")]
    return [f"{where} lacks the tag(s) {', '.join(lacking)}"] if lacking else []


# ------------------------------------------------------------------ tags


def tag_violations(res: Resource) -> list[str]:
    """Every taggable resource carries platform, tenant, component and cost-center;
    instances launched by an auto-scaling group and every volume carry them too."""
    if not is_cloud_resource(res) or res.type in UNTAGGABLE:
        return []
    where = f"{res.type} {res.name}"
    if res.type == ASG:
        tags = {
            str(t.get("key")): t.get("value")
            for t in res.props.get("tags") or []
            if isinstance(t, Mapping) and t.get("propagateAtLaunch")
        }
        return _missing(tags, f"{where} (tags propagated at launch)")
    out = _missing(res.tags(), where)
    if res.type == LAUNCH_TEMPLATE:
        specs = {s.get("resourceType"): s.get("tags") or {} for s in res.props.get("tagSpecifications") or []}
        for kind in ("instance", "volume", "network-interface"):
            out += _missing(specs.get(kind, {}), f"{where} (tag_specifications for {kind})")
    if res.type == EC2_INSTANCE:
        out += _missing(res.props.get("volumeTags") or {}, f"{where} (volume_tags)")
    return out


# ------------------------------------------------------------------ security groups


def _port_range(from_port: Any, to_port: Any, protocol: Any) -> tuple[int, int] | None:
    """The TCP port range a rule opens; None for "all traffic"."""
    if str(protocol) in ("-1", "all"):
        return None
    return int(from_port or 0), int(to_port or 0)


def _check_ingress(
    where: str,
    cidrs: Iterable[str],
    ports: tuple[int, int] | None,
    protocol: Any,
    admin_cidrs: Sequence[str],
) -> list[str]:
    out = []
    admin = [ipaddress.ip_network(c) for c in admin_cidrs]
    tcp = str(protocol).lower() in ("tcp", "6")
    for cidr in cidrs:
        shown = "all ports" if ports is None else f"{ports[0]}-{ports[1]}/{protocol}"
        if cidr in WORLD:
            if not (tcp and ports == (HTTPS, HTTPS)):
                out.append(f"{where} opens {shown} to {cidr}; only 443/tcp may be open to the world")
            continue
        net = ipaddress.ip_network(cidr, strict=False)
        if tcp and ports == (SSH, SSH) and any(net.version == a.version and net.subnet_of(a) for a in admin):  # type: ignore[arg-type]
            continue
        out.append(
            f"{where} opens {shown} to {cidr}; CIDR sources are allowed only for 443 from anywhere "
            f"and 22 from the admin CIDRs ({', '.join(admin_cidrs) or 'none set'}); use security-group sources"
        )
    return out


def ingress_violations(res: Resource, admin_cidrs: Sequence[str]) -> list[str]:
    """Only 443 (and 22 from the admin CIDRs) is open to addresses; the rest is group to group."""
    where = f"{res.type} {res.name}"
    out: list[str] = []
    if res.type == SECURITY_GROUP:
        for i, rule in enumerate(res.props.get("ingress") or []):
            cidrs = [*(rule.get("cidrBlocks") or []), *(rule.get("ipv6CidrBlocks") or [])]
            ports = _port_range(rule.get("fromPort"), rule.get("toPort"), rule.get("protocol"))
            out += _check_ingress(f"{where} ingress[{i}]", cidrs, ports, rule.get("protocol"), admin_cidrs)
    elif res.type == SECURITY_GROUP_RULE and res.props.get("type") == "ingress":
        p = res.props
        cidrs = [*(p.get("cidrBlocks") or []), *(p.get("ipv6CidrBlocks") or [])]
        ports = _port_range(p.get("fromPort"), p.get("toPort"), p.get("protocol"))
        out += _check_ingress(where, cidrs, ports, p.get("protocol"), admin_cidrs)
    elif res.type == INGRESS_RULE:
        p = res.props
        cidrs = [c for c in (p.get("cidrIpv4"), p.get("cidrIpv6")) if c]
        ports = _port_range(p.get("fromPort"), p.get("toPort"), p.get("ipProtocol"))
        out += _check_ingress(where, cidrs, ports, p.get("ipProtocol"), admin_cidrs)
        if not cidrs and not p.get("referencedSecurityGroupId"):
            out.append(f"{where} has neither a CIDR nor a security-group source")
    return out


# ------------------------------------------------------------------ single resources


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def resource_violations(res: Resource) -> list[str]:
    """Encryption, IMDSv2 and exposure rules that one resource's properties decide."""
    where = f"{res.type} {res.name}"
    p = res.props
    out: list[str] = []
    if res.type == RDS_INSTANCE:
        if _truthy(p.get("publiclyAccessible")):
            out.append(f"{where} is publicly accessible; set publicly_accessible=False")
        if not _truthy(p.get("storageEncrypted")):
            out.append(f"{where} storage is not encrypted")
        if not _truthy(p.get("deletionProtection")):
            out.append(f"{where} has no deletion protection")
    elif res.type == EC2_INSTANCE:
        if (p.get("metadataOptions") or {}).get("httpTokens") != "required":
            out.append(f"{where} allows IMDSv1; set metadata_options.http_tokens='required'")
        if not _truthy((p.get("rootBlockDevice") or {}).get("encrypted")):
            out.append(f"{where} root volume is not encrypted")
    elif res.type == LAUNCH_TEMPLATE:
        if (p.get("metadataOptions") or {}).get("httpTokens") != "required":
            out.append(f"{where} allows IMDSv1; set metadata_options.http_tokens='required'")
        mappings = p.get("blockDeviceMappings") or []
        if not mappings or not all(_truthy((m.get("ebs") or {}).get("encrypted")) for m in mappings):
            out.append(f"{where} launches unencrypted volumes; set ebs.encrypted='true' on every block device")
    elif res.type == EFS:
        if not _truthy(p.get("encrypted")):
            out.append(f"{where} is not encrypted")
    elif res.type in BUCKET_TYPES:
        if str(p.get("acl") or "private") not in ("private", "bucket-owner-full-control"):
            out.append(f"{where} has the ACL {p.get('acl')!r}; buckets must be private")
    elif res.type == PUBLIC_ACCESS_BLOCK:
        lacking = [
            k
            for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
            if not _truthy(p.get(k))
        ]
        if lacking:
            out.append(f"{where} does not set {', '.join(lacking)}")
    return out


# ------------------------------------------------------------------ whole stack


def bucket_violations(resources: Sequence[Resource]) -> list[str]:
    """Every bucket has a full public access block, encryption and versioning."""
    out = []
    for bucket in (r for r in resources if r.type in BUCKET_TYPES):
        where = f"bucket {bucket.name}"
        blocks = [r for r in resources if r.type == PUBLIC_ACCESS_BLOCK and _refers(r, "bucket", bucket)]
        if not blocks:
            out.append(f"{where} has no BucketPublicAccessBlock")
        if not (
            bucket.props.get("serverSideEncryptionConfiguration")
            or any(r.type in BUCKET_SSE_TYPES and _refers(r, "bucket", bucket) for r in resources)
        ):
            out.append(f"{where} has no server-side encryption configuration")
        versioning = [r for r in resources if r.type in BUCKET_VERSIONING_TYPES and _refers(r, "bucket", bucket)]
        if not any((v.props.get("versioningConfiguration") or {}).get("status") == "Enabled" for v in versioning):
            out.append(f"{where} is not versioned")
    return out


def rds_tls_violations(resources: Sequence[Resource]) -> list[str]:
    """Every RDS PostgreSQL instance uses a parameter group that forces TLS."""
    out = []
    groups = [r for r in resources if r.type == RDS_PARAMETER_GROUP]
    for db in (r for r in resources if r.type == RDS_INSTANCE):
        group = next((g for g in groups if _refers(db, "parameterGroupName", g)), None)
        params = (
            {str(p.get("name")): str(p.get("value")) for p in (group.props.get("parameters") or [])} if group else {}
        )
        if params.get("rds.force_ssl") != "1":
            out.append(f"RDS instance {db.name} does not force TLS (parameter group with rds.force_ssl=1)")
    return out


def budget_violations(resources: Sequence[Resource], tenants: Iterable[str] = ()) -> list[str]:
    """A budget per tenant (every tenant named in config or in a tenant tag) and one for the platform."""
    budgets = [r for r in resources if r.type == BUDGET]
    covered = {r.tags().get("tenant") for r in budgets}
    wanted = set(tenants) | {
        r.tags().get("tenant") for r in resources if is_cloud_resource(r) and r.type != BUDGET and r.tags()
    }
    wanted.discard(None)
    out = [f"tenant {t!r} has no AWS Budget" for t in sorted(t for t in wanted - covered if t and t != SHARED_TENANT)]
    if resources and any(is_cloud_resource(r) for r in resources) and SHARED_TENANT not in covered:
        out.append("the platform has no AWS Budget (tenant tag 'shared')")
    return out


def stack_violations(
    resources: Sequence[Resource], *, admin_cidrs: Sequence[str] = (), tenants: Iterable[str] = ()
) -> list[str]:
    """Every rule over a whole stack."""
    out: list[str] = []
    for res in resources:
        out += tag_violations(res) + ingress_violations(res, admin_cidrs) + resource_violations(res)
    return out + bucket_violations(resources) + rds_tls_violations(resources) + budget_violations(resources, tenants)
