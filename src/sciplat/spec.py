"""The platform spec: what an operator writes in platform.yaml.

Every section has safe defaults, so three lines (a name and a domain under
`platform:`) describe a working platform. Unknown keys are errors: a typo must
never silently fall back to a default.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sciplat.units import Duration, Size

_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_SLUG = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class Section(BaseModel):
    """Base of every spec section: unknown keys are rejected, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


def check_domain(value: str) -> str:
    value = value.strip().lower().rstrip(".")
    labels = value.split(".")
    if len(value) > 253 or len(labels) < 2 or not all(_DOMAIN_LABEL.match(x) for x in labels):
        raise ValueError(
            f"{value!r} is not a valid DNS name; use the fully qualified name users will "
            "type, such as science.example.org (letters, digits and hyphens, at least two labels)"
        )
    if labels[-1].isdigit():
        raise ValueError(f"{value!r} looks like an IP address; use a DNS name such as science.example.org")
    return value


def check_email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError(f"{value!r} is not an e-mail address; write it as name@example.org")
    return value


# ---------------------------------------------------------------- platform


class PlatformSection(Section):
    name: str = Field(
        description="Short name of the platform: lowercase letters, digits and hyphens. "
        "Used in host names, tags, bucket and database names."
    )
    domain: str = Field(description="The DNS name users reach the platform at, e.g. science.example.org.")
    public_url: str | None = Field(
        default=None,
        description="The URL users open, when it is not https://<domain>/ (a port-forwarded test "
        "bed, a proxy in front). Status checks probe it.",
    )
    admin_email: str | None = Field(default=None, description="Where operator mail goes (ACME, alerts).")
    description: str = Field(default="", description="One sentence shown on the landing page.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SLUG.match(value):
            raise ValueError(
                f"{value!r} is not a valid platform name; use 2-32 lowercase letters, digits "
                "and hyphens, starting with a letter (for example: astro-lab)"
            )
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return check_domain(value)

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https://[^\s/]+(/\S*)?$", value):
            raise ValueError(f"{value!r} must be an https:// URL, such as https://science.example.org")
        return value.rstrip("/") if value else value

    @field_validator("admin_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return check_email(value) if value is not None else value


# ---------------------------------------------------------------- tls


class AcmeSettings(Section):
    server: str = Field(
        default="https://acme-v02.api.letsencrypt.org/directory",
        description="ACME directory URL (Let's Encrypt by default; any RFC 8555 CA).",
    )
    email: str | None = Field(default=None, description="Account e-mail for the ACME CA.")

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return check_email(value) if value is not None else value


class ProvidedCertificate(Section):
    cert_file: str = Field(description="PEM certificate (leaf) on the controller, path relative to the inventory.")
    key_file: str = Field(description="PEM private key on the controller, relative to the inventory.")
    chain_file: str | None = Field(default=None, description="PEM intermediate chain, if any.")


class TlsSection(Section):
    mode: Literal["internal-ca", "acme", "provided"] = Field(
        default="internal-ca",
        description="How the gateway gets its public certificate. internal-ca: the platform's own CA "
        "(distribute ca.crt to users); acme: a public ACME CA; provided: files you supply. "
        "Internal services always use the platform CA.",
    )
    acme: AcmeSettings = Field(default_factory=AcmeSettings)
    provided: ProvidedCertificate | None = None
    ca_validity: Duration = Field(default=10 * 365 * 86400, description="Lifetime of the internal CA.")
    cert_validity: Duration = Field(
        default=365 * 86400,
        description="Lifetime of host certificates (Mozilla's intermediate TLS configuration allows at most 366 days).",
    )

    @model_validator(mode="after")
    def _mode_inputs(self) -> TlsSection:
        if self.mode == "provided" and self.provided is None:
            raise ValueError(
                "tls.mode is 'provided' but tls.provided is missing; add tls.provided.cert_file "
                "and tls.provided.key_file, or choose mode internal-ca or acme"
            )
        return self


# ---------------------------------------------------------------- identity


class NativeAuth(Section):
    type: Literal["native"]
    approval: Literal["admin", "open"] = Field(
        default="admin",
        description="admin: an administrator approves each sign-up; open: no approval.",
    )
    min_password_length: int = Field(default=12, ge=8, le=128)


class OidcAuth(Section):
    type: Literal["oidc"]
    name: str = Field(description="Label on the login button, e.g. CILogon or ORCID.")
    issuer: str = Field(description="OIDC issuer URL (its /.well-known/openid-configuration is read).")
    client_id: str
    username_claim: str = Field(default="preferred_username")
    allowed_domains: list[str] = Field(
        default_factory=list, description="Accept only e-mail addresses of these domains (empty: any)."
    )
    allowed_groups: list[str] = Field(
        default_factory=list, description="Accept only members of these groups (the groups claim; empty: any)."
    )
    groups_claim: str = Field(default="groups", description="Claim that lists the user's groups.")
    username_prefix: str | None = Field(
        default=None,
        description="Prepended to the provider's user names so they never collide with another "
        "sign-in method's; default: the lower-cased name and '-' (e.g. cilogon-). '' only for a sole provider.",
    )

    @field_validator("username_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        return check_username_prefix(value)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError(f"{value!r} must be an https:// URL (the provider's issuer)")
        return value


def check_username_prefix(value: str | None) -> str | None:
    if value is not None and not re.match(r"^([a-z][a-z0-9-]{0,15})?$", value):
        raise ValueError(
            f"{value!r} is not a valid user name prefix; use up to 16 lowercase letters, digits "
            "and '-', starting with a letter (for example: orcid-)"
        )
    return value


class GithubAuth(Section):
    type: Literal["github"]
    client_id: str
    allowed_organizations: list[str] = Field(
        default_factory=list, description="Accept only members of these organizations (or org:team); empty: any."
    )
    username_prefix: str = Field(default="gh-", description="Prepended to GitHub logins (see oidc).")

    @field_validator("username_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return check_username_prefix(value) or ""


class AnonymousAuth(Section):
    type: Literal["anonymous"]
    cpus: float = Field(default=1, gt=0)
    memory: Size = Field(default="1GiB")  # type: ignore[assignment]
    lifetime: Duration = Field(default=3600, description="A tutorial user is removed after this long.")
    label: str = Field(default="Try it without an account", description="Text of the button.")


Authenticator = Annotated[NativeAuth | OidcAuth | GithubAuth | AnonymousAuth, Field(discriminator="type")]


class IdRange(Section):
    start: int = Field(ge=1000)
    end: int

    @model_validator(mode="after")
    def _ordered(self) -> IdRange:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be greater than start ({self.start})")
        return self


class IdentitySection(Section):
    authenticators: list[Authenticator] = Field(
        default_factory=lambda: [NativeAuth(type="native")],  # type: ignore[arg-type]
        description="Sign-in methods shown together on the login page.",
    )
    admin_users: list[str] = Field(default_factory=list, description="Users with admin rights in the hub.")
    uid_range: IdRange = Field(default_factory=lambda: IdRange(start=20000, end=59999))
    gid_range: IdRange = Field(default_factory=lambda: IdRange(start=60000, end=99999))

    @field_validator("admin_users")
    @classmethod
    def _usernames(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(
                    f"{name!r} is not a valid user name; use lowercase letters, digits, '_' "
                    "and '-', starting with a letter, at most 32 characters"
                )
        return value

    @model_validator(mode="after")
    def _authenticators(self) -> IdentitySection:
        if not self.authenticators:
            raise ValueError("identity.authenticators is empty; list at least one sign-in method (e.g. type: native)")
        kinds = [auth.type for auth in self.authenticators]
        for kind in ("native", "github", "anonymous"):
            if kinds.count(kind) > 1:
                raise ValueError(f"identity.authenticators lists type {kind} {kinds.count(kind)} times; keep one")
        names = [auth.name.lower() for auth in self.authenticators if isinstance(auth, OidcAuth)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"oidc authenticator names must be unique; repeated: {', '.join(repeated)}")
        return self

    @model_validator(mode="after")
    def _ranges_disjoint(self) -> IdentitySection:
        uid, gid = self.uid_range, self.gid_range
        if uid.start <= gid.end and gid.start <= uid.end:
            raise ValueError(
                f"uid_range {uid.start}-{uid.end} overlaps gid_range {gid.start}-{gid.end}; "
                "give users and groups separate ranges"
            )
        return self


# ---------------------------------------------------------------- storage


class StorageSection(Section):
    backend: Literal["ceph", "minio", "s3"] = Field(
        default="ceph",
        description="Object store: Ceph RGW (default), an operator-supplied MinIO, or external S3.",
    )
    posix: Literal["cephfs", "nfs"] = Field(default="cephfs", description="Shared POSIX homes and group dirs.")
    redundancy: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Copies of every object. 1 is accepted only when written explicitly (test beds).",
    )
    user_quota: Size = Field(default="100GiB", description="Object storage per user.")  # type: ignore[assignment]
    group_quota: Size = Field(default="1TiB", description="Object storage per group.")  # type: ignore[assignment]
    home_quota: Size = Field(default="50GiB", description="POSIX home per user.")  # type: ignore[assignment]
    osd_devices: list[str] = Field(
        default_factory=list,
        description="Block devices for Ceph OSDs; empty: a file (test beds only).",
    )


# ---------------------------------------------------------------- databases


class MyDbSettings(Section):
    enabled: bool = Field(default=True, description="A personal database per user and one per group (MyDB).")
    user_quota: Size = Field(default="10GiB", description="Size quota of each user's database.")  # type: ignore[assignment]
    group_quota: Size = Field(default="50GiB", description="Size quota of each group's database.")  # type: ignore[assignment]
    connection_limit: int = Field(default=10, ge=1, le=1000, description="Connections per MyDB user at once.")
    statement_timeout: Duration = Field(default=3600, description="Longest statement a MyDB user may run.")
    warn_percent: int = Field(
        default=90, ge=50, le=99, description="Users are warned when their database reaches this share of its quota."
    )
    check_interval: Duration = Field(
        default=300, description="How often the quota is measured (at 100% the database becomes read-only)."
    )

    @field_validator("statement_timeout", "check_interval")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"{value!r} must be at least one second, e.g. 30s or 1h")
        return value


class DatabasesSection(Section):
    postgresql_version: Literal[15] = Field(default=15, description="Debian 12's PostgreSQL.")
    max_connections: int = Field(default=200, ge=20, le=10000)
    mydb: MyDbSettings = Field(default_factory=MyDbSettings)


# ---------------------------------------------------------------- compute


class Partition(Section):
    name: str
    max_time: Duration = Field(default=86400)
    default: bool = False
    oversubscribe: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Jobs that may share one core (Slurm OverSubscribe=FORCE:N); 1: none. "
            "Lets idle notebook servers share cores on an interactive partition; memory is never shared."
        ),
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a valid partition name; use lowercase letters and digits")
        return value


class Profile(Section):
    name: str
    cpus: float = Field(gt=0)
    memory: Size
    default: bool = False


class ComputeLimits(Section):
    cpus: int = Field(default=8, ge=1)
    memory: Size = Field(default="32GiB")  # type: ignore[assignment]
    max_jobs: int = Field(default=100, ge=1)
    max_wall: Duration = Field(default=2 * 86400)


class ComputeSection(Section):
    scheduler: Literal["slurm", "none"] = Field(
        default="slurm",
        description="slurm: notebooks and batch jobs run on the compute group; none: notebooks run on the hub host.",
    )
    notebooks: Literal["auto", "compute", "hub"] = Field(
        default="auto",
        description=(
            "Where users' notebook servers run. compute: each server is a Slurm job on the compute group "
            "(partition 'interactive' if there is one, else the default partition); hub: on the hub host; "
            "auto: compute when scheduler is slurm and the inventory has compute hosts, else hub. "
            "Tutorial (anonymous) users' servers always run on the hub host."
        ),
    )
    partitions: list[Partition] = Field(
        default_factory=lambda: [
            Partition(name="interactive", max_time=12 * 3600, default=True),
            Partition(name="batch", max_time=2 * 86400),
        ]
    )
    profiles: list[Profile] = Field(
        default_factory=lambda: [
            Profile(name="small", cpus=1, memory=2 * 1024**3, default=True),
            Profile(name="medium", cpus=2, memory=8 * 1024**3),
        ]
    )
    default_limits: ComputeLimits = Field(default_factory=ComputeLimits)

    @model_validator(mode="after")
    def _one_default(self) -> ComputeSection:
        for kind, items in (("partitions", self.partitions), ("profiles", self.profiles)):
            names = [item.name for item in items]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{kind} names must be unique; repeated: {', '.join(duplicates)}")
            if items and sum(1 for item in items if item.default) != 1:
                raise ValueError(f"exactly one of compute.{kind} must have default: true")
        if self.notebooks == "compute" and self.scheduler != "slurm":
            raise ValueError(
                "notebooks: compute runs each server as a Slurm job, but scheduler is 'none'; "
                "set scheduler: slurm, or notebooks: hub (or auto)"
            )
        return self

    def notebook_partition(self) -> Partition | None:
        """The partition of notebook servers' jobs: 'interactive' if there is one, else the default."""
        by_name = {p.name: p for p in self.partitions}
        return by_name.get("interactive") or next((p for p in self.partitions if p.default), None)


# ---------------------------------------------------------------- monitoring


class EmailRoute(Section):
    type: Literal["email"]
    to: str
    smtp_host: str
    smtp_port: int = Field(default=587, ge=1, le=65535)
    severity: Literal["critical", "warning", "all"] = "all"

    @field_validator("to")
    @classmethod
    def _to(cls, value: str) -> str:
        return check_email(value)


class WebhookRoute(Section):
    type: Literal["webhook"]
    url: str
    severity: Literal["critical", "warning", "all"] = "all"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://\S+$", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value


AlertRoute = Annotated[EmailRoute | WebhookRoute, Field(discriminator="type")]


class ProbeSettings(Section):
    """The synthetic user (docs/monitoring.md): a bot that uses the platform every few minutes."""

    enabled: bool = True
    interval_minutes: int = Field(default=5, ge=1, le=1440, description="Minutes between two runs.")


class MonitoringSection(Section):
    enabled: bool = True
    retention: Duration = Field(default=15 * 86400, description="How long Prometheus keeps samples.")
    alert_routes: list[AlertRoute] = Field(default_factory=list)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)


# ---------------------------------------------------------------- backup


class Retention(Section):
    daily: int = Field(default=7, ge=0)
    weekly: int = Field(default=4, ge=0)
    monthly: int = Field(default=6, ge=0)


class BackupSection(Section):
    enabled: bool = True
    schedule: str = Field(default="*-*-* 02:30:00", description="systemd OnCalendar expression.")
    target: str = Field(
        default="platform",
        description="'platform' (the platform's own object store) or an s3://bucket/prefix URL.",
    )
    retention: Retention = Field(default_factory=Retention)
    endpoint: str = Field(
        default="",
        description="The S3 endpoint of an s3:// target, https://host[:port] (empty: https://s3.amazonaws.com). "
        "Keep the target off the platform's hosts, so that backups survive losing them (docs/disaster-recovery.md).",
    )
    region: str = Field(
        default="",
        description="The signature region of an s3:// target's endpoint (empty: us-east-1).",
    )

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if value != "platform" and not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?$", value):
            raise ValueError(f"{value!r} must be 'platform' or an s3://bucket/prefix URL")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value and not re.match(r"^https://[A-Za-z0-9.-]+(:\d{1,5})?/?$", value):
            raise ValueError(
                f"{value!r} must be an https://host[:port] URL without a path, e.g. https://s3.example.org"
            )
        return value.rstrip("/")

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if value and not re.match(r"^[A-Za-z0-9_-]{1,64}$", value):
            raise ValueError(f"{value!r} is not an S3 region name such as us-east-1 or eu-central-1")
        return value

    @model_validator(mode="after")
    def _external_only(self) -> BackupSection:
        if self.target == "platform" and (self.endpoint or self.region):
            raise ValueError(
                "endpoint and region apply to an external target: set target to s3://bucket/prefix, "
                "or remove them (the platform target is the platform's own object store)"
            )
        return self


# ---------------------------------------------------------------- cloud


_AWS_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
# Host groups a cloud host may carry; compute nodes come from the auto-scaling pools,
# object storage and homes from S3 and EFS.
CLOUD_HOST_GROUPS = ("gateway", "hub", "directory", "db", "monitor", "slurm_controller")
EFS_IA_DAYS = (1, 7, 14, 30, 60, 90, 180, 270, 365)


def _instance_type(value: str) -> str:
    if not _INSTANCE_TYPE.match(value):
        raise ValueError(f"{value!r} is not an EC2 instance type such as t3.medium or c6i.xlarge")
    return value


class Tenant(Section):
    name: str = Field(description="Tenant name: becomes the `tenant` tag, its bucket name suffix and its budget.")
    cost_center: str = Field(default="", description="The `cost-center` tag of the tenant's resources.")
    budget_monthly_usd: float | None = Field(default=None, gt=0, description="Monthly AWS Budget for the tenant.")
    groups: list[str] = Field(
        default_factory=list,
        description="Platform groups (Slurm accounts, group directories, buckets and databases) whose use is "
        "charged to this tenant in the cost split.",
    )
    alert_emails: list[str] = Field(
        default_factory=list, description="Who the tenant's budget alerts go to (besides cloud.budgets.alert_emails)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SLUG.match(value):
            raise ValueError(f"{value!r} is not a valid tenant name; use lowercase letters, digits and hyphens")
        if value in ("shared", "platform"):
            raise ValueError(f"{value!r} is reserved for the platform's shared costs; choose another tenant name")
        return value

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"{name!r} is not a valid group name; use lowercase letters, digits, '_' and '-'")
        return value

    @field_validator("alert_emails")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        return [check_email(v) for v in value]


class CloudHost(Section):
    name: str = Field(description="Host name (Name tag and inventory name).")
    groups: list[str] = Field(description=f"Host groups it serves, among: {', '.join(CLOUD_HOST_GROUPS)}.")
    instance_type: str = Field(default="t3.medium", description="EC2 instance type.")
    volume_size: Size = Field(default="30GiB", description="Encrypted gp3 root volume.")  # type: ignore[assignment]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _HOST_NAME.match(value):
            raise ValueError(f"{value!r} is not a host name; use lowercase letters, digits and '-' (e.g. gw)")
        return value

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        for group in value:
            if group not in CLOUD_HOST_GROUPS:
                raise ValueError(
                    f"{group!r} cannot be a cloud host's group; use {', '.join(CLOUD_HOST_GROUPS)} "
                    "(compute nodes come from cloud.compute, storage from S3 and EFS)"
                )
        if not value:
            raise ValueError("a cloud host needs at least one group")
        return list(dict.fromkeys(value))

    @field_validator("instance_type")
    @classmethod
    def _type(cls, value: str) -> str:
        return _instance_type(value)


def _default_cloud_hosts() -> list[CloudHost]:
    return [
        CloudHost(name="gw", groups=["gateway"], instance_type="t3.small", volume_size=20 * 1024**3),
        CloudHost(name="hub", groups=["hub", "directory"], instance_type="t3.large", volume_size=50 * 1024**3),
        CloudHost(name="db", groups=["db"], instance_type="t3.medium", volume_size=100 * 1024**3),
        CloudHost(name="monitor", groups=["monitor"], instance_type="t3.small", volume_size=50 * 1024**3),
        CloudHost(name="ctl", groups=["slurm_controller"], instance_type="t3.small", volume_size=20 * 1024**3),
    ]


class SpotPool(Section):
    enabled: bool = Field(default=False, description="A second, spot-priced pool for batch partitions.")
    instance_types: list[str] = Field(
        default_factory=lambda: ["c6i.xlarge", "c5.xlarge", "m6i.xlarge"],
        min_length=1,
        description="Interchangeable types (more types, fewer interruptions).",
    )
    min_size: int = Field(default=0, ge=0)
    max_size: int = Field(default=4, ge=0, le=1000)
    partitions: list[str] = Field(default_factory=lambda: ["batch"], description="Slurm partitions it serves.")

    @field_validator("instance_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        return [_instance_type(v) for v in value]

    @model_validator(mode="after")
    def _sizes(self) -> SpotPool:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be at least min_size ({self.min_size})")
        return self


class CloudCompute(Section):
    instance_type: str = Field(default="c6i.xlarge", description="On-demand Slurm compute nodes.")
    min_size: int = Field(default=2, ge=0, le=1000)
    max_size: int = Field(default=2, ge=0, le=1000)
    volume_size: Size = Field(default="30GiB")  # type: ignore[assignment]
    spot: SpotPool = Field(default_factory=SpotPool)

    @field_validator("instance_type")
    @classmethod
    def _type(cls, value: str) -> str:
        return _instance_type(value)

    @model_validator(mode="after")
    def _sizes(self) -> CloudCompute:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be at least min_size ({self.min_size})")
        return self


class RdsSettings(Section):
    enabled: bool = Field(default=False, description="RDS PostgreSQL instead of PostgreSQL on the db host.")
    instance_class: str = Field(default="db.t4g.medium")
    allocated_storage: Size = Field(default="50GiB")  # type: ignore[assignment]
    multi_az: bool = False
    backup_retention_days: int = Field(default=7, ge=1, le=35)

    @field_validator("instance_class")
    @classmethod
    def _class(cls, value: str) -> str:
        if not value.startswith("db.") or not _INSTANCE_TYPE.match(value[3:]):
            raise ValueError(f"{value!r} is not an RDS instance class such as db.t4g.medium")
        return value


class HomesSettings(Section):
    throughput_mode: Literal["bursting", "elastic"] = "elastic"
    infrequent_access_after_days: int | None = Field(
        default=30, description=f"Move files unread this long to EFS Infrequent Access (one of {EFS_IA_DAYS})."
    )
    backup: bool = Field(default=True, description="AWS Backup of the file system (EFS backup policy).")

    @field_validator("infrequent_access_after_days")
    @classmethod
    def _ia(cls, value: int | None) -> int | None:
        if value is not None and value not in EFS_IA_DAYS:
            raise ValueError(f"{value} is not one EFS accepts; use one of {', '.join(map(str, EFS_IA_DAYS))}")
        return value


class BucketSettings(Section):
    noncurrent_expire_days: int = Field(default=30, ge=1, description="Old object versions are deleted after this.")
    infrequent_access_after_days: int | None = Field(
        default=None, ge=30, description="Move objects to STANDARD_IA after this many days (AWS minimum 30)."
    )
    abort_multipart_days: int = Field(default=7, ge=1)


class BudgetSettings(Section):
    platform_monthly_usd: float | None = Field(default=None, gt=0, description="Monthly budget of the whole platform.")
    alert_emails: list[str] = Field(default_factory=list, description="Recipients of every budget alert.")
    thresholds: list[float] = Field(
        default_factory=lambda: [50.0, 80.0, 100.0],
        min_length=1,
        description="Percentages of a budget at which actual spend alerts.",
    )
    forecast_threshold: float | None = Field(
        default=100.0, gt=0, description="Alert when the month's forecast passes this percentage."
    )

    @field_validator("alert_emails")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        return [check_email(v) for v in value]

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: list[float]) -> list[float]:
        for v in value:
            if not 0 < v <= 1000:
                raise ValueError(f"threshold {v} must be a percentage between 0 and 1000")
        return sorted(set(value))


class Rates(Section):
    """Prices for the on-prem cost report (use x rate)."""

    core_hour_usd: float = Field(default=0.0, ge=0, description="Price of one Slurm core-hour.")
    storage_gib_month_usd: float = Field(default=0.0, ge=0, description="Price of one GiB stored for a month.")
    mydb_gib_month_usd: float = Field(default=0.0, ge=0, description="Price of one GiB of MyDB for a month.")
    fixed_monthly_usd: float = Field(
        default=0.0, ge=0, description="Shared monthly cost (hardware, power, staff) split by measured use."
    )


class CloudSection(Section):
    provider: Literal["aws"] = "aws"
    region: str = "eu-west-1"
    vpc_cidr: str = Field(default="10.42.0.0/16", description="The VPC's address range (a /16 to /20).")
    admin_cidrs: list[str] = Field(default_factory=list, description="Where SSH (22) is allowed from.")
    ssh_public_key_file: str = Field(
        default="~/.ssh/id_ed25519.pub", description="Operator's SSH public key for the hosts (EC2 key pair)."
    )
    ami: str | None = Field(default=None, description="AMI id; default: the newest official Debian 12 image.")
    nat_gateway: bool = Field(
        default=False,
        description="Put the hosts in private subnets behind a NAT gateway (about 35 USD a month plus 0.045 USD "
        "per GB); without it hosts sit in public subnets with a public IPv4 address and closed security groups.",
    )
    cost_center: str = Field(default="", description="`cost-center` tag of shared resources.")
    hosts: list[CloudHost] = Field(default_factory=_default_cloud_hosts)
    compute: CloudCompute = Field(default_factory=CloudCompute)
    rds: RdsSettings = Field(default_factory=RdsSettings)
    homes: HomesSettings = Field(default_factory=HomesSettings)
    buckets: BucketSettings = Field(default_factory=BucketSettings)
    tenants: list[Tenant] = Field(default_factory=list)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    rates: Rates = Field(default_factory=Rates, description="On-prem cost report: use × these prices.")

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _AWS_REGION.match(value):
            raise ValueError(f"{value!r} is not an AWS region name such as eu-west-1 or us-east-2")
        return value

    @field_validator("vpc_cidr")
    @classmethod
    def _vpc(cls, value: str) -> str:
        try:
            net = ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv4 CIDR block such as 10.42.0.0/16 ({exc})") from None
        if not 16 <= net.prefixlen <= 20 or not net.is_private:
            raise ValueError(f"{value!r} must be a private range between /16 and /20, e.g. 10.42.0.0/16")
        return value

    @field_validator("admin_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                net = ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR block such as 192.0.2.0/24 ({exc})") from None
            if net.prefixlen == 0:
                raise ValueError(f"{cidr!r} opens SSH to the whole internet; list your admin networks instead")
        return value

    @field_validator("ami")
    @classmethod
    def _ami(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^ami-[0-9a-f]{8,17}$", value):
            raise ValueError(f"{value!r} is not an AMI id such as ami-0123456789abcdef0")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CloudSection:
        names = [t.name for t in self.tenants]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"tenant names must be unique; repeated: {', '.join(dup)}")
        owner: dict[str, str] = {}
        for tenant in self.tenants:
            for group in tenant.groups:
                if group in owner:
                    raise ValueError(
                        f"group {group!r} belongs to tenants {owner[group]!r} and {tenant.name!r}; "
                        "a group's use is charged to one tenant"
                    )
                owner[group] = tenant.name
        hosts = [h.name for h in self.hosts]
        if dup := sorted({n for n in hosts if hosts.count(n) > 1}):
            raise ValueError(f"cloud.hosts names must be unique; repeated: {', '.join(dup)}")
        served = {g for h in self.hosts for g in h.groups}
        if missing := [g for g in ("gateway", "hub", "directory", "db") if g not in served]:
            raise ValueError(f"no cloud host serves {', '.join(missing)}; add the group(s) to a host in cloud.hosts")
        return self


# ---------------------------------------------------------------- the whole spec


class PlatformSpec(Section):
    """Top level of platform.yaml."""

    platform: PlatformSection
    tls: TlsSection = Field(default_factory=TlsSection)
    identity: IdentitySection = Field(default_factory=IdentitySection)
    storage: StorageSection = Field(default_factory=StorageSection)
    databases: DatabasesSection = Field(default_factory=DatabasesSection)
    compute: ComputeSection = Field(default_factory=ComputeSection)
    monitoring: MonitoringSection = Field(default_factory=MonitoringSection)
    backup: BackupSection = Field(default_factory=BackupSection)
    cloud: CloudSection | None = Field(default=None, description="Only for `sciplat up --target aws`.")

    @property
    def public_url(self) -> str:
        return self.platform.public_url or f"https://{self.platform.domain}"

    def required_groups(self) -> dict[str, str]:
        """Host groups this spec needs, each with the reason (shown when one is empty)."""
        needed = {
            "gateway": "the TLS gateway (nginx) that every user request passes through",
            "db": "PostgreSQL for the hub, accounting and MyDB",
            "hub": "JupyterHub and the platform API",
            "directory": "the LDAP accounts directory",
        }
        if self.storage.backend in ("ceph", "minio"):
            needed["storage"] = f"the {self.storage.backend} object store (storage.backend)"
        if self.monitoring.enabled:
            needed["monitor"] = "Prometheus and Alertmanager (monitoring.enabled)"
        if self.compute.scheduler == "slurm":
            needed["slurm_controller"] = "slurmctld and slurmdbd (compute.scheduler: slurm)"
            needed["compute"] = "Slurm compute nodes (compute.scheduler: slurm)"
        return needed


# Groups that hold one host each: sciplat runs a single instance of these services.
SINGLETON_GROUPS = {
    "db": "sciplat runs one PostgreSQL primary",
    "directory": "sciplat runs one LDAP server",
    "slurm_controller": "sciplat runs one slurmctld",
    "monitor": "sciplat runs one Prometheus",
}
KNOWN_GROUPS = (
    "gateway",
    "hub",
    "directory",
    "db",
    "storage",
    "monitor",
    "slurm_controller",
    "compute",
)
