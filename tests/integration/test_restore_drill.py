"""The restore drill (issue 10): lose the whole test bed, rebuild it, restore, and everything is back.

1. An off-site S3 target starts on this machine, outside the bed (offsite_s3.py:
   SeaweedFS, TLS from the platform CA, the vault's backup keys), and the platform's
   backups are switched to it the way an operator would: `backup.target`,
   `backup.endpoint` and `backup.region` in platform.yaml, and the bed-only settings
   (the endpoint's name pinned to the bed network's .1, the platform CA as the
   endpoint's CA) appended to `group_vars/all.yml`. `sciplat up --tags backup`.
2. Two users sign up, are approved, sign in and are provisioned (as the hub does);
   each gets random bytes in their home, an object in their home bucket and rows
   in their MyDB database; a collaboration (sciplat-groups) holds both, with a file
   in its directory. Their sha256 (rows: an md5 of the table) are recorded.
3. `sciplat backup --now`; the repositories are in the off-site bucket.
4. The bed is destroyed and rebuilt: `sciplat testbed up --recreate` (every host
   new, nothing kept but the inventory directory: platform.yaml, the vault, pki/),
   then a cold `sciplat up`.
5. `sciplat restore --what all`: the latest backup of every kind, PostgreSQL to the end
   of its WAL archive.
6. Every item is back and identical, the users are in the group, and both sign in
   with their password; one starts a server that sees their home file.

The RTO (rebuild, restore, until both users have signed in) is printed and kept in
`<inventory>/logs/restore-drill.json`. The settings files are put back at the end.

It destroys the bed, so it has its own marker (`rebuild`) and runs after every other
test (tests/integration/conftest.py). On a developer's own bed:

    SCIPLAT_TEST_INVENTORY=inventories/dev-drill SCIPLAT_DEPLOYED=1 \\
        .venv/bin/pytest tests/integration/test_restore_drill.py -x -s
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import shlex
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration import offsite_s3
from tests.integration.conftest import INVENTORY, PLATFORM_NAME, sciplat
from tests.integration.test_collab import groups_cmd, provisioned
from tests.integration.test_hub import _session, api, login, run_code, start_server, users_json
from tests.integration.test_mydb import User
from tests.integration.test_storage import endpoint, s3  # noqa: F401  (endpoint: a fixture)

pytestmark = pytest.mark.rebuild

GW, DATA = "gw", "data"
BUCKET = "sciplat-offsite"
# Not a group_vars/all/ directory beside all.yml: Ansible then reads only the directory
# (the bed's all.yml, with the OIDC client secret the hub's preflight needs, was ignored).
SETTINGS_FILE = INVENTORY / "group_vars" / "all.yml"
RECORD = INVENTORY / "logs" / "restore-drill.json"
KiB = 1024


@pytest.fixture(scope="module")
def offsite(deployed: dict[str, Any]) -> Iterator[offsite_s3.OffsiteS3]:
    """The off-site target, running, with the platform's backups switched to it; all put back afterwards."""
    target = offsite_s3.start(INVENTORY, bucket=BUCKET)
    spec_file = INVENTORY / "platform.yaml"
    original_spec = spec_file.read_text()
    original_settings = SETTINGS_FILE.read_text() if SETTINGS_FILE.is_file() else None
    try:
        spec = yaml.safe_load(original_spec)
        spec["backup"] = {
            **(spec.get("backup") or {}),
            "target": f"s3://{BUCKET}/{PLATFORM_NAME}",
            "endpoint": target.endpoint,
            "region": target.region,
        }
        spec_file.write_text(
            "# written by tests/integration/test_restore_drill.py for the drill; put back afterwards\n"
            + yaml.safe_dump(spec, sort_keys=False)
        )
        SETTINGS_FILE.parent.mkdir(exist_ok=True)
        # the bed's own one-line values of these two keys give way to the drill's
        kept = [
            line
            for line in (original_settings or "---\n").splitlines(keepends=True)
            if not line.startswith(("backup_s3_address:", "backup_s3_ca_file:"))
        ]
        SETTINGS_FILE.write_text(
            "".join(kept) + "\n# The restore drill's off-site S3 (tests/integration/offsite_s3.py) listens on the bed\n"
            "# network's host side; its certificate is signed by the platform CA. Removed after the drill.\n"
            + yaml.safe_dump({"backup_s3_address": target.address, "backup_s3_ca_file": "/etc/sciplat/pki/ca.crt"})
        )
        deploy = json.loads(sciplat("up", "-i", str(INVENTORY), "--tags", "backup", "--json", timeout=1200).stdout)
        assert deploy["ok"], deploy["failures"]
        yield target
    finally:
        spec_file.write_text(original_spec)
        if original_settings is None:
            SETTINGS_FILE.unlink(missing_ok=True)
        else:
            SETTINGS_FILE.write_text(original_settings)
        # the hosts keep pointing at the stopped target until the next `sciplat up --tags backup`
        # (the drill is the last test: nothing after it backs up)
        target.stop()


