"""Turn a validated PlatformSpec into the role variables Ansible reads.

The result is an inventory source, `<inventory>/.sciplat/inventory/spec.yml`, whose
`all.vars` hold role-prefixed variables. Passed to ansible-playbook after the
operator's hosts.yml, its values are defaults that the operator's own
group_vars/host_vars can still override.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from sciplat import __version__
from sciplat.spec import PlatformSpec

STATE_DIR = ".sciplat"


def _systemd_span(seconds: int) -> str:
    """A systemd time span a person reads easily: 5min rather than 300s."""
    return f"{seconds // 60}min" if seconds % 60 == 0 else f"{seconds}s"


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
        # monitoring (monitoring.enabled: false stops Prometheus, Alertmanager and every exporter)
        "monitor_enabled": spec.monitoring.enabled,
        "node_exporter_enabled": spec.monitoring.enabled,
        # directory and ldap_client (identity.uid_range / gid_range)
        "directory_uid_range": spec.identity.uid_range.model_dump(),
        "directory_gid_range": spec.identity.gid_range.model_dump(),
        "ldap_client_min_id": min(spec.identity.uid_range.start, spec.identity.gid_range.start),
        "ldap_client_max_id": max(spec.identity.uid_range.end, spec.identity.gid_range.end),
        # mydb
        "mydb_enabled": spec.databases.mydb.enabled,
        "mydb_user_quota": spec.databases.mydb.user_quota,
        "mydb_group_quota": spec.databases.mydb.group_quota,
        "mydb_connection_limit": spec.databases.mydb.connection_limit,
        "mydb_statement_timeout": spec.databases.mydb.statement_timeout,
        "mydb_warn_percent": spec.databases.mydb.warn_percent,
        "mydb_quota_interval": _systemd_span(spec.databases.mydb.check_interval),
        # hub
        "hub_authenticators": [auth.model_dump() for auth in spec.identity.authenticators],
        "hub_admin_users": list(spec.identity.admin_users),
        "hub_profiles": [profile.model_dump() for profile in spec.compute.profiles],
        "hub_provision_settings": {
            "home_quota": spec.storage.home_quota,
            "s3_user_quota": spec.storage.user_quota,
            "group_dir_quota": spec.storage.group_quota,
        },
        # monitoring
        "monitor_retention": f"{spec.monitoring.retention}s",
        "monitor_alert_routes": [route.model_dump() for route in spec.monitoring.alert_routes],
        "monitor_alert_email_from": f"alertmanager@{platform.domain}",
        # the synthetic user (off with monitoring: it reports through node_exporter)
        "probe_enabled": spec.monitoring.enabled and spec.monitoring.probe.enabled,
        "probe_interval_minutes": spec.monitoring.probe.interval_minutes,
        # backups (roles/backup)
        "backup_enabled": spec.backup.enabled,
        "backup_schedule": spec.backup.schedule,
        "backup_target": spec.backup.target,
        "backup_retention": spec.backup.retention.model_dump(),
    }
    # an external target's endpoint and region; unset: the role's defaults (AWS)
    if spec.backup.endpoint:
        values["backup_s3_endpoint"] = spec.backup.endpoint
    if spec.backup.region:
        values["backup_s3_region"] = spec.backup.region
    values.update(storage_vars(spec))
    values.update(_slurm_vars(spec))
    values.update(notebook_vars(spec))
    if tls.mode == "provided" and tls.provided is not None:
        provided = tls.provided
        values["pki_provided_cert_file"] = str((inventory_dir / provided.cert_file).resolve())
        values["pki_provided_key_file"] = str((inventory_dir / provided.key_file).resolve())
        values["pki_provided_chain_file"] = (
            str((inventory_dir / provided.chain_file).resolve()) if provided.chain_file else ""
        )
    return values


def s3_public_endpoint(spec: PlatformSpec) -> str:
    """https://s3.<domain>, on the port of the public URL when it has one (a test bed)."""
    port = urlsplit(spec.public_url).port
    return f"https://s3.{spec.platform.domain}" + (f":{port}" if port and port != 443 else "")


def storage_vars(spec: PlatformSpec) -> dict[str, Any]:
    """The storage section: backend choice for every role, Ceph's settings for the ceph role."""
    storage = spec.storage
    return {
        "sciplat_storage_backend": storage.backend,
        "sciplat_storage_posix": storage.posix,
        "ceph_redundancy": storage.redundancy,
        "ceph_osd_devices": list(storage.osd_devices),
        "ceph_rgw_public_endpoint": s3_public_endpoint(spec),
        "ceph_user_quota": int(storage.user_quota),
        "ceph_group_quota": int(storage.group_quota),
        "ceph_home_quota": int(storage.home_quota),
    }


def _slurm_vars(spec: PlatformSpec) -> dict[str, Any]:
    """compute: partitions and default limits for the slurm_controller role."""
    compute = spec.compute
    limits = compute.default_limits
    return {
        # Slurm names accounting tables after the cluster: letters, digits, '_'
        "slurm_controller_cluster_name": spec.platform.name.replace("-", "_")[:40],
        "slurm_controller_partitions": [
            {"name": p.name, "max_time": int(p.max_time), "default": p.default}
            | ({"oversubscribe": p.oversubscribe} if p.oversubscribe > 1 else {})
            for p in compute.partitions
        ],
        "slurm_controller_default_limits": {
            "cpus": limits.cpus,
            "memory_mb": int(limits.memory) // 1024**2,
            "max_jobs": limits.max_jobs,
            "max_wall_minutes": (int(limits.max_wall) + 59) // 60,
        },
    }


# compute.notebooks: auto decides when Ansible knows the inventory's groups.
AUTO_SPAWNER = "{{ 'slurm' if groups['compute'] | default([]) | length > 0 else 'systemd' }}"


def notebook_vars(spec: PlatformSpec) -> dict[str, Any]:
    """compute.notebooks: where the hub starts users' servers (hub_spawner) and their Slurm jobs' partition."""
    compute = spec.compute
    if compute.notebooks == "hub" or compute.scheduler != "slurm":
        spawner = "systemd"
    elif compute.notebooks == "compute":
        spawner = "slurm"
    else:
        spawner = AUTO_SPAWNER
    values: dict[str, Any] = {"hub_spawner": spawner}
    partition = compute.notebook_partition()
    if partition is not None:
        values["hub_slurm_partition"] = partition.name
        values["hub_slurm_time_limit"] = int(partition.max_time)
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
