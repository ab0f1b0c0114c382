"""sciplat_hub.directory against ldap3's in-memory mock directory."""

from __future__ import annotations

import json

import pytest

ldap3 = pytest.importorskip("ldap3")

from sciplat_hub.directory import (  # noqa: E402
    Account,
    Directory,
    DirectoryError,
    Group,
    normalize_username,
)

BASE = "dc=sciplat,dc=test"
BIND = f"cn=provisioner,{BASE}"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice", "alice"),
        ("Alice", "alice"),
        ("Jane.Doe@Example.org", "jane-doe"),
        ("jane.doe+hub@example.org", "jane-doe"),
        ("José Müller", "jose-muller"),
        ("bob_smith", "bob-smith"),
        ("  carol  ", "carol"),
        ("0000-0002-1825-0097", "u0000-0002-1825-0097"),
        ("a--b", "a-b"),
        ("-x-", "x"),
        ("x" * 40, "x" * 32),
        ("abc" + "-" * 29 + "d", "abc-d"),
        ("a" * 31 + ".b", "a" * 31),
    ],
)
def test_normalize_username(raw: str, expected: str) -> None:
    assert normalize_username(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "@example.org", "!!!", "___", "root", "Root@example.org", "nobody"])
def test_normalize_username_impossible(raw: str) -> None:
    with pytest.raises(ValueError) as err:
        normalize_username(raw)
    assert str(err.value).endswith(".")


def test_normalize_is_idempotent() -> None:
    for raw in ["Jane.Doe@Example.org", "José Müller", "0000-0002-1825-0097"]:
        once = normalize_username(raw)
        assert normalize_username(once) == once


@pytest.fixture
def directory() -> Directory:
    server = ldap3.Server("mock")
    setup = ldap3.Connection(server, user=BIND, password="secret", client_strategy=ldap3.MOCK_SYNC)
    setup.strategy.add_entry(
        BIND, {"objectClass": ["organizationalRole"], "cn": "provisioner", "userPassword": "secret"}
    )
    setup.strategy.add_entry(f"ou=people,{BASE}", {"objectClass": ["organizationalUnit"], "ou": "people"})
    setup.strategy.add_entry(f"ou=groups,{BASE}", {"objectClass": ["organizationalUnit"], "ou": "groups"})
    return Directory(
        "ldaps://mock:636",
        BASE,
        BIND,
        "secret",
        uid_range=(20000, 20002),
        gid_range=(60000, 60001),
        server=server,
        strategy=ldap3.MOCK_SYNC,
    )


def test_ensure_user_allocates_once(directory: Directory) -> None:
    alice = directory.ensure_user("alice", display_name="Alice A", email="alice@example.org")
    assert alice == Account("alice", 20000, 20000, "/home/alice", "/bin/bash", "Alice A", "alice@example.org", False)
    assert directory.ensure_user("alice") == alice
    bob = directory.ensure_user("bob")
    assert bob.uid == bob.gid == 20001
    personal = directory.get_group("alice")
    assert personal is not None and personal.gid == 20000
    assert [a.username for a in directory.list_users()] == ["alice", "bob"]
    assert directory.get_user("nobody-here") is None


def test_uids_are_never_reused(directory: Directory) -> None:
    directory.ensure_user("alice")
    directory.delete_user("alice")
    assert directory.get_user("alice") is None
    assert directory.get_group("alice") is None
    again = directory.ensure_user("alice")
    assert again.uid == 20001
    directory.ensure_user("bob")
    with pytest.raises(DirectoryError, match="used up"):
        directory.ensure_user("carol")


def test_update_display_name_and_email(directory: Directory) -> None:
    directory.ensure_user("alice")
    updated = directory.ensure_user("alice", display_name="Alice B", email="b@example.org")
    assert (updated.display_name, updated.email, updated.uid) == ("Alice B", "b@example.org", 20000)


def test_disable_enable(directory: Directory) -> None:
    directory.ensure_user("alice")
    assert directory.disable_user("alice").disabled
    assert directory.disable_user("alice").disabled
    assert directory.get_user("alice").disabled  # type: ignore[union-attr]
    assert not directory.enable_user("alice").disabled
    assert not directory.enable_user("alice").disabled
    with pytest.raises(DirectoryError, match="no user"):
        directory.disable_user("ghost")


def test_groups_and_members(directory: Directory) -> None:
    directory.ensure_user("alice")
    directory.ensure_user("bob")
    survey = directory.ensure_group("survey", description="The survey team")
    assert survey == Group("survey", 60000, ())
    assert directory.ensure_group("survey") == survey
    assert directory.add_member("survey", "alice").members == ("alice",)
    assert directory.add_member("survey", "alice").members == ("alice",)
    assert directory.add_member("survey", "bob").members == ("alice", "bob")
    assert [g.name for g in directory.groups_of("alice")] == ["survey"]
    assert directory.remove_member("survey", "alice").members == ("bob",)
    assert directory.remove_member("survey", "alice").members == ("bob",)
    assert directory.groups_of("alice") == []
    assert [g.name for g in directory.list_groups()] == ["survey"]
    with pytest.raises(DirectoryError, match="no group"):
        directory.add_member("nope", "alice")
    with pytest.raises(DirectoryError, match="no user"):
        directory.add_member("survey", "ghost")


def test_name_clashes(directory: Directory) -> None:
    directory.ensure_user("alice")
    with pytest.raises(DirectoryError, match="personal group"):
        directory.ensure_group("alice")
    directory.ensure_group("team")
    with pytest.raises(DirectoryError, match="name of the group"):
        directory.ensure_user("team")
    with pytest.raises(DirectoryError, match="personal group"):
        directory.add_member("alice", "alice")


def test_gid_range_used_up(directory: Directory) -> None:
    directory.ensure_group("g1")
    directory.ensure_group("g2")
    with pytest.raises(DirectoryError, match="gid_range"):
        directory.ensure_group("g3")


def test_skips_numbers_taken_by_hand(directory: Directory) -> None:
    with directory._connection() as conn:
        conn.add(
            f"uid=manual,ou=people,{BASE}",
            ["inetOrgPerson", "posixAccount"],
            {"uid": "manual", "cn": "m", "sn": "m", "uidNumber": "20000", "gidNumber": "20000", "homeDirectory": "/x"},
        )
    assert directory.ensure_user("alice").uid == 20001


def test_invalid_names_are_refused(directory: Directory) -> None:
    for bad in ["Alice", "a b", "root", "", "1abc"]:
        with pytest.raises(ValueError):
            directory.ensure_user(bad)


def test_overlapping_ranges_refused() -> None:
    with pytest.raises(DirectoryError, match="overlap"):
        Directory("ldaps://x", BASE, BIND, "pw", uid_range=(20000, 70000), gid_range=(60000, 99999))


def test_from_host_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = {
        "uri": "ldaps://data:636",
        "base_dn": BASE,
        "bind_dn": BIND,
        "password": "pw",
        "ca_file": "/etc/sciplat/pki/ca.crt",
        "uid_range": [30000, 39999],
        "gid_range": [60000, 69999],
    }
    path = tmp_path / "client.json"
    path.write_text(json.dumps(cfg))
    d = Directory.from_host_config(path)
    assert (d.uri, d.base_dn, d.uid_range, d.gid_range) == ("ldaps://data:636", BASE, (30000, 39999), (60000, 69999))
    with pytest.raises(DirectoryError, match="does not exist"):
        Directory.from_host_config(tmp_path / "missing.json")
    path.write_text(json.dumps({"uri": "x"}))
    with pytest.raises(DirectoryError, match="lack"):
        Directory.from_host_config(path)
