"""The hub as users and operators see it, through the TLS gateway.

Self-registration -> pending -> approved with `sciplat users approve` -> sign in
-> a server starts -> code runs in a kernel (REST API with a user token, then
the kernel's WebSocket); isolation between users; XSRF; tokens in URLs.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from sciplat_hub.probe import ProbeError, cell_output, execute_request
from tests.integration.conftest import INVENTORY, PUBLIC_URL, sciplat

PASSWORD = "correct-horse-battery-" + secrets.token_hex(4)
XSRF = re.compile(r'name="_xsrf" value="([^"]+)"')


def _session(ca_cert: Path) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
    session.verify = str(ca_cert)
    return session


def _xsrf(session: requests.Session, path: str) -> str:
    page = session.get(PUBLIC_URL + path, timeout=30)
    page.raise_for_status()
    match = XSRF.search(page.text)
    assert match, f"no _xsrf field on {path}"
    return match.group(1)


def signup(session: requests.Session, name: str) -> requests.Response:
    token = _xsrf(session, "/hub/signup")
    return session.post(
        PUBLIC_URL + "/hub/signup",
        data={
            "_xsrf": token,
            "username": name,
            "signup_password": PASSWORD,
            "signup_password_confirmation": PASSWORD,
        },
        timeout=30,
    )


def login(session: requests.Session, name: str) -> requests.Response:
    token = _xsrf(session, "/hub/login")
    return session.post(
        PUBLIC_URL + "/hub/login",
        data={"_xsrf": token, "username": name, "password": PASSWORD},
        timeout=60,
        allow_redirects=False,
    )


def new_approved_user(prefix: str, ca_cert: Path) -> dict[str, Any]:
    """A new user who signed up, was approved by the operator and signed in: name, session, API token."""
    name = f"{prefix}{secrets.token_hex(3)}"
    session = _session(ca_cert)
    assert signup(session, name).status_code == 200
    assert json.loads(sciplat("users", "approve", name, "-i", str(INVENTORY), "--json").stdout)["ok"]
    assert login(session, name).status_code == 302
    token = json.loads(sciplat("token", name, "-i", str(INVENTORY), "--json").stdout)["token"]
    return {"name": name, "session": session, "token": token}


def tutorial_sign_in(ca_cert: Path) -> tuple[str, str]:
    """Press "Try it": the throw-away user's name and an API token for it."""
    session = _session(ca_cert)
    token = _xsrf(session, "/hub/tutorial/login")
    started = session.post(PUBLIC_URL + "/hub/tutorial/login", data={"_xsrf": token}, timeout=60, allow_redirects=False)
    assert started.status_code == 302
    me = session.get(PUBLIC_URL + "/hub/api/user", headers={"X-XSRFToken": token}, timeout=30)
    name = me.json()["name"] if me.status_code == 200 else ""
    if not name:  # the session's identity, from the hub's user list
        name = next(u["name"] for u in reversed(users_json()) if u["name"].startswith("tutorial-"))
    api_token = json.loads(sciplat("token", name, "-i", str(INVENTORY), "--json").stdout)["token"]
    return name, api_token


def users_json() -> list[dict[str, Any]]:
    return json.loads(sciplat("users", "list", "-i", str(INVENTORY), "--json").stdout)


def api(token: str, method: str, path: str, ca_cert: Path, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"token {token}"}
    return requests.request(method, PUBLIC_URL + path, headers=headers, verify=str(ca_cert), timeout=60, **kwargs)


