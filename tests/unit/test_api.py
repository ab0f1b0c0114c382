"""The platform API (sciplat_hub.api) with FastAPI's TestClient and fakes of the hub, Slurm,
collaborations and sharing: scopes on every endpoint, errors as sentences, UWS phases,
jobs as the user, and the committed OpenAPI document."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from sciplat_hub import hub_config
from sciplat_hub.api import (
    CUSTOM_SCOPES,
    SCOPE_CREDENTIALS,
    SCOPE_GROUPS,
    SCOPE_JOBS,
    SCOPE_READ,
    SCOPE_SHARES,
)
from sciplat_hub.api.__main__ import openapi_document
from sciplat_hub.api.app import Backends, create_app
from sciplat_hub.api.auth import TOKEN_COOKIE, HubAuth, Identity
from sciplat_hub.api.jobs import Jobs, phase_of

REPO = Path(__file__).resolve().parents[2]
ALL = sorted(CUSTOM_SCOPES)

# ------------------------------------------------------------------ fakes


class FakeHub:
    """GET /hub/api/user answers for tokens named after their scopes."""

    def __init__(self) -> None:
        self.tokens: dict[str, dict[str, Any]] = {
            "alice-all": {"name": "alice", "admin": False, "scopes": [*ALL, "read:users:name!user=alice"]},
            "bob-all": {"name": "bob", "admin": False, "scopes": ALL},
            "ops-all": {"name": "ops", "admin": True, "scopes": ALL},
            "alice-none": {"name": "alice", "admin": False, "scopes": ["read:users:name!user=alice"]},
            "service": {"name": "sciplat-probe", "kind": "service", "scopes": ALL},
        }
        for scope in ALL:  # alice's tokens each lacking one scope
            self.tokens[f"alice-without-{scope}"] = {
                "name": "alice",
                "admin": False,
                "scopes": [s for s in ALL if s != scope],
            }
        self.calls = 0

    def fetch(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> tuple[int, bytes]:
        self.calls += 1
        if url.endswith("/oauth2/token"):
            form = dict(x.split("=", 1) for x in (body or b"").decode().split("&"))
            if form.get("code") == "good" and form.get("client_secret") == "svc-secret":
                return 200, json.dumps({"access_token": "alice-all", "token_type": "Bearer"}).encode()
            return 400, b'{"error": "invalid_grant"}'
        token = headers.get("Authorization", "").removeprefix("token ")
        model = self.tokens.get(token)
        if model is None:
            return 403, b'{"status": 403}'
        return 200, json.dumps({"kind": "user", **model}).encode()


class NotFound(Exception):
    pass


class Forbidden(Exception):
    pass


class Conflict(Exception):
    pass


class Invalid(Exception):
    pass


class StorageError(Exception):
    pass


@dataclass
class Group:
    name: str
    owners: list[str]
    members: list[str]
    description: str = ""
    deleted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gid": 20001,
            "description": self.description,
            "owners": sorted(self.owners),
            "members": sorted(self.members),
            "directory": f"/groups/{self.name}",
            "bucket": f"group-{self.name}",
            "database": f"group_{self.name}",
            "slurm_account": self.name,
            "deleted": self.deleted,
        }


@dataclass
class FakeCollab:
    groups: dict[str, Group] = field(default_factory=dict)
    operators: set[str] = field(default_factory=set)
    fail_with: Exception | None = None

    def list(self, member: str | None = None) -> list[Group]:
        return [g for g in self.groups.values() if member is None or member in g.members]

    def get(self, name: str, *, by: str | None = None) -> Group:
        group = self.groups.get(name)
        if group is None or (by is not None and by not in group.members + group.owners and by not in self.operators):
            raise NotFound(f"There is no collaboration {name} that you are a member of.")
        return group

    def create(self, name: str, owner: str, description: str = "") -> Group:
        if self.fail_with:
            raise self.fail_with
        if name in self.groups:
            raise Conflict(f"The name {name} is taken.")
        self.groups[name] = Group(name, [owner], [owner], description)
        return self.groups[name]

    def add_member(self, name: str, username: str, *, role: str = "member", by: str) -> Group:
        group = self.get(name, by=by)
        if by not in group.owners and by not in self.operators:
            raise Forbidden(f"Only the owners of {name} may add members.")
        group.members.append(username)
        if role == "owner":
            group.owners.append(username)
        return group

    def remove_member(self, name: str, username: str, *, by: str) -> Group:
        group = self.get(name, by=by)
        if by != username and by not in group.owners and by not in self.operators:
            raise Forbidden(f"Only the owners of {name} may remove members.")
        if group.owners == [username]:
            raise Invalid(f"You are the last owner of {name}: make another member an owner first.")
        group.members.remove(username)
        return group

    def delete(self, name: str, *, by: str) -> Group:
        group = self.get(name, by=by)
        if by not in group.owners and by not in self.operators:
            raise Forbidden("Only owners delete.")
        group.deleted = True
        return group


@dataclass
class FakeShare:
    id: str
    owner: str
    grantee: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": "path",
            "owner": self.owner,
            "target": "/home/alice/nb.ipynb",
            "grantee": self.grantee,
            "mode": "ro",
            "created": "2026-12-04T21:00:00Z",
            "link": "/hub/user-redirect/lab/tree/shared/alice/nb.ipynb",
        }


@dataclass
class FakeSharing:
    shares: dict[str, FakeShare] = field(default_factory=dict)

    def create(self, owner: str, kind: str, target: str, grantee: str, mode: str = "ro") -> FakeShare:
        share = FakeShare(f"s{len(self.shares) + 1}", owner, grantee)
        self.shares[share.id] = share
        return share

    def delete(self, share_id: str, *, by: str) -> None:
        share = self.shares.get(share_id)
        if share is None or share.owner != by:
            raise NotFound(f"You have no share {share_id}.")
        del self.shares[share_id]

    def by_owner(self, owner: str) -> list[FakeShare]:
        return [s for s in self.shares.values() if s.owner == owner]

    def with_user(self, username: str) -> list[FakeShare]:
        return [s for s in self.shares.values() if s.grantee == f"user:{username}"]


class FakePlatform:
    def __init__(self) -> None:
        self.broken: set[str] = set()

    def _check(self, what: str) -> None:
        if what in self.broken:
            raise StorageError(f"{what} is down")

    def home_usage(self, user: str) -> tuple[int | None, int | None]:
        self._check("home")
        return 1000, 10**9

    def bucket_usage(self, user: str) -> tuple[int | None, int | None]:
        self._check("bucket")
        return 2000, 2 * 10**9

    def mydb_usage(self, user: str) -> tuple[int | None, int | None]:
        self._check("mydb")
        return 3000, 3 * 10**9

    def core_hours(self, user: str) -> float | None:
        return 1.5

    def s3_credentials(self, user: str) -> dict[str, Any] | None:
        self._check("s3")
        return {
            "endpoint": "https://s3.example.org",
            "access_key": f"AK-{user}",
            "secret_key": "SK",
            "region": "default",
            "bucket": f"home-{user}",
        }

    def mydb_credentials(self, user: str) -> dict[str, Any] | None:
        return {"host": "db", "port": 5432, "dbname": user, "user": user, "password": "pw", "sslmode": "verify-full"}

    def allocations(self, user: str) -> list[dict[str, Any]]:
        return [
            {
                "account": "astro",
                "core_hours_awarded": 100.0,
                "core_hours_used": 10.0,
                "core_hours_remaining": 90.0,
                "core_hours_mine": 1.5,
                "until": "2027-01-31",
            }
        ]


class FakeSlurm:
    """runuser/sbatch/squeue/sacct/scancel/tail/mkdir as the API calls them."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, str]] = {}
        self.files: dict[str, str] = {}
        self.calls: list[list[str]] = []
        self.scripts: list[str] = []
        self.not_yet_accounted: set[str] = set()  # jobs slurmdbd does not know yet (sacct lags)
        self.controller_down = False

    def run(self, argv: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        user = ""
        if argv[0] == "runuser":
            user, argv = argv[2], argv[4:]
        out, code, err = "", 0, ""
        if argv[0] == "mkdir":
            pass
        elif argv[0] == "sbatch":
            if self.controller_down:
                return subprocess.CompletedProcess(
                    argv,
                    1,
                    "",
                    "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
                )
            if any(a == "--account=nope" for a in argv):
                return subprocess.CompletedProcess(argv, 1, "", "sbatch: error: Invalid account or account/partition")
            job_id = str(100 + len(self.jobs))
            opts = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
            self.jobs[job_id] = {
                "user": user,
                "state": "PENDING",
                "reason": "Priority",
                "name": opts["job-name"],
                "comment": opts["comment"],
                "account": opts.get("account", "astro"),
            }
            self.scripts.append(stdin or "")
            out = f"{job_id}\n"
        elif argv[0] in ("squeue", "sacct"):
            wanted = next((argv[i + 1] for i, a in enumerate(argv) if a == "--jobs"), None)
            who = next((a.split("=", 1)[1] for a in argv if a.startswith("--user=")), None)
            rows = []
            for job_id, job in self.jobs.items():
                if (wanted and job_id != wanted) or (who and job["user"] != who):
                    continue
                if argv[0] == "sacct" and job_id in self.not_yet_accounted:
                    continue
                if argv[0] == "squeue" and "--states=all" not in argv and job["state"] not in ("PENDING", "RUNNING"):
                    continue
                if argv[0] == "squeue":
                    rows.append(
                        f"{job_id}|{job['name']}|{job['user']}|{job['state']}|{job['reason']}|{job['account']}|batch|"
                        f"2026-12-04T21:00:00|N/A|N/A|{job['comment']}"
                    )
                else:
                    exit_code = "0:0" if job["state"] != "FAILED" else "3:0"
                    end = "2026-12-04T21:01:00" if job["state"] in ("COMPLETED", "FAILED", "CANCELLED") else "Unknown"
                    rows.append(
                        f"{job_id}|{job['name']}|{job['user']}|{job['state']}|{job['reason']}|{job['account']}|batch|"
                        f"2026-12-04T21:00:00|2026-12-04T21:00:05|{end}|{exit_code}|{job['comment']}"
                    )
            out = "\n".join(rows) + ("\n" if rows else "")
        elif argv[0] == "scancel":
            self.jobs[argv[1]]["state"] = "CANCELLED"
        elif argv[0] == "tail":
            path = argv[-1]
            if path not in self.files:
                return subprocess.CompletedProcess(argv, 1, "", "no such file")
            out = self.files[path]
        else:
            raise AssertionError(f"unexpected command {argv}")
        return subprocess.CompletedProcess(argv, code, out, err)


@dataclass
class Bed:
    client: TestClient
    hub: FakeHub
    slurm: FakeSlurm
    collab: FakeCollab
    sharing: FakeSharing
    platform: FakePlatform


@pytest.fixture
def bed() -> Iterator[Bed]:
    hub, slurm, collab, sharing, platform = FakeHub(), FakeSlurm(), FakeCollab(), FakeSharing(), FakePlatform()
    collab.groups["astro"] = Group("astro", ["alice"], ["alice", "bob"])
    collab.groups["secret"] = Group("secret", ["carol"], ["carol"])

    def collaborations(identity: Identity) -> FakeCollab:
        collab.operators = {identity.name} if identity.admin else set()
        return collab

    backends = Backends(
        auth=HubAuth("http://hub/hub/api", service_token="svc-secret", fetch=hub.fetch),
        platform=platform,  # type: ignore[arg-type]
        jobs=Jobs(runner=slurm.run, home_of=lambda user: f"/home/{user}"),
        collaborations=collaborations,
        sharing=lambda identity: sharing,
    )
    with TestClient(create_app(backends), base_url="https://testserver") as client:
        yield Bed(client, hub, slurm, collab, sharing, platform)


def call(bed: Bed, method: str, path: str, token: str | None = "alice-all", **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", {})
    if token:
        headers["Authorization"] = f"token {token}"
    return bed.client.request(method, path, headers=headers, **kwargs)


# ------------------------------------------------------------------ scopes on every endpoint

ENDPOINTS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("GET", "/api/v1/me", SCOPE_READ, None),
    ("GET", "/api/v1/me/credentials", SCOPE_CREDENTIALS, None),
    ("GET", "/api/v1/allocations", SCOPE_READ, None),
    ("GET", "/api/v1/groups", SCOPE_READ, None),
    ("POST", "/api/v1/groups", SCOPE_GROUPS, {"name": "newgroup", "description": "x"}),
    ("GET", "/api/v1/groups/astro", SCOPE_READ, None),
    ("DELETE", "/api/v1/groups/astro", SCOPE_GROUPS, None),
    ("PUT", "/api/v1/groups/astro/members/dave", SCOPE_GROUPS, {"role": "member"}),
    ("DELETE", "/api/v1/groups/astro/members/bob", SCOPE_GROUPS, None),
    ("GET", "/api/v1/shares", SCOPE_READ, None),
    ("POST", "/api/v1/shares", SCOPE_SHARES, {"kind": "path", "target": "nb.ipynb", "grantee": "user:bob"}),
    ("DELETE", "/api/v1/shares/s1", SCOPE_SHARES, None),
    ("POST", "/api/v1/jobs", SCOPE_JOBS, {"script": "echo hi"}),
    ("GET", "/api/v1/jobs", SCOPE_JOBS, None),
    ("GET", "/api/v1/jobs/100", SCOPE_JOBS, None),
    ("GET", "/api/v1/jobs/100/phase", SCOPE_JOBS, None),
    ("POST", "/api/v1/jobs/100/phase", SCOPE_JOBS, {"PHASE": "ABORT"}),
    ("GET", "/api/v1/jobs/100/results", SCOPE_JOBS, None),
    ("DELETE", "/api/v1/jobs/100", SCOPE_JOBS, None),
]


def _template(path: str) -> str:
    parts = path.split("/")
    names = {"groups": "{name}", "members": "{user}", "shares": "{share_id}", "jobs": "{job_id}"}
    return "/".join(names[parts[i - 1]] if i > 3 and parts[i - 1] in names else p for i, p in enumerate(parts))


def test_every_operation_of_the_openapi_document_is_in_the_scope_table() -> None:
    document = openapi_document()
    operations = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if path != "/api/v1/health"
    }
    assert operations == {(method, _template(path)) for method, path, _, _ in ENDPOINTS}


