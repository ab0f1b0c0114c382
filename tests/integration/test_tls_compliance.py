"""The public gateway passes sslyze's Mozilla "intermediate" check; plain HTTP goes to HTTPS.

sslyze (the TLS scanner, from PyPI) scans the gateway where the test bed
publishes it (PUBLIC_URL, e.g. https://127.0.0.1:8443) and checks the result
against Mozilla's intermediate configuration: TLS versions, cipher suites,
curves, the certificate's key, signature and lifetime, known vulnerabilities
(Heartbleed, ROBOT, CCS injection, insecure renegotiation, compression). The
certificate path is validated against the platform CA.
"""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.integration.conftest import INVENTORY, PUBLIC_URL

sslyze = pytest.importorskip("sslyze")
from sslyze.mozilla_tls_profile.tls_config_checker import (  # noqa: E402
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

PLATFORM = yaml.safe_load((INVENTORY / "platform.yaml").read_text())["platform"]


def gw_address() -> str:
    return str(yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]["hosts"]["gw"]["ansible_host"])


@pytest.fixture(scope="module")
def scan(deployed: dict[str, Any], ca_cert: Path) -> Any:
    url = urlsplit(PUBLIC_URL)
    host, port = url.hostname or "127.0.0.1", url.port or 443
    location = sslyze.ServerNetworkLocation(hostname=host, port=port, ip_address=host)
    request = sslyze.ServerScanRequest(
        server_location=location,
        network_configuration=sslyze.ServerNetworkConfiguration(tls_server_name_indication=PLATFORM["domain"]),
        scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
        scan_commands_extra_arguments=sslyze.ScanCommandsExtraArguments(
            certificate_info=sslyze.CertificateInfoExtraArgument(custom_ca_file=ca_cert)
        ),
    )
    scanner = sslyze.Scanner(concurrent_server_scans_limit=1, per_server_concurrent_connections_limit=4)
    scanner.queue_scans([request])
    (result,) = list(scanner.get_results())
    assert result.scan_status == sslyze.ServerScanStatusEnum.COMPLETED, (
        f"sslyze could not reach {PUBLIC_URL}: {result.connectivity_error_trace}"
    )
    return result


def test_mozilla_intermediate(scan: Any) -> None:
    intermediate = MozillaTlsConfiguration.get(TlsConfigurationEnum.INTERMEDIATE)
    try:
        check_server_against_tls_configuration(scan, intermediate)
    except ServerNotCompliantWithTlsConfiguration as problem:
        pytest.fail(f"{PUBLIC_URL} is not Mozilla intermediate compliant: {problem.issues}")


def test_no_legacy_protocols_and_tls13_offered(scan: Any) -> None:
    # The compliance check above already implies this; spelled out so a failure names the protocol.
    result = scan.scan_result
    for name in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"):
        accepted = getattr(result, name).result.accepted_cipher_suites
        assert not accepted, f"{name}: {[c.cipher_suite.name for c in accepted]}"
    assert result.tls_1_3_cipher_suites.result.accepted_cipher_suites, "TLS 1.3 is not offered"
    assert result.tls_1_2_cipher_suites.result.accepted_cipher_suites, "TLS 1.2 is not offered"


def test_certificate_chain_verifies_against_the_platform_ca(scan: Any) -> None:
    deployments = scan.scan_result.certificate_info.result.certificate_deployments
    assert deployments and all(d.verified_certificate_chain for d in deployments)
    assert all(d.leaf_certificate_subject_matches_hostname for d in deployments)


def test_plain_http_redirects_to_https(deployed: dict[str, Any], ca_cert: Path) -> None:
    conn = http.client.HTTPConnection(gw_address(), 80, timeout=10)
    conn.request("GET", "/hub/login?next=%2F", headers={"Host": PLATFORM["domain"]})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status in (301, 308), response.status
    location = urlsplit(response.getheader("Location") or "")
    assert location.scheme == "https" and location.hostname == PLATFORM["domain"], location
    assert (location.path, location.query) == ("/hub/login", "next=%2F")

    # ...and the HTTPS side of that name answers with a certificate the platform CA signed.
    url = urlsplit(PUBLIC_URL)
    context = ssl.create_default_context(cafile=str(ca_cert))
    tls = http.client.HTTPSConnection(url.hostname or "127.0.0.1", url.port or 443, context=context, timeout=10)
    tls.request("GET", "/healthz", headers={"Host": PLATFORM["domain"]})
    health = tls.getresponse()
    assert health.status == 200 and "max-age=" in (health.getheader("Strict-Transport-Security") or "")
    tls.close()
