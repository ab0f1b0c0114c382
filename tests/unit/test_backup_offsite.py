"""An external (off-site) backup target: backup.endpoint and backup.region reach roles/backup,
wrong values are refused naming the field, and the drill's off-site S3 certificate is one the
platform's hosts trust (tests/integration/offsite_s3.py)."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from typer.testing import CliRunner

from sciplat.cli import app
from sciplat.render import role_vars
from sciplat.secrets import make_ca
from sciplat.spec import PlatformSpec
from tests.conftest import REPO
from tests.integration.offsite_s3 import bed_host_address, sign_certificate

PLATFORM = {"name": "lab", "domain": "lab.example.org"}


def spec(backup: dict[str, object]) -> PlatformSpec:
    return PlatformSpec.model_validate({"platform": PLATFORM, "backup": backup})


def test_an_external_targets_endpoint_and_region_reach_the_role(tmp_path: Path) -> None:
    values = role_vars(
        spec(
            {
                "target": "s3://offsite-backups/lab",
                "endpoint": "https://s3.backup.example.net:9000/",
                "region": "eu-central-1",
            }
        ),
        tmp_path,
    )
    assert values["backup_target"] == "s3://offsite-backups/lab"
    assert values["backup_s3_endpoint"] == "https://s3.backup.example.net:9000"
    assert values["backup_s3_region"] == "eu-central-1"


def test_without_endpoint_and_region_the_roles_defaults_apply(tmp_path: Path) -> None:
    values = role_vars(spec({"target": "s3://offsite-backups/lab"}), tmp_path)
    assert "backup_s3_endpoint" not in values and "backup_s3_region" not in values
    defaults = yaml.safe_load((REPO / "roles/backup/defaults/main.yml").read_text())
    assert "s3.amazonaws.com" in defaults["backup_s3_endpoint"]
    assert "us-east-1" in defaults["backup_s3_region"]


@pytest.mark.parametrize(
    ("backup", "field", "words"),
    [
        ({"target": "s3://b/p", "endpoint": "http://s3.example.net"}, "backup.endpoint", "https://host[:port]"),
        ({"target": "s3://b/p", "endpoint": "https://s3.example.net/bucket"}, "backup.endpoint", "without a path"),
        ({"target": "s3://b/p", "region": "eu central"}, "backup.region", "region name"),
        ({"endpoint": "https://s3.example.net"}, "backup", "external target"),
    ],
    ids=["not https", "with a path", "bad region", "endpoint with the platform target"],
)
def test_wrong_endpoint_or_region_exits_2_and_names_the_field(
    tmp_path: Path, backup: dict[str, str], field: str, words: str
) -> None:
    (tmp_path / "platform.yaml").write_text(yaml.safe_dump({"platform": PLATFORM, "backup": backup}))
    (tmp_path / "hosts.yml").write_text(
        yaml.safe_dump({"all": {"children": {g: {"hosts": {"node": {}}} for g in ("gateway", "hub", "db")}}})
    )
    result = CliRunner().invoke(app, ["validate", "-i", str(tmp_path), "--json"])
    assert result.exit_code == 2, result.output
    errors = [p for p in json.loads(result.stdout)["problems"] if p["severity"] == "error"]
    named = [p for p in errors if p["path"] == field]
    assert named, f"no error names {field!r}: {errors}"
    assert words in named[0]["message"], named[0]["message"]


def test_the_offsite_certificate_is_trusted_with_the_platform_ca(tmp_path: Path) -> None:
    ca = make_ca("lab", 30)
    cert_pem, key_pem = sign_certificate(ca, "offsite.lab.example.org", "10.213.43.1")
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca["cert"].encode()))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["offsite.lab.example.org"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.213.43.1"]
    # a TLS server context accepts the pair, and a client verifying with the CA file would too
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    (tmp_path / "ca.pem").write_text(ca["cert"])
    assert ssl.create_default_context(cafile=str(tmp_path / "ca.pem")).get_ca_certs()


def test_the_offsite_target_listens_on_the_bed_networks_host_side_address(tmp_path: Path) -> None:
    (tmp_path / "testbed.yml").write_text(yaml.safe_dump({"network": {"subnet": "10.213.43.0/24"}}))
    assert bed_host_address(tmp_path) == "10.213.43.1"
