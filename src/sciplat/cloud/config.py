"""Typed configuration of the AWS stack, built from a validated PlatformSpec.

The Pulumi program (``stacks/aws``) builds one :class:`StackConfig` from
``platform.yaml`` and hands each component only its own part, so no component reads
``pulumi.Config`` itself and every component can be tested with a hand-made config.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from sciplat.spec import CloudSection, PlatformSpec

#: Tag keys every taggable resource carries (the policy checks them).
REQUIRED_TAGS = ("platform", "tenant", "component", "cost-center")
#: Value of the tenant tag on resources every tenant shares.
SHARED_TENANT = "shared"
#: Debian's AWS account, owner of the official Debian cloud images.
DEBIAN_AMI_OWNER = "136693071363"
DEBIAN_AMI_NAME = "debian-12-amd64-*"
#: Default login of the Debian cloud images.
DEBIAN_LOGIN = "admin"


class CloudConfigError(ValueError):
    """The spec cannot become a stack (a message says what to change)."""


@dataclass(frozen=True)
class TagConfig:
    platform: str
    cost_center: str

    def tags(self, component: str, tenant: str = SHARED_TENANT, cost_center: str | None = None) -> dict[str, str]:
        return {
            "platform": self.platform,
            "tenant": tenant,
            "component": component,
            "cost-center": (cost_center if cost_center is not None else self.cost_center) or "none",
        }


@dataclass(frozen=True)
class NetworkConfig:
    name: str
    region: str
    cidr: str
    public_subnets: tuple[str, str]
    private_subnets: tuple[str, str]
    nat_gateway: bool
    admin_cidrs: tuple[str, ...]


@dataclass(frozen=True)
class HostConfig:
    name: str
    groups: tuple[str, ...]
    instance_type: str
    volume_gib: int
    public: bool  # public subnet and address (the gateway always; every host without a NAT gateway)


@dataclass(frozen=True)
class PoolConfig:
    name: str
    instance_types: tuple[str, ...]
    min_size: int
    max_size: int
    volume_gib: int
    spot: bool
    partitions: tuple[str, ...]


@dataclass(frozen=True)
class HostsConfig:
    platform: str
    ami: str | None
    ssh_public_key: str
    hosts: tuple[HostConfig, ...]


@dataclass(frozen=True)
class ComputeConfig:
    platform: str
    pools: tuple[PoolConfig, ...]
    public: bool


@dataclass(frozen=True)
class TenantConfig:
    name: str
    cost_center: str
    budget_monthly_usd: float | None
    alert_emails: tuple[str, ...]
    groups: tuple[str, ...]


@dataclass(frozen=True)
class ObjectStorageConfig:
    platform: str
    tenants: tuple[TenantConfig, ...]
    noncurrent_expire_days: int
    infrequent_access_after_days: int | None
    abort_multipart_days: int

    def bucket_name(self, tenant: str | None = None) -> str:
        """``<platform>-platform`` or ``<platform>-t-<tenant>`` (S3 names are global: keep them short)."""
        return f"{self.platform}-platform" if tenant is None else f"{self.platform}-t-{tenant}"


@dataclass(frozen=True)
class HomesConfig:
    platform: str
    throughput_mode: str
    infrequent_access_after_days: int | None
    backup: bool


@dataclass(frozen=True)
class DatabaseConfig:
    platform: str
    enabled: bool
    instance_class: str
    allocated_gib: int
    multi_az: bool
    backup_retention_days: int
    postgresql_version: int


@dataclass(frozen=True)
class BudgetsConfig:
    platform: str
    platform_monthly_usd: float | None
    alert_emails: tuple[str, ...]
    thresholds: tuple[float, ...]
    forecast_threshold: float | None
    tenants: tuple[TenantConfig, ...]


@dataclass(frozen=True)
class StackConfig:
    platform: str
    region: str
    tags: TagConfig
    network: NetworkConfig
    hosts: HostsConfig
    compute: ComputeConfig
    storage: ObjectStorageConfig
    homes: HomesConfig
    database: DatabaseConfig
    budgets: BudgetsConfig
    tenants: tuple[TenantConfig, ...] = field(default=())


def _subnets(cidr: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """Four equal subnets of the VPC: two public, two private (one of each per AZ)."""
    net = ipaddress.IPv4Network(cidr)
    quarters = [str(s) for s in net.subnets(prefixlen_diff=2)]
    return (quarters[0], quarters[1]), (quarters[2], quarters[3])


def _gib(value: int) -> int:
    return max(1, -(-value // 1024**3))


def read_public_key(path: str, inventory_dir: Path | None) -> str:
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and inventory_dir is not None:
        candidate = inventory_dir / candidate
    try:
        text = candidate.read_text().strip()
    except OSError as exc:
        raise CloudConfigError(
            f"cloud.ssh_public_key_file: cannot read {candidate} ({exc.strerror}); create a key with "
            "`ssh-keygen -t ed25519` or point the setting at an existing .pub file"
        ) from None
    if not text.startswith(("ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-")):
        raise CloudConfigError(f"cloud.ssh_public_key_file: {candidate} is not an OpenSSH public key (.pub)")
    return text


def tenant_configs(cloud: CloudSection) -> tuple[TenantConfig, ...]:
    return tuple(
        TenantConfig(
            name=t.name,
            cost_center=t.cost_center,
            budget_monthly_usd=t.budget_monthly_usd,
            alert_emails=tuple(t.alert_emails),
            groups=tuple(t.groups),
        )
        for t in cloud.tenants
    )


def check_spec_for_aws(spec: PlatformSpec) -> list[str]:
    """What in the spec must change before it can run on AWS (empty when nothing)."""
    problems = []
    if spec.cloud is None:
        problems.append("platform.yaml has no `cloud:` section; add one (at least `cloud: {region: eu-west-1}`)")
        return problems
    if spec.storage.backend != "s3":
        problems.append(
            f"storage.backend is {spec.storage.backend!r}; on AWS the object store is S3: set `storage.backend: s3`"
        )
    if spec.storage.posix != "nfs":
        problems.append(f"storage.posix is {spec.storage.posix!r}; on AWS homes are on EFS: set `storage.posix: nfs`")
    budgets = spec.cloud.budgets
    if budgets.platform_monthly_usd is None:
        problems.append("cloud.budgets.platform_monthly_usd is not set; every platform on AWS has a budget")
    if not budgets.alert_emails:
        problems.append("cloud.budgets.alert_emails is empty; budgets must warn someone before the money is gone")
    for tenant in spec.cloud.tenants:
        if tenant.budget_monthly_usd is None:
            problems.append(f"cloud.tenants: {tenant.name!r} has no budget_monthly_usd; every tenant has a budget")
    if spec.tls.mode == "acme":
        problems.append(
            "tls.mode is 'acme', whose HTTP-01 challenge needs port 80; on AWS only 443 (and 22 from "
            "cloud.admin_cidrs) is open: use tls.mode provided or internal-ca"
        )
    served = {g for h in spec.cloud.hosts for g in h.groups}
    for group, why in spec.required_groups().items():
        if group in ("storage", "compute") or group in served:
            continue
        problems.append(f"no host in cloud.hosts serves {group!r}, needed for {why}; add it to a host's groups")
    pools_min = spec.cloud.compute.min_size + (
        spec.cloud.compute.spot.min_size if spec.cloud.compute.spot.enabled else 0
    )
    if spec.compute.scheduler == "slurm" and pools_min == 0:
        problems.append(
            "cloud.compute.min_size is 0 (and no spot minimum): Slurm needs at least one compute node "
            "in the inventory; set min_size to 1 or more"
        )
    partitions = {p.name for p in spec.compute.partitions}
    if spec.cloud.compute.spot.enabled:
        for name in spec.cloud.compute.spot.partitions:
            if name not in partitions:
                problems.append(
                    f"cloud.compute.spot.partitions names {name!r}, which is not in compute.partitions "
                    f"({', '.join(sorted(partitions))})"
                )
    return problems


def stack_config(spec: PlatformSpec, *, ssh_public_key: str) -> StackConfig:
    """The stack's typed configuration; raises CloudConfigError when the spec has no cloud section."""
    cloud = spec.cloud
    if cloud is None:
        raise CloudConfigError("platform.yaml has no `cloud:` section; add one to deploy to AWS")
    name = spec.platform.name
    public, private = _subnets(cloud.vpc_cidr)
    tenants = tenant_configs(cloud)
    hosts_public = not cloud.nat_gateway
    pools = [
        PoolConfig(
            name="ondemand",
            instance_types=(cloud.compute.instance_type,),
            min_size=cloud.compute.min_size,
            max_size=cloud.compute.max_size,
            volume_gib=_gib(cloud.compute.volume_size),
            spot=False,
            partitions=tuple(p.name for p in spec.compute.partitions if p.name not in _spot_only(cloud)),
        )
    ]
    if cloud.compute.spot.enabled:
        pools.append(
            PoolConfig(
                name="spot",
                instance_types=tuple(cloud.compute.spot.instance_types),
                min_size=cloud.compute.spot.min_size,
                max_size=cloud.compute.spot.max_size,
                volume_gib=_gib(cloud.compute.volume_size),
                spot=True,
                partitions=tuple(cloud.compute.spot.partitions),
            )
        )
    return StackConfig(
        platform=name,
        region=cloud.region,
        tags=TagConfig(platform=name, cost_center=cloud.cost_center),
        network=NetworkConfig(
            name=name,
            region=cloud.region,
            cidr=cloud.vpc_cidr,
            public_subnets=public,
            private_subnets=private,
            nat_gateway=cloud.nat_gateway,
            admin_cidrs=tuple(cloud.admin_cidrs),
        ),
        hosts=HostsConfig(
            platform=name,
            ami=cloud.ami,
            ssh_public_key=ssh_public_key,
            hosts=tuple(
                HostConfig(
                    name=h.name,
                    groups=tuple(h.groups),
                    instance_type=h.instance_type,
                    volume_gib=_gib(h.volume_size),
                    public=hosts_public or "gateway" in h.groups,
                )
                for h in cloud.hosts
                if not (cloud.rds.enabled and tuple(h.groups) == ("db",))
            ),
        ),
        compute=ComputeConfig(platform=name, pools=tuple(pools), public=hosts_public),
        storage=ObjectStorageConfig(
            platform=name,
            tenants=tenants,
            noncurrent_expire_days=cloud.buckets.noncurrent_expire_days,
            infrequent_access_after_days=cloud.buckets.infrequent_access_after_days,
            abort_multipart_days=cloud.buckets.abort_multipart_days,
        ),
        homes=HomesConfig(
            platform=name,
            throughput_mode=cloud.homes.throughput_mode,
            infrequent_access_after_days=cloud.homes.infrequent_access_after_days,
            backup=cloud.homes.backup,
        ),
        database=DatabaseConfig(
            platform=name,
            enabled=cloud.rds.enabled,
            instance_class=cloud.rds.instance_class,
            allocated_gib=_gib(cloud.rds.allocated_storage),
            multi_az=cloud.rds.multi_az,
            backup_retention_days=cloud.rds.backup_retention_days,
            postgresql_version=spec.databases.postgresql_version,
        ),
        budgets=BudgetsConfig(
            platform=name,
            platform_monthly_usd=cloud.budgets.platform_monthly_usd,
            alert_emails=tuple(cloud.budgets.alert_emails),
            thresholds=tuple(cloud.budgets.thresholds),
            forecast_threshold=cloud.budgets.forecast_threshold,
            tenants=tenants,
        ),
        tenants=tenants,
    )


def _spot_only(cloud: CloudSection) -> set[str]:
    return set(cloud.compute.spot.partitions) if cloud.compute.spot.enabled else set()
