"""The policies of the pack: thin wrappers that turn pulumi-policy's arguments into
:class:`sciplat.cloud.rules.Resource` records and report what the rules find.

Configuration (``pulumi preview --policy-pack stacks/aws/policy --policy-pack-config cfg.json``):
``{"sciplat-ingress": {"adminCidrs": ["192.0.2.0/24"]}, "sciplat-budgets": {"tenants": ["survey"]}}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from sciplat.cloud import rules


def _record(args: Any) -> rules.Resource:
    deps = getattr(args, "property_dependencies", None) or {}
    return rules.Resource(
        type=args.resource_type,
        name=args.name,
        props=dict(args.props),
        urn=args.urn,
        id=None,
        property_deps={k: frozenset(d.urn for d in v) for k, v in deps.items()},
    )


def _resource_policy(
    name: str, description: str, check: Callable[[rules.Resource, ResourceValidationArgs], list[str]], **extra: Any
) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for message in check(_record(args), args):
            report_violation(message, args.urn)

    return ResourceValidationPolicy(name=name, description=description, validate=validate, **extra)


def _stack_policy(
    name: str, description: str, check: Callable[[list[rules.Resource], StackValidationArgs], list[str]], **extra: Any
) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        for message in check([_record(r) for r in args.resources], args):
            report_violation(message, None)

    return StackValidationPolicy(name=name, description=description, validate=validate, **extra)


POLICIES = [
    _resource_policy(
        "sciplat-tags",
        "Every taggable resource carries platform, tenant, component and cost-center (also on launched instances).",
        lambda res, _: rules.tag_violations(res),
    ),
    _resource_policy(
        "sciplat-ingress",
        "Only 443 is open to the world, 22 only from the admin CIDRs; everything else is group to group.",
        lambda res, args: rules.ingress_violations(res, list(args.get_config().get("adminCidrs", []))),
        config_schema=PolicyConfigSchema(
            properties={"adminCidrs": {"type": "array", "items": {"type": "string"}, "default": []}}
        ),
    ),
    _resource_policy(
        "sciplat-encryption-exposure",
        "RDS not public, encrypted, protected; IMDSv2 and encrypted volumes; encrypted EFS; private buckets.",
        lambda res, _: rules.resource_violations(res),
    ),
    _stack_policy(
        "sciplat-buckets",
        "Every bucket has a full public access block, encryption and versioning.",
        lambda resources, _: rules.bucket_violations(resources),
    ),
    _stack_policy(
        "sciplat-rds-tls",
        "RDS PostgreSQL uses a parameter group with rds.force_ssl=1.",
        lambda resources, _: rules.rds_tls_violations(resources),
    ),
    _stack_policy(
        "sciplat-budgets",
        "An AWS Budget per tenant and one for the platform.",
        lambda resources, args: rules.budget_violations(resources, args.get_config().get("tenants", [])),
        config_schema=PolicyConfigSchema(
            properties={"tenants": {"type": "array", "items": {"type": "string"}, "default": []}}
        ),
    ),
]

ENFORCEMENT = EnforcementLevel.MANDATORY
