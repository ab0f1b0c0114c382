"""`sciplat-db`: what a user runs in their server to share MyDB tables and see their quota.

It connects like psql does, from the PG* variables of the user's server and
~/.pgpass, to their own database (PGDATABASE) unless --database names another
(e.g. a group database `g_<group>`).

    sciplat-db share TABLE --with USER|GROUP [--write]   # read-only unless --write
    sciplat-db revoke TABLE --from USER|GROUP
    sciplat-db shared [--json]                            # what I share, what is shared with me
    sciplat-db status [--json]                            # size, quota and what to do about it
    sciplat-db info                                       # how to connect (no password)

USER and GROUP are platform names (alice, astro); write user:NAME or group:NAME
when a user and a group have the same name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import psycopg
from psycopg import sql

EXIT_USAGE = 2


class CliError(Exception):
    pass


def _connect(database: str | None = None) -> psycopg.Connection[Any]:
    if not os.environ.get("PGHOST"):
        raise CliError(
            "PGHOST is not set: run sciplat-db in your platform server (where PGHOST, PGUSER and PGDATABASE "
            "are set for you), or set the PG* variables yourself"
        )
    try:
        return psycopg.connect(dbname=database or os.environ.get("PGDATABASE", ""), autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise CliError(
            f"cannot connect to {database or os.environ.get('PGDATABASE', 'your database')}: {exc}"
        ) from None


def _resolve_grantee(conn: psycopg.Connection[Any], who: str) -> tuple[str, str]:
    """('user'|'group', role name) for USER, GROUP, user:NAME or group:NAME."""
    kind, _, name = who.partition(":") if ":" in who else ("", "", who)
    if kind not in ("", "user", "group") or not name:
        raise CliError(f"{who!r}: write a user or group name, or user:NAME / group:NAME")
    candidates = [k for k in ("user", "group") if kind in ("", k)]
    found = []
    for k in candidates:
        role = ("u_" if k == "user" else "g_") + name
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
            found.append((k, role))
    if not found:
        raise CliError(
            f"there is no MyDB {kind or 'user or group'} named {name!r} (a user gets MyDB at their first sign-in)"
        )
    if len(found) > 1:
        raise CliError(f"{name!r} is both a user and a group; write user:{name} or group:{name}")
    return found[0]


def _resolve_table(conn: psycopg.Connection[Any], table: str) -> tuple[int, str, str]:
    row = conn.execute(
        "SELECT c.oid, n.nspname, c.relname, pg_has_role(c.relowner, 'USAGE') FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s) "
        "AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
        [table],
    ).fetchone()
    if row is None:
        raise CliError(f"no table {table!r} in database {conn.info.dbname} (write schema.table if it is not in public)")
    if not row[3]:
        raise CliError(f"{row[1]}.{row[2]} is not yours, so you cannot share it")
    return int(row[0]), str(row[1]), str(row[2])


def _owned_sequences(conn: psycopg.Connection[Any], table_oid: int) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT n.nspname, s.relname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
        "JOIN pg_namespace n ON n.oid = s.relnamespace WHERE d.refobjid = %s AND d.deptype IN ('a', 'i')",
        [table_oid],
    ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


def grant_table(conn: psycopg.Connection[Any], table: str, grantee: str, write: bool) -> tuple[str, str]:
    """Let the role `grantee` read (or also write) `table` of the connection's database; (schema, name).

    The connection's current role must own the table (or be a member of its owner). Also used by
    sciplat_hub.sharing, which connects as the owner (SET ROLE) for shares made through the API.
    """
    oid, schema, name = _resolve_table(conn, table)
    g = sql.Identifier(grantee)
    privileges = "SELECT, INSERT, UPDATE, DELETE" if write else "SELECT"
    with conn.transaction():
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(conn.info.dbname), g))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), g))
        conn.execute(sql.SQL("REVOKE ALL ON {}.{} FROM {}").format(sql.Identifier(schema), sql.Identifier(name), g))
        conn.execute(
            sql.SQL("GRANT " + privileges + " ON {}.{} TO {}").format(sql.Identifier(schema), sql.Identifier(name), g)
        )
        for seq_schema, seq in _owned_sequences(conn, oid):
            seq_id = sql.SQL("{}.{}").format(sql.Identifier(seq_schema), sql.Identifier(seq))
            if write:
                conn.execute(sql.SQL("GRANT USAGE, SELECT ON SEQUENCE {} TO {}").format(seq_id, g))
            else:
                conn.execute(sql.SQL("REVOKE ALL ON SEQUENCE {} FROM {}").format(seq_id, g))
    return schema, name


def revoke_table(conn: psycopg.Connection[Any], table: str, grantee: str) -> tuple[str, str]:
    """Take `table` back from the role `grantee` (and CONNECT/USAGE when nothing else is shared with it)."""
    oid, schema, name = _resolve_table(conn, table)
    g = sql.Identifier(grantee)
    dbname = conn.info.dbname
    with conn.transaction():
        conn.execute(sql.SQL("REVOKE ALL ON {}.{} FROM {}").format(sql.Identifier(schema), sql.Identifier(name), g))
        for seq_schema, seq in _owned_sequences(conn, oid):
            conn.execute(
                sql.SQL("REVOKE ALL ON SEQUENCE {}.{} FROM {}").format(
                    sql.Identifier(seq_schema), sql.Identifier(seq), g
                )
            )
        remaining = conn.execute(
            "SELECT c.relnamespace = %s::regnamespace FROM pg_class c, aclexplode(c.relacl) a "
            "WHERE a.grantee = %s::regrole AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
            [schema, grantee],
        ).fetchall()
        if not any(r[0] for r in remaining):
            conn.execute(sql.SQL("REVOKE USAGE ON SCHEMA {} FROM {}").format(sql.Identifier(schema), g))
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        if not remaining and owner and owner[0] != grantee:
            conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(sql.Identifier(dbname), g))
    return schema, name


def share(table: str, who: str, write: bool, database: str | None) -> str:
    with _connect(database) as conn:
        kind, grantee = _resolve_grantee(conn, who)
        schema, name = grant_table(conn, table, grantee, write)
        mode = "read-write" if write else "read-only"
        return (
            f"shared {schema}.{name} in database {conn.info.dbname} with {kind} {grantee[2:]} ({mode}); "
            f"they read it with PGDATABASE={conn.info.dbname} or psql -d {conn.info.dbname}"
        )


def revoke(table: str, who: str, database: str | None) -> str:
    with _connect(database) as conn:
        kind, grantee = _resolve_grantee(conn, who)
        schema, name = revoke_table(conn, table, grantee)
        return f"{kind} {grantee[2:]} no longer has access to {schema}.{name} in database {conn.info.dbname}"


_SHARED_BY_ME = """
SELECT n.nspname || '.' || c.relname AS "table", r.rolname AS grantee,
       string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) AS privileges
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
     aclexplode(c.relacl) a JOIN pg_roles r ON r.oid = a.grantee
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND pg_has_role(c.relowner, 'USAGE')
  AND a.grantee <> c.relowner AND (r.rolname LIKE 'u\\_%' OR r.rolname LIKE 'g\\_%')
