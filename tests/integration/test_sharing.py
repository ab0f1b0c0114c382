"""Sharing on the deployed test bed (sciplat_hub.sharing), as two real users see it.

Two users sign up, are approved and signed in (`new_approved_user`); their accounts are
provisioned on the hub host as the hub does before a spawn. The shares are made on the hub
host with `python -m sciplat_hub.sharing` (what the platform API calls); the users then
read and write as themselves: files with `runuser` on a compute node (c1) and the hub host,
objects with their own S3 keys from this machine through the gateway, tables with their own
MyDB credentials.
"""

from __future__ import annotations

import json
import secrets
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_hub import api, new_approved_user
from tests.integration.test_mydb import User
from tests.integration.test_storage import endpoint, error_code, s3  # noqa: F401 (endpoint: a fixture)

PY = "/opt/sciplat/venv/bin/python"
NOTEBOOK_PY = "/opt/sciplat/notebook/bin/python"  # the users' environment (jupyter_server) on compute nodes


def on_hub(gw: Any, *args: str) -> Any:
    """`python -m sciplat_hub.sharing ARGS` as root on the hub host; its JSON answer."""
    done = gw.run(" ".join(shlex.quote(a) for a in (PY, "-m", "sciplat_hub.sharing", *args)))
    answer = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    assert done.rc == 0, f"{args}: {done.stdout} {done.stderr}"
    return answer


def provision(gw: Any, name: str) -> dict[str, str]:
    done = gw.run(f"{PY} -m sciplat_hub.provision --json {name}")
    result = json.loads(done.stdout)
    assert result["ok"], result
    env: dict[str, str] = result["env"]
    return env


@pytest.fixture(scope="module")
def gw(host_of: Callable[[str], Any]) -> Any:
    return host_of("gw")


@pytest.fixture(scope="module")
def c1(host_of: Callable[[str], Any]) -> Any:
    return host_of("c1")


@pytest.fixture(scope="module")
def users(gw: Any, c1: Any, ca_cert: Path) -> dict[str, dict[str, Any]]:
    """Owner A and recipient B: name, provisioned environment, a runner on gw and one on c1."""
    found = {}
    for role in ("a", "b"):
        user = new_approved_user(f"sh{role}", ca_cert)
        name, env = user["name"], provision(gw, user["name"])
        found[role] = {
            "name": name,
            "token": user["token"],
            "env": env,
            "gw": User(gw, name, env),
            "c1": User(c1, name, env),
        }
    return found


@pytest.fixture(scope="module")
def shares(gw: Any) -> Iterator[list[str]]:
    """Ids of the shares a test made; whatever is left is deleted at the end."""
    made: list[str] = []
    yield made
    for sid in made:
        gw.run(f"{PY} -m sciplat_hub.sharing delete {sid}")


def ok(done: Any) -> str:
    assert done.rc == 0, done.stderr
    return str(done.stdout)


