"""sciplat_hub.collab: who may do what, names, and what each component is told.

The directory is the real `Directory` on ldap3's in-memory mock; the file system, object
store, MyDB and Slurm are fakes that record what they were asked (the integration test
tests/integration/test_collab.py runs the same story through the real components).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

ldap3 = pytest.importorskip("ldap3")

from sciplat_hub import collab as collab_mod  # noqa: E402
from sciplat_hub import provision  # noqa: E402
from sciplat_hub.collab import (  # noqa: E402
    Collaborations,
    ComponentError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
)
from sciplat_hub.directory import Directory  # noqa: E402

BASE = "dc=sciplat,dc=test"
BIND = f"cn=provisioner,{BASE}"


class FakePosix:
    def __init__(self, root: Path) -> None:
        self.group_root = root
        self.dirs: dict[str, tuple[int, int | None]] = {}

    def ensure_group_dir(self, group: str, gid: int, quota: int | None) -> str:
        (self.group_root / group).mkdir(parents=True, exist_ok=True)
        self.dirs[group] = (gid, quota)
        return str(self.group_root / group)


class FakeAcl:
    def __init__(self) -> None:
        self.entries: dict[str, set[str]] = {}

    def denied(self, path: str) -> set[str] | None:
        return set(self.entries.get(path, set()))

    def deny(self, path: str, username: str) -> None:
        self.entries.setdefault(path, set()).add(username)

    def undeny(self, path: str, username: str) -> None:
        self.entries.get(path, set()).discard(username)


class FakeStore:
    def __init__(self) -> None:
        self.policies: dict[str, tuple[list[str], int | None]] = {}
        self.deleted: list[str] = []
        self.fail = False

    def ensure_group_bucket(self, group: str, members: list[str], quota: int | None) -> str:
        if self.fail:
            raise RuntimeError("RGW is away")
        self.policies[group] = (sorted(members), quota)
        return f"group-{group}"

    def delete_group_bucket(self, group: str) -> bool:
        self.deleted.append(group)
        return self.policies.pop(group, None) is not None


class FakeMyDB:
    def __init__(self) -> None:
        self.grants: dict[str, list[str]] = {}
        self.dropped: list[str] = []

    def ensure_group_database(self, group: str, members: Sequence[str]) -> dict[str, Any]:
        self.grants[group] = sorted(members)
        return {"database": f"g_{group}", "members": sorted(members), "pending": []}

    def drop_group_database(self, group: str) -> bool:
        self.dropped.append(group)
        return self.grants.pop(group, None) is not None


class FakeSlurm:
    def __init__(self) -> None:
        self.accounts: dict[str, set[str]] = {}
        self.cancelled: list[tuple[str, str]] = []

    def ensure_account(self, group: str, *, description: str = "") -> bool:
        created = group not in self.accounts
        self.accounts.setdefault(group, set())
        return created

    def account_users(self, account: str) -> list[str]:
        return sorted(self.accounts.get(account, set()))

    def ensure_user(self, username: str, account: str) -> bool:
        self.accounts.setdefault(account, set())
        created = username not in self.accounts[account]
        self.accounts[account].add(username)
        return created

    def cancel_jobs(self, username: str, account: str) -> None:
        self.cancelled.append((username, account))

    def remove_user(self, username: str, account: str) -> bool:
        present = username in self.accounts.get(account, set())
        self.accounts.get(account, set()).discard(username)
        return present

    def delete_account(self, account: str) -> bool:
        return self.accounts.pop(account, None) is not None


@pytest.fixture
def directory() -> Directory:
    server = ldap3.Server("mock")
    setup = ldap3.Connection(server, user=BIND, password="secret", client_strategy=ldap3.MOCK_SYNC)
    setup.strategy.add_entry(
        BIND, {"objectClass": ["organizationalRole"], "cn": "provisioner", "userPassword": "secret"}
    )
    setup.strategy.add_entry(f"ou=people,{BASE}", {"objectClass": ["organizationalUnit"], "ou": "people"})
    setup.strategy.add_entry(f"ou=groups,{BASE}", {"objectClass": ["organizationalUnit"], "ou": "groups"})
    d = Directory(
        "ldaps://mock:636", BASE, BIND, "secret", server=server, strategy=ldap3.MOCK_SYNC,
        uid_range=(20000, 20099), gid_range=(60000, 60099),
    )  # fmt: skip
    for name in ("alice", "bob", "carol", "dave"):
        d.ensure_user(name)
    return d


@pytest.fixture
def world(directory: Directory, tmp_path: Path) -> dict[str, Any]:
    flushed: list[tuple[str, list[str]]] = []
    parts: dict[str, Any] = {
        "posix": FakePosix(tmp_path / "groups"),
        "store": FakeStore(),
        "mydb": FakeMyDB(),
        "slurm": FakeSlurm(),
        "acl": FakeAcl(),
    }
    collabs = Collaborations(
        directory,
        posix=parts["posix"],
        store=parts["store"],
        mydb=parts["mydb"],
        slurm=parts["slurm"],
        operators={"olivia"},
        group_dir_quota=2**40,
        bucket_quota=2**30,
        lock_dir=tmp_path / "locks",
        flush_cache=lambda group, users: flushed.append((group, list(users))),
        acl=parts["acl"],
    )
    return {"c": collabs, "d": directory, "flushed": flushed, **parts}


def reflected(world: dict[str, Any], name: str) -> dict[str, Any]:
    """What each component was last told about the collaboration's members."""
    return {
        "ldap": sorted(world["d"].get_group(name).members),
        "bucket": world["store"].policies[name][0],
        "mydb": world["mydb"].grants[name],
        "slurm": sorted(world["slurm"].accounts[name]),
    }


