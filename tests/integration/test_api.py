"""The platform API (sciplat_hub.api) on the test bed, through https://127.0.0.1:8443/api/.

Every request goes from this machine to the gateway's port published on its
loopback, i.e. from outside the test bed, with a real user's JupyterHub token.
The user signs up, is approved and signs in (test_hub.new_approved_user) and is
provisioned as the hub does before a first server (`python -m sciplat_hub.provision`
as root on gw), so they have a home, S3 keys, a MyDB database and a Slurm
association.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import requests
from botocore.config import Config

from sciplat_hub.api import CUSTOM_SCOPES
from tests.conftest import REPO
from tests.integration.conftest import PUBLIC_URL, wait_for
from tests.integration.test_hub import new_approved_user
from tests.unit.test_api import ENDPOINTS

PY = "/opt/sciplat/venv/bin/python"
API = PUBLIC_URL + "/api/v1"


def call(token: str | None, method: str, path: str, ca_cert: Path, **kwargs: Any) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if token:
        headers["Authorization"] = f"token {token}"
    return requests.request(method, API + path, headers=headers, verify=str(ca_cert), timeout=90, **kwargs)


@pytest.fixture(scope="module")
def user(host_of: Callable[[str], Any], ca_cert: Path) -> Iterator[dict[str, Any]]:
    person = new_approved_user("api", ca_cert)
    done = host_of("gw").run(f"{PY} -m sciplat_hub.provision --json {person['name']}")
    assert done.rc == 0, done.stdout + done.stderr
    yield person
    # jobs left running by a failed test do not hold the compute nodes
    host_of("gw").run(f"scancel --user={person['name']}")


def test_health_and_the_served_openapi_document(deployed: dict[str, Any], ca_cert: Path) -> None:
    assert call(None, "GET", "/health", ca_cert).json() == {"ok": True}
    served = requests.get(PUBLIC_URL + "/api/openapi.json", verify=str(ca_cert), timeout=30).json()
    committed = json.loads((REPO / "docs" / "api" / "openapi.json").read_text())
    assert served["servers"] == [{"url": PUBLIC_URL}]
    assert {**served, "servers": committed["servers"]} == committed, "the hosts serve another API than the committed"


def test_me_from_outside_the_bed_shows_quotas_and_usage(user: dict[str, Any], ca_cert: Path) -> None:
    assert call(None, "GET", "/me", ca_cert).status_code == 401
    assert call("not-a-token", "GET", "/me", ca_cert).status_code == 401
    me = call(user["token"], "GET", "/me", ca_cert)
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["name"] == user["name"] and body["admin"] is False
    for key in ("home_bytes", "bucket_bytes", "mydb_bytes"):
        assert isinstance(body["quotas"][key], int) and body["quotas"][key] > 0, body
        assert isinstance(body["usage"][key], int) and body["usage"][key] >= 0, body
    assert body["usage"]["core_hours"] is not None


@pytest.fixture
def s3_resolves_to_the_gateway(user: dict[str, Any], ca_cert: Path) -> Iterator[None]:
    """The S3 endpoint's host name (s3.<domain>) resolves to this machine's loopback, where the gateway is."""
    endpoint = call(user["token"], "GET", "/me/credentials", ca_cert).json()["s3"]["endpoint"]
    name = urlsplit(endpoint).hostname
    original = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        return original("127.0.0.1" if host == name else host, *args, **kwargs)

    socket.getaddrinfo = resolve  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.getaddrinfo = original  # type: ignore[assignment]


def test_credentials_work_and_usage_follows(
    user: dict[str, Any], ca_cert: Path, s3_resolves_to_the_gateway: None
) -> None:
    answer = call(user["token"], "GET", "/me/credentials", ca_cert)
    assert answer.status_code == 200, answer.text
    creds = answer.json()
    s3 = creds["s3"]
    assert s3["bucket"] == f"home-{user['name']}"
    client = boto3.client(
        "s3",
        endpoint_url=s3["endpoint"],
        aws_access_key_id=s3["access_key"],
        aws_secret_access_key=s3["secret_key"],
        region_name=s3["region"],
        verify=str(ca_cert),
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4", retries={"max_attempts": 2}),
    )
    client.put_object(Bucket=s3["bucket"], Key="api-test.bin", Body=b"x" * 200_000)
    listed = client.list_objects_v2(Bucket=s3["bucket"])
    assert [o["Key"] for o in listed.get("Contents", [])] == ["api-test.bin"]
    db = creds["mydb"]
    assert db["user"] and db["password"] and db["dbname"] and db["sslmode"] == "verify-full"
    # the bucket's bytes show in /me (radosgw's bucket stats follow the upload)
    wait_for(
        "the upload in /me usage",
        lambda: call(user["token"], "GET", "/me", ca_cert).json()["usage"]["bucket_bytes"] >= 200_000,
        timeout=60,
        every=3,
    )


def test_a_browser_signs_in_with_oauth_through_the_hub(user: dict[str, Any]) -> None:
    """The hub session (signed in with a password) gets the API's cookie through the OAuth flow."""
    session: requests.Session = user["session"]
    done = session.get(PUBLIC_URL + "/api/oauth_login?next=/hub/home", timeout=60)
    assert done.status_code == 200 and done.url == PUBLIC_URL + "/hub/home", done.url
    me = session.get(API + "/me", timeout=60)
    assert me.status_code == 200 and me.json()["name"] == user["name"], me.text
    # a change made with the cookie must come from the site's own pages
    forged = session.post(
        API + "/groups", json={"name": "cookie-test"}, headers={"Origin": "https://evil.example"}, timeout=60
    )
    assert forged.status_code == 403, forged.text


