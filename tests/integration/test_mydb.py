"""MyDB on the deployed test bed, as users and operators see it.

Local test users on the hub host (gw) get what the hub's provisioning gives a
user at sign-in (sciplat_hub.mydb): their role and database, a 0600 ~/.pgpass,
and the PG* variables of their server. Then they use psql, pandas, sciplat-db
and pg_sphere as they would in a notebook; the operator uses `sciplat mydb`.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import INVENTORY, sciplat

PY = "/opt/sciplat/venv/bin/python"
ALICE, BOB, CAROL = "mydbalice", "mydbbob", "mydbcarol"
GROUP = "mydbgrp"
# pandas for the notebook-like test, in a venv of its own on gw (kept between runs)
TEST_VENV = "/opt/sciplat-test/mydb-venv"


def admin_cmd(gw: Any, *args: str) -> Any:
    """python -m sciplat_hub.mydb ... as root on the hub host; its JSON answer."""
    out = gw.run(" ".join(shlex.quote(a) for a in (PY, "-m", "sciplat_hub.mydb", *args)))
    assert out.rc == 0, f"{args}: {out.stdout} {out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def ensure_local_user(gw: Any, name: str) -> tuple[int, int]:
    if gw.run(f"id -u {name}").rc != 0:
        gw.check_output(f"useradd -m -s /bin/bash {name}")
    return int(gw.check_output(f"id -u {name}")), int(gw.check_output(f"id -g {name}"))


class User:
    """A platform user on gw: runs commands with their server's PG* variables."""

    def __init__(self, gw: Any, name: str, env: dict[str, str]) -> None:
        self.gw, self.name, self.env = gw, name, env

    def run(self, command: str, *, password_in_env: bool = False, **extra: str) -> Any:
        env = {k: v for k, v in self.env.items() if password_in_env or k != "PGPASSWORD"} | extra
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        return self.gw.run(
            f"cd /tmp && runuser -u {self.name} -- env PGCONNECT_TIMEOUT=5 {assignments} bash -c {shlex.quote(command)}"
        )

    def sql(self, query: str, **extra: str) -> Any:
        return self.run(f"psql -XAtq -v ON_ERROR_STOP=1 -c {shlex.quote(query)}", **extra)

    def ok(self, query: str, **extra: str) -> str:
        done = self.sql(query, **extra)
        assert done.rc == 0, f"{self.name}: {query}: {done.stderr}"
        return str(done.stdout.strip())


def provision(gw: Any, name: str) -> User:
    uid, gid = ensure_local_user(gw, name)
    answer = admin_cmd(
        gw, "ensure-user", name, "--pgpass-home", f"/home/{name}", "--uid", str(uid), "--gid", str(gid), "--env"
    )
    return User(gw, name, answer["env"])


@pytest.fixture(scope="module")
def gw(host_of: Callable[[str], Any]) -> Any:
    return host_of("gw")


@pytest.fixture(scope="module")
def data(host_of: Callable[[str], Any]) -> Any:
    return host_of("data")


@pytest.fixture(scope="module")
def alice(gw: Any) -> User:
    return provision(gw, ALICE)


@pytest.fixture(scope="module")
def bob(gw: Any) -> User:
    return provision(gw, BOB)


def run_quota_check(data: Any) -> None:
    done = data.run("systemctl start sciplat-mydb-quota.service")
    assert done.rc == 0, data.run("journalctl -u sciplat-mydb-quota.service -n 30 --no-pager").stdout


def test_provisioning_is_idempotent_and_keeps_the_password(gw: Any, alice: User) -> None:
    again = provision(gw, ALICE)
    assert again.env == alice.env
    assert alice.env["PGDATABASE"] == alice.env["PGUSER"] == f"u_{ALICE}"
    assert alice.env["PGSSLMODE"] == "verify-full"
    pgpass = gw.file(f"/home/{ALICE}/.pgpass")
    assert (pgpass.mode, pgpass.user) == (0o600, ALICE)
    assert pgpass.content_string.count(f":u_{ALICE}:") == 1


def test_psql_connects_with_no_credentials_typed_over_tls(alice: User) -> None:
    # only the PG* variables without PGPASSWORD: the password comes from ~/.pgpass
    out = alice.ok("SELECT current_user, s.ssl FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()")
    assert out == f"u_{ALICE}|t"
    # and with the password in the environment, as in the user's server
    done = alice.run("psql -XAtqc 'select 1'", password_in_env=True)
    assert (done.rc, done.stdout.strip()) == (0, "1"), done.stderr


def test_pandas_read_sql_with_no_credentials(gw: Any, alice: User) -> None:
    if gw.run(f"{TEST_VENV}/bin/python -c 'import pandas, sqlalchemy, psycopg'").rc != 0:
        gw.check_output(
            f"python3 -m venv {TEST_VENV} && {TEST_VENV}/bin/pip install -q pandas sqlalchemy 'psycopg[binary]'"
        )
    script = (
        "import pandas as pd, sqlalchemy as sa; "
        "engine = sa.create_engine('postgresql+psycopg://'); "
        "print(pd.read_sql('SELECT current_database() AS db, 41 + 1 AS answer', engine).to_json(orient='records'))"
    )
    done = alice.run(f"{TEST_VENV}/bin/python -c {shlex.quote(script)}")
    assert done.rc == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [{"db": f"u_{ALICE}", "answer": 42}]


