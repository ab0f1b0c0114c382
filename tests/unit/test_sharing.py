"""sciplat_hub.sharing without a platform: paths and ACLs, policy statements, grant SQL, input checks."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import pytest

from sciplat_hub import mydb_cli
from sciplat_hub.collab import CollabError, Forbidden, Invalid, NotFound
from sciplat_hub.sharing import (
    CLOSED_DEFAULTS,
    Sharing,
    canonical_table,
    check_mode,
    closed_default_argv,
    closed_modes,
    grant_acl_argv,
    link_name,
    link_url,
    merge_statements,
    parse_acl,
    parse_grantee,
    parse_prefix,
    prefix_statements,
    remove_statements,
    resolve_path,
    revoke_acl_argv,
    share_id,
    traversal_dirs,
)

HOME, GROUPS = PurePosixPath("/home"), PurePosixPath("/groups")


def resolve(target: str, groups: tuple[str, ...] = ("astro",)) -> tuple[str, str]:
    path, root = resolve_path(target, "alice", HOME, GROUPS, groups)
    return str(path), str(root)


# ------------------------------------------------------------------ paths


@pytest.mark.parametrize(
    ("target", "path", "root"),
    [
        ("notebooks/fit.ipynb", "/home/alice/notebooks/fit.ipynb", "/home/alice"),
        ("~/data/", "/home/alice/data", "/home/alice"),
        ("/home/alice/./data//raw", "/home/alice/data/raw", "/home/alice"),
        ("/groups/astro/results", "/groups/astro/results", "/groups/astro"),
    ],
)
def test_a_path_resolves_under_the_owners_home_or_group_directory(target: str, path: str, root: str) -> None:
    assert resolve(target) == (path, root)


@pytest.mark.parametrize("target", ["../bob/secret", "data/../../bob", "/home/alice/../bob/x", "~/a/.."])
def test_dot_dot_is_refused(target: str) -> None:
    with pytest.raises(Invalid, match=r"'\.\.'"):
        resolve(target)


@pytest.mark.parametrize("target", ["/home/bob/data", "/etc/shadow", "/homealice/x", "/tmp/x"])
def test_paths_outside_the_owners_home_and_groups_are_forbidden(target: str) -> None:
    with pytest.raises(Forbidden, match="neither in your home"):
        resolve(target)


def test_a_group_directory_of_a_group_the_owner_is_not_in_is_forbidden() -> None:
    with pytest.raises(Forbidden, match="group theory, which you are not a member of"):
        resolve("/groups/theory/paper.tex")


@pytest.mark.parametrize("target", ["", "~/", ".", "/home/alice", "/groups/astro"])
def test_the_home_or_group_directory_itself_is_not_shared(target: str) -> None:
    with pytest.raises(Invalid):
        resolve(target)


def test_traversal_covers_every_folder_from_the_root_down_to_the_parent() -> None:
    path, root = PurePosixPath("/home/alice/a/b/c.txt"), PurePosixPath("/home/alice")
    assert [str(d) for d in traversal_dirs(path, root)] == ["/home/alice", "/home/alice/a", "/home/alice/a/b"]
    assert traversal_dirs(PurePosixPath("/home/alice/x"), root) == [root]


# ------------------------------------------------------------------ ACLs


def test_a_read_only_folder_share_sets_access_and_default_entries_recursively() -> None:
    argv = grant_acl_argv("/home/alice/data", "u:20002", "ro", is_dir=True)
    assert argv == ["setfacl", "-P", "-R", "-m", "u:20002:rX,d:u:20002:rX", "--", "/home/alice/data"]


def test_a_read_write_file_share_sets_one_entry() -> None:
    assert grant_acl_argv("/home/alice/f.ipynb", "g:60010", "rw", is_dir=False) == [
        "setfacl",
        "-P",
        "-m",
        "g:60010:rwX",
        "--",
        "/home/alice/f.ipynb",
    ]


def test_revoking_a_folder_removes_access_and_default_entries() -> None:
    runs = revoke_acl_argv("/home/alice/data", "u:20002", is_dir=True)
    assert runs[0][3:5] == ["-x", "u:20002"] and "-R" in runs[0] and "-P" in runs[0]
    assert "-d" in runs[1] and runs[1][-1] == "/home/alice/data"
    assert revoke_acl_argv("/home/alice/f", "u:20002", is_dir=False) == [
        ["setfacl", "-P", "-x", "u:20002", "--", "/home/alice/f"]
    ]


def test_getfacl_output_gives_the_named_access_entries_only() -> None:
    text = """user::rwx
