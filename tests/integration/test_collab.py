"""Collaborations on the test bed: issue 9's story through the real components.

Two users sign up, are approved and sign in (test_hub.new_approved_user), and get
what the hub's provisioning gives them at their first server start (run here as the
hub runs it, `python -m sciplat_hub.provision` as root on gw). A creates a
collaboration and adds B with `sciplat-groups` (sciplat_hub.collab, as root on gw,
acting as A); then B, as B on gw, writes in the group directory on CephFS, puts and
gets objects in the group bucket with B's own S3 keys (through the gateway), reads a
table A made in the group database (psql with B's ~/.pgpass), and submits a job
charged to the group's Slurm account. After A removes B, every one of those is
refused while A still works; deleting keeps the data, purging removes it.
"""

from __future__ import annotations

import json
import secrets
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import wait_for
from tests.integration.test_hub import new_approved_user
from tests.integration.test_mydb import User
from tests.integration.test_storage import endpoint, error_code, s3  # noqa: F401  (endpoint: a fixture)

PY = "/opt/sciplat/venv/bin/python"
GROUP = f"collab-{secrets.token_hex(3)}"


def groups_cmd(gw: Any, *args: str, ok: bool | None = True) -> Any:
    """`sciplat-groups ARGS --json` as root on gw: its JSON answer (an error's too); ok=None: either."""
    done = gw.run(" ".join(shlex.quote(a) for a in ("sciplat-groups", *args, "--json")))
    if ok:
        assert done.rc == 0, f"sciplat-groups {' '.join(args)}: {done.stdout} {done.stderr}"
    elif ok is not None:
        assert done.rc != 0, f"sciplat-groups {' '.join(args)} should have been refused: {done.stdout}"
    return json.loads(done.stdout)


def provisioned(gw: Any, ca_cert: Path) -> tuple[User, dict[str, str]]:
    """A new signed-in user, provisioned as the hub does before their first server: (user on gw, S3 keys)."""
    name = new_approved_user("cb", ca_cert)["name"]
    done = gw.run(f"{PY} -m sciplat_hub.provision --json {name}")
    assert done.rc == 0, done.stdout + done.stderr
    env = json.loads(done.stdout)["env"]
    keys = {"access_key": env["AWS_ACCESS_KEY_ID"], "secret_key": env["AWS_SECRET_ACCESS_KEY"]}
    return User(gw, name, env), {**keys, "endpoint": env["AWS_ENDPOINT_URL_S3"]}


@pytest.fixture(scope="module")
def gw(host_of: Callable[[str], Any]) -> Any:
    return host_of("gw")


@pytest.fixture(scope="module")
def people(gw: Any, ca_cert: Path, endpoint: str) -> Iterator[dict[str, Any]]:  # noqa: F811
    """A (owner) and B (member) of a fresh collaboration; the collaboration is purged afterwards."""
    (a, a_keys), (b, b_keys) = provisioned(gw, ca_cert), provisioned(gw, ca_cert)
    assert a_keys["endpoint"] == endpoint
    yield {"a": a, "b": b, "creds": {a.name: a_keys, b.name: b_keys}}
    gw.run(f"{PY} -m sciplat_hub.collab delete {GROUP}")
    gw.run(f"{PY} -m sciplat_hub.collab purge {GROUP} --yes")


def files(user: User, action: str) -> Any:
    """As the user on gw: `write` a file of theirs into the group directory and read back B's, or `list` it."""
    command = {
        "write": f"echo from-{user.name} > /groups/{GROUP}/{user.name}.txt && cat /groups/{GROUP}/*.txt",
        "list": f"ls /groups/{GROUP}",
    }[action]
    return user.run(command)


def sbatch(user: User) -> Any:
    """As the user: submit a held job charged to the group's account (it never runs; the account is checked)."""
    return user.run(f"sbatch --hold --parsable -A {GROUP} -J collab-test -t 1 --wrap true")


