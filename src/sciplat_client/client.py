"""`PlatformClient`: the platform API (docs/reference/api.md) as typed Python calls."""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Literal, NotRequired, TypedDict, cast

API_PREFIX = "/api/v1"
# UWS phases in which a job will not change any more
ENDED_PHASES = frozenset({"COMPLETED", "ERROR", "ABORTED"})
TOKEN_VARIABLES = ("SCIPLAT_TOKEN", "JUPYTERHUB_API_TOKEN")


class PlatformError(Exception):
    """A refusal or failure of the platform API: `status` is the HTTP status (0: not reached),
    `str(exc)` is the API's sentence."""

    def __init__(self, status: int, detail: str, url: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.url = url


class Quantities(TypedDict):
    home_bytes: int | None
    bucket_bytes: int | None
    mydb_bytes: int | None


class Usage(Quantities):
    core_hours: float | None


class Me(TypedDict):
    name: str
    admin: bool
    groups: list[str]
    quotas: Quantities
    usage: Usage


class S3Credentials(TypedDict):
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str


class MyDBCredentials(TypedDict):
    host: str
    port: int
    dbname: str
    user: str
    password: str
    sslmode: str


class Credentials(TypedDict):
    s3: S3Credentials | None
    mydb: MyDBCredentials | None


class Collaboration(TypedDict):
    name: str
    gid: int
    description: str
    owners: list[str]
    members: list[str]
    directory: str | None
    bucket: str | None
    database: str | None
    slurm_account: str | None
    deleted: bool


class Share(TypedDict):
    id: str
    kind: Literal["path", "prefix", "table"]
    owner: str
    target: str
    grantee: str
    mode: Literal["ro", "rw"]
    created: str
    link: str | None


class Shares(TypedDict):
    by_me: list[Share]
    with_me: list[Share]


class Allocation(TypedDict):
    account: str
    core_hours_awarded: float | None
    core_hours_used: float | None
    until: str | None


class Job(TypedDict):
    id: str
    phase: str
    name: NotRequired[str | None]
    account: NotRequired[str | None]
    partition: NotRequired[str | None]
    submitted: NotRequired[str | None]
    started: NotRequired[str | None]
    ended: NotRequired[str | None]
    exit_code: NotRequired[int | None]


class JobResults(TypedDict):
    stdout: str
    stderr: str


def public_url_from_environment(environ: dict[str, str] | None = None) -> str | None:
    """The platform's public URL: SCIPLAT_URL, else (inside a user server) the hub's public URL."""
    env = os.environ if environ is None else environ
    if env.get("SCIPLAT_URL"):
        return env["SCIPLAT_URL"].rstrip("/")
    if env.get("JUPYTERHUB_PUBLIC_URL"):
        return env["JUPYTERHUB_PUBLIC_URL"].rstrip("/")
    hub = env.get("JUPYTERHUB_PUBLIC_HUB_URL", "").rstrip("/")
    if hub:
        return hub.removesuffix("/hub")
    return None


def token_from_environment(environ: dict[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return next((env[name] for name in TOKEN_VARIABLES if env.get(name)), None)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # a redirect means the URL is not the API (a sign-in page, another site): report it
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _detail(status: int, body: bytes, url: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("detail"):
        detail = data["detail"]
        if isinstance(detail, list):  # a validation error: the fields that are wrong
            parts = []
            for item in detail:
                where = ".".join(str(p) for p in item.get("loc", []) if p != "body") if isinstance(item, dict) else ""
                message = item.get("msg", str(item)) if isinstance(item, dict) else str(item)
                parts.append(f"{where}: {message}" if where else str(message))
            return "; ".join(parts)
        return str(detail)
    if status == 401:
        return (
            "The platform did not accept the token (missing, expired or revoked): "
            "create a new one on the hub's token page."
        )
    if status in (301, 302, 303, 307, 308):
        return f"{url} redirected elsewhere: is the URL the platform's address (https://HOST, without /hub)?"
    return f"HTTP {status} from {url}: is this the platform API?"


class PlatformClient:
    """The platform API of one platform, as one user (the token's)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        ca: str | os.PathLike[str] | None = None,
        *,
        timeout: float = 60,
    ) -> None:
        base = url.rstrip("/") if url else public_url_from_environment()
        if not base:
            raise PlatformError(0, "No platform URL: pass url= or set SCIPLAT_URL (e.g. https://platform.example.org).")
        if not base.startswith(("https://", "http://")):
            raise PlatformError(0, f"The platform URL {base!r} must start with https://.")
        self.url = base.removesuffix("/api/v1").removesuffix("/api")
        self.token = token or token_from_environment()
        if not self.token:
            raise PlatformError(
                0, "No API token: pass token= or set SCIPLAT_TOKEN (create one on the hub's token page)."
            )
        ca = ca or os.environ.get("SCIPLAT_CA") or None
        self.ca = str(ca) if ca else None
        self.timeout = timeout
        context = ssl.create_default_context(cafile=self.ca)
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())
        self._name: str | None = None

    # ------------------------------------------------------------------ transport

    def request(self, method: str, path: str, body: Any = None, *, accept: str = "application/json") -> Any:
        """One call of the API (path below /api/v1); the decoded JSON answer, text for text/plain."""
        url = self.url + API_PREFIX + path
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"token {self.token}")
        request.add_header("Accept", accept)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
                kind = response.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            raise PlatformError(exc.code, _detail(exc.code, exc.read(), url), url) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise PlatformError(
                    0, f"The certificate of {self.url} is not trusted: pass the platform's CA file (--ca, SCIPLAT_CA)."
                ) from None
            raise PlatformError(0, f"Cannot reach {self.url}: {reason}.", url) from None
        except (TimeoutError, OSError) as exc:
            raise PlatformError(0, f"Cannot reach {self.url}: {exc}.", url) from None
        if not raw:
            return None
        if kind == "application/json":
            return json.loads(raw)
        return raw.decode("utf-8", "replace")

    @staticmethod
    def _q(part: str) -> str:
        return urllib.parse.quote(str(part), safe="")

    # ------------------------------------------------------------------ me

    def me(self) -> Me:
        """My profile: name, admin, groups, quotas and usage (None where a component is absent)."""
        me = cast(Me, self.request("GET", "/me"))
        self._name = me["name"]
        return me

    @property
    def username(self) -> str:
        """The token's user (asks the API once)."""
        if self._name is None:
            self.me()
        assert self._name is not None
        return self._name

    def credentials(self) -> Credentials:
        """My S3 and MyDB credentials (None where a component is absent)."""
        return cast(Credentials, self.request("GET", "/me/credentials"))

    def allocations(self) -> list[Allocation]:
        """The compute allocations of my Slurm accounts."""
        return cast(list[Allocation], self.request("GET", "/allocations"))

    # ------------------------------------------------------------------ groups

    def groups(self, *, all_groups: bool = False) -> list[Collaboration]:
        """My collaborations; operators: all_groups=True lists every one."""
        return cast(list[Collaboration], self.request("GET", "/groups?all=true" if all_groups else "/groups"))

    def group(self, name: str) -> Collaboration:
        return cast(Collaboration, self.request("GET", f"/groups/{self._q(name)}"))

    def create_group(self, name: str, description: str = "") -> Collaboration:
        """A new collaboration owned by me."""
        return cast(Collaboration, self.request("POST", "/groups", {"name": name, "description": description}))

    def add_member(self, group: str, user: str, role: Literal["member", "owner"] = "member") -> Collaboration:
        """Add USER to GROUP (or change their role); owners and operators only."""
        path = f"/groups/{self._q(group)}/members/{self._q(user)}"
        return cast(Collaboration, self.request("PUT", path, {"role": role}))

    def remove_member(self, group: str, user: str) -> Collaboration:
        """Remove USER from GROUP: their access to the group's data ends."""
        return cast(Collaboration, self.request("DELETE", f"/groups/{self._q(group)}/members/{self._q(user)}"))

    def leave(self, group: str) -> Collaboration:
        """Leave GROUP (the last owner cannot)."""
        return self.remove_member(group, self.username)

    def delete_group(self, group: str) -> Collaboration:
        """Delete GROUP: every member loses access; its data is kept until an operator purges it."""
        return cast(Collaboration, self.request("DELETE", f"/groups/{self._q(group)}"))

    # ------------------------------------------------------------------ shares

    def shares(self) -> Shares:
        """What I share (by_me) and what is shared with me (with_me)."""
        return cast(Shares, self.request("GET", "/shares"))

    def share(
        self,
        target: str,
        grantee: str,
        *,
        kind: Literal["path", "prefix", "table"] = "path",
        mode: Literal["ro", "rw"] = "ro",
    ) -> Share:
        """Share TARGET (a path, "bucket/prefix/" or a table) with "user:NAME" or "group:NAME"."""
        if ":" not in grantee:
            raise PlatformError(0, f"Share with 'user:{grantee}' or 'group:{grantee}', not {grantee!r}.")
        body = {"kind": kind, "target": target, "grantee": grantee, "mode": mode}
        return cast(Share, self.request("POST", "/shares", body))

    def unshare(self, share_id: str) -> None:
        self.request("DELETE", f"/shares/{self._q(share_id)}")

    # ------------------------------------------------------------------ jobs

    def submit_job(
        self,
        script: str,
        *,
        account: str | None = None,
        partition: str | None = None,
        time_limit: int | str | None = None,
        cpus: int | None = None,
        mem: str | None = None,
        name: str | None = None,
    ) -> Job:
        """Submit a batch script (its text, starting with #!) as me; returns the job (phase QUEUED or later)."""
        body: dict[str, Any] = {"script": script}
        options = {
            "account": account,
            "partition": partition,
            "time_limit": time_limit,
            "cpus": cpus,
            "mem": mem,
            "name": name,
        }
        body.update({k: v for k, v in options.items() if v is not None})
        return cast(Job, self.request("POST", "/jobs", body))

    def jobs(self) -> list[Job]:
        return cast(list[Job], self.request("GET", "/jobs"))

    def job(self, job: str | Job) -> Job:
        return cast(Job, self.request("GET", f"/jobs/{self._q(_job_id(job))}"))

    def phase(self, job: str | Job) -> str:
        return str(self.request("GET", f"/jobs/{self._q(_job_id(job))}/phase", accept="text/plain")).strip()

    def wait(self, job: str | Job, timeout: float = 3600, *, every: float = 5) -> Job:
        """Poll until the job ended (COMPLETED, ERROR or ABORTED); TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            phase = self.phase(job)
            if phase in ENDED_PHASES:
                return self.job(job)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {_job_id(job)} is still {phase} after {timeout:.0f} s")
            time.sleep(min(every, max(0.1, deadline - time.monotonic())))

    def results(self, job: str | Job) -> JobResults:
        """The job's stdout and stderr (the last 64 KiB of each) once it ended (409 before)."""
        return cast(JobResults, self.request("GET", f"/jobs/{self._q(_job_id(job))}/results"))

    def cancel(self, job: str | Job) -> Job:
        return cast(Job, self.request("DELETE", f"/jobs/{self._q(_job_id(job))}"))

    def health(self) -> bool:
        return bool((self.request("GET", "/health") or {}).get("ok"))


def _job_id(job: str | Job | int) -> str:
    if isinstance(job, dict):
        return str(job["id"])
    return str(job)
