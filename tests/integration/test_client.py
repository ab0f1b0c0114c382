"""`sciplat-client` from outside the test bed (this machine = a laptop) against the platform API.

Two users sign up, are approved and sign in (test_hub.new_approved_user, which gives
each an API token), and get their platform accounts as the hub's provisioning makes
them at a first server start (`python -m sciplat_hub.provision` as root on gw, as
test_collab does). Then only the public URL, a token and the CA file: `me --json`,
and a group created, a member added and removed, listed from both sides. The group
is deleted and purged afterwards (`sciplat-groups` as root on gw).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import PUBLIC_URL
from tests.integration.test_hub import new_approved_user

CLIENT = str(Path(sys.executable).parent / "sciplat-client")
PY = "/opt/sciplat/venv/bin/python"  # sciplat_hub's venv on the hosts
GROUP = f"cli-{secrets.token_hex(3)}"


def client(token: str, *args: str, ca: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it on a laptop: URL, token and CA from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCIPLAT_", "JUPYTERHUB_"))}
    env.update({"SCIPLAT_URL": PUBLIC_URL, "SCIPLAT_TOKEN": token})
    if ca is not None:
        env["SCIPLAT_CA"] = str(ca)
    done = subprocess.run([CLIENT, *args], capture_output=True, text=True, env=env, timeout=180, check=False)
    if check:
        assert done.returncode == 0, f"sciplat-client {' '.join(args)}: {done.stdout} {done.stderr}"
    return done


@pytest.fixture(scope="module")
def users(host_of: Callable[[str], Any], ca_cert: Path) -> Iterator[dict[str, dict[str, Any]]]:
    """Two signed-in users with platform accounts (LDAP, home, bucket, MyDB) and API tokens."""
    gw = host_of("gw")
    made = {}
    for role in ("a", "b"):
        user = new_approved_user("cl", ca_cert)
        done = gw.run(f"{PY} -m sciplat_hub.provision --json {user['name']}")
        assert done.rc == 0, done.stdout + done.stderr
        made[role] = user
    yield made
    gw.run(f"{PY} -m sciplat_hub.collab delete {GROUP}")
    gw.run(f"{PY} -m sciplat_hub.collab purge {GROUP} --yes")


def test_me_as_json_from_outside_the_bed(users: dict[str, dict[str, Any]], ca_cert: Path) -> None:
    a = users["a"]
    me = json.loads(client(a["token"], "me", "--json", ca=ca_cert).stdout)
    assert me["name"] == a["name"] and me["admin"] is False
    assert set(me["quotas"]) == {"home_bytes", "bucket_bytes", "mydb_bytes"}
    assert me["quotas"]["home_bytes"], "the bed sets a home quota"
    human = client(a["token"], "me", ca=ca_cert).stdout
    assert human.startswith(f"user    {a['name']}\n") and "home    " in human


def test_refusals_are_sentences(users: dict[str, dict[str, Any]], ca_cert: Path) -> None:
    wrong = client("not-a-token", "me", ca=ca_cert, check=False)
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert wrong.stderr.startswith("sciplat-client: ") and "token" in wrong.stderr.lower()
    untrusted = client(users["a"]["token"], "me", check=False)  # the platform's own CA is not the system's
    assert untrusted.returncode == 1 and "pass the platform's CA file" in untrusted.stderr


def test_groups_create_add_list_remove(users: dict[str, dict[str, Any]], ca_cert: Path) -> None:
    a, b = users["a"], users["b"]
    created = json.loads(
        client(a["token"], "groups", "create", GROUP, "--description", "cli test", "--json", ca=ca_cert).stdout
    )
    assert created["name"] == GROUP and created["owners"] == [a["name"]] and created["members"] == [a["name"]]
    again = client(a["token"], "groups", "create", GROUP, ca=ca_cert, check=False)
    assert again.returncode == 1 and GROUP in again.stderr, "a taken name is refused with the API's sentence"
    added = json.loads(client(a["token"], "groups", "add", GROUP, b["name"], "--json", ca=ca_cert).stdout)
    assert added["members"] == sorted([a["name"], b["name"]])
    seen_by_b = json.loads(client(b["token"], "groups", "list", "--json", ca=ca_cert).stdout)
    assert [g["name"] for g in seen_by_b] == [GROUP]
    assert b["name"] in next(g for g in seen_by_b if g["name"] == GROUP)["members"]
    table = client(a["token"], "groups", "list", ca=ca_cert).stdout
    assert any(line.split()[:3] == [GROUP, a["name"], "2"] for line in table.splitlines()), table
    refused = client(b["token"], "groups", "remove", GROUP, a["name"], ca=ca_cert, check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("sciplat-client: "), "a member cannot remove the owner"
    removed = json.loads(client(a["token"], "groups", "remove", GROUP, b["name"], "--json", ca=ca_cert).stdout)
    assert removed["members"] == [a["name"]]
    assert json.loads(client(b["token"], "groups", "list", "--json", ca=ca_cert).stdout) == []


def test_share_a_notebook_and_run_a_job(
    users: dict[str, dict[str, Any]], host_of: Callable[[str], Any], ca_cert: Path, tmp_path: Path
) -> None:
    a, b = users["a"], users["b"]
    notebook = f"fit-{secrets.token_hex(2)}.ipynb"
    made = host_of("gw").run(f"runuser -u {a['name']} -- sh -c 'echo {{}} > /home/{a['name']}/{notebook}'")
    assert made.rc == 0, made.stderr
    share = json.loads(
        client(a["token"], "shares", "create", notebook, f"user:{b['name']}", "--json", ca=ca_cert).stdout
    )
    assert share["mode"] == "ro" and share["link"].startswith("/hub/user-redirect/lab/tree/")
    with_b = json.loads(client(b["token"], "shares", "list", "--json", ca=ca_cert).stdout)["with_me"]
    assert [(s["id"], s["owner"], s["link"]) for s in with_b] == [(share["id"], a["name"], share["link"])]
    client(a["token"], "shares", "delete", share["id"], ca=ca_cert)
    assert json.loads(client(b["token"], "shares", "list", "--json", ca=ca_cert).stdout)["with_me"] == []

    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from $(id -un)\n")
    job = json.loads(
        client(a["token"], "jobs", "submit", str(script), "--wait", "--timeout", "150", "--json", ca=ca_cert).stdout
    )
    assert (job["phase"], job["exit_code"]) == ("COMPLETED", 0), job
    assert client(a["token"], "jobs", "results", job["id"], ca=ca_cert).stdout == f"hello from {a['name']}\n"
    mine = json.loads(client(a["token"], "jobs", "list", "--json", ca=ca_cert).stdout)
    assert job["id"] in [j["id"] for j in mine]
    assert client(b["token"], "jobs", "show", job["id"], ca=ca_cert, check=False).returncode == 1, "not B's job"
