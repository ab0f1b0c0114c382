"""Database: RDS PostgreSQL (when cloud.rds.enabled) — encrypted, not publicly
accessible, TLS forced by its parameter group, deletion protection on, the master
password kept by AWS Secrets Manager."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from sciplat.cloud.config import DatabaseConfig
from sciplat_aws.network import Network
from sciplat_aws.tags import Component


class Database(Component):
    component = "database"

    def __init__(
        self, name: str, config: DatabaseConfig, network: Network, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("sciplat:aws:Database", name, opts)
        subnets = aws.rds.SubnetGroup(
            f"{name}-subnets", subnet_ids=[s.id for s in network.private_subnets], opts=self.child()
        )
        params = aws.rds.ParameterGroup(
            f"{name}-params",
            family=f"postgres{config.postgresql_version}",
            parameters=[{"name": "rds.force_ssl", "value": "1"}],
            opts=self.child(),
        )
        self.instance = aws.rds.Instance(
            f"{name}-pg",
            identifier=f"{config.platform}-pg",
            engine="postgres",
            engine_version=str(config.postgresql_version),
            instance_class=config.instance_class,
            allocated_storage=config.allocated_gib,
            storage_type="gp3",
            storage_encrypted=True,
            publicly_accessible=False,
            deletion_protection=True,
            multi_az=config.multi_az,
            db_subnet_group_name=subnets.name,
            vpc_security_group_ids=[network.rds_sg.id],
            parameter_group_name=params.name,
            username="sciplat_admin",
            manage_master_user_password=True,
            backup_retention_period=config.backup_retention_days,
            copy_tags_to_snapshot=True,
            skip_final_snapshot=False,
            final_snapshot_identifier=f"{config.platform}-pg-final",
            auto_minor_version_upgrade=True,
            opts=self.child(),
        )
        self.endpoint = pulumi.Output.all(self.instance.address, self.instance.port).apply(
            lambda v: {"host": v[0], "port": v[1], "admin_user": "sciplat_admin"}
        )
        self.register_outputs({"endpoint": self.endpoint})