@pytest.mark.parametrize(("method", "path", "scope", "body"), ENDPOINTS, ids=[f"{e[0]} {e[1]}" for e in ENDPOINTS])
def test_a_token_without_the_scope_is_refused(
    bed: Bed, method: str, path: str, scope: str, body: dict[str, Any] | None
) -> None:
    refused = call(bed, method, path, f"alice-without-{scope}", json=body)
    assert refused.status_code == 403, refused.text
    assert scope in refused.json()["detail"]
    assert call(bed, method, path, "alice-none", json=body).status_code == 403
    anonymous = call(bed, method, path, None, json=body)
    assert anonymous.status_code == 401
    assert "token" in anonymous.json()["detail"]
    assert call(bed, method, path, "revoked", json=body).status_code == 401


def test_with_its_scope_each_endpoint_answers_without_a_server_error(bed: Bed) -> None:
    call(bed, "POST", "/api/v1/jobs", json={"script": "echo hi"})  # job 100 for the job endpoints
    bed.sharing.create("alice", "path", "nb.ipynb", "user:bob")  # share s1
    for method, path, _, body in ENDPOINTS:
        answer = call(bed, method, path, json=body)
        assert answer.status_code < 500, f"{method} {path}: {answer.status_code} {answer.text}"
        assert answer.status_code not in (401, 403), f"{method} {path}: {answer.text}"