def test_connection_limit_and_statement_timeout_from_the_spec(alice: User) -> None:
    out = alice.ok(
        "SELECT rolconnlimit, current_setting('statement_timeout') FROM pg_roles WHERE rolname = current_user"
    )
    assert out == "10|1h"


def test_another_user_cannot_connect_or_see_tables(alice: User, bob: User) -> None:
    alice.ok("CREATE TABLE IF NOT EXISTS private_notes (id int); INSERT INTO private_notes VALUES (1)")
    done = bob.sql("SELECT count(*) FROM private_notes", PGDATABASE=f"u_{ALICE}")
    assert done.rc != 0 and "permission denied for database" in done.stderr
    # PUBLIC (an ACL entry without a grantee: "=...") has no CONNECT on a MyDB database
    acl = alice.ok(f"SELECT datacl::text FROM pg_database WHERE datname = 'u_{ALICE}'")
    assert "{=" not in acl and ",=" not in acl, acl


def test_share_read_only_then_revoke(alice: User, bob: User) -> None:
    alice.ok(
        "DROP TABLE IF EXISTS results; CREATE TABLE results (id serial PRIMARY KEY, flux real); "
        "INSERT INTO results (flux) VALUES (1.5), (2.5)"
    )
    done = alice.run(f"sciplat-db share results --with {BOB}")
    assert done.rc == 0 and "read-only" in done.stdout, done.stderr
    assert bob.ok("SELECT count(*) FROM results", PGDATABASE=f"u_{ALICE}") == "2"
    insert = bob.sql("INSERT INTO results (flux) VALUES (9)", PGDATABASE=f"u_{ALICE}")
    assert insert.rc != 0 and "permission denied for table results" in insert.stderr
    # other tables of alice stay invisible to bob
    other = bob.sql("SELECT * FROM private_notes", PGDATABASE=f"u_{ALICE}")
    assert other.rc != 0 and "permission denied" in other.stderr
    listing = json.loads(bob.run("sciplat-db shared --json").stdout)
    assert {"database": f"u_{ALICE}", "table": "public.results", "owner": ALICE, "privileges": "SELECT"} in listing[
        "shared_with_me"
    ]
    mine = json.loads(alice.run("sciplat-db shared --json").stdout)["shared_by_me"]
    assert [(e["table"], e["with"], e["privileges"]) for e in mine] == [("public.results", BOB, "SELECT")]

    done = alice.run(f"sciplat-db revoke results --from {BOB}")
    assert done.rc == 0, done.stderr
    after = bob.sql("SELECT count(*) FROM results", PGDATABASE=f"u_{ALICE}")
    assert after.rc != 0 and "permission denied" in after.stderr


def test_share_read_write(alice: User, bob: User) -> None:
    alice.ok("DROP TABLE IF EXISTS catalog; CREATE TABLE catalog (id serial, name text)")
    assert alice.run(f"sciplat-db share catalog --with user:{BOB} --write").rc == 0
    assert bob.ok("INSERT INTO catalog (name) VALUES ('m31') RETURNING id", PGDATABASE=f"u_{ALICE}") == "1"
    assert alice.run(f"sciplat-db revoke catalog --from {BOB}").rc == 0
    assert bob.sql("SELECT 1", PGDATABASE=f"u_{ALICE}").rc != 0


def test_group_database_shared_by_its_members(gw: Any, alice: User, bob: User) -> None:
    answer = admin_cmd(gw, "ensure-group", GROUP, ALICE, BOB)
    assert answer["database"] == f"g_{GROUP}" and answer["members"] == [ALICE, BOB]
    alice.ok("DROP TABLE IF EXISTS runs; CREATE TABLE runs (id int)", PGDATABASE=f"g_{GROUP}")
    bob.ok("INSERT INTO runs VALUES (7)", PGDATABASE=f"g_{GROUP}")
    assert (
        alice.ok("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'runs'", PGDATABASE=f"g_{GROUP}")
        == f"g_{GROUP}"
    )
    # bob leaves the group: no more access
    admin_cmd(gw, "ensure-group", GROUP, ALICE)
    assert bob.sql("SELECT 1", PGDATABASE=f"g_{GROUP}").rc != 0


def test_pgsphere_cone_search(alice: User) -> None:
    out = alice.ok(
        "DROP TABLE IF EXISTS stars; CREATE TABLE stars (id int, pos spoint); "
        "INSERT INTO stars SELECT g, spoint(radians(10 + g * 0.3), radians(20)) FROM generate_series(0, 20) g; "
        "CREATE INDEX ON stars USING gist (pos); "
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM stars "
        "WHERE pos <@ scircle(spoint(radians(11), radians(20)), radians(0.5))"
    )
    # within 0.5 deg of (11, 20): RA offsets shrink by cos(20 deg), so RA 10.6, 10.9, 11.2 and 11.5 (ids 2-5)
    assert out == "2,3,4,5"


