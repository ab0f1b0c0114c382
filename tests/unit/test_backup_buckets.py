"""The `buckets` backup kind (sciplat_hub.backup_buckets) and backups on rebuilt hosts.

Pure parts: the mirror's file names, the incremental sync decision, the restore plan,
how a host stands to a repository, the PostgreSQL system identifiers. Then a whole
mirror -> restore round trip against moto's S3 (a stand-in for radosgw), and the
state handling of `sciplat-backup init/run/restore/resume` on a host rebuilt onto a
repository that already holds backups.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from sciplat_hub import backup
from sciplat_hub import backup_buckets as bb

# ------------------------------------------------------------------ mirror file names


def test_object_keys_become_one_safe_file_name_each() -> None:
    assert bb.object_file("data/run 1/x.fits") == "data%2Frun%201%2Fx.fits"
    names = [bb.object_file(k) for k in ("a", "a/b", "a%2Fb", "../etc/passwd", ".", "..", "x" * 1000, "é")]
    assert len(set(names)) == len(names)  # never two keys in one file
    assert all("/" not in n and n not in (".", "..") and len(n.encode()) <= 240 for n in names)
    assert bb.object_file("..").startswith("#") and bb.object_file("x" * 1000).startswith("#")


# ------------------------------------------------------------------ incremental sync


def entry(key: str, size: int, etag: str, **extra: Any) -> dict[str, Any]:
    return {"key": key, "size": size, "etag": etag, "md5": etag, "file": bb.object_file(key), **extra}


def test_sync_downloads_only_new_and_changed_objects_and_removes_deleted_ones() -> None:
    previous = [
        entry("same", 10, "e1", sha256="s1"),
        entry("resized", 10, "e2"),
        entry("rewritten", 10, "e3"),
        entry("lost-file", 10, "e4"),
        entry("deleted", 10, "e5"),
    ]
    listing = [
        bb.Listed("same", 10, "e1", owner="alice"),
        bb.Listed("resized", 11, "e2"),
        bb.Listed("rewritten", 10, "e3x"),
        bb.Listed("lost-file", 10, "e4"),
        bb.Listed("new", 5, "e6"),
    ]
    files = {"same": 10, "resized": 10, "rewritten": 10, "deleted": 10, "stray.bin": 3}
    plan = bb.plan_sync(previous, listing, files)
    assert [e["key"] for e in plan.keep] == ["same"]
    assert plan.keep[0]["sha256"] == "s1" and plan.keep[0]["owner"] == "alice"
    assert sorted(i.key for i in plan.download) == ["lost-file", "new", "resized", "rewritten"]
    assert plan.remove == ["deleted", "stray.bin"]


def test_a_truncated_mirror_file_is_downloaded_again() -> None:
    plan = bb.plan_sync([entry("k", 10, "e")], [bb.Listed("k", 10, "e")], {"k": 7})
    assert [i.key for i in plan.download] == ["k"] and not plan.keep


def test_the_first_sync_downloads_everything() -> None:
    plan = bb.plan_sync([], [bb.Listed("a", 1, "x"), bb.Listed("b", 2, "y")], {})
    assert [i.key for i in plan.download] == ["a", "b"] and plan.remove == []


# ------------------------------------------------------------------ restore plan


MANIFEST: dict[str, Any] = {
    "format": 1,
    "users": [
        {"uid": "alice", "keys": [{"access_key": "AKALICE", "secret_key": "s"}]},
        {"uid": "bob", "keys": [{"access_key": "AKBOB", "secret_key": "s"}]},
        {"uid": "grp.astro", "keys": [{"access_key": "AKGRP", "secret_key": "s"}]},
    ],
    "buckets": [
        {
            "name": "home-alice",
            "owner": "alice",
            "objects": [
                entry("same", 3, "m1"),
                entry("multipart", 9, "abc-2", md5="m2"),
                entry("changed", 3, "m3"),
                entry("missing", 3, "m4"),
            ],
        },
        {"name": "home-bob", "owner": "bob", "objects": [entry("b", 1, "mb")]},
        {"name": "group-astro", "owner": "grp.astro", "objects": [entry("g", 1, "mg")]},
    ],
}


def test_restore_plan_creates_what_is_missing_and_uploads_what_differs() -> None:
    plan = bb.plan_restore(
        MANIFEST,
        users={"alice": {"AKNEW"}, "grp.astro": {"AKGRP"}},  # alice signed in again and got a new key
        buckets={"home-alice": "alice", "group-astro": "grp.astro"},
        objects={
            "home-alice": {
                "same": (3, "m1"),
                "multipart": (9, "m2"),  # re-uploaded in one part: its ETag is its MD5 now
                "changed": (3, "zz"),
                "new-since": (5, "m9"),
            },
            "group-astro": {"g": (1, "mg")},
        },
    )
    assert plan.create_users == ["bob"]
    assert plan.add_keys == {"alice": ["AKALICE"]}
    assert plan.create_buckets == ["home-bob"]
    assert plan.conflicts == []
    assert sorted((b, e["key"]) for b, e in plan.upload) == [
        ("home-alice", "changed"),
        ("home-alice", "missing"),
        ("home-bob", "b"),
    ]
    assert plan.unchanged == 3
    assert plan.kept_extra == 1  # new-since stays


def test_a_bucket_that_belongs_to_someone_else_now_is_not_touched() -> None:
    plan = bb.plan_restore(MANIFEST, users={}, buckets={"home-bob": "mallory"}, objects={})
    assert plan.conflicts == ["home-bob"]
    assert "home-bob" not in plan.create_buckets
    assert all(b != "home-bob" for b, _ in plan.upload)


def test_same_object_needs_the_size_and_the_etag_or_md5() -> None:
    e = entry("k", 4, "abc-2", md5="d41d")
    assert bb.same_object(e, (4, "abc-2")) and bb.same_object(e, (4, "d41d"))
    assert not bb.same_object(e, (5, "d41d")) and not bb.same_object(e, (4, "other"))
    assert not bb.same_object(e, None)


# ------------------------------------------------------------------ mirror and restore against moto's S3


ENDPOINT = "http://rgw.backup-test.invalid:7480"


class FakeRgw:
    """The admin side of RgwStore the buckets backup uses, over moto's S3."""

    region = "us-east-1"

    def __init__(self, s3: Any) -> None:
        self.s3 = s3
        self.users: dict[str, dict[str, Any]] = {}
        self.owners: dict[str, str] = {}
        self.policies: dict[str, dict[str, Any]] = {}
        self.quotas: dict[str, Any] = {}
        self.suspensions: list[tuple[str, bool]] = []

    def add_user(self, uid: str, access: str, quota: dict[str, Any] | None = None) -> tuple[str, str]:
        self.users[uid] = {
            "uid": uid,
            "display_name": uid.upper(),
            "email": "",
            "suspended": False,
            "max_buckets": 1000,
            "keys": [{"access_key": access, "secret_key": "secret-" + access}],
            "quota": quota,
        }
        return access, "secret-" + access

    def all_users(self) -> list[str]:
        return sorted(self.users)

    def all_buckets(self) -> list[dict[str, Any]]:
        return [{"name": n, "owner": o, "quota": None} for n, o in sorted(self.owners.items())]

    def user_record(self, uid: str) -> dict[str, Any] | None:
        return json.loads(json.dumps(self.users[uid])) if uid in self.users else None

    def access_keys(self, uid: str) -> set[str] | None:
        return {k["access_key"] for k in self.users[uid]["keys"]} if uid in self.users else None

    def restore_user(self, record: dict[str, Any]) -> str:
        if record["uid"] in self.users:
            have = self.access_keys(record["uid"]) or set()
            missing = [k for k in record["keys"] if k["access_key"] not in have]
            self.users[record["uid"]]["keys"] += missing
            return "keys-added" if missing else "present"
        self.users[record["uid"]] = {**record, "quota": None}
        return "created"

    def set_quota_record(self, uid: str, quota: dict[str, Any] | None) -> None:
        self.quotas[uid] = quota

    def set_suspended(self, uid: str, suspended: bool) -> None:
        self.suspensions.append((uid, suspended))
        self.users[uid]["suspended"] = suspended

    def set_bucket_quota(self, bucket: str, owner: str, quota: dict[str, Any]) -> None:
        raise AssertionError("no bucket quotas in this test")

    def create_bucket_with(self, bucket: str, keys: tuple[str, str]) -> bool:
        if bucket in self.owners:
            return False
        self.s3.create_bucket(Bucket=bucket)
        self.owners[bucket] = next(u for u, r in self.users.items() if r["keys"][0]["access_key"] == keys[0])
        return True

    def policy_with(self, bucket: str, keys: tuple[str, str]) -> dict[str, Any] | None:
        return self.policies.get(bucket)

    def put_policy_with(self, bucket: str, keys: tuple[str, str], policy: dict[str, Any]) -> None:
        self.policies[bucket] = policy

    def s3_endpoint(self) -> str:
        return ENDPOINT


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Any:
    moto = pytest.importorskip("moto")
    import boto3

    monkeypatch.setenv("MOTO_S3_CUSTOM_ENDPOINTS", ENDPOINT)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with moto.mock_aws():
        yield boto3.client("s3", endpoint_url=ENDPOINT, region_name="us-east-1")


