"""platform.yaml becomes role variables in an inventory source Ansible reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from sciplat.render import role_vars, write_ca_cert, write_inventory_source
from sciplat.spec import PlatformSpec


def spec(**extra: object) -> PlatformSpec:
    return PlatformSpec.model_validate({"platform": {"name": "lab", "domain": "Science.Example.org."}, **extra})


def test_domain_is_normalised_into_every_consumer() -> None:
    values = role_vars(spec(), Path("/inv"))
    assert values["sciplat_domain"] == "science.example.org"
    assert values["gateway_server_name"] == values["pki_domain"] == "science.example.org"
    assert values["sciplat_public_url"] == "https://science.example.org"


def test_provided_certificate_paths_are_absolute(tmp_path: Path) -> None:
    values = role_vars(
        spec(
            tls={
                "mode": "provided",
                "provided": {"cert_file": "tls/site.crt", "key_file": "tls/site.key"},
            }
        ),
        tmp_path,
    )
    assert values["pki_provided_cert_file"] == str(tmp_path / "tls" / "site.crt")
    assert values["pki_provided_chain_file"] == ""


def test_inventory_source_is_stable(tmp_path: Path) -> None:
    target = write_inventory_source(spec(), tmp_path)
    path = target / "spec.yml"
    data = yaml.safe_load(path.read_text())
    assert data["all"]["vars"]["pki_mode"] == "internal-ca"
    mtime = path.stat().st_mtime_ns
    write_inventory_source(spec(), tmp_path)
    assert path.stat().st_mtime_ns == mtime  # unchanged input, untouched file


def test_ca_certificate_is_published(tmp_path: Path) -> None:
    assert write_ca_cert(tmp_path, {}) is None
    path = write_ca_cert(tmp_path, {"pki_ca": {"cert": "PEM", "key": "SECRET"}})
    assert path is not None and path.read_text() == "PEM"
    assert "SECRET" not in path.read_text()


def test_sizes_parse_and_format() -> None:
    from sciplat.units import format_size, parse_duration, parse_size

    assert parse_size("10GiB") == 10 * 1024**3
    assert parse_size("1.5 TB") == 1_500_000_000_000
    assert format_size(parse_size("2TiB")) == "2TiB"
    assert parse_duration("15d") == 15 * 86400


def test_identity_ranges_reach_directory_and_sssd() -> None:
    values = role_vars(
        spec(identity={"uid_range": {"start": 30000, "end": 39999}, "gid_range": {"start": 70000, "end": 79999}}),
        Path("/inv"),
    )
    assert values["directory_uid_range"] == {"start": 30000, "end": 39999}
    assert values["directory_gid_range"] == {"start": 70000, "end": 79999}
    assert (values["ldap_client_min_id"], values["ldap_client_max_id"]) == (30000, 79999)
