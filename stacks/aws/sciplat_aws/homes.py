"""Homes: an encrypted EFS file system for /home and /groups (NFS on AWS), a
mount target in each private subnet, and the EFS backup policy."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from sciplat.cloud.config import HomesConfig
from sciplat_aws.network import Network
from sciplat_aws.tags import Component


class Homes(Component):
    component = "homes"

    def __init__(
        self, name: str, config: HomesConfig, network: Network, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("sciplat:aws:Homes", name, opts)
        lifecycle = (
            [
                {
                    "transition_to_ia": f"AFTER_{config.infrequent_access_after_days}_DAY"
                    + ("" if config.infrequent_access_after_days == 1 else "S")
                }
            ]
            if config.infrequent_access_after_days
            else []
        )
        self.fs = aws.efs.FileSystem(
            f"{name}-fs",
            encrypted=True,
            performance_mode="generalPurpose",
            throughput_mode=config.throughput_mode,
            lifecycle_policies=lifecycle,
            tags={"Name": f"{config.platform}-homes"},
            opts=self.child(),
        )
        self.mount_targets = [
            aws.efs.MountTarget(
                f"{name}-mt-{i}",
                file_system_id=self.fs.id,
                subnet_id=subnet.id,
                security_groups=[network.efs_sg.id],
                opts=self.child(),
            )
            for i, subnet in enumerate(network.host_subnets)
        ]
        aws.efs.BackupPolicy(
            f"{name}-backup",
            file_system_id=self.fs.id,
            backup_policy={"status": "ENABLED" if config.backup else "DISABLED"},
            opts=self.child(),
        )
        self.register_outputs({"dns_name": self.fs.dns_name})
