"""The pki role on the deployed test bed: the platform CA is trusted on every host,
every host has a certificate from it for all its names, and the gateway serves a
full-chain certificate that other hosts verify without -k.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.integration.conftest import INVENTORY

HOSTS = ["gw", "data", "c1", "c2"]
PKI = "/etc/sciplat/pki"
DOMAIN = "sciplat.test"  # platform.domain in inventories/local/platform.yaml


def address_of(name: str) -> str:
    inventory = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    return str(inventory["all"]["hosts"][name]["ansible_host"])


def sans(host: Any, path: str) -> set[str]:
    out = host.check_output(f"openssl x509 -in {path} -noout -ext subjectAltName")
    return {item.strip().replace("IP Address:", "IP:") for item in out.splitlines()[1].split(",")}


def public_key(host: Any, command: str) -> str:
    return str(host.check_output(f"{command} | openssl pkey -pubin -pubout"))


@pytest.mark.parametrize("name", HOSTS)
def test_platform_ca_is_in_the_system_trust_store(
    name: str, host_of: Callable[[str], Any], secret: Callable[[str], Any]
) -> None:
    host = host_of(name)
    ca = secret("pki_ca")["cert"].strip()
    anchor = host.file("/usr/local/share/ca-certificates/sciplat-platform-ca.crt")
    assert anchor.exists and anchor.content_string.strip() == ca
    assert host.file(f"{PKI}/ca.crt").content_string.strip() == ca
    # verified against the system store alone, not against ca.crt
    done = host.run(f"openssl verify {PKI}/host.crt")
    assert done.rc == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", HOSTS)
def test_host_certificate_names_the_host_and_its_key_stays_on_it(name: str, host_of: Callable[[str], Any]) -> None:
    host = host_of(name)
    key = host.file(f"{PKI}/host.key")
    assert (key.user, key.group, key.mode) == ("root", "ssl-cert", 0o640)
    names = sans(host, f"{PKI}/host.crt")
    assert {f"DNS:{name}", f"IP:{address_of(name)}"} <= names, names
    assert public_key(host, f"openssl x509 -in {PKI}/host.crt -noout -pubkey") == public_key(
        host, f"openssl pkey -in {PKI}/host.key -pubout"
    )
    usage = host.check_output(f"openssl x509 -in {PKI}/host.crt -noout -ext basicConstraints,extendedKeyUsage")
    assert "CA:FALSE" in usage and "TLS Web Server Authentication" in usage


def test_gateway_certificate_is_a_full_chain_for_the_domain(
    host_of: Callable[[str], Any], secret: Callable[[str], Any]
) -> None:
    gw = host_of("gw")
    chain = gw.file(f"{PKI}/gateway.crt").content_string
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", chain, re.S)
    assert len(pems) == 2 and pems[1].strip() == secret("pki_ca")["cert"].strip()
    assert {f"DNS:{DOMAIN}", "DNS:localhost", "IP:127.0.0.1"} <= sans(gw, f"{PKI}/gateway.crt")
    key = gw.file(f"{PKI}/gateway.key")
    assert (key.user, key.group, key.mode) == ("root", "ssl-cert", 0o640)
    assert public_key(gw, f"openssl x509 -in {PKI}/gateway.crt -noout -pubkey") == public_key(
        gw, f"openssl pkey -in {PKI}/gateway.key -pubout"
    )


@pytest.mark.parametrize("name", ["data", "c1"])
def test_other_hosts_verify_the_gateway_without_k(name: str, host_of: Callable[[str], Any]) -> None:
    client = host_of(name)
    gw = address_of("gw")
    for url, extra in ((f"https://{DOMAIN}/", f"--resolve {DOMAIN}:443:{gw}"), ("https://gw/", "")):
        done = client.run(f"curl -sS -o /dev/null -w '%{{http_code}}' {extra} {shlex.quote(url)}")
        assert done.rc == 0, f"{url} from {name}: {done.stderr}"


def test_a_certificate_from_another_ca_is_not_trusted(host_of: Callable[[str], Any]) -> None:
    """The trust store holds the platform CA, not 'anything': a self-signed cert fails."""
    host = host_of("c1")
    done = host.run(
        "d=$(mktemp -d) && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
        "-keyout $d/k -out $d/c -subj /CN=impostor -days 1 2>/dev/null && openssl verify $d/c; "
        "rc=$?; rm -rf $d; exit $rc"
    )
    assert done.rc != 0


def test_postgresql_serves_the_host_certificate(host_of: Callable[[str], Any]) -> None:
    gw = host_of("gw")
    done = gw.run(
        "openssl s_client -starttls postgres -connect data:5432 -verify_return_error "
        "-verify_hostname data </dev/null 2>&1"
    )
    # the firewall opens 5432 to hub hosts (gw is one); the chain verifies with the system store
    assert "Verification: OK" in done.stdout, done.stdout[-2000:]
