"""`sciplat validate`: every broken spec or inventory exits 2 and names the field."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

import pytest
from typer.testing import CliRunner

from sciplat.cli import app
from sciplat.validate import validate_inventory_dir

MINIMAL_SPEC = "platform:\n  name: mylab\n  domain: science.example.org\n"

FOUR_HOSTS = dedent(
    """\
    all:
      children:
        gateway: {hosts: {gw: {ansible_host: 192.0.2.10}}}
        hub: {hosts: {gw: {}}}
        monitor: {hosts: {gw: {}}}
        directory: {hosts: {data: {ansible_host: 192.0.2.11}}}
        db: {hosts: {data: {}}}
        storage: {hosts: {data: {}}}
        slurm_controller: {hosts: {data: {}}}
        compute: {hosts: {c1: {ansible_host: 192.0.2.12}, c2: {ansible_host: 192.0.2.13}}}
    """
)


def without_groups(*names: str) -> str:
    return "".join(line + "\n" for line in FOUR_HOSTS.splitlines() if line.strip().split(":")[0] not in names)


def make_inventory(tmp_path: Path, spec: str = MINIMAL_SPEC, hosts: str = FOUR_HOSTS) -> Path:
    (tmp_path / "platform.yaml").write_text(spec)
    (tmp_path / "hosts.yml").write_text(hosts)
    return tmp_path


def with_section(extra: str) -> str:
    return MINIMAL_SPEC + dedent(extra)


# (id, platform.yaml, hosts.yml or None for the valid four hosts, field path the message must name)
BROKEN = [
    ("unknown top-level key", with_section("storag:\n  backend: ceph\n"), None, "storag"),
    (
        "unknown nested key",
        with_section("storage:\n  user_qouta: 10GiB\n"),
        None,
        "storage.user_qouta",
    ),
    (
        "wrong type",
        with_section("databases:\n  max_connections: many\n"),
        None,
        "databases.max_connections",
    ),
    ("bad domain", "platform:\n  name: mylab\n  domain: not a domain\n", None, "platform.domain"),
    ("domain is an IP", "platform:\n  name: mylab\n  domain: 192.0.2.1\n", None, "platform.domain"),
    ("missing platform name", "platform:\n  domain: science.example.org\n", None, "platform.name"),
    (
        "bad platform name",
        "platform:\n  name: My Lab\n  domain: science.example.org\n",
        None,
        "platform.name",
    ),
    ("negative quota", with_section("storage:\n  user_quota: -5GiB\n"), None, "storage.user_quota"),
    (
        "unknown size unit",
        with_section("storage:\n  home_quota: 10 parsecs\n"),
        None,
        "storage.home_quota",
    ),
    ("zero duration", with_section("monitoring:\n  retention: 0d\n"), None, "monitoring.retention"),
    ("unknown TLS mode", with_section("tls:\n  mode: letsencrypt\n"), None, "tls.mode"),
    ("provided TLS without files", with_section("tls:\n  mode: provided\n"), None, "tls"),
    (
        "unknown authenticator",
        with_section("identity:\n  authenticators:\n    - type: facebook\n"),
        None,
        "identity.authenticators.0",
    ),
    (
        "oidc issuer not https",
        with_section(
            "identity:\n  authenticators:\n    - {type: oidc, name: Keycloak, issuer: 'http://kc', client_id: x}\n"
        ),
        None,
        "identity.authenticators.0.issuer",
    ),
    (
        "unknown key inside an authenticator",
        with_section("identity:\n  authenticators:\n    - {type: native, aproval: open}\n"),
        None,
        "identity.authenticators.0.aproval",
    ),
    (
        "uid and gid ranges overlap",
        with_section("identity:\n  uid_range: {start: 20000, end: 70000}\n"),
        None,
        "identity",
    ),
    (
        "bad admin user",
        with_section("identity:\n  admin_users: ['Bob Smith']\n"),
        None,
        "identity.admin_users",
    ),
    (
        "two default partitions",
        with_section("compute:\n  partitions:\n    - {name: a, default: true}\n    - {name: b, default: true}\n"),
        None,
        "compute",
    ),
    (
        "bad admin CIDR",
        with_section("cloud:\n  admin_cidrs: ['10.0.0.0/33']\n"),
        None,
        "cloud.admin_cidrs",
    ),
    (
        "SSH open to the world",
        with_section("cloud:\n  admin_cidrs: ['0.0.0.0/0']\n"),
        None,
        "cloud.admin_cidrs",
    ),
    ("bad AWS region", with_section("cloud:\n  region: ireland\n"), None, "cloud.region"),
    ("public VPC range", with_section("cloud:\n  vpc_cidr: 8.8.0.0/16\n"), None, "cloud.vpc_cidr"),
    (
        "duplicate tenant",
        with_section("cloud:\n  tenants: [{name: survey}, {name: survey}]\n"),
        None,
        "cloud",
    ),
    (
        "reserved tenant name",
        with_section("cloud:\n  tenants: [{name: shared}]\n"),
        None,
        "cloud.tenants.0.name",
    ),
    (
        "group charged to two tenants",
        with_section("cloud:\n  tenants: [{name: a1, groups: [g]}, {name: b1, groups: [g]}]\n"),
        None,
        "cloud",
    ),
    (
        "cloud host with compute group",
        with_section("cloud:\n  hosts: [{name: gw, groups: [gateway, hub, directory, db, compute]}]\n"),
        None,
        "cloud.hosts.0.groups",
    ),
    (
        "no cloud host serves the gateway",
        with_section("cloud:\n  hosts: [{name: hub, groups: [hub, directory, db]}]\n"),
        None,
        "cloud",
    ),
    (
        "bad instance type",
        with_section("cloud:\n  compute: {instance_type: huge}\n"),
        None,
        "cloud.compute.instance_type",
    ),
    (
        "spot pool smaller than its minimum",
        with_section("cloud:\n  compute: {spot: {min_size: 5, max_size: 2}}\n"),
        None,
        "cloud.compute.spot",
    ),
    (
        "EFS transition EFS does not offer",
        with_section("cloud:\n  homes: {infrequent_access_after_days: 45}\n"),
        None,
        "cloud.homes.infrequent_access_after_days",
    ),
    ("negative rate", with_section("cloud:\n  rates: {core_hour_usd: -1}\n"), None, "cloud.rates.core_hour_usd"),
    (
        "bad budget alert address",
        with_section("cloud:\n  budgets: {alert_emails: [ops]}\n"),
        None,
        "cloud.budgets.alert_emails",
    ),
    (
        "bad backup target",
        with_section("backup:\n  target: ftp://backups\n"),
        None,
        "backup.target",
    ),
    ("missing host group", MINIMAL_SPEC, without_groups("db"), "all.children.db"),
    (
        "two PostgreSQL hosts",
        MINIMAL_SPEC,
        FOUR_HOSTS.replace("db: {hosts: {data: {}}}", "db: {hosts: {data: {}, gw: {}}}"),
        "all.children.db",
    ),
    (
        "group name typo",
        MINIMAL_SPEC,
        FOUR_HOSTS + "    gatway: {hosts: {gw: {}}}\n",
        "all.children.gatway",
    ),
    (
        "bad ansible_host",
        MINIMAL_SPEC,
        FOUR_HOSTS.replace("ansible_host: 192.0.2.12", "ansible_host: 'bad host!'"),
        "hosts.c1.ansible_host",
    ),
    ("spec is not YAML", "platform:\n  name: [mylab\n", None, "(file)"),
    ("duplicate key", MINIMAL_SPEC + "platform:\n  name: other\n", None, "(file)"),
    ("inventory without hosts", MINIMAL_SPEC, "all:\n  children: {}\n", "all"),
]


@pytest.mark.parametrize(("spec", "hosts", "field"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_input_exits_2_and_names_the_field(tmp_path: Path, spec: str, hosts: str | None, field: str) -> None:
    inventory = make_inventory(tmp_path, spec, hosts or FOUR_HOSTS)
    result = CliRunner().invoke(app, ["validate", "-i", str(inventory), "--json"])
    assert result.exit_code == 2, result.output
    problems = json.loads(result.stdout)["problems"]
    errors = [p for p in problems if p["severity"] == "error"]
    assert errors, problems
    assert any(p["path"] == field for p in errors), f"no error names {field!r}: {errors}"
    for problem in errors:
        assert problem["file"] in ("platform.yaml", "hosts.yml")
        assert problem["message"]


def test_table_is_large_enough() -> None:
    assert len(BROKEN) >= 12


def test_three_line_spec_is_a_valid_platform(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", "-i", str(make_inventory(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    spec = "platform:\n  name: My Lab\n  domain: nope\ntls:\n  mode: letsencrypt\nstorage:\n  user_quota: -1GiB\n"
    hosts = without_groups("db")
    result = validate_inventory_dir(make_inventory(tmp_path, spec, hosts))
    paths = {p.path for p in result.errors}
    assert {
        "platform.name",
        "platform.domain",
        "tls.mode",
        "storage.user_quota",
        "all.children.db",
    } <= paths


def test_problem_carries_line_value_and_fix(tmp_path: Path) -> None:
    spec = with_section("storage:\n  backend: ceph\n  user_qouta: 10GiB\n")
    result = validate_inventory_dir(make_inventory(tmp_path, spec))
    (problem,) = result.errors
    assert problem.line == 6
    assert problem.value == "10GiB"
    assert "did you mean 'user_quota'" in problem.fix
    text = str(problem)
    assert text.startswith("platform.yaml:6: storage.user_qouta")


def test_human_output_names_file_field_and_fix(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path, with_section("tls:\n  mode: letsencrypt\n"))
    result = CliRunner().invoke(app, ["validate", "-i", str(inventory)])
    assert result.exit_code == 2
    assert "platform.yaml:5: tls.mode = 'letsencrypt'" in result.output
    assert "internal-ca" in result.output


def test_single_copy_storage_is_a_warning_not_an_error(tmp_path: Path) -> None:
    result = validate_inventory_dir(make_inventory(tmp_path, with_section("storage:\n  redundancy: 1\n")))
    assert result.ok
    assert [p.path for p in result.problems if p.severity == "warning"] == ["storage.redundancy"]


def test_no_compute_group_needed_without_slurm(tmp_path: Path) -> None:
    hosts = without_groups("slurm_controller", "compute")
    spec = with_section("compute:\n  scheduler: none\n")
    assert validate_inventory_dir(make_inventory(tmp_path, spec, hosts)).ok
    assert not validate_inventory_dir(make_inventory(tmp_path, MINIMAL_SPEC, hosts)).ok


def test_up_refuses_invalid_input_before_touching_hosts(tmp_path: Path) -> None:
    inventory = make_inventory(tmp_path, with_section("tls:\n  mode: nope\n"))
    result = CliRunner().invoke(app, ["up", "-i", str(inventory)])
    assert result.exit_code == 2
    assert not (inventory / "secrets.vault.yml").exists()
    assert not (inventory / "logs").exists()


def test_shipped_inventories_specs_are_valid() -> None:
    from tests.conftest import REPO

    for name in ("local", "single-node", "example-site"):
        result = validate_inventory_dir(REPO / "inventories" / name)
        spec_errors = [p for p in result.errors if p.file == "platform.yaml"]
        assert not spec_errors, (name, [str(p) for p in spec_errors])


@pytest.mark.parametrize("bad", ["not json", "[1, 2]"])
def test_up_refuses_extra_vars_that_are_not_a_json_object(tmp_path: Path, bad: str) -> None:
    inventory = make_inventory(tmp_path)
    result = CliRunner().invoke(app, ["up", "-i", str(inventory), "--extra-vars", bad])
    assert result.exit_code == 2
    assert "--extra-vars" in result.output
    assert not (inventory / "logs").exists()
