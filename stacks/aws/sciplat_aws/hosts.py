"""Hosts: one EC2 instance per entry of cloud.hosts (gateway, hub, db, monitor,
slurm controller by default), IMDSv2 only, encrypted gp3 root volumes, and an
instance profile with the SSM core policy so Session Manager can reach them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from sciplat.cloud.config import DEBIAN_AMI_NAME, DEBIAN_AMI_OWNER, HostsConfig
from sciplat_aws.network import Network
from sciplat_aws.tags import Component

SSM_POLICY = "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
#: The component tag of a host: its costs are split like the service it runs.
HOST_COMPONENT = {
    "db": "database",
    "slurm_controller": "compute",
    "gateway": "gateway",
    "hub": "hub",
    "monitor": "monitor",
    "directory": "hub",
}


@dataclass
class Machine:
    """What the pools and the inventory need from the host layer."""

    ami: pulumi.Input[str]
    key_name: pulumi.Output[str]
    instance_profile: aws.iam.InstanceProfile


def machine_image(config: HostsConfig) -> pulumi.Input[str]:
    if config.ami:
        return config.ami
    return aws.ec2.get_ami_output(
        most_recent=True,
        owners=[DEBIAN_AMI_OWNER],
        filters=[
            {"name": "name", "values": [DEBIAN_AMI_NAME]},
            {"name": "architecture", "values": ["x86_64"]},
            {"name": "virtualization-type", "values": ["hvm"]},
        ],
    ).id


class Hosts(Component):
    component = "hosts"

    def __init__(
        self, name: str, config: HostsConfig, network: Network, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("sciplat:aws:Hosts", name, opts)
        key = aws.ec2.KeyPair(f"{name}-key", public_key=config.ssh_public_key, opts=self.child())
        _, profile = self._role(name, "role", "profile")
        # The hub hosts get their own role: the storage component grants it the S3/IAM
        # administration the platform's storage backend (storage.backend: s3) needs.
        self.hub_role, hub_profile = self._role(name, "hub-role", "hub-profile")
        self.machine = Machine(ami=machine_image(config), key_name=key.key_name, instance_profile=profile)
        self.instances: dict[str, aws.ec2.Instance] = {}
        self.public_ips: dict[str, pulumi.Output[str]] = {}
        outputs: list[pulumi.Output[Any]] = []
        for i, host in enumerate(config.hosts):
            subnets = network.public_subnets if host.public else network.host_subnets
            groups = [network.hosts_sg.id] + ([network.gateway_sg.id] if "gateway" in host.groups else [])
            instance = aws.ec2.Instance(
                f"{name}-{host.name}",
                ami=self.machine.ami,
                instance_type=host.instance_type,
                subnet_id=subnets[i % len(subnets)].id,
                vpc_security_group_ids=groups,
                key_name=key.key_name,
                iam_instance_profile=(hub_profile if "hub" in host.groups else profile).name,
                associate_public_ip_address=host.public,
                metadata_options={"http_tokens": "required", "http_endpoint": "enabled"},
                root_block_device={"volume_size": host.volume_gib, "volume_type": "gp3", "encrypted": True},
                tags={
                    "Name": f"{config.platform}-{host.name}",
                    "sciplat-groups": ",".join(host.groups),
                    "component": HOST_COMPONENT[host.groups[0]],
                },
                opts=self.child(),
            )
            self.instances[host.name] = instance
            public_ip: pulumi.Output[str] | None = None
            if "gateway" in host.groups:
                # A stable address for DNS: the gateway keeps it across stop/start.
                eip = aws.ec2.Eip(f"{name}-{host.name}", domain="vpc", instance=instance.id, opts=self.child())
                public_ip = eip.public_ip
            elif host.public:
                public_ip = instance.public_ip
            if public_ip is not None:
                self.public_ips[host.name] = public_ip
            outputs.append(
                pulumi.Output.all(instance.id, instance.private_ip, public_ip or "").apply(
                    lambda v, h=host: {
                        "name": h.name,
                        "groups": list(h.groups),
                        "instance_id": v[0],
                        "private_ip": v[1],
                        "public_ip": v[2] or None,
                    }
                )
            )
        self.host_list: pulumi.Output[list[dict[str, Any]]] = pulumi.Output.all(*outputs)  # type: ignore[assignment]
        self.register_outputs({"hosts": self.host_list})

    def _role(self, name: str, role_name: str, profile_name: str) -> tuple[aws.iam.Role, aws.iam.InstanceProfile]:
        """An EC2 instance role with the SSM core policy (Session Manager), and its profile."""
        role = aws.iam.Role(
            f"{name}-{role_name}",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
                    ],
                }
            ),
            opts=self.child(),
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-{role_name}-ssm", role=role.name, policy_arn=SSM_POLICY, opts=self.child()
        )
        return role, aws.iam.InstanceProfile(f"{name}-{profile_name}", role=role.name, opts=self.child())
