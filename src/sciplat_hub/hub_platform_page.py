"""The hub's platform page, ``/hub/platform``: my quotas and usage, my groups, what is shared.

Runs inside JupyterHub (an extra handler that `sciplat_hub.hub_config` registers).
For the signed-in user it creates a short-lived API token with the platform
scopes the page needs, calls the platform API (`sciplat_hub.api`, the hub service
``sciplat-api``) on this host with Tornado's asynchronous HTTP client, and
deletes the token when the page is done, so no blocking call sits on the hub's
event loop and no token outlives the request.

The forms (create a group, add or remove a member, leave, share, unshare) post
back to the page with the hub's XSRF token; the page performs the one API call,
keeps the outcome (the API's own sentence on a refusal) in a short-lived signed
cookie and redirects to itself (post/redirect/get), so a reload never repeats an
action.

The parts without JupyterHub (what a form becomes as an API call, the quota rows)
are plain functions, unit-tested in tests/unit/test_client.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

# the platform API's scopes the page needs (sciplat_hub.api.SCOPE_*; a unit test keeps them equal). Not
# imported from there: the hub imports this module at start, and must start without the API's package.
PAGE_SCOPES = ["custom:platform:read", "custom:platform:groups", "custom:platform:shares"]
TOKEN_SECONDS = 300  # the page's token: one request's worth, deleted when the page is done
FLASH_COOKIE = "sciplat-platform-flash"
NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
QUOTAS = (("home_bytes", "Home directory"), ("bucket_bytes", "Object storage (S3)"), ("mydb_bytes", "MyDB database"))
UNREACHABLE = "The platform API does not answer right now; try again in a minute."


class FormError(ValueError):
    """A form that cannot become an API call; str() is the sentence shown on the page."""


@dataclass(frozen=True)
class Call:
    """One platform API call a form asks for, and the sentence shown when it succeeds."""

    method: str
    path: str
    body: dict[str, Any] | None
    done: str


def human_bytes(value: float | None) -> str:
    # the same units as sciplat_client.cli.human_bytes (that package is not on the hosts)
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def quota_rows(me: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per storage quota: label, used, limit (human units), percent (None: no limit or unknown)."""
    quotas, usage = me.get("quotas") or {}, me.get("usage") or {}
    rows = []
    for key, label in QUOTAS:
        used, limit = usage.get(key), quotas.get(key)
        if used is None and limit is None:
            continue  # the component is not on this platform
        percent = min(100.0, 100.0 * used / limit) if used is not None and limit else None
        rows.append(
            {
                "key": key.removesuffix("_bytes"),
                "label": label,
                "used": human_bytes(used),
                "limit": human_bytes(limit) if limit else "no limit",
                "percent": percent,
                "level": "danger" if (percent or 0) >= 90 else "warning" if (percent or 0) >= 75 else "success",
            }
        )
    return rows


def _name(form: dict[str, str], field: str, what: str) -> str:
    value = form.get(field, "").strip()
    if not NAME.match(value):
        raise FormError(
            f"{value!r} is not a {what} name: lower-case letters, digits and '-', starting with a letter."
            if value
            else f"Give the {what}'s name."
        )
    return value


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def form_call(form: dict[str, str], me: str) -> Call:
    """The API call of a submitted form (fields as the page's forms name them)."""
    action = form.get("action", "")
    if action == "create-group":
        group = _name(form, "group", "group")
        body = {"name": group, "description": form.get("description", "").strip()}
        return Call("POST", "/groups", body, f"You created the group {group}.")
    if action in ("add-member", "remove-member", "leave"):
        group = _name(form, "group", "group")
        user = me if action == "leave" else _name(form, "user", "user")
        path = f"/groups/{_q(group)}/members/{_q(user)}"
        if action == "add-member":
            role = form.get("role", "member")
            if role not in ("member", "owner"):
                raise FormError(f"{role!r} is not a role: choose member or owner.")
            return Call(
                "PUT",
                path,
                {"role": role},
                f"{user} is now {'an owner' if role == 'owner' else 'a member'} of {group}.",
            )
        if action == "leave":
            return Call("DELETE", path, None, f"You left the group {group}.")
        return Call("DELETE", path, None, f"You removed {user} from {group}.")
    if action == "share":
        kind = form.get("kind", "path")
        if kind not in ("path", "prefix", "table"):
            raise FormError(f"{kind!r} is not something to share: choose a path, a bucket prefix or a table.")
        target = form.get("target", "").strip()
        if not target:
            raise FormError("Give what to share: a path in your home or a group directory, a bucket prefix or a table.")
        grantee_kind = form.get("grantee_kind", "user")
        if grantee_kind not in ("user", "group"):
            raise FormError("Share with a user or a group.")
        grantee = f"{grantee_kind}:{_name(form, 'grantee', grantee_kind)}"
        mode = form.get("mode", "ro")
        if mode not in ("ro", "rw"):
            raise FormError("Choose read-only or read-write.")
        body = {"kind": kind, "target": target, "grantee": grantee, "mode": mode}
        access = "read-write" if mode == "rw" else "read-only"
        return Call("POST", "/shares", body, f"You shared {target} with {grantee} ({access}).")
    if action == "unshare":
        share = form.get("share", "").strip()
        if not share:
            raise FormError("Which share? The form lost its id; reload the page.")
        return Call("DELETE", f"/shares/{_q(share)}", None, "You stopped sharing it.")
    raise FormError(f"The page does not know the action {action!r}; reload it.")


def api_sentence(status: int, body: Any) -> str:
    """What the page shows for a refused API call: the API's own sentence when it gave one."""
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        return "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in body["detail"])
    if status == 599:
        return UNREACHABLE
    return f"The platform API answered {status}; try again, or ask the operators if it persists."