user:20002:--x
group::---
group:60010:r-x\t#effective:r-x
mask::r-x
other::---
default:user:20002:r-x
"""
    assert parse_acl(text) == {"u:20002": "--x", "g:60010": "r-x"}
    assert parse_acl(text, default=True) == {"u:20002": "r-x"}
    assert parse_acl("user::rwx\ndefault:user::rwx\ndefault:mask::r-x\n", default=True) == {}


# ------------------------------------------------------------------ input checks


@pytest.mark.parametrize("grantee", ["bob", "user:", "team:astro", "user:Bob", "group:a b", "user:../x"])
def test_malformed_grantees_are_invalid(grantee: str) -> None:
    with pytest.raises(Invalid, match="user:<name> or group:<name>"):
        parse_grantee(grantee)


def test_grantee_kinds() -> None:
    assert parse_grantee("user:bob") == ("user", "bob")
    assert parse_grantee("group:astro-2") == ("group", "astro-2")


@pytest.mark.parametrize("mode", ["r", "RO", "write", ""])
def test_only_ro_and_rw_modes(mode: str) -> None:
    with pytest.raises(Invalid, match="'ro'"):
        check_mode(mode)


def test_share_ids_are_stable_url_safe_and_distinct() -> None:
    a = share_id("path", "alice", "/home/alice/x", "user:bob")
    assert a == share_id("path", "alice", "/home/alice/x", "user:bob")
    assert a != share_id("path", "alice", "/home/alice/x", "group:bob")
    assert a.isalnum() and len(a) == 16


def test_link_names_and_urls() -> None:
    path = PurePosixPath("/home/alice/nb/fit model.ipynb")
    assert link_name(path, "sabcdef0123456789", set()) == "fit model.ipynb"
    assert link_name(path, "sabcdef0123456789", {"fit model.ipynb"}) == "fit model.ipynb-abcdef"
    assert link_url("alice", "fit model.ipynb") == "/hub/user-redirect/lab/tree/shared/alice/fit%20model.ipynb"


# ------------------------------------------------------------------ bucket prefixes


def test_prefixes_of_the_owners_home_bucket_only() -> None:
    assert parse_prefix("home-alice/results", "alice") == ("home-alice", "results/")
    assert parse_prefix("home-alice/a//b/", "alice") == ("home-alice", "a/b/")
    with pytest.raises(Forbidden, match="home bucket home-alice"):
        parse_prefix("home-bob/x/", "alice")
    for bad in ("home-alice", "home-alice/", "home-alice/../x/", "home-alice/a*/", "home-alice/$x/"):
        with pytest.raises(Invalid):
            parse_prefix(bad, "alice")


def test_prefix_statements_read_only_and_read_write() -> None:
    ro = prefix_statements("s1", "home-alice", "results/", ["carol", "bob", "bob"], "ro")
    assert [s["Sid"] for s in ro] == ["shares1", "shares1list"]
    assert ro[0]["Principal"] == {"AWS": ["arn:aws:iam:::user/bob", "arn:aws:iam:::user/carol"]}
    assert ro[0]["Action"] == ["s3:GetObject"]
    assert ro[0]["Resource"] == ["arn:aws:s3:::home-alice/results/*"]
    assert ro[1]["Action"] == ["s3:ListBucket"] and ro[1]["Resource"] == ["arn:aws:s3:::home-alice"]
    assert ro[1]["Condition"] == {"StringLike": {"s3:prefix": ["results/*"]}}
    rw = prefix_statements("s1", "home-alice", "results/", ["bob"], "rw")
    assert {"s3:PutObject", "s3:DeleteObject", "s3:GetObject"} <= set(rw[0]["Action"])


def test_merging_keeps_the_owners_other_statements_and_replaces_the_shares_own() -> None:
    own = {"Sid": "mine", "Effect": "Deny", "Principal": "*", "Action": "s3:DeleteBucket", "Resource": "x"}
    other_share = prefix_statements("s2", "home-alice", "b/", ["carol"], "ro")
    policy = {"Version": "2012-10-17", "Statement": [own, *other_share]}
    first = merge_statements(policy, "s1", prefix_statements("s1", "home-alice", "a/", ["bob"], "ro"))
    again = merge_statements(first, "s1", prefix_statements("s1", "home-alice", "a/", ["bob"], "rw"))
    sids = [s["Sid"] for s in again["Statement"]]
    assert sids == ["mine", "shares2", "shares2list", "shares1", "shares1list"]
    assert "s3:PutObject" in again["Statement"][3]["Action"]
    assert policy["Statement"] == [own, *other_share]  # the input is not changed
    removed = remove_statements(again, "s1")
    assert removed is not None and [s["Sid"] for s in removed["Statement"]] == ["mine", "shares2", "shares2list"]
    assert remove_statements({"Statement": prefix_statements("s1", "home-alice", "a/", ["bob"], "ro")}, "s1") is None
    assert remove_statements(None, "s1") is None
    assert merge_statements(None, "s1", [])["Version"] == "2012-10-17"


# ------------------------------------------------------------------ tables


def test_table_names() -> None:
    assert canonical_table("stars") == "public.stars"
    assert canonical_table("survey.stars_2") == "survey.stars_2"
    for bad in ("Stars", "a.b.c", "stars; drop table x", '"x"', ""):
        with pytest.raises(Invalid):
            canonical_table(bad)


class FakeConn:
    """Records the SQL that grant_table/revoke_table send (rendered without a server)."""

    def __init__(self, sequences: list[tuple[str, str]] | None = None, remaining: list[tuple[bool]] | None = None):
        self.sent: list[str] = []
        self.sequences = sequences or []
        self.remaining = remaining or []
        self.info = SimpleNamespace(dbname="u_alice")

    def transaction(self) -> Any:
        import contextlib

        return contextlib.nullcontext()

    def execute(self, query: Any, params: Any = None) -> Any:
        text = query if isinstance(query, str) else query.as_string(None)
        self.sent.append(text)
        if "to_regclass" in text:
            rows: list[Any] = [(16400, "public", "stars", True)]
        elif "pg_depend" in text:
            rows = list(self.sequences)
        elif "aclexplode" in text:
            rows = list(self.remaining)
        elif "datdba" in text:
            rows = [("u_alice",)]
        else:
            rows = []
        return SimpleNamespace(fetchone=lambda: rows[0] if rows else None, fetchall=lambda: rows)


def test_read_only_table_grant_sql() -> None:
    conn = FakeConn(sequences=[("public", "stars_id_seq")])
    assert mydb_cli.grant_table(conn, "public.stars", "u_bob", write=False) == ("public", "stars")  # type: ignore[arg-type]
    grants = [s for s in conn.sent if s.startswith(("GRANT", "REVOKE"))]
    assert grants == [
        'GRANT CONNECT ON DATABASE "u_alice" TO "u_bob"',
        'GRANT USAGE ON SCHEMA "public" TO "u_bob"',
        'REVOKE ALL ON "public"."stars" FROM "u_bob"',
        'GRANT SELECT ON "public"."stars" TO "u_bob"',
        'REVOKE ALL ON SEQUENCE "public"."stars_id_seq" FROM "u_bob"',
    ]


def test_read_write_table_grant_sql_for_a_group() -> None:
    conn = FakeConn(sequences=[("public", "stars_id_seq")])
    mydb_cli.grant_table(conn, "stars", "g_astro", write=True)  # type: ignore[arg-type]
    assert 'GRANT SELECT, INSERT, UPDATE, DELETE ON "public"."stars" TO "g_astro"' in conn.sent
    assert 'GRANT USAGE, SELECT ON SEQUENCE "public"."stars_id_seq" TO "g_astro"' in conn.sent


def test_revoking_the_last_table_also_revokes_usage_and_connect() -> None:
    conn = FakeConn()
    mydb_cli.revoke_table(conn, "stars", "u_bob")  # type: ignore[arg-type]
    assert 'REVOKE ALL ON "public"."stars" FROM "u_bob"' in conn.sent
    assert 'REVOKE USAGE ON SCHEMA "public" FROM "u_bob"' in conn.sent
    assert 'REVOKE CONNECT ON DATABASE "u_alice" FROM "u_bob"' in conn.sent
    still = FakeConn(remaining=[(True,)])
    mydb_cli.revoke_table(still, "stars", "u_bob")  # type: ignore[arg-type]
    assert not any(s.startswith(("REVOKE USAGE", "REVOKE CONNECT")) for s in still.sent)


# ------------------------------------------------------------------ recipients' links (on a local directory)


class FakeDirectory:
    def __init__(self, uid: int, gid: int) -> None:
        self.uid, self.gid = uid, gid

    def get_user(self, name: str) -> Any:
        return SimpleNamespace(uid=self.uid, gid=self.gid) if name in ("alice", "bob", "carol") else None

    def get_group(self, name: str) -> Any:
        return SimpleNamespace(name=name, gid=60010, members=("alice", "bob", "carol")) if name == "astro" else None

    def groups_of(self, username: str) -> list[Any]:
        return [SimpleNamespace(name="astro")]


def sharing_in(tmp_path: Path) -> Sharing:
    for user in ("alice", "bob", "carol"):
        (tmp_path / "home" / user).mkdir(parents=True)
    posix = SimpleNamespace(home_root=tmp_path / "home", group_root=tmp_path / "groups", public_root=None)
    return Sharing(posix=posix, directory=FakeDirectory(os.getuid(), os.getgid()))


def test_every_group_member_but_the_owner_gets_a_link_and_loses_it_on_unshare(tmp_path: Path) -> None:
    sharing = sharing_in(tmp_path)
    target = str(tmp_path / "home" / "alice" / "fit.ipynb")
    links = sharing._sync_links("alice", "group:astro", target, "fit.ipynb", {})
    assert sorted(links) == ["bob", "carol"]
    link = tmp_path / "home" / "bob" / "shared" / "alice" / "fit.ipynb"
    assert os.readlink(link) == target and links["bob"] == str(link)
    assert not (tmp_path / "home" / "alice" / "shared").exists()
    # idempotent, and a member who left loses the link
    assert sharing._sync_links("alice", "user:bob", target, "fit.ipynb", links) == {"bob": str(link)}
    assert not (tmp_path / "home" / "carol" / "shared" / "alice").exists()
    sharing._unlink("bob", "alice", "fit.ipynb", target)
    assert not link.parent.exists() and (tmp_path / "home" / "bob" / "shared").is_dir()


def test_links_never_follow_the_recipients_symlinks_nor_replace_their_files(tmp_path: Path) -> None:
    sharing = sharing_in(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "home" / "bob" / "shared").symlink_to(elsewhere)
    assert sharing._link("bob", "alice", "x", "/home/alice/x") is None
    assert list(elsewhere.iterdir()) == []
    (tmp_path / "home" / "carol" / "shared" / "alice").mkdir(parents=True)
    own = tmp_path / "home" / "carol" / "shared" / "alice" / "x"
    own.write_text("carol's own file")
    assert sharing._link("carol", "alice", "x", "/home/alice/x") is None
    assert own.read_text() == "carol's own file"


def test_sharing_with_an_unknown_user_or_group_is_not_found(tmp_path: Path) -> None:
    sharing = sharing_in(tmp_path)
    with pytest.raises(NotFound, match="no user dave"):
        sharing.create("alice", "path", "x", "user:dave")
    with pytest.raises(NotFound, match="no group nope"):
        sharing.create("alice", "path", "x", "group:nope")
    with pytest.raises(Invalid, match="yourself"):
        sharing.create("alice", "path", "x", "user:alice")
    with pytest.raises(Invalid, match="kind"):
        sharing.create("alice", "file", "x", "user:bob")


def test_sign_in_prunes_links_of_ended_shares_and_nothing_of_the_users_own(tmp_path: Path) -> None:
    sharing = sharing_in(tmp_path)
    alice = tmp_path / "home" / "alice"
    kept = str(alice / "x")
    assert sharing._link("bob", "alice", "x", kept) is not None
    assert sharing._link("bob", "alice", "old", str(alice / "old")) is not None
    assert sharing._link("bob", "carol", "gone", str(tmp_path / "home" / "carol" / "gone")) is not None
    shared = tmp_path / "home" / "bob" / "shared"
    (shared / "alice" / "mine.txt").write_text("bob's own file")
    (shared / "alice" / "etc").symlink_to("/etc")  # bob's own link elsewhere
    sharing._prune_links("bob", {("alice", "x"): kept})
    assert sorted(p.name for p in (shared / "alice").iterdir()) == ["etc", "mine.txt", "x"]
    assert os.readlink(shared / "alice" / "x") == kept
    assert not (shared / "carol").exists()


class FakeStore:
    """Bucket policies of users' buckets, as RgwStore.bucket_policy/set_bucket_policy keep them."""

    def __init__(self, users: set[str], policy: dict[str, Any] | None = None) -> None:
        self.users, self.policy, self.writes = users, policy, 0

    def has_user(self, name: str) -> bool:
        return name in self.users

    def bucket_policy(self, bucket: str, owner: str) -> dict[str, Any] | None:
        assert (bucket, owner) == ("home-alice", "alice")
        return self.policy

    def set_bucket_policy(self, bucket: str, owner: str, policy: dict[str, Any] | None) -> None:
        self.policy, self.writes = policy, self.writes + 1


