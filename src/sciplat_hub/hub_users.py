"""The operator's user commands on the hub host (`sciplat-hub-users`).

`sciplat users …` runs this over SSH on the hub host, as root. It reads the
hub's settings (``/etc/jupyterhub/sciplat.json``): the hub's database for the
sign-ups of the native method (NativeAuthenticator's ``users_info`` table:
pending or approved) and the hub's REST API, with the ``sciplat-admin``
service token, for the hub's users, their servers and tokens.

    sciplat-hub-users list [--json]
    sciplat-hub-users approve NAME…
    sciplat-hub-users disable NAME…   (refused at every sign-in method, servers stopped, tokens revoked)
    sciplat-hub-users enable NAME…
    sciplat-hub-users token NAME [--note TEXT] [--expires SECONDS]

Runs in the hub's venv (it has SQLAlchemy and psycopg2).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sciplat_hub.hub_auth import DISABLED_FILE, disabled_users
from sciplat_hub.hub_config import db_url


class UsersError(Exception):
    pass


class HubUsers:
    def __init__(self, settings: dict[str, Any], disabled_file: Path = DISABLED_FILE) -> None:
        self.settings = settings
        self.disabled_file = disabled_file
        self.api = f"http://127.0.0.1:{int(settings['hub_port'])}/hub/api"

    # ---------------------------------------------------------------- REST API

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api + path, data=data, method=method)
        request.add_header("Authorization", f"token {self.settings['admin_token']}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            detail = exc.read().decode(errors="replace")[:300]
            raise UsersError(f"the hub answered {exc.code} to {method} {path}: {detail}") from None
        except urllib.error.URLError as exc:
            raise UsersError(
                f"the hub's API at {self.api} is not reachable ({exc.reason}); is jupyterhub running?"
            ) from None
        return json.loads(raw) if raw else None

    # ---------------------------------------------------------------- native sign-ups

    def _engine(self) -> Any:
        import sqlalchemy

        return sqlalchemy.create_engine(db_url(self.settings["db"]))

    def signups(self) -> dict[str, dict[str, Any]]:
        import sqlalchemy

        with self._engine().connect() as conn:
            if not sqlalchemy.inspect(conn).has_table("users_info"):
                return {}
            rows = conn.execute(sqlalchemy.text("SELECT username, is_authorized, email FROM users_info")).fetchall()
        return {row[0]: {"approved": bool(row[1]), "email": row[2] or ""} for row in rows}

    def _set_authorized(self, name: str, value: bool) -> bool:
        import sqlalchemy

        with self._engine().begin() as conn:
            if not sqlalchemy.inspect(conn).has_table("users_info"):
                return False
            done = conn.execute(
                sqlalchemy.text("UPDATE users_info SET is_authorized = :v WHERE username = :u"), {"v": value, "u": name}
            )
        return bool(done.rowcount)

    # ---------------------------------------------------------------- commands

    def list(self) -> list[dict[str, Any]]:
        hub_users = {u["name"]: u for u in self._hub_users()}
        signups = self.signups()
        disabled = disabled_users(self.disabled_file)
        rows = []
        for name in sorted(set(hub_users) | set(signups) | disabled):
            user, signup = hub_users.get(name, {}), signups.get(name)
            if name in disabled:
                status = "disabled"
            elif signup is not None and not signup["approved"]:
                status = "pending"
            else:
                status = "active"
            rows.append(
                {
                    "name": name,
                    "status": status,
                    "method": "native" if signup is not None else ("other" if user else "unknown"),
                    "admin": bool(user.get("admin", False)),
                    "servers": sorted((user.get("servers") or {}).keys()),
                    "last_activity": user.get("last_activity"),
                    "email": (signup or {}).get("email", ""),
                }
            )
        return rows

    def _hub_users(self) -> list[dict[str, Any]]:
        users = self.call("GET", "/users?limit=10000&include_stopped_servers") or []
        return users.get("items", []) if isinstance(users, dict) else users

    def approve(self, name: str) -> str:
        if name in disabled_users(self.disabled_file):
            raise UsersError(f"{name} is disabled; run `sciplat users enable {name}` first")
        if not self._set_authorized(name, True):
            raise UsersError(f"{name} has not signed up (no pending sign-up with this name)")
        return f"{name} approved: they can sign in now"

    def disable(self, name: str) -> str:
        names = disabled_users(self.disabled_file)
        if name not in names:
            self._write_disabled(names | {name})
        self._set_authorized(name, False)
        user = self.call("GET", f"/users/{name}")
        if user is not None:
            # deleting the hub's user stops its servers and revokes its cookies and tokens;
            # its data (home, buckets, database) stays
            for server in list((user.get("servers") or {}).keys()):
                self.call("DELETE", f"/users/{name}/servers/{server}" if server else f"/users/{name}/server")
            self.call("DELETE", f"/users/{name}")
        return f"{name} disabled: signed out everywhere, servers stopped, sign-in refused"

    def enable(self, name: str) -> str:
        names = disabled_users(self.disabled_file)
        if name in names:
            self._write_disabled(names - {name})
        self._set_authorized(name, True)
        return f"{name} enabled"

    def token(self, name: str, note: str, expires: int | None) -> dict[str, Any]:
        if name in disabled_users(self.disabled_file):
            raise UsersError(f"{name} is disabled")
        if self.call("GET", f"/users/{name}") is None:
            self.call("POST", f"/users/{name}")
        body: dict[str, Any] = {"note": note}
        if expires:
            body["expires_in"] = expires
        result = self.call("POST", f"/users/{name}/tokens", body)
        return {"user": name, "token": result["token"], "id": result.get("id"), "expires_at": result.get("expires_at")}

    def _write_disabled(self, names: set[str]) -> None:
        self.disabled_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.disabled_file.with_suffix(".tmp")
        tmp.write_text("".join(f"{n}\n" for n in sorted(names)))
        tmp.chmod(0o644)
        tmp.replace(self.disabled_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sciplat-hub-users", description="Manage the hub's users.")
    parser.add_argument("--settings", default="/etc/jupyterhub/sciplat.json")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list")
    p_list.add_argument("--json", action="store_true")
    for command in ("approve", "disable", "enable"):
        p = sub.add_parser(command)
        p.add_argument("names", nargs="+")
        p.add_argument("--json", action="store_true")
    p_token = sub.add_parser("token")
    p_token.add_argument("name")
    p_token.add_argument("--note", default="sciplat token")
    p_token.add_argument("--expires", type=int, default=None)
    p_token.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    users = HubUsers(json.loads(Path(args.settings).read_text()))
    try:
        if args.command == "list":
            rows = users.list()
            if args.json:
                print(json.dumps(rows))
            else:
                for row in rows:
                    print(f"{row['name']:32} {row['status']:9} {row['method']:7} {'admin' if row['admin'] else ''}")
            return 0
        if args.command == "token":
            result = users.token(args.name, args.note, args.expires)
            print(json.dumps(result) if args.json else result["token"])
            return 0
        messages = [getattr(users, args.command)(name) for name in args.names]
        if args.json:
            print(json.dumps({"ok": True, "messages": messages}))
        else:
            print("\n".join(messages))
        return 0
    except UsersError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(exc)}))
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