def test_a_folder_shared_read_only_then_read_write_then_unshared(
    users: dict[str, dict[str, Any]], shares: list[str], gw: Any
) -> None:
    a, b = users["a"], users["b"]
    home = f"/home/{a['name']}"
    ok(a["gw"].run("mkdir -p ~/proj && echo result > ~/proj/data.txt"))
    ok(a["gw"].run("umask 077 && mkdir -p ~/private && echo mine > ~/private/x && echo mine > ~/notes.txt"))
    assert b["c1"].run(f"cat {home}/proj/data.txt").rc != 0  # nothing shared yet: the home is 0700

    share = on_hub(gw, "create", a["name"], "path", "proj", f"user:{b['name']}", "--mode", "ro")
    shares.append(share["id"])
    assert share["target"] == f"{home}/proj" and share["mode"] == "ro"
    assert share["link"] == f"/hub/user-redirect/lab/tree/shared/{a['name']}/proj"
    # the link opens in B's JupyterLab: its contents API (rooted at B's home) serves the folder, read-only
    code = (
        "import json; from jupyter_server.services.contents.filemanager import FileContentsManager as M; "
        f"m = M(root_dir='/home/{b['name']}'); path = share['link'].split('/lab/tree/', 1)[1]; "
        "d = m.get(path); f = m.get(path + '/data.txt'); "
        "print(json.dumps([d['type'], [c['name'] for c in d['content']], f['content'], f['writable']]))"
    ).replace("share['link']", repr(share["link"]))
    served = json.loads(ok(b["c1"].run(f"{NOTEBOOK_PY} -c {shlex.quote(code)}")))
    assert served == ["directory", ["data.txt"], "result\n", False]
    # B reads through the link in their own home, on a compute node, and cannot write
    assert ok(b["c1"].run(f"cat ~/shared/{a['name']}/proj/data.txt")).strip() == "result"
    assert b["c1"].run(f"echo x > {home}/proj/fromb.txt").rc != 0
    assert b["c1"].run(f"echo x >> {home}/proj/data.txt").rc != 0
    # the home itself is only passed through: not listed; what A keeps private (umask 077) stays so
    assert b["c1"].run(f"ls {home}").rc != 0
    assert b["c1"].run(f"cat {home}/private/x").rc != 0
    assert b["c1"].run(f"cat {home}/notes.txt").rc != 0
    # what A adds later inherits the share (default ACL), whatever A's umask
    ok(a["gw"].run("umask 077 && mkdir ~/proj/later && echo new > ~/proj/later/n.txt"))
    assert ok(b["c1"].run(f"cat {home}/proj/later/n.txt")).strip() == "new"
    listed = on_hub(gw, "list", b["name"])
    assert [s["id"] for s in listed["with_me"]] == [share["id"]] and listed["by_me"] == []

    again = on_hub(gw, "create", a["name"], "path", f"{home}/proj/", f"user:{b['name']}", "--mode", "rw")
    assert again["id"] == share["id"] and again["mode"] == "rw"
    ok(b["c1"].run(f"echo from-b > {home}/proj/fromb.txt && echo more >> {home}/proj/later/n.txt"))
    assert ok(a["gw"].run("cat ~/proj/fromb.txt")).strip() == "from-b"

    on_hub(gw, "delete", share["id"])
    shares.remove(share["id"])
    assert b["c1"].run(f"cat {home}/proj/data.txt").rc != 0
    assert b["gw"].run(f"cat {home}/proj/later/n.txt").rc != 0
    assert b["gw"].run(f"test -e ~/shared/{a['name']}/proj").rc != 0
    assert on_hub(gw, "list", b["name"])["with_me"] == []