def test_health_needs_no_token(bed: Bed) -> None:
    assert call(bed, "GET", "/api/v1/health", None).json() == {"ok": True}


def test_service_tokens_are_refused(bed: Bed) -> None:
    answer = call(bed, "GET", "/api/v1/me", "service")
    assert answer.status_code == 403 and "service" in answer.json()["detail"]


def test_bearer_tokens_work_and_token_checks_are_cached(bed: Bed) -> None:
    for _ in range(3):
        answer = bed.client.get("/api/v1/me", headers={"Authorization": "Bearer bob-all"})
        assert answer.status_code == 200
    assert bed.hub.calls == 1
    garbled = bed.client.get("/api/v1/me", headers={"Authorization": "Basic Ym9i"})
    assert garbled.status_code == 401 and "Authorization: token" in garbled.json()["detail"]


# ------------------------------------------------------------------ me, credentials, allocations


def test_me_shows_quotas_usage_and_groups(bed: Bed) -> None:
    me = call(bed, "GET", "/api/v1/me").json()
    assert me == {
        "name": "alice",
        "admin": False,
        "groups": ["astro"],
        "quotas": {"home_bytes": 10**9, "bucket_bytes": 2 * 10**9, "mydb_bytes": 3 * 10**9},
        "usage": {"home_bytes": 1000, "bucket_bytes": 2000, "mydb_bytes": 3000, "core_hours": 1.5},
    }


