"""The Slurm collector's parsers and exposition, fed with recorded command output.

tests/unit/data/slurm/ holds output recorded on the test bed with the collector's
own format options (sinfo lists a node once per partition; sshare indents
accounts by depth), with a drained node, usage and an allocation edited in.
"""

from __future__ import annotations

from pathlib import Path

from sciplat_hub import slurm_exporter as exporter

DATA = Path(__file__).parent / "data" / "slurm"


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def fake_runner(command: list[str]) -> str:
    return recorded(
        {"sinfo": "sinfo.txt", "squeue": "squeue.txt", "sshare": "sshare.txt", "sacct": "sacct.txt"}[command[0]]
    )


def test_node_states_are_normalised() -> None:
    assert exporter.base_state("idle*") == "idle"
    assert exporter.base_state("drained") == "drained"
    assert exporter.base_state("mixed+drain") == "mixed"
    assert exporter.base_state("down*") == "down"


def test_sinfo_parser_reads_every_node() -> None:
    nodes = exporter.parse_sinfo(recorded("sinfo.txt"))
    assert [n["node"] for n in nodes] == ["c1", "c2"]
    assert nodes[0]["cpus_total"] == "2"
    assert nodes[1]["state"] == "drained"
    assert nodes[1]["reason"] == "kernel upgrade"


def test_sshare_parser_reads_limits_and_usage() -> None:
    rows = exporter.parse_sshare(recorded("sshare.txt"))
    group = next(r for r in rows if r["account"] == "astro" and not r["user"])
    assert group["limit_cpu_minutes"] == 600.0
    assert group["used_cpu_minutes"] == 123.0


def test_collect_exposes_prometheus_text() -> None:
    text = exporter.collect(fake_runner, now=1_700_000_000)
    lines = text.splitlines()
    assert 'slurm_nodes{state="drained"} 1' in lines
    assert 'slurm_nodes{state="idle"} 0' in lines
    assert 'slurm_jobs{state="pending"} 2' in lines
    assert 'slurm_jobs_pending_reason{reason="AssocGrpCpuLimit"} 1' in lines
    assert 'slurm_account_cpu_hours_awarded{account="astro"} 10' in lines
    assert 'slurm_account_cpu_hours_used{account="astro",user=""} 2.05' in lines
    assert "slurm_up 1" in lines
    assert any(line.startswith('slurm_jobs_finished_last_hour{state="out_of_memory"') for line in lines)
    # every sample has its HELP and TYPE once
    names = {line.split("{")[0].split(" ")[0] for line in lines if not line.startswith("#")}
    for name in names:
        assert lines.count(f"# TYPE {name} gauge") == 1, name


def test_a_failing_command_is_reported_not_raised() -> None:
    def broken(command: list[str]) -> str:
        if command[0] == "sshare":
            raise OSError("sshare: not found")
        return fake_runner(command)

    lines = exporter.collect(broken, now=0).splitlines()
    assert 'slurm_scrape_ok{source="sshare"} 0' in lines
    assert 'slurm_scrape_ok{source="sinfo"} 1' in lines
    assert "slurm_up 1" in lines


def test_samples_of_one_metric_stay_together() -> None:
    text = exporter.collect(fake_runner, now=0)
    names = [line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")]
    blocks = [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]
    assert len(blocks) == len(set(blocks)), "a metric family is split into several blocks"
