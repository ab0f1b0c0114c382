"""Several sign-in methods on one JupyterHub login page.

Runs inside JupyterHub (the hub's venv imports sciplat_hub). `SciplatAuthenticator`
is NativeAuthenticator (self-registration with admin approval or open sign-up,
password rules) whose login page also shows one button per other method:
OIDC providers (oauthenticator's GenericOAuthenticator), GitHub, and the
anonymous tutorial mode. Each other method runs under its own URL prefix
(``/hub/<scope>/…``) and prefixes the user names it produces
(``cilogon-alice``, ``gh-alice``, ``tutorial-1f3a9c2e``) so two methods never
map to the same account; native sign-ups may not take those prefixes.

Operators disable a user with ``sciplat users disable``, which lists the name in
the hub's disabled-users file; every method refuses a listed name.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import ssl
import urllib.request
from pathlib import Path
from typing import Any

from jupyterhub.auth import Authenticator
from jupyterhub.handlers import BaseHandler
from jupyterhub.utils import url_path_join
from nativeauthenticator import NativeAuthenticator
from tornado import web
from traitlets import Dict, List, Unicode

from sciplat_hub.hub_tutorial import TUTORIAL_PREFIX

USERNAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
DISABLED_FILE = Path("/var/lib/jupyterhub/disabled-users")


def disabled_users(path: Path = DISABLED_FILE) -> set[str]:
    try:
        return {line.strip() for line in path.read_text().splitlines() if line.strip()}
    except FileNotFoundError:
        return set()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def to_username(prefix: str, raw: str) -> str:
    """A provider's user name as a POSIX-safe platform user name with the provider's prefix.

    An e-mail-like name keeps its local part; other characters become '-'. Raises
    HTTP 403 with a sentence when nothing usable is left.
    """
    local = raw.split("@", 1)[0] if "@" in raw else raw
    name = slug(local)
    if name and not name[0].isalpha() and not prefix:
        name = "u-" + name
    username = (prefix + name)[:32].rstrip("-")
    if not USERNAME.match(username):
        raise web.HTTPError(403, f"The name {raw!r} from the identity provider cannot be used as a user name here.")
    return username


def discover(issuer: str, timeout: float = 10) -> dict[str, Any]:
    """The provider's OpenID configuration (its endpoints)."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    context = ssl.create_default_context()
    with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
        data: dict[str, Any] = json.load(response)
    return data


class _ScopedMixin:
    """Serves an authenticator's handlers under /hub/<url_scope>/ and prefixes its user names."""

    url_scope = ""
    username_prefix = ""
    allowed_domains: list[str] = []  # noqa: RUF012

    def login_url(self, base_url: str) -> str:
        return super().login_url(url_path_join(base_url, self.url_scope))  # type: ignore[misc]

    def logout_url(self, base_url: str) -> str:
        return super().logout_url(url_path_join(base_url, self.url_scope))  # type: ignore[misc]

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [(url_path_join("/" + self.url_scope, path), h) for path, h in super().get_handlers(app)]  # type: ignore[misc]

    async def authenticate(self, handler: Any, data: Any = None, **kwargs: Any) -> Any:
        result = await super().authenticate(handler, data, **kwargs)  # type: ignore[misc]
        if result is None:
            return None
        if isinstance(result, str):
            result = {"name": result}
        result["name"] = to_username(self.username_prefix, result["name"])
        return result

    def check_blocked_users(self, username: str, authentication: Any = None) -> bool:
        if username in disabled_users():
            return False
        return bool(super().check_blocked_users(username, authentication))  # type: ignore[misc]

    def check_allowed(self, username: str, authentication: Any = None) -> bool:
        if self.allowed_domains:
            user = ((authentication or {}).get("auth_state") or {}).get(
                getattr(self, "user_auth_state_key", "oauth_user"), {}
            )
            email = str(user.get("email", ""))
            if "@" not in email or email.rsplit("@", 1)[1].lower() not in self.allowed_domains:
                return False
        if getattr(self, "_sciplat_restricted", False):
            return bool(super().check_allowed(username, authentication))  # type: ignore[misc]
        return True