def test_a_component_down_gives_null_in_me_and_503_for_credentials(bed: Bed) -> None:
    bed.platform.broken = {"bucket", "s3"}
    me = call(bed, "GET", "/api/v1/me").json()
    assert me["usage"]["bucket_bytes"] is None and me["quotas"]["bucket_bytes"] is None
    assert me["usage"]["home_bytes"] == 1000
    answer = call(bed, "GET", "/api/v1/me/credentials")
    assert answer.status_code == 503
    assert answer.json()["detail"] == "object storage failed: s3 is down"


def test_credentials_and_allocations(bed: Bed) -> None:
    credentials = call(bed, "GET", "/api/v1/me/credentials").json()
    assert credentials["s3"]["access_key"] == "AK-alice" and credentials["s3"]["bucket"] == "home-alice"
    assert credentials["mydb"]["sslmode"] == "verify-full"
    allocations = call(bed, "GET", "/api/v1/allocations").json()
    assert allocations[0]["account"] == "astro" and allocations[0]["core_hours_awarded"] == 100.0


# ------------------------------------------------------------------ groups and shares: errors as sentences


def test_groups_of_others_are_hidden_and_errors_map_to_statuses(bed: Bed) -> None:
    assert [g["name"] for g in call(bed, "GET", "/api/v1/groups").json()] == ["astro"]
    hidden = call(bed, "GET", "/api/v1/groups/secret")
    assert hidden.status_code == 404 and "secret" in hidden.json()["detail"]
    assert call(bed, "GET", "/api/v1/groups/secret", "ops-all").status_code == 200  # operators see all
    assert call(bed, "GET", "/api/v1/groups?all=true").status_code == 403
    assert len(call(bed, "GET", "/api/v1/groups?all=true", "ops-all").json()) == 2
    assert call(bed, "GET", "/api/v1/groups/nosuch").status_code == 404
    created = call(bed, "POST", "/api/v1/groups", json={"name": "optics", "description": "lenses"})
    assert created.status_code == 201 and created.json()["owners"] == ["alice"]
    taken = call(bed, "POST", "/api/v1/groups", json={"name": "optics"})
    assert taken.status_code == 409 and taken.json()["detail"] == "The name optics is taken."
    # bob is a member of astro but not an owner
    refused = call(bed, "PUT", "/api/v1/groups/astro/members/dave", "bob-all", json={"role": "member"})
    assert refused.status_code == 403 and refused.json()["detail"] == "Only the owners of astro may add members."
    last = call(bed, "DELETE", "/api/v1/groups/astro/members/alice")
    assert last.status_code == 422 and "last owner" in last.json()["detail"]
    left = call(bed, "DELETE", "/api/v1/groups/astro/members/bob", "bob-all")
    assert left.status_code == 200 and "bob" not in left.json()["members"]
    deleted = call(bed, "DELETE", "/api/v1/groups/optics")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True