def _objects(s3: Any, bucket: str) -> dict[str, tuple[str, str]]:
    """key -> (sha256, content type) of what the bucket holds."""
    found = {}
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        answer = s3.get_object(Bucket=bucket, Key=item["Key"])
        found[item["Key"]] = (hashlib.sha256(answer["Body"].read()).hexdigest(), answer["ContentType"])
    return found


def test_mirror_then_restore_brings_users_buckets_policies_and_objects_back(moto_s3: Any, tmp_path: Path) -> None:
    s3, store = moto_s3, FakeRgw(moto_s3)
    store.add_user("alice", "AKALICE", quota={"enabled": True, "max_size": 10**9, "max_objects": -1})
    store.add_user("sciplat-backup", "AKBACKUP")
    store.add_user("dave", "AKDAVE")  # owns no bucket (uses a group's): kept all the same
    store.create_bucket_with("home-alice", ("AKALICE", "secret-AKALICE"))
    store.create_bucket_with("sciplat-backup", ("AKBACKUP", "secret-AKBACKUP"))
    store.policies["home-alice"] = {"Version": "2012-10-17", "Statement": [{"Sid": "share"}]}
    payloads = {"a.txt": b"hello", "dir/b.bin": bytes(range(256)) * 400, "../odd key": b"x"}
    for key, data in payloads.items():
        s3.put_object(Bucket="home-alice", Key=key, Body=data, ContentType="application/x-test")
    s3.put_object(Bucket="sciplat-backup", Key="restic/config", Body=b"not copied")
    settings = bb.BucketSettings(mirror=tmp_path / "mirror", skip_users=["sciplat-backup"], parallel=4)

    first = bb.mirror(settings, store, log=lambda _: None)
    assert (first["buckets"], first["objects"], first["downloaded"]) == (1, 3, 3)
    manifest = json.loads((tmp_path / "mirror" / bb.MANIFEST).read_text())
    assert [u["uid"] for u in manifest["users"]] == ["alice", "dave"]
    assert manifest["users"][0]["keys"] == [{"access_key": "AKALICE", "secret_key": "secret-AKALICE"}]
    [bucket] = manifest["buckets"]
    assert bucket["policy"]["Statement"] == [{"Sid": "share"}]
    sums = {o["key"]: o["sha256"] for o in bucket["objects"]}
    assert sums == {k: hashlib.sha256(v).hexdigest() for k, v in payloads.items()}
    assert oct((tmp_path / "mirror" / bb.MANIFEST).stat().st_mode & 0o777) == "0o600"

    # incremental: one object changed, one deleted, one new
    s3.put_object(Bucket="home-alice", Key="a.txt", Body=b"hello again", ContentType="text/plain")
    s3.delete_object(Bucket="home-alice", Key="dir/b.bin")
    s3.put_object(Bucket="home-alice", Key="c", Body=b"c")
    second = bb.mirror(settings, store, log=lambda _: None)
    assert (second["objects"], second["downloaded"], second["removed"]) == (3, 2, 1)
    files = sorted(p.name for p in (tmp_path / "mirror" / bb.OBJECTS / "home-alice").iterdir())
    assert files == sorted(bb.object_file(k) for k in ("a.txt", "c", "../odd key"))
    before = _objects(s3, "home-alice")

    # the platform loses alice, her bucket and her objects; a new-comer's bucket exists
    for key in list(before):
        s3.delete_object(Bucket="home-alice", Key=key)
    s3.delete_bucket(Bucket="home-alice")
    del store.owners["home-alice"], store.users["alice"], store.users["dave"], store.policies["home-alice"]
    counts = bb.restore_from(tmp_path / "mirror", settings, store, log=lambda _: None)
    assert counts["users_created"] == 2 and counts["buckets_created"] == 1 and counts["uploaded"] == 3
    assert store.users["dave"]["keys"][0]["access_key"] == "AKDAVE"
    assert store.users["alice"]["keys"][0]["access_key"] == "AKALICE"
    assert store.policies["home-alice"]["Statement"] == [{"Sid": "share"}]
    assert store.quotas["alice"] == {"enabled": True, "max_size": 10**9, "max_objects": -1}
    assert _objects(s3, "home-alice") == before
    assert before["a.txt"][1] == "text/plain"

    # again: nothing to do; an object written since is kept
    s3.put_object(Bucket="home-alice", Key="after", Body=b"new")
    again = bb.restore_from(tmp_path / "mirror", settings, store, log=lambda _: None)
    assert again["uploaded"] == 0 and again["unchanged"] == 3 and again["kept_not_in_backup"] == 1


