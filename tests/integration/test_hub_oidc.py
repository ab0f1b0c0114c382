"""Two sign-in methods at once: native and a real OIDC provider, end to end.

The provider is the certified `oidc-provider` package from npm, run by Node.js
on the hub host with the host's certificate (platform CA), listening on the
host's loopback; the test reaches it through an SSH tunnel on the same port, so
the issuer URL is the same for the hub and for this "browser". Needs an oidc
authenticator named `testidp` in the bed's platform.yaml:

    identity:
      authenticators:
        - type: native
        - type: oidc
          name: testidp
          issuer: https://127.0.0.1:19453
          client_id: sciplat-hub

and `hub_oauth_client_secrets: {testidp: <secret>}` in the bed's group_vars.
"""

from __future__ import annotations

import html
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
import yaml

from tests.integration.conftest import INVENTORY, PUBLIC_URL, SSH_CONFIG
from tests.integration.test_hub import users_json

HERE = Path(__file__).parent / "oidc"
REMOTE = "/opt/sciplat-test-oidc"


def _oidc_method() -> dict[str, Any] | None:
    spec = yaml.safe_load((INVENTORY / "platform.yaml").read_text())
    methods = (spec.get("identity") or {}).get("authenticators") or []
    return next((m for m in methods if m.get("type") == "oidc" and m.get("name") == "testidp"), None)


def _client_secret() -> str | None:
    path = INVENTORY / "group_vars" / "all.yml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return ((data or {}).get("hub_oauth_client_secrets") or {}).get("testidp")


METHOD = _oidc_method()
pytestmark = pytest.mark.skipif(
    METHOD is None or _client_secret() is None or shutil.which("ssh") is None,
    reason="the bed has no oidc authenticator 'testidp' (see the module docstring)",
)


@pytest.fixture(scope="module")
def provider(deployed: dict[str, Any], host_of: Callable[[str], Any]) -> Iterator[str]:
    assert METHOD is not None
    issuer = str(METHOD["issuer"])
    port = int(issuer.rsplit(":", 1)[1].strip("/"))
    gw = host_of("gw")
    for name in ("package.json", "provider.mjs"):
        subprocess.run(
            ["scp", "-F", str(SSH_CONFIG), "-q", str(HERE / name), f"gw:/tmp/{name}"], check=True, timeout=60
        )
    setup = gw.run(
        f"mkdir -p {REMOTE} && cp /tmp/package.json /tmp/provider.mjs {REMOTE}/ && cd {REMOTE} && "
        "(test -d node_modules/oidc-provider || npm install --omit=dev --no-audit --no-fund >/dev/null)"
    )
    assert setup.rc == 0, setup.stderr
    env = {
        "OIDC_ISSUER": issuer,
        "OIDC_HOST": "127.0.0.1",
        "OIDC_PORT": str(port),
        "OIDC_CLIENT_ID": str(METHOD["client_id"]),
        "OIDC_CLIENT_SECRET": _client_secret(),
        "OIDC_REDIRECT_URI": f"{PUBLIC_URL}/hub/oidc-testidp/oauth_callback",
        "OIDC_TLS_CERT": "/etc/sciplat/pki/host.crt",
        "OIDC_TLS_KEY": "/etc/sciplat/pki/host.key",
    }
    setenv = " ".join(f"--setenv={k}={v}" for k, v in env.items())
    gw.run("systemctl stop sciplat-test-oidc.service; systemctl reset-failed sciplat-test-oidc.service")
    unit = f"systemd-run --unit sciplat-test-oidc --working-directory={REMOTE} {setenv}"
    started = gw.run(f"{unit} /usr/bin/node provider.mjs")
    assert started.rc == 0, started.stderr
    for _ in range(60):
        if gw.run(f"curl -fsS --cacert /etc/sciplat/pki/ca.crt {issuer}/.well-known/openid-configuration").rc == 0:
            break
        time.sleep(1)
    # the hub reads the provider's configuration when it starts
    gw.run("systemctl restart jupyterhub.service")
    for _ in range(60):
        if gw.run("curl -fsS http://127.0.0.1:8081/hub/health").rc == 0:
            break
        time.sleep(1)
    tunnel = subprocess.Popen(
        ["ssh", "-F", str(SSH_CONFIG), "-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{port}:127.0.0.1:{port}", "gw"]
    )
    try:
        time.sleep(2)
        assert tunnel.poll() is None, "the SSH tunnel to the provider did not open"
        yield issuer
    finally:
        tunnel.terminate()
        tunnel.wait(10)
        gw.run("systemctl stop sciplat-test-oidc.service")


FORM = re.compile(r'<form[^>]*action="([^"]+)"', re.I)
HIDDEN = re.compile(r'<input[^>]*type="hidden"[^>]*>', re.I)


def hidden_fields(text: str) -> dict[str, str]:
    fields = {}
    for tag in HIDDEN.findall(text):
        name = re.search(r'name="([^"]*)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name:
            fields[name.group(1)] = html.unescape(value.group(1)) if value else ""
    return fields


def test_login_page_offers_both_methods(provider: str, ca_cert: Path) -> None:
    page = requests.get(PUBLIC_URL + "/hub/login", verify=str(ca_cert), timeout=30)
    assert 'id="native-login"' in page.text
    assert "/hub/oidc-testidp/oauth_login" in page.text and "Sign in with testidp" in page.text


def test_a_user_signs_in_through_oidc(provider: str, ca_cert: Path) -> None:
    login = "o" + secrets.token_hex(3)
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
    session.verify = str(ca_cert)
    page = session.get(PUBLIC_URL + "/hub/oidc-testidp/oauth_login", timeout=60)
    assert page.url.startswith(provider + "/interaction/"), page.url
    action = FORM.search(page.text)
    assert action, page.text[:500]
    page = session.post(
        urljoin(page.url, html.unescape(action.group(1))),
        data={**hidden_fields(page.text), "login": login, "password": "any"},
        timeout=60,
    )
    if page.url.startswith(provider + "/interaction/"):  # the consent page
        action = FORM.search(page.text)
        assert action, page.text[:500]
        page = session.post(
            urljoin(page.url, html.unescape(action.group(1))), data=hidden_fields(page.text), timeout=120
        )
    assert page.url.startswith(PUBLIC_URL + "/hub/"), page.url
    assert page.status_code == 200
    row = next((u for u in users_json() if u["name"] == f"testidp-{login}"), None)
    assert row is not None and row["status"] == "active", users_json()
