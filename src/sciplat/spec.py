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
    allowed_domains: list[str] = Field(default_factory=list)
    allowed_groups: list[str] = Field(default_factory=list)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError(f"{value!r} must be an https:// URL (the provider's issuer)")
        return value


class GithubAuth(Section):
    type: Literal["github"]
    client_id: str
    allowed_organizations: list[str] = Field(default_factory=list)


class AnonymousAuth(Section):
    type: Literal["anonymous"]
    cpus: float = Field(default=1, gt=0)
    memory: Size = Field(default="1GiB")  # type: ignore[assignment]
    lifetime: Duration = Field(default=3600, description="A tutorial user is removed after this long.")


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
    enabled: bool = True
    user_quota: Size = Field(default="10GiB")  # type: ignore[assignment]
    group_quota: Size = Field(default="50GiB")  # type: ignore[assignment]
    connection_limit: int = Field(default=10, ge=1, le=1000)
    statement_timeout: Duration = Field(default=3600)


class DatabasesSection(Section):
    postgresql_version: Literal[15] = Field(default=15, description="Debian 12's PostgreSQL.")
    max_connections: int = Field(default=200, ge=20, le=10000)
    mydb: MyDbSettings = Field(default_factory=MyDbSettings)


# ---------------------------------------------------------------- compute


class Partition(Section):
    name: str
    max_time: Duration = Field(default=86400)
    default: bool = False

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
        return self


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


class MonitoringSection(Section):
    enabled: bool = True
    retention: Duration = Field(default=15 * 86400, description="How long Prometheus keeps samples.")
    alert_routes: list[AlertRoute] = Field(default_factory=list)


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

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if value != "platform" and not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?$", value):
            raise ValueError(f"{value!r} must be 'platform' or an s3://bucket/prefix URL")
        return value


# ---------------------------------------------------------------- cloud


class Tenant(Section):
    name: str
    cost_center: str = ""
    budget_monthly_usd: float | None = Field(default=None, gt=0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SLUG.match(value):
            raise ValueError(f"{value!r} is not a valid tenant name; use lowercase letters, digits and hyphens")
        return value


class CloudSection(Section):
    provider: Literal["aws"] = "aws"
    region: str = "eu-west-1"
    admin_cidrs: list[str] = Field(default_factory=list, description="Where SSH (22) is allowed from.")
    tenants: list[Tenant] = Field(default_factory=list)
    platform_budget_monthly_usd: float | None = Field(default=None, gt=0)
    budget_alert_emails: list[str] = Field(default_factory=list)

    @field_validator("admin_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR block such as 192.0.2.0/24 ({exc})") from None
        return value

    @field_validator("budget_alert_emails")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        return [check_email(v) for v in value]


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