def start_server(token: str, name: str, ca_cert: Path, timeout: float = 120) -> dict[str, Any]:
    started = api(token, "POST", f"/hub/api/users/{name}/server", ca_cert)
    assert started.status_code in (201, 202, 400), started.text  # 400: already running
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = api(token, "GET", f"/hub/api/users/{name}", ca_cert).json()
        server = (model.get("servers") or {}).get("", {})
        if server.get("ready"):
            return model
        if not server.get("pending") and not server.get("ready") and time.monotonic() > deadline - timeout + 5:
            # stopped without becoming ready: the spawn failed; the hub logs why
            progress = api(token, "GET", f"/hub/api/users/{name}", ca_cert).json()
            if not (progress.get("servers") or {}).get(""):
                raise AssertionError(f"the server of {name} failed to start: {progress}")
        time.sleep(1)
    raise AssertionError(f"the server of {name} was not ready within {timeout} s")


def run_code(token: str, name: str, code: str, ca_cert: Path) -> str:
    """Start a kernel on NAME's server, execute CODE over the WebSocket, return its stdout."""
    kernel = api(token, "POST", f"/user/{name}/api/kernels", ca_cert, json={"name": "python3"})
    assert kernel.status_code == 201, kernel.text
    kernel_id = kernel.json()["id"]
    url = PUBLIC_URL.replace("https://", "wss://") + f"/user/{name}/api/kernels/{kernel_id}/channels"
    ws = websocket.create_connection(
        url, header=[f"Authorization: token {token}"], sslopt={"ca_certs": str(ca_cert)}, timeout=60
    )
    message = execute_request(code, name)
    try:
        ws.send(json.dumps(message))
        return cell_output(ws, message["header"]["msg_id"], time.monotonic() + 120)
    except ProbeError as exc:
        raise AssertionError(f"the code failed: {exc}") from None
    finally:
        ws.close()
        api(token, "DELETE", f"/user/{name}/api/kernels/{kernel_id}", ca_cert)


@pytest.fixture(scope="module")
def approved_users(deployed: dict[str, Any], ca_cert: Path) -> Iterator[dict[str, dict[str, Any]]]:
    """Two users who signed up, were approved and signed in; with API tokens."""
    users = {role: new_approved_user(f"t{role}", ca_cert) for role in ("a", "b")}
    yield users
    for user in users.values():  # leave no servers running for the tests after these
        api(user["token"], "DELETE", f"/hub/api/users/{user['name']}/server", ca_cert)


def test_hub_health_through_the_gateway(deployed: dict[str, Any], ca_cert: Path) -> None:
    health = requests.get(PUBLIC_URL + "/hub/health", verify=str(ca_cert), timeout=30)
    assert health.status_code == 200


def test_the_site_root_is_the_hub_login_page(deployed: dict[str, Any], ca_cert: Path) -> None:
    page = requests.get(PUBLIC_URL + "/", verify=str(ca_cert), timeout=30)
    assert page.status_code == 200
    assert "/hub/login" in page.url
    assert 'id="native-login"' in page.text and "Create an account" in page.text


def test_signup_is_pending_until_an_operator_approves(deployed: dict[str, Any], ca_cert: Path) -> None:
    name = "p" + secrets.token_hex(4)
    session = _session(ca_cert)
    assert signup(session, name).status_code == 200
    refused = login(session, name)
    assert refused.status_code != 302
    assert "has not been authorized" in refused.text
    row = next(u for u in users_json() if u["name"] == name)
    assert row["status"] == "pending"
    sciplat("users", "approve", name, "-i", str(INVENTORY))
    assert login(session, name).status_code == 302
    assert next(u for u in users_json() if u["name"] == name)["status"] == "active"


def test_approved_user_starts_a_server_and_runs_code(approved_users: dict[str, dict[str, Any]], ca_cert: Path) -> None:
    user = approved_users["a"]
    started = time.monotonic()
    start_server(user["token"], user["name"], ca_cert)
    elapsed = time.monotonic() - started
    out = run_code(
        user["token"], user["name"], "import os, getpass; print(6*7, getpass.getuser(), os.getcwd())", ca_cert
    )
    assert out.split() == ["42", user["name"], f"/home/{user['name']}"], out
    print(f"server start took {elapsed:.1f} s")


