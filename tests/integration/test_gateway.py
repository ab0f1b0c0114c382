"""The gateway role on the deployed test bed: TLS, redirects, headers, status, reloads.

The gateway's 443 is published on this machine as https://127.0.0.1:8443; its
port 80 is reached at gw's address on the test bed network.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import INVENTORY, PUBLIC_URL, sciplat

PLATFORM = yaml.safe_load((INVENTORY / "platform.yaml").read_text())["platform"]


def gw_address() -> str:
    inventory = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    return str(inventory["all"]["hosts"]["gw"]["ansible_host"])


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


def https_get(ca_cert: Path, path: str, **context_options: Any) -> Response:
    """GET PUBLIC_URL + path, verifying the server certificate against the platform CA."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    for name, value in context_options.items():
        setattr(context, name, value)
    host, port = PUBLIC_URL.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def test_nginx_runs_enabled_and_its_config_passes_nginx_t(
    deployed: dict[str, Any], host_of: Callable[[str], Any]
) -> None:
    gw = host_of("gw")
    nginx = gw.service("nginx")
    assert nginx.is_running and nginx.is_enabled
    assert gw.run("nginx -t").rc == 0
    assert not gw.file("/etc/nginx/sites-enabled/default").exists


def test_healthz_answers_ok_with_a_certificate_from_the_platform_ca(deployed: dict[str, Any], ca_cert: Path) -> None:
    response = https_get(ca_cert, "/healthz")
    assert response.status == 200
    assert response.body.strip() == b"ok"


def test_a_client_without_the_platform_ca_does_not_trust_the_gateway(deployed: dict[str, Any], ca_cert: Path) -> None:
    host, port = PUBLIC_URL.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(), timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/healthz")
    conn.close()


def test_status_json_names_the_platform(deployed: dict[str, Any], ca_cert: Path) -> None:
    response = https_get(ca_cert, "/status.json")
    assert response.status == 200
    assert response.header("Content-Type").startswith("application/json")
    assert json.loads(response.body) == {"status": "ok", "platform": PLATFORM["name"]}


def test_security_headers_and_hsts_on_every_https_response(deployed: dict[str, Any], ca_cert: Path) -> None:
    for path in ("/healthz", "/status.json", "/no-such-page"):
        response = https_get(ca_cert, path)
        hsts = response.header("Strict-Transport-Security")
        assert hsts.startswith("max-age=") and int(hsts.split("=")[1].split(";")[0]) >= 15552000, (path, hsts)
        assert response.header("X-Content-Type-Options") == "nosniff", path
        assert response.header("X-Frame-Options") == "SAMEORIGIN", path
        assert response.header("Referrer-Policy"), path
        assert "frame-ancestors" in response.header("Content-Security-Policy"), path
        assert response.header("Server") == "nginx", "server_tokens off hides the version"


def test_landing_page_names_the_platform(
    deployed: dict[str, Any], ca_cert: Path, host_of: Callable[[str], Any]
) -> None:
    page = host_of("gw").file("/var/www/sciplat/index.html")
    assert page.is_file and PLATFORM["name"] in page.content_string
    response = https_get(ca_cert, "/")
    assert response.status in (200, 301, 302), response.status
    if b"/status.json" in response.body:
        # no route claims /: the gateway's own landing page answers
        assert PLATFORM["name"].encode() in response.body


def test_tls_1_2_and_1_3_are_offered_and_1_1_is_not(
    deployed: dict[str, Any], ca_cert: Path, host_of: Callable[[str], Any]
) -> None:
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        response = https_get(ca_cert, "/healthz", minimum_version=version, maximum_version=version)
        assert response.status == 200, version
    # this machine's OpenSSL may refuse TLS 1.1 itself, so ask the gateway's nginx
    config = host_of("gw").check_output("nginx -T 2>/dev/null")
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in config
    assert "ssl_session_tickets off;" in config
    assert "ssl_stapling off;" in config


def test_http_redirects_to_https_except_acme_challenges(
    deployed: dict[str, Any], host_of: Callable[[str], Any]
) -> None:
    address = gw_address()
    conn = http.client.HTTPConnection(address, 80, timeout=10)
    conn.request("GET", "/some/page?x=1", headers={"Host": PLATFORM["domain"]})
    response = conn.getresponse()
    response.read()
    assert response.status == 301
    assert response.getheader("Location") == f"https://{PLATFORM['domain']}/some/page?x=1"

    gw = host_of("gw")
    token = "/var/www/acme/.well-known/acme-challenge/sciplat-test-token"
    gw.check_output(f"printf challenge-response > {token}")
    try:
        conn.request("GET", "/.well-known/acme-challenge/sciplat-test-token")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == b"challenge-response"
    finally:
        gw.run(f"rm -f {token}")
        conn.close()


def run_gateway_play(extra_vars: dict[str, Any] | None = None) -> None:
    """`sciplat up --tags gateway --limit gw`, optionally with role variables for this run."""
    args = ["up", "-i", str(INVENTORY), "--tags", "gateway", "--limit", "gw"]
    sciplat(*args, *(["--extra-vars", json.dumps(extra_vars)] if extra_vars else []))


def test_a_config_change_reloads_nginx_without_restarting_it(
    deployed: dict[str, Any], host_of: Callable[[str], Any], ca_cert: Path
) -> None:
    gw = host_of("gw")
    main_pid = gw.check_output("systemctl show -p MainPID --value nginx")
    assert main_pid != "0"
    try:
        run_gateway_play({"gateway_hsts_max_age": 31536001})
        assert https_get(ca_cert, "/healthz").header("Strict-Transport-Security") == "max-age=31536001"
        assert gw.check_output("systemctl show -p MainPID --value nginx") == main_pid, "nginx was restarted"
    finally:
        run_gateway_play()
    assert https_get(ca_cert, "/healthz").header("Strict-Transport-Security") != "max-age=31536001"
    assert gw.check_output("systemctl show -p MainPID --value nginx") == main_pid, "nginx was restarted"
