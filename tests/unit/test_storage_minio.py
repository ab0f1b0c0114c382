"""The MinIO storage backend (sciplat_hub.storage.minio) against a FAKE MinIO server.

MinIO cannot run here (no binary). tests/unit/minio_fake.py implements the admin-API
and S3 endpoints the backend calls, per MinIO's API (signatures checked, add-user
bodies decrypted with the root secret as MinIO does, MinIO's error codes). What these
tests show: which admin calls the backend makes, the policy documents it writes,
idempotency (a second run writes nothing), and - through the fake's simplified policy
evaluator - that the documents give a user their own bucket and a group's members
their group bucket and nobody else. They do not show MinIO's own enforcement; that
needs a site with a MinIO binary (docs/storage-backends.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pytest
from minio import Minio
from minio.error import S3Error

from sciplat_hub.storage import StorageError
from sciplat_hub.storage import minio as backend
from tests.unit.minio_fake import ROOT_PASSWORD, ROOT_USER, FakeMinio

SEED = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def fake() -> Iterator[FakeMinio]:
    with FakeMinio() as server:
        yield server


@pytest.fixture
def store(fake: FakeMinio) -> backend.MinioObjectStore:
    made = backend.from_config(
        {
            "backend": "minio",
            "admin_endpoint": fake.url,
            "endpoint": "https://s3.example.org",
            "access_key": ROOT_USER,
            "secret_key": ROOT_PASSWORD,
            "key_seed": SEED,
        }
    )
    assert isinstance(made, backend.MinioObjectStore)
    return made


def as_user(fake: FakeMinio, creds: Any) -> Minio:
    return Minio(
        fake.url.removeprefix("http://"),
        access_key=creds.access_key,
        secret_key=creds.secret_key,
        secure=False,
        region="us-east-1",
    )


def put(client: Minio, bucket: str, key: str, data: bytes) -> None:
    client.put_object(bucket, key, BytesIO(data), len(data))


def s3_code(call: Any) -> str:
    try:
        call()
    except S3Error as error:
        return str(error.code)
    return "OK"


def test_fake_minio_user_gets_stable_keys_own_bucket_and_quota(
    fake: FakeMinio, store: backend.MinioObjectStore
) -> None:
    creds = store.ensure_user("alice", 4096)
    assert creds.access_key == "alice"
    assert creds.endpoint == "https://s3.example.org"
    assert creds == store.ensure_user("alice", 4096)  # stable: derived, not stored
    assert len(creds.secret_key) == 40
    st = fake.state
    assert st.users["alice"]["secret"] == creds.secret_key and st.users["alice"]["status"] == "enabled"
    assert st.users["alice"]["policy"] == "sciplat-home-alice"
    assert st.policies["sciplat-home-alice"] == backend.bucket_access_policy("home-alice")
    assert "home-alice" in st.buckets and st.quotas["home-alice"] == 4096

    alice = as_user(fake, creds)
    put(alice, "home-alice", "notes.txt", b"hello")
    assert alice.get_object("home-alice", "notes.txt").read() == b"hello"
    # Beyond the quota, the put is refused the way MinIO refuses it.
    assert s3_code(lambda: put(alice, "home-alice", "big", b"x" * 5000)) == "XMinioAdminBucketQuotaExceeded"
    usage = store.usage("alice")
    assert (usage.bytes_used, usage.objects, usage.quota_bytes) == (5, 1, 4096)


def test_fake_minio_another_users_keys_are_denied(fake: FakeMinio, store: backend.MinioObjectStore) -> None:
    alice = as_user(fake, store.ensure_user("alice", None))
    bob = as_user(fake, store.ensure_user("bob", None))
    put(alice, "home-alice", "k", b"v")
    assert s3_code(lambda: bob.get_object("home-alice", "k")) == "AccessDenied"
    assert s3_code(lambda: put(bob, "home-alice", "k2", b"v")) == "AccessDenied"
    assert s3_code(lambda: bob.make_bucket("home-mallory")) == "AccessDenied"


def test_fake_minio_group_bucket_admits_exactly_the_members(fake: FakeMinio, store: backend.MinioObjectStore) -> None:
    users = {u: as_user(fake, store.ensure_user(u, None)) for u in ("alice", "bob", "carol")}
    # dave has not signed in yet: skipped now, added when he has a user.
    bucket = store.ensure_group_bucket("lsst", ["alice", "bob", "dave"], 10_000)
    assert bucket == "group-lsst"
    st = fake.state
    assert st.groups["group-lsst"]["members"] == {"alice", "bob"}
    assert st.groups["group-lsst"]["policy"] == "sciplat-group-lsst"
    assert st.policies["sciplat-group-lsst"] == backend.bucket_access_policy("group-lsst")
    assert st.quotas["group-lsst"] == 10_000
    put(users["alice"], bucket, "shared.csv", b"a,b")
    assert users["bob"].get_object(bucket, "shared.csv").read() == b"a,b"
    assert s3_code(lambda: users["carol"].get_object(bucket, "shared.csv")) == "AccessDenied"

    store.ensure_group_bucket("lsst", ["alice", "carol"], 10_000)
    assert st.groups["group-lsst"]["members"] == {"alice", "carol"}
    assert s3_code(lambda: users["bob"].get_object(bucket, "shared.csv")) == "AccessDenied"
    assert users["carol"].get_object(bucket, "shared.csv").read() == b"a,b"


def test_fake_minio_group_without_users_yet_makes_no_group(fake: FakeMinio, store: backend.MinioObjectStore) -> None:
    store.ensure_group_bucket("empty", ["nobody-yet"], None)
    assert "group-empty" in fake.state.buckets and "group-empty" not in fake.state.groups


def test_fake_minio_disable_stops_the_keys(fake: FakeMinio, store: backend.MinioObjectStore) -> None:
    alice = as_user(fake, store.ensure_user("alice", None))
    put(alice, "home-alice", "k", b"v")
    store.disable_user("alice")
    assert fake.state.users["alice"]["status"] == "disabled"
    assert s3_code(lambda: alice.get_object("home-alice", "k")) == "InvalidAccessKeyId"
    store.disable_user("alice")  # idempotent
    assert store.usage("alice").objects == 1  # data stays
    store.enable_user("alice")
    assert alice.get_object("home-alice", "k").read() == b"v"
    with pytest.raises(StorageError, match="does not exist"):
        store.disable_user("nobody")


def test_fake_minio_second_run_writes_nothing(fake: FakeMinio, store: backend.MinioObjectStore) -> None:
    for user in ("alice", "bob"):
        store.ensure_user(user, 2**30)
    store.ensure_group_bucket("lsst", ["alice", "bob"], 2**31)
    store.set_user_quota("alice", 2**30)
    fake.state.log.clear()
    for user in ("alice", "bob"):
        store.ensure_user(user, 2**30)
        store.ensure_home_bucket(user)
    store.ensure_group_bucket("lsst", ["alice", "bob"], 2**31)
    store.set_user_quota("alice", 2**30)
    assert fake.state.writes() == []
    # The reads it made instead, all as root except the key check.
    assert {caller for _, _, caller in fake.state.log} == {ROOT_USER, "alice", "bob"}


def test_fake_minio_changed_seed_or_foreign_secret_is_repaired(
    fake: FakeMinio, store: backend.MinioObjectStore
) -> None:
    creds = store.ensure_user("alice", None)
    fake.state.users["alice"]["secret"] = "someone-else-set-this"
    fake.state.log.clear()
    assert store.ensure_user("alice", None) == creds
    assert ("PUT", "add-user", ROOT_USER) in fake.state.log
    assert fake.state.users["alice"]["secret"] == creds.secret_key


def test_fake_minio_quota_changes_and_removal(fake: FakeMinio, store: backend.MinioObjectStore) -> None:
    store.ensure_user("alice", 1000)
    store.set_user_quota("alice", 5000)
    assert fake.state.quotas["home-alice"] == 5000
    store.set_user_quota("alice", None)
    assert "home-alice" not in fake.state.quotas
    assert store.usage("alice").quota_bytes is None
    with pytest.raises(StorageError, match="> 0 bytes"):
        store.set_user_quota("alice", 0)


def test_fake_minio_admin_bodies_are_encrypted_and_signed(fake: FakeMinio, store: backend.MinioObjectStore) -> None:
    """The fake decrypts add-user with the root secret and checks every signature; a
    wrong root password is refused."""
    store.ensure_user("alice", None)
    wrong = backend.from_config(
        {
            "backend": "minio",
            "admin_endpoint": fake.url,
            "access_key": ROOT_USER,
            "secret_key": "not-the-root-password",
            "key_seed": SEED,
        }
    )
    with pytest.raises((StorageError, S3Error)):
        wrong.ensure_user("bob", None)
    assert "bob" not in fake.state.users


def test_short_user_names_are_padded_without_collisions() -> None:
    assert backend.access_key_of("li") == "li_"
    assert backend.access_key_of("a") == "a__"
    assert backend.access_key_of("li-") == "li-"
    assert backend.access_key_of("alice") == "alice"
    with pytest.raises(StorageError, match="not valid"):
        backend.access_key_of("Alice")


def test_derived_secrets_differ_per_user_and_per_seed() -> None:
    a = backend.derive_secret(SEED, "alice")
    assert a == backend.derive_secret(SEED, "alice")
    assert a != backend.derive_secret(SEED, "bob")
    assert a != backend.derive_secret(SEED + "x", "alice")
    assert 8 <= len(a) <= 40 and a.isascii()


def test_policy_document_names_one_bucket_and_no_admin_actions() -> None:
    doc = backend.bucket_access_policy("home-alice")
    assert doc["Version"] == "2012-10-17"
    resources = [r for s in doc["Statement"] for r in s["Resource"]]
    assert resources == ["arn:aws:s3:::home-alice", "arn:aws:s3:::home-alice/*"]
    actions = {a for s in doc["Statement"] for a in s["Action"]}
    assert not actions & {"s3:*", "s3:CreateBucket", "s3:DeleteBucket", "s3:PutBucketPolicy", "admin:*"}
    assert all(s["Effect"] == "Allow" for s in doc["Statement"])
    json.dumps(doc)  # what policy_add sends


def test_configuration_errors_name_the_fix() -> None:
    with pytest.raises(StorageError, match="lacks admin_endpoint, key_seed"):
        backend.from_config({"backend": "minio", "access_key": "a", "secret_key": "b"})
    with pytest.raises(StorageError, match="at least 16"):
        backend.from_config(
            {
                "backend": "minio",
                "admin_endpoint": "https://h:9000",
                "access_key": "a",
                "secret_key": "b",
                "key_seed": "x",
            }
        )
    with pytest.raises(StorageError, match="http"):
        backend.from_config(
            {"backend": "minio", "admin_endpoint": "h:9000", "access_key": "a", "secret_key": "b", "key_seed": SEED}
        )


def test_unreachable_server_is_a_storage_error() -> None:
    store = backend.from_config(
        {
            "backend": "minio",
            "admin_endpoint": "http://127.0.0.1:9",  # discard port: nothing listens
            "access_key": ROOT_USER,
            "secret_key": ROOT_PASSWORD,
            "key_seed": SEED,
        }
    )
    with pytest.raises(StorageError, match="MinIO"):
        store.ensure_user("alice", None)
