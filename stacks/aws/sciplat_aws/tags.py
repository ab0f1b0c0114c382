"""Tags on every resource, through one stack-wide transformation.

A component declares its ``component`` tag; a resource may set ``tenant`` and
``cost-center`` in its own tags (tenant buckets and budgets do); the transformation
fills in the rest from the parent component. It also tags what AWS creates later:
instances, volumes and network interfaces launched from a launch template or by an
auto-scaling group (``tag_specifications``, ``propagate_at_launch``), and the root
volumes of instances (``volume_tags``).
"""

from __future__ import annotations

import inspect
from typing import Any

import pulumi

from sciplat.cloud.config import REQUIRED_TAGS, SHARED_TENANT, TagConfig

_TAGGABLE: dict[type, bool] = {}


class Component(pulumi.ComponentResource):
    """A sciplat component: its children are tagged ``component=<component>``."""

    component = "platform"

    def __init__(self, type_: str, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(type_, name, None, opts)

    def child(self, **kwargs: Any) -> pulumi.ResourceOptions:
        kwargs.setdefault("parent", self)
        return pulumi.ResourceOptions(**kwargs)


def taggable(resource: pulumi.Resource) -> bool:
    """Does this provider resource accept ``tags``? (Read from its constructor.)"""
    cls = type(resource)
    if cls not in _TAGGABLE:
        init = getattr(cls, "_internal_init", None)
        _TAGGABLE[cls] = init is not None and "tags" in inspect.signature(init).parameters
    return _TAGGABLE[cls]


def _component_of(opts: pulumi.ResourceOptions) -> str:
    parent = opts.parent
    while parent is not None:
        if isinstance(parent, Component):
            return parent.component
        parent = getattr(parent, "_parent", None)
    return "platform"


def _merged(defaults: dict[str, str], explicit: Any) -> dict[str, Any]:
    explicit = dict(explicit or {})
    return {**defaults, **explicit}


def transformation(config: TagConfig) -> Any:
    def transform(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
        if isinstance(args.resource, pulumi.ComponentResource) or not args.type_.startswith("aws:"):
            return None
        if not taggable(args.resource):
            return None
        props = dict(args.props)
        own = props.get("tags")
        if isinstance(own, dict):
            tenant = own.get("tenant", SHARED_TENANT)
            cost_center = own.get("cost-center")
        else:
            tenant, cost_center = SHARED_TENANT, None
        defaults = config.tags(_component_of(args.opts), tenant=tenant, cost_center=cost_center)
        if args.type_ == "aws:autoscaling/group:Group":
            listed = list(props.get("tags") or [])
            have = {_key(t) for t in listed}
            listed += [
                {"key": k, "value": v, "propagate_at_launch": True} for k, v in defaults.items() if k not in have
            ]
            props["tags"] = listed
            return pulumi.ResourceTransformationResult(props, args.opts)
        props["tags"] = _merged(defaults, own)
        if args.type_ == "aws:ec2/launchTemplate:LaunchTemplate":
            specs = {_kind(s): s for s in props.get("tag_specifications") or []}
            for kind in ("instance", "volume", "network-interface"):
                spec_tags = _spec_tags(specs.get(kind))
                specs[kind] = {"resource_type": kind, "tags": _merged(props["tags"], spec_tags)}
            props["tag_specifications"] = list(specs.values())
        if args.type_ == "aws:ec2/instance:Instance":
            props["volume_tags"] = _merged(props["tags"], props.get("volume_tags"))
        return pulumi.ResourceTransformationResult(props, args.opts)

    return transform


def _key(tag: Any) -> Any:
    return tag.get("key") if isinstance(tag, dict) else getattr(tag, "key", None)


def _kind(spec: Any) -> Any:
    return spec.get("resource_type") if isinstance(spec, dict) else getattr(spec, "resource_type", None)


def _spec_tags(spec: Any) -> Any:
    if spec is None:
        return {}
    return spec.get("tags") if isinstance(spec, dict) else getattr(spec, "tags", None)


def register(config: TagConfig) -> None:
    pulumi.runtime.register_stack_transformation(transformation(config))


__all__ = ["REQUIRED_TAGS", "Component", "register", "taggable", "transformation"]