def test_a_share_deep_in_a_home_or_group_directory_opens_nothing_else_of_it(
    users: dict[str, dict[str, Any]], shares: list[str], gw: Any
) -> None:
    """B passes through A's home and ~/project to reach ~/project/results, and reads nothing else on the way."""
    a, b = users["a"], users["b"]
    home = f"/home/{a['name']}"
    ok(
        a["gw"].run(
            "umask 022 && cd && mkdir -p project/results other && echo r > project/results/r.txt"
            " && echo o > project/other-file && echo f > other/f.txt && echo n > notes.txt"
            " && chmod 0755 project project/results other && chmod 0644 notes.txt other/f.txt project/other-file"
        )
    )
    share = on_hub(gw, "create", a["name"], "path", "project/results", f"user:{b['name']}")
    shares.append(share["id"])
    assert ok(b["gw"].run(f"cat ~/shared/{a['name']}/results/r.txt && cat {home}/project/results/r.txt")) == "r\nr\n"
    for command in (
        f"cat {home}/notes.txt",
        f"ls {home}/other",
        f"cat {home}/other/f.txt",
        f"cat {home}/project/other-file",
    ):
        denied = b["gw"].run(command)
        assert denied.rc != 0 and "Permission denied" in denied.stderr, (command, denied.stdout)
    # what A makes later directly in the home (or in ~/project) is closed as well, whatever A's umask
    ok(a["gw"].run("umask 022 && echo later > ~/later.txt && echo later > ~/project/later.txt"))
    for later in (f"{home}/later.txt", f"{home}/project/later.txt"):
        denied = b["gw"].run(f"cat {later}")
        assert denied.rc != 0 and "Permission denied" in denied.stderr
    # A keeps everything: only "other" was taken away (group and owner bits as a 022 umask gives them)
    modes = ok(a["gw"].run("cd && stat -c '%n %A' notes.txt other project project/other-file later.txt"))
    assert modes.split("\n")[:-1] == [
        "notes.txt -rw-r-----",
        "other drwxr-x---",
        "project drwxr-xr-x",  # on the way to the share: B passes through it (by its own entry)
        "project/other-file -rw-r-----",
        "later.txt -rw-r-----",
    ]
    assert ok(a["gw"].run("cat ~/notes.txt ~/other/f.txt ~/later.txt")) == "n\nf\nlater\n"
    # ending another share of ~/project (to a group of A's alone) leaves B's share inside it as it was
    group = f"shc-{secrets.token_hex(3)}"
    collab = f"{PY} -m sciplat_hub.collab"
    ok(gw.run(f"{collab} create {group} --owner {a['name']}"))
    try:
        outer = on_hub(gw, "create", a["name"], "path", "project", f"group:{group}")
        on_hub(gw, "delete", outer["id"])
        # a share out of the group directory to B (no member) opens nothing else of it either
        gdir = f"/groups/{group}"
        ok(a["gw"].run(f"umask 022 && mkdir {gdir}/res && echo g > {gdir}/res/g.txt && echo o > {gdir}/open.txt"))
        gshare = on_hub(gw, "create", a["name"], "path", f"{gdir}/res", f"user:{b['name']}")
        shares.append(gshare["id"])
        assert ok(b["gw"].run(f"cat {gdir}/res/g.txt")) == "g\n"
        ok(a["gw"].run(f"umask 022 && echo later > {gdir}/later.txt"))
        for item in ("open.txt", "later.txt"):
            denied = b["gw"].run(f"cat {gdir}/{item}")
            assert denied.rc != 0 and "Permission denied" in denied.stderr
        # the group's members keep reading what is made there (group bits as a 022 umask gives them)
        assert ok(a["gw"].run(f"stat -c '%A %G' {gdir}/open.txt {gdir}/later.txt")) == (
            f"-rw-r----- {group}\n-rw-r----- {group}\n"
        )
        on_hub(gw, "delete", gshare["id"])
        shares.remove(gshare["id"])
    finally:
        gw.run(f"{collab} delete {group} && {collab} purge {group} --yes")
    ok(a["gw"].run("umask 077 && echo new > ~/project/results/new.txt && umask 022 && echo x > ~/project/later2.txt"))
    assert ok(b["gw"].run(f"cat {home}/project/results/new.txt")) == "new\n"
    denied = b["gw"].run(f"cat {home}/project/later2.txt")
    assert denied.rc != 0 and "Permission denied" in denied.stderr
    on_hub(gw, "delete", share["id"])
    shares.remove(share["id"])
    assert b["gw"].run(f"cat {home}/project/results/r.txt").rc != 0


def test_only_the_owner_or_an_operator_ends_a_share_and_nobody_shares_what_is_not_theirs(
    users: dict[str, dict[str, Any]], shares: list[str], gw: Any
) -> None:
    a, b = users["a"], users["b"]
    ok(a["gw"].run("mkdir -p ~/notes && echo n > ~/notes/n.md"))
    share = on_hub(gw, "create", a["name"], "path", "notes/n.md", f"user:{b['name']}")
    shares.append(share["id"])
    code = f"""
import json
from sciplat_hub.collab import CollabError
from sciplat_hub.sharing import Sharing
s = Sharing.from_host_config()
out = {{}}
for what, call in (
    ("recipient deletes", lambda: s.delete({share["id"]!r}, by={b["name"]!r})),
    ("other home", lambda: s.create({b["name"]!r}, "path", "/home/{a["name"]}/notes", "user:{a["name"]}")),
    ("dot-dot", lambda: s.create({b["name"]!r}, "path", "../{a["name"]}/notes", "user:{a["name"]}")),
    ("other bucket", lambda: s.create({b["name"]!r}, "prefix", "home-{a["name"]}/x/", "user:{a["name"]}")),
    ("bad mode", lambda: s.create({a["name"]!r}, "path", "notes", "user:{b["name"]}", "all")),
):
    try:
        call()
        out[what] = "allowed"
    except CollabError as exc:
        out[what] = type(exc).__name__
print(json.dumps(out))
"""
    done = gw.run(f"{PY} -c {shlex.quote(code)}")
    assert json.loads(ok(done)) == {
        "recipient deletes": "Forbidden",
        "other home": "Forbidden",
        "dot-dot": "Invalid",
        "other bucket": "Forbidden",
        "bad mode": "Invalid",
    }
    assert ok(b["c1"].run(f"cat ~/shared/{a['name']}/n.md")).strip() == "n"