def test_non_tls_connection_is_rejected_and_no_trust_in_pg_hba(alice: User, data: Any) -> None:
    done = alice.sql("SELECT 1", PGSSLMODE="disable")
    assert done.rc != 0 and "no encryption" in done.stderr
    hba = data.file("/etc/postgresql/15/main/pg_hba.conf").content_string
    for line in hba.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields and fields[0] != "local":
            assert fields[-1] != "trust", line
            assert fields[0] != "host" or fields[-1] == "reject", line


def test_quota_warning_read_only_and_writable_again(gw: Any, data: Any, alice: User) -> None:
    db = f"u_{ALICE}"
    alice.ok("DROP TABLE IF EXISTS big; DROP TABLE IF EXISTS small; CREATE TABLE small (x int)")
    size = int(alice.ok("SELECT pg_database_size(current_database())"))
    try:
        # 93% used: a warning
        admin_cmd(gw, "set-quota", db, str(int(size / 0.93)))
        run_quota_check(data)
        status = json.loads(alice.run("sciplat-db status --json").stdout)
        assert status["state"] == "warning" and "at 100% it becomes read-only" in status["message"]

        # over the quota: read-only, with a sentence that says what to do
        admin_cmd(gw, "set-quota", db, str(size + 2 * 1024**2))
        alice.ok("CREATE TABLE big AS SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 5000) g")
        run_quota_check(data)
        refused = alice.sql("INSERT INTO small VALUES (1)")
        assert refused.rc != 0
        assert "over its quota" in refused.stderr and "read-only" in refused.stderr, refused.stderr
        assert "DROP TABLE" in refused.stderr
        create = alice.sql("CREATE TABLE more (x int)")
        assert create.rc != 0 and "over its quota" in create.stderr
        copy = alice.run("printf '1\\n' | psql -XAtq -v ON_ERROR_STOP=1 -c '\\copy small from stdin'")
        assert copy.rc != 0 and "over its quota" in copy.stderr
        assert "read-only" in alice.run("sciplat-db status").stdout
        usage = json.loads(sciplat("mydb", "usage", "--json", "-i", str(INVENTORY)).stdout)
        assert next(u for u in usage if u["database"] == db)["state"] == "over"

        # cleanup is allowed, and the next check makes it writable again
        alice.ok("DROP TABLE big")
        run_quota_check(data)
        alice.ok("INSERT INTO small VALUES (1)")
        alice.ok("CREATE TABLE more (x int); DROP TABLE more")
        assert json.loads(alice.run("sciplat-db status --json").stdout)["state"] == "ok"
    finally:
        admin_cmd(gw, "set-quota", db, "default")
        run_quota_check(data)


def test_operator_list_reset_password_and_move(gw: Any, alice: User, bob: User) -> None:
    listing = json.loads(sciplat("mydb", "list", "--json", "-i", str(INVENTORY)).stdout)
    names = {row["database"]: row for row in listing}
    assert names[f"u_{ALICE}"]["owner"] == f"u_{ALICE}" and names[f"g_{GROUP}"]["kind"] == "group"

    old = bob.env["PGPASSWORD"]
    sciplat("mydb", "reset-password", BOB, "-i", str(INVENTORY))
    assert bob.sql("SELECT 1", PGPASSWORD=old).rc != 0  # the old password is gone
    assert bob.ok("SELECT 1") == "1"  # ~/.pgpass was rewritten with the new one
    fresh = provision(gw, BOB)
    assert fresh.env["PGPASSWORD"] != old and fresh.ok("SELECT 1") == "1"

    carol = provision(gw, CAROL)
    carol.ok("DROP TABLE IF EXISTS notes; CREATE TABLE notes (t text); INSERT INTO notes VALUES ('hello')")
    moved = f"u_{ALICE}__{CAROL}"
    sciplat("mydb", "move", f"u_{CAROL}", "--to", ALICE, "-i", str(INVENTORY))
    try:
        assert alice.ok("SELECT t FROM notes", PGDATABASE=moved) == "hello"
        assert alice.ok("INSERT INTO notes VALUES ('mine') RETURNING t", PGDATABASE=moved) == "mine"
        assert carol.sql("SELECT 1", PGDATABASE=moved).rc != 0
    finally:
        # leave the bed as a fresh run expects it: carol gets a new database at her next sign-in
        gw.run(f"{PY} -c {shlex.quote(DROP_MOVED % {'db': moved})}")


DROP_MOVED = """
from sciplat_hub.mydb import MyDB
m = MyDB.from_host_config()
with m.connect() as c:
    c.execute('DROP DATABASE IF EXISTS "%(db)s" WITH (FORCE)')
    c.execute("DELETE FROM mydb_databases WHERE database = '%(db)s'")
    c.execute("DELETE FROM mydb_usage WHERE database = '%(db)s'")
"""