def test_a_read_only_token_is_refused_where_it_lacks_the_scope(user: dict[str, Any], ca_cert: Path) -> None:
    made = requests.post(
        f"{PUBLIC_URL}/hub/api/users/{user['name']}/tokens",
        headers={"Authorization": f"token {user['token']}"},
        json={"scopes": ["custom:platform:read"], "note": "api test: read only", "expires_in": 600},
        verify=str(ca_cert),
        timeout=30,
    )
    assert made.status_code in (200, 201), made.text
    read_only = made.json()["token"]
    assert call(read_only, "GET", "/me", ca_cert).status_code == 200
    for method, path, body in [
        ("POST", "/groups", {"name": "readonly-test"}),
        ("GET", "/me/credentials", None),
        ("GET", "/jobs", None),
        ("POST", "/jobs", {"script": "true"}),
    ]:
        refused = call(read_only, method, path, ca_cert, json=body)
        assert refused.status_code == 403, (method, path, refused.text)
        assert "lacks the scope" in refused.json()["detail"]


def test_every_endpoint_refuses_a_token_without_its_scope(user: dict[str, Any], ca_cert: Path) -> None:
    """For each platform scope, a token of the user holding all the others is refused (403) by every
    endpoint that needs it (the endpoints and scopes of the unit tests' table)."""
    for scope in sorted(CUSTOM_SCOPES):
        made = requests.post(
            f"{PUBLIC_URL}/hub/api/users/{user['name']}/tokens",
            headers={"Authorization": f"token {user['token']}"},
            json={"scopes": [s for s in CUSTOM_SCOPES if s != scope], "note": f"api test: without {scope}"},
            verify=str(ca_cert),
            timeout=30,
        )
        assert made.status_code in (200, 201), made.text
        token = made.json()["token"]
        for method, path, needed, body in ENDPOINTS:
            if needed != scope:
                continue
            answer = call(token, method, path.removeprefix("/api/v1"), ca_cert, json=body)
            assert answer.status_code == 403 and scope in answer.json()["detail"], (method, path, answer.text)


def _phase(user: dict[str, Any], job_id: str, ca_cert: Path) -> str:
    answer = call(user["token"], "GET", f"/jobs/{job_id}/phase", ca_cert)
    assert answer.status_code == 200, answer.text
    return answer.text


def test_a_job_reaches_completed_with_its_output(user: dict[str, Any], ca_cert: Path) -> None:
    submitted = call(
        user["token"],
        "POST",
        "/jobs",
        ca_cert,
        json={"script": "#!/bin/sh\necho hello from $(id -un) in $(pwd)\necho oops >&2\n", "time_limit": 2},
    )
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    assert job["phase"] in ("QUEUED", "EXECUTING", "COMPLETED")
    early = call(user["token"], "GET", f"/jobs/{job['id']}/results", ca_cert)
    assert early.status_code in (200, 409)
    wait_for(
        "the job to complete",
        lambda: _phase(user, job["id"], ca_cert) in ("COMPLETED", "ERROR", "ABORTED"),
        timeout=120,
        every=2,
    )
    done = call(user["token"], "GET", f"/jobs/{job['id']}", ca_cert).json()
    assert done["phase"] == "COMPLETED" and done["exit_code"] == 0, done
    results = wait_for(
        "the job's output",  # the shared home may show the file a moment after the job ended
        lambda: (r := call(user["token"], "GET", f"/jobs/{job['id']}/results", ca_cert).json())["stdout"] and r,
        timeout=30,
    )
    home = f"/home/{user['name']}"
    assert results["stdout"].strip() == f"hello from {user['name']} in {home}"
    assert results["stderr"].strip() == "oops"
    assert job["id"] in [j["id"] for j in call(user["token"], "GET", "/jobs", ca_cert).json()]
    # another user's token does not see it
    other = new_approved_user("apix", ca_cert)
    assert call(other["token"], "GET", f"/jobs/{job['id']}", ca_cert).status_code == 404


