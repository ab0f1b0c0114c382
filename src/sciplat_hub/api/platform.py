"""What the API reads from the platform's components for one user.

Each component is used only where its ``/etc/sciplat/<component>/client.json``
exists on this host (as in `sciplat_hub.provision`); an absent component gives
``null`` in the answers. The modules are the same ones account provisioning
uses: `sciplat_hub.posix` (home quota and usage), `sciplat_hub.storage` (S3
keys, bucket quota and usage), `sciplat_hub.mydb` (credentials, size and quota),
`sciplat_hub.slurm_accounts` (allocations, core-hours used).
"""

from __future__ import annotations

import json
import logging
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("sciplat_hub.api.platform")

CONFIG_ROOT = Path("/etc/sciplat")


class PlatformError(Exception):
    """A component failed; ``status`` is the HTTP status (503 unless said)."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.status = status


def _deployed(component: str) -> bool:
    return (CONFIG_ROOT / component / "client.json").is_file()


def _provision_settings() -> dict[str, Any]:
    path = CONFIG_ROOT / "hub" / "provision.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Platform:
    """The real components of this host. Tests replace it with a fake of the same methods."""

    def __init__(self, deployed: Callable[[str], bool] = _deployed) -> None:
        self._deployed = deployed

    # ------------------------------------------------------------ me

    def home_usage(self, user: str) -> tuple[int | None, int | None]:
        """(bytes used, quota bytes) of the user's home; (None, None) without the shared filesystem."""
        if not self._deployed("posix"):
            return None, None
        from sciplat_hub import posix

        p = posix.Posix.from_host_config()
        try:
            home = pwd.getpwnam(user).pw_dir
        except KeyError:
            home = str(p.home_root / user)
        if not Path(home).is_dir():
            return None, p.home_quota_bytes
        used, quota = p.usage(home)
        return used, quota

    def bucket_usage(self, user: str) -> tuple[int | None, int | None]:
        if not self._deployed("storage"):
            return None, None
        from sciplat_hub.storage import config

        usage = config.from_host_config().usage(user)
        return usage.bytes_used, usage.quota_bytes

    def mydb_usage(self, user: str) -> tuple[int | None, int | None]:
        if not self._deployed("mydb"):
            return None, None
        from sciplat_hub import mydb

        try:
            status = mydb.MyDB.from_host_config().quota_status(user)
        except mydb.MyDBError:  # no database yet
            return None, None
        return int(status["size_bytes"]), int(status["quota_bytes"])

    def core_hours(self, user: str) -> float | None:
        if not self._deployed("slurm"):
            return None
        return round(sum(float(a["core_hours_mine"]) for a in self.allocations(user)), 3)

    # ------------------------------------------------------------ credentials

    def s3_credentials(self, user: str) -> dict[str, Any] | None:
        if not self._deployed("storage"):
            return None
        from sciplat_hub.storage import base, config

        store = config.from_host_config()
        # idempotent, the same call as provisioning at every sign-in: the keys are stable
        credentials = store.ensure_user(user, _provision_settings().get("s3_user_quota"))
        return {
            "endpoint": credentials.endpoint,
            "access_key": credentials.access_key,
            "secret_key": credentials.secret_key,
            "region": credentials.region,
            "bucket": base.home_bucket(user),
        }

    def mydb_credentials(self, user: str) -> dict[str, Any] | None:
        if not self._deployed("mydb"):
            return None
        from sciplat_hub import mydb

        try:
            pg = mydb.MyDB.from_host_config().get_credentials(user)
        except mydb.MyDBError as exc:
            raise PlatformError(str(exc), status=409) from None
        return {
            "host": pg.host,
            "port": pg.port,
            "dbname": pg.database,
            "user": pg.user,
            "password": pg.password,
            "sslmode": "verify-full",
        }

    # ------------------------------------------------------------ allocations

    def allocations(self, user: str) -> list[dict[str, Any]]:
        """The Slurm accounts the user has an association in, with their awarded and used core-hours."""
        if not self._deployed("slurm"):
            return []
        from sciplat_hub import slurm_accounts

        out = []
        for allocation in slurm_accounts.SlurmAccounts.from_host_config().allocations():
            if user not in allocation.users:
                continue
            out.append(
                {
                    "account": allocation.account,
                    "core_hours_awarded": allocation.awarded_core_hours,
                    "core_hours_used": round(allocation.used_core_hours, 3),
                    "core_hours_remaining": allocation.remaining_core_hours,
                    "core_hours_mine": round(allocation.users[user], 3),
                    "until": allocation.until,
                }
            )
        return out