def test_a_folder_shared_with_a_group_reaches_its_members_and_follows_the_membership(
    users: dict[str, dict[str, Any]], shares: list[str], gw: Any
) -> None:
    a, b = users["a"], users["b"]
    group = f"shg-{secrets.token_hex(3)}"
    collab = f"{PY} -m sciplat_hub.collab"
    ok(gw.run(f"{collab} create {group} --owner {a['name']}"))
    try:
        ok(gw.run(f"{collab} add {group} {b['name']}"))
        ok(a["gw"].run("umask 077 && mkdir -p ~/team && echo plan > ~/team/plan.md"))
        share = on_hub(gw, "create", a["name"], "path", "team", f"group:{group}", "--mode", "rw")
        shares.append(share["id"])
        # a member (with the group from the directory, on the hub host) reads and writes through the link
        assert ok(b["gw"].run(f"cat ~/shared/{a['name']}/team/plan.md")).strip() == "plan"
        ok(b["gw"].run(f"echo reply > ~/shared/{a['name']}/team/reply.md"))
        assert ok(a["gw"].run("cat ~/team/reply.md")).strip() == "reply"
        assert share["id"] in [s["id"] for s in on_hub(gw, "list", b["name"])["with_me"]]
        # a link B removed comes back at B's next sign-in (provisioning links what is shared with B)
        ok(b["gw"].run(f"rm ~/shared/{a['name']}/team"))
        provision(gw, b["name"])
        assert ok(b["gw"].run(f"cat ~/shared/{a['name']}/team/reply.md")).strip() == "reply"
        # removed from the group: the ACL no longer applies, and refresh takes the link away
        ok(gw.run(f"{collab} remove {group} {b['name']}"))
        on_hub(gw, "refresh", f"group:{group}")
        assert b["gw"].run(f"cat /home/{a['name']}/team/plan.md").rc != 0
        assert b["gw"].run(f"test -e ~/shared/{a['name']}/team").rc != 0
        assert share["id"] not in [s["id"] for s in on_hub(gw, "list", b["name"])["with_me"]]
        on_hub(gw, "delete", share["id"])
        shares.remove(share["id"])
    finally:
        gw.run(f"{collab} delete {group}")
        gw.run(f"{collab} purge {group} --yes")


def test_a_bucket_prefix_shared_with_the_recipients_own_keys(
    users: dict[str, dict[str, Any]],
    shares: list[str],
    gw: Any,
    endpoint: str,  # noqa: F811 (the fixture imported from test_storage)
    ca_cert: Path,
) -> None:
    a, b = users["a"], users["b"]
    creds = {
        u["name"]: {
            "access_key": u["env"]["AWS_ACCESS_KEY_ID"],
            "secret_key": u["env"]["AWS_SECRET_ACCESS_KEY"],
            "endpoint": u["env"]["AWS_ENDPOINT_URL_S3"],
        }
        for u in (a, b)
    }
    assert creds[a["name"]]["endpoint"] == endpoint
    bucket = a["env"]["SCIPLAT_HOME_BUCKET"]
    owner, reader = s3(creds, a["name"], str(ca_cert)), s3(creds, b["name"], str(ca_cert))
    owner.put_object(Bucket=bucket, Key="pub/table.csv", Body=b"a,b\n1,2\n")
    owner.put_object(Bucket=bucket, Key="private/secret.txt", Body=b"no")
    assert error_code(lambda: reader.get_object(Bucket=bucket, Key="pub/table.csv")) == "AccessDenied"

    share = on_hub(gw, "create", a["name"], "prefix", f"{bucket}/pub", f"user:{b['name']}")
    shares.append(share["id"])
    assert share["target"] == f"{bucket}/pub/" and share["link"] is None
    assert reader.get_object(Bucket=bucket, Key="pub/table.csv")["Body"].read() == b"a,b\n1,2\n"
    listed = reader.list_objects_v2(Bucket=bucket, Prefix="pub/")
    assert [o["Key"] for o in listed["Contents"]] == ["pub/table.csv"]
    assert error_code(lambda: reader.get_object(Bucket=bucket, Key="private/secret.txt")) == "AccessDenied"
    assert error_code(lambda: reader.list_objects_v2(Bucket=bucket)) == "AccessDenied"
    assert error_code(lambda: reader.put_object(Bucket=bucket, Key="pub/from-b", Body=b"x")) == "AccessDenied"
    # the owner keeps full use of the bucket
    assert owner.get_object(Bucket=bucket, Key="private/secret.txt")["Body"].read() == b"no"

    on_hub(gw, "delete", share["id"])
    shares.remove(share["id"])
    assert error_code(lambda: reader.get_object(Bucket=bucket, Key="pub/table.csv")) == "AccessDenied"