class TutorialLoginHandler(BaseHandler):
    """GET: a page with one button; POST (with the XSRF token): a throw-away user."""

    async def get(self) -> None:
        html_page = await self.render_template(
            "sciplat-tutorial.html",
            xsrf=self.xsrf_token.decode("ascii"),
            action=self.request.path,
            lifetime_minutes=int(self.authenticator.lifetime // 60),
        )
        self.finish(html_page)

    async def post(self) -> None:
        user = await self.login_user({"tutorial": True})
        if user is None:
            raise web.HTTPError(403, "Tutorial sign-in is not available.")
        self.redirect(url_path_join(self.hub.base_url, "spawn"))


class TutorialAuthenticator(Authenticator):
    """The anonymous tutorial mode: each click makes a new throw-away user."""

    login_service = "tutorial"
    lifetime = 3600

    async def authenticate(self, handler: Any, data: Any = None) -> Any:
        if not (isinstance(data, dict) and data.get("tutorial")):
            return None
        return {"name": TUTORIAL_PREFIX + secrets.token_hex(4)}

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [("/login", TutorialLoginHandler)]


def _scoped(base: type, scope: str, prefix: str) -> type:
    return type(f"Scoped{base.__name__}", (_ScopedMixin, base), {"url_scope": scope, "username_prefix": prefix})


class SciplatAuthenticator(NativeAuthenticator):  # type: ignore[misc]
    """Native sign-up and sign-in plus one button per other configured method."""

    methods = List(config=True, help="identity.authenticators of platform.yaml (dicts with a type).")
    oauth_client_secrets = Dict(config=True, help="Client secrets by oidc name, or 'github'.")
    public_url = Unicode("", config=True, help="The platform's public URL (OAuth callbacks).")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        native = next((m for m in self.methods if m.get("type") == "native"), None)
        self.native_enabled = native is not None
        self.enable_signup = self.native_enabled
        if native is not None:
            self.open_signup = native.get("approval", "admin") == "open"
            self.minimum_password_length = int(native.get("min_password_length", 12))
            self.check_common_password = True
        # approval is NativeAuthenticator's gate; allowed_users would lock out approved users
        self.allow_all = True
        self.allowed_failed_logins = 5
        self.seconds_before_next_try = 60
        self.others: list[tuple[Authenticator, str]] = []
        self.reserved_prefixes: list[str] = [TUTORIAL_PREFIX]
        for method in self.methods:
            try:
                made = self._make(method)
            except Exception:
                self.log.exception("sign-in method %s is disabled: it could not be set up", method.get("type"))
                continue
            if made is not None:
                self.others.append(made)
        self.custom_html = self._buttons()

    # ------------------------------------------------------------------ other methods

    def _callback(self, scope: str) -> str:
        return f"{self.public_url.rstrip('/')}/hub/{scope}/oauth_callback"

    def _make(self, method: dict[str, Any]) -> tuple[Authenticator, str] | None:
        kind = method.get("type")
        if kind == "oidc":
            from oauthenticator.generic import GenericOAuthenticator

            name = str(method["name"])
            scope = "oidc-" + slug(name)
            prefix = method.get("username_prefix")
            prefix = slug(name) + "-" if prefix is None else str(prefix)
            endpoints = discover(str(method["issuer"]))
            cls = _scoped(GenericOAuthenticator, scope, prefix)
            groups = list(method.get("allowed_groups") or [])
            group_settings: dict[str, Any] = {}
            if groups:  # oauthenticator checks the groups claim through the hub's own groups
                group_settings = {
                    "manage_groups": True,
                    "auth_state_groups_key": f"oauth_user.{method.get('groups_claim', 'groups')}",
                    "allowed_groups": set(groups),
                }
            sub = cls(
                parent=self,
                login_service=name,
                client_id=method["client_id"],
                client_secret=self.oauth_client_secrets.get(name, ""),
                oauth_callback_url=self._callback(scope),
                authorize_url=endpoints["authorization_endpoint"],
                token_url=endpoints["token_endpoint"],
                userdata_url=endpoints["userinfo_endpoint"],
                username_claim=method.get("username_claim", "preferred_username"),
                scope=["openid", "profile", "email"],
                **group_settings,
                allow_all=not groups and not method.get("allowed_domains"),
                admin_users=set(self.admin_users),
            )
            sub.allowed_domains = [d.lower() for d in method.get("allowed_domains") or []]
            sub._sciplat_restricted = bool(groups)
            self.reserved_prefixes.append(prefix)
            return sub, f"Sign in with {name}"
        if kind == "github":
            from oauthenticator.github import GitHubOAuthenticator

            prefix = str(method.get("username_prefix", "gh-"))
            cls = _scoped(GitHubOAuthenticator, "github", prefix)
            orgs = list(method.get("allowed_organizations") or [])
            sub = cls(
                parent=self,
                client_id=method["client_id"],
                client_secret=self.oauth_client_secrets.get("github", ""),
                oauth_callback_url=self._callback("github"),
                allowed_organizations=set(orgs),
                allow_all=not orgs,
                admin_users=set(self.admin_users),
            )
            sub._sciplat_restricted = bool(orgs)
            self.reserved_prefixes.append(prefix)
            return sub, "Sign in with GitHub"
        if kind == "anonymous":
            cls = _scoped(TutorialAuthenticator, "tutorial", "")
            sub = cls(parent=self, allow_all=True)
            sub.lifetime = int(method.get("lifetime", 3600))
            return sub, str(method.get("label", "Try it without an account"))
        return None

    def _buttons(self) -> str:
        parts = []
        for sub, label in self.others:
            url = sub.login_url("/hub/")
            parts.append(
                f'<div class="sciplat-login-method"><a role="button" class="btn btn-jupyter btn-lg" '
                f'href="{html.escape(url)}">{html.escape(label)}</a></div>'
            )
        return "\n".join(parts)

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        routes: list[tuple[str, Any]] = list(super().get_handlers(app))
        for sub, _label in self.others:
            for path, handler in sub.get_handlers(app):
                wrapped = type(handler.__name__, (handler,), {"authenticator": sub})
                routes.append((path, wrapped))
        return routes

    # ------------------------------------------------------------------ native rules

    async def authenticate(self, handler: Any, data: Any) -> Any:
        if not self.native_enabled:
            return None
        return await super().authenticate(handler, data)

    def validate_username(self, username: str) -> bool:
        # every user of the hub, whichever method made it
        if not USERNAME.match(username):
            return False
        return bool(super().validate_username(username))

    def create_user(self, username: str, password: str, **kwargs: Any) -> Any:
        # a native sign-up may not take a name of another method's namespace
        if any(self.normalize_username(username).startswith(p) for p in self.reserved_prefixes if p):
            return None
        return super().create_user(username, password, **kwargs)

    def get_authed_users(self) -> set[str]:
        # NativeAuthenticator pre-approves sign-ups named like an admin; here an admin
        # is approved like anyone else (`sciplat users approve`), so nobody can take the
        # name first on a new platform.
        return set()

    def check_blocked_users(self, username: str, authentication: Any = None) -> bool:
        if username in disabled_users():
            return False
        return bool(super().check_blocked_users(username, authentication))

    def delete_user(self, user: Any) -> None:
        # `sciplat users disable` deletes the hub's user (servers, cookies, tokens) but
        # keeps the sign-up, so `sciplat users enable` can restore it with its password
        if user.name in disabled_users():
            Authenticator.delete_user(self, user)
            return
        super().delete_user(user)