def test_provisioned_account_is_the_same_on_every_host(
    approved_users: dict[str, dict[str, Any]], ca_cert: Path, host_of: Callable[[str], Any]
) -> None:
    user = approved_users["a"]
    start_server(user["token"], user["name"], ca_cert)  # provisioning runs before the spawn
    gw = host_of("gw")
    home = gw.file(f"/home/{user['name']}")
    assert home.is_directory and home.mode == 0o700 and home.user == user["name"]
    if not gw.file("/etc/sciplat/directory/client.json").exists:
        pytest.skip("no directory on this bed: a local account on the hub host")
    entries = {name: host_of(name).run(f"getent passwd {user['name']}").stdout.strip() for name in ("gw", "data")}
    assert entries["gw"] and entries["gw"] == entries["data"], entries
    assert int(entries["gw"].split(":")[2]) >= 1000


def test_a_users_token_cannot_reach_another_users_server_or_api(
    approved_users: dict[str, dict[str, Any]], ca_cert: Path
) -> None:
    a, b = approved_users["a"], approved_users["b"]
    start_server(b["token"], b["name"], ca_cert)
    assert api(a["token"], "GET", f"/hub/api/users/{b['name']}", ca_cert).status_code in (403, 404)
    assert api(a["token"], "POST", f"/hub/api/users/{b['name']}/server", ca_cert).status_code in (403, 404)
    assert api(a["token"], "DELETE", f"/hub/api/users/{b['name']}/server", ca_cert).status_code in (403, 404)
    assert api(a["token"], "GET", f"/user/{b['name']}/api/contents", ca_cert).status_code == 403
    assert api(a["token"], "POST", f"/user/{b['name']}/api/kernels", ca_cert, json={}).status_code == 403
    # A's browser session (cookie) does not open B's server either
    by_cookie = a["session"].get(PUBLIC_URL + f"/user/{b['name']}/api/contents", timeout=30, allow_redirects=False)
    assert by_cookie.status_code in (302, 403)
    if by_cookie.status_code == 302:
        assert f"/user/{b['name']}" not in by_cookie.headers.get("Location", "").split("?")[0]


def test_cookie_post_without_xsrf_is_rejected(approved_users: dict[str, dict[str, Any]], ca_cert: Path) -> None:
    a = approved_users["a"]
    forged = a["session"].post(PUBLIC_URL + f"/hub/api/users/{a['name']}/tokens", json={"note": "forged"}, timeout=30)
    assert forged.status_code == 403
    forged = a["session"].post(PUBLIC_URL + "/hub/logout", timeout=30, allow_redirects=False)
    assert forged.status_code in (403, 405) or forged.status_code == 302


def test_tokens_in_urls_are_refused(approved_users: dict[str, dict[str, Any]], ca_cert: Path) -> None:
    a = approved_users["a"]
    start_server(a["token"], a["name"], ca_cert)
    for path in ("/hub/api/user", f"/user/{a['name']}/api/contents"):
        response = requests.get(
            PUBLIC_URL + path, params={"token": a["token"]}, verify=str(ca_cert), timeout=30, allow_redirects=False
        )
        assert response.status_code in (302, 403), f"{path}?token= answered {response.status_code}"
        # the same token in the header is accepted
        assert api(a["token"], "GET", path, ca_cert).status_code == 200


def test_disabled_user_is_signed_out_and_refused(approved_users: dict[str, dict[str, Any]], ca_cert: Path) -> None:
    b = approved_users["b"]
    sciplat("users", "disable", b["name"], "-i", str(INVENTORY))
    try:
        assert api(b["token"], "GET", "/hub/api/user", ca_cert).status_code == 403
        assert login(_session(ca_cert), b["name"]).status_code != 302
        assert next(u for u in users_json() if u["name"] == b["name"])["status"] == "disabled"
    finally:
        sciplat("users", "enable", b["name"], "-i", str(INVENTORY))
    assert login(_session(ca_cert), b["name"]).status_code == 302


