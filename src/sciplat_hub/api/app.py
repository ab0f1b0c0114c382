"""The FastAPI application: every endpoint of ``/api/v1``, its scope and its errors.

`create_app` takes its collaborators (the hub token check, the platform's
components, Slurm, collaborations and sharing) as arguments, so the unit tests
run the very same app with fakes. Endpoints are ``async`` and hand every
blocking call to the thread pool (`_call`), which also turns the libraries'
refusals into HTTP answers ``{"detail": "<sentence>"}``:

- collaborations and sharing (`sciplat_hub.collab`): NotFound 404, Forbidden
  403, Conflict 409, Invalid 422;
- jobs (`sciplat_hub.api.jobs.JobsError`) and components
  (`sciplat_hub.api.platform.PlatformError`): their own status;
- a component's own error (storage, MyDB, Slurm, LDAP...): 503 with its sentence.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import typing
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from sciplat_hub.api import (
    SCOPE_CREDENTIALS,
    SCOPE_GROUPS,
    SCOPE_JOBS,
    SCOPE_READ,
    SCOPE_SHARES,
)
from sciplat_hub.api import models as m
from sciplat_hub.api.auth import (
    STATE_COOKIE,
    TOKEN_COOKIE,
    AuthError,
    HubAuth,
    Identity,
    same_origin,
    token_from_header,
)
from sciplat_hub.api.jobs import JobRequest, Jobs, JobsError
from sciplat_hub.api.platform import Platform, PlatformError

log = logging.getLogger("sciplat_hub.api")

T = TypeVar("T")
VERSION = "1.0.0"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# library errors by class name (their modules are imported lazily, and the tests' fakes define their own)
STATUS_BY_ERROR = {
    "NotFound": 404,
    "Forbidden": 403,
    "Conflict": 409,
    "Invalid": 422,
    # collab: the directory changed but a component did not follow (repeat), or the directory is down
    "ComponentError": 503,
    "CollabError": 503,
}
COMPONENT_ERRORS = {
    "StorageError": "object storage",
    "MyDBError": "MyDB",
    "SlurmAccountsError": "Slurm",
    "PosixError": "the shared filesystem",
    "DirectoryError": "the accounts directory",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    words = {
        401: "No token, or a token the hub does not know.",
        403: "The token lacks the scope this needs, or you may not do this.",
        404: "No such thing, or not yours to see.",
        409: "It exists already, or is not in a state that allows this.",
        422: "The request is malformed: the sentence says which field and why.",
        503: "A platform component is unavailable; try again later.",
    }
    return {code: {"model": m.Problem, "description": words[code]} for code in codes}


COMMON = _problems(401, 403, 422, 503)


@dataclass
class Backends:
    auth: HubAuth
    platform: Platform
    jobs: Jobs
    # (identity) -> a sciplat_hub.collab.Collaborations acting for that caller; None: not deployed
    collaborations: Callable[[Identity], Any] | None = None
    # (identity) -> a sciplat_hub.sharing.Sharing; None: not deployed
    sharing: Callable[[Identity], Any] | None = None


def _map_error(exc: Exception) -> ApiError | None:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, (JobsError, PlatformError, AuthError)):
        return ApiError(exc.status, str(exc))
    for klass in type(exc).__mro__:
        if klass.__name__ in STATUS_BY_ERROR:
            return ApiError(STATUS_BY_ERROR[klass.__name__], str(exc) or klass.__name__)
        if klass.__name__ in COMPONENT_ERRORS:
            return ApiError(503, f"{COMPONENT_ERRORS[klass.__name__]} failed: {exc}")
    return None


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call in the thread pool; a library refusal becomes an ApiError."""
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except Exception as exc:
        mapped = _map_error(exc)
        if mapped is None:
            raise
        raise mapped from None


