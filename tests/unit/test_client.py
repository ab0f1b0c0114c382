"""sciplat_client and `sciplat-client` against a local fake of the platform API (plain HTTP on loopback)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sciplat_client import PlatformClient, PlatformError
from sciplat_client.cli import human_bytes, main
from sciplat_client.client import public_url_from_environment, token_from_environment

TOKEN = "s3cr3t-token"
GROUP = {
    "name": "galaxies",
    "gid": 70001,
    "description": "Galaxy zoo",
    "owners": ["alice"],
    "members": ["alice", "bob"],
    "directory": "/srv/groups/galaxies",
    "bucket": "group-galaxies",
    "database": "group_galaxies",
    "slurm_account": "galaxies",
    "deleted": False,
}
ME = {
    "name": "alice",
    "admin": False,
    "groups": ["galaxies"],
    "quotas": {"home_bytes": 10 * 2**30, "bucket_bytes": 20 * 2**30, "mydb_bytes": None},
    "usage": {"home_bytes": 3 * 2**30, "bucket_bytes": 0, "mydb_bytes": None, "core_hours": 1.5},
}


class FakeAPI:
    """Routes (METHOD, path) to (status, body, content type); records every request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[tuple[int, Any, str]]] = {}
        self.requests: list[dict[str, Any]] = []

    def on(self, method: str, path: str, status: int, body: Any, kind: str = "application/json") -> None:
        self.routes.setdefault((method, path), []).append((status, body, kind))

    def answer(self, method: str, path: str) -> tuple[int, Any, str]:
        answers = self.routes.get((method, path))
        if not answers:
            return 404, {"detail": f"no route {method} {path}"}, "application/json"
        return answers.pop(0) if len(answers) > 1 else answers[0]


@pytest.fixture
def api() -> Iterator[tuple[FakeAPI, str]]:
    fake = FakeAPI()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            fake.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "json": json.loads(body) if body else None,
                }
            )
            if self.headers.get("Authorization") != f"token {TOKEN}":
                status, answer, kind = 401, {"detail": "Authentication required."}, "application/json"
            else:
                status, answer, kind = fake.answer(self.command, self.path)
            raw = b"" if answer is None else (json.dumps(answer) if kind == "application/json" else answer).encode()
            self.send_response(status)
            if status in (302, 303):
                self.send_header("Location", "/hub/login")
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SCIPLAT_URL", "SCIPLAT_TOKEN", "SCIPLAT_CA", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("JUPYTERHUB_PUBLIC_HUB_URL", raising=False)


# ---------------------------------------------------------------------- the library


def test_calls_send_the_token_and_the_documented_bodies(api: tuple[FakeAPI, str]) -> None:
    fake, url = api
    fake.on("GET", "/api/v1/me", 200, ME)
    fake.on("POST", "/api/v1/groups", 201, GROUP)
    fake.on("PUT", "/api/v1/groups/galaxies/members/bob", 200, GROUP)
    fake.on("DELETE", "/api/v1/groups/galaxies/members/alice", 200, {**GROUP, "members": ["bob"]})
    client = PlatformClient(url + "/", token=TOKEN)
    assert client.me()["quotas"]["home_bytes"] == 10 * 2**30
    assert client.create_group("galaxies", "Galaxy zoo")["gid"] == 70001
    client.add_member("galaxies", "bob", "owner")
    assert client.leave("galaxies")["members"] == ["bob"]  # leave = remove myself (the name from /me)
    sent = [(r["method"], r["path"], r["json"]) for r in fake.requests]
    assert sent == [
        ("GET", "/api/v1/me", None),
        ("POST", "/api/v1/groups", {"name": "galaxies", "description": "Galaxy zoo"}),
        ("PUT", "/api/v1/groups/galaxies/members/bob", {"role": "owner"}),
        ("DELETE", "/api/v1/groups/galaxies/members/alice", None),
    ]
    assert {r["authorization"] for r in fake.requests} == {f"token {TOKEN}"}


