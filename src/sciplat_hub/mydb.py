"""MyDB: a personal PostgreSQL database per user and one per group.

Runs on hub hosts (the hub's account provisioning calls it at every sign-in) and
connects to the platform's PostgreSQL over TLS (verify-full) as the role
`mydb_admin` (CREATEROLE, CREATEDB; its password comes from the vault).

Naming (collision-free: user names have no underscore, the prefixes differ):

- user `alice`: login role `u_alice`, database `u_alice` owned by it;
- group `astro`: role `g_astro` (NOLOGIN; members are granted it), database `g_astro`;
- a database moved to another user on account merge: `u_<newowner>__<oldname>`.

Every MyDB role is a member of `mydb_users`, the role pg_hba.conf admits (TLS
and SCRAM only). CONNECT on every MyDB database is revoked from PUBLIC.

Passwords are never stored: a user's password is
`base64url(HMAC-SHA256(mydb_password_key, "<role>:<generation>"))`, where the key
is a vault secret and the generation is a counter in the registry database
(`sciplat_mydb`, table `mydb_roles`). Re-provisioning therefore returns the same
password at every sign-in, and `reset_password` changes it by incrementing the
generation.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import os
import pwd
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

CONFIG_PATH = Path("/etc/sciplat/mydb/client.json")
USERS_ROLE = "mydb_users"
_USER_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_GROUP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

REGISTRY_SQL = """
CREATE TABLE IF NOT EXISTS mydb_roles (
    role        text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('user', 'group')),
    name        text NOT NULL,
    generation  integer NOT NULL DEFAULT 1,
    disabled    boolean NOT NULL DEFAULT false,
    updated     timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS mydb_databases (
    database    text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('user', 'group')),
    owner_role  text NOT NULL,
    created_for text NOT NULL,
    quota_bytes bigint,
    created     timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS mydb_usage (
    database    text PRIMARY KEY,
    size_bytes  bigint NOT NULL,
    quota_bytes bigint NOT NULL,
    state       text NOT NULL,
    message     text NOT NULL,
    measured    timestamptz NOT NULL DEFAULT now()
);
"""


class MyDBError(Exception):
    """A MyDB operation failed; the message says why and what to do."""


def user_role(username: str) -> str:
    if not _USER_NAME.match(username):
        raise MyDBError(
            f"{username!r} is not a platform user name (lowercase letters, digits and '-', "
            "starting with a letter, at most 32 characters)"
        )
    return f"u_{username}"


def group_role(group: str) -> str:
    if not _GROUP_NAME.match(group):
        raise MyDBError(
            f"{group!r} is not a platform group name (lowercase letters, digits, '-' and '_', "
            "starting with a letter, at most 32 characters)"
        )
    return f"g_{group}"


def format_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@dataclass(frozen=True)
class PgCredentials:
    """How a user reaches a MyDB database; `env()` is what their server's environment gets."""

    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False)
    sslrootcert: str

    def env(self) -> dict[str, str]:
        return {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGDATABASE": self.database,
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": self.sslrootcert,
        }

    def pgpass_line(self) -> str:
        """One ~/.pgpass line, valid for every database the role may connect to."""
        fields = (self.host, str(self.port), "*", self.user, self.password)
        return ":".join(_pgpass_escape(f) for f in fields)


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    admin_user: str
    admin_password: str = field(repr=False)
    admin_database: str
    sslrootcert: str
    password_key: str = field(repr=False)  # hex
    template: str
    connection_limit: int
    statement_timeout: int  # seconds
    user_quota: int  # bytes
    group_quota: int  # bytes

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> Settings:
        try:
            return cls(
                host=str(cfg["host"]),
                port=int(cfg.get("port", 5432)),
                admin_user=str(cfg.get("admin_user", "mydb_admin")),
                admin_password=str(cfg["admin_password"]),
                admin_database=str(cfg.get("admin_database", "sciplat_mydb")),
                sslrootcert=str(cfg.get("sslrootcert", "/etc/sciplat/pki/ca.crt")),
                password_key=str(cfg["password_key"]),
                template=str(cfg.get("template", "sciplat_mydb_template")),
                connection_limit=int(cfg.get("connection_limit", 10)),
                statement_timeout=int(cfg.get("statement_timeout", 3600)),
                user_quota=int(cfg.get("user_quota", 10 * 1024**3)),
                group_quota=int(cfg.get("group_quota", 50 * 1024**3)),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise MyDBError(f"MyDB client configuration is incomplete or malformed ({exc!r})") from None


class MyDB:
    """Provisioning of MyDB roles and databases (every method is idempotent)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def from_host_config(cls, path: Path | str = CONFIG_PATH) -> MyDB:
        path = Path(path)
        try:
            cfg = json.loads(path.read_text())
        except OSError as exc:
            raise MyDBError(
                f"cannot read {path} ({exc.strerror}); the mydb role writes it on hosts of group hub "
                "(run `sciplat up`), and only root may read it"
            ) from None
        return cls(Settings.from_dict(cfg))

    # ------------------------------------------------------------ connections

    @contextlib.contextmanager
    def connect(self, database: str | None = None) -> Iterator[psycopg.Connection[Any]]:
        s = self.settings
        try:
            conn = psycopg.connect(
                host=s.host,
                port=s.port,
                dbname=database or s.admin_database,
                user=s.admin_user,
                password=s.admin_password,
                sslmode="verify-full",
                sslrootcert=s.sslrootcert,
                connect_timeout=10,
                application_name="sciplat-mydb",
                autocommit=True,
            )
        except psycopg.OperationalError as exc:
            raise MyDBError(f"cannot connect to PostgreSQL at {s.host}:{s.port} as {s.admin_user}: {exc}") from None
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _registry(self, lock_key: str) -> Iterator[psycopg.Connection[Any]]:
        """The registry database, holding an advisory lock for `lock_key` (one provisioning at a time)."""
        with self.connect() as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext('sciplat_mydb:schema'))")
            try:
                conn.execute(REGISTRY_SQL)
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext('sciplat_mydb:schema'))")
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", [lock_key])
            try:
                yield conn
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [lock_key])

    # ------------------------------------------------------------ passwords

    def password_for(self, role: str, generation: int) -> str:
        key = bytes.fromhex(self.settings.password_key)
        digest = hmac.new(key, f"{role}:{generation}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def credentials(self, role: str, database: str, generation: int) -> PgCredentials:
        s = self.settings
        return PgCredentials(s.host, s.port, database, role, self.password_for(role, generation), s.sslrootcert)

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _role_exists(conn: psycopg.Connection[Any], role: str) -> bool:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is not None

    @staticmethod
    def _database_exists(conn: psycopg.Connection[Any], database: str) -> bool:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone() is not None

    @staticmethod
    def _is_member(conn: psycopg.Connection[Any], member: str, role: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE r.rolname = %s AND u.rolname = %s",
            [role, member],
        ).fetchone()
        return row is not None

    def _grant_membership(self, conn: psycopg.Connection[Any], role: str, member: str) -> None:
        if not self._is_member(conn, member, role):
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(member)))

    def _ensure_database(self, conn: psycopg.Connection[Any], database: str, owner: str) -> None:
        # CREATE DATABASE ... OWNER needs membership in the owner role
        self._grant_membership(conn, owner, self.settings.admin_user)
        if not self._database_exists(conn, database):
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {}").format(
                    sql.Identifier(database), sql.Identifier(owner), sql.Identifier(self.settings.template)
                )
            )
        acl = conn.execute(
            "SELECT coalesce(datacl::text[], '{}') FROM pg_database WHERE datname = %s", [database]
        ).fetchone()
        if acl is None or any(entry.startswith("=") for entry in acl[0]) or not acl[0]:
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
            conn.execute(
                sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                    sql.Identifier(database), sql.Identifier(owner)
                )
            )

    def _register_role(self, conn: psycopg.Connection[Any], role: str, kind: str, name: str) -> tuple[int, bool]:
        conn.execute(
            "INSERT INTO mydb_roles (role, kind, name) VALUES (%s, %s, %s) ON CONFLICT (role) DO NOTHING",
            [role, kind, name],
        )
        row = conn.execute("SELECT generation, disabled FROM mydb_roles WHERE role = %s", [role]).fetchone()
        assert row is not None
        return int(row[0]), bool(row[1])

    def _register_database(
        self, conn: psycopg.Connection[Any], database: str, kind: str, owner: str, created_for: str
    ) -> None:
        conn.execute(
            "INSERT INTO mydb_databases (database, kind, owner_role, created_for) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (database) DO NOTHING",
            [database, kind, owner, created_for],
        )

    @staticmethod
    def _verifier(conn: psycopg.Connection[Any], role: str, password: str) -> str:
        """The SCRAM-SHA-256 verifier, computed here: the password itself never reaches the server."""
        return conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()

    def _ensure_login_role(self, conn: psycopg.Connection[Any], role: str, password: str, disabled: bool) -> None:
        s = self.settings
        password = self._verifier(conn, role, password)
        login = sql.SQL("NOLOGIN" if disabled else "LOGIN")
        if not self._role_exists(conn, role):
            conn.execute(
                sql.SQL("CREATE ROLE {} {} CONNECTION LIMIT {} PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(role),
                    login,
                    sql.Literal(s.connection_limit),
                    sql.Literal(password),
                    sql.Identifier(USERS_ROLE),
                )
            )
        else:
            conn.execute(
                sql.SQL("ALTER ROLE {} {} CONNECTION LIMIT {} PASSWORD {}").format(
                    sql.Identifier(role), login, sql.Literal(s.connection_limit), sql.Literal(password)
                )
            )
            self._grant_membership(conn, USERS_ROLE, role)
        conn.execute(
            sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(
                sql.Identifier(role), sql.Literal(f"{s.statement_timeout}s")
            )
        )

    # ------------------------------------------------------------ users

    def ensure_user_database(self, username: str) -> PgCredentials:
        """The user's role and database exist; returns the credentials for their server."""
        role = user_role(username)
        with self._registry(role) as conn:
            generation, disabled = self._register_role(conn, role, "user", username)
            password = self.password_for(role, generation)
            # the password is set at every call: SCRAM verifiers are salted, so it cannot be compared
            self._ensure_login_role(conn, role, password, disabled)
            self._ensure_database(conn, role, role)
            self._register_database(conn, role, "user", role, username)
        return self.credentials(role, role, generation)

    def get_credentials(self, username: str) -> PgCredentials:
        role = user_role(username)
        with self.connect() as conn:
            conn.execute(REGISTRY_SQL)
            row = conn.execute("SELECT generation FROM mydb_roles WHERE role = %s", [role]).fetchone()
        if row is None:
            raise MyDBError(f"user {username} has no MyDB database yet (one is made at their first sign-in)")
        return self.credentials(role, role, int(row[0]))

    def write_pgpass(self, credentials: PgCredentials, home: str | Path, uid: int, gid: int) -> Path:
        """Write (or update) the line for these credentials in `home/.pgpass`, mode 0600, owned by the user.

        Other lines are kept. The file is replaced atomically and never followed as a symlink.
        """
        home = Path(home)
        target = home / ".pgpass"
        prefix = ":".join(_pgpass_escape(f) for f in (credentials.host, str(credentials.port), "*", credentials.user))
        kept: list[str] = []
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise MyDBError(f"{target} exists but cannot be read safely ({exc.strerror}); remove it") from None
        else:
            with os.fdopen(fd) as existing:
                kept = [line.rstrip("\n") for line in existing if not line.startswith(prefix + ":")]
        lines = [*kept, credentials.pgpass_line()]
        fd, tmp = tempfile.mkstemp(dir=home, prefix=".pgpass.")
        try:
            os.fchmod(fd, 0o600)
            os.fchown(fd, uid, gid)
            with os.fdopen(fd, "w") as out:
                out.write("\n".join(line for line in lines if line) + "\n")
            os.rename(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return target

    def disable_user(self, username: str) -> None:
        """The user's role may no longer log in and their sessions end; data is kept."""
        role = user_role(username)
        with self._registry(role) as conn:
            conn.execute(
                "UPDATE mydb_roles SET disabled = true, updated = now() WHERE role = %s",
                [role],
            )
            if self._role_exists(conn, role):
                conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(role)))
                self._grant_membership(conn, role, self.settings.admin_user)
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role])

    def enable_user(self, username: str) -> PgCredentials:
        role = user_role(username)
        with self._registry(role) as conn:
            conn.execute("UPDATE mydb_roles SET disabled = false, updated = now() WHERE role = %s", [role])
        return self.ensure_user_database(username)

    def reset_password(self, username: str) -> PgCredentials:
        """A new password (the next generation); sessions using the old one are ended."""
        role = user_role(username)
        with self._registry(role) as conn:
            row = conn.execute(
                "UPDATE mydb_roles SET generation = generation + 1, updated = now() WHERE role = %s "
                "RETURNING generation, disabled",
                [role],
            ).fetchone()
            if row is None:
                raise MyDBError(f"user {username} has no MyDB role yet (one is made at their first sign-in)")
            generation, disabled = int(row[0]), bool(row[1])
            self._ensure_login_role(conn, role, self.password_for(role, generation), disabled)
            self._grant_membership(conn, role, self.settings.admin_user)
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role])
        return self.credentials(role, role, generation)

    # ------------------------------------------------------------ groups

    def ensure_group_database(self, group: str, members: Iterable[str]) -> dict[str, Any]:
        """The group's role and database exist and exactly `members` (user names) are granted the role.

        Members who have no MyDB role yet are skipped (listed in the result as `pending`); the
        next call after their first sign-in adds them. Objects a member creates in the group
        database belong to the group role (`SET ROLE` at connection).
        """
        role = group_role(group)
        wanted = {user_role(m): m for m in members}
        pending: list[str] = []
        with self._registry(role) as conn:
            self._register_role(conn, role, "group", group)
            if not self._role_exists(conn, role):
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
            self._ensure_database(conn, role, role)
            self._register_database(conn, role, "group", role, group)
            current = {
                r[0]
                for r in conn.execute(
                    "SELECT u.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                    "JOIN pg_roles u ON u.oid = m.member WHERE r.rolname = %s AND u.rolname LIKE 'u\\_%%'",
                    [role],
                )
            }
            for member_role, name in sorted(wanted.items()):
                if not self._role_exists(conn, member_role):
                    pending.append(name)
                    continue
                if member_role not in current:
                    conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(member_role)))
                conn.execute(
                    sql.SQL("ALTER ROLE {} IN DATABASE {} SET role = {}").format(
                        sql.Identifier(member_role), sql.Identifier(role), sql.Literal(role)
                    )
                )
            for member_role in sorted(current - set(wanted)):
                conn.execute(
                    sql.SQL("ALTER ROLE {} IN DATABASE {} RESET role").format(
                        sql.Identifier(member_role), sql.Identifier(role)
                    )
                )
                conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(role), sql.Identifier(member_role)))
                # a session opened before keeps the group role: end it
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s AND datname = %s",
                    [member_role, role],
                )
        return {
            "database": role,
            "role": role,
            "members": sorted(set(wanted.values()) - set(pending)),
            "pending": pending,
        }

    def drop_group_database(self, group: str) -> bool:
        """Drop the group's database and role and forget them (a purge); True when something was dropped."""
        role = group_role(group)
        with self._registry(role) as conn:
            dropped = False
            if self._database_exists(conn, role):
                self._grant_membership(conn, role, self.settings.admin_user)
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(role)))
                dropped = True
            if self._role_exists(conn, role):
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
                dropped = True
            conn.execute("DELETE FROM mydb_usage WHERE database = %s", [role])
            conn.execute("DELETE FROM mydb_databases WHERE database = %s AND kind = 'group'", [role])
            conn.execute("DELETE FROM mydb_roles WHERE role = %s AND kind = 'group'", [role])
        return dropped

    # ------------------------------------------------------------ operators

    def list_databases(self) -> list[dict[str, Any]]:
        """Every MyDB database with its owner, size, quota and state (the enforcer's last measurement)."""
        s = self.settings
        with self.connect() as conn:
            conn.execute(REGISTRY_SQL)
            rows = conn.execute(
                "SELECT d.database, d.kind, d.owner_role, d.created_for, "
                "coalesce(d.quota_bytes, CASE d.kind WHEN 'user' THEN %s ELSE %s END), "
                "pg_database_size(d.database), u.state, u.message, u.measured, r.disabled "
                "FROM mydb_databases d JOIN pg_database p ON p.datname = d.database "
                "LEFT JOIN mydb_usage u ON u.database = d.database "
                "LEFT JOIN mydb_roles r ON r.role = d.owner_role ORDER BY d.database",
                [s.user_quota, s.group_quota],
            ).fetchall()
        result = []
        for database, kind, owner, created_for, quota, size, state, message, measured, disabled in rows:
            result.append(
                {
                    "database": database,
                    "kind": kind,
                    "owner": owner,
                    "created_for": created_for,
                    "size_bytes": int(size),
                    "quota_bytes": int(quota),
                    "percent": round(100.0 * int(size) / int(quota), 1) if quota else None,
                    "state": state or "unmeasured",
                    "message": message or "",
                    "measured": measured.isoformat() if measured else None,
                    "owner_disabled": bool(disabled),
                }
            )
        return result

    def quota_status(self, username: str) -> dict[str, Any]:
        """The enforcer's last word on the user's database (for the hub / platform API)."""
        role = user_role(username)
        for entry in self.list_databases():
            if entry["database"] == role:
                return entry
        raise MyDBError(f"user {username} has no MyDB database yet (one is made at their first sign-in)")

    def set_quota(self, database: str, quota_bytes: int | None) -> None:
        """A per-database quota (None: back to the spec's default for its kind)."""
        with self.connect() as conn:
            conn.execute(REGISTRY_SQL)
            cur = conn.execute(
                "UPDATE mydb_databases SET quota_bytes = %s WHERE database = %s", [quota_bytes, database]
            )
            if cur.rowcount == 0:
                raise MyDBError(f"{database} is not a MyDB database; `sciplat mydb list` shows them")

    def move_database(self, database: str, to_user: str) -> str:
        """Give a database and everything in it to another user (account merge); returns its new name.

        The database is renamed `u_<to_user>__<old name without u_>` (it must have no open
        connections), ownership of the database and of every object in it passes to the new
        owner, and the old owner loses CONNECT. The old role itself is left alone (disable it
        with the account).
        """
        new_owner = user_role(to_user)
        with self._registry(f"move:{database}") as conn:
            row = conn.execute("SELECT kind, owner_role FROM mydb_databases WHERE database = %s", [database]).fetchone()
            if row is None:
                raise MyDBError(f"{database} is not a MyDB database; `sciplat mydb list` shows them")
            kind, old_owner = row
            if kind != "user":
                raise MyDBError(f"{database} is a group database; change the group's members instead of moving it")
            if old_owner == new_owner:
                return str(database)
            if not self._role_exists(conn, new_owner):
                raise MyDBError(f"user {to_user} has no MyDB role yet; they get one at their first sign-in")
            suffix = database[2:] if database.startswith("u_") else database
            new_name = f"{new_owner}__{suffix}"[:63]
            if self._database_exists(conn, new_name):
                raise MyDBError(f"a database named {new_name} exists already; rename or drop it first")
            for member in (old_owner, new_owner):
                self._grant_membership(conn, member, self.settings.admin_user)
            busy = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [database]).fetchone()
            if busy and busy[0]:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                    "pg_backend_pid()",
                    [database],
                )
            conn.execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(database), sql.Identifier(new_name))
            )
            conn.execute(
                "UPDATE mydb_databases SET database = %s, owner_role = %s WHERE database = %s",
                [new_name, new_owner, database],
            )
            conn.execute("DELETE FROM mydb_usage WHERE database = %s", [database])
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(new_name), sql.Identifier(new_owner))
            )
            conn.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(new_name), sql.Identifier(old_owner))
            )
            conn.execute(
                sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                    sql.Identifier(new_name), sql.Identifier(new_owner)
                )
            )
        with self.connect(new_name) as db:
            db.execute(
                sql.SQL("REASSIGN OWNED BY {} TO {}").format(sql.Identifier(old_owner), sql.Identifier(new_owner))
            )
        return new_name


