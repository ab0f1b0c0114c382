"""sciplat's policy pack: `pulumi preview --policy-pack stacks/aws/policy` (in stacks/aws)."""

from pulumi_policy import PolicyPack
from sciplat_policies import ENFORCEMENT, POLICIES

PolicyPack(name="sciplat-aws", enforcement_level=ENFORCEMENT, policies=POLICIES)