def test_a_suspended_users_buckets_are_copied_once_and_the_user_stays_suspended(moto_s3: Any, tmp_path: Path) -> None:
    """A suspended user's keys are refused: the suspension is lifted only to copy a bucket the
    mirror lacks, and put back; a restore that re-creates the user suspends it again."""
    s3, store = moto_s3, FakeRgw(moto_s3)
    store.add_user("carol", "AKCAROL")
    store.create_bucket_with("home-carol", ("AKCAROL", "secret-AKCAROL"))
    s3.put_object(Bucket="home-carol", Key="k", Body=b"data")
    store.users["carol"]["suspended"] = True
    settings = bb.BucketSettings(mirror=tmp_path / "mirror", skip_users=[], parallel=2)

    assert bb.mirror(settings, store, log=lambda _: None)["downloaded"] == 1
    assert store.suspensions == [("carol", False), ("carol", True)]
    again = bb.mirror(settings, store, log=lambda _: None)
    assert (again["downloaded"], again["objects"]) == (0, 1)
    assert store.suspensions == [("carol", False), ("carol", True)]  # the copy is kept, no lifting

    s3.delete_object(Bucket="home-carol", Key="k")
    s3.delete_bucket(Bucket="home-carol")
    del store.users["carol"], store.owners["home-carol"]
    store.suspensions.clear()
    counts = bb.restore_from(tmp_path / "mirror", settings, store, log=lambda _: None)
    assert counts["users_created"] == 1 and counts["uploaded"] == 1
    assert store.suspensions == [("carol", True)] and store.users["carol"]["suspended"] is True


