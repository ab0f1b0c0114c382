"""Turn a validated PlatformSpec into the role variables Ansible reads.

The result is an inventory source, `<inventory>/.sciplat/inventory/spec.yml`, whose
`all.vars` hold role-prefixed variables. Passed to ansible-playbook after the
operator's hosts.yml, its values are defaults that the operator's own
group_vars/host_vars can still override.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sciplat import __version__
from sciplat.spec import PlatformSpec

STATE_DIR = ".sciplat"


def role_vars(spec: PlatformSpec, inventory_dir: Path) -> dict[str, Any]:
    platform, tls = spec.platform, spec.tls
    values: dict[str, Any] = {
        "sciplat_version": __version__,
        "sciplat_platform_name": platform.name,
        "sciplat_domain": platform.domain,
        "sciplat_public_url": spec.public_url,
        # pki
        "pki_mode": tls.mode,
        "pki_domain": platform.domain,
        "pki_cert_validity_days": tls.cert_validity // 86400,
        "pki_acme_server": tls.acme.server,
        "pki_acme_email": tls.acme.email or platform.admin_email or "",
        # gateway
        "gateway_server_name": platform.domain,
        "gateway_platform_name": platform.name,
        "gateway_platform_description": platform.description,
        # postgresql
        "postgresql_version": spec.databases.postgresql_version,
        "postgresql_max_connections": spec.databases.max_connections,
        # hub
        "hub_authenticators": [auth.model_dump() for auth in spec.identity.authenticators],
        "hub_admin_users": list(spec.identity.admin_users),
        "hub_profiles": [profile.model_dump() for profile in spec.compute.profiles],
        "hub_provision_settings": {
            "home_quota": spec.storage.home_quota,
            "s3_user_quota": spec.storage.user_quota,
            "group_dir_quota": spec.storage.group_quota,
        },
        # directory and ldap_client (identity.uid_range / gid_range)
        "directory_uid_range": spec.identity.uid_range.model_dump(),
        "directory_gid_range": spec.identity.gid_range.model_dump(),
        "ldap_client_min_id": min(spec.identity.uid_range.start, spec.identity.gid_range.start),
        "ldap_client_max_id": max(spec.identity.uid_range.end, spec.identity.gid_range.end),
        # monitoring
        "monitor_retention": f"{spec.monitoring.retention}s",
        "monitor_alert_routes": [route.model_dump() for route in spec.monitoring.alert_routes],
        "monitor_alert_email_from": f"alertmanager@{platform.domain}",
    }
    if tls.mode == "provided" and tls.provided is not None:
        provided = tls.provided
        values["pki_provided_cert_file"] = str((inventory_dir / provided.cert_file).resolve())
        values["pki_provided_key_file"] = str((inventory_dir / provided.key_file).resolve())
        values["pki_provided_chain_file"] = (
            str((inventory_dir / provided.chain_file).resolve()) if provided.chain_file else ""
        )
    return values


def write_inventory_source(spec: PlatformSpec, inventory_dir: Path) -> Path:
    """Write the rendered variables; return the directory to pass as a second -i."""
    target = inventory_dir / STATE_DIR / "inventory"
    target.mkdir(parents=True, exist_ok=True)
    body = {"all": {"vars": role_vars(spec, inventory_dir)}}
    text = "# Rendered by sciplat from platform.yaml on every run; edit platform.yaml instead.\n"
    text += yaml.safe_dump(body, sort_keys=True, default_flow_style=False)
    path = target / "spec.yml"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return target


def write_ca_cert(inventory_dir: Path, secrets: dict[str, Any]) -> Path | None:
    """Publish the platform CA certificate where operators and users can fetch it."""
    ca = secrets.get("pki_ca")
    if not isinstance(ca, dict) or "cert" not in ca:
        return None
    path = inventory_dir / "pki" / "ca.crt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != ca["cert"]:
        path.write_text(ca["cert"])
    return path
