"""Who is calling: JupyterHub tokens and the service's OAuth cookie.

The API never keeps users or tokens of its own. A request's token (the
``Authorization`` header, or the cookie the OAuth flow set for browsers) goes to
the hub's ``GET /hub/api/user``, which answers with the owner's name, whether
they are an admin, and the token's scopes. The answer is cached for
``cache_seconds`` (60) by the token's SHA-256, so a burst of calls costs the hub
one request; a revoked token keeps working here at most that long.

The OAuth flow (browsers): ``/api/oauth_login?next=PATH`` sends the browser to
the hub's ``/hub/api/oauth2/authorize`` with a random ``state`` kept in a
cookie; the hub sends it back to ``/api/oauth_callback`` with a code, which this
service exchanges (client id ``service-sciplat-api``, its API token as the
secret) for an access token carrying the scopes in the service's
``oauth_client_allowed_scopes``. That token is kept in an HttpOnly, Secure,
SameSite=Lax cookie limited to ``/api/``. A request authenticated by the cookie
that changes something (POST, PUT, DELETE) must come from the platform's own
pages: its ``Origin`` (or ``Referer``) must be the site itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("sciplat_hub.api.auth")

TOKEN_COOKIE = "sciplat-api-token"
STATE_COOKIE = "sciplat-api-oauth-state"


class AuthError(Exception):
    """The caller is not who they need to be; ``status`` is 401, 403 or 503."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Identity:
    """The owner of a token, as the hub reports it."""

    name: str
    admin: bool = False
    scopes: frozenset[str] = field(default_factory=frozenset)
    kind: str = "user"

    def has(self, scope: str) -> bool:
        return scope in self.scopes


def token_from_header(value: str | None) -> str | None:
    """``token X`` or ``Bearer X`` -> X; anything else -> None."""
    if not value:
        return None
    kind, _, token = value.strip().partition(" ")
    if kind.lower() in ("token", "bearer") and token.strip():
        return token.strip()
    return None


Fetch = Callable[[str, str, dict[str, str], bytes | None], tuple[int, bytes]]


def _urllib_fetch(method: str, url: str, headers: dict[str, str], body: bytes | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


class HubAuth:
    """Token checks against the hub's REST API (``hub_api_url``, e.g. http://127.0.0.1:8081/hub/api)."""

    def __init__(
        self,
        hub_api_url: str,
        *,
        service_token: str = "",
        client_id: str = "service-sciplat-api",
        redirect_uri: str = "/api/oauth_callback",
        cache_seconds: float = 60.0,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hub_api_url = hub_api_url.rstrip("/")
        self.service_token = service_token
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.cache_seconds = cache_seconds
        self._fetch = fetch or _urllib_fetch
        self._clock = clock
        self._cache: dict[str, tuple[float, Identity]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ tokens

    def identify(self, token: str) -> Identity:
        """The token's owner and scopes (cached); AuthError 401 when the hub does not know the token."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        identity = self._ask_hub(token)
        with self._lock:
            if len(self._cache) > 10000:  # drop expired entries now and then
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache[key] = (now + self.cache_seconds, identity)
        return identity

    def _ask_hub(self, token: str) -> Identity:
        try:
            status, body = self._fetch("GET", f"{self.hub_api_url}/user", {"Authorization": f"token {token}"}, None)
        except OSError as exc:
            log.warning("the hub did not answer a token check: %s", exc)
            raise AuthError(503, "The hub cannot check your token right now; try again in a minute.") from None
        if status in (401, 403, 404):
            raise AuthError(
                401,
                "Your token is not valid (it expired, was revoked or was mistyped). "
                "Create a new one on the hub's Token page (/hub/token).",
            )
        if status != 200:
            log.warning("the hub answered a token check with HTTP %s: %s", status, body[:200])
            raise AuthError(503, "The hub cannot check your token right now; try again in a minute.")
        try:
            model = json.loads(body)
        except ValueError:
            raise AuthError(503, "The hub gave an unreadable answer to a token check; try again in a minute.") from None
        return Identity(
            name=str(model.get("name", "")),
            admin=bool(model.get("admin", False)),
            scopes=frozenset(str(s) for s in model.get("scopes") or ()),
            kind=str(model.get("kind", "user")),
        )

    def user_exists(self, name: str) -> bool:
        """Whether the hub has a user of this name (with the service's token; read:users:name)."""
        quoted = urllib.parse.quote(name, safe="")
        try:
            status, _ = self._fetch(
                "GET", f"{self.hub_api_url}/users/{quoted}", {"Authorization": f"token {self.service_token}"}, None
            )
        except OSError as exc:
            log.warning("the hub did not answer whether user %s exists: %s", name, exc)
            return False
        return status == 200

    # ------------------------------------------------------------ OAuth (browsers)

    def authorize_url(self, state: str) -> str:
        """Where a browser signs in: the hub's authorize page for this service."""
        query = urllib.parse.urlencode(
            {"client_id": self.client_id, "redirect_uri": self.redirect_uri, "response_type": "code", "state": state}
        )
        hub_prefix = urllib.parse.urlsplit(self.hub_api_url).path  # /hub/api
        return f"{hub_prefix}/oauth2/authorize?{query}"

    def token_for_code(self, code: str) -> str:
        """Exchange an OAuth code for the user's access token."""
        body = urllib.parse.urlencode(
            {
                "client_id": self.client_id,
                "client_secret": self.service_token,
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.redirect_uri,
            }
        ).encode()
        try:
            status, answer = self._fetch(
                "POST",
                f"{self.hub_api_url}/oauth2/token",
                {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
                body,
            )
        except OSError:
            raise AuthError(503, "The hub cannot complete your sign-in right now; try again in a minute.") from None
        if status != 200:
            raise AuthError(401, "The hub refused the sign-in code (it expired or was used); sign in again.")
        try:
            return str(json.loads(answer)["access_token"])
        except (ValueError, KeyError):
            raise AuthError(503, "The hub gave an unreadable answer to the sign-in; try again.") from None


def same_origin(origin: str | None, referer: str | None, host: str | None, scheme: str) -> bool:
    """True when a browser request comes from the site itself (Origin, else Referer, names scheme://host)."""
    if not host:
        return False
    expected = f"{scheme}://{host}".lower()
    if origin:
        return origin.lower().rstrip("/") == expected
    if referer:
        parts = urllib.parse.urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}".lower() == expected
    return False
