"""MyDB quota enforcer: runs on the database host as the OS user postgres (systemd timer).

For every database in the registry (`sciplat_mydb.mydb_databases`) it measures
`pg_database_size`, compares it with the database's quota (its own, or the
spec's default for users or groups) and:

- writes the result to `mydb.status` inside that database (every user of the
  database can `SELECT * FROM mydb.status`), to the registry table `mydb_usage`
  (what the hub, the platform API and `sciplat mydb usage` show) and to
  `<status_dir>/<database>.json`;
- at 90% (`warn_percent`) the state is `warning` and the message says so;
- at 100% the database becomes read-only for its users: a statement trigger on
  every table refuses INSERT, UPDATE and COPY with the message, and an event
  trigger refuses CREATE TABLE / ALTER TABLE and the like. DELETE, TRUNCATE,
  DROP and VACUUM stay allowed, so the user can make room; the next run after
  the database is back under its quota lifts both.

Also `prepare-template`: creates or updates the template MyDB databases are
copied from (pg_sphere, the `mydb` schema); the mydb role runs it at deploy.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from sciplat_hub.mydb import format_bytes

CONFIG_PATH = Path("/etc/sciplat/mydb/quota.json")
GUARD_TRIGGER = "mydb_quota_guard"
GUARD_EVENT_TRIGGER = "mydb_quota_ddl_guard"
# Commands refused in a database over its quota (they would add data, or undo the guard).
BLOCKED_DDL = (
    "CREATE TABLE",
    "CREATE TABLE AS",
    "SELECT INTO",
    "CREATE INDEX",
    "ALTER TABLE",
    "ALTER INDEX",
    "CREATE MATERIALIZED VIEW",
    "REFRESH MATERIALIZED VIEW",
    "DROP TRIGGER",
    "ALTER TRIGGER",
    "CREATE EXTENSION",
    "CREATE SCHEMA",
)

# Applied (as superuser) to the template and to every MyDB database; idempotent.
# Its hash is kept as the comment of the schema `mydb`, so unchanged databases are skipped.
SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS mydb AUTHORIZATION postgres;
CREATE TABLE IF NOT EXISTS mydb.status (
    database     name PRIMARY KEY,
    size_bytes   bigint NOT NULL,
    quota_bytes  bigint NOT NULL,
    percent      numeric(7, 1) NOT NULL,
    state        text NOT NULL,
    message      text NOT NULL,
    measured_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE mydb.status IS
    'Size and quota of this database, written by the platform''s quota check every few minutes.';
REVOKE ALL ON SCHEMA mydb FROM PUBLIC;
GRANT USAGE ON SCHEMA mydb TO PUBLIC;
REVOKE ALL ON mydb.status FROM PUBLIC;
GRANT SELECT ON mydb.status TO PUBLIC;
CREATE OR REPLACE FUNCTION mydb.quota_message() RETURNS text LANGUAGE sql STABLE AS $f$
    SELECT coalesce(
        (SELECT message FROM mydb.status WHERE database = current_database()),
        'This MyDB database is over its quota and read-only.')
$f$;
CREATE OR REPLACE FUNCTION mydb.quota_guard() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'disk_full', MESSAGE = mydb.quota_message(),
        HINT = 'SELECT * FROM mydb.status; shows the size and the quota.';
END
$f$;
CREATE OR REPLACE FUNCTION mydb.quota_ddl_guard() RETURNS event_trigger LANGUAGE plpgsql AS $f$
BEGIN
    IF tg_tag IN (@BLOCKED@) THEN
        RAISE EXCEPTION USING ERRCODE = 'disk_full', MESSAGE = mydb.quota_message(),
            HINT = 'SELECT * FROM mydb.status; shows the size and the quota.';
    END IF;
END
$f$;
""".replace("@BLOCKED@", ", ".join("'" + tag + "'" for tag in BLOCKED_DDL))
SCHEMA_VERSION = "sciplat-mydb " + hashlib.sha256(SCHEMA_SQL.encode()).hexdigest()[:16]


def _load_config(path: Path) -> dict[str, Any]:
    cfg: dict[str, Any] = json.loads(path.read_text())
    cfg.setdefault("socket_dir", "/var/run/postgresql")
    cfg.setdefault("port", 5432)
    cfg.setdefault("admin_database", "sciplat_mydb")
    cfg.setdefault("template", "sciplat_mydb_template")
    cfg.setdefault("warn_percent", 90)
    cfg.setdefault("interval", "5 minutes")
    cfg.setdefault("status_dir", "/var/lib/sciplat/mydb")
    return cfg