def test_the_apis_sentence_and_status_become_a_platform_error(api: tuple[FakeAPI, str]) -> None:
    fake, url = api
    fake.on("POST", "/api/v1/groups", 409, {"detail": "The name galaxies is taken: choose another one."})
    fake.on("PUT", "/api/v1/groups/x/members/bob", 422, {"detail": [{"loc": ["body", "role"], "msg": "bad role"}]})
    client = PlatformClient(url, token=TOKEN)
    with pytest.raises(PlatformError) as taken:
        client.create_group("galaxies")
    assert taken.value.status == 409
    assert str(taken.value) == "The name galaxies is taken: choose another one."
    with pytest.raises(PlatformError, match=r"^role: bad role$"):
        client.add_member("x", "bob")
    with pytest.raises(PlatformError) as unknown:
        client.job("12")
    assert unknown.value.status == 404


def test_a_wrong_token_a_redirect_and_a_dead_url_are_explained(api: tuple[FakeAPI, str]) -> None:
    fake, url = api
    with pytest.raises(PlatformError) as wrong:
        PlatformClient(url, token="wrong").me()
    assert wrong.value.status == 401 and "Authentication required" in str(wrong.value)
    fake.on("GET", "/api/v1/groups", 302, None)
    with pytest.raises(PlatformError, match="redirected elsewhere") as moved:
        PlatformClient(url, token=TOKEN).groups()
    assert moved.value.status == 302
    with pytest.raises(PlatformError, match="Cannot reach") as dead:
        PlatformClient("http://127.0.0.1:9", token=TOKEN, timeout=5).me()
    assert dead.value.status == 0


def test_url_token_and_ca_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, api: tuple[FakeAPI, str]) -> None:
    with pytest.raises(PlatformError, match="SCIPLAT_URL"):
        PlatformClient(token=TOKEN)
    with pytest.raises(PlatformError, match="SCIPLAT_TOKEN"):
        PlatformClient("https://p.example.org")
    fake, url = api
    fake.on("GET", "/api/v1/health", 200, {"ok": True})
    monkeypatch.setenv("SCIPLAT_URL", url + "/api/v1")  # the API's own address works too
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", TOKEN)  # inside a user server
    client = PlatformClient()
    assert client.url == url and client.health()
    assert public_url_from_environment({"JUPYTERHUB_PUBLIC_HUB_URL": "https://p.example.org/hub/"}) == (
        "https://p.example.org"
    )
    assert token_from_environment({"SCIPLAT_TOKEN": "a", "JUPYTERHUB_API_TOKEN": "b"}) == "a"
    monkeypatch.setenv("SCIPLAT_CA", "/nonexistent/ca.crt")
    with pytest.raises(FileNotFoundError):  # a CA file that is not there is not silently ignored
        PlatformClient()


def test_share_refuses_a_grantee_without_its_kind() -> None:
    client = PlatformClient("https://p.example.org", token=TOKEN)
    with pytest.raises(PlatformError, match="'user:bob' or 'group:bob'"):
        client.share("notebooks/fit.ipynb", "bob")


def test_wait_polls_the_phase_until_the_job_ended(api: tuple[FakeAPI, str]) -> None:
    fake, url = api
    for phase in ("QUEUED", "EXECUTING", "COMPLETED"):
        fake.on("GET", "/api/v1/jobs/42/phase", 200, phase, "text/plain")
    fake.on("GET", "/api/v1/jobs/42", 200, {"id": "42", "phase": "COMPLETED", "exit_code": 0})
    client = PlatformClient(url, token=TOKEN)
    assert client.wait({"id": "42", "phase": "QUEUED"}, timeout=30, every=0.01)["exit_code"] == 0
    assert [r["path"] for r in fake.requests].count("/api/v1/jobs/42/phase") == 3
    fake.on("GET", "/api/v1/jobs/7/phase", 200, "EXECUTING", "text/plain")
    with pytest.raises(TimeoutError, match="job 7 is still EXECUTING"):
        client.wait("7", timeout=0.05, every=0.01)


def test_submit_sends_only_the_options_given(api: tuple[FakeAPI, str]) -> None:
    fake, url = api
    fake.on("POST", "/api/v1/jobs", 201, {"id": "9", "phase": "QUEUED"})
    job = PlatformClient(url, token=TOKEN).submit_job("#!/bin/sh\nhostname\n", account="galaxies", cpus=2)
    assert job["id"] == "9"
    assert fake.requests[-1]["json"] == {"script": "#!/bin/sh\nhostname\n", "account": "galaxies", "cpus": 2}