# ---------------------------------------------------------------- command line (operators, as root on a hub host)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sciplat_hub.mydb", description="MyDB administration")
    parser.add_argument("--config", default=str(CONFIG_PATH))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every MyDB database with size, quota and state (JSON)")
    p = sub.add_parser("ensure-user", help="provision a user's role and database")
    p.add_argument("username")
    p.add_argument("--pgpass-home", help="also write HOME/.pgpass, owned by --uid/--gid")
    p.add_argument("--uid", type=int)
    p.add_argument("--gid", type=int)
    p.add_argument("--env", action="store_true", help="also print the PG* variables of the user's server")
    p = sub.add_parser("ensure-group", help="provision a group's role and database")
    p.add_argument("group")
    p.add_argument("members", nargs="*")
    p = sub.add_parser("reset-password", help="give a user a new password")
    p.add_argument("username")
    p = sub.add_parser("disable-user")
    p.add_argument("username")
    p = sub.add_parser("enable-user")
    p.add_argument("username")
    p = sub.add_parser("move", help="give a user database to another user")
    p.add_argument("database")
    p.add_argument("--to", required=True)
    p = sub.add_parser("set-quota", help="a per-database quota in bytes ('default' for the spec's)")
    p.add_argument("database")
    p.add_argument("quota")
    args = parser.parse_args(argv)
    result: Any
    try:
        mydb = MyDB.from_host_config(args.config)
        if args.command == "list":
            result = mydb.list_databases()
        elif args.command == "ensure-user":
            creds = mydb.ensure_user_database(args.username)
            result = {"database": creds.database, "user": creds.user}
            if args.pgpass_home:
                if args.uid is None or args.gid is None:
                    raise MyDBError("--pgpass-home needs --uid and --gid")
                result["pgpass"] = str(mydb.write_pgpass(creds, args.pgpass_home, args.uid, args.gid))
            if args.env:
                result["env"] = creds.env()
        elif args.command == "ensure-group":
            result = mydb.ensure_group_database(args.group, args.members)
        elif args.command == "reset-password":
            creds = mydb.reset_password(args.username)
            result = {"database": creds.database, "user": creds.user, "reset": True}
            try:
                account = pwd.getpwnam(args.username)
            except KeyError:
                account = None
            if account is not None and os.path.isdir(account.pw_dir):
                result["pgpass"] = str(mydb.write_pgpass(creds, account.pw_dir, account.pw_uid, account.pw_gid))
        elif args.command == "disable-user":
            mydb.disable_user(args.username)
            result = {"user": args.username, "disabled": True}
        elif args.command == "enable-user":
            mydb.enable_user(args.username)
            result = {"user": args.username, "disabled": False}
        elif args.command == "move":
            result = {"database": args.database, "moved_to": mydb.move_database(args.database, args.to)}
        else:  # set-quota
            quota = None if args.quota == "default" else int(args.quota)
            mydb.set_quota(args.database, quota)
            result = {"database": args.database, "quota_bytes": quota}
    except (MyDBError, psycopg.Error) as exc:
        print(json.dumps({"error": str(exc).strip()}))
        return 1
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