@contextlib.contextmanager
def _connect(cfg: dict[str, Any], database: str) -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(
        host=cfg["socket_dir"],
        port=int(cfg["port"]),
        dbname=database,
        user="postgres",
        autocommit=True,
        application_name="sciplat-mydb-quota",
    )
    try:
        yield conn
    finally:
        conn.close()


def ensure_schema(conn: psycopg.Connection[Any], pgsphere_version: str | None = None) -> bool:
    """The `mydb` schema (status table, guard functions) and pg_sphere are current; True if changed.

    `pgsphere_version` names the extension version to install (the mydb role writes a fixed
    install script for Debian 12's pg_sphere, see roles/mydb/tasks/server.yml).
    """
    row = conn.execute(
        "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = 'mydb'"
    ).fetchone()
    if row is not None and row[0] == SCHEMA_VERSION:
        return False
    with conn.transaction():
        # the quota's event trigger (if the database is over quota) must not refuse this
        conn.execute("SET LOCAL session_replication_role = replica")
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_sphere'").fetchone() is None:
            version = sql.SQL(" VERSION {}").format(sql.Literal(pgsphere_version)) if pgsphere_version else sql.SQL("")
            conn.execute(sql.SQL("CREATE EXTENSION pg_sphere{}").format(version))
        conn.execute(SCHEMA_SQL)  # type: ignore[arg-type]
        conn.execute(sql.SQL("COMMENT ON SCHEMA mydb IS {}").format(sql.Literal(SCHEMA_VERSION)))
    return True


def prepare_template(cfg: dict[str, Any]) -> bool:
    """The template database exists, is marked a template and has the current schema; True if changed."""
    changed = False
    template = cfg["template"]
    with _connect(cfg, "postgres") as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [template]).fetchone() is None:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' LOCALE {}").format(
                    sql.Identifier(template), sql.Literal(cfg.get("locale", "C.UTF-8"))
                )
            )
            changed = True
        row = conn.execute("SELECT datistemplate FROM pg_database WHERE datname = %s", [template]).fetchone()
        if row is not None and not row[0]:
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE true").format(sql.Identifier(template)))
            changed = True
    with _connect(cfg, template) as conn:
        changed = ensure_schema(conn, cfg.get("pgsphere_version")) or changed
    return changed