def test_bad_bodies_are_refused_with_a_sentence(bed: Bed) -> None:
    bad = call(bed, "POST", "/api/v1/groups", json={"name": "Bad Name!"})
    assert bad.status_code == 422
    assert isinstance(bad.json()["detail"], str) and "name" in bad.json()["detail"]
    bad_role = call(bed, "PUT", "/api/v1/groups/astro/members/dave", json={"role": "king"})
    assert bad_role.status_code == 422
    assert "grantee" in call(bed, "POST", "/api/v1/shares", json={"kind": "path", "target": "x", "grantee": "bob"}).text


def test_an_unexpected_library_error_is_a_500_with_a_sentence(bed: Bed) -> None:
    bed.collab.fail_with = RuntimeError("boom")
    with TestClient(bed.client.app, raise_server_exceptions=False, base_url="https://testserver") as client:
        answer = client.post("/api/v1/groups", json={"name": "other"}, headers={"Authorization": "token alice-all"})
    assert answer.status_code == 500 and "journal" in answer.json()["detail"]


def test_shares_by_me_and_with_me(bed: Bed) -> None:
    made = call(bed, "POST", "/api/v1/shares", json={"kind": "path", "target": "nb.ipynb", "grantee": "user:bob"})
    assert made.status_code == 201
    share_id = made.json()["id"]
    assert [s["id"] for s in call(bed, "GET", "/api/v1/shares", "bob-all").json()["with_me"]] == [share_id]
    assert call(bed, "DELETE", f"/api/v1/shares/{share_id}", "bob-all").status_code == 404
    assert call(bed, "DELETE", f"/api/v1/shares/{share_id}").status_code == 204
    assert call(bed, "GET", "/api/v1/shares").json() == {"by_me": [], "with_me": []}


