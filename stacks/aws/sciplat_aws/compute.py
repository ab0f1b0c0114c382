"""ComputePool: a launch template and an auto-scaling group of Slurm compute nodes;
a spot pool (several interchangeable instance types) for batch partitions."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from sciplat.cloud.config import ComputeConfig, PoolConfig
from sciplat_aws.hosts import Machine
from sciplat_aws.network import Network
from sciplat_aws.tags import Component


class ComputePool(Component):
    component = "compute"

    def __init__(
        self,
        name: str,
        config: ComputeConfig,
        pool: PoolConfig,
        network: Network,
        machine: Machine,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("sciplat:aws:ComputePool", name, opts)
        self.template = aws.ec2.LaunchTemplate(
            f"{name}-lt",
            image_id=machine.ami,
            instance_type=None if pool.spot else pool.instance_types[0],
            key_name=machine.key_name,
            iam_instance_profile={"arn": machine.instance_profile.arn},
            metadata_options={"http_tokens": "required", "http_endpoint": "enabled"},
            network_interfaces=[
                {
                    "associate_public_ip_address": "true" if config.public else "false",
                    "security_groups": [network.hosts_sg.id],
                    "delete_on_termination": "true",
                }
            ],
            block_device_mappings=[
                {
                    "device_name": "/dev/xvda",
                    "ebs": {
                        "volume_size": pool.volume_gib,
                        "volume_type": "gp3",
                        "encrypted": "true",
                        "delete_on_termination": "true",
                    },
                }
            ],
            tags={"Name": f"{config.platform}-{pool.name}"},
            update_default_version=True,
            opts=self.child(),
        )
        template_ref = {"id": self.template.id, "version": "$Latest"}
        extra: dict[str, object] = {}
        if pool.spot:
            extra["mixed_instances_policy"] = {
                "instances_distribution": {
                    "on_demand_base_capacity": 0,
                    "on_demand_percentage_above_base_capacity": 0,
                    "spot_allocation_strategy": "price-capacity-optimized",
                },
                "launch_template": {
                    "launch_template_specification": {
                        "launch_template_id": self.template.id,
                        "version": "$Latest",
                    },
                    "overrides": [{"instance_type": t} for t in pool.instance_types],
                },
            }
        else:
            extra["launch_template"] = template_ref
        self.group = aws.autoscaling.Group(
            f"{name}-asg",
            name=f"{config.platform}-{pool.name}",
            min_size=pool.min_size,
            max_size=pool.max_size,
            desired_capacity=pool.min_size,
            vpc_zone_identifiers=[s.id for s in network.host_subnets],
            health_check_type="EC2",
            tags=[
                {"key": "Name", "value": f"{config.platform}-{pool.name}", "propagate_at_launch": True},
                {"key": "sciplat-partitions", "value": ",".join(pool.partitions), "propagate_at_launch": True},
            ],
            # scaling between min and max belongs to the operator (or a Slurm resume program), not to pulumi up
            opts=self.child(ignore_changes=["desiredCapacity"]),
            **extra,  # type: ignore[arg-type]
        )
        self.summary = self.group.name.apply(
            lambda n: {
                "name": pool.name,
                "asg_name": n,
                "spot": pool.spot,
                "partitions": list(pool.partitions),
                "instance_types": list(pool.instance_types),
            }
        )
        self.register_outputs({"asg_name": self.group.name})