GROUP BY 1, 2 ORDER BY 1, 2
"""
_SHARED_WITH_ME = """
SELECT n.nspname || '.' || c.relname AS "table",
       concat_ws(', ', CASE WHEN has_table_privilege(c.oid, 'SELECT') THEN 'SELECT' END,
                       CASE WHEN has_table_privilege(c.oid, 'INSERT') THEN 'INSERT' END,
                       CASE WHEN has_table_privilege(c.oid, 'UPDATE') THEN 'UPDATE' END,
                       CASE WHEN has_table_privilege(c.oid, 'DELETE') THEN 'DELETE' END) AS privileges
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT pg_has_role(c.relowner, 'USAGE')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'mydb')
  AND has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE')
ORDER BY 1
"""


def shared(database: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {"shared_by_me": [], "shared_with_me": [], "group_databases": []}
    with _connect(database) as conn:
        me = conn.execute("SELECT session_user").fetchone()[0]  # type: ignore[index]
        result["database"] = conn.info.dbname
        for table, grantee, privileges in conn.execute(_SHARED_BY_ME):
            result["shared_by_me"].append(
                {
                    "database": conn.info.dbname,
                    "table": table,
                    "with": grantee[2:],
                    "kind": "user" if grantee.startswith("u_") else "group",
                    "privileges": privileges,
                }
            )
        others = conn.execute(
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datallowconn AND NOT datistemplate "
            "AND (datname LIKE 'u\\_%%' OR datname LIKE 'g\\_%%') AND datname <> current_database() "
            "AND has_database_privilege(%s, datname, 'CONNECT') ORDER BY 1",
            [me],
        ).fetchall()
    for other, owner in others:
        if owner.startswith("g_") and other == owner:
            result["group_databases"].append(other)
            continue
        try:
            with _connect(other) as conn:
                for table, privileges in conn.execute(_SHARED_WITH_ME):
                    result["shared_with_me"].append(
                        {"database": other, "table": table, "owner": owner[2:], "privileges": privileges}
                    )
        except CliError as exc:
            result.setdefault("errors", []).append(str(exc))
    return result


def status(database: str | None) -> dict[str, Any]:
    with _connect(database) as conn:
        row = conn.execute(
            "SELECT database, size_bytes, quota_bytes, percent, state, message, measured_at FROM mydb.status "
            "WHERE database = current_database()"
        ).fetchone()
        if row is None:
            return {
                "database": conn.info.dbname,
                "state": "unmeasured",
                "message": "the quota check has not measured this database yet; try again in a few minutes",
            }
    keys = ("database", "size_bytes", "quota_bytes", "percent", "state", "message", "measured_at")
    return {
        k: (v.isoformat() if hasattr(v, "isoformat") else float(v) if k == "percent" else v)
        for k, v in zip(keys, row, strict=True)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sciplat-db", description="Share your MyDB tables and see your database's quota."
    )
    parser.add_argument("--database", "-d", help="a database other than PGDATABASE (e.g. your group's g_NAME)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("share", help="let a user or group read (or --write) one of your tables")
    p.add_argument("table")
    p.add_argument("--with", dest="who", required=True, metavar="USER|GROUP")
    p.add_argument("--write", action="store_true", help="also INSERT, UPDATE and DELETE")
    p = sub.add_parser("revoke", help="take a shared table back")
    p.add_argument("table")
    p.add_argument("--from", "--with", dest="who", required=True, metavar="USER|GROUP")
    p = sub.add_parser("shared", help="tables you share, and tables shared with you")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("status", help="size and quota of your database")
    p.add_argument("--json", action="store_true")
    sub.add_parser("info", help="how to connect (without the password)")
    args = parser.parse_args(argv)
    try:
        if args.command == "share":
            print(share(args.table, args.who, args.write, args.database))
        elif args.command == "revoke":
            print(revoke(args.table, args.who, args.database))
        elif args.command == "shared":
            result = shared(args.database)
            if args.json:
                print(json.dumps(result, indent=2))
            else:
                print(f"Shared by me (database {result['database']}):")
                for e in result["shared_by_me"] or [{}]:
                    print(f"  {e['table']} with {e['kind']} {e['with']}: {e['privileges']}" if e else "  nothing")
                print("Shared with me:")
                for e in result["shared_with_me"] or [{}]:
                    print(
                        f"  {e['database']}: {e['table']} (from {e['owner']}): {e['privileges']}" if e else "  nothing"
                    )
                if result["group_databases"]:
                    print("My group databases: " + ", ".join(result["group_databases"]))
        elif args.command == "status":
            result = status(args.database)
            print(json.dumps(result, indent=2) if args.json else result["message"])
        else:
            env = {k: os.environ.get(k, "") for k in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGSSLMODE")}
            for key, value in env.items():
                print(f"{key}={value}")
            print("password: in PGPASSWORD and ~/.pgpass")
    except CliError as exc:
        print(f"sciplat-db: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"sciplat-db: {str(exc).strip()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