def test_a_restore_refuses_a_directory_without_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(bb.BucketBackupError, match="not a buckets manifest"):
        bb.restore_from(tmp_path, bb.BucketSettings(mirror=tmp_path, skip_users=[]), object())


# ------------------------------------------------------------------ rebuilt hosts


@pytest.mark.parametrize(
    ("backups", "history", "pending", "foreign", "expected"),
    [
        (0, False, False, "", "empty"),  # a new platform: the first backup runs
        (0, True, False, "", "empty"),
        (3, True, False, "", "ours"),
        (3, False, False, "", "restore-first"),  # a rebuilt host: restore first
        (3, True, True, "", "restore-first"),  # still waiting
        (0, False, True, "", "restore-first"),
        (3, False, False, "another cluster", "other-cluster"),
    ],
)
def test_how_a_host_stands_to_its_repository(
    backups: int, history: bool, pending: bool, foreign: str, expected: str
) -> None:
    assert backup.repository_state(backups, history, pending, foreign) == expected


def test_system_identifiers_of_the_cluster_and_of_the_stanza() -> None:
    controldata = "pg_control version number:  1300\nDatabase system identifier:           7412345678901234567\n"
    assert backup.parse_system_id(controldata) == 7412345678901234567
    assert backup.parse_system_id("no such file") is None
    info = {"db": [{"id": 1, "system-id": 111, "version": "15"}, {"id": 2, "system-id": 222, "version": "15"}]}
    assert backup.stanza_system_id(info) == 222
    assert backup.stanza_system_id({"status": {"code": 1}}) is None