def test_a_table_shared_and_unshared_with_the_recipients_own_mydb_credentials(
    users: dict[str, dict[str, Any]], shares: list[str], gw: Any
) -> None:
    a, b = users["a"], users["b"]
    a_db = a["env"]["PGDATABASE"]
    a["gw"].ok(
        "CREATE TABLE IF NOT EXISTS stars (id serial PRIMARY KEY, mag real); INSERT INTO stars (mag) VALUES (4.5)"
    )
    assert b["gw"].sql("SELECT count(*) FROM stars", PGDATABASE=a_db).rc != 0

    share = on_hub(gw, "create", a["name"], "table", "stars", f"user:{b['name']}")
    shares.append(share["id"])
    assert share["target"] == "public.stars"
    assert int(b["gw"].ok("SELECT count(*) FROM public.stars", PGDATABASE=a_db)) >= 1
    denied = b["gw"].sql("INSERT INTO stars (mag) VALUES (1)", PGDATABASE=a_db)
    assert denied.rc != 0 and "permission denied" in denied.stderr

    on_hub(gw, "delete", share["id"])
    shares.remove(share["id"])
    assert b["gw"].sql("SELECT count(*) FROM stars", PGDATABASE=a_db).rc != 0


def test_every_user_reads_the_public_area_and_a_plain_user_cannot_write_there(
    users: dict[str, dict[str, Any]], gw: Any, c1: Any
) -> None:
    area = on_hub(gw, "public")["public"]
    assert area == "/public"
    gw.check_output(f"echo 'catalogue v1' > {area}/README-sharing-test")
    b = users["b"]
    assert ok(b["c1"].run("readlink ~/public")).strip() == area
    assert ok(b["c1"].run("cat ~/public/README-sharing-test")).strip() == "catalogue v1"
    assert b["c1"].run(f"echo x > {area}/from-b").rc != 0
    assert b["gw"].run(f"mkdir {area}/b-dir").rc != 0
    gw.run(f"rm -f {area}/README-sharing-test")


def test_the_platform_api_shares_for_the_signed_in_user(
    users: dict[str, dict[str, Any]], shares: list[str], ca_cert: Path
) -> None:
    a, b = users["a"], users["b"]
    if api(a["token"], "GET", "/api/v1/health", ca_cert).status_code != 200:
        pytest.skip("the platform API is not deployed on this bed")
    ok(a["gw"].run("umask 077 && mkdir -p ~/nb && echo '{}' > ~/nb/fit.ipynb"))
    body = {"kind": "path", "target": "nb/fit.ipynb", "grantee": f"user:{b['name']}", "mode": "ro"}
    made = api(a["token"], "POST", "/api/v1/shares", ca_cert, json=body)
    assert made.status_code == 201, made.text
    share = made.json()
    shares.append(share["id"])
    assert share["owner"] == a["name"] and share["link"].endswith(f"/shared/{a['name']}/fit.ipynb")
    listed = api(b["token"], "GET", "/api/v1/shares", ca_cert).json()
    assert share["id"] in [s["id"] for s in listed["with_me"]]
    assert ok(b["gw"].run(f"cat ~/shared/{a['name']}/fit.ipynb")).strip() == "{}"
    refused = api(
        b["token"], "POST", "/api/v1/shares", ca_cert, json={**body, "target": "../x", "grantee": f"user:{a['name']}"}
    )
    assert refused.status_code == 422 and "'..'" in refused.json()["detail"]
    assert api(b["token"], "DELETE", f"/api/v1/shares/{share['id']}", ca_cert).status_code == 403
    assert api(a["token"], "DELETE", f"/api/v1/shares/{share['id']}", ca_cert).status_code == 204
    shares.remove(share["id"])
    assert b["gw"].run(f"cat /home/{a['name']}/nb/fit.ipynb").rc != 0