def test_abort_cancels_a_job(user: dict[str, Any], ca_cert: Path, host_of: Callable[[str], Any]) -> None:
    job = call(user["token"], "POST", "/jobs", ca_cert, json={"script": "sleep 600", "time_limit": 15}).json()
    aborted = call(
        user["token"], "POST", f"/jobs/{job['id']}/phase", ca_cert, data={"PHASE": "ABORT"}, allow_redirects=False
    )
    assert aborted.status_code == 303 and aborted.headers["location"] == f"/api/v1/jobs/{job['id']}"
    wait_for("the job to be aborted", lambda: _phase(user, job["id"], ca_cert) == "ABORTED", timeout=60, every=2)
    queue = host_of("gw").check_output(f"squeue --noheader --jobs {job['id']} --format=%T")
    assert queue.strip() in ("", "CANCELLED", "COMPLETING"), queue


def _wait_ended(token: str, job_id: str, ca_cert: Path) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        job = call(token, "GET", f"/jobs/{job_id}", ca_cert).json()
        return job if job["phase"] in ("COMPLETED", "ERROR", "ABORTED") else None

    return dict(wait_for(f"job {job_id} to end", ended, timeout=120, every=2))


def test_a_member_charges_jobs_to_the_group_until_removed(
    user: dict[str, Any], ca_cert: Path, host_of: Callable[[str], Any]
) -> None:
    """Groups through the API: A creates one and adds B; B's job is charged to its Slurm account; after
    A removes B, B can neither see the group nor charge it."""
    gw = host_of("gw")
    member = new_approved_user("apim", ca_cert)
    assert gw.run(f"{PY} -m sciplat_hub.provision --json {member['name']}").rc == 0
    group = "g-" + user["name"]
    try:
        created = call(user["token"], "POST", "/groups", ca_cert, json={"name": group, "description": "API test"})
        assert created.status_code == 201, created.text
        assert created.json()["owners"] == [user["name"]] and created.json()["slurm_account"] == group
        again = call(user["token"], "POST", "/groups", ca_cert, json={"name": group})
        assert again.status_code == 409 and isinstance(again.json()["detail"], str)
        assert call(user["token"], "POST", "/groups", ca_cert, json={"name": "Bad!"}).status_code == 422
        assert call(member["token"], "GET", f"/groups/{group}", ca_cert).status_code == 404
        added = call(
            user["token"], "PUT", f"/groups/{group}/members/{member['name']}", ca_cert, json={"role": "member"}
        )
        assert added.status_code == 200, added.text
        assert member["name"] in added.json()["members"]
        assert group in call(member["token"], "GET", "/me", ca_cert).json()["groups"]
        # a member may not add others
        refused = call(
            member["token"], "PUT", f"/groups/{group}/members/{user['name']}", ca_cert, json={"role": "owner"}
        )
        assert refused.status_code == 403, refused.text

        job = call(member["token"], "POST", "/jobs", ca_cert, json={"script": "echo charged", "account": group})
        assert job.status_code == 201, job.text
        done = _wait_ended(member["token"], job.json()["id"], ca_cert)
        assert done["phase"] == "COMPLETED" and done["account"] == group, done
        accounts = [a["account"] for a in call(member["token"], "GET", "/allocations", ca_cert).json()]
        assert group in accounts

        removed = call(user["token"], "DELETE", f"/groups/{group}/members/{member['name']}", ca_cert)
        assert removed.status_code == 200 and member["name"] not in removed.json()["members"]
        assert call(member["token"], "GET", f"/groups/{group}", ca_cert).status_code == 404
        denied = call(member["token"], "POST", "/jobs", ca_cert, json={"script": "echo again", "account": group})
        assert denied.status_code == 422 and denied.json()["detail"].startswith("Slurm refused the job"), denied.text

        deleted = call(user["token"], "DELETE", f"/groups/{group}", ca_cert)
        assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    finally:
        gw.run(f"{PY} -m sciplat_hub.collab delete {group}")
        gw.run(f"{PY} -m sciplat_hub.collab purge {group} --yes")


def test_schemathesis_finds_no_server_error(user: dict[str, Any], ca_cert: Path, tmp_path: Path) -> None:
    """A bounded property-based run of every GET, POST /shares and POST .../phase (safe for a throw-away user)."""
    started = time.monotonic()
    done = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "st"),
            "run",
            PUBLIC_URL + "/api/openapi.json",
            "--url",
            PUBLIC_URL,
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "10",
            "--max-time",
            "45",
            "--workers",
            "2",
            "--include-method",
            "GET",
            "--include-method",
            "POST",
            # not: creating collaborations (LDAP, bucket, database, Slurm account each) or submitting jobs
            "--exclude-operation-id",
            "create_group_api_v1_groups_post",
            "--exclude-operation-id",
            "submit_job_api_v1_jobs_post",
            "--header",
            f"Authorization: token {user['token']}",
            "--tls-verify",
            str(ca_cert),
            "--request-timeout",
            "60",
            "--no-shrink",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert time.monotonic() - started < 90
