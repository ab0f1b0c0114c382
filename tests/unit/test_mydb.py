"""MyDB's pure parts: naming, passwords, ~/.pgpass, quota messages, spec rendering."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sciplat.render import role_vars
from sciplat.spec import PlatformSpec
from sciplat_hub import mydb_quota
from sciplat_hub.mydb import MyDB, MyDBError, PgCredentials, Settings, group_role, user_role

SETTINGS = {
    "host": "data",
    "admin_password": "x" * 32,
    "password_key": "00" * 32,
}


def make() -> MyDB:
    return MyDB(Settings.from_dict(SETTINGS))


def test_names_are_prefixed_and_collision_free() -> None:
    assert user_role("alice") == "u_alice"
    assert user_role("jean-luc") == "u_jean-luc"
    assert group_role("astro_lab") == "g_astro_lab"
    # platform roles cannot be taken by a user name
    assert user_role("postgres") != "postgres"
    for bad in ("Alice", "a_b", "1abc", "", "a" * 33, 'x";drop'):
        with pytest.raises(MyDBError):
            user_role(bad)


def test_password_is_stable_per_generation_and_differs_per_role() -> None:
    m = make()
    assert m.password_for("u_alice", 1) == m.password_for("u_alice", 1)
    assert m.password_for("u_alice", 1) != m.password_for("u_alice", 2)
    assert m.password_for("u_alice", 1) != m.password_for("u_bob", 1)
    assert len(m.password_for("u_alice", 1)) == 43
    other = MyDB(Settings.from_dict(SETTINGS | {"password_key": "11" * 32}))
    assert other.password_for("u_alice", 1) != m.password_for("u_alice", 1)


def test_credentials_env_is_what_libpq_reads() -> None:
    creds = make().credentials("u_alice", "u_alice", 1)
    env = creds.env()
    assert env["PGHOST"] == "data" and env["PGPORT"] == "5432" and env["PGDATABASE"] == "u_alice"
    assert env["PGSSLMODE"] == "verify-full" and env["PGSSLROOTCERT"] == "/etc/sciplat/pki/ca.crt"
    assert "password" not in repr(creds).lower() or creds.password not in repr(creds)


def test_pgpass_line_escapes_separators() -> None:
    creds = PgCredentials("h", 5432, "d", "u", "a:b\\c", "/ca")
    assert creds.pgpass_line() == "h:5432:*:u:a\\:b\\\\c"


def test_write_pgpass_keeps_other_lines_and_is_private(tmp_path: Path) -> None:
    m = make()
    target = tmp_path / ".pgpass"
    target.write_text("other:5432:*:someone:secret\ndata:5432:*:u_alice:old\n")
    creds = m.credentials("u_alice", "u_alice", 2)
    m.write_pgpass(creds, tmp_path, os.getuid(), os.getgid())
    lines = target.read_text().splitlines()
    assert lines == ["other:5432:*:someone:secret", creds.pgpass_line()]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_write_pgpass_does_not_follow_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".pgpass").symlink_to(victim)
    with pytest.raises(MyDBError):
        make().write_pgpass(make().credentials("u_a", "u_a", 1), tmp_path / "home", os.getuid(), os.getgid())
    assert victim.read_text() == "keep me\n"


def test_config_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(MyDBError, match="admin_password"):
        Settings.from_dict({"host": "h", "password_key": "00"})
    with pytest.raises(MyDBError, match="cannot read"):
        MyDB.from_host_config(tmp_path / "missing.json")


def test_quota_messages_say_what_happened_and_what_to_do() -> None:
    over = mydb_quota.message_for("u_alice", 11 * 1024**3, 10 * 1024**3, "over", "5min")
    assert "over its quota" in over and "read-only" in over and "DROP TABLE" in over and "5min" in over
    warn = mydb_quota.message_for("u_alice", 95, 100, "warning", "5min")
    assert "95%" in warn and "at 100%" in warn


def test_guard_blocks_ddl_but_not_cleanup() -> None:
    assert "CREATE TABLE" in mydb_quota.BLOCKED_DDL and "DROP TRIGGER" in mydb_quota.BLOCKED_DDL
    assert "DROP TABLE" not in mydb_quota.BLOCKED_DDL
    assert "'ALTER TABLE'" in mydb_quota.SCHEMA_SQL and "@BLOCKED@" not in mydb_quota.SCHEMA_SQL


def test_spec_renders_mydb_variables() -> None:
    spec = PlatformSpec.model_validate(
        {
            "platform": {"name": "astro-lab", "domain": "p.example.org"},
            "databases": {"mydb": {"user_quota": "1GiB", "statement_timeout": "30m", "check_interval": "2m"}},
        }
    )
    values = role_vars(spec, Path("."))
    assert values["mydb_user_quota"] == 1024**3
    assert values["mydb_statement_timeout"] == 1800
    assert values["mydb_quota_interval"] == "2min"
    assert values["mydb_enabled"] is True and values["mydb_warn_percent"] == 90