def rebuilt_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshots: int) -> backup.Settings:
    settings = backup.Settings.from_dict(
        {
            "hostname": "gw",
            "whats": ["homes", "buckets"],
            "s3": {"endpoint": "https://s3.example.org", "bucket": "b", "access_key": "A", "secret_key": "S"},
            "restic_password": "pw",
            "textfile_directory": str(tmp_path / "textfile"),
            "state_directory": str(tmp_path / "state"),
        }
    )
    monkeypatch.setattr(backup, "ensure_bucket", lambda target: False)
    monkeypatch.setattr(backup, "restic_init", lambda s, what: False)
    fake = [{"id": f"{i:064x}", "short_id": f"{i:08x}", "time": "2026-12-04T10:00:00Z"} for i in range(snapshots)]
    monkeypatch.setattr(backup, "restic_snapshots", lambda s, what: fake if what == "homes" else [])
    return settings


def test_a_rebuilt_host_does_not_back_up_its_empty_services_over_the_old_backups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = rebuilt_host(tmp_path, monkeypatch, snapshots=2)
    found = backup.init(settings)
    assert found["first_backup"] == ["buckets"]  # its repository is empty: backed up right away
    assert found["restore_first"] == ["homes"] and "sciplat restore -i DIR --what all" in found["message"]
    assert found["kinds"]["homes"] == {
        "repository": "restore-first",
        "backups": 2,
        "reason": "the homes repository holds backups from before this host was (re)built",
    }
    assert found["changed"]
    assert backup.init(settings)["changed"] is False  # a second deploy changes nothing

    monkeypatch.setattr(backup, "_backup_homes", lambda s: pytest.fail("backed up over the old backups"))
    with pytest.raises(backup.BackupError, match="restore first"):
        backup.backup(settings, "homes")
    refused = backup.read_state(settings, "homes")
    assert refused["ok"] is False and "sciplat-backup resume homes" in refused["error"]
    assert "last_success" not in refused and refused["restore_pending"]
    [row] = [r for r in backup.status(settings) if r["what"] == "homes"]
    assert row["ok"] is False and "sciplat restore" in row["error"]

    # the restore makes the repository this host's: backups run again, and stay allowed
    monkeypatch.setattr(backup, "_restore_homes", lambda s, to, paths: {"restored": "homes"})
    backup.restore(settings, "homes")
    assert "restore_pending" not in backup.read_state(settings, "homes")
    assert backup.init(settings)["kinds"]["homes"]["repository"] == "ours"
    monkeypatch.setattr(backup, "_backup_homes", lambda s: {"snapshot": "x", "size_bytes": 1, "backups": 3})
    assert backup.backup(settings, "homes")["ok"]


def test_resume_starts_afresh_without_restoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = rebuilt_host(tmp_path, monkeypatch, snapshots=1)
    backup.init(settings)
    answer = backup.resume(settings, "homes")
    assert answer == {"what": "homes", "resumed": True, "was_waiting": True}
    assert backup.init(settings)["restore_first"] == []


