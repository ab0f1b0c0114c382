"""sciplat-job: parameters, file names and the words for why a job waits."""

from __future__ import annotations

from pathlib import Path

import pytest

from sciplat_hub import job


def test_parameters_are_typed_like_papermill() -> None:
    assert job.parse_parameter("year=2024") == ("year", 2024)
    assert job.parse_parameter("ratio=0.5") == ("ratio", 0.5)
    assert job.parse_parameter("fast=true") == ("fast", True)
    assert job.parse_parameter('bands=["g", "r"]') == ("bands", ["g", "r"])
    assert job.parse_parameter("name=M31 core") == ("name", "M31 core")
    with pytest.raises(job.JobError, match="name=value"):
        job.parse_parameter("no-equals-sign")


def test_executed_notebook_lands_next_to_the_input() -> None:
    files = job.paths_for(Path("/home/alice/work/fit.ipynb"), "42")
    assert files["output"] == "/home/alice/work/fit-42.ipynb"
    assert files["log"] == "/home/alice/work/fit-42.log"
    assert files["status"] == "/home/alice/work/.fit-42.sciplat-job.json"


def test_used_up_allocation_is_explained_in_words() -> None:
    text = job.explain(
        "AssocGrpCPUMinutesLimit",
        allocation={"account": "astro", "awarded": 1.0, "used": 1.0, "remaining": 0.0, "needed": 2.0},
    )
    assert "awarded compute allocation is used up" in text
    assert "astro: 1.0 of 1.0 core-hours used, 0.0 left" in text
    assert text.endswith("[AssocGrpCPUMinutesLimit]")


def test_cpu_limit_is_explained() -> None:
    assert "all the CPUs your account may use at once" in job.explain("AssocGrpCpuLimit")
    assert job.explain("None") == ""


def test_time_limits_parse() -> None:
    assert job._limit_minutes("1:00:00") == 60
    assert job._limit_minutes("2-00:00:00") == 2880
    assert job._limit_minutes("30:00") == 30
