"""Run the AWS stack under pulumi.runtime.set_mocks and record every resource."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

pulumi = pytest.importorskip("pulumi", reason="the cloud extra is not installed (pip install -e '.[cloud]')")
pytest.importorskip("pulumi_aws")

from sciplat.cloud.config import StackConfig, stack_config  # noqa: E402
from sciplat.cloud.rules import Resource  # noqa: E402
from sciplat.spec import PlatformSpec  # noqa: E402

STACK_DIR = Path(__file__).resolve().parents[2] / "stacks" / "aws"
if str(STACK_DIR) not in sys.path:
    sys.path.insert(0, str(STACK_DIR))

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ1UoG3Zf2xX0aGq2d4e4b1n5e1x8yq1mY9b8l3Jx0aZ test@example"

BASE_SPEC = """
platform: {name: astro, domain: science.example.org}
storage: {backend: s3, posix: nfs}
cloud:
  region: eu-west-1
  admin_cidrs: [192.0.2.0/24]
  cost_center: cc-platform
  budgets: {platform_monthly_usd: 2000, alert_emails: [ops@example.org]}
  tenants:
    - {name: survey, cost_center: cc-100, budget_monthly_usd: 500, groups: [survey-team]}
    - {name: theory, cost_center: cc-200, budget_monthly_usd: 300, groups: [theory]}
"""


def spec_from(text: str = BASE_SPEC, **cloud: Any) -> PlatformSpec:
    data = yaml.safe_load(text)
    data["cloud"].update(cloud)
    return PlatformSpec.model_validate(data)


@dataclass
class Recorded:
    resources: list[Resource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]

    def named(self, name: str) -> Resource:
        return next(r for r in self.resources if r.name == name)


class _Mocks(pulumi.runtime.Mocks):  # type: ignore[misc,name-defined]
    def __init__(self, record: Recorded) -> None:
        self.record = record

    def new_resource(self, args: Any) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        state = dict(inputs)
        rid = f"{args.name}-id"
        typ = args.typ
        if typ == "aws:s3/bucket:Bucket":
            rid = inputs["bucket"]
            state.setdefault("arn", f"arn:aws:s3:::{rid}")
        elif typ == "aws:ec2/instance:Instance":
            n = len(self.record.of_type(typ))
            state |= {"privateIp": f"10.42.0.{10 + n}", "publicIp": f"198.51.100.{10 + n}"}
        elif typ == "aws:ec2/eip:Eip":
            state["publicIp"] = "203.0.113.7"
        elif typ == "aws:efs/fileSystem:FileSystem":
            state["dnsName"] = "fs-1234.efs.eu-west-1.amazonaws.com"
        elif typ == "aws:rds/instance:Instance":
            state |= {"address": "astro-pg.abc.eu-west-1.rds.amazonaws.com", "port": 5432}
        elif typ == "aws:ec2/keyPair:KeyPair":
            state["keyName"] = args.name
        elif typ in ("aws:iam/instanceProfile:InstanceProfile", "aws:iam/role:Role"):
            state |= {"name": args.name, "arn": f"arn:aws:iam::123456789012:role/{args.name}"}
        elif typ == "aws:rds/parameterGroup:ParameterGroup":
            rid = state["name"] = inputs.get("name", args.name)  # AWS: a parameter group's id is its name
        state.setdefault("arn", f"arn:aws:mock:::{args.name}")
        self.record.resources.append(
            Resource(type=typ, name=args.name, props=inputs, urn=f"urn:{typ}::{args.name}", id=rid)
        )
        return rid, state

    def call(self, args: Any) -> dict[str, Any]:
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": ["eu-west-1a", "eu-west-1b"], "zoneIds": ["euw1-az1", "euw1-az2"], "id": "eu-west-1"}
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0123456789abcdef0", "name": "debian-12-amd64-20250101"}
        return {}


def run_stack(config: StackConfig) -> Recorded:
    from sciplat_aws.program import build

    record = Recorded()
    pulumi.runtime.set_mocks(_Mocks(record), project="sciplat", stack="test", preview=False)

    @pulumi.runtime.test  # type: ignore[misc]
    def program() -> Any:
        outputs = build(config)
        keys = list(outputs)
        return pulumi.Output.all(*[outputs[k] for k in keys]).apply(
            lambda values: record.outputs.update(dict(zip(keys, values, strict=True)))
        )

    program()
    return record


def run_spec(spec: PlatformSpec) -> Recorded:
    return run_stack(stack_config(spec, ssh_public_key=SSH_KEY))