# ------------------------------------------------------------------ browsers: OAuth cookie


def test_oauth_sign_in_sets_a_cookie_that_works_for_reads_and_same_site_changes(bed: Bed) -> None:
    client = bed.client
    start = client.get("/api/oauth_login?next=/hub/platform", follow_redirects=False)
    assert start.status_code == 302
    location = start.headers["location"]
    assert location.startswith("/hub/api/oauth2/authorize?") and "client_id=service-sciplat-api" in location
    state = location.split("state=")[1]
    assert client.get("/api/oauth_callback?code=good&state=wrong", follow_redirects=False).status_code == 403
    done = client.get(f"/api/oauth_callback?code=good&state={state}", follow_redirects=False)
    assert done.status_code == 302 and done.headers["location"] == "/hub/platform"
    assert client.cookies.get(TOKEN_COOKIE) == "alice-all"
    assert client.get("/api/v1/me").json()["name"] == "alice"
    forged = client.post("/api/v1/groups", json={"name": "viacookie"}, headers={"Origin": "https://evil.example"})
    assert forged.status_code == 403 and "this site" in forged.json()["detail"]
    same = client.post("/api/v1/groups", json={"name": "viacookie"}, headers={"Origin": "https://testserver"})
    assert same.status_code == 201
    for evil in ("//evil.example", "/\\evil.example", "https://evil.example"):
        client.get("/api/oauth_login", params={"next": evil}, follow_redirects=False)
        assert client.cookies.get("sciplat-api-oauth-state", "").endswith("%2Fhub%2Fhome"), evil
    assert client.get("/api/docs").status_code == 404  # no Swagger UI (it would load scripts from a CDN)


# ------------------------------------------------------------------ jobs (UWS)


@pytest.mark.parametrize(
    ("state", "reason", "phase"),
    [
        ("PENDING", "Priority", "QUEUED"),
        ("PENDING", "Resources", "QUEUED"),
        ("PENDING", "JobHeldUser", "PENDING"),
        ("REQUEUED", "", "QUEUED"),
        ("CONFIGURING", "", "EXECUTING"),
        ("RUNNING", "", "EXECUTING"),
        ("COMPLETING", "", "EXECUTING"),
        ("SUSPENDED", "", "EXECUTING"),
        ("COMPLETED", "", "COMPLETED"),
        ("FAILED", "", "ERROR"),
        ("TIMEOUT", "", "ERROR"),
        ("OUT_OF_MEMORY", "", "ERROR"),
        ("NODE_FAIL", "", "ERROR"),
        ("CANCELLED by 1000", "", "ABORTED"),
        ("CANCELLED+", "", "ABORTED"),
    ],
)
def test_uws_phase_of_slurm_states(state: str, reason: str, phase: str) -> None:
    assert phase_of(state, reason) == phase


def test_a_job_is_submitted_as_the_user_in_their_home(bed: Bed) -> None:
    answer = call(bed, "POST", "/api/v1/jobs", json={"script": "echo hi", "cpus": 2, "time_limit": 5, "name": "t1"})
    assert answer.status_code == 201, answer.text
    job = answer.json()
    assert job["phase"] == "QUEUED" and answer.headers["location"] == f"/api/v1/jobs/{job['id']}"
    sbatch = next(c for c in bed.slurm.calls if "sbatch" in c)
    assert sbatch[:4] == ["runuser", "-u", "alice", "--"]
    assert "--chdir=/home/alice" in sbatch and "--cpus-per-task=2" in sbatch and "--time=5" in sbatch
    assert bed.slurm.scripts == ["#!/bin/bash\necho hi"]
    refused = call(bed, "POST", "/api/v1/jobs", json={"script": "echo hi", "account": "nope"})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("Slurm refused the job: Invalid account")
    bed.slurm.controller_down = True
    down = call(bed, "POST", "/api/v1/jobs", json={"script": "echo hi"})
    assert down.status_code == 503 and "controller cannot be reached" in down.json()["detail"]