def safe_link(link: Any) -> str | None:
    """A share's notebook link, if it is a path on this site (never another site or a script)."""
    if isinstance(link, str) and link.startswith("/") and not link.startswith("//"):
        return link
    return None


def view(me: dict[str, Any] | None, groups: list[dict[str, Any]], shares: dict[str, Any]) -> dict[str, Any]:
    """The template's variables from the API's answers."""
    name = (me or {}).get("name", "")
    admin = bool((me or {}).get("admin"))
    group_views = []
    for group in sorted(groups, key=lambda g: str(g.get("name"))):
        owners = set(group.get("owners") or [])
        group_views.append(
            {
                **group,
                "i_own": name in owners,
                "can_manage": (name in owners or admin) and not group.get("deleted"),
                "members_roles": [(m, "owner" if m in owners else "member") for m in group.get("members") or []],
            }
        )
    return {
        "me": me,
        "quota_rows": quota_rows(me or {}),
        "core_hours": ((me or {}).get("usage") or {}).get("core_hours"),
        "groups": group_views,
        "shared_by_me": [{**s, "link": safe_link(s.get("link"))} for s in shares.get("by_me") or []],
        "shared_with_me": [{**s, "link": safe_link(s.get("link"))} for s in shares.get("with_me") or []],
    }


# ---------------------------------------------------------------------- the handler (inside JupyterHub)

try:
    from jupyterhub import orm
    from jupyterhub.handlers import BaseHandler
    from tornado import web
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest
except ImportError:  # the unit tests import the functions above without JupyterHub
    import types

    BaseHandler = object
    web = types.SimpleNamespace(authenticated=lambda method: method)  # type: ignore[assignment]


class PlatformPageHandler(BaseHandler):  # type: ignore[misc,valid-type]
    """GET: the page; POST: one form's action, then back to the page."""

    def initialize(self, api_url: str = "") -> None:
        # the API's own address on this host (hub_config: settings api_url / api_port), not the gateway's
        self.api_url = api_url.rstrip("/")

    def _api_base(self) -> str | None:
        return self.api_url or None

    def _page_token(self) -> str | None:
        try:
            return str(
                self.current_user.new_api_token(
                    note="the hub's platform page", expires_in=TOKEN_SECONDS, scopes=list(PAGE_SCOPES)
                )
            )
        except (KeyError, ValueError):  # the platform scopes are not defined: the API is not deployed on this hub
            self.log.warning("platform page: no token with %s for %s", PAGE_SCOPES, self.current_user.name)
            return None

    def _drop_token(self, token: str) -> None:
        found = orm.APIToken.find(self.db, token)
        if found is not None:
            self.db.delete(found)
            self.db.commit()

    async def _api(self, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        base = self._api_base()
        if base is None:
            return 599, {"detail": "The platform API is not set up on this hub."}
        request = HTTPRequest(
            f"{base}/api/v1{path}",
            method=method,
            headers={
                "Authorization": f"token {token}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
            body=json.dumps(body) if body is not None else ("{}" if method in ("POST", "PUT") else None),
            request_timeout=60,
            follow_redirects=False,
        )
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        try:
            answer = json.loads(response.body) if response.body else None
        except ValueError:
            answer = None
        if response.code == 599:
            self.log.warning("platform page: %s %s: %s", method, path, response.error)
        return response.code, answer

    def _flash(self, ok: bool, text: str) -> None:
        self._set_cookie(FLASH_COOKIE, json.dumps({"ok": ok, "text": text}), encrypted=True, path=self.request.path)

    def _take_flash(self) -> dict[str, Any] | None:
        raw = self.get_secure_cookie(FLASH_COOKIE, max_age_days=1 / 24)
        if raw is None:
            return None
        self.clear_cookie(FLASH_COOKIE, path=self.request.path)
        try:
            flash = json.loads(raw)
        except ValueError:
            return None
        return flash if isinstance(flash, dict) else None

    @web.authenticated
    async def get(self) -> None:
        flash = self._take_flash()
        errors: list[str] = []
        data: dict[str, Any] = {"me": None, "groups": [], "shares": {}, "allocations": []}
        token = self._page_token()
        if token is None:
            errors.append("The platform API is not set up on this hub.")
        else:
            try:
                answers = await asyncio.gather(
                    self._api(token, "GET", "/me"),
                    self._api(token, "GET", "/groups"),
                    self._api(token, "GET", "/shares"),
                    self._api(token, "GET", "/allocations"),
                )
            finally:
                self._drop_token(token)
            for key, (status, body) in zip(("me", "groups", "shares", "allocations"), answers, strict=True):
                if status == 200:
                    data[key] = body
                else:
                    sentence = api_sentence(status, body)
                    if sentence not in errors:
                        errors.append(sentence)
        page = await self.render_template(
            "platform.html",
            flash=flash,
            errors=errors,
            allocations=data["allocations"] or [],
            **view(data["me"], data["groups"] or [], data["shares"] or {}),
        )
        self.finish(page)

    @web.authenticated
    async def post(self) -> None:
        form = {key: self.get_body_argument(key, "") for key in self.request.body_arguments}
        try:
            call = form_call(form, self.current_user.name)
        except FormError as exc:
            self._flash(False, str(exc))
        else:
            token = self._page_token()
            if token is None:
                self._flash(False, "The platform API is not set up on this hub.")
            else:
                try:
                    status, body = await self._api(token, call.method, call.path, call.body)
                finally:
                    self._drop_token(token)
                if 200 <= status < 300:
                    self._flash(True, call.done)
                else:
                    self._flash(False, api_sentence(status, body))
        self.redirect(self.request.path, status=303)