def _user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str, bool]]:
    """(schema, table, has the guard trigger) of every user table (not the platform's, not extensions')."""
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname,
               EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = %s)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p')
          AND n.nspname NOT IN ('mydb', 'pg_catalog', 'information_schema', 'pg_toast')
          AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, 2
        """,
        [GUARD_TRIGGER],
    ).fetchall()
    return [(str(s), str(t), bool(g)) for s, t, g in rows]


def apply_guard(conn: psycopg.Connection[Any]) -> int:
    """Make the database read-only for its users; returns the number of tables newly guarded."""
    conn.execute("SET lock_timeout = '10s'")
    if conn.execute("SELECT 1 FROM pg_event_trigger WHERE evtname = %s", [GUARD_EVENT_TRIGGER]).fetchone() is None:
        # first: no new table can appear while the existing ones are guarded
        conn.execute(
            sql.SQL("CREATE EVENT TRIGGER {} ON ddl_command_start EXECUTE FUNCTION mydb.quota_ddl_guard()").format(
                sql.Identifier(GUARD_EVENT_TRIGGER)
            )
        )
    added = 0
    for schema, table, guarded in _user_tables(conn):
        if guarded:
            continue
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {}.{} "
                "FOR EACH STATEMENT EXECUTE FUNCTION mydb.quota_guard()"
            ).format(sql.Identifier(GUARD_TRIGGER), sql.Identifier(schema), sql.Identifier(table))
        )
        added += 1
    return added


def lift_guard(conn: psycopg.Connection[Any]) -> bool:
    """Writable again; True if anything was removed."""
    conn.execute("SET lock_timeout = '10s'")
    changed = False
    if conn.execute("SELECT 1 FROM pg_event_trigger WHERE evtname = %s", [GUARD_EVENT_TRIGGER]).fetchone():
        # first, or it would refuse the DROP TRIGGERs below
        conn.execute(sql.SQL("DROP EVENT TRIGGER {}").format(sql.Identifier(GUARD_EVENT_TRIGGER)))
        changed = True
    for schema, table, guarded in _user_tables(conn):
        if guarded:
            conn.execute(
                sql.SQL("DROP TRIGGER IF EXISTS {} ON {}.{}").format(
                    sql.Identifier(GUARD_TRIGGER), sql.Identifier(schema), sql.Identifier(table)
                )
            )
            changed = True
    return changed


def message_for(database: str, size: int, quota: int, state: str, interval: str) -> str:
    used, limit, pct = format_bytes(size), format_bytes(quota), 100.0 * size / quota if quota else 0.0
    room = "Make room with DROP TABLE, TRUNCATE, or DELETE followed by VACUUM FULL"
    if state == "over":
        return (
            f"MyDB database {database} is over its quota ({used} used of {limit}), so it is read-only: "
            f"INSERT, UPDATE, COPY and CREATE TABLE are refused. {room}; writing is allowed again at the "
            f"next quota check (every {interval}) once the database is below {limit}."
        )
    if state == "warning":
        return (
            f"MyDB database {database} uses {used} of its {limit} quota ({pct:.0f}%); at 100% it becomes "
            f"read-only. {room}."
        )
    return f"MyDB database {database} uses {used} of its {limit} quota ({pct:.0f}%)."


def enforce(cfg: dict[str, Any]) -> dict[str, Any]:
    """One pass over every MyDB database; returns a report."""
    warn = float(cfg["warn_percent"])
    status_dir = Path(cfg["status_dir"])
    status_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"databases": [], "errors": []}
    with _connect(cfg, cfg["admin_database"]) as admin:
        if admin.execute("SELECT to_regclass('public.mydb_databases')").fetchone() == (None,):
            return report  # nothing provisioned yet
        rows = admin.execute(
            "SELECT d.database, d.kind, d.quota_bytes, pg_database_size(d.database) "
            "FROM mydb_databases d JOIN pg_database p ON p.datname = d.database ORDER BY 1"
        ).fetchall()
        for database, kind, own_quota, size in rows:
            quota = int(own_quota or (cfg["user_quota"] if kind == "user" else cfg["group_quota"]))
            size = int(size)
            pct = 100.0 * size / quota if quota else 0.0
            state = "over" if pct >= 100 else "warning" if pct >= warn else "ok"
            message = message_for(database, size, quota, state, cfg["interval"])
            entry = {
                "database": database,
                "size_bytes": size,
                "quota_bytes": quota,
                "percent": round(pct, 1),
                "state": state,
                "message": message,
            }
            try:
                with _connect(cfg, database) as conn:
                    ensure_schema(conn, cfg.get("pgsphere_version"))
                    conn.execute(
                        "INSERT INTO mydb.status (database, size_bytes, quota_bytes, percent, state, message, "
                        "measured_at) VALUES (%s, %s, %s, %s, %s, %s, now()) ON CONFLICT (database) DO UPDATE SET "
                        "size_bytes = excluded.size_bytes, quota_bytes = excluded.quota_bytes, percent = "
                        "excluded.percent, state = excluded.state, message = excluded.message, "
                        "measured_at = excluded.measured_at",
                        [database, size, quota, round(pct, 1), state, message],
                    )
                    conn.execute("DELETE FROM mydb.status WHERE database <> current_database()")
                    if state == "over":
                        entry["guarded_tables_added"] = apply_guard(conn)
                    else:
                        entry["guard_lifted"] = lift_guard(conn)
            except psycopg.Error as exc:
                report["errors"].append(f"{database}: {str(exc).strip()}")
                entry["error"] = str(exc).strip()
            admin.execute(
                "INSERT INTO mydb_usage (database, size_bytes, quota_bytes, state, message, measured) "
                "VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (database) DO UPDATE SET size_bytes = "
                "excluded.size_bytes, quota_bytes = excluded.quota_bytes, state = excluded.state, "
                "message = excluded.message, measured = excluded.measured",
                [database, size, quota, state, message],
            )
            tmp = status_dir / f".{database}.json.tmp"
            tmp.write_text(json.dumps(entry, indent=2) + "\n")
            tmp.rename(status_dir / f"{database}.json")
            report["databases"].append(entry)
        admin.execute("DELETE FROM mydb_usage WHERE database NOT IN (SELECT database FROM mydb_databases)")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sciplat_hub.mydb_quota", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIG_PATH))
    parser.add_argument("command", nargs="?", default="enforce", choices=["enforce", "prepare-template"])
    args = parser.parse_args(argv)
    cfg = _load_config(Path(args.config))
    if args.command == "prepare-template":
        print(json.dumps({"changed": prepare_template(cfg)}))
        return 0
    report = enforce(cfg)
    for entry in report["databases"]:
        print(f"{entry['database']}: {entry['state']} ({entry['percent']}%)")
    for error in report["errors"]:
        print(f"error: {error}", file=sys.stderr)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