def test_hub_services_run_under_systemd(host_of: Callable[[str], Any]) -> None:
    gw = host_of("gw")
    for unit in ("jupyterhub.service", "jupyterhub-proxy.service"):
        assert gw.service(unit).is_running and gw.service(unit).is_enabled
    settings = gw.file("/etc/jupyterhub/sciplat.json")
    assert settings.mode == 0o600 and settings.user == "root"


def _anonymous_configured() -> bool:
    import yaml

    spec = yaml.safe_load((INVENTORY / "platform.yaml").read_text())
    methods = (spec.get("identity") or {}).get("authenticators") or []
    return any(m.get("type") == "anonymous" for m in methods)


@pytest.mark.skipif(not _anonymous_configured(), reason="the bed's platform.yaml has no anonymous sign-in method")
def test_tutorial_user_gets_a_confined_server(
    approved_users: dict[str, dict[str, Any]], ca_cert: Path, host_of: Callable[[str], Any]
) -> None:
    name, tutorial_token = tutorial_sign_in(ca_cert)
    assert re.fullmatch(r"tutorial-[0-9a-f]{8}", name), name
    start_server(tutorial_token, name, ca_cert)
    other = approved_users["a"]["name"]
    code = (
        "import os\n"
        "try:\n"
        f"    os.listdir('/home/{other}')\n"
        "    print('readable')\n"
        "except PermissionError:\n"
        "    print('denied')\n"
        "except FileNotFoundError:\n"
        "    print('absent')\n"
        "print(sorted(k for k in os.environ if k.startswith(('AWS_', 'PG', 'SCIPLAT_'))))\n"
    )
    out = run_code(tutorial_token, name, code, ca_cert).split("\n")
    assert out[0] in ("denied", "absent") and out[1] == "[]", out
    unit = host_of("gw").run(f"systemctl show -p RuntimeMaxUSec -p MemoryMax -p ProtectHome jupyter-{name}-default")
    assert "ProtectHome=tmpfs" in unit.stdout, unit.stdout
    assert "RuntimeMaxUSec=infinity" not in unit.stdout, "a tutorial server must have a lifetime"
    api(tutorial_token, "DELETE", f"/hub/api/users/{name}/server", ca_cert)


def test_a_tutorial_user_is_removed_once_its_lifetime_is_over(ca_cert: Path, host_of: Callable[[str], Any]) -> None:
    """One round of the hub's own reaper, with its own token, and a lifetime the user has outlived.

    The bed's tutorial lifetime is 20 minutes; instead of waiting it out, the test runs the
    running reaper's code (`reap_once`) with the reaper service's token, read from its process.
    """
    name, token = tutorial_sign_in(ca_cert)
    start_server(token, name, ca_cert)
    gw = host_of("gw")
    pid = gw.check_output("pgrep -f -o 'sciplat_hub.hub_tutorial'").strip()
    python = gw.check_output(f"tr '\\0' '\\n' < /proc/{pid}/cmdline | head -1").strip()
    reap = (
        "import json, os\n"
        f"env = dict(e.split('=', 1) for e in open('/proc/{pid}/environ').read().split('\\0') if '=' in e)\n"
        "os.environ.update({k: env[k] for k in ('JUPYTERHUB_API_URL', 'JUPYTERHUB_API_TOKEN')})\n"
        "from sciplat_hub.hub_tutorial import reap_once\n"
        "print(json.dumps(reap_once(1)))\n"
    )
    removed = json.loads(gw.check_output(f"{python} -c {shlex.quote(reap)}").splitlines()[-1])
    assert name in removed, removed
    assert name not in {u["name"] for u in users_json()}
    assert api(token, "GET", "/hub/api/user", ca_cert).status_code == 403  # its token went with it
    assert gw.run(f"id {name}").rc != 0, "the tutorial user's system account is left"
    unit = gw.run(f"systemctl is-active jupyter-{name}-default").stdout.strip()
    assert unit in ("inactive", "unknown", "failed"), unit
