"""The whole stack: components wired together, and the outputs the inventory is
rendered from (see sciplat.cloud.inventory)."""

from __future__ import annotations

from typing import Any

import pulumi

from sciplat.cloud.config import DEBIAN_LOGIN, StackConfig
from sciplat_aws.budgets import Budgets
from sciplat_aws.compute import ComputePool
from sciplat_aws.database import Database
from sciplat_aws.homes import Homes
from sciplat_aws.hosts import Hosts
from sciplat_aws.network import Network
from sciplat_aws.storage import ObjectStorage
from sciplat_aws.tags import register


def build(config: StackConfig) -> dict[str, Any]:
    """Create every resource; return the stack outputs."""
    register(config.tags)
    name = config.platform
    network = Network(name, config.network)
    hosts = Hosts(name, config.hosts, network)
    pools = [
        ComputePool(f"{name}-{pool.name}", config.compute, pool, network, hosts.machine)
        for pool in config.compute.pools
    ]
    storage = ObjectStorage(name, config.storage, admin_role=hosts.hub_role)
    homes = Homes(name, config.homes, network)
    database = Database(name, config.database, network) if config.database.enabled else None
    Budgets(name, config.budgets)
    return {
        "platform": config.platform,
        "region": config.region,
        "ssh_user": DEBIAN_LOGIN,
        "vpc_id": network.vpc.id,
        "hosts": hosts.host_list,
        "compute_pools": pulumi.Output.all(*[p.summary for p in pools]),
        "buckets": pulumi.Output.all(
            storage.platform_bucket.bucket, *[b.bucket for b in storage.tenant_buckets.values()]
        ).apply(
            lambda names: {
                "platform": names[0],
                "tenants": dict(zip(storage.tenant_buckets, names[1:], strict=True)),
            }
        ),
        "homes": pulumi.Output.all(homes.fs.id, homes.fs.dns_name).apply(lambda v: {"id": v[0], "dns_name": v[1]}),
        "rds": database.endpoint if database is not None else None,
        "storage_admin": storage.admin,
    }