def test_a_prefix_share_with_a_group_names_its_members_with_storage_and_unsharing_keeps_the_rest(
    tmp_path: Path,
) -> None:
    own = {"Sid": "owner-rule", "Effect": "Deny", "Principal": "*", "Action": "s3:DeleteBucket", "Resource": "x"}
    store = FakeStore({"alice", "bob"}, {"Version": "2012-10-17", "Statement": [own]})
    sharing = sharing_in(tmp_path)
    sharing.store = store
    detail = sharing._apply_prefix("alice", "home-alice/cat/", "group:astro", "ro", "s1")
    assert detail == {"bucket": "home-alice", "prefix": "cat/", "principals": ["bob"]}  # carol: no S3 account
    assert store.policy is not None and [s["Sid"] for s in store.policy["Statement"]] == [
        "owner-rule",
        "shares1",
        "shares1list",
    ]
    assert store.policy["Statement"][1]["Principal"] == {"AWS": ["arn:aws:iam:::user/bob"]}
    sharing._apply_prefix("alice", "home-alice/cat/", "group:astro", "ro", "s1")
    assert store.writes == 1  # nothing changed: no second write
    share = SimpleNamespace(id="s1", owner="alice", target="home-alice/cat/")
    sharing._revoke_prefix(share)  # type: ignore[arg-type]
    assert store.policy == {"Version": "2012-10-17", "Statement": [own]}
    sharing.store = None
    with pytest.raises(Invalid, match="no object storage"):
        sharing._apply_prefix("alice", "home-alice/cat/", "user:bob", "ro", "s1")


