"""Platform secrets: declared per role, generated once, kept in an ansible-vault file.

Roles declare what they need in `roles/<role>/meta/secrets.yml` (components that
are not a role yet in `playbooks/secrets/<component>.yml`):

    secrets:
      postgresql_example_password: {kind: password, length: 32, description: ...}
      minio_root_password: {kind: password, needed_when: {storage.backend: minio}}

`needed_when` maps dotted platform.yaml fields to the value that makes the secret
necessary; a secret whose condition does not hold is not generated (an existing
one is kept, so switching back later finds the same value).

`rotation` (optional) says that the secret may be replaced by
`sciplat secrets rotate NAME`, and which site.yml tags push a new value to
every host that uses it (`rotation: {tags: [slurm]}`). A secret without it is
never rotated by sciplat: its consumers cannot take a new value safely by a
plain re-run (a database password that other services hold, the platform CA).

`ensure()` adds every declared secret that is missing from
`<inventory>/secrets.vault.yml` and never touches one that exists, so passwords,
keys and the CA survive every later run. The vault password comes from
SCIPLAT_VAULT_PASSWORD, or the file named by SCIPLAT_VAULT_PASSWORD_FILE, or a
per-platform file under ~/.config/sciplat/vault/ created on first run (0600).
"""

from __future__ import annotations

import datetime as dt
import os
import secrets as pysecrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

VAULT_FILE = "secrets.vault.yml"


class SecretError(Exception):
    """A problem the operator must fix (no password, a broken declaration, a vault that won't open)."""


class Rotation(BaseModel):
    """How a new value of a secret reaches the hosts: `sciplat up --tags <tags>`."""

    model_config = ConfigDict(extra="forbid")

    tags: list[str] = Field(min_length=1)
    # what users notice while the new value is rolled out (printed by `secrets rotate`)
    notice: str = ""