def test_another_users_job_is_not_found(bed: Bed) -> None:
    job_id = call(bed, "POST", "/api/v1/jobs", json={"script": "echo hi"}).json()["id"]
    for method, path in [("GET", ""), ("GET", "/phase"), ("GET", "/results"), ("DELETE", "")]:
        answer = call(bed, method, f"/api/v1/jobs/{job_id}{path}", "bob-all")
        assert answer.status_code == 404, (method, path, answer.text)
    assert call(bed, "GET", "/api/v1/jobs", "bob-all").json() == []
    assert call(bed, "GET", "/api/v1/jobs/abc").status_code == 404
    assert bed.slurm.jobs[job_id]["state"] == "PENDING"


def test_results_once_ended_and_abort(bed: Bed) -> None:
    job_id = call(bed, "POST", "/api/v1/jobs", json={"script": "echo hi"}).json()["id"]
    early = call(bed, "GET", f"/api/v1/jobs/{job_id}/results")
    assert early.status_code == 409 and "not ended" in early.json()["detail"]
    bed.slurm.jobs[job_id].update(state="COMPLETED", reason="None")
    bed.slurm.files[f"/home/alice/.sciplat/api-jobs/{job_id}.out"] = "hi\n"
    assert call(bed, "GET", f"/api/v1/jobs/{job_id}/phase").text == "COMPLETED"
    results = call(bed, "GET", f"/api/v1/jobs/{job_id}/results").json()
    assert results == {"id": job_id, "phase": "COMPLETED", "exit_code": 0, "stdout": "hi\n", "stderr": ""}
    tail = next(c for c in bed.slurm.calls if "tail" in c)
    assert tail[:4] == ["runuser", "-u", "alice", "--"]  # the user's files are read as the user
    listed = call(bed, "GET", "/api/v1/jobs").json()
    assert [j["id"] for j in listed] == [job_id]
    bed.slurm.not_yet_accounted.add(job_id)  # just ended: only slurmctld knows it
    assert [j["phase"] for j in call(bed, "GET", "/api/v1/jobs").json()] == ["COMPLETED"]
    bed.slurm.not_yet_accounted.clear()

    second = call(bed, "POST", "/api/v1/jobs", json={"script": "sleep 600"}).json()["id"]
    form = call(
        bed,
        "POST",
        f"/api/v1/jobs/{second}/phase",
        data={"PHASE": "ABORT"},
        follow_redirects=False,
    )
    assert form.status_code == 303 and form.headers["location"] == f"/api/v1/jobs/{second}"
    assert call(bed, "GET", f"/api/v1/jobs/{second}").json()["phase"] == "ABORTED"
    third = call(bed, "POST", "/api/v1/jobs", json={"script": "sleep 600"}).json()["id"]
    assert call(bed, "POST", f"/api/v1/jobs/{third}/phase", json={"PHASE": "ABORT"}).json()["phase"] == "ABORTED"
    fourth = call(bed, "POST", "/api/v1/jobs", json={"script": "sleep 600"}).json()["id"]
    assert call(bed, "DELETE", f"/api/v1/jobs/{fourth}").json()["phase"] == "ABORTED"
    bad = call(bed, "POST", f"/api/v1/jobs/{fourth}/phase", json={"PHASE": "EXPLODE"})
    assert bad.status_code == 422 and "PHASE=ABORT" in bad.json()["detail"]


# ------------------------------------------------------------------ the OpenAPI document


def test_the_committed_openapi_document_is_the_apps_and_valid() -> None:
    committed = json.loads((REPO / "docs" / "api" / "openapi.json").read_text())
    assert committed == openapi_document(), (
        "docs/api/openapi.json differs from the app; regenerate it with "
        "`.venv/bin/python -m sciplat_hub.api --openapi > docs/api/openapi.json`"
    )
    validate(committed)
    assert committed["components"]["securitySchemes"]["JupyterHubToken"]["name"] == "Authorization"


# ------------------------------------------------------------------ the hub's side