def test_create_makes_the_owner_a_member_everywhere(world: dict[str, Any]) -> None:
    c = world["c"].create("survey", "alice", "The survey team")
    assert (c.owners, c.members, c.deleted) == (["alice"], ["alice"], False)
    assert c.description == "The survey team"
    assert (c.directory, c.bucket, c.database, c.slurm_account) == (
        str(world["posix"].group_root / "survey"),
        "group-survey",
        "g_survey",
        "survey",
    )
    assert world["posix"].dirs["survey"] == (c.gid, 2**40)
    assert world["store"].policies["survey"] == (["alice"], 2**30)
    assert reflected(world, "survey") == {key: ["alice"] for key in ("ldap", "bucket", "mydb", "slurm")}
    # owners live in the group's own entry (a slapcat backup keeps them)
    record = world["d"].group_record("survey")
    assert record.owners == ("alice",) and record.category == collab_mod.ACTIVE
    assert json.loads(json.dumps(c.to_json()))["owners"] == ["alice"]


@pytest.mark.parametrize("name", ["a", "A-team", "1team", "team_x", "t" * 32, "team.x", "", "team x", "tëam"])
def test_bad_names_are_invalid(world: dict[str, Any], name: str) -> None:
    with pytest.raises(Invalid, match="not a valid collaboration name"):
        world["c"].create(name, "alice")


@pytest.mark.parametrize("name", ["root", "users", "default", "operator", "public", "slurm"])
def test_reserved_names_are_invalid(world: dict[str, Any], name: str) -> None:
    with pytest.raises(Invalid, match="reserved"):
        world["c"].create(name, "alice")


def test_taken_names_conflict(world: dict[str, Any]) -> None:
    c = world["c"]
    c.create("survey", "alice")
    with pytest.raises(Conflict, match="exists already"):
        c.create("survey", "bob")
    with pytest.raises(Conflict, match="user's name"):
        c.create("bob", "alice")
    world["d"].ensure_group("siteteam")  # an operator's group, not a collaboration
    with pytest.raises(Conflict, match="existing group"):
        c.create("siteteam", "alice")
    c.user_exists = lambda name: name == "erin"  # a hub user who never started a server
    with pytest.raises(Conflict, match="user's name"):
        c.create("erin", "alice")
    assert [x.name for x in c.list()] == ["survey"]