class SecretDecl(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["password", "hex", "x509_ca"]
    length: int = Field(default=32, ge=16, le=256)
    description: str = ""
    # dotted platform.yaml field -> the value that makes this secret necessary
    needed_when: dict[str, str] = Field(default_factory=dict)
    # set when `sciplat secrets rotate` may replace it (see the module's docstring)
    rotation: Rotation | None = None

    @model_validator(mode="after")
    def _ca_is_never_rotated(self) -> SecretDecl:
        if self.kind == "x509_ca" and self.rotation is not None:
            raise ValueError(
                "an x509_ca secret cannot declare rotation: every certificate the platform issued "
                "chains to it; remove `rotation:`"
            )
        return self

    def needed(self, settings: dict[str, Any] | None) -> bool:
        """Whether the platform's settings (a dumped PlatformSpec) need this secret; None: assume so."""
        if settings is None:
            return True
        return all(str(_dotted(settings, path)) == value for path, value in self.needed_when.items())


def _dotted(settings: dict[str, Any], path: str) -> Any:
    value: Any = settings
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise SecretError(f"needed_when names {path!r}, which is not a platform.yaml field")
        value = value[part]
    return value


class SecretsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secrets: dict[str, SecretDecl]


@dataclass(frozen=True)
class Declared:
    name: str
    decl: SecretDecl
    source: Path


def declarations(repo: Path) -> dict[str, Declared]:
    """Every secret declared by the roles and components in the repository."""
    found: dict[str, Declared] = {}
    files = sorted(repo.glob("roles/*/meta/secrets.yml")) + sorted(repo.glob("playbooks/secrets/*.yml"))
    for path in files:
        try:
            parsed = SecretsFile.model_validate(yaml.safe_load(path.read_text()) or {"secrets": {}})
        except (ValidationError, yaml.YAMLError) as exc:
            raise SecretError(f"{path.relative_to(repo)}: invalid secret declaration: {exc}") from None
        for name, decl in parsed.secrets.items():
            if name in found:
                raise SecretError(
                    f"secret {name!r} is declared twice: {found[name].source.relative_to(repo)} "
                    f"and {path.relative_to(repo)}; keep one owner"
                )
            found[name] = Declared(name, decl, path)
    return found


# ------------------------------------------------------------------ generation


def generate(decl: SecretDecl, *, platform_name: str, ca_validity_days: int) -> Any:
    if decl.kind == "password":
        # letters and digits only: safe in every config syntax (pg_hba, LDAP, URLs, shell)
        alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        return "".join(pysecrets.choice(alphabet) for _ in range(decl.length))
    if decl.kind == "hex":
        return pysecrets.token_hex(decl.length)
    return make_ca(platform_name, ca_validity_days)


def make_ca(platform_name: str, validity_days: int) -> dict[str, str]:
    """A self-signed CA for the platform's internal TLS, as PEM strings."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sciplat"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{platform_name} platform CA"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA384())
    )
    return {
        "cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    }


# ------------------------------------------------------------------ the vault


def password_source(platform_name: str) -> tuple[str, str]:
    """(password, where it came from). Creates the default password file on first use."""
    if env := os.environ.get("SCIPLAT_VAULT_PASSWORD"):
        return env, "$SCIPLAT_VAULT_PASSWORD"
    if env_file := os.environ.get("SCIPLAT_VAULT_PASSWORD_FILE"):
        path = Path(env_file).expanduser()
        if not path.is_file():
            raise SecretError(f"SCIPLAT_VAULT_PASSWORD_FILE points at {path}, which does not exist")
        return path.read_text().strip(), str(path)
    path = default_password_file(platform_name)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(pysecrets.token_urlsafe(32) + "\n")
    return path.read_text().strip(), str(path)


def default_password_file(platform_name: str) -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "sciplat" / "vault" / f"{platform_name}.pass"


def _vault(password: str) -> Any:
    from ansible.constants import DEFAULT_VAULT_ID_MATCH
    from ansible.parsing.vault import VaultLib, VaultSecret

    return VaultLib([(DEFAULT_VAULT_ID_MATCH, VaultSecret(password.encode()))])


def read_vault(path: Path, password: str) -> dict[str, Any]:
    if not path.exists():
        return {}
    from ansible.errors import AnsibleError

    try:
        plain = _vault(password).decrypt(path.read_bytes())
    except AnsibleError:
        raise SecretError(
            f"cannot decrypt {path}: the vault password does not match. Set SCIPLAT_VAULT_PASSWORD "
            "or SCIPLAT_VAULT_PASSWORD_FILE to the password this vault was created with"
        ) from None
    data = yaml.safe_load(plain) or {}
    if not isinstance(data, dict):
        raise SecretError(f"{path} does not hold a mapping of secrets")
    return data


def write_vault(path: Path, password: str, data: dict[str, Any]) -> None:
    header = "# sciplat secrets, generated once. Read with `sciplat secrets show KEY`; never edit by hand.\n"
    plain = header + yaml.safe_dump(data, sort_keys=True, default_flow_style=False)
    token = _vault(password).encrypt(plain)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(token)
    tmp.replace(path)  # atomic: a crash never leaves half a vault


def ensure(
    inventory_dir: Path,
    repo: Path,
    *,
    platform_name: str,
    ca_validity_days: int,
    settings: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Return (all secrets, names generated now). Existing secrets are never changed.

    `settings` (the platform spec as a dict) skips secrets whose `needed_when` does not hold.
    """
    password, _ = password_source(platform_name)
    path = inventory_dir / VAULT_FILE
    current = read_vault(path, password)
    created = []
    for name, declared in declarations(repo).items():
        if name not in current and declared.decl.needed(settings):
            current[name] = generate(declared.decl, platform_name=platform_name, ca_validity_days=ca_validity_days)
            created.append(name)
    if created or not path.exists():
        write_vault(path, password, current)
    return current, created


@dataclass(frozen=True)
class Rotated:
    name: str
    tags: tuple[str, ...]
    notice: str
    vault: Path


def rotatable(repo: Path, name: str) -> tuple[SecretDecl, Rotation]:
    """The declaration of a secret `sciplat secrets rotate` may replace; SecretError for any other name."""
    declared = declarations(repo)
    if name not in declared:
        raise SecretError(
            f"no secret named {name!r} is declared (roles/*/meta/secrets.yml); "
            "`sciplat secrets list -i INVENTORY` shows the names"
        )
    decl, source = declared[name].decl, declared[name].source.relative_to(repo)
    if decl.rotation is None:
        raise SecretError(
            f"{name} cannot be rotated by sciplat: its declaration ({source}) has no `rotation:`, "
            "so no re-run is known to hand a new value to everything that uses it safely"
        )
    return decl, decl.rotation


def rotate(inventory_dir: Path, repo: Path, name: str, *, platform_name: str, ca_validity_days: int) -> Rotated:
    """Replace one existing secret in the vault with a fresh value of its declared kind.

    Only secrets whose declaration has `rotation:` are rotated; every other entry of
    the vault keeps its value. The hosts get the new value from `sciplat up --tags`
    with the declared tags (returned in `Rotated.tags`).
    """
    decl, rotation = rotatable(repo, name)
    password, _ = password_source(platform_name)
    path = inventory_dir / VAULT_FILE
    current = read_vault(path, password)
    if name not in current:
        raise SecretError(f"{name} has not been generated yet ({path}); `sciplat up` generates it, nothing to rotate")
    old = current[name]
    new = old
    while new == old:  # a fresh value, never the old one
        new = generate(decl, platform_name=platform_name, ca_validity_days=ca_validity_days)
    write_vault(path, password, current | {name: new})
    return Rotated(name, tuple(rotation.tags), rotation.notice, path)