# ------------------------------------------------------------------ closing the folders passed through


def test_every_child_but_the_way_to_the_share_loses_its_other_permissions_and_symlinks_are_skipped() -> None:
    children = [
        ("notes.txt", stat.S_IFREG | 0o644),
        ("other", stat.S_IFDIR | 0o755),
        ("project", stat.S_IFDIR | 0o755),  # on the way to project/results
        ("run.sh", stat.S_IFREG | 0o4757),
        ("public", stat.S_IFLNK | 0o777),
        ("private", stat.S_IFDIR | 0o700),
        ("team", stat.S_IFDIR | 0o2775),
    ]
    assert closed_modes(children, "project") == {"notes.txt": 0o640, "other": 0o750, "run.sh": 0o4750, "team": 0o2770}
    assert closed_modes([("notes.txt", stat.S_IFREG | 0o640)], "project") == {}  # nothing left to do


def test_a_folder_gets_the_default_other_entry_once_and_keeps_its_other_default_entries() -> None:
    plain = "user::rwx\ngroup::---\nother::---\n"
    assert closed_default_argv("/home/alice", plain) == [
        "setfacl",
        "-P",
        "-d",
        "-m",
        CLOSED_DEFAULTS,
        "--",
        "/home/alice",
    ]
    assert CLOSED_DEFAULTS == "u::rwx,g::r-x,o::---"
    shared = (
        "user::rwx\nuser:20002:r-x\ngroup::r-x\nmask::r-x\nother::r-x\ndefault:user::rwx\n"
        "default:user:20002:r-x\ndefault:group::r-x\ndefault:mask::r-x\ndefault:other::r-x\n"
    )
    assert closed_default_argv("/home/alice/proj", shared) == [
        "setfacl",
        "-P",
        "-d",
        "-m",
        "o::---",
        "--",
        "/home/alice/proj",
    ]
    done = shared.replace("default:other::r-x", "default:other::---\t# closed")
    assert closed_default_argv("/home/alice/proj", done) is None


