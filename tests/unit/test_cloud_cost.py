"""The cost split: per-tenant shares add up to the total to the cent (AWS via moto, on-prem via a fixture)."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from sciplat.cloud import cost
from sciplat.spec import Rates, Tenant

FIXTURES = Path(__file__).parent / "fixtures" / "cloud"
TENANTS = [
    Tenant(name="survey", groups=["survey-team", "survey-ops"]),
    Tenant(name="theory", groups=["theory"]),
]
GIB = 1024**3


def money(data: dict, tenant: str) -> Decimal:
    return Decimal(next(r["total"] for r in data["tenants"] if r["tenant"] == tenant))


def assert_adds_up(data: dict) -> None:
    assert sum(Decimal(r["total"]) for r in data["tenants"]) == Decimal(data["total"])


# ------------------------------------------------------------------ on-prem


def test_onprem_fixture_use_times_rates_plus_fixed_cost() -> None:
    usage = cost.load_usage(FIXTURES / "usage-2026-10.yml")
    rates = Rates(core_hour_usd=0.02, storage_gib_month_usd=0.01, mydb_gib_month_usd=0.05, fixed_monthly_usd=1000)
    use = cost.tenant_usage(usage, TENANTS)
    data = cost.report(
        month="2026-10", source="onprem", costs=cost.onprem_costs(use, rates, "2026-10"), usage=usage, tenants=TENANTS
    )
    # 12500.5 h x 0.02 + 5120 GiB x 0.01 + 20 GiB x 0.05 = 302.21 (survey); 73.24 (theory); 2.10 (staff)
    assert data["total"] == "1377.55"
    assert_adds_up(data)
    # fixed 1000 by the mean share of (core-hours, bytes, MyDB): survey 0.62775, theory 0.36957, platform 0.00268
    assert abs(money(data, "survey") - Decimal("929.96")) <= Decimal("0.01")
    assert abs(money(data, "theory") - Decimal("442.81")) <= Decimal("0.01")
    assert abs(money(data, "platform") - Decimal("4.78")) <= Decimal("0.01")
    survey = next(r for r in data["tenants"] if r["tenant"] == "survey")
    assert survey["core_hours"] == 12500.5 and survey["stored_gib"] == 5120.0 and survey["mydb_gib"] == 20.0
    assert data["tenants"][-1]["tenant"] == "platform", "unassigned use is listed last"


def test_onprem_without_use_splits_fixed_cost_equally() -> None:
    usage = cost.Usage(month="2026-02")
    rates = Rates(fixed_monthly_usd=100)
    data = cost.report(
        month="2026-02",
        source="onprem",
        costs=cost.onprem_costs({}, rates, "2026-02"),
        usage=usage,
        tenants=[*TENANTS, Tenant(name="third")],
    )
    assert sorted(r["total"] for r in data["tenants"]) == ["33.33", "33.33", "33.34"]
    assert data["days"] == 28


def test_parsers_read_slurm_accounting_and_database_sizes() -> None:
    assert cost.parse_sreport((FIXTURES / "sreport.txt").read_text()) == {
        "survey-team": 12000.0,
        "survey-ops": 500.0,
        "theory": 3000.0,
        "staff": 100.0,
    }
    assert cost.parse_database_sizes((FIXTURES / "dbsizes.txt").read_text()) == {
        "survey-team": 20 * GIB,
        "theory": 60 * GIB,
    }


@pytest.mark.parametrize("seed", range(50))
def test_shares_always_add_up_to_the_total_to_the_cent(seed: int) -> None:
    rnd = random.Random(seed)
    tenants = [f"t{i}" for i in range(rnd.randint(1, 7))]
    components = ["compute", "storage", "homes", "database", "network", "", "gateway"]
    costs = {
        (rnd.choice([*tenants, "shared", ""]), rnd.choice(components)): Decimal(rnd.randint(0, 10**7)) / 1000
        for _ in range(rnd.randint(1, 25))
    }
    use = {
        t: {d: float(rnd.choice([0, rnd.randint(0, 10**6)])) for d in cost.DIMENSIONS}
        for t in [*tenants, "platform"][: rnd.randint(0, len(tenants) + 1)]
    }
    rows, total_cents, _ = cost.split(costs, use, tenants)
    assert sum(r.total_cents for r in rows) == total_cents
    exact_total = sum((Fraction(v) for v in costs.values()), Fraction(0))
    assert abs(Fraction(total_cents, 100) - exact_total) <= Fraction(1, 200)
    for row in rows:  # each share is within a cent of its exact value
        assert abs(Fraction(row.total_cents, 100) - (row.direct + row.shared)) < Fraction(1, 100)


def test_credits_and_negative_lines_still_add_up() -> None:
    costs = {
        ("a", "storage"): Decimal("10.005"),
        ("shared", "compute"): Decimal("-3.333"),
        ("b", "x"): Decimal("0.001"),
    }
    rows, total_cents, _ = cost.split(costs, {"a": dict.fromkeys(cost.DIMENSIONS, 1.0)}, ["a", "b"])
    assert sum(r.total_cents for r in rows) == total_cents == 667


def test_month_is_checked() -> None:
    assert cost.month_bounds("2026-12") == ("2026-12-01", "2027-01-01")
    with pytest.raises(ValueError, match="YYYY-MM"):
        cost.month_bounds("2026-13")


# ------------------------------------------------------------------ AWS (moto)

moto = pytest.importorskip("moto", reason="moto is part of the dev extra")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    with moto.mock_aws():
        yield


def _queue_ce_result(*results: dict) -> None:
    import requests

    answer = requests.post(
        "http://motoapi.amazonaws.com/moto-api/static/ce/cost-and-usage-results",
        json={"results": list(results)},
        timeout=5,
    )
    assert answer.status_code == 201


def _group(tenant: str, component: str, amount: str) -> dict:
    return {
        "Keys": [f"tenant${tenant}", f"component${component}"],
        "Metrics": {"UnblendedCost": {"Amount": amount, "Unit": "USD"}},
    }


def test_aws_cost_explorer_and_s3_use_split_to_the_cent(aws: None) -> None:
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="astro-platform")
    s3.put_object(Bucket="astro-platform", Key="groups/survey-team/a.fits", Body=b"x" * 2 * 1024**2)
    s3.put_object(Bucket="astro-platform", Key="groups/survey-team/b.fits", Body=b"x" * 1024**2)
    s3.put_object(Bucket="astro-platform", Key="groups/theory/c.fits", Body=b"x" * 1024**2)
    usage = cost.Usage(
        month="2026-10",
        core_hours={"survey-team": 3000, "theory": 1000},
        mydb_bytes={"survey-team": GIB, "theory": 3 * GIB},
        s3_locations={
            "survey-team": "s3://astro-platform/groups/survey-team/",
            "theory": "s3://astro-platform/groups/theory/",
        },
    )
    measured = cost.measure_s3(usage.s3_locations, s3)
    assert measured == {"survey-team": 3 * 1024**2, "theory": 1024**2}
    usage.stored_bytes = measured

    first = {
        "ResultsByTime": [
            {
                "TimePeriod": {"Start": "2026-10-01", "End": "2026-11-01"},
                "Groups": [
                    _group("survey", "storage", "12.345"),
                    _group("theory", "storage", "3.333"),
                    _group("shared", "compute", "400.004"),
                    _group("shared", "homes", "90.10"),
                ],
            }
        ],
        "NextPageToken": "page2",
    }
    second = {
        "ResultsByTime": [
            {
                "TimePeriod": {"Start": "2026-10-01", "End": "2026-11-01"},
                "Groups": [
                    _group("shared", "database", "50"),
                    _group("shared", "network", "33.333"),
                    _group("", "", "7.77"),
                    _group("shared", "gateway", "15.19"),
                ],
            }
        ]
    }
    _queue_ce_result(first, second)
    ce = boto3.client("ce", region_name="us-east-1")
    costs = cost.aws_costs(ce, "2026-10", "astro")
    assert costs[("survey", "storage")] == Decimal("12.345") and costs[("", "")] == Decimal("7.77")
    data = cost.report(month="2026-10", source="aws", costs=costs, usage=usage, tenants=TENANTS)
    # survey: 12.345 direct + 0.75 x (400.004 + 90.10) + 0.25 x 50 + 7/12 x (33.333 + 7.77 + 15.19) = 425.2606
    # theory:  3.333 direct + 0.25 x (400.004 + 90.10) + 0.75 x 50 + 5/12 x 56.293 = 186.8144
    assert data["total"] == "612.08"
    assert money(data, "survey") == Decimal("425.26")
    assert money(data, "theory") == Decimal("186.82")  # the rounding cent goes to the larger remainder
    assert_adds_up(data)
    assert data["shared_by_component"]["compute"] == "400.00"
    assert json.loads(json.dumps(data)) == data
    csv_text = cost.to_csv(data)
    assert csv_text.splitlines()[0].startswith("month,tenant,total")
    assert "TOTAL,612.08" in csv_text