# ---------------------------------------------------------------------- the command


def test_cli_prints_json_and_human_output(
    api: tuple[FakeAPI, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    fake.on("GET", "/api/v1/me", 200, ME)
    fake.on("GET", "/api/v1/groups", 200, [GROUP])
    monkeypatch.setenv("SCIPLAT_TOKEN", TOKEN)
    assert main(["--url", url, "me", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ME
    assert main(["--url", url, "me"]) == 0
    out = capsys.readouterr().out
    assert "home    3.0 GiB of 10.0 GiB (30%)" in out
    assert "mydb    not on this platform" in out
    assert "1.5 core hours" in out
    assert main(["--url", url, "groups", "list"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["GROUP", "OWNERS", "MEMBERS", "STATE", "DESCRIPTION"]
    assert table[1].split()[:3] == ["galaxies", "alice", "2"]
    assert main(["--url", url, "groups", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "galaxies"


def test_cli_write_commands(
    api: tuple[FakeAPI, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    fake, url = api
    monkeypatch.setenv("SCIPLAT_URL", url)
    monkeypatch.setenv("SCIPLAT_TOKEN", TOKEN)
    fake.on("POST", "/api/v1/groups", 201, GROUP)
    fake.on("PUT", "/api/v1/groups/galaxies/members/carol", 200, {**GROUP, "members": ["alice", "bob", "carol"]})
    share = {
        "id": "sh1",
        "kind": "path",
        "owner": "alice",
        "target": "fit.ipynb",
        "grantee": "group:galaxies",
        "mode": "rw",
        "created": "2026-12-04T21:00:00Z",
        "link": "/hub/user-redirect/lab/tree/shared/alice/fit.ipynb",
    }
    fake.on("POST", "/api/v1/shares", 201, share)
    fake.on("DELETE", "/api/v1/shares/sh1", 204, None)
    fake.on("POST", "/api/v1/jobs", 201, {"id": "5", "phase": "QUEUED"})
    assert main(["groups", "create", "galaxies", "--description", "Galaxy zoo"]) == 0
    assert "members      alice (owner), bob" in capsys.readouterr().out
    assert main(["groups", "add", "galaxies", "carol", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["members"] == ["alice", "bob", "carol"]
    assert main(["shares", "create", "fit.ipynb", "group:galaxies", "--rw"]) == 0
    assert "link: /hub/user-redirect/lab/tree/shared/alice/fit.ipynb" in capsys.readouterr().out
    assert fake.requests[-1]["json"] == {
        "kind": "path",
        "target": "fit.ipynb",
        "grantee": "group:galaxies",
        "mode": "rw",
    }
    assert main(["shares", "delete", "sh1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"id": "sh1", "deleted": True}
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    assert main(["jobs", "submit", str(script), "--account", "galaxies", "--time-limit", "5"]) == 0
    assert fake.requests[-1]["json"] == {"script": "#!/bin/sh\necho hi\n", "account": "galaxies", "time_limit": "5"}


def test_cli_reports_the_apis_sentence_and_exits_1(
    api: tuple[FakeAPI, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, url = api
    fake.on("DELETE", "/api/v1/groups/galaxies/members/alice", 422, {"detail": "The last owner cannot leave."})
    fake.on("GET", "/api/v1/me", 200, ME)
    monkeypatch.setenv("SCIPLAT_TOKEN", TOKEN)
    assert main(["--url", url, "groups", "leave", "galaxies", "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "sciplat-client: The last owner cannot leave.\n"
    assert main(["--url", url, "jobs", "submit", "/nonexistent/run.sh"]) == 1
    assert "Cannot read the script /nonexistent/run.sh" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["--url", url, "groups"])
    assert usage.value.code == 2


def test_human_bytes() -> None:
    assert human_bytes(None) == "-"
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(5 * 2**40) == "5.0 TiB"


# ---------------------------------------------------------------------- the hub's platform page


def test_page_forms_become_the_documented_api_calls() -> None:
    from sciplat_hub.hub_platform_page import Call, FormError, form_call

    assert form_call({"action": "create-group", "group": "galaxies", "description": " zoo "}, "alice") == Call(
        "POST", "/groups", {"name": "galaxies", "description": "zoo"}, "You created the group galaxies."
    )
    added = form_call({"action": "add-member", "group": "galaxies", "user": "bob", "role": "owner"}, "alice")
    assert (added.method, added.path, added.body) == ("PUT", "/groups/galaxies/members/bob", {"role": "owner"})
    left = form_call({"action": "leave", "group": "galaxies", "user": "mallory"}, "alice")
    assert (left.method, left.path) == ("DELETE", "/groups/galaxies/members/alice"), "leave is always myself"
    shared = form_call(
        {"action": "share", "kind": "path", "target": "nb/fit.ipynb", "grantee_kind": "group", "grantee": "galaxies"},
        "alice",
    )
    assert shared.body == {"kind": "path", "target": "nb/fit.ipynb", "grantee": "group:galaxies", "mode": "ro"}
    assert form_call({"action": "unshare", "share": "a/b"}, "alice").path == "/shares/a%2Fb"
    with pytest.raises(FormError, match="not a user name"):
        form_call({"action": "add-member", "group": "galaxies", "user": "../admin"}, "alice")
    with pytest.raises(FormError, match="not a role"):
        form_call({"action": "add-member", "group": "galaxies", "user": "bob", "role": "admin"}, "alice")
    with pytest.raises(FormError, match="does not know the action"):
        form_call({"action": "purge"}, "alice")


def test_page_quota_rows_links_and_api_sentences() -> None:
    from sciplat_hub.hub_platform_page import UNREACHABLE, api_sentence, quota_rows, safe_link

    rows = quota_rows(ME)
    assert [r["key"] for r in rows] == ["home", "bucket"], "no MyDB row where the platform has none"
    assert rows[0] == {
        "key": "home",
        "label": "Home directory",
        "used": "3.0 GiB",
        "limit": "10.0 GiB",
        "percent": 30.0,
        "level": "success",
    }
    full = quota_rows({"quotas": {"home_bytes": 100}, "usage": {"home_bytes": 95}})[0]
    assert (full["percent"], full["level"]) == (95.0, "danger")
    assert api_sentence(409, {"detail": "The name is taken."}) == "The name is taken."
    assert api_sentence(599, None) == UNREACHABLE
    assert safe_link("/hub/user-redirect/lab/tree/x.ipynb") == "/hub/user-redirect/lab/tree/x.ipynb"
    assert safe_link("javascript:alert(1)") is None and safe_link("//evil.example/x") is None


def _render_page(**variables: Any) -> str:
    jinja2 = pytest.importorskip("jinja2")
    from pathlib import Path

    from sciplat_hub import hub_config

    templates = Path(hub_config.TEMPLATES)
    upstream = (
        "<nav>{% block nav_bar_left_items %}<a href='home'>Home</a>{% endblock %}</nav>"
        "<main>{% block main %}{% endblock %}</main>"
    )
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.PrefixLoader({"templates": jinja2.DictLoader({"page.html": upstream})}, "/"),
                jinja2.FileSystemLoader(str(templates)),
            ]
        ),
        autoescape=True,
    )
    return env.get_template("platform.html").render(base_url="/hub/", xsrf="XSRF1", **variables)


def test_page_template_shows_quotas_groups_shares_and_xsrf_forms() -> None:
    from sciplat_hub.hub_platform_page import view

    share = {
        "id": "sh1",
        "kind": "path",
        "owner": "bob",
        "target": "nb/<fit>.ipynb",
        "grantee": "user:alice",
        "mode": "ro",
        "created": "2026-12-04T21:00:00Z",
        "link": "/hub/user-redirect/lab/tree/shared/bob/fit.ipynb",
    }
    html = _render_page(
        flash={"ok": False, "text": "The last owner cannot leave."},
        errors=[],
        allocations=[],
        **view(ME, [GROUP], {"by_me": [], "with_me": [share]}),
    )
    assert 'id="nav-platform" href="/hub/platform"' in html, "the navigation bar links the page"
    assert "The last owner cannot leave." in html
    assert 'id="quota-home"' in html and "3.0 GiB" in html and "width: 30.0%" in html
    assert 'id="quota-mydb"' not in html
    assert 'id="group-galaxies"' in html and "alice (you)" in html
    assert html.count('name="action" value="remove-member"') == 1, "the owner may remove bob, not leave for others"
    assert 'name="action" value="add-member"' in html
    assert "nb/&lt;fit&gt;.ipynb" in html, "API text is escaped"
    assert 'href="/hub/user-redirect/lab/tree/shared/bob/fit.ipynb"' in html
    forms = html.count("<form ")
    assert forms == html.count('name="_xsrf" value="XSRF1"') and forms >= 5, "every form carries the hub's XSRF token"
    as_member = _render_page(flash=None, errors=[], allocations=[], **view({**ME, "name": "bob"}, [GROUP], {}))
    assert 'value="remove-member"' not in as_member and 'value="add-member"' not in as_member
    assert 'value="leave"' in as_member


# ---------------------------------------------------------------------- the generated API reference


def _api_reference() -> Any:
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("api_reference", REPO / "scripts" / "api-reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_is_generated_from_the_committed_openapi_document() -> None:
    reference = _api_reference()
    document = json.loads(reference.SOURCE.read_text())
    on_disk = reference.TARGET.read_text()
    assert on_disk == reference.render(document), "docs/reference/api.md is stale: run scripts/api-reference.py"
    for path, item in document["paths"].items():  # every endpoint has its section
        for method in item:
            assert f"### {method.upper()} {path}\n" in on_disk


def test_api_reference_renders_types_scopes_and_bodies() -> None:
    reference = _api_reference()
    text_plain = {"text/plain": {"schema": {"type": "string"}}}
    document = {
        "openapi": "3.1.0",
        "info": {"title": "T", "version": "1"},
        "paths": {
            "/api/v1/groups/{name}": {
                "put": {
                    "summary": "Change a group",
                    "tags": ["groups"],
                    "x-scopes": ["custom:platform:groups"],
                    "security": [{"JupyterHubToken": []}],
                    "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/G"}}}},
                    "responses": {"200": {"description": "OK", "content": text_plain}},
                }
            }
        },
        "components": {
            "schemas": {
                "G": {
                    "properties": {
                        "owners": {"type": "array", "items": {"type": "string"}},
                        "bucket": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "a | b"},
                        "mode": {"enum": ["ro", "rw"], "default": "ro"},
                    },
                    "required": ["owners"],
                }
            }
        },
    }
    text = reference.render(document)
    assert "### PUT /api/v1/groups/{name}\n\nChange a group.\n\nScope: `custom:platform:groups`." in text
    assert "Body (`application/json`): [G](#g)" in text
    assert "| 200 | OK | `text/plain` string |" in text
    assert "| `owners` | list of string | yes |" in text
    assert "| `bucket` | string or null | no | a \\| b |" in text
    assert '| `mode` | `"ro"` \\| `"rw"` | no | Default: `"ro"`. |' in text


def test_hub_registers_the_page_and_tells_servers_the_platform_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_notebook_env import _configure

    c = _configure(monkeypatch)
    assert c.JupyterHub.extra_handlers == [
        (r"/platform/?", "sciplat_hub.hub_platform_page.PlatformPageHandler", {"api_url": "http://127.0.0.1:8090"})
    ]
    assert c.Spawner.environment["SCIPLAT_URL"] == "https://example.org"
    c = _configure(monkeypatch, user_environment={"SCIPLAT_URL": "https://elsewhere.org"}, api_port=9000)
    assert c.Spawner.environment["SCIPLAT_URL"] == "https://elsewhere.org", "the operator's value wins"
    assert c.JupyterHub.extra_handlers[0][2] == {"api_url": "http://127.0.0.1:9000"}


def test_page_asks_for_the_apis_own_scopes() -> None:
    from sciplat_hub.hub_platform_page import PAGE_SCOPES

    api = pytest.importorskip("sciplat_hub.api")
    assert PAGE_SCOPES == [api.SCOPE_READ, api.SCOPE_GROUPS, api.SCOPE_SHARES]