def create_app(backends: Backends, *, public_url: str = "") -> FastAPI:
    app = FastAPI(
        title="sciplat platform API",
        version=VERSION,
        description=(
            "Your profile, quotas and usage, your S3 and MyDB credentials, collaborations (groups), sharing, "
            "compute allocations and batch jobs (IVOA UWS-like phases) on a sciplat science platform.\n\n"
            "Authenticate with a JupyterHub API token (`Authorization: token <token>` or `Bearer <token>`; "
            "create one on the hub's Token page). Each endpoint needs one of the custom scopes "
            "`custom:platform:read`, `custom:platform:credentials`, `custom:platform:groups`, "
            "`custom:platform:shares`, `custom:platform:jobs`; every user's tokens hold them all unless created "
            'with fewer. Errors are `{"detail": "<sentence>"}`.'
        ),
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI would load its scripts from a CDN; the reference is in the docs
        redoc_url=None,
        servers=[{"url": public_url.rstrip("/") or "/"}],
    )
    auth = backends.auth
    token_header = APIKeyHeader(
        name="Authorization",
        scheme_name="JupyterHubToken",
        description="`token <JupyterHub API token>` or `Bearer <token>`.",
        auto_error=False,
    )

    # ------------------------------------------------------------ errors as sentences

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors()[:5]:
            where = ".".join(str(x) for x in error.get("loc", ()) if x != "body") or "request"
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return JSONResponse({"detail": "The request is not valid: " + "; ".join(parts) + "."}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"There is no {request.url.path} in this API; GET /api/openapi.json lists what there is."
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}."
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(
            {"detail": "The platform API failed unexpectedly; the operators find the cause in its journal."},
            status_code=500,
        )

    # ------------------------------------------------------------ who is calling

    def require(scope: str) -> Callable[..., Awaitable[Identity]]:
        async def dependency(request: Request, authorization: str | None = Depends(token_header)) -> Identity:
            token = token_from_header(authorization)
            via_cookie = False
            if token is None and authorization:
                raise ApiError(401, "Send the token as 'Authorization: token <token>' (or 'Bearer <token>').")
            if token is None:
                token = request.cookies.get(TOKEN_COOKIE) or None
                via_cookie = token is not None
            if token is None:
                raise ApiError(
                    401,
                    "This needs a JupyterHub API token: send 'Authorization: token <token>' (create one on the "
                    "hub's Token page, /hub/token), or sign in through /api/oauth_login in a browser.",
                    {"WWW-Authenticate": "token"},
                )
            try:
                identity = await run_in_threadpool(auth.identify, token)
            except AuthError as exc:
                raise ApiError(exc.status, str(exc)) from None
            if identity.kind != "user" or not identity.name:
                raise ApiError(403, "The platform API acts for users; this token belongs to a service.")
            if via_cookie and request.method not in SAFE_METHODS:
                scheme = request.headers.get("x-forwarded-proto", request.url.scheme)
                host = request.headers.get("x-forwarded-host") or request.headers.get("host")
                if not same_origin(request.headers.get("origin"), request.headers.get("referer"), host, scheme):
                    raise ApiError(403, "A change made with the browser's sign-in must come from this site's pages.")
            if not identity.has(scope):
                raise ApiError(
                    403,
                    f"This token may not do this: it lacks the scope {scope}. Use a token created with it "
                    "(a token created on the hub's Token page without choosing scopes has every platform scope).",
                )
            return identity

        return dependency

    read = Depends(require(SCOPE_READ))
    credentials_scope = Depends(require(SCOPE_CREDENTIALS))
    groups_scope = Depends(require(SCOPE_GROUPS))
    shares_scope = Depends(require(SCOPE_SHARES))
    jobs_scope = Depends(require(SCOPE_JOBS))

    def collaborations(identity: Identity) -> Any:
        if backends.collaborations is None:
            raise ApiError(503, "Collaborations are not available on this platform (their component is not deployed).")
        return backends.collaborations(identity)

    def sharing(identity: Identity) -> Any:
        if backends.sharing is None:
            raise ApiError(503, "Sharing is not available on this platform (its component is not deployed).")
        return backends.sharing(identity)

    # ------------------------------------------------------------ health and sign-in

    @app.get("/api/v1/health", tags=["platform"], summary="Is the API up (no token needed)")
    async def health() -> m.Health:
        return m.Health(ok=True)

    @app.get("/api/oauth_login", include_in_schema=False)
    async def oauth_login(next: str = "/hub/home") -> Response:
        # a path on this site only: "//host" and "/\\host" would leave it
        target = next if next.startswith("/") and next[1:2] not in ("/", "\\") else "/hub/home"
        state = secrets.token_urlsafe(24)
        answer = RedirectResponse(auth.authorize_url(state), status_code=302)
        answer.set_cookie(
            STATE_COOKIE,
            f"{state}|{urllib.parse.quote(target, safe='')}",
            max_age=600,
            path="/api/",
            secure=True,
            httponly=True,
            samesite="lax",
        )
        return answer

    @app.get("/api/oauth_callback", include_in_schema=False)
    async def oauth_callback(request: Request, code: str = "", state: str = "") -> Response:
        saved, _, target = (request.cookies.get(STATE_COOKIE) or "").partition("|")
        if not code or not state or not saved or not secrets.compare_digest(saved, state):
            raise ApiError(403, "This sign-in did not start here or took too long; open /api/oauth_login again.")
        try:
            token = await run_in_threadpool(auth.token_for_code, code)
        except AuthError as exc:
            raise ApiError(exc.status, str(exc)) from None
        answer = RedirectResponse(urllib.parse.unquote(target) or "/hub/home", status_code=302)
        answer.delete_cookie(STATE_COOKIE, path="/api/")
        answer.set_cookie(TOKEN_COOKIE, token, path="/api/", secure=True, httponly=True, samesite="lax")
        return answer

    # ------------------------------------------------------------ me

    @app.get(
        "/api/v1/me",
        tags=["me"],
        summary="My profile, quotas and usage",
        responses=COMMON,
        openapi_extra={"x-scopes": [SCOPE_READ]},
    )
    async def me(identity: Identity = read) -> m.Me:
        user = identity.name
        platform = backends.platform
        NO_USAGE: tuple[int | None, int | None] = (None, None)

        async def optional(fn: Callable[[str], T], default: T) -> T:
            try:
                return await _call(fn, user)
            except ApiError as exc:  # one component down: its numbers are null, the rest still answers
                log.warning("me %s: %s", user, exc)
                return default

        async def my_groups() -> list[str]:
            if backends.collaborations is None:
                return []
            none: list[Any] = []
            found = await optional(lambda name: collaborations(identity).list(member=name), none)
            return sorted(c.name for c in found if not c.deleted)

        home, bucket, database, hours, groups = await asyncio.gather(
            optional(platform.home_usage, NO_USAGE),
            optional(platform.bucket_usage, NO_USAGE),
            optional(platform.mydb_usage, NO_USAGE),
            optional(platform.core_hours, None),
            my_groups(),
        )
        return m.Me(
            name=user,
            admin=identity.admin,
            groups=groups,
            quotas=m.Quotas(home_bytes=home[1], bucket_bytes=bucket[1], mydb_bytes=database[1]),
            usage=m.Usage(home_bytes=home[0], bucket_bytes=bucket[0], mydb_bytes=database[0], core_hours=hours),
        )

    @app.get(
        "/api/v1/me/credentials",
        tags=["me"],
        summary="My S3 and MyDB credentials",
        responses={**COMMON, **_problems(409)},
        openapi_extra={"x-scopes": [SCOPE_CREDENTIALS]},
    )
    async def my_credentials(identity: Identity = credentials_scope) -> m.Credentials:
        s3, mydb = await asyncio.gather(
            _call(backends.platform.s3_credentials, identity.name),
            _call(backends.platform.mydb_credentials, identity.name),
        )
        return m.Credentials(
            s3=m.S3Credentials(**s3) if s3 else None,
            mydb=m.MyDBCredentials(**mydb) if mydb else None,
        )

    @app.get(
        "/api/v1/allocations",
        tags=["me"],
        summary="Compute allocations of my Slurm accounts",
        responses=COMMON,
        openapi_extra={"x-scopes": [SCOPE_READ]},
    )
    async def my_allocations(identity: Identity = read) -> list[m.Allocation]:
        rows = await _call(backends.platform.allocations, identity.name)
        return [m.Allocation(**row) for row in rows]

    # ------------------------------------------------------------ groups

    def _collab_json(c: Any) -> m.Collaboration:
        return m.Collaboration(**c.to_json())

    @app.get(
        "/api/v1/groups",
        tags=["groups"],
        summary="My collaborations (operators: all=true for all)",
        responses=COMMON,
        openapi_extra={"x-scopes": [SCOPE_READ]},
    )
    async def list_groups(all: bool = False, identity: Identity = read) -> list[m.Collaboration]:
        if all and not identity.admin:
            raise ApiError(403, "Only the platform's operators may list every collaboration (all=true).")
        found = await _call(lambda: collaborations(identity).list(member=None if all else identity.name))
        return [_collab_json(c) for c in found]

    @app.post(
        "/api/v1/groups",
        tags=["groups"],
        summary="Create a collaboration (I am its owner)",
        status_code=201,
        responses={**COMMON, **_problems(409)},
        openapi_extra={"x-scopes": [SCOPE_GROUPS]},
    )
    async def create_group(body: m.GroupCreate, identity: Identity = groups_scope) -> m.Collaboration:
        created = await _call(
            lambda: collaborations(identity).create(body.name, owner=identity.name, description=body.description)
        )
        return _collab_json(created)

    async def _visible_group(name: str, identity: Identity) -> Any:
        # NotFound unless the caller is a member, an owner (also of a deleted one) or an operator
        return await _call(lambda: collaborations(identity).get(name, by=identity.name))

    @app.get(
        "/api/v1/groups/{name}",
        tags=["groups"],
        summary="One collaboration (members and operators)",
        responses={**COMMON, **_problems(404)},
        openapi_extra={"x-scopes": [SCOPE_READ]},
    )
    async def get_group(name: str, identity: Identity = read) -> m.Collaboration:
        return _collab_json(await _visible_group(name, identity))

    @app.delete(
        "/api/v1/groups/{name}",
        tags=["groups"],
        summary="Delete a collaboration: members lose access, its data stays until an operator purges it",
        responses={**COMMON, **_problems(404)},
        openapi_extra={"x-scopes": [SCOPE_GROUPS]},
    )
    async def delete_group(name: str, identity: Identity = groups_scope) -> m.Collaboration:
        return _collab_json(await _call(lambda: collaborations(identity).delete(name, by=identity.name)))

    @app.put(
        "/api/v1/groups/{name}/members/{user}",
        tags=["groups"],
        summary="Add a member, or change a member's role (owners and operators)",
        responses={**COMMON, **_problems(404, 409)},
        openapi_extra={"x-scopes": [SCOPE_GROUPS]},
    )
    async def put_member(
        name: str, user: str, body: m.MemberRole, identity: Identity = groups_scope
    ) -> m.Collaboration:
        changed = await _call(lambda: collaborations(identity).add_member(name, user, role=body.role, by=identity.name))
        return _collab_json(changed)

    @app.delete(
        "/api/v1/groups/{name}/members/{user}",
        tags=["groups"],
        summary="Remove a member (owners and operators), or leave (the member themselves)",
        responses={**COMMON, **_problems(404)},
        openapi_extra={"x-scopes": [SCOPE_GROUPS]},
    )
    async def delete_member(name: str, user: str, identity: Identity = groups_scope) -> m.Collaboration:
        return _collab_json(await _call(lambda: collaborations(identity).remove_member(name, user, by=identity.name)))

    # ------------------------------------------------------------ shares

    @app.get(
        "/api/v1/shares",
        tags=["shares"],
        summary="What I share, and what is shared with me",
        responses=COMMON,
        openapi_extra={"x-scopes": [SCOPE_READ]},
    )
    async def list_shares(identity: Identity = read) -> m.Shares:
        def both() -> tuple[list[Any], list[Any]]:
            s = sharing(identity)
            return s.by_owner(identity.name), s.with_user(identity.name)

        by_me, with_me = await _call(both)
        return m.Shares(
            by_me=[m.Share(**s.to_json()) for s in by_me], with_me=[m.Share(**s.to_json()) for s in with_me]
        )

    @app.post(
        "/api/v1/shares",
        tags=["shares"],
        summary="Share a file or folder, a bucket prefix or a MyDB table with a user or a group",
        status_code=201,
        responses={**COMMON, **_problems(404, 409)},
        openapi_extra={"x-scopes": [SCOPE_SHARES]},
    )
    async def create_share(body: m.ShareCreate, identity: Identity = shares_scope) -> m.Share:
        share = await _call(
            lambda: sharing(identity).create(identity.name, body.kind, body.target, body.grantee, body.mode)
        )
        return m.Share(**share.to_json())

    @app.delete(
        "/api/v1/shares/{share_id}",
        tags=["shares"],
        summary="Stop sharing (its owner, or an operator)",
        status_code=204,
        responses={**COMMON, **_problems(404)},
        openapi_extra={"x-scopes": [SCOPE_SHARES]},
    )
    async def delete_share(share_id: str, identity: Identity = shares_scope) -> Response:
        await _call(lambda: sharing(identity).delete(share_id, by=identity.name))
        return Response(status_code=204)

    # ------------------------------------------------------------ jobs (UWS-like)

    jobs = backends.jobs

    @app.post(
        "/api/v1/jobs",
        tags=["jobs"],
        summary="Submit a batch job (it runs as me, in my home directory)",
        status_code=201,
        responses={**COMMON, **_problems(409)},
        openapi_extra={"x-scopes": [SCOPE_JOBS]},
    )
    async def submit_job(body: m.JobSubmit, response: Response, identity: Identity = jobs_scope) -> m.Job:
        request = JobRequest(**body.model_dump())
        job = m.Job(**await _call(jobs.submit, identity.name, request))
        response.headers["Location"] = f"/api/v1/jobs/{job.id}"
        return job

    @app.get(
        "/api/v1/jobs",
        tags=["jobs"],
        summary="My jobs of the last 14 days, newest first",
        responses=COMMON,
        openapi_extra={"x-scopes": [SCOPE_JOBS]},
    )
    async def list_jobs(identity: Identity = jobs_scope) -> list[m.Job]:
        return [m.Job(**job) for job in await _call(jobs.list, identity.name)]

    @app.get(
        "/api/v1/jobs/{job_id}",
        tags=["jobs"],
        summary="One of my jobs",
        responses={**COMMON, **_problems(404)},
        openapi_extra={"x-scopes": [SCOPE_JOBS]},
    )
    async def get_job(job_id: str, identity: Identity = jobs_scope) -> m.Job:
        return m.Job(**await _call(jobs.get, identity.name, job_id))

    @app.get(
        "/api/v1/jobs/{job_id}/phase",
        tags=["jobs"],
        summary="The job's UWS phase as text",
        response_class=PlainTextResponse,
        responses={
            **COMMON,
            **_problems(404),
            200: {"content": {"text/plain": {"schema": {"type": "string", "enum": list(typing.get_args(m.Phase))}}}},
        },
        openapi_extra={"x-scopes": [SCOPE_JOBS]},
    )
    async def get_phase(job_id: str, identity: Identity = jobs_scope) -> PlainTextResponse:
        job = await _call(jobs.get, identity.name, job_id)
        return PlainTextResponse(job["phase"])

    @app.post(
        "/api/v1/jobs/{job_id}/phase",
        tags=["jobs"],
        summary="PHASE=ABORT cancels the job (a form answers 303 to the job, JSON answers 200 with it)",
        responses={
            **COMMON,
            **_problems(404),
            200: {"model": m.Job, "description": "The job, with phase ABORTED unless it had ended."},
            303: {"description": "Form request: see the job."},
        },
        openapi_extra={
            "x-scopes": [SCOPE_JOBS],
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {"schema": m.PhaseChange.model_json_schema()},
                    "application/json": {"schema": m.PhaseChange.model_json_schema()},
                },
            },
        },
    )
    async def post_phase(job_id: str, request: Request, identity: Identity = jobs_scope) -> Response:
        raw = await request.body()
        form = "application/x-www-form-urlencoded" in request.headers.get("content-type", "")
        fields: dict[str, Any] = {}
        if form:
            fields = {k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode(errors="replace")).items()}
        else:
            try:
                import json

                parsed = json.loads(raw or b"{}")
                fields = parsed if isinstance(parsed, dict) else {}
            except ValueError:
                fields = {}
        value = str(next((v for k, v in fields.items() if k.upper() == "PHASE"), "")).upper()
        if value == "ABORT":
            job = await _call(jobs.cancel, identity.name, job_id)
        elif value == "RUN":  # UWS: jobs here are queued when submitted; RUN changes nothing
            job = await _call(jobs.get, identity.name, job_id)
        else:
            raise ApiError(422, "Send PHASE=ABORT to cancel the job (PHASE=RUN is accepted and changes nothing).")
        if form:
            return RedirectResponse(f"/api/v1/jobs/{job_id}", status_code=303)
        return JSONResponse(m.Job(**job).model_dump())

    @app.get(
        "/api/v1/jobs/{job_id}/results",
        tags=["jobs"],
        summary="The job's stdout and stderr (the last 64 KiB each), once it has ended",
        responses={**COMMON, **_problems(404, 409)},
        openapi_extra={"x-scopes": [SCOPE_JOBS]},
    )
    async def job_results(job_id: str, identity: Identity = jobs_scope) -> m.JobResults:
        return m.JobResults(**await _call(jobs.results, identity.name, job_id))

    @app.delete(
        "/api/v1/jobs/{job_id}",
        tags=["jobs"],
        summary="Cancel the job (the same as PHASE=ABORT)",
        responses={**COMMON, **_problems(404)},
        openapi_extra={"x-scopes": [SCOPE_JOBS]},
    )
    async def delete_job(job_id: str, identity: Identity = jobs_scope) -> m.Job:
        return m.Job(**await _call(jobs.cancel, identity.name, job_id))

    return app