def test_owner_needs_an_account_and_description_is_checked(world: dict[str, Any]) -> None:
    with pytest.raises(NotFound, match="no account on the platform yet"):
        world["c"].create("survey", "zed")
    with pytest.raises(Invalid, match="printable"):
        world["c"].create("survey", "alice", "two\nlines")
    with pytest.raises(Invalid, match="at most"):
        world["c"].create("survey", "alice", "x" * 201)
    assert world["d"].get_group("survey") is None


def test_owners_add_members_members_and_outsiders_cannot(world: dict[str, Any]) -> None:
    c = world["c"]
    c.create("survey", "alice")
    added = c.add_member("survey", "bob", by="alice")
    assert added.members == ["alice", "bob"] and added.owners == ["alice"]
    assert reflected(world, "survey") == {key: ["alice", "bob"] for key in ("ldap", "bucket", "mydb", "slurm")}
    with pytest.raises(Forbidden, match="Only the owners"):
        c.add_member("survey", "carol", by="bob")
    with pytest.raises(NotFound, match="no collaboration named 'survey'"):
        c.add_member("survey", "carol", by="dave")  # an outsider does not learn it exists
    with pytest.raises(NotFound, match="no account"):
        c.add_member("survey", "zed", by="alice")
    with pytest.raises(Invalid, match="'owner' or 'member'"):
        c.add_member("survey", "carol", role="admin", by="alice")
    assert c.add_member("survey", "carol", by="olivia").members == ["alice", "bob", "carol"]  # an operator
    assert c.add_member("survey", "carol", by="olivia").members == ["alice", "bob", "carol"]  # idempotent
    assert world["flushed"][-1] == ("survey", ["carol"])


def test_roles_change_and_the_last_owner_stays(world: dict[str, Any]) -> None:
    c = world["c"]
    c.create("survey", "alice")
    c.add_member("survey", "bob", by="alice")
    with pytest.raises(Invalid, match="last owner"):
        c.add_member("survey", "alice", role="member", by="alice")
    with pytest.raises(Invalid, match="last owner"):
        c.remove_member("survey", "alice", by="alice")
    assert c.add_member("survey", "bob", role="owner", by="alice").owners == ["alice", "bob"]
    left = c.remove_member("survey", "alice", by="alice")  # now alice may leave
    assert (left.owners, left.members) == (["bob"], ["bob"])
    assert world["d"].group_record("survey").owners == ("bob",)
    with pytest.raises(NotFound):
        c.get("survey", by="alice")


def test_removing_a_member_revokes_everything(world: dict[str, Any]) -> None:
    c = world["c"]
    c.create("survey", "alice")
    c.add_member("survey", "bob", by="alice")
    c.add_member("survey", "carol", by="alice")
    with pytest.raises(Forbidden):
        c.remove_member("survey", "carol", by="bob")  # a member cannot remove another
    after = c.remove_member("survey", "bob", by="alice")
    assert after.members == ["alice", "carol"]
    assert reflected(world, "survey") == {key: ["alice", "carol"] for key in ("ldap", "bucket", "mydb", "slurm")}
    assert ("bob", "survey") in world["slurm"].cancelled  # bob's jobs on the account go first
    assert world["flushed"][-1] == ("survey", ["bob"])
    assert [x.name for x in c.list(member="bob")] == []
    assert c.remove_member("survey", "carol", by="carol").members == ["alice"]  # leaving
    assert c.remove_member("survey", "carol", by="alice").members == ["alice"]  # again: nothing to do