def test_a_new_postgresql_cluster_beside_an_old_repository_waits_for_the_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = backup.Settings.from_dict(
        {
            "whats": ["db"],
            "s3": {"endpoint": "https://s3.example.org", "bucket": "b"},
            "state_directory": str(tmp_path / "state"),
            "textfile_directory": str(tmp_path / "textfile"),
        }
    )
    info = {"status": {"code": 0}, "db": [{"id": 1, "system-id": 111}], "backup": []}
    monkeypatch.setattr(backup, "ensure_bucket", lambda target: False)
    monkeypatch.setattr(backup, "pgbackrest_info", lambda s: info)
    monkeypatch.setattr(backup, "pg_system_id", lambda s: 222)
    found = backup.init(settings)
    assert found["kinds"]["db"]["repository"] == "other-cluster"
    assert "another PostgreSQL cluster" in found["kinds"]["db"]["reason"]
    assert "--what db" in found["kinds"]["db"]["reason"]
    assert found["first_backup"] == [] and found["restore_first"] == ["db"]
    with pytest.raises(backup.BackupError, match="another PostgreSQL cluster"):
        backup.resume(settings, "db")
    # the same cluster (a host whose state directory was lost): its own repository
    monkeypatch.setattr(backup, "pg_system_id", lambda s: 111)
    (tmp_path / "state" / "db.json").unlink()
    assert backup.init(settings)["kinds"]["db"]["repository"] == "empty"


def test_sciplat_backup_lists_a_waiting_kind_as_restore_first(capsys: pytest.CaptureFixture[str]) -> None:
    from sciplat.commands import backup as backup_cmd

    backup_cmd.print_status(
        [
            {"what": "db", "host": "data", "ok": True, "last_run": 1.0, "last_success": 1.0, "age_seconds": 60},
            {
                "what": "homes",
                "host": "gw",
                "ok": False,
                "error": "waits",
                "restore_pending": {"reason": "the homes repository holds backups from before"},
            },
        ]
    )
    out = capsys.readouterr().out
    assert "restore first" in out and "sciplat restore -i DIR --what all" in out


# ------------------------------------------------------------------ RgwStore: users back with their keys


class RecordingRgw:
    """RgwStore's admin calls recorded, with a user table behind them."""

    def __init__(self, users: dict[str, set[str]]) -> None:
        from sciplat_hub.storage.rgw import RgwStore

        self.store = RgwStore(["http://rgw.invalid:7480"], "AK", "SK", "https://s3.example.org")
        self.users, self.calls = users, []
        self.store._admin = self._admin  # type: ignore[method-assign]

    def _admin(self, method: str, resource: str, params: dict[str, str], *, ok_missing: bool = False) -> Any:
        self.calls.append((method, resource, dict(params)))
        uid = params["uid"]
        if method == "GET":
            if uid not in self.users:
                return None
            return {
                "user_id": uid,
                "keys": [{"user": uid, "access_key": k, "secret_key": "x"} for k in self.users[uid]],
            }
        if method == "PUT" and "key" in params:
            self.users[uid].add(params["access-key"])
        elif method == "PUT":
            self.users[uid] = {params["access-key"]} if "access-key" in params else set()
        return {}


def test_a_missing_user_is_created_with_its_keys_and_an_existing_one_only_gains_keys() -> None:
    rgw = RecordingRgw({"bob": {"AKNEW"}})
    alice = {
        "uid": "alice",
        "display_name": "Alice",
        "email": "alice@example.org",
        "max_buckets": 5,
        "keys": [{"access_key": "AK1", "secret_key": "S1"}, {"access_key": "AK2", "secret_key": "S2"}],
    }
    assert rgw.store.restore_user(alice) == "created"
    create = [c for c in rgw.calls if c[0] == "PUT" and "key" not in c[2]]
    assert create == [
        (
            "PUT",
            "user",
            {
                "uid": "alice",
                "display-name": "Alice",
                "max-buckets": "5",
                "key-type": "s3",
                "email": "alice@example.org",
                "access-key": "AK1",
                "secret-key": "S1",
            },
        )
    ]
    assert rgw.users["alice"] == {"AK1", "AK2"}

    bob = {"uid": "bob", "keys": [{"access_key": "AKOLD", "secret_key": "S"}]}
    assert rgw.store.restore_user(bob) == "keys-added"
    assert rgw.users["bob"] == {"AKNEW", "AKOLD"}  # the key made since is kept
    assert rgw.store.restore_user(bob) == "present"
    assert not any(c[0] in ("DELETE", "POST") for c in rgw.calls)
