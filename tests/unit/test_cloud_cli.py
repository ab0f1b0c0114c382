"""`sciplat up --target aws`, the inventory rendered from stack outputs, `sciplat cost report`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import typer
import yaml
from typer.testing import CliRunner

from sciplat.cli import app
from sciplat.cloud import inventory as inventory_mod
from sciplat.commands import cloud as cloud_cmd
from sciplat.validate import validate_inventory_dir
from tests.unit.cloud_helpers import BASE_SPEC, SSH_KEY, run_spec, spec_from

FIXTURES = Path(__file__).parent / "fixtures" / "cloud"
runner = CliRunner()


def aws_inventory(tmp_path: Path, spec: str = BASE_SPEC) -> Path:
    (tmp_path / "platform.yaml").write_text(spec)
    (tmp_path / "id_ed25519.pub").write_text(SSH_KEY + "\n")
    (tmp_path / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n(test)\n")
    data = yaml.safe_load((tmp_path / "platform.yaml").read_text())
    data["cloud"]["ssh_public_key_file"] = "id_ed25519.pub"
    (tmp_path / "platform.yaml").write_text(yaml.safe_dump(data))
    return tmp_path


def test_up_target_aws_without_the_pulumi_cli_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cloud_cmd.shutil, "which", lambda name: None)
    result = runner.invoke(app, ["up", "--target", "aws", "-i", str(aws_inventory(tmp_path))])
    assert result.exit_code == 1, result.output
    assert "Pulumi CLI" in result.output and "Install it" in result.output
    assert not (tmp_path / "hosts.yml").exists()


def test_up_target_aws_refuses_a_spec_that_cannot_run_on_aws(tmp_path: Path) -> None:
    spec = BASE_SPEC.replace("storage: {backend: s3, posix: nfs}", "storage: {backend: ceph}")
    spec = spec.replace("budget_monthly_usd: 300, ", "")
    result = runner.invoke(app, ["up", "--target", "aws", "-i", str(aws_inventory(tmp_path, spec))])
    assert result.exit_code == 2
    assert "storage.backend: s3" in result.output and "storage.posix: nfs" in result.output
    assert "'theory' has no budget_monthly_usd" in result.output


def test_up_unknown_target(tmp_path: Path) -> None:
    result = runner.invoke(app, ["up", "--target", "gcp", "-i", str(tmp_path)])
    assert result.exit_code == 2 and "use one of hosts, aws" in result.output


# ------------------------------------------------------------------ inventory


moto = pytest.importorskip("moto")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    with moto.mock_aws():
        yield


def _launch_pool(name: str, count: int) -> None:
    import boto3

    ec2 = boto3.client("ec2", region_name="eu-west-1")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.0.0/18", AvailabilityZone="eu-west-1a")["Subnet"]["SubnetId"]
    ec2.create_launch_template(
        LaunchTemplateName=name, LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "c6i.xlarge"}
    )
    boto3.client("autoscaling", region_name="eu-west-1").create_auto_scaling_group(
        AutoScalingGroupName=name,
        LaunchTemplate={"LaunchTemplateName": name, "Version": "$Latest"},
        MinSize=count,
        MaxSize=count,
        DesiredCapacity=count,
        VPCZoneIdentifier=subnet,
    )


def test_inventory_from_stack_outputs_has_the_on_prem_format(tmp_path: Path, aws_env: None) -> None:
    from sciplat.testbed import parse_spec, render_hosts_yml

    outputs = run_spec(spec_from()).outputs
    _launch_pool(outputs["compute_pools"][0]["asg_name"], 2)
    nodes = inventory_mod.compute_nodes(outputs["compute_pools"], "eu-west-1")
    assert len(nodes) == 2 and all(n.partitions == ("interactive", "batch") for n in nodes)

    inv = aws_inventory(tmp_path)
    hosts_path, vars_path = inventory_mod.write(inv, outputs, nodes, private_key=inv / "id_ed25519")
    ours = yaml.safe_load(hosts_path.read_text())

    bed = parse_spec(
        "network: {name: n, subnet: 10.9.0.0/24}\nhosts:\n  gw: {ip: 10.9.0.10, groups: [gateway, hub]}\n",
        source=Path("testbed.yml"),
        default_name="x",
    )
    onprem = yaml.safe_load(render_hosts_yml(bed, Path("/k"), Path("/kh")))
    assert set(ours) == set(onprem) == {"all"}
    assert set(ours["all"]) == set(onprem["all"]) == {"hosts", "children"}
    onprem_keys = set(onprem["all"]["hosts"]["gw"])
    for name, hostvars in ours["all"]["hosts"].items():
        assert onprem_keys <= set(hostvars), name
    for group, body in ours["all"]["children"].items():
        assert set(body) == {"hosts"} and all(v is None for v in body["hosts"].values()), group
    children = {g: sorted(b["hosts"]) for g, b in ours["all"]["children"].items()}
    assert children["gateway"] == ["gw"] and children["db"] == ["db"] and children["hub"] == ["hub"]
    assert children["slurm_controller"] == ["ctl"] and len(children["compute"]) == 2
    # the gateway is reached directly, every other host through it
    assert ours["all"]["hosts"]["gw"]["ansible_host"] == "203.0.113.7"
    assert "ProxyCommand" not in ours["all"]["hosts"]["gw"]["ansible_ssh_common_args"]
    assert "admin@203.0.113.7" in ours["all"]["hosts"]["hub"]["ansible_ssh_common_args"]
    assert ours["all"]["hosts"]["hub"]["ansible_host"].startswith("10.42.")

    cloud_vars = yaml.safe_load(vars_path.read_text())["all"]["vars"]
    assert cloud_vars["sciplat_cloud_tenant_buckets"] == {"survey": "astro-t-survey", "theory": "astro-t-theory"}
    assert cloud_vars["sciplat_cloud_efs_dns_name"].endswith(".amazonaws.com")

    result = validate_inventory_dir(inv)
    assert result.ok, [str(p) for p in result.errors]


def test_provision_runs_the_stack_then_writes_the_inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = run_spec(spec_from()).outputs

    class Out:
        def __init__(self, value: Any) -> None:
            self.value = value

    class FakeStack:
        calls: ClassVar[list[str]] = []

        def up(self, on_output: Any, **policy: list[str]) -> Any:
            FakeStack.calls.append("up")
            (pack,) = policy["policy_packs"]
            assert pack.endswith("stacks/aws/policy") and Path(pack, "PulumiPolicy.yaml").is_file()
            (config,) = policy["policy_pack_configs"]
            assert json.loads(Path(config).read_text()) == {
                "sciplat-ingress": {"adminCidrs": ["192.0.2.0/24"]},
                "sciplat-budgets": {"tenants": ["survey", "theory"]},
            }
            on_output("Resources: 70 created\n")
            return type("R", (), {"outputs": {k: Out(v) for k, v in outputs.items()}})()

    monkeypatch.setattr(cloud_cmd, "_stack", lambda inventory, spec: FakeStack())
    monkeypatch.setattr(
        inventory_mod,
        "compute_nodes",
        lambda pools, region: [inventory_mod.ComputeNode("ondemand", "i-0abc", "10.42.1.5", ("interactive",))],
    )
    inv = aws_inventory(tmp_path)
    cloud_cmd.provision(inv, cloud_cmd.console)
    assert FakeStack.calls == ["up"]
    hosts = yaml.safe_load((inv / "hosts.yml").read_text())
    assert hosts["all"]["children"]["compute"]["hosts"] == {"ondemand-0abc": None}
    assert (inv / ".sciplat" / "inventory" / "cloud.yml").is_file()


# ------------------------------------------------------------------ cost report


def onprem_inventory(tmp_path: Path) -> Path:
    spec = yaml.safe_load(BASE_SPEC)
    spec["cloud"]["rates"] = {
        "core_hour_usd": 0.02,
        "storage_gib_month_usd": 0.01,
        "mydb_gib_month_usd": 0.05,
        "fixed_monthly_usd": 1000,
    }
    spec["cloud"]["tenants"][0]["groups"].append("survey-ops")
    (tmp_path / "platform.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path


def test_cost_report_onprem_json_and_csv(tmp_path: Path) -> None:
    inv = onprem_inventory(tmp_path)
    usage = str(FIXTURES / "usage-2026-10.yml")
    result = runner.invoke(app, ["cost", "report", "-i", str(inv), "--month", "2026-10", "--usage", usage, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["source"] == "onprem" and data["total"] == "1377.55"
    assert [r["tenant"] for r in data["tenants"]] == ["survey", "theory", "platform"]
    assert sum(round(float(r["total"]) * 100) for r in data["tenants"]) == 137755
    csv_result = runner.invoke(app, ["cost", "report", "-i", str(inv), "--month", "2026-10", "--usage", usage, "--csv"])
    assert csv_result.exit_code == 0 and "TOTAL,1377.55" in csv_result.stdout
    table = runner.invoke(app, ["cost", "report", "-i", str(inv), "--month", "2026-10", "--usage", usage])
    assert table.exit_code == 0 and "1377.55" in table.stdout


def test_cost_report_rejects_a_bad_month_and_a_missing_usage_file(tmp_path: Path) -> None:
    inv = onprem_inventory(tmp_path)
    bad = runner.invoke(app, ["cost", "report", "-i", str(inv), "--month", "10/2026"])
    assert bad.exit_code == 2 and "YYYY-MM" in bad.output
    missing = runner.invoke(app, ["cost", "report", "-i", str(inv), "--month", "2026-10"])
    assert missing.exit_code == 1 and "--usage" in missing.output
    wrong = runner.invoke(
        app, ["cost", "report", "-i", str(inv), "--month", "2026-09", "--usage", str(FIXTURES / "usage-2026-10.yml")]
    )
    assert wrong.exit_code == 1 and "not 2026-09" in wrong.output


def test_check_mode_previews_and_never_creates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class NeverCreated:
        def preview(self, on_output: Any, **policy: list[str]) -> None:
            calls.append("preview")
            assert policy["policy_packs"]

        def up(self, on_output: Any) -> None:  # pragma: no cover - must not be called
            calls.append("up")

        def outputs(self) -> dict[str, Any]:
            return {}

    monkeypatch.setattr(cloud_cmd, "_stack", lambda inventory, spec: NeverCreated())
    inv = aws_inventory(tmp_path)
    with pytest.raises(typer.Exit) as exc:
        cloud_cmd.provision(inv, cloud_cmd.console, check=True)
    assert exc.value.exit_code == 1
    assert calls == ["preview"]
    assert not (inv / "hosts.yml").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tls": {"mode": "acme"}}, "HTTP-01 challenge needs port 80"),
        ({"cloud": {"hosts": [{"name": "gw", "groups": ["gateway", "hub", "directory", "db"]}]}}, "'monitor'"),
        ({"cloud": {"compute": {"min_size": 0}}}, "at least one compute node"),
        ({"cloud": {"compute": {"spot": {"enabled": True, "partitions": ["gpu"]}}}}, "'gpu', which is not in"),
    ],
)
def test_spec_checks_before_anything_is_created(change: dict[str, Any], message: str) -> None:
    from sciplat.cloud.config import check_spec_for_aws
    from sciplat.spec import PlatformSpec

    data = yaml.safe_load(BASE_SPEC)
    for section, values in change.items():
        data.setdefault(section, {}).update(values)
    problems = check_spec_for_aws(PlatformSpec.model_validate(data))
    assert any(message in p for p in problems), problems
    assert check_spec_for_aws(PlatformSpec.model_validate(yaml.safe_load(BASE_SPEC))) == []


def test_cloud_inventory_and_down_drive_the_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = run_spec(spec_from()).outputs
    calls: list[str] = []

    class Out:
        def __init__(self, value: Any) -> None:
            self.value = value

    class Created:
        def outputs(self) -> dict[str, Any]:
            calls.append("outputs")
            return {k: Out(v) for k, v in outputs.items()}

        def destroy(self, on_output: Any) -> None:
            calls.append("destroy")

    monkeypatch.setattr(cloud_cmd, "_stack", lambda inventory, spec: Created())
    monkeypatch.setattr(inventory_mod, "compute_nodes", lambda pools, region: [])
    inv = aws_inventory(tmp_path)
    result = runner.invoke(app, ["cloud", "inventory", "-i", str(inv)])
    assert result.exit_code == 0, result.output
    assert "5 hosts, 0 compute nodes" in result.output and (inv / "hosts.yml").is_file()
    refused = runner.invoke(app, ["cloud", "down", "-i", str(inv)], input="n\n")
    assert refused.exit_code == 1 and "destroy" not in calls
    result = runner.invoke(app, ["cloud", "down", "-i", str(inv), "--yes"])
    assert result.exit_code == 0 and calls == ["outputs", "destroy"]
