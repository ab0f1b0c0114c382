"""The tutorial reaper: a hub service that deletes throw-away tutorial users.

Run by JupyterHub as a managed service (it passes JUPYTERHUB_API_URL and
JUPYTERHUB_API_TOKEN). Every minute it deletes each ``tutorial-*`` user created
more than ``--lifetime`` seconds ago; the hub stops their servers first. Their
system accounts and state directories go with them, so nothing is left behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

# user names of the anonymous method (sciplat_hub.hub_auth) and their servers' state
TUTORIAL_PREFIX = "tutorial-"
TUTORIAL_STATE = "/var/lib/sciplat-tutorial"

log = logging.getLogger("sciplat_hub.hub_tutorial")


def _api(method: str, path: str) -> Any:
    url = os.environ["JUPYTERHUB_API_URL"].rstrip("/") + path
    request = urllib.request.Request(url, method=method)
    request.add_header("Authorization", f"token {os.environ['JUPYTERHUB_API_TOKEN']}")
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body else None


def expired(users: list[dict[str, Any]], lifetime: int, now: datetime) -> list[str]:
    names = []
    for user in users:
        name = str(user.get("name", ""))
        created = user.get("created")
        if not name.startswith(TUTORIAL_PREFIX) or not created:
            continue
        when = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if (now - when).total_seconds() >= lifetime:
            names.append(name)
    return names


def remove_account(name: str) -> None:
    """The tutorial user's system account and state directory (sciplat_hub.hub_spawner)."""
    if not name.startswith(TUTORIAL_PREFIX) or "/" in name:
        return
    subprocess.run(["userdel", name], capture_output=True, check=False)
    shutil.rmtree(f"{TUTORIAL_STATE}/{name}", ignore_errors=True)
    shutil.rmtree(f"/var/lib/private/{TUTORIAL_STATE.rsplit('/', 1)[1]}/{name}", ignore_errors=True)


def reap_once(lifetime: int) -> list[str]:
    users = _api("GET", "/users?state=&limit=1000") or []
    if isinstance(users, dict):  # paginated form
        users = users.get("items", [])
    removed = []
    for name in expired(users, lifetime, datetime.now(UTC)):
        try:
            for server in list((next(u for u in users if u["name"] == name).get("servers") or {}).keys()):
                _api("DELETE", f"/users/{name}/servers/{server}" if server else f"/users/{name}/server")
            _api("DELETE", f"/users/{name}")
            remove_account(name)
            removed.append(name)
            log.info("removed tutorial user %s", name)
        except Exception:
            log.exception("could not remove tutorial user %s (tried again next round)", name)
    return removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lifetime", type=int, default=3600)
    parser.add_argument("--every", type=int, default=60)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    while True:
        try:
            reap_once(args.lifetime)
        except Exception:
            log.exception("reaper round failed")
        time.sleep(args.every)


if __name__ == "__main__":
    main()