def test_visibility(world: dict[str, Any]) -> None:
    c = world["c"]
    c.create("survey", "alice")
    c.add_member("survey", "bob", by="alice")
    assert c.get("survey", by="bob").name == "survey"
    assert c.get("survey", by="olivia").name == "survey"
    with pytest.raises(NotFound):
        c.get("survey", by="dave")
    with pytest.raises(NotFound):
        c.get("nosuch")
    with pytest.raises(NotFound):
        c.get("Bad Name")
    assert [x.name for x in c.list(member="bob")] == ["survey"]
    assert c.is_operator("olivia") and c.is_operator(collab_mod.OPERATOR) and not c.is_operator("alice")


def test_delete_keeps_data_and_revokes_everyone_purge_removes_it(world: dict[str, Any]) -> None:
    c = world["c"]
    made = c.create("survey", "alice")
    c.add_member("survey", "bob", by="alice")
    (world["posix"].group_root / "survey" / "data.csv").write_text("1,2\n")
    with pytest.raises(Forbidden):
        c.delete("survey", by="bob")
    gone = c.delete("survey", by="alice")
    assert (gone.deleted, gone.members, gone.owners) == (True, [], ["alice"])
    assert reflected(world, "survey") == {key: [] for key in ("ldap", "bucket", "mydb", "slurm")}
    assert (world["posix"].group_root / "survey" / "data.csv").read_text() == "1,2\n"
    assert c.delete("survey", by="alice").deleted  # again: the same
    assert [x.name for x in c.list(member="alice")] == []
    assert [(x.name, x.deleted) for x in c.list()] == [("survey", True)]
    with pytest.raises(Invalid, match="deleted"):
        c.add_member("survey", "bob", by="alice")
    with pytest.raises(Conflict, match="deleted collaboration"):
        c.create("survey", "carol")
    with pytest.raises(Forbidden, match="Only operators"):
        c.purge("survey", by="alice")
    c.purge("survey", by="olivia")
    assert not (world["posix"].group_root / "survey").exists()
    assert world["store"].deleted == ["survey"] and world["mydb"].dropped == ["survey"]
    assert "survey" not in world["slurm"].accounts
    assert world["d"].get_group("survey") is None
    with pytest.raises(NotFound):
        c.purge("survey", by="olivia")
    again = c.create("survey", "carol")  # the name is free again; the gid is never reused
    assert again.gid != made.gid


def test_purge_needs_delete_first(world: dict[str, Any]) -> None:
    world["c"].create("survey", "alice")
    with pytest.raises(Invalid, match="delete it first"):
        world["c"].purge("survey", by="olivia")
    assert world["d"].get_group("survey") is not None


def test_a_failing_component_does_not_stop_the_others_and_a_retry_finishes(world: dict[str, Any]) -> None:
    c = world["c"]
    c.create("survey", "alice")
    c.add_member("survey", "bob", by="alice")
    world["store"].fail = True
    with pytest.raises(ComponentError, match=r"group bucket .*RGW is away.*sciplat-groups sync survey"):
        c.remove_member("survey", "bob", by="alice")
    # the directory and every other component already revoked bob
    assert world["d"].get_group("survey").members == ("alice",)
    assert world["mydb"].grants["survey"] == ["alice"] and world["slurm"].accounts["survey"] == {"alice"}
    assert world["store"].policies["survey"][0] == ["alice", "bob"]
    world["store"].fail = False
    assert c.remove_member("survey", "bob", by="alice").members == ["alice"]  # the retry finishes it
    assert world["store"].policies["survey"][0] == ["alice"]


def test_without_components_only_the_directory_is_used(directory: Directory, tmp_path: Path) -> None:
    c = Collaborations(directory, lock_dir=tmp_path, flush_cache=lambda g, u: None).create("survey", "alice")
    assert (c.directory, c.bucket, c.database, c.slurm_account) == (None, None, None, None)