def test_the_hub_registers_the_api_service_and_gives_users_its_scopes() -> None:
    settings = {
        "prefix": "/opt/jupyterhub",
        "idle_timeout": 3600,
        "cull_every": 300,
        "max_age": 0,
        "admin_token": "t0k",
        "api_token": "a91",
        "authenticators": [{"type": "native"}],
    }
    services, _ = hub_config.services(settings)
    api = next(s for s in services if s["name"] == "sciplat-api")
    assert api["api_token"] == "a91" and api["oauth_redirect_uri"] == "/api/oauth_callback"
    assert set(api["oauth_client_allowed_scopes"]) == set(CUSTOM_SCOPES)
    assert "sciplat-api" not in [s["name"] for s in hub_config.services({**settings, "api_token": ""})[0]]
    role = next(r for r in hub_config.services(settings)[1] if r["name"] == "sciplat-api")
    assert role == {"name": "sciplat-api", "scopes": ["read:users:name"], "services": ["sciplat-api"]}


def test_user_exists_asks_the_hub_with_the_service_token() -> None:
    seen: list[tuple[str, str]] = []

    def fetch(method: str, url: str, headers: dict[str, str], body: bytes | None) -> tuple[int, bytes]:
        seen.append((url, headers["Authorization"]))
        return (200, b"{}") if url.endswith("/users/alice") else (404, b"{}")

    auth = HubAuth("http://hub:8081/hub/api", service_token="svc", fetch=fetch)
    assert auth.user_exists("alice") and not auth.user_exists("nobody")
    assert seen[0] == ("http://hub:8081/hub/api/users/alice", "token svc")


def test_component_failures_of_collaborations_are_503(bed: Bed) -> None:
    class CollabError(Exception):
        pass

    class ComponentError(CollabError):
        pass

    bed.collab.fail_with = ComponentError("The group bucket could not be made; repeat the operation.")
    answer = call(bed, "POST", "/api/v1/groups", json={"name": "flaky"})
    assert answer.status_code == 503 and "repeat" in answer.json()["detail"]


def test_every_operation_names_its_scope_in_the_openapi_document() -> None:
    document = openapi_document()
    scopes = {
        (method.upper(), path): item[method].get("x-scopes")
        for path, item in document["paths"].items()
        for method in item
    }
    expected = {(method, _template(path)): [scope] for method, path, scope, _ in ENDPOINTS}
    assert scopes == {**expected, ("GET", "/api/v1/health"): None}


# ------------------------------------------------------------------ the components' adapter


def test_absent_components_give_null_and_no_allocations() -> None:
    from sciplat_hub.api.platform import Platform

    platform = Platform(deployed=lambda component: False)
    assert platform.home_usage("alice") == (None, None)
    assert platform.bucket_usage("alice") == (None, None)
    assert platform.mydb_usage("alice") == (None, None)
    assert platform.core_hours("alice") is None
    assert platform.s3_credentials("alice") is None and platform.mydb_credentials("alice") is None
    assert platform.allocations("alice") == []


def test_allocations_are_the_accounts_the_user_is_in(monkeypatch: pytest.MonkeyPatch) -> None:
    from sciplat_hub import slurm_accounts
    from sciplat_hub.api.platform import Platform

    rows = [
        slurm_accounts.Allocation("astro", 100.0, 12.5, "2027-01-31", {"alice": 2.25, "bob": 10.25}),
        slurm_accounts.Allocation("default", None, 3.0, None, {"alice": 1.0}),
        slurm_accounts.Allocation("secret", 50.0, 1.0, None, {"carol": 1.0}),
    ]

    class Accounts:
        def allocations(self) -> list[slurm_accounts.Allocation]:
            return rows

    monkeypatch.setattr(slurm_accounts.SlurmAccounts, "from_host_config", classmethod(lambda cls: Accounts()))
    platform = Platform(deployed=lambda component: component == "slurm")
    found = platform.allocations("alice")
    assert [a["account"] for a in found] == ["astro", "default"]
    assert found[0] == {
        "account": "astro",
        "core_hours_awarded": 100.0,
        "core_hours_used": 12.5,
        "core_hours_remaining": 87.5,
        "core_hours_mine": 2.25,
        "until": "2027-01-31",
    }
    assert found[1]["core_hours_awarded"] is None and found[1]["core_hours_remaining"] is None
    assert platform.core_hours("alice") == 3.25
