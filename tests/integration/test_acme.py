"""ACME end to end: the gateway gets and serves a certificate from pebble.

pebble (Debian's package: the ACME test server of the Let's Encrypt project)
runs on the gateway host for the duration of the test, with its HTTPS
listener on the host's platform-CA certificate (which certbot trusts through the
system store). The platform's name resolves to the gateway itself on that host,
so pebble's HTTP-01 validation reaches nginx's /.well-known/acme-challenge/
on port 80, exactly as a public ACME CA would.

The platform is pointed at pebble with `sciplat up -t pki,gateway -e
{"pki_mode": "acme", "pki_acme_server": ...}` (what `tls.mode: acme` and
`tls.acme.server` in platform.yaml render to). Afterwards the bed is put back to
its platform-CA certificate with a plain `sciplat up -t pki,gateway`.
Destructive: it replaces the gateway's certificate for a while, so it runs last.
"""

from __future__ import annotations

import json
import shlex
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.integration.conftest import INVENTORY, PUBLIC_URL, sciplat

PLATFORM = yaml.safe_load((INVENTORY / "platform.yaml").read_text())["platform"]
DOMAIN = PLATFORM["domain"]
PEBBLE_UNIT = "sciplat-test-pebble"
PEBBLE_CONFIG = "/etc/sciplat-test-pebble.json"
HOSTS_MARK = "# sciplat-test-pebble"
# certbot's accounts at a pebble that is gone (pebble keeps accounts in memory)
CLEAN_ACCOUNTS = "rm -rf /etc/letsencrypt/accounts/localhost:* /etc/letsencrypt/accounts/127.0.0.1:*"
ACME_DIRECTORY = "https://localhost:14000/dir"

pytestmark = pytest.mark.destructive


def served_certificate() -> x509.Certificate:
    """The leaf certificate the gateway serves for the platform's name (SNI), not verified here."""
    url = urlsplit(PUBLIC_URL)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((url.hostname or "127.0.0.1", url.port or 443), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=DOMAIN) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der, f"{PUBLIC_URL} sent no certificate"
    return x509.load_der_x509_certificate(der)


def issuer_cn(cert: x509.Certificate) -> str:
    return str(cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture(scope="module")
def pebble(deployed: dict[str, Any], host_of: Callable[[str], Any]) -> Iterator[Any]:
    gw = host_of("gw")
    gw.check_output("DEBIAN_FRONTEND=noninteractive apt-get install -y -q pebble >/dev/null")
    config = {
        "pebble": {
            "listenAddress": "127.0.0.1:14000",
            "managementListenAddress": "127.0.0.1:15000",
            "certificate": "/etc/sciplat/pki/host.crt",
            "privateKey": "/etc/sciplat/pki/host.key",
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    gw.check_output(f"printf %s {shlex.quote(json.dumps(config))} > {PEBBLE_CONFIG}")
    gw.run(f"systemctl stop {PEBBLE_UNIT}; systemctl reset-failed {PEBBLE_UNIT}; {CLEAN_ACCOUNTS}")
    gw.check_output(
        f"systemd-run --unit {PEBBLE_UNIT} --setenv=PEBBLE_VA_NOSLEEP=1 --setenv=PEBBLE_WFE_NONCEREJECT=0 "
        f"pebble -config {PEBBLE_CONFIG}"
    )
    # The platform's name resolves to this host, for pebble's HTTP-01 check.
    names = f"{DOMAIN} s3.{DOMAIN}"
    gw.check_output(f"grep -q '{HOSTS_MARK}' /etc/hosts || echo '127.0.0.1 {names} {HOSTS_MARK}' >> /etc/hosts")
    deadline = time.monotonic() + 60
    while gw.run(f"curl -fsS -o /dev/null --max-time 3 {ACME_DIRECTORY}").rc != 0:
        assert time.monotonic() < deadline, gw.run(f"journalctl -u {PEBBLE_UNIT} --no-pager | tail -20").stdout
        time.sleep(1)
    try:
        yield gw
    finally:
        gw.run(f"systemctl stop {PEBBLE_UNIT}; systemctl reset-failed {PEBBLE_UNIT}")
        # /etc/hosts may be a bind mount (containers): rewrite it in place, never rename over it.
        gw.run(f"grep -v '{HOSTS_MARK}' /etc/hosts > /tmp/hosts.sciplat && cat /tmp/hosts.sciplat > /etc/hosts")
        gw.run("certbot delete --non-interactive --cert-name sciplat-gateway")
        gw.run(f"{CLEAN_ACCOUNTS}; systemctl reset-failed sciplat-acme.service")
        sciplat("up", "-i", str(INVENTORY), "-t", "pki,gateway")


def test_gateway_serves_a_pebble_certificate(pebble: Any) -> None:
    before = served_certificate()
    assert "Pebble" not in issuer_cn(before), "the bed already serves an ACME certificate"

    extra = {"pki_mode": "acme", "pki_acme_server": ACME_DIRECTORY}
    sciplat("up", "-i", str(INVENTORY), "-t", "pki,gateway", "-e", json.dumps(extra))

    gw = pebble
    live = gw.run("cat /etc/letsencrypt/live/sciplat-gateway/cert.pem")
    assert live.rc == 0, (
        "certbot got no certificate: " + gw.run("journalctl -u sciplat-acme --no-pager | tail -30").stdout
    )
    issued = x509.load_pem_x509_certificate(live.stdout.encode())
    assert "Pebble" in issuer_cn(issued)
    names = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    # the platform's name and the S3 virtual server's (storage.backend ceph)
    assert sorted(names) == sorted([DOMAIN, f"s3.{DOMAIN}"])

    served = served_certificate()
    assert served.fingerprint(served.signature_hash_algorithm) == issued.fingerprint(  # type: ignore[arg-type]
        issued.signature_hash_algorithm  # type: ignore[arg-type]
    ), f"the gateway serves {served.subject} from {issuer_cn(served)}, not the certificate pebble issued"

    # The chain the gateway sends verifies against pebble's root (from pebble's management API).
    root = gw.check_output("curl -fsS --max-time 5 https://localhost:15000/roots/0")
    gw.check_output(f"printf '%s\\n' {shlex.quote(root)} > /tmp/pebble-root.pem")
    verify = gw.run(
        f"openssl s_client -connect 127.0.0.1:443 -servername {DOMAIN} -CAfile /tmp/pebble-root.pem "
        "-verify_return_error </dev/null"
    )
    assert verify.rc == 0 and "Verify return code: 0 (ok)" in verify.stdout, verify.stdout[-1500:]