def test_command_line(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setattr(Collaborations, "from_host_config", classmethod(lambda cls, **kw: world["c"]))
    main = collab_mod.main
    assert main(["create", "survey", "--owner", "alice", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["owners"] == ["alice"]
    assert main(["--as", "alice", "add", "survey", "bob"]) == 0
    capsys.readouterr()
    assert main(["--as", "bob", "add", "survey", "carol", "--json"]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["error"] == "Forbidden" and "Only the owners" in out.err
    assert main(["--as", "bob", "list", "--json"]) == 0
    assert [x["name"] for x in json.loads(capsys.readouterr().out)] == ["survey"]
    assert main(["--as", "dave", "list", "--member", "bob"]) == 1
    capsys.readouterr()
    assert main(["show", "survey"]) == 0
    assert "alice, bob" in capsys.readouterr().out
    assert main(["delete", "survey"]) == 0
    assert main(["purge", "survey"]) == 1
    assert "--yes" in capsys.readouterr().err
    assert main(["purge", "survey", "--yes"]) == 0
    assert world["d"].get_group("survey") is None


def test_provisioning_adds_associations_only_for_the_groups_the_directory_lists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sciplat_hub import slurm_accounts

    fake = FakeSlurm()
    monkeypatch.setattr(slurm_accounts.SlurmAccounts, "from_host_config", classmethod(lambda cls, *a: fake))
    ctx = provision.Context("bob", settings={"slurm_default_account": "default"}, groups=["survey"])
    provision.SlurmStep().run(ctx)
    assert fake.accounts == {"default": {"bob"}, "survey": {"bob"}}
    assert ctx.env["SCIPLAT_SLURM_ACCOUNT"] == "default"  # a collaboration is never the default account
    fake.remove_user("bob", "survey")  # removed from the collaboration: the directory no longer lists it
    provision.SlurmStep().run(provision.Context("bob", settings={}, groups=[]))
    assert fake.accounts["survey"] == set()


def test_aws_purge_removes_the_bucket_its_objects_and_the_iam_group(monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto")
    import boto3
    from botocore.exceptions import ClientError

    from sciplat_hub.storage import aws

    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto.mock_aws():
        session = boto3.Session(region_name="eu-west-1")
        store = aws.AwsObjectStore(
            region="eu-west-1", prefix="unit", session=session, admit_only_owners=False, deny_insecure_transport=False
        )
        store.ensure_user("alice", None)
        bucket = store.ensure_group_bucket("survey", ["alice"], None)
        s3 = session.client("s3", region_name="eu-west-1")
        s3.put_object(Bucket=bucket, Key="data/a.csv", Body=b"1,2\n")
        assert store.delete_group_bucket("survey") is True
        with pytest.raises(ClientError):
            s3.head_bucket(Bucket=bucket)
        with pytest.raises(ClientError):
            session.client("iam").get_group(GroupName=store.iam_group("survey"))
        assert store.delete_group_bucket("survey") is False  # again: nothing left


def test_sss_cache_is_told_one_object_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(collab_mod.shutil, "which", lambda name: "/usr/sbin/sss_cache")
    monkeypatch.setattr(collab_mod.subprocess, "run", lambda argv, **kw: calls.append(list(argv)))
    collab_mod._sss_cache("survey", ["bob", "carol"])
    # sss_cache refuses two single-object options in one call ("-G" would mean every group)
    assert calls == [["sss_cache", "-g", "survey"], ["sss_cache", "-u", "bob"], ["sss_cache", "-u", "carol"]]


def test_slurm_account_users_cancel_and_delete_commands() -> None:
    from sciplat_hub.slurm_accounts import SlurmAccounts

    calls: list[list[str]] = []

    def runner(argv: Sequence[str]) -> str:
        calls.append(list(argv))
        if argv[:5] == ["sacctmgr", "--noheader", "--parsable2", "show", "account"]:
            return "survey\n"
        if argv[:5] == ["sacctmgr", "--noheader", "--parsable2", "show", "association"]:
            return "\nbob\nalice\n"  # the account's own association has no user
        return ""

    slurm = SlurmAccounts(cluster="bed", default_limits={}, runner=runner)
    assert slurm.account_users("survey") == ["alice", "bob"]
    calls.clear()
    assert slurm.delete_account("survey") is True
    assert ["scancel", "--user=alice", "--account=survey", "--quiet"] in calls
    assert ["scancel", "--user=bob", "--account=survey", "--quiet"] in calls
    # with cluster=, sacctmgr would only remove the associations and keep the account
    assert calls[-1] == ["sacctmgr", "--immediate", "delete", "account", "where", "name=survey"]


def test_rgw_group_bucket_policy_denies_everyone_but_members_and_the_owner() -> None:
    from sciplat_hub.storage.rgw import RgwStore

    policy = RgwStore.group_bucket_policy("group-survey", ["bob", "alice"], "grp.survey")
    allow, deny = policy["Statement"]
    arns = ["arn:aws:iam:::user/alice", "arn:aws:iam:::user/bob", "arn:aws:iam:::user/grp.survey"]
    assert (allow["Effect"], allow["Principal"]) == ("Allow", {"AWS": arns})
    # a removed member's own uploads stay theirs (object ACL): only an explicit Deny shuts them out
    assert (deny["Effect"], deny["NotPrincipal"], deny["Action"]) == ("Deny", {"AWS": arns}, "s3:*")
    assert deny["Resource"] == ["arn:aws:s3:::group-survey", "arn:aws:s3:::group-survey/*"]
    emptied = RgwStore.group_bucket_policy("group-survey", [], "grp.survey")  # deleted: the owner only
    assert [s["Principal" if s["Effect"] == "Allow" else "NotPrincipal"] for s in emptied["Statement"]] == [
        {"AWS": ["arn:aws:iam:::user/grp.survey"]}
    ] * 2


def test_a_removed_member_gets_a_no_access_acl_entry_until_added_again(world: dict[str, Any]) -> None:
    c, acl = world["c"], world["acl"]
    made = c.create("survey", "alice")
    c.add_member("survey", "bob", by="alice")
    assert acl.entries.get(made.directory, set()) == set()
    c.remove_member("survey", "bob", by="alice")
    # SSSD elsewhere trusts bob's cached membership for minutes: the ACL shuts him out everywhere now
    assert acl.entries[made.directory] == {"bob"}
    c.add_member("survey", "bob", by="alice")
    assert acl.entries[made.directory] == set()
    c.delete("survey", by="alice")
    assert acl.entries[made.directory] == {"alice", "bob"}


def test_posix_acl_reads_and_writes_named_user_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    class Done:
        def __init__(self, out: str = "", err: str = "", rc: int = 0) -> None:
            self.stdout, self.stderr, self.returncode = out, err, rc

    listing = "user::rwx\nuser:bob:---\nuser:carol:--x\ngroup::rwx\nmask::rwx\nother::---\n"

    def run(argv: list[str], **kw: Any) -> Done:
        calls.append(argv)
        return Done(listing) if argv[0] == "getfacl" else Done()

    monkeypatch.setattr(collab_mod.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(collab_mod.subprocess, "run", run)
    acl = collab_mod.PosixAcl()
    assert acl.denied("/groups/survey") == {"bob"}  # carol's traverse-only entry is someone else's (a share)
    acl.deny("/groups/survey", "dave")
    acl.undeny("/groups/survey", "bob")
    assert calls[1:] == [
        ["setfacl", "-m", "u:dave:---", "--", "/groups/survey"],
        ["setfacl", "-x", "u:bob", "--", "/groups/survey"],
    ]
    monkeypatch.setattr(collab_mod.subprocess, "run", lambda argv, **kw: Done(err="Operation not supported", rc=1))
    assert acl.denied("/groups/survey") is None  # no ACLs there: nothing to do