def sha256(host: Any, path: str) -> str:
    return str(host.check_output(f"sha256sum {shlex.quote(path)}").split()[0])


DIGEST = "SELECT count(*) || ':' || md5(string_agg(id || '=' || payload, ',' ORDER BY id)) FROM drill"


def sign_in(name: str, ca_cert: Path) -> int:
    """The status of a password sign-in through the gateway (302: signed in)."""
    return login(_session(ca_cert), name).status_code


def bed_hosts() -> list[str]:
    children = yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]["children"]
    return sorted({host for group in children.values() for host in (group or {}).get("hosts") or {}})


def test_the_platform_comes_back_from_offsite_backups_onto_a_rebuilt_bed(
    offsite: offsite_s3.OffsiteS3,
    host_of: Callable[[str], Any],
    ca_cert: Path,
    endpoint: str,  # noqa: F811
) -> None:
    gw = host_of(GW)
    group = f"drill-{secrets.token_hex(3)}"
    users: list[User] = []
    creds: dict[str, dict[str, str]] = {}
    for _ in range(2):
        user, keys = provisioned(gw, ca_cert)
        users.append(user)
        creds[user.name] = keys
    a, b = users

    # ------------------------------------------------------------------ data, and what it must look like
    expected: dict[str, str] = {}
    for user in users:
        path = f"/home/{user.name}/drill.bin"
        gw.check_output(f"head -c {512 * KiB} /dev/urandom > {path} && chown {user.name}: {path} && chmod 0600 {path}")
        expected[path] = sha256(gw, path)
        body = secrets.token_bytes(384 * KiB)
        s3(creds, user.name, str(ca_cert)).put_object(Bucket=f"home-{user.name}", Key="drill/data.bin", Body=body)
        expected[f"s3://home-{user.name}/drill/data.bin"] = hashlib.sha256(body).hexdigest()
        user.ok(
            "CREATE TABLE drill (id int PRIMARY KEY, payload text); "
            "INSERT INTO drill SELECT g, md5(random()::text) FROM generate_series(1, 500) g"
        )
        expected[f"mydb u_{user.name}"] = user.ok(DIGEST)
    groups_cmd(gw, "--as", a.name, "create", group, "--description", "restore drill")
    assert groups_cmd(gw, "--as", a.name, "add", group, b.name)["members"] == sorted([a.name, b.name])
    shared = f"/groups/{group}/shared.bin"
    assert a.run(f"head -c {256 * KiB} /dev/urandom > {shared}").rc == 0
    expected[shared] = sha256(gw, shared)
    uids = {user.name: gw.check_output(f"id -u {user.name}").strip() for user in users}

    token = json.loads(sciplat("token", a.name, "-i", str(INVENTORY), "--json").stdout)["token"]

    # ------------------------------------------------------------------ back up, off the bed
    backup = json.loads(sciplat("backup", "-i", str(INVENTORY), "--now", "--json", timeout=1800).stdout)
    assert backup["ok"], backup
    stored = offsite.objects(f"{PLATFORM_NAME}/")
    for repository in ("pgbackrest/", "restic/homes/", "restic/directory/", "restic/buckets/"):
        assert any(key.startswith(f"{PLATFORM_NAME}/{repository}") for key in stored), (repository, stored[:20])

    # ------------------------------------------------------------------ lose the bed, build a new one
    lost = time.monotonic()
    sciplat("testbed", "up", "-i", str(INVENTORY), "--recreate", timeout=900)
    hosts_made = time.monotonic()
    assert gw.run(f"test -e /home/{a.name}").rc != 0, "the rebuilt hosts still have the old homes"
    deploy = json.loads(sciplat("up", "-i", str(INVENTORY), "--json", timeout=3600).stdout)
    assert deploy["ok"], deploy["failures"]
    deployed_at = time.monotonic()
    assert a.name not in {u["name"] for u in users_json()}, "the new platform knows the users before the restore"

    # ------------------------------------------------------------------ restore everything
    restored = json.loads(
        sciplat(
            "restore",
            "-i",
            str(INVENTORY),
            "--what",
            "all",
            "--yes",
            "--json",
            timeout=3600,
        ).stdout
    )
    assert restored["ok"], restored
    restored_at = time.monotonic()
    codes = {user.name: sign_in(user.name, ca_cert) for user in users}
    signed_in = time.monotonic()

    # ------------------------------------------------------------------ every item back and identical
    rto = {
        "hosts_seconds": round(hosts_made - lost, 1),
        "deploy_seconds": round(deployed_at - hosts_made, 1),
        "restore_seconds": round(restored_at - deployed_at, 1),
        "total_until_sign_in_seconds": round(signed_in - lost, 1),
        "hosts": bed_hosts(),
        "restored": restored.get("restored"),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps(rto, indent=2, default=str) + "\n")
    print(f"\nrestore drill RTO: {json.dumps({k: v for k, v in rto.items() if k.endswith('seconds')})}")

    assert codes == {user.name: 302 for user in users}, f"sign-in after the restore: {codes}"
    found: dict[str, str] = {}
    for user in users:
        path = f"/home/{user.name}/drill.bin"
        found[path] = sha256(gw, path) if gw.file(path).exists else "missing"
        assert gw.check_output(f"id -u {user.name}").strip() == uids[user.name]
        assert gw.file(path).user == user.name and gw.file(path).mode == 0o600
        key = f"s3://home-{user.name}/drill/data.bin"
        try:  # with the keys the user had before: the restore keeps them
            got = s3(creds, user.name, str(ca_cert)).get_object(Bucket=f"home-{user.name}", Key="drill/data.bin")
            found[key] = hashlib.sha256(got["Body"].read()).hexdigest()
        except Exception as exc:
            found[key] = f"unreadable: {exc}"
        done = user.sql(DIGEST)
        found[f"mydb u_{user.name}"] = done.stdout.strip() if done.rc == 0 else f"error: {done.stderr.strip()}"
    found[shared] = sha256(gw, shared) if gw.file(shared).exists else "missing"
    assert found == expected
    members = groups_cmd(gw, "show", group)["members"]
    assert members == sorted([a.name, b.name])
    assert set(gw.check_output(f"getent group {group}").strip().split(":")[3].split(",")) == {a.name, b.name}

    # the API token from before the loss is valid (the hub's database came back), and
    # a server starts on the rebuilt platform and sees the restored home
    assert api(token, "GET", "/hub/api/user", ca_cert).json()["name"] == a.name
    try:
        start_server(token, a.name, ca_cert, timeout=180)
        out = run_code(
            token,
            a.name,
            "import hashlib, pathlib; print(hashlib.sha256(pathlib.Path('drill.bin').read_bytes()).hexdigest())",
            ca_cert,
        )
        assert out.strip() == expected[f"/home/{a.name}/drill.bin"]
    finally:
        api(token, "DELETE", f"/hub/api/users/{a.name}/server", ca_cert)