def acl_runs(sharing: Sharing) -> list[list[str]]:
    """getfacl and setfacl (not on this machine, nor on tmpfs everywhere): recorded; getfacl shows no ACL."""
    runs: list[list[str]] = []

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        runs.append(argv)
        out = "user::rwx\ngroup::r-x\nother::r-x\n" if argv[0] == "getfacl" else ""
        return subprocess.CompletedProcess(argv, 0, out, "")

    sharing._run = run
    return runs


def test_closing_a_home_chmods_the_real_children_and_asks_for_the_default_entry(tmp_path: Path) -> None:
    sharing = sharing_in(tmp_path)
    home = tmp_path / "home" / "alice"
    (home / "project" / "results").mkdir(parents=True)
    (home / "other").mkdir()
    for path, mode in [
        (home / "notes.txt", 0o644),
        (home / "project" / "other-file", 0o644),
        (home / "other" / "f", 0o644),
    ]:
        path.write_text("x")
        path.chmod(mode)
    (home / "project").chmod(0o755)
    (home / "other").chmod(0o755)
    (home / "project" / "results").chmod(0o755)
    outside = tmp_path / "outside.txt"
    outside.write_text("not alice's")
    outside.chmod(0o644)
    (home / "link").symlink_to(outside)
    runs = acl_runs(sharing)
    root = PurePosixPath(str(home))
    sharing._close_to_others(root / "project" / "results", root)
    modes = {
        p: stat.S_IMODE(os.lstat(home / p).st_mode) for p in ("notes.txt", "other", "project", "project/other-file")
    }
    assert modes == {"notes.txt": 0o640, "other": 0o750, "project": 0o755, "project/other-file": 0o640}
    assert stat.S_IMODE((home / "project" / "results").stat().st_mode) == 0o755  # the shared item: untouched
    assert stat.S_IMODE((home / "other" / "f").stat().st_mode) == 0o644  # not recursive: other/ closes it
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644  # the symlink was not followed
    assert [argv for argv in runs if argv[0] == "setfacl"] == [
        ["setfacl", "-P", "-d", "-m", CLOSED_DEFAULTS, "--", str(home)],
        ["setfacl", "-P", "-d", "-m", CLOSED_DEFAULTS, "--", str(home / "project")],
    ]


def test_a_folder_swapped_for_a_symlink_is_refused_with_a_sentence(tmp_path: Path) -> None:
    sharing = sharing_in(tmp_path)
    home = tmp_path / "home" / "alice"
    (tmp_path / "elsewhere" / "x").mkdir(parents=True)
    victim = tmp_path / "elsewhere" / "secret"
    victim.write_text("s")
    victim.chmod(0o644)
    (home / "project").symlink_to(tmp_path / "elsewhere")
    acl_runs(sharing)
    root = PurePosixPath(str(home))
    with pytest.raises(CollabError, match=r"could not be closed to other users .* nothing was shared"):
        sharing._close_to_others(root / "project" / "x", root)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