def test_a_group_reaches_every_component_and_removal_revokes_all(
    gw: Any, people: dict[str, Any], ca_cert: Path, host_of: Callable[[str], Any]
) -> None:
    a, b, creds = people["a"], people["b"], people["creds"]
    made = groups_cmd(gw, "--as", a.name, "create", GROUP, "--description", "integration test")
    assert (made["owners"], made["members"], made["deleted"]) == ([a.name], [a.name], False)
    assert made["directory"] == f"/groups/{GROUP}" and made["bucket"] == f"group-{GROUP}"
    assert made["database"] == f"g_{GROUP}" and made["slurm_account"] == GROUP
    # B may not add anyone, and does not even see the group yet
    assert groups_cmd(gw, "--as", b.name, "add", GROUP, b.name, ok=False)["error"] == "NotFound"
    added = groups_cmd(gw, "--as", a.name, "add", GROUP, b.name)
    assert added["members"] == sorted([a.name, b.name]) and added["owners"] == [a.name]
    assert [g["name"] for g in groups_cmd(gw, "--as", b.name, "list")] == [GROUP]

    # the directory: setgid, the group's gid, both write and read each other's files
    mode, owner = gw.check_output(f"stat -c '%a %U:%G' /groups/{GROUP}").split()
    assert (mode, owner) == ("2770", f"root:{GROUP}")
    assert files(a, "write").rc == 0
    done = files(b, "write")
    assert done.rc == 0 and f"from-{a.name}" in done.stdout, done.stderr
    # the bucket, with each one's own keys
    bucket = f"group-{GROUP}"
    s3(creds, a.name, str(ca_cert)).put_object(Bucket=bucket, Key="a.txt", Body=b"from a")
    b_s3 = s3(creds, b.name, str(ca_cert))
    b_s3.put_object(Bucket=bucket, Key="b.txt", Body=b"from b")
    assert b_s3.get_object(Bucket=bucket, Key="a.txt")["Body"].read() == b"from a"
    # the database: A makes a table, B reads it (psql with B's ~/.pgpass)
    db = {"PGDATABASE": f"g_{GROUP}"}
    a.ok("CREATE TABLE runs (id int); INSERT INTO runs VALUES (42)", **db)
    assert b.ok("SELECT id FROM runs", **db) == "42"
    # Slurm: B's job is charged to the group's account
    job = sbatch(b)
    assert job.rc == 0, job.stderr
    job_id = job.stdout.strip().split(";")[0]
    assert gw.check_output(f"squeue -h -j {job_id} -o %a").strip() == GROUP

    # a compute node learns B's membership (and caches it: SSSD trusts it for minutes)
    c1 = host_of("c1")
    wait_for("B's group on c1", lambda: c1.run(f"runuser -u {b.name} -- ls /groups/{GROUP}").rc == 0, timeout=60)

    removed = groups_cmd(gw, "--as", a.name, "remove", GROUP, b.name)
    assert removed["members"] == [a.name]

    # B: refused everywhere, at once
    done = files(b, "list")
    assert done.rc != 0 and "Permission denied" in done.stderr, (done.stdout, done.stderr)
    done = c1.run(f"runuser -u {b.name} -- ls /groups/{GROUP}")  # on c1 too, despite its cache
    assert done.rc != 0 and "Permission denied" in done.stderr, (done.stdout, done.stderr)
    assert error_code(lambda: b_s3.get_object(Bucket=bucket, Key="a.txt")) == "AccessDenied"
    assert error_code(lambda: b_s3.get_object(Bucket=bucket, Key="b.txt")) == "AccessDenied"  # B's own upload too
    assert error_code(lambda: b_s3.put_object(Bucket=bucket, Key="b2.txt", Body=b"x")) == "AccessDenied"
    done = b.sql("SELECT id FROM runs", **db)
    assert done.rc != 0 and "permission denied" in done.stderr, done.stderr
    done = sbatch(b)
    assert done.rc != 0 and "Invalid account" in done.stderr, (done.stdout, done.stderr)
    state = gw.run(f"scontrol -o show job {job_id}").stdout  # B's job on the account was cancelled
    assert state == "" or "JobState=CANCELLED" in state, state
    assert groups_cmd(gw, "--as", b.name, "show", GROUP, ok=False)["error"] == "NotFound"
    # A: still everything
    assert files(a, "write").rc == 0
    assert s3(creds, a.name, str(ca_cert)).get_object(Bucket=bucket, Key="b.txt")["Body"].read() == b"from b"
    assert a.ok("SELECT count(*) FROM runs", **db) == "1"
    job = sbatch(a)
    assert job.rc == 0, job.stderr
    gw.run(f"scancel {job.stdout.strip().split(';')[0]}")


def test_delete_keeps_the_data_and_purge_removes_it(gw: Any, people: dict[str, Any], ca_cert: Path) -> None:
    a, creds = people["a"], people["creds"]
    if "error" in groups_cmd(gw, "show", GROUP, ok=None):
        pytest.skip("the group of the first test was not made")
    gone = groups_cmd(gw, "--as", a.name, "delete", GROUP)
    assert (gone["deleted"], gone["members"], gone["owners"]) == (True, [], [a.name])
    # members lose access, the data stays
    assert files(a, "list").rc != 0
    assert error_code(lambda: s3(creds, a.name, str(ca_cert)).get_object(Bucket=f"group-{GROUP}", Key="a.txt")) == (
        "AccessDenied"
    )
    assert gw.check_output(f"cat /groups/{GROUP}/{a.name}.txt").strip() == f"from-{a.name}"
    kept = gw.check_output(
        f"""{PY} -c 'from sciplat_hub.storage.config import from_host_config as f; s = f(); """
        f"""k = s._keys_of(s._user("grp.{GROUP}"), "grp.{GROUP}"); """
        f"""print(s._request("GET", "/group-{GROUP}/a.txt", keys=k)[1].decode())'"""
    )
    assert kept.strip() == "from a"
    assert groups_cmd(gw, "--as", a.name, "purge", GROUP, "--yes", ok=False)["error"] == "Forbidden"

    assert gw.run(f"{PY} -m sciplat_hub.collab purge {GROUP} --yes").rc == 0
    assert gw.run(f"test -e /groups/{GROUP}").rc != 0
    no_bucket = error_code(lambda: s3(creds, a.name, str(ca_cert)).head_bucket(Bucket=f"group-{GROUP}"))
    assert no_bucket in ("404", "NoSuchBucket")
    assert gw.check_output(f"sacctmgr -nP show account {GROUP} format=account").strip() == ""
    assert a.sql("SELECT 1", PGDATABASE=f"g_{GROUP}").rc != 0
    assert groups_cmd(gw, "show", GROUP, ok=False)["error"] == "NotFound"
